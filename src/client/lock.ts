// Locks and leader elections for scripts, on one key with a time to live.
//
// Acquire: create the key (only if absent) with a ttl; the write's index is the fencing
// token, larger than that of every earlier holder. Hold: refresh it (a cas by revision
// with the ttl again) every ttl/3. Release: delete it at our revision. A holder that dies
// stops refreshing, and the coordinator expires the key after its ttl (never sooner).
// Waiting: a watch on the key, subscribed before the create, wakes us when it goes.

// (CkvError from core: client.ts imports this file, so its own exports are not ready at load.)
import { CkvError, ErrorCode } from '../core/errors.js';
import { CasMismatchError, type Client } from './client.js';
import { randomFill } from './random.js';

/** A lock is refreshed this many times per ttl. */
const REFRESHES_PER_TTL = 3;
/** Unrefreshed for this share of its ttl, a lock counts as lost (it expires at the whole ttl at the soonest). */
const LOST_AFTER_TTL_SHARE = 5 / 6;
export const LOCK_TTL_MS_DEFAULT = 10_000;
/** Shorter locks would be refreshed too often to hold through an ordinary hiccup. */
export const LOCK_TTL_MS_MIN = 1_000;

export interface LockOptions {
  /** Time to live of the lock, in ms (default 10 s): how long after its holder dies it is free again. */
  ttl?: number;
  /** How long to wait for the lock, in ms (default: as long as it takes; 0: do not wait). */
  wait?: number;
  /** What the key holds while held (default: host:pid). */
  value?: string;
}

export interface Lock {
  readonly key: string;
  /** The revision that acquired it: strictly larger than every earlier holder's. Pass it to what the lock protects. */
  readonly fence: number;
  /** Settles (with the reason) if the lock is lost while held: not refreshed within its ttl, or taken from us. */
  readonly lost: Promise<CkvError>;
  /** Stop refreshing and delete the key (only if still ours). */
  release(): Promise<void>;
}

/** The lock is held by another, and we were not to wait (or waited long enough). */
export class LockHeldError extends CkvError {
  constructor(
    readonly key: string,
    readonly holder: string | null | undefined,
  ) {
    super(ErrorCode.CAS_MISMATCH, `${key} is held${holder ? ` by ${JSON.stringify(holder)}` : ''}`);
    this.name = 'LockHeldError';
  }
}

export async function acquire(client: Client, key: string, value: string, opts: LockOptions = {}): Promise<Lock> {
  const ttl = opts.ttl ?? LOCK_TTL_MS_DEFAULT;
  const waitUntil = opts.wait === undefined ? Infinity : Date.now() + opts.wait;
  for (;;) {
    // Subscribed before the create: a release between our failed create and the wait is seen.
    const w = client.watch(key);
    // The lock is good for a ttl from when the create was sent, at the most (not from its ack:
    // retries may have taken most of the ttl).
    const sentAt = Date.now();
    try {
      const fence = (await client.create(key, value, { ttl })).index;
      return hold(client, key, value, ttl, fence, sentAt);
    } catch (err) {
      if (!(err instanceof CasMismatchError)) throw err;
      const remaining = waitUntil - Date.now();
      if (remaining <= 0) throw new LockHeldError(key, err.current);
      // Until it is deleted (released or expired), or a ttl passes (a lost event), or the wait ends.
      await untilDeleted(w, Math.min(remaining, ttl));
    } finally {
      w.stop();
    }
  }
}

async function untilDeleted(w: ReturnType<Client['watch']>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)));
  // (A watch that fails leaves the timeout to end the wait: no busy loop.)
  const deleted = (async () => {
    for await (const e of w) if (e.op === 'del') return;
    await new Promise(() => {});
  })().catch(() => new Promise<void>(() => {}));
  await Promise.race([timeout, deleted]);
  clearTimeout(timer);
}

function newRid(): string {
  return `lock-${Buffer.from(randomFill(new Uint8Array(16))).toString('base64url')}`;
}

function hold(client: Client, key: string, value: string, ttl: number, fence: number, acquiredAt: number): Lock {
  let rev = fence;
  let lastOk = acquiredAt;
  let released = false;
  let lose!: (e: CkvError) => void;
  const lost = new Promise<CkvError>((resolve) => (lose = resolve));
  let isLost = false;
  const giveUp = (e: CkvError): void => {
    if (isLost || released) return;
    isLost = true;
    clearInterval(refresher);
    clearInterval(watchdog);
    lose(e);
  };
  let inFlight = false;
  /**
   * A refresh whose outcome is unknown (no answer in time) is sent again with the same rid:
   * applied already, the cluster answers with its first result (our new revision), not a mismatch.
   */
  let pending: { rid: string; sentAt: number } | null = null;
  const refresh = async (): Promise<void> => {
    if (inFlight || isLost) return;
    inFlight = true;
    pending ??= { rid: newRid(), sentAt: Date.now() };
    try {
      const r = await client.request({ op: 'cas', key, expectRev: rev, value, ttl, rid: pending.rid });
      rev = r.index;
      // Valid for a ttl from when this refresh was first sent (the countdown restarted no sooner).
      lastOk = pending.sentAt;
      pending = null;
    } catch (err) {
      // Deleted or taken since: someone else may hold it now.
      if (err instanceof CasMismatchError) {
        pending = null;
        giveUp(new CkvError(ErrorCode.CAS_MISMATCH, err.current === null || err.current === undefined ? `${key} was deleted, or expired` : `${key} was taken: it holds ${JSON.stringify(err.current)}`));
      }
      // Unavailable for now: tried again (same rid) at the next turn; the watchdog decides when it is too late.
    } finally {
      inFlight = false;
    }
  };
  const refresher = setInterval(() => void (released ? undefined : refresh()), Math.max(1, Math.floor(ttl / REFRESHES_PER_TTL)));
  // Not refreshed for most of its ttl: given up before it can expire, so that what it guards
  // stops before another may take it (the fencing token guards the rest).
  const watchdog = setInterval(() => {
    if (Date.now() - lastOk >= ttl * LOST_AFTER_TTL_SHARE) giveUp(new CkvError(ErrorCode.UNAVAILABLE, `${key} could not be refreshed for ${Math.round(ttl * LOST_AFTER_TTL_SHARE)} ms of its ${ttl} ms ttl: it may expire`));
  }, Math.max(1, Math.floor(ttl / 20)));
  return {
    key,
    fence,
    lost,
    async release(): Promise<void> {
      if (released) return;
      released = true;
      clearInterval(refresher);
      clearInterval(watchdog);
      // Wait for a refresh in flight, and settle one of unknown outcome: its revision is the one to delete at.
      while (inFlight) await new Promise((r) => setTimeout(r, 5));
      if (pending !== null && !isLost) await refresh();
      try {
        await client.casRev(key, rev, null);
      } catch (err) {
        // Already gone (expired, or taken): nothing of ours to delete.
        if (!(err instanceof CasMismatchError)) throw err;
      }
    },
  };
}
