// Simulated client sessions, speaking the wire protocol: each sends the same
// Request objects a NATS client sends (JSON, through the server's validation)
// and gets the same Reply objects back. A session is sequential (one request at
// a time, like a chain of one-shot processes sharing a session token), sends
// reads to any server with its token as `after`, writes and strong reads to
// whichever server serves the write subject, retries a write with the same rid
// until it gets a final answer, now and then resends an acknowledged write's rid
// (a retry whose first reply was lost), and writes only unique values. Every
// answer is checked at once (invariants.ts); the histories go to the causal checker.

import type { ClientWriteOp, Reply, Request, WriteOp, WriteResult } from '../../src/core/wire.js';
import type { HOp, History } from './checker.js';
import type { Rng } from './prng.js';

export type SessionOp =
  | { t: 'put'; key: string; value: string }
  | { t: 'batch'; puts: Array<[string, string]> }
  /** One key: get; more: mget. */
  | { t: 'get'; keys: string[]; strong: boolean }
  | { t: 'cas'; key: string; expect: string | null; value: string | null }
  /** By revision (0: must be absent). */
  | { t: 'casRev'; key: string; rev: number; value: string | null; ttl?: number; b64?: true }
  | { t: 'create'; key: string; value: string; ttl?: number }
  /** A put with a time to live (noise keys only: they expire). */
  | { t: 'putTtl'; key: string; value: string; ttl: number; b64?: true }
  | { t: 'del'; key: string }
  | { t: 'delprefix'; prefix: string }
  | { t: 'list'; prefix: string; start?: string; limit: number; strong: boolean }
  | { t: 'history'; key: string; limit: number }
  | { t: 'replay'; from: number; limit: number; key?: string; prefix?: string }
  /** A key as of a revision (the durable history). */
  | { t: 'getRev'; key: string; rev: number }
  /** Leases: grant one, keep it alive, revoke it, put a key attached to one (which may be gone). */
  | { t: 'grant'; ttl: number }
  | { t: 'keepalive'; lease: number }
  | { t: 'revoke'; lease: number }
  | { t: 'putLease'; key: string; value: string; lease: number }
  /** The same request id again, after its write was acknowledged: the first result comes back. */
  | { t: 'retry'; rid: string; ops: ClientWriteOp[] }
  /** A request carrying a token no write of this cluster has (from the future, or another cluster). */
  | { t: 'bogus'; write: boolean; key: string; after: number };

/** Tokens from the future start here: the cluster's clocks must never get near them. */
export const BOGUS_TS = 1_000_000_000;

export interface ClientHost {
  readonly now: number;
  readonly rng: Rng;
  /** Send a request to some server (writes and strong reads on the write subject); false if no server would take it. */
  send(s: Session, op: SessionOp, req: Request, attempt: number): boolean;
  /** Call s.tick() at time t. */
  wakeAt(s: Session, t: number): void;
  /** Check a reply against the model (throws on a violation). */
  checkReply(s: Session, op: SessionOp, req: Request, reply: Reply, by: number, ackedIndexAtSend: number): void;
  onAck(s: Session, rid: string, index: number): void;
  trace(what: string): void;
  readonly clientTimeout: number;
  /** Largest log index of any write acknowledged so far (for the strong-read check). */
  readonly ackedMax: number;
  /** Highest committed index known (replay requests start around it). */
  readonly committedLast: number;
  readonly mainKeys: string[];
  readonly noiseKeys: string[];
  readonly issuing: boolean;
  /** Share of ops that are data-model ops (Params.dataOps). */
  readonly dataOps: number;
}

interface InFlight {
  op: SessionOp;
  req: Request;
  rid?: string;
  attempt: number;
  tries: number;
  timeoutAt: number | null;
  retryAt: number | null;
}

export interface SessionStats {
  writes: number;
  acked: number;
  reads: number;
  readsDone: number;
  readsGivenUp: number;
  retries: number;
  /** Writes refused because the coordinator's checkpoint was too far behind (dirtyMax). */
  behind: number;
  tokenAhead: number;
  bogus: number;
  bogusRejected: number;
  pages: number;
  resent: number;
}

