// Child processes for tests: run a program to completion, or start one and
// watch its output, always bounded in time (a child still running at the
// deadline is killed with SIGKILL and the test fails). The compiled programs
// live under dist/ (npm test builds first).

import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SERVER_JS = join(ROOT, 'dist', 'src', 'server', 'main.js');
/** The one-shot CLI as users run it: the bundle `npm run build` makes (package.json "bin"). */
export const CLI_JS = join(ROOT, 'dist', 'src', 'client', 'launch.cjs');
export const CKVCTL_JS = join(ROOT, 'dist', 'tools', 'ckvctl.js');

export const RUN_TIMEOUT_MS_DEFAULT = 30_000;

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit. */
  ms: number;
}

export interface RunOptions {
  /** Added to this process's environment; undefined removes a variable. NODE_EXTRA_CA_CERTS is always removed. */
  env?: Record<string, string | undefined>;
  /** Written to stdin, which is then closed (default: nothing). */
  input?: string | Buffer;
  /** Kill the child with SIGKILL and reject after this long (default 30 s). */
  timeoutMs?: number;
  /** Close our end of the child's stdout at once, as `| head -0` would: its writes fail with EPIPE. */
  closeStdout?: boolean;
}

export interface Started {
  proc: ChildProcess;
  /** Output so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves once stdout satisfies pred (checked on every chunk); rejects at the deadline or if the child exits first. */
  waitForStdout(pred: (stdout: string) => boolean, what: string, timeoutMs?: number): Promise<string>;
  /** Resolves when the child has exited; rejects if it outlived timeoutMs (and was killed). */
  done: Promise<RunResult>;
}

function childEnv(extra: Record<string, string | undefined> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...extra })) if (v !== undefined) env[k] = v;
  delete env.NODE_EXTRA_CA_CERTS;
  return env;
}

/** Start a program; the returned `done` settles when it exits, or after the deadline (killed). */
export function start(cmd: string, args: string[], opts: RunOptions = {}): Started {
  const timeoutMs = opts.timeoutMs ?? RUN_TIMEOUT_MS_DEFAULT;
  const t0 = performance.now();
  const proc = spawn(cmd, args, { env: childEnv(opts.env), stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const watchers = new Set<() => void>();
  let exited = false;
  if (opts.closeStdout) proc.stdout!.destroy();
  else
    proc.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      for (const w of [...watchers]) w();
    });
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  // A child that exits before reading its stdin must not fail the test with EPIPE.
  proc.stdin!.on('error', () => {});
  proc.stdin!.end(opts.input ?? '');
  const done = new Promise<RunResult>((resolveDone, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} still running after ${timeoutMs} ms (killed)\nstderr: ${stderr}`));
    }, timeoutMs);
    proc.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    proc.on('close', (code, signal) => {
      clearTimeout(timer);
      exited = true;
      for (const w of [...watchers]) w();
      resolveDone({ code, signal, stdout, stderr, ms: performance.now() - t0 });
    });
  });
  done.catch(() => {}); // the caller awaits it; a rejection before that is not unhandled
  const waitForStdout = (pred: (s: string) => boolean, what: string, waitMs = 10_000): Promise<string> =>
    new Promise((resolveWait, reject) => {
      const finish = (err: Error | null) => {
        clearTimeout(timer);
        watchers.delete(check);
        if (err) reject(err);
        else resolveWait(stdout);
      };
      const check = () => {
        if (pred(stdout)) finish(null);
        else if (exited) finish(new Error(`exited before ${what}; stdout: ${JSON.stringify(stdout)}; stderr: ${stderr}`));
      };
      const timer = setTimeout(() => finish(new Error(`timed out after ${waitMs} ms waiting for ${what}; stdout: ${JSON.stringify(stdout)}`)), waitMs);
      watchers.add(check);
      check();
    });
  return { proc, stdout: () => stdout, stderr: () => stderr, waitForStdout, done };
}

/** Run a program to completion, bounded in time. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return start(cmd, args, opts).done;
}

/** Run a compiled node program (a dist/ path) to completion. */
export function runNode(script: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [script, ...args], opts);
}
