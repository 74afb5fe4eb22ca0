// The driver loop of one server: feeds the pure protocol core (Node) with
// ticks, peer messages and client requests, and carries out its output in
// order — persist (log append + fsync, promise), then send, then apply — with
// group commit: everything that arrives while an fsync is in flight shares
// the next one. It also runs checkpoints and serves the client subjects.

import type { Logger } from 'pino';
import { ErrorCode, CkvError, type ErrorCode as Code } from '../core/errors.js';
import {
  CHECKPOINT_LOG_BYTES_TRIGGER,
  ENTRY_BYTES_MAX,
  LIST_PAGE_BYTES_MAX,
  LOG_RETAIN_ENTRIES,
  REPLAY_EVENTS_MAX,
  REPLAY_PAGE_BYTES_MAX,
  REPLY_BYTES_MAX,
  TICK_MS,
} from '../core/limits.js';
import type { Msg } from '../core/messages.js';
import { Node, type Notice, type Ready } from '../core/node.js';
import { KvState } from '../core/state.js';
import { isWrite, parseRequest, requestTimeoutMs } from '../core/validate.js';
import type { ChangeEvent, Entry, KeyValue, NodeStatus, PeerStatus, Reply, Request, WriteOp, WriteResult } from '../core/wire.js';
import type { CheckpointStore, LogStore, StateFile } from '../storage/ports.js';
import type { Respond, ServerTransport } from '../transport/nats.js';
import { subjects } from '../transport/subjects.js';

export const VERSION = '0.1.0';
/** Change events kept in memory for replay requests. */
export const EVENTS_RETAINED_MAX = 10_000;
/** Time allowed on shutdown for in-flight work before the final checkpoint. */
export const SHUTDOWN_DRAIN_MS_MAX = 5_000;
/** Room an entry's fields take around its ops, in bytes (rid ≤ 64, numbers, field names). */
export const ENTRY_ENVELOPE_BYTES_MAX = 512;

export interface ServerOptions {
  id: number;
  cluster: string;
  voters: number[];
  log: LogStore;
  logEntries: Entry[];
  checkpoint: CheckpointStore;
  stateFile: StateFile;
  transport: ServerTransport;
  logger: Logger;
  /** Bytes of log since the last checkpoint that trigger one. */
  checkpointBytes?: number;
  /** Entries kept below a checkpoint for lagging followers. */
  retainEntries?: number;
  /** Remove a voter dead this long, in ms, if the rest still form a majority (0: never). */
  removeDeadAfterMs?: number;
  /** Checkpoint transfer: swap in a checkpoint received from a peer (absent: this server cannot receive one). */
  installer?: CheckpointInstaller;
}

/** Builds a checkpoint from a peer's pages, then swaps it in place of the current one. */
export interface CheckpointInstaller {
  /** A fresh, empty checkpoint store to fill. */
  begin(): Promise<CheckpointStore>;
  /** Close `incoming` and `current`, make incoming the checkpoint durably, and open it. */
  swap(current: CheckpointStore, incoming: CheckpointStore): Promise<CheckpointStore>;
  abort(incoming: CheckpointStore): Promise<void>;
}

/** Pages of a checkpoint transfer, in keys (or request ids). */
export const SNAPSHOT_PAGE_ITEMS_MAX = 2_000;
/** A coordinator serving a transfer holds its checkpoint still this long after each page. */
export const SNAPSHOT_HOLD_MS = 10_000;
/** Longest a checkpoint is held still for transfers before it moves on (a transfer caught
 * by the move starts over). */
export const SNAPSHOT_HOLD_TOTAL_MS_MAX = 60_000;
/** Bytes of keys and values in one page of a checkpoint transfer (a single larger value goes alone). */
export const SNAPSHOT_PAGE_BYTES_MAX = 512 * 1024;
/** Time one page request may take. */
export const SNAPSHOT_PAGE_TIMEOUT_MS = 5_000;

interface PendingWrite {
  index: number;
  epoch: number;
  rid: string | undefined;
  responders: Respond[];
  /** Armed while someone waits; on expiry they get TIMEOUT but the write stays pending (a
   * retry with its rid waits for it instead of proposing it again). */
  timer: NodeJS.Timeout | null;
}

interface Waiter {
  id: number;
  after: number;
  req: Request;
  respond: Respond;
  timer: NodeJS.Timeout;
  /** For strong reads: the index to reach. */
  index?: number;
}

const encoder = new TextEncoder();

