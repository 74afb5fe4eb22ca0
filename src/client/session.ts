// The session token file: one causal token per cluster, shared by every
// one-shot client of a user, so that `ckv put` then `ckv get` (any server)
// reads its own write. Format: {"<cluster>": <ts>, ...}.
//
// Updates keep the maximum when processes race. Readers never wait: the file
// is replaced by rename, so a reader sees a whole old or a whole new version.
// Writers take a short lock (an O_EXCL lock file, held for one read-merge-
// rename), because a rename alone cannot keep the maximum: a writer that read
// before another's rename could replace a larger token with its smaller one
// after that writer had checked. After the lock is released the writer
// re-reads and tries again if its token is missing (a stolen stale lock).

import { mkdir, open, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

/** How long a writer waits for the lock before writing without it, in ms (at most: saveToken's lockWaitMs). */
const LOCK_WAIT_MS_MAX = 2_000;
/** A lock older than this was left by a crashed writer (one update takes ~1 ms), in ms. */
const LOCK_STALE_MS = 1_000;
/** Pause between lock attempts, in ms (randomised up to twice this). */
const LOCK_RETRY_MS = 2;
/** Full update attempts when a re-read shows our token was lost. */
const UPDATE_ATTEMPTS_MAX = 5;

export type Warn = (message: string) => void;

const warnStderr: Warn = (m) => process.stderr.write(`ckv: warning: ${m}\n`);

/** ${XDG_STATE_HOME:-$HOME/.local/state}/ckv/session.json */
export function defaultSessionPath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_STATE_HOME && env.XDG_STATE_HOME.startsWith('/') ? env.XDG_STATE_HOME : join(env.HOME || homedir(), '.local', 'state');
  return join(base, 'ckv', 'session.json');
}

function isToken(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

/** All tokens in the file; {} if it is missing. A corrupt file is reported and treated as empty. */
export async function readSession(path: string, warn: Warn = warnStderr): Promise<Record<string, number>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') warn(`cannot read session file ${path}: ${(err as Error).message}`);
    return Object.create(null);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    warn(`ignoring corrupt session file ${path} (not JSON)`);
    return Object.create(null);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    warn(`ignoring corrupt session file ${path} (not a JSON object)`);
    return Object.create(null);
  }
  const tokens: Record<string, number> = Object.create(null); // a cluster may be called "__proto__"
  for (const [k, v] of Object.entries(raw)) {
    if (isToken(v)) tokens[k] = v;
    else warn(`ignoring bad token for "${k}" in session file ${path}`);
  }
  return tokens;
}

/** The token kept for cluster, 0 if none. */
export async function readToken(path: string, cluster: string, warn: Warn = warnStderr): Promise<number> {
  const tokens = await readSession(path, warn);
  return Object.hasOwn(tokens, cluster) ? tokens[cluster]! : 0;
}

/**
 * Raise cluster's token to ts (never lowers it). Failures to write are
 * reported through warn, not thrown: a lost token weakens only later
 * processes' guarantees, and the command itself has succeeded.
 */
export async function saveToken(path: string, cluster: string, ts: number, warn: Warn = warnStderr, opts: { lockWaitMs?: number } = {}): Promise<void> {
  if (!isToken(ts)) throw new TypeError('token must be a non-negative integer');
  const lockWaitMs = Math.max(0, Math.min(opts.lockWaitMs ?? LOCK_WAIT_MS_MAX, LOCK_WAIT_MS_MAX));
  try {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    for (let attempt = 0; attempt < UPDATE_ATTEMPTS_MAX; attempt++) {
      const release = await lock(path, warn, lockWaitMs);
      try {
        const tokens = await readSession(path, attempt === 0 ? warn : () => {});
        if ((tokens[cluster] ?? 0) >= ts) return;
        tokens[cluster] = ts;
        const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
        try {
          await writeFile(tmp, JSON.stringify(tokens) + '\n', { mode: 0o600 });
          await rename(tmp, path);
        } catch (err) {
          await unlink(tmp).catch(() => {});
          throw err;
        }
      } finally {
        await release();
      }
      if ((await readToken(path, cluster, () => {})) >= ts) return;
    }
    warn(`session file ${path}: token ${ts} for "${cluster}" kept being overwritten`);
  } catch (err) {
    warn(`cannot update session file ${path}: ${(err as Error).message}`);
  }
}

/** Take the writers' lock; resolves to its release. Gives up after waitMs (writes unlocked). */
async function lock(path: string, warn: Warn, waitMs: number): Promise<() => Promise<void>> {
  const lockPath = `${path}.lock`;
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      const fh = await open(lockPath, 'wx', 0o600);
      await fh.close();
      return () => unlink(lockPath).catch(() => {});
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    try {
      const st = await stat(lockPath);
      if (Date.now() - st.mtimeMs > LOCK_STALE_MS) {
        await unlink(lockPath).catch(() => {}); // left by a crashed writer
        continue;
      }
    } catch {
      continue; // released meanwhile
    }
    if (Date.now() > deadline) {
      warn(`session file ${path}: lock ${lockPath} is busy; writing without it`);
      return async () => {};
    }
    await new Promise((resolve) => setTimeout(resolve, LOCK_RETRY_MS * (1 + Math.random())));
  }
}