/** A reply that ends a request (anything else is retried or, for reads, given up on). */
export function isFinal(op: SessionOp, reply: Reply): boolean {
  if (reply.ok) return true;
  const code = reply.error.code;
  if (code === 'CAS_MISMATCH') return op.t === 'cas' || op.t === 'casRev' || op.t === 'create' || op.t === 'retry';
  if (code === 'LEASE_NOT_FOUND') return op.t === 'keepalive' || op.t === 'putLease' || op.t === 'retry';
  if (code === 'TOO_LARGE') return op.t === 'putLease' || op.t === 'retry';
  if (code === 'NOT_FOUND') return op.t === 'get' || op.t === 'getRev';
  if (code === 'COMPACTED') return op.t === 'replay' || op.t === 'getRev';
  return false;
}

/** The WriteResult a write reply stands for, in the state machine's own field order. */
export function resultOf(reply: Reply): WriteResult | undefined {
  if (reply.ok) return { ok: true };
  if (reply.error.code === 'LEASE_NOT_FOUND') return { ok: false, code: 'LEASE_NOT_FOUND', failed: reply.failed!, lease: Number(/lease (\d+)/.exec(reply.error.message)?.[1]) };
  if (reply.error.code === 'TOO_LARGE' && /LEASE_KEYS_MAX/.test(reply.error.message)) return { ok: false, code: 'LEASE_FULL', failed: reply.failed!, lease: Number(/lease (\d+)/.exec(reply.error.message)?.[1]) };
  if (reply.error.code !== 'CAS_MISMATCH') return undefined;
  return { ok: false, code: 'CAS_MISMATCH', failed: reply.failed!, current: reply.current ?? null };
}

export class Session {
  readonly id: number;
  token = 0;
  private host: ClientHost;
  private seq = 0;
  busy: InFlight | null = null;
  /** This session's part of the history, in program order. */
  readonly ops: HOp[] = [];
  /** Token-passing edges into this session: [session, opIndexInThatSession] before our next op. */
  private incoming: Array<[number, number]> = [];
  /** Token passes received before the current request was issued: the next op recorded follows them. */
  private carried: Array<[number, number]> = [];
  readonly edgesIn: Array<[fromSession: number, fromOp: number, toOp: number]> = [];
  /** Last value and revision seen per noise key, for cas (0: absent). */
  private seen = new Map<string, string | null>();
  private seenRev = new Map<string, number>();
  /** Leases this session was granted (some expired or revoked since). */
  private leases: number[] = [];
  /** Writes acknowledged to this session, for resending their rid. */
  private ackedWrites: Array<{ rid: string; ops: ClientWriteOp[] }> = [];
  readonly stats: SessionStats = { writes: 0, acked: 0, reads: 0, readsDone: 0, readsGivenUp: 0, retries: 0, behind: 0, tokenAhead: 0, bogus: 0, bogusRejected: 0, pages: 0, resent: 0 };
  sessions: Session[] = [];

  constructor(id: number, host: ClientHost) {
    this.id = id;
    this.host = host;
  }

  /** Add an op to the history; it follows the token passes received before its request was issued. */
  private record(op: Omit<HOp, 'session'>): void {
    const idx = this.ops.length;
    for (const [s, o] of this.carried) this.edgesIn.push([s, o, idx]);
    this.carried = [];
    this.ops.push({ session: this.id, ...op });
  }

