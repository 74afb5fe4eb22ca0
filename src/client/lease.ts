// Leases (as etcd's): a lease has a ttl; keys attached to it go when it does (revoked, or
// expired because nobody kept it alive). The lease is the record _lease.<id>, where id is
// the log index of its grant; a keepalive rewrites it (its countdown starts again).

// (CkvError from core: client.ts imports this file, so its own exports are not ready at load.)
import { CkvError, ErrorCode } from '../core/errors.js';
import type { Client } from './client.js';

/** A lease kept alive is refreshed this many times per ttl. */
const KEEPALIVES_PER_TTL = 3;
/** Not kept alive for this share of its ttl, a lease counts as lost (it expires at the whole ttl at the soonest). */
const LOST_AFTER_TTL_SHARE = 5 / 6;

export interface Lease {
  /** The lease's id: attach keys with `put(key, value, { lease: id })`. */
  readonly id: number;
  readonly ttl: number;
  /** Settles (with the reason) if the lease is lost: gone (revoked, expired), or not kept alive in time. */
  readonly lost: Promise<CkvError>;
  /** Stop keeping it alive and revoke it: its keys are deleted with it. */
  revoke(): Promise<void>;
  /** Stop keeping it alive: it expires a ttl after the last keepalive (its keys with it). */
  stop(): void;
}

export interface LeaseInfo {
  id: number;
  ttl: number;
  /** The index of its grant or of its last keepalive: its countdown runs from there. */
  rev: number;
}

/** Keep lease `id` alive every ttl/3 until stopped, revoked or lost. */
export function keepLease(client: Client, id: number, ttl: number, grantedAt: number): Lease {
  let lastOk = grantedAt;
  let done = false;
  let inFlight = false;
  let lose!: (e: CkvError) => void;
  const lost = new Promise<CkvError>((resolve) => (lose = resolve));
  const end = (e: CkvError | null): void => {
    if (done) return;
    done = true;
    clearInterval(timer);
    clearInterval(watchdog);
    if (e) lose(e);
  };
  const keepAlive = async (): Promise<void> => {
    if (inFlight || done) return;
    inFlight = true;
    const sentAt = Date.now();
    try {
      await client.keepAlive(id);
      // Good for a ttl from when this keepalive was sent (the countdown restarted no sooner).
      lastOk = sentAt;
    } catch (err) {
      if (err instanceof CkvError && err.code === ErrorCode.LEASE_NOT_FOUND) end(err);
      // Unavailable for now: tried again at the next turn; the watchdog decides when it is too late.
    } finally {
      inFlight = false;
    }
  };
  const timer = setInterval(() => void keepAlive(), Math.max(1, Math.floor(ttl / KEEPALIVES_PER_TTL)));
  const watchdog = setInterval(() => {
    if (Date.now() - lastOk >= ttl * LOST_AFTER_TTL_SHARE) end(new CkvError(ErrorCode.UNAVAILABLE, `lease ${id} could not be kept alive for ${Math.round(ttl * LOST_AFTER_TTL_SHARE)} ms of its ${ttl} ms ttl: it may expire`));
  }, Math.max(1, Math.floor(ttl / 20)));
  return {
    id,
    ttl,
    lost,
    async revoke(): Promise<void> {
      end(null);
      await client.revoke(id);
    },
    stop(): void {
      end(null);
    },
  };
}
