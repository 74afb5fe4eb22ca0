// ckvctl's online commands (cluster status, membership). PLACEHOLDER: to be
// replaced by the real implementation; ckvctl.ts loads this module only for
// `ckvctl status`, so the offline commands never load NATS.

/** Run `ckvctl status ARGS`; resolves to the exit code. */
export async function runStatus(argv: string[]): Promise<number> {
  void argv;
  process.stderr.write('ckvctl status: not implemented\n');
  return 2;
}
