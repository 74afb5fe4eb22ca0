// The session token file: one causal token per cluster, shared by every
// one-shot client of a user, so that `ckv put` then `ckv get` (any server)
// reads its own write. Format: {"<cluster>": {"ts": <ts>, "id": "<identity>"}, ...}
// (a bare number, as older versions wrote, is a token whose identity is unknown).
// A token belongs to one cluster identity: one from an earlier cluster of the
// same name is replaced, not kept as a maximum.
//
// Updates keep the maximum when processes race. Readers never wait: the file
// is replaced by rename, so a reader sees a whole old or a whole new version.
// Writers take a short lock (an O_EXCL lock file, held for one read-merge-
// rename), because a rename alone cannot keep the maximum: a writer that read
// before another's rename could replace a larger token with its smaller one
// after that writer had checked. After the lock is released the writer
// re-reads and tries again if its token is missing (a stolen stale lock).

import * as fs from 'node:fs';
import { promisify } from 'node:util';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

// fs with callbacks, promisified: node:fs/promises would load readline and streams,
// a few milliseconds of every one-shot command's start.
const readFile = promisify(fs.readFile);
const writeFile = promisify(fs.writeFile);
const mkdir = promisify(fs.mkdir);
const rename = promisify(fs.rename);
const unlink = promisify(fs.unlink);
const stat = promisify(fs.stat);
const openFd = promisify(fs.open);
const closeFd = promisify(fs.close);

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

/** A cluster's token and the cluster identity it belongs to ('' when unknown). */
export interface SessionEntry {
  ts: number;
  id: string;
}

const CLUSTER_ID = /^[-_a-zA-Z0-9]{22}$/;

/** All tokens in the file; {} if it is missing. A corrupt file is reported and treated as empty. */
export async function readSession(path: string, warn: Warn = warnStderr): Promise<Record<string, number>> {
  const entries = await readEntries(path, warn);
  const tokens: Record<string, number> = Object.create(null);
  for (const k of Object.keys(entries)) tokens[k] = entries[k]!.ts;
  return tokens;
}

/** The token kept for cluster, with its identity ({ts: 0, id: ''} if none). */
export async function readSessionEntry(path: string, cluster: string, warn: Warn = warnStderr): Promise<SessionEntry> {
  const entries = await readEntries(path, warn);
  return Object.hasOwn(entries, cluster) ? entries[cluster]! : { ts: 0, id: '' };
}

async function readEntries(path: string, warn: Warn): Promise<Record<string, SessionEntry>> {
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
  const tokens: Record<string, SessionEntry> = Object.create(null); // a cluster may be called "__proto__"
  for (const [k, v] of Object.entries(raw)) {
    const o = v as { ts?: unknown; id?: unknown } | null;
    if (isToken(v)) tokens[k] = { ts: v, id: '' };
    else if (typeof o === 'object' && o !== null && isToken(o.ts) && typeof o.id === 'string' && (o.id === '' || CLUSTER_ID.test(o.id))) tokens[k] = { ts: o.ts, id: o.id };
    else warn(`ignoring bad token for "${k}" in session file ${path}`);
  }
  return tokens;
}

/** The token kept for cluster, 0 if none. */
export async function readToken(path: string, cluster: string, warn: Warn = warnStderr): Promise<number> {
  return (await readSessionEntry(path, cluster, warn)).ts;
}

/**
 * Raise cluster's token to ts (never lowers it), for the cluster identity `opts.id` when
 * known: a token of another identity is replaced. Failures to write are reported through
 * warn, not thrown: a lost token weakens only later processes' guarantees, and the command
 * itself has succeeded.
 */
export async function saveToken(path: string, cluster: string, ts: number, warn: Warn = warnStderr, opts: { lockWaitMs?: number; id?: string; replace?: boolean } = {}): Promise<void> {
  if (!isToken(ts)) throw new TypeError('token must be a non-negative integer');
  const lockWaitMs = Math.max(0, Math.min(opts.lockWaitMs ?? LOCK_WAIT_MS_MAX, LOCK_WAIT_MS_MAX));
  try {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    for (let attempt = 0; attempt < UPDATE_ATTEMPTS_MAX; attempt++) {
      const release = await lock(path, warn, lockWaitMs);
      try {
        const tokens = await readEntries(path, attempt === 0 ? warn : () => {});
        const id = opts.id ?? '';
        const had = Object.hasOwn(tokens, cluster) ? tokens[cluster]! : { ts: 0, id: '' };
        // Another identity's token (or one the caller found stale) is replaced, not kept as a maximum.
        const foreign = (opts.replace === true && had.id !== id) || (had.id !== '' && id !== '' && had.id !== id);
        if (!foreign && had.ts >= ts && (had.id !== '' || id === '')) return;
        tokens[cluster] = { ts: foreign ? ts : Math.max(ts, had.ts), id: id || had.id };
        const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
        try {
          // A token of unknown identity stays a bare number (the older format, which older versions read).
          const out: Record<string, number | SessionEntry> = Object.create(null);
          for (const k of Object.keys(tokens)) out[k] = tokens[k]!.id === '' ? tokens[k]!.ts : tokens[k]!;
          await writeFile(tmp, JSON.stringify(out) + '\n', { mode: 0o600 });
          await rename(tmp, path);
        } catch (err) {
          await unlink(tmp).catch(() => {});
          throw err;
        }
      } finally {
        await release();
      }
      const now = await readSessionEntry(path, cluster, () => {});
      if (now.ts >= ts && (opts.id === undefined || opts.id === '' || now.id === opts.id)) return;
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
      await closeFd(await openFd(lockPath, 'wx', 0o600));
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