export class Server {
  readonly id: number;
  readonly cluster: string;
  readonly node: Node;
  state: KvState;
  private log: LogStore;
  private ckpt: CheckpointStore;
  private stateFile: StateFile;
  private t: ServerTransport;
  private s: ReturnType<typeof subjects>;
  private logger: Logger;
  private started = Date.now();
  private ticker: NodeJS.Timeout | null = null;
  private pumping = false;
  private again = false;
  private scheduled = false;
  private pendingByIndex = new Map<number, PendingWrite>();
  private pendingByRid = new Map<string, PendingWrite>();
  /** Causal reads waiting for their token to be applied. */
  private waiters = new Map<number, Waiter>();
  /** Strong reads waiting for confirmation. */
  private strong = new Map<number, Waiter>();
  /** Writes held until the core has checked their token (it is beyond what we know). */
  private tokenWrites = new Map<number, { req: Extract<Request, { op: 'put' | 'del' | 'cas' | 'batch' }>; respond: Respond; timer: NodeJS.Timeout; deadline: number }>();
  private nextWaiter = 1;
  private events: ChangeEvent[] = [];
  /** Replay is complete only for entries above this index (older events are not kept). */
  private eventsFloor: number;
  private stopWrites: (() => void) | null = null;
  private stopRead: (() => void) | null = null;
  private stopAdmin: (() => void) | null = null;
  private checkpointing: Promise<void> | null = null;
  private checkpointBytes: number;
  private retainEntries: number;
  private closing = false;
  /** Set once shutdown has drained: peer messages are no longer taken in. */
  private peersStopped = false;
  private installer: CheckpointInstaller | undefined;
  /** A checkpoint being pulled from a peer: the loop goes on meanwhile. */
  private downloading: Promise<void> | null = null;
  /** Set while a received checkpoint is swapped in: the loop, ticks and peers hold still. */
  private swapping = false;
  /** Until when checkpoints wait, because a follower is reading ours. */
  private holdCheckpointUntil = 0;
  /** When the current hold began: holds are capped so checkpoints are never put off for long. */
  private holdStartedAt = 0;
  private lastOffer = new Map<number, number>();
  private fatal: ((err: Error) => void) | null = null;

  constructor(o: ServerOptions) {
    this.id = o.id;
    this.cluster = o.cluster;
    this.log = o.log;
    this.ckpt = o.checkpoint;
    this.stateFile = o.stateFile;
    this.t = o.transport;
    this.s = subjects(o.cluster);
    this.logger = o.logger;
    this.checkpointBytes = o.checkpointBytes ?? CHECKPOINT_LOG_BYTES_TRIGGER;
    this.retainEntries = o.retainEntries ?? LOG_RETAIN_ENTRIES;
    this.installer = o.installer;
    this.state = new KvState(o.checkpoint);
    const meta = o.checkpoint.meta();
    // The log must reach back to the checkpoint: a hole means lost entries.
    const entries = o.logEntries;
    if (entries.length > 0 && entries[0]!.index > meta.index + 1) {
      throw new Error(`log starts at ${entries[0]!.index} but the checkpoint holds only up to ${meta.index}: entries are missing`);
    }
    let base = { index: meta.index, epoch: meta.epoch, ts: meta.ts };
    let rest = entries;
    const lastLogged = entries.length > 0 ? entries[entries.length - 1]! : undefined;
    const atCheckpoint = entries.find((e) => e.index === meta.index);
    if (meta.index > 0 && lastLogged !== undefined && (lastLogged.index < meta.index || (atCheckpoint && atCheckpoint.epoch !== meta.epoch))) {
      // A checkpoint received from a peer, installed just before a crash: the old log is stale.
      this.logger.warn({ logLast: lastLogged.index, checkpoint: meta.index }, 'discarding a log that the checkpoint supersedes');
      o.log.truncateFrom(entries[0]!.index);
      rest = [];
    } else if (entries.length > 0 && entries[0]!.index <= meta.index) {
      // Keep the retained entries below the checkpoint in memory, for lagging followers.
      const b = entries[0]!;
      base = { index: b.index, epoch: b.epoch, ts: b.ts };
      rest = entries.slice(1);
    }
    const voters = meta.voters.length > 0 ? meta.voters : o.voters;
    this.node = new Node({
      id: o.id,
      voters,
      promised: o.stateFile.read().promised,
      entries: rest,
      base,
      commit: meta.index,
      commitTs: meta.ts,
      removeDeadAfterTicks: Math.ceil((o.removeDeadAfterMs ?? 0) / TICK_MS),
      keepOut: meta.keepOut ?? [],
    });
    this.node.checkpointIndex = meta.index;
    this.eventsFloor = this.state.applied;
    // Replay what is known committed (the checkpoint's own index: nothing more until the cluster says so).
    this.applyCommitted();
  }

  /** Start serving: peer messages, ticks, client subjects. `onFatal` is called if the server must stop. */
  start(onFatal: (err: Error) => void): void {
    this.fatal = onFatal;
    this.t.onPeer((m) => this.onPeer(m));
    this.stopRead = this.t.serve(this.s.read, 'ckv-read', (d, r) => this.onRequest('read', d, r));
    this.stopAdmin = this.t.serve(this.s.admin, undefined, (d, r) => this.onRequest('admin', d, r));
    this.t.subscribe(this.s.snapshot(this.id), (d, respond) => this.onSnapshotSubject(d, respond));
    this.ticker = setInterval(() => {
      // While a received checkpoint is swapped in, the core holds still (no elections meanwhile).
      if (this.swapping) return;
      try {
        this.node.tick();
      } catch (err) {
        this.die(err as Error);
        return;
      }
      this.schedule();
    }, TICK_MS);
    this.node.tick();
    this.schedule();
  }

  // ---- the loop: persist, send, apply ----