  /** Time to do the next thing. */
  private wake(): void {
    if (this.busy || !this.host.issuing) return;
    const rng = this.host.rng;
    const main = this.host.mainKeys;
    const noise = this.host.noiseKeys;
    const uniq = (): string => `s${this.id}.${++this.seq}`;
    // (No draw at all when dataOps is 0: see Params.dataOps.)
    if (this.host.dataOps > 0 && rng.chance(this.host.dataOps)) {
      const y = rng.float();
      const key = rng.pick(noise);
      const ttl = (): { ttl?: number } => (rng.chance(0.4) ? { ttl: rng.pick([60, 150, 400, 1000]) } : {});
      // Some values are bytes (not UTF-8 text): base64 with b64 on the wire.
      const bytes = (v: string): { value: string; b64: true } => ({ value: Buffer.from(`${v}\u0000\u00ff`, 'latin1').toString('base64'), b64: true });
      if (y < 0.22) {
        const value = rng.chance(0.2) ? null : uniq();
        const v = value !== null && rng.chance(0.3) ? bytes(value) : { value };
        this.start({ t: 'casRev', key, rev: this.seenRev.get(key) ?? 0, ...v, ...(value !== null ? ttl() : {}) });
      } else if (y < 0.36) this.start({ t: 'create', key, value: uniq(), ...ttl() });
      else if (y < 0.5) this.start({ t: 'putTtl', key, ...(rng.chance(0.3) ? bytes(uniq()) : { value: uniq() }), ttl: rng.pick([60, 150, 400, 1000]) });
      else if (y < 0.55) this.start({ t: 'delprefix', prefix: rng.pick(['n.', 'n.1', 'n.', 'x.']) });
      else if (y < 0.8) {
        // Leases: mostly this session's own, sometimes one that never was.
        const lease = this.leases.length > 0 && rng.chance(0.9) ? rng.pick(this.leases) : rng.range(1, Math.max(1, this.host.committedLast));
        const z = rng.float();
        if (z < 0.25 || this.leases.length === 0) this.start({ t: 'grant', ttl: rng.pick([400, 1000, 2000]) });
        else if (z < 0.55) this.start({ t: 'keepalive', lease });
        else if (z < 0.7) this.start({ t: 'revoke', lease });
        else this.start({ t: 'putLease', key, value: uniq(), lease });
      }
      else if (y < 0.89) {
        // Anywhere in the committed log: the history may still hold it, or say COMPACTED.
        const last = this.host.committedLast;
        this.start({ t: 'getRev', key: rng.pick([...main, ...noise]), rev: rng.chance(0.5) ? rng.range(1, Math.max(1, last)) : Math.max(1, last - rng.range(0, 20)) });
      } else {
        const only = rng.chance(0.3) ? { key: rng.pick([...main, ...noise]) } : rng.chance(0.5) ? { prefix: rng.pick(['k.', 'n.', 'k.1', 'x.']) } : {};
        this.start({ t: 'replay', from: rng.range(0, Math.max(0, this.host.committedLast)), limit: rng.range(1, 12), ...only });
      }
      return;
    }
    const x = rng.float();
    let op: SessionOp;
    if (x < 0.33) op = { t: 'put', key: rng.pick(main), value: uniq() };
    else if (x < 0.4) {
      const a = rng.pick(main);
      let b = rng.pick(main);
      if (b === a) b = main[(main.indexOf(a) + 1) % main.length]!;
      op = { t: 'batch', puts: a === b ? [[a, uniq()]] : [[a, uniq()], [b, uniq()]] };
    } else if (x < 0.66) op = { t: 'get', keys: [rng.pick(main)], strong: false };
    else if (x < 0.72) op = { t: 'get', keys: rng.shuffle([...main]).slice(0, 2), strong: false };
    else if (x < 0.77) op = { t: 'get', keys: [rng.pick(main)], strong: true };
    else if (x < 0.8) op = { t: 'get', keys: [rng.pick(noise)], strong: false };
    else if (x < 0.84) {
      const key = rng.pick(noise);
      const expect = this.seen.has(key) ? this.seen.get(key)! : null;
      op = { t: 'cas', key, expect, value: rng.chance(0.2) ? null : uniq() };
    } else if (x < 0.86) op = { t: 'del', key: rng.pick(noise) };
    else if (x < 0.89) {
      const start = rng.chance(0.5) ? rng.pick([...main, ...noise]) : undefined;
      op = { t: 'list', prefix: rng.pick(['', 'k.', 'n.', 'k.1']), ...(start !== undefined ? { start } : {}), limit: rng.range(1, 4), strong: rng.chance(0.2) };
    } else if (x < 0.91) op = { t: 'history', key: rng.pick([...main, ...noise]), limit: rng.range(1, 5) };
    else if (x < 0.93) op = { t: 'replay', from: Math.max(0, this.host.committedLast - rng.range(0, 30)), limit: rng.range(1, 6) };
    else if (x < 0.95 && this.ackedWrites.length > 0) {
      const w = rng.pick(this.ackedWrites);
      op = { t: 'retry', rid: w.rid, ops: w.ops };
    } else if (x < 0.97) op = { t: 'bogus', write: rng.chance(0.4), key: rng.pick([...main, ...noise]), after: BOGUS_TS + rng.int(1000) };
    else {
      // Pass our token to another session (a pipe between two programs).
      const to = rng.pick(this.sessions);
      if (to !== this) {
        to.token = Math.max(to.token, this.token);
        if (this.ops.length > 0) to.incoming.push([this.id, this.ops.length - 1]);
        this.host.trace(`c${this.id} passes token ${this.token} to c${to.id}`);
      }
      this.idle(rng.range(1, 50));
      return;
    }
    this.start(op);
  }

