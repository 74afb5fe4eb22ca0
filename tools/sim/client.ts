// Simulated client sessions: each is sequential (one request at a time, like
// a chain of one-shot processes sharing a session token), sends reads to any
// server with its token as `after`, writes to whichever server holds the
// coordinator's write subscription, retries a write with the same rid until
// it gets a final answer, and writes only unique values. Every answer is
// checked against the model at once; the histories go to the causal checker.

import type { WriteOp, WriteResult } from '../../src/core/wire.js';
import type { HOp, History } from './checker.js';
import type { ClientReply, ClientRequest } from './server.js';
import type { Rng } from './prng.js';

export type SessionOp =
  | { t: 'put'; key: string; value: string }
  | { t: 'batch'; puts: Array<[string, string]> }
  | { t: 'get'; keys: string[]; strong: boolean }
  | { t: 'cas'; key: string; expect: string | null; value: string | null }
  | { t: 'del'; key: string }
  /** A request carrying a token no write of this cluster has (from the future, or another cluster). */
  | { t: 'bogus'; write: boolean; key: string; after: number };

/** Tokens from the future start here: the cluster's clocks must never get near them. */
export const BOGUS_TS = 1_000_000_000;

export interface ClientHost {
  readonly now: number;
  readonly rng: Rng;
  /** Send a request to some server (writes and strong reads to a coordinator); false if no server would take it. */
  send(s: Session, op: SessionOp, req: ClientRequest, attempt: number, toCoordinator: boolean): boolean;
  /** Call s.wake() at time t. */
  wakeAt(s: Session, t: number): void;
  /** Check a reply against the model (throws on a violation). */
  checkReply(s: Session, op: SessionOp, req: ClientRequest, reply: ClientReply, ackedIndexAtSend: number): void;
  onAck(s: Session, rid: string, index: number): void;
  trace(what: string): void;
  readonly clientTimeout: number;
  /** Largest log index of any write acknowledged so far (for the strong-read check). */
  readonly ackedMax: number;
  readonly mainKeys: string[];
  readonly noiseKeys: string[];
  readonly issuing: boolean;
}