  private schedule(): void {
    if (this.pumping) {
      this.again = true;
      return;
    }
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump().catch((err: Error) => this.die(err));
    });
  }

  private async pump(): Promise<void> {
    if (this.swapping) return;
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.again = false;
        const r = this.node.ready();
        // The coordinator's appends may leave before its own fsync: it counts itself toward a
        // majority only once persisted() says so, so followers' fsyncs overlap with ours.
        // Everything else (acks, promises) waits for the fsync.
        const early = r.send.filter((m) => m.t === 'append' && m.from === this.id && this.node.role === 'coordinator');
        for (const m of early) this.t.sendPeer(m);
        await this.persist(r);
        this.node.persisted(r.persistMark);
        for (const m of r.send) if (!early.includes(m)) this.t.sendPeer(m);
        this.carryOut(r);
        // Up to the commit of this Ready, not the core's latest: entries committed since may
        // not be durable here yet.
        this.applyCommitted(r.commit);
      } while ((this.again || this.node.hasOutput()) && !this.swapping);
    } finally {
      this.pumping = false;
    }
  }

  private async persist(r: Ready): Promise<void> {
    if (r.truncateFrom !== null) this.log.truncateFrom(r.truncateFrom);
    if (r.append.length > 0) this.log.append(r.append);
    const promise = r.promise !== null ? this.stateFile.write({ promised: r.promise }) : null;
    if (r.truncateFrom !== null || r.append.length > 0) await this.log.sync();
    if (promise) await promise;
  }

  private carryOut(r: Ready): void {
    if (r.lostLeadership) this.failPending(ErrorCode.UNAVAILABLE, 'the coordinator changed; the outcome is unknown: retry with the same rid');
    for (const n of r.notices) this.onNotice(n);
    for (const { id, index } of r.reads) {
      const w = this.strong.get(id);
      if (!w) continue;
      this.strong.delete(id);
      w.index = index;
      this.waiters.set(id, w);
    }
    for (const id of r.readsFailed) {
      const w = this.strong.get(id);
      if (!w) continue;
      this.strong.delete(id);
      clearTimeout(w.timer);
      this.node.cancelToken(id);
      this.replyError(w.respond, ErrorCode.UNAVAILABLE, 'could not confirm leadership with a majority');
    }
    for (const { id, ahead } of r.tokens) {
      const tw = this.tokenWrites.get(id);
      if (tw) {
        this.tokenWrites.delete(id);
        clearTimeout(tw.timer);
        if (ahead) this.replyError(tw.respond, ErrorCode.TOKEN_AHEAD, `no write with timestamp ${tw.req.after} exists in the cluster`);
        else if (this.closing) this.replyError(tw.respond, ErrorCode.UNAVAILABLE, 'server is shutting down; retry with the same rid');
        else this.onRequestSafely(() => this.onWrite(tw.req, tw.respond, tw.deadline), tw.respond);
        continue;
      }
      const w = this.waiters.get(id) ?? this.strong.get(id);
      if (!w || !ahead) continue;
      this.waiters.delete(id);
      this.strong.delete(id);
      clearTimeout(w.timer);
      this.replyError(w.respond, ErrorCode.TOKEN_AHEAD, `no write with timestamp ${w.after} exists in the cluster`);
    }
    for (const f of r.needSnapshot) this.offerCheckpoint(f);
    this.syncWriteSubscription();
  }

  private syncWriteSubscription(): void {
    const lead = this.node.role === 'coordinator' && !this.closing;
    if (lead && !this.stopWrites) {
      this.stopWrites = this.t.serve(this.s.write, 'ckv-write', (d, r) => this.onRequest('write', d, r));
    } else if (!lead && this.stopWrites) {
      this.stopWrites();
      this.stopWrites = null;
    }
  }

  private onNotice(n: Notice): void {
    this.logger.info({ notice: n }, `members: ${n.type}`);
    this.t.publish(this.s.members, JSON.stringify({ ...n, by: this.id }));
  }

  private applyCommitted(target = this.node.commit): void {
    const lead = this.node.role === 'coordinator';
    while (this.state.applied < target) {
      const e = this.node.entry(this.state.applied + 1);
      if (!e) throw new Error(`entry ${this.state.applied + 1} committed but not in the log`);
      const res = this.state.apply(e);
      for (const ev of res.events) {
        this.events.push(ev);
        if (lead) this.t.publish(this.s.event(ev.key), JSON.stringify(ev));
      }
      const p = this.pendingByIndex.get(e.index);
      if (p) {
        this.pendingByIndex.delete(e.index);
        if (p.rid !== undefined) this.pendingByRid.delete(p.rid);
        if (p.timer) clearTimeout(p.timer);
        if (p.epoch === e.epoch && e.kind === 'config') this.replyWrite(p.responders, e.index, e.ts, { ok: true });
        else if (p.epoch === e.epoch && res.result) this.replyWrite(p.responders, e.index, e.ts, res.result);
        else for (const r of p.responders) this.replyError(r, ErrorCode.UNAVAILABLE, 'the coordinator changed; retry with the same rid');
      }
    }
    if (this.events.length > EVENTS_RETAINED_MAX * 2) {
      const drop = this.events.length - EVENTS_RETAINED_MAX;
      // Keep whole entries: never split the events of one index.
      let cut = drop;
      while (cut < this.events.length && this.events[cut]!.index === this.events[drop - 1]!.index) cut++;
      this.eventsFloor = this.events[cut - 1]!.index;
      this.events = this.events.slice(cut);
    }
    this.node.applied = this.state.applied;
    this.wakeWaiters();
    if (this.log.bytesAfter(this.node.checkpointIndex) > this.checkpointBytes) void this.checkpoint();
  }

  private wakeWaiters(): void {
    if (this.waiters.size === 0) return;
    for (const [id, w] of this.waiters) {
      const ready = w.index !== undefined ? this.state.applied >= w.index && this.state.appliedTs >= w.after : this.state.appliedTs >= w.after;
      if (!ready) continue;
      this.waiters.delete(id);
      clearTimeout(w.timer);
      this.node.cancelToken(id);
      this.answerRead(w.req, w.respond);
    }
  }

  private failPending(code: Code, message: string): void {
    for (const p of this.pendingByIndex.values()) {
      if (p.timer) clearTimeout(p.timer);
      for (const r of p.responders) this.replyError(r, code, message);
    }
    this.pendingByIndex.clear();
    this.pendingByRid.clear();
  }

  // ---- peers ----

  private onPeer(m: Msg): void {
    if (this.peersStopped || this.swapping) return;
    try {
      this.node.receive(m);
    } catch (err) {
      // An invariant broke on a peer's message: stop rather than risk the log.
      this.die(err as Error);
      return;
    }
    this.schedule();
  }

  // ---- clients ----

  private onRequest(kind: 'read' | 'write' | 'admin', data: Uint8Array, respond: Respond): void {
    let req: Request;
    try {
      req = parseRequest(data);
    } catch (err) {
      const e = err instanceof CkvError ? err : new CkvError(ErrorCode.BAD_REQUEST, String(err));
      this.replyError(respond, e.code, e.message);
      return;
    }
    this.onRequestSafely(() => this.dispatch(kind, req, respond), respond);
  }

  /** Run a request handler outside the subscription callback: its errors become replies. */
  private onRequestSafely(fn: () => void, respond: Respond): void {
    try {
      fn();
    } catch (err) {
      if (err instanceof CkvError) this.replyError(respond, err.code, err.message);
      else {
        this.logger.error({ err }, 'request failed');
        this.replyError(respond, ErrorCode.INTERNAL, 'internal error');
      }
    }
  }

  private dispatch(kind: 'read' | 'write' | 'admin', req: Request, respond: Respond): void {
    if (req.op === 'status') {
      this.reply(respond, { ok: true, ts: this.state.appliedTs, index: this.state.applied, status: this.status() });
      return;
    }
    if (this.closing) throw new CkvError(ErrorCode.UNAVAILABLE, 'server is shutting down');
    // The old checkpoint is closed during the swap: nothing may read it.
    if (this.swapping) throw new CkvError(ErrorCode.UNAVAILABLE, 'installing a checkpoint; retry');
    if (kind === 'admin') throw new CkvError(ErrorCode.BAD_REQUEST, `op ${req.op} does not belong on the admin subject`);
    if (req.op === 'config') {
      if (kind !== 'write') throw new CkvError(ErrorCode.BAD_REQUEST, `config goes to the coordinator on ${this.s.write}`);
      this.onConfig(req, respond);
      return;
    }
    if (isWrite(req)) {
      if (kind !== 'write') throw new CkvError(ErrorCode.BAD_REQUEST, `op ${req.op} is a write: send it on ${this.s.write}`);
      this.onWrite(req, respond);
      return;
    }
    const strong = 'consistency' in req && req.consistency === 'strong';
    if (strong && kind !== 'write') throw new CkvError(ErrorCode.BAD_REQUEST, `strong reads go to the coordinator on ${this.s.write}`);
    const timeoutMs = requestTimeoutMs(req);
    const after = req.after ?? 0;
    if (strong) {
      const id = this.nextWaiter++;
      if (!this.node.readIndex(id)) throw new CkvError(ErrorCode.UNAVAILABLE, 'not the coordinator');
      this.strong.set(id, { id, after, req, respond, timer: this.timeoutTimer(id, timeoutMs) });
      // A token beyond our commit may be from the future, or we may have been deposed: the
      // core answers once a majority confirms we still lead (Ready.tokens).
      if (after > this.node.commitTs) this.node.checkToken(id, after);
      this.schedule();
      return;
    }
    if (after <= this.state.appliedTs) {
      this.answerRead(req, respond);
      return;
    }
    const id = this.nextWaiter++;
    this.waiters.set(id, { id, after, req, respond, timer: this.timeoutTimer(id, timeoutMs) });
    if (after > this.node.knownCommitTs) {
      this.node.checkToken(id, after);
      this.schedule();
    }
  }

  private timeoutTimer(id: number, ms: number): NodeJS.Timeout {
    return setTimeout(() => {
      const w = this.waiters.get(id) ?? this.strong.get(id);
      if (!w) return;
      this.waiters.delete(id);
      this.strong.delete(id);
      this.node.cancelToken(id);
      this.replyError(w.respond, ErrorCode.TIMEOUT, `state did not reach timestamp ${w.after} within ${ms} ms`);
    }, ms);
  }

  private answerRead(req: Request, respond: Respond): void {
    const ts = this.state.appliedTs;
    const index = this.state.applied;
    switch (req.op) {
      case 'get': {
        const rec = this.state.get(req.key);
        if (!rec) this.reply(respond, { ok: false, ts, index, error: { code: ErrorCode.NOT_FOUND, message: `key ${req.key} not found` } });
        else this.reply(respond, { ok: true, ts, index, value: rec.value, rev: rec.rev });
        return;
      }
      case 'mget': {
        const values = req.keys.map((key) => {
          const rec = this.state.get(key);
          return rec ? { key, value: rec.value, rev: rec.rev } : null;
        });
        this.reply(respond, { ok: true, ts, index, values });
        return;
      }
      case 'list': {
        // `start` is inclusive (the previous page's `next`); ranges below are exclusive.
        const limit = req.limit!;
        const items: KeyValue[] = [];
        const first = req.start !== undefined && req.start.startsWith(req.prefix) ? this.state.get(req.start) : undefined;
        if (first) items.push({ key: req.start!, value: first.value, rev: first.rev });
        const from = req.start !== undefined && req.start < req.prefix ? undefined : req.start;
        items.push(...this.state.range(req.prefix, from, limit + 1 - items.length));
        let next = items.length > limit ? items[limit]!.key : null;
        if (items.length > limit) items.length = limit;
        // A page of large values stops early (it always holds at least one item). Bytes as
        // encoded: JSON escaping can make a value's reply several times its UTF-8 size.
        let bytes = 0;
        for (let i = 0; i < items.length; i++) {
          bytes += Buffer.byteLength(JSON.stringify(items[i]));
          if (bytes > LIST_PAGE_BYTES_MAX && i > 0) {
            next = items[i]!.key;
            items.length = i;
            break;
          }
        }
        this.reply(respond, { ok: true, ts, index, items, next });
        return;
      }
      case 'replay': {
        const from = Math.max(req.from, 1);
        if (from <= this.eventsFloor) {
          this.reply(respond, { ok: false, ts, index, error: { code: ErrorCode.COMPACTED, message: `events up to index ${this.eventsFloor} are no longer kept here; read the current state instead` } });
          return;
        }
        const limit = req.limit ?? REPLAY_EVENTS_MAX;
        const events: ChangeEvent[] = [];
        let bytes = 0;
        for (const ev of this.events) {
          if (ev.index < from) continue;
          // Whole entries only: a page ends between indexes, at the count or byte bound.
          const full = events.length >= limit || bytes > REPLAY_PAGE_BYTES_MAX;
          if (full && ev.index !== events[events.length - 1]!.index) break;
          events.push(ev);
          bytes += Buffer.byteLength(JSON.stringify(ev));
        }
        this.reply(respond, { ok: true, ts, index, events });
        return;
      }
      case 'history': {
        // Newest first while within the limits, then given oldest first. `since`: every change
        // to the key at an index >= since is here (older ones are not kept, or did not fit).
        const limit = req.limit!;
        const picked: ChangeEvent[] = [];
        let bytes = 0;
        let since = this.eventsFloor + 1;
        for (let i = this.events.length - 1; i >= 0; i--) {
          const ev = this.events[i]!;
          if (ev.key !== req.key) continue;
          const size = Buffer.byteLength(JSON.stringify(ev));
          if (picked.length >= limit || (picked.length > 0 && bytes + size > LIST_PAGE_BYTES_MAX)) {
            since = ev.index + 1;
            break;
          }
          picked.push(ev);
          bytes += size;
        }
        this.reply(respond, { ok: true, ts, index, events: picked.reverse(), since });
        return;
      }
      default:
        throw new CkvError(ErrorCode.BAD_REQUEST, `op ${req.op} is not a read`);
    }
  }

  /** `deadline`: set when the write comes back from a token check (its time runs on). */
  private onWrite(req: Extract<Request, { op: 'put' | 'del' | 'cas' | 'batch' }>, respond: Respond, deadline?: number): void {
    if (this.node.role !== 'coordinator') throw new CkvError(ErrorCode.UNAVAILABLE, 'not the coordinator');
    const timeoutMs = deadline === undefined ? requestTimeoutMs(req) : Math.max(1, deadline - Date.now());
    if (deadline === undefined && req.after !== undefined && req.after > this.node.knownCommitTs && req.after > this.node.clock) {
      // Beyond every timestamp we issued: from the future, or we were deposed without
      // knowing. The core tells which once a majority answers (Ready.tokens).
      const id = this.nextWaiter++;
      const timer = setTimeout(() => {
        if (!this.tokenWrites.delete(id)) return;
        this.node.cancelToken(id);
        this.replyError(respond, ErrorCode.TIMEOUT, `could not check timestamp ${req.after} in time`);
      }, timeoutMs);
      this.tokenWrites.set(id, { req, respond, timer, deadline: Date.now() + timeoutMs });
      this.node.checkToken(id, req.after);
      this.schedule();
      return;
    }
    const rid = req.rid;
    if (rid !== undefined) {
      const seen = this.state.ridResult(rid);
      if (seen) {
        // The reply's ts never goes below what the client has seen, nor below our state.
        this.replyWrite([respond], seen.index, Math.max(seen.ts, this.state.appliedTs, req.after ?? 0), seen.result);
        return;
      }
      const inflight = this.pendingByRid.get(rid);
      if (inflight) {
        inflight.responders.push(respond);
        if (!inflight.timer) this.armPending(inflight, timeoutMs);
        return;
      }
    }
    const ops: WriteOp[] = req.op === 'batch' ? req.ops : [stripWrite(req)];
    // The entry adds its index, epoch, ts and rid around the ops: keep room for them.
    const size = Buffer.byteLength(JSON.stringify(ops)) + ENTRY_ENVELOPE_BYTES_MAX;
    if (size > ENTRY_BYTES_MAX) throw new CkvError(ErrorCode.TOO_LARGE, `write is ${size} bytes encoded, more than ENTRY_BYTES_MAX (${ENTRY_BYTES_MAX})`);
    const placed = this.node.propose(ops, rid);
    if (!placed) throw new CkvError(ErrorCode.UNAVAILABLE, 'not the coordinator');
    const p: PendingWrite = { index: placed.index, epoch: placed.epoch, rid, responders: [respond], timer: null };
    this.armPending(p, timeoutMs);
    this.pendingByIndex.set(placed.index, p);
    if (rid !== undefined) this.pendingByRid.set(rid, p);
    this.schedule();
  }

  private armPending(p: PendingWrite, ms: number): void {
    p.timer = setTimeout(() => {
      p.timer = null;
      const waiting = p.responders;
      p.responders = [];
      for (const r of waiting) this.replyError(r, ErrorCode.TIMEOUT, 'not committed in time; the write may still apply: retry with the same rid');
    }, ms);
  }

  private onConfig(req: Extract<Request, { op: 'config' }>, respond: Respond): void {
    if (this.node.role !== 'coordinator') throw new CkvError(ErrorCode.UNAVAILABLE, 'not the coordinator');
    // Idempotent: a change already made (and committed) answers ok, so scripts can retry.
    const target = (req.add ?? req.remove)!;
    let placed: ReturnType<Node['proposeConfig']> | null;
    if (this.node.voters.includes(target) === (req.add !== undefined)) {
      if (this.node.configPending()) throw new CkvError(ErrorCode.UNAVAILABLE, 'a configuration change is in progress; retry');
      // Removing a non-voter still records that it stays out (a configuration entry).
      placed = req.remove !== undefined ? this.node.proposeKeepOut(target) : null;
      if (placed === null) {
        this.reply(respond, { ok: true, ts: this.node.commitTs, index: this.node.commit });
        return;
      }
    } else {
      const voters = req.add !== undefined ? [...this.node.voters, req.add] : this.node.voters.filter((v) => v !== req.remove);
      placed = this.node.proposeConfig(voters);
    }
    if (typeof placed === 'string') {
      const retry = placed.includes('retry');
      throw new CkvError(retry ? ErrorCode.UNAVAILABLE : ErrorCode.BAD_REQUEST, placed);
    }
    const p: PendingWrite = { index: placed.index, epoch: placed.epoch, rid: undefined, responders: [respond], timer: null };
    this.armPending(p, requestTimeoutMs(req));
    this.pendingByIndex.set(placed.index, p);
    this.schedule();
  }

  private replyWrite(responders: Respond[], index: number, ts: number, result: WriteResult): void {
    const reply: Reply = result.ok
      ? { ok: true, ts, index }
      : { ok: false, ts, index, error: { code: ErrorCode.CAS_MISMATCH, message: `compare-and-set failed at op ${result.failed}` }, current: result.current, failed: result.failed };
    const data = encoder.encode(JSON.stringify(reply));
    for (const r of responders) r(data);
  }

  private reply(respond: Respond, reply: Reply): void {
    const data = JSON.stringify(reply);
    // Length in UTF-16 units bounds the UTF-8 bytes from below; measure only when it may matter.
    if (data.length * 3 > REPLY_BYTES_MAX && Buffer.byteLength(data) > REPLY_BYTES_MAX) {
      const error = { code: ErrorCode.TOO_LARGE, message: `the reply would be more than REPLY_BYTES_MAX (${REPLY_BYTES_MAX}) bytes: ask for fewer keys` };
      respond(JSON.stringify({ ok: false, ts: reply.ts, error }));
      return;
    }
    respond(data);
  }

  private replyError(respond: Respond, code: Code, message: string): void {
    this.reply(respond, { ok: false, ts: this.state.appliedTs, error: { code, message } });
  }

  // ---- checkpoint transfer (a follower behind the log still on disk) ----

  private offerCheckpoint(follower: number): void {
    const last = this.lastOffer.get(follower) ?? 0;
    if (Date.now() - last < SNAPSHOT_PAGE_TIMEOUT_MS) return;
    this.lastOffer.set(follower, Date.now());
    this.logger.info({ follower, checkpoint: this.node.checkpointIndex }, 'offering our checkpoint to a follower behind our log');
    this.t.publish(this.s.snapshot(follower), JSON.stringify({ t: 'offer', from: this.id, index: this.node.checkpointIndex }));
  }

  private onSnapshotSubject(data: Uint8Array, respond: Respond | null): void {
    let m: { t?: string; from?: number; phase?: string; after?: string | null };
    try {
      m = JSON.parse(new TextDecoder().decode(data));
    } catch {
      return;
    }
    // Anyone can publish here: drop what is not a well-formed offer or page request.
    if (typeof m !== 'object' || m === null || Array.isArray(m)) return;
    if (m.after !== undefined && m.after !== null && typeof m.after !== 'string') return;
    if (m.t === 'offer' && (typeof m.from !== 'number' || !Number.isSafeInteger(m.from) || m.from < 1 || m.from === this.id)) return;
    if (m.t === 'offer' && typeof m.from === 'number') {
      // Only our coordinator's offer counts (it is the one that found us behind its log).
      if (!this.downloading && !this.closing && this.installer && this.node.role !== 'coordinator' && this.node.coordinator === m.from) {
        this.downloading = this.receiveCheckpoint(m.from)
          .catch((err: Error) => this.logger.warn({ err }, 'checkpoint transfer failed; will retry when offered again'))
          .finally(() => {
            this.downloading = null;
            this.schedule();
          });
      }
      return;
    }
    // Mid-swap our checkpoint store is closed: the requester retries.
    if (m.t === 'page' && respond && !this.swapping) {
      // Serve one page of our checkpoint; hold it still meanwhile.
      // (The hold starts again only after a checkpoint has run, or after a quiet spell.)
      const now = Date.now();
      if (this.holdStartedAt === 0 || now >= this.holdCheckpointUntil + SNAPSHOT_HOLD_MS) this.holdStartedAt = now;
      this.holdCheckpointUntil = Math.min(now + SNAPSHOT_HOLD_MS, this.holdStartedAt + SNAPSHOT_HOLD_TOTAL_MS_MAX);
      const after = typeof m.after === 'string' ? m.after : undefined;
      const meta = this.ckpt.meta();
      if (m.phase === 'rids') {
        const all = this.ckpt.rids();
        const startAt = after === undefined ? 0 : Number(after);
        if (!Number.isSafeInteger(startAt) || startAt < 0) return;
        const items = boundPage(all.slice(startAt, startAt + SNAPSHOT_PAGE_ITEMS_MAX));
        const next = startAt + items.length < all.length ? String(startAt + items.length) : null;
        respond(JSON.stringify({ meta, items, next }));
      } else {
        const got = this.ckpt.range('', after, SNAPSHOT_PAGE_ITEMS_MAX);
        const items = boundPage(got);
        const next = items.length < got.length || got.length === SNAPSHOT_PAGE_ITEMS_MAX ? items[items.length - 1]![0] : null;
        respond(JSON.stringify({ meta, items, next }));
      }
    }
  }

  /** Pull the coordinator's checkpoint page by page into a fresh store, then swap it in. */
  private async receiveCheckpoint(from: number): Promise<void> {
    const installer = this.installer!;
    const incoming = await installer.begin();
    const log = this.logger.child({ component: 'transfer' });
    log.info({ from }, 'receiving a checkpoint');
    let meta: ReturnType<CheckpointStore['meta']> | undefined;
    let done = false;
    try {
      for (const phase of ['kv', 'rids'] as const) {
        let after: string | null | undefined;
        do {
          if (this.closing) throw new Error('shutting down');
          const raw = await this.t.request(this.s.snapshot(from), JSON.stringify({ t: 'page', phase, after: after ?? null }), SNAPSHOT_PAGE_TIMEOUT_MS);
          const page = JSON.parse(new TextDecoder().decode(raw)) as { meta: typeof meta; items: Array<[string, any]>; next: string | null };
          if (meta === undefined) {
            meta = page.meta!;
            // Caught up meanwhile by ordinary replication: nothing to install.
            if (meta.index <= this.node.commit) break;
          }
          if (page.meta!.index !== meta.index) throw new Error('the checkpoint changed during the transfer');
          await incoming.write({
            kv: phase === 'kv' ? page.items : [],
            ridsSet: phase === 'rids' ? page.items : [],
            ridsDel: [],
            // The incoming store is never opened as a checkpoint until the swap: the final meta can go in from the start.
            meta,
          });
          after = page.next;
        } while (after !== null);
        if (meta !== undefined && meta.index <= this.node.commit) break;
      }
      // Let the loop finish what it is doing, then swap while it holds still.
      this.swapping = true;
      while (this.pumping || this.checkpointing) await new Promise((r) => setTimeout(r, 5));
      if (!meta || meta.index <= this.node.commit || this.closing) {
        log.info({ index: meta?.index, commit: this.node.commit }, 'transfer not needed any more');
      } else {
        done = true;
      }
    } catch (err) {
      this.swapping = false;
      await installer.abort(incoming);
      throw err;
    }
    if (!done) {
      this.swapping = false;
      await installer.abort(incoming);
      return;
    }
    try {
      this.ckpt = await installer.swap(this.ckpt, incoming);
      this.state = new KvState(this.ckpt);
      const kept = this.node.restore({ index: meta!.index, epoch: meta!.epoch, ts: meta!.ts }, meta!.voters, meta!.keepOut ?? []);
      if (!kept && this.log.last > 0) {
        // Our log does not hold the checkpoint's last entry: it restarts after the checkpoint
        // (a stale log is also dropped on restart, should we crash before this sync).
        this.log.truncateFrom(1);
        await this.log.sync();
      }
    } catch (err) {
      // Half swapped, the state on disk and in memory may disagree: stop, and restart from disk.
      this.die(err as Error);
      return;
    } finally {
      this.swapping = false;
    }
    this.node.checkpointIndex = meta!.index;
    this.events = [];
    this.eventsFloor = meta!.index;
    log.info({ index: meta!.index, digest: this.ckpt.digest() }, 'checkpoint installed');
  }

  // ---- status ----

  status(): NodeStatus {
    const n = this.node;
    const peers: PeerStatus[] = [];
    for (const p of n.peerTable()) {
      const ping = p.ping;
      peers.push({
        id: p.id,
        cluster: this.cluster,
        epoch: ping?.epoch ?? 0,
        role: ping?.role ?? 'follower',
        coordinator: ping?.coordinator ?? null,
        clock: ping?.clock ?? 0,
        last: ping?.last ?? 0,
        commit: ping?.commit ?? 0,
        applied: ping?.applied ?? 0,
        checkpoint: ping?.checkpoint ?? 0,
        voters: ping?.voters ?? [],
        version: VERSION,
        uptimeMs: (ping?.uptimeTicks ?? 0) * TICK_MS,
        liveness: ping ? n.liveness(p.id) : 'dead',
        silentMs: (n.ticks - p.lastHeard) * TICK_MS,
      });
    }
    return {
      id: this.id,
      cluster: this.cluster,
      epoch: n.epoch,
      // A follower outside the voter set is a learner (it replicates but does not vote).
      role: n.role === 'follower' && !n.voters.includes(this.id) ? 'learner' : n.role,
      coordinator: n.coordinator,
      clock: n.clock,
      last: n.lastIndex(),
      commit: n.commit,
      applied: this.state.applied,
      checkpoint: n.checkpointIndex,
      voters: n.voters,
      version: VERSION,
      uptimeMs: Date.now() - this.started,
      peers,
    };
  }

  // ---- checkpoints ----

  /** Write what was applied since the last checkpoint into it; never blocks requests. */
  checkpoint(): Promise<void> {
    if (this.checkpointing) return this.checkpointing;
    if (this.swapping) return Promise.resolve();
    if (this.state.applied === this.node.checkpointIndex) return Promise.resolve();
    // A follower is reading our checkpoint page by page: keep it still (the cron comes back).
    if (Date.now() < this.holdCheckpointUntil && !this.closing) return Promise.resolve();
    const delta = this.state.takeDelta();
    this.checkpointing = (async () => {
      try {
        await this.ckpt.write(delta);
        this.holdStartedAt = 0;
        this.state.release(delta);
        this.node.checkpointIndex = delta.meta.index;
        const keepFrom = delta.meta.index - this.retainEntries;
        if (keepFrom > 0) {
          this.node.compact(keepFrom);
          await this.log.removeBelow(this.node.firstIndex());
        }
        this.logger.debug({ index: delta.meta.index, keys: delta.kv.length }, 'checkpoint written');
      } finally {
        this.checkpointing = null;
      }
    })();
    this.checkpointing.catch((err: Error) => this.die(err));
    return this.checkpointing;
  }

  private die(err: Error): void {
    this.logger.fatal({ err }, 'fatal error: stopping');
    if (this.fatal) this.fatal(err);
    else throw err;
  }

  /** Stop taking requests, finish in-flight work, checkpoint, close. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.stopRead?.();
    this.syncWriteSubscription();
    const deadline = Date.now() + SHUTDOWN_DRAIN_MS_MAX;
    // Peers go on meanwhile: their acks commit what is in flight.
    while ((this.pendingByIndex.size > 0 || this.pumping) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, TICK_MS));
    }
    this.peersStopped = true;
    if (this.ticker) clearInterval(this.ticker);
    await this.downloading;
    this.failPending(ErrorCode.UNAVAILABLE, 'server is shutting down; retry with the same rid');
    for (const w of [...this.waiters.values(), ...this.strong.values(), ...this.tokenWrites.values()]) {
      clearTimeout(w.timer);
      this.replyError(w.respond, ErrorCode.UNAVAILABLE, 'server is shutting down');
    }
    this.tokenWrites.clear();
    this.waiters.clear();
    this.strong.clear();
    while (this.pumping) await new Promise((r) => setTimeout(r, 5));
    await this.checkpoint();
    this.stopAdmin?.();
    await this.t.close();
    await this.log.close();
    await this.ckpt.close();
  }
}

/** The longest prefix of a page's items within SNAPSHOT_PAGE_BYTES_MAX (at least one item). */
function boundPage<T>(items: Array<[string, T]>): Array<[string, T]> {
  let bytes = 0;
  for (let i = 0; i < items.length; i++) {
    bytes += Buffer.byteLength(JSON.stringify(items[i]));
    if (bytes > SNAPSHOT_PAGE_BYTES_MAX && i > 0) return items.slice(0, i);
  }
  return items;
}

function stripWrite(req: WriteOp & { rid?: string; after?: number; timeout?: number }): WriteOp {
  switch (req.op) {
    case 'put':
      return { op: 'put', key: req.key, value: req.value };
    case 'del':
      return { op: 'del', key: req.key };
    case 'cas':
      return { op: 'cas', key: req.key, expect: req.expect, value: req.value };
  }
}