  private start(op: SessionOp): void {
    // Token passes received so far order everything this op records after them.
    this.carried.push(...this.incoming);
    this.incoming = [];
    let req: Request;
    let rid: string | undefined;
    const newRid = (): string => `r${this.id}.${++this.seq}`;
    switch (op.t) {
      case 'get':
        req = op.keys.length === 1 ? { op: 'get', key: op.keys[0]! } : { op: 'mget', keys: op.keys };
        if (op.strong) req = { ...req, consistency: 'strong' } as Request;
        this.stats.reads++;
        break;
      case 'list':
        req = { op: 'list', prefix: op.prefix, ...(op.start !== undefined ? { start: op.start } : {}), limit: op.limit, ...(op.strong ? { consistency: 'strong' as const } : {}) };
        this.stats.reads++;
        break;
      case 'history':
        req = { op: 'history', key: op.key, limit: op.limit };
        this.stats.reads++;
        break;
      case 'replay':
        req = { op: 'replay', from: op.from, limit: op.limit, ...(op.key !== undefined ? { key: op.key } : {}), ...(op.prefix !== undefined ? { prefix: op.prefix } : {}) };
        this.stats.reads++;
        break;
      case 'getRev':
        req = { op: 'get', key: op.key, rev: op.rev };
        this.stats.reads++;
        break;
      case 'bogus':
        this.stats.bogus++;
        if (op.write) {
          rid = newRid();
          req = { op: 'put', key: op.key, value: `bogus.${rid}`, rid };
        } else req = { op: 'get', key: op.key, ...(this.host.rng.chance(0.3) ? { consistency: 'strong' as const } : {}) };
        break;
      case 'retry':
        rid = op.rid;
        req = op.ops.length === 1 ? { ...op.ops[0]!, rid } : { op: 'batch', ops: op.ops, rid };
        this.stats.resent++;
        break;
      default: {
        rid = newRid();
        let ops: ClientWriteOp[];
        if (op.t === 'put') ops = [{ op: 'put', key: op.key, value: op.value }];
        else if (op.t === 'batch') ops = op.puts.map(([key, value]) => ({ op: 'put', key, value }));
        else if (op.t === 'cas') ops = [{ op: 'cas', key: op.key, expect: op.expect, value: op.value }];
        else if (op.t === 'casRev') ops = [{ op: 'cas', key: op.key, expectRev: op.rev, value: op.value, ...(op.ttl !== undefined ? { ttl: op.ttl } : {}), ...(op.b64 ? { b64: true as const } : {}) }];
        else if (op.t === 'create') ops = [{ op: 'cas', key: op.key, expectRev: 0, value: op.value, ...(op.ttl !== undefined ? { ttl: op.ttl } : {}) }];
        else if (op.t === 'putTtl') ops = [{ op: 'put', key: op.key, value: op.value, ttl: op.ttl, ...(op.b64 ? { b64: true as const } : {}) }];
        else if (op.t === 'delprefix') ops = [{ op: 'delprefix', prefix: op.prefix }];
        else if (op.t === 'grant') ops = [{ op: 'grant', ttl: op.ttl }];
        else if (op.t === 'keepalive' || op.t === 'revoke') ops = [{ op: op.t, lease: op.lease }];
        else if (op.t === 'putLease') ops = [{ op: 'put', key: op.key, value: op.value, lease: op.lease }];
        else ops = [{ op: 'del', key: op.key }];
        // create goes on the wire as itself (the server stores it as a cas at revision 0).
        // A keepalive of an even lease goes as a batch of one (servers take both alike, also
        // while they refuse other writes); no draw decides it, so seeds replay as before.
        const batchOfOne = op.t === 'keepalive' && op.lease % 2 === 0;
        req = op.t === 'create' ? { op: 'create', key: op.key, value: op.value, ...(op.ttl !== undefined ? { ttl: op.ttl } : {}), rid } : ops.length === 1 && !batchOfOne ? { ...ops[0]!, rid } : { op: 'batch', ops, rid };
        this.stats.writes++;
        // Writes enter the history when issued: they may take effect even if never acknowledged.
        if (op.t === 'put') this.record({ kind: 'w', key: op.key, value: op.value, label: `c${this.id}:w(${op.key},${op.value})` });
        else if (op.t === 'batch') for (const [k, v] of op.puts) this.record({ kind: 'w', key: k, value: v, label: `c${this.id}:w(${k},${v})` });
      }
    }
    this.busy = { op, req, ...(rid !== undefined ? { rid } : {}), attempt: 0, tries: 0, timeoutAt: null, retryAt: null };
    this.send();
  }