interface InFlight {
  op: SessionOp;
  req: ClientRequest;
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
  tokenAhead: number;
  bogus: number;
  bogusRejected: number;
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
  /** Last value seen per noise key, for cas. */
  private seen = new Map<string, string | null>();
  readonly stats: SessionStats = { writes: 0, acked: 0, reads: 0, readsDone: 0, readsGivenUp: 0, retries: 0, tokenAhead: 0, bogus: 0, bogusRejected: 0 };
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
  wake(): void {
    if (this.busy || !this.host.issuing) return;
    const rng = this.host.rng;
    const main = this.host.mainKeys;
    const noise = this.host.noiseKeys;
    const x = rng.float();
    const uniq = (): string => `s${this.id}.${++this.seq}`;
    let op: SessionOp;
    if (x < 0.35) op = { t: 'put', key: rng.pick(main), value: uniq() };
    else if (x < 0.42) {
      const a = rng.pick(main);
      let b = rng.pick(main);
      if (b === a) b = main[(main.indexOf(a) + 1) % main.length]!;
      op = { t: 'batch', puts: a === b ? [[a, uniq()]] : [[a, uniq()], [b, uniq()]] };
    } else if (x < 0.72) op = { t: 'get', keys: [rng.pick(main)], strong: false };
    else if (x < 0.8) op = { t: 'get', keys: rng.shuffle([...main]).slice(0, 2), strong: false };
    else if (x < 0.86) op = { t: 'get', keys: [rng.pick(main)], strong: true };
    else if (x < 0.9) op = { t: 'get', keys: [rng.pick(noise)], strong: false };
    else if (x < 0.95) {
      const key = rng.pick(noise);
      const expect = this.seen.has(key) ? this.seen.get(key)! : null;
      op = { t: 'cas', key, expect, value: rng.chance(0.2) ? null : uniq() };
    } else if (x < 0.97) op = { t: 'del', key: rng.pick(noise) };
    else if (x < 0.98) op = { t: 'bogus', write: rng.chance(0.4), key: rng.pick([...main, ...noise]), after: BOGUS_TS + rng.int(1000) };
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
    let req: ClientRequest;
    let rid: string | undefined;
    if (op.t === 'get') {
      req = { kind: 'read', keys: op.keys, after: this.token, strong: op.strong };
      this.stats.reads++;
    } else if (op.t === 'bogus') {
      this.stats.bogus++;
      if (op.write) {
        rid = `r${this.id}.${++this.seq}`;
        req = { kind: 'write', ops: [{ op: 'put', key: op.key, value: `bogus.${rid}` }], rid, after: op.after };
      } else req = { kind: 'read', keys: [op.key], after: op.after, strong: this.host.rng.chance(0.3) };
    } else {
      rid = `r${this.id}.${++this.seq}`;
      let ops: WriteOp[];
      if (op.t === 'put') ops = [{ op: 'put', key: op.key, value: op.value }];
      else if (op.t === 'batch') ops = op.puts.map(([key, value]) => ({ op: 'put', key, value }));
      else if (op.t === 'cas') ops = [{ op: 'cas', key: op.key, expect: op.expect, value: op.value }];
      else ops = [{ op: 'del', key: op.key }];
      req = { kind: 'write', ops, rid, after: this.token };
      this.stats.writes++;
      // Writes enter the history when issued: they may take effect even if never acknowledged.
      if (op.t === 'put') this.record({ kind: 'w', key: op.key, value: op.value, label: `c${this.id}:w(${op.key},${op.value})` });
      else if (op.t === 'batch') for (const [k, v] of op.puts) this.record({ kind: 'w', key: k, value: v, label: `c${this.id}:w(${k},${v})` });
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
    const req: ClientRequest = { ...b.req, after: b.op.t === 'bogus' ? b.op.after : this.token };
    const toCoord = req.kind === 'write' || req.strong;
    this.host.trace(`c${this.id} try ${b.tries} ${describeOp(b.op)} after=${req.after}${b.rid ? ` rid=${b.rid}` : ''}`);
    if (!this.host.send(this, b.op, req, b.attempt, toCoord)) {
      this.retryLater('no responders');
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
      this.again('timeout');
    }
  }

  private idleUntil = 0;

  private idle(ms: number): void {
    this.busy = null;
    this.idleUntil = this.host.now + ms;
    this.host.wakeAt(this, this.idleUntil);
  }

  private retryLater(why: string): void {
    const b = this.busy!;
    void why;
    this.stats.retries++;
    b.timeoutAt = null;
    b.retryAt = this.host.now + this.host.rng.range(10, 100);
    this.host.wakeAt(this, b.retryAt);
  }

  /** The attempt failed without a final answer: retry (a write always, with the same rid), or give up a read. */
  private again(why: string): void {
    const b = this.busy!;
    if ((b.req.kind === 'read' || b.op.t === 'bogus') && b.tries >= 6) {
      this.stats.readsGivenUp++;
      this.idle(this.host.rng.range(1, 50));
      return;
    }
    this.retryLater(why);
  }

  /** A reply to one attempt of `op` (maybe a late one). */
  onReply(op: SessionOp, req: ClientRequest, attempt: number, reply: ClientReply, ackedAtSend: number): void {
    // Every reply is checked, even a late one for an attempt given up on.
    this.host.checkReply(this, op, req, reply, ackedAtSend);
    const b = this.busy;
    if (!b || b.op !== op || b.attempt !== attempt || b.timeoutAt === null) return;
    b.timeoutAt = null;
    this.token = Math.max(this.token, reply.ts);
    this.host.trace(`c${this.id} got ${reply.ok ? 'ok' : reply.code} ts=${reply.ts} index=${reply.index ?? '-'} from ${reply.by}${reply.ok && reply.values ? ` ${JSON.stringify(reply.values.map((v) => v?.value ?? null))}` : ''}`);
    if (op.t === 'bogus') {
      // Only TOKEN_AHEAD ends it (an ok reply fails checkReply).
      if (!reply.ok && reply.code === 'TOKEN_AHEAD') {
        this.stats.bogusRejected++;
        this.idle(this.host.rng.range(1, 120));
      } else this.again(reply.ok ? 'ok' : reply.code);
      return;
    }
    const final = reply.ok || reply.code === 'CAS_MISMATCH';
    if (!final) {
      if (reply.code === 'TOKEN_AHEAD') this.stats.tokenAhead++;
      this.again(reply.code);
      return;
    }
    if (req.kind === 'write') {
      this.stats.acked++;
      this.host.onAck(this, b.rid!, reply.index!);
      if (op.t === 'cas') {
        const r = reply.result as WriteResult;
        this.seen.set(op.key, r.ok ? op.value : r.current);
      } else if (op.t === 'del') this.seen.set(op.key, null);
    } else {
      this.stats.readsDone++;
      const keys = (op as Extract<SessionOp, { t: 'get' }>).keys;
      keys.forEach((k, i) => {
        const v = reply.ok ? reply.values![i]! : null;
        if (this.host.noiseKeys.includes(k)) this.seen.set(k, v?.value ?? null);
        else {
          this.record({ kind: 'r', key: k, value: v?.value ?? null, label: `c${this.id}:r(${k})=${v?.value ?? 'init'}@${reply.index}` });
        }
      });
    }
    this.idle(this.host.rng.range(1, 120));
  }
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
    case 'del':
      return `del ${op.key}`;
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
