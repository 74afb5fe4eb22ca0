// Standard output of the command-line programs (ckv, ckvctl): a reader that
// goes away (`ckvctl log dump | head`) ends the output quietly, with no stack
// trace and the usual exit status. Node ignores SIGPIPE, so every write to a
// closed pipe fails with EPIPE instead.

let readerGone = false;

/** Call once at start: EPIPE on stdout drops the output from then on; any other error stays fatal. */
export function quietOnClosedStdout(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    readerGone = true;
  });
}

/** Whether stdout's reader has gone (work that only produces output can stop). */
export function stdoutClosed(): boolean {
  return readerGone;
}

/** Write to stdout, unless its reader has gone. */
export function writeOut(s: string | Uint8Array): void {
  if (!readerGone) process.stdout.write(s);
}