  private send(): void {
    const b = this.busy!;
    b.attempt++;
    b.tries++;
    b.retryAt = null;
    // Every attempt carries the session's current token.
    const req = { ...b.req, after: b.op.t === 'bogus' ? b.op.after : this.token } as Request;
    this.host.trace(`c${this.id} try ${b.tries} ${describeOp(b.op)} after=${this.token}${b.rid ? ` rid=${b.rid}` : ''}`);
    if (!this.host.send(this, b.op, req, b.attempt)) {
      this.retryLater();
      return;
    }
    b.timeoutAt = this.host.now + this.host.clientTimeout;
    this.host.wakeAt(this, b.timeoutAt);
  }

  /** A timer fired (the host calls this at every time asked for by wakeAt). */
  tick(): void {
    const b = this.busy;
    if (!b) {
      if (this.host.now >= this.idleUntil) this.wake();
      return;
    }
    if (b.retryAt !== null) {
      if (b.retryAt <= this.host.now) this.send();
      return;
    }
    if (b.timeoutAt !== null && b.timeoutAt <= this.host.now) {
      b.timeoutAt = null;
      this.host.trace(`c${this.id} timeout on ${describeOp(b.op)}`);
      this.again();
    }
  }

  private idleUntil = 0;

  private idle(ms: number): void {
    this.busy = null;
    this.idleUntil = this.host.now + ms;
    this.host.wakeAt(this, this.idleUntil);
  }

  private retryLater(): void {
    const b = this.busy!;
    this.stats.retries++;
    b.timeoutAt = null;
    b.retryAt = this.host.now + this.host.rng.range(10, 100);
    this.host.wakeAt(this, b.retryAt);
  }

  /** The attempt failed without a final answer: retry (a write always, with the same rid), or give up a read. */
  private again(): void {
    const b = this.busy!;
    if (b.rid === undefined || b.op.t === 'bogus') {
      if (b.tries >= 6) {
        this.stats.readsGivenUp++;
        this.idle(this.host.rng.range(1, 50));
        return;
      }
    }
    this.retryLater();
  }

  /** A reply to one attempt of `op` (maybe a late one) from server `by`. */
  onReply(op: SessionOp, req: Request, attempt: number, reply: Reply, by: number, ackedAtSend: number): void {
    // Every reply is checked, even a late one for an attempt given up on.
    this.host.checkReply(this, op, req, reply, by, ackedAtSend);
    const b = this.busy;
    if (!b || b.op !== op || b.attempt !== attempt || b.timeoutAt === null) return;
    b.timeoutAt = null;
    this.token = Math.max(this.token, reply.ts);
    this.host.trace(`c${this.id} got ${reply.ok ? 'ok' : reply.error.code} ts=${reply.ts} index=${reply.index ?? '-'} from ${by}`);
    if (op.t === 'bogus') {
      // Only TOKEN_AHEAD ends it (an ok reply fails checkReply).
      if (!reply.ok && reply.error.code === 'TOKEN_AHEAD') {
        this.stats.bogusRejected++;
        this.idle(this.host.rng.range(1, 120));
      } else this.again();
      return;
    }
    if (!isFinal(op, reply)) {
      if (!reply.ok && reply.error.code === 'TOKEN_AHEAD') this.stats.tokenAhead++;
      if (!reply.ok && reply.error.code === 'UNAVAILABLE' && reply.error.message.includes('not checkpointed')) this.stats.behind++;
      this.again();
      return;
    }
    if (b.rid !== undefined) {
      this.stats.acked++;
      this.host.onAck(this, b.rid, reply.index!);
      if (op.t !== 'retry') this.ackedWrites.push({ rid: b.rid, ops: opsOf(b.req) });
      if (this.ackedWrites.length > 20) this.ackedWrites.shift();
      if (op.t === 'cas' || op.t === 'casRev' || op.t === 'create') {
        const r = resultOf(reply)!;
        this.seen.set(op.key, r.ok ? op.value : r.code === 'CAS_MISMATCH' ? r.current : this.seen.get(op.key) ?? null);
        // A write's index is the key's new revision; after a mismatch it is unknown until read.
        if (r.ok) this.seenRev.set(op.key, op.value === null ? 0 : reply.index!);
        else this.seenRev.delete(op.key);
      } else if (op.t === 'grant') {
        this.leases.push(reply.index!);
        if (this.leases.length > 4) this.leases.shift();
      } else if (op.t === 'putTtl') {
        this.seen.set(op.key, op.value);
        this.seenRev.set(op.key, reply.index!);
      } else if (op.t === 'del') {
        this.seen.set(op.key, null);
        this.seenRev.set(op.key, 0);
      } else if (op.t === 'delprefix') {
        for (const k of this.host.noiseKeys) {
          if (!k.startsWith(op.prefix)) continue;
          this.seen.set(k, null);
          this.seenRev.set(k, 0);
        }
      }
    } else {
      this.stats.readsDone++;
      if (op.t === 'list' || op.t === 'history' || op.t === 'replay') this.stats.pages++;
      if (op.t === 'get') {
        op.keys.forEach((k, i) => {
          const v = valueRead(reply, i);
          if (this.host.noiseKeys.includes(k)) {
            this.seen.set(k, v);
            this.seenRev.set(k, revRead(reply, i));
          }
          else this.record({ kind: 'r', key: k, value: v, label: `c${this.id}:r(${k})=${v ?? 'init'}@${reply.index}` });
        });
      }
    }
    this.idle(this.host.rng.range(1, 120));
  }
}

/** The revision a get or mget reply gives for its i-th key (0: absent). */
function revRead(reply: Reply, i: number): number {
  if (!reply.ok) return 0;
  if (reply.values) return reply.values[i]?.rev ?? 0;
  return reply.rev ?? 0;
}

/** The value a get or mget reply gives for its i-th key (null: absent). */
export function valueRead(reply: Reply, i: number): string | null {
  if (!reply.ok) return null;
  if (reply.values) return reply.values[i]?.value ?? null;
  return reply.value ?? null;
}

/** The ops a write request asks for, as the log must hold them (the simulation's own reading of the wire protocol). */
export function opsOf(req: Request): ClientWriteOp[] {
  const ttl = 'ttl' in req && req.ttl !== undefined ? { ttl: req.ttl } : {};
  const b64 = 'b64' in req && req.b64 === true ? { b64: true as const } : {};
  const lease = (req.op === 'put' || req.op === 'cas' || req.op === 'create') && req.lease !== undefined ? { lease: req.lease } : {};
  if (req.op === 'batch') return req.ops;
  if (req.op === 'grant') return [{ op: 'grant', ttl: req.ttl }];
  if (req.op === 'keepalive' || req.op === 'revoke') return [{ op: req.op, lease: req.lease }];
  if (req.op === 'put') return [{ op: 'put', key: req.key, value: req.value, ...ttl, ...b64, ...lease }];
  if (req.op === 'del') return [{ op: 'del', key: req.key }];
  if (req.op === 'cas') return ['expectRev' in req ? { op: 'cas', key: req.key, expectRev: req.expectRev, value: req.value, ...ttl, ...b64 } : { op: 'cas', key: req.key, expect: req.expect, value: req.value, ...ttl, ...b64 }];
  if (req.op === 'create') return [{ op: 'cas', key: req.key, expectRev: 0, value: req.value, ...ttl, ...b64 }];
  if (req.op === 'delprefix') return [{ op: 'delprefix', prefix: req.prefix }];
  throw new Error(`not a write: ${req.op}`);
}

export function describeOp(op: SessionOp): string {
  switch (op.t) {
    case 'put':
      return `put ${op.key}=${op.value}`;
    case 'batch':
      return `batch ${op.puts.map(([k, v]) => `${k}=${v}`).join(',')}`;
    case 'get':
      return `${op.strong ? 'strong ' : ''}get ${op.keys.join(',')}`;
    case 'cas':
      return `cas ${op.key} ${op.expect}->${op.value}`;
    case 'casRev':
      return `cas ${op.key} rev${op.rev}->${op.value}${op.ttl !== undefined ? ` ttl${op.ttl}` : ''}`;
    case 'create':
      return `create ${op.key}=${op.value}${op.ttl !== undefined ? ` ttl${op.ttl}` : ''}`;
    case 'putTtl':
      return `put ${op.key}=${op.value} ttl${op.ttl}`;
    case 'del':
      return `del ${op.key}`;
    case 'delprefix':
      return `delprefix ${op.prefix}`;
    case 'list':
      return `${op.strong ? 'strong ' : ''}list ${op.prefix}* from ${op.start ?? '-'} limit ${op.limit}`;
    case 'history':
      return `history ${op.key} limit ${op.limit}`;
    case 'replay':
      return `replay from ${op.from} limit ${op.limit}${op.key !== undefined ? ` key ${op.key}` : ''}${op.prefix !== undefined ? ` prefix ${op.prefix}` : ''}`;
    case 'getRev':
      return `get ${op.key} at rev ${op.rev}`;
    case 'grant':
      return `grant ttl${op.ttl}`;
    case 'keepalive':
    case 'revoke':
      return `${op.t} ${op.lease}`;
    case 'putLease':
      return `put ${op.key}=${op.value} lease ${op.lease}`;
    case 'retry':
      return `resend ${op.rid}`;
    case 'bogus':
      return `${op.write ? 'put' : 'get'} ${op.key} with the bogus token ${op.after}`;
  }
}

/** All sessions' ops as one history for the checker. */
export function historyOf(sessions: Session[]): History {
  const ops: HOp[] = [];
  const base = new Map<number, number>();
  for (const s of sessions) {
    base.set(s.id, ops.length);
    ops.push(...s.ops);
  }
  const edges: Array<[number, number]> = [];
  for (const s of sessions) {
    for (const [fs, fo, to] of s.edgesIn) {
      if (to < s.ops.length) edges.push([base.get(fs)! + fo, base.get(s.id)! + to]);
    }
  }
  return { ops, edges };
}
