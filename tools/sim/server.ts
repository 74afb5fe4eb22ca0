// The driver of one simulated server: a synchronous twin of src/server/server.ts
// (persist → persisted → send → carry out → apply), with the fsync taking
// simulated time so that messages, ticks and requests reach the core while a
// persist is in flight, as they do in the real event loop. Client requests
// are handled as the real dispatch() does. Differences from the real driver
// are marked SIM.

import { Node, type Notice, type Ready } from '../../src/core/node.js';
import { KvState, type Applied } from '../../src/core/state.js';
import type { Msg } from '../../src/core/messages.js';
import type { Entry, WriteOp, WriteResult } from '../../src/core/wire.js';
import type { Rec } from '../../src/core/records.js';
import { SimCheckpoint, type SimDisk } from './disk.js';

export type ClientRequest =
  | { kind: 'write'; ops: WriteOp[]; rid: string; after: number }
  | { kind: 'read'; keys: string[]; after: number; strong: boolean };

export type ErrorCodeName = 'UNAVAILABLE' | 'TIMEOUT' | 'TOKEN_AHEAD' | 'CAS_MISMATCH';

export type ClientReply =
  | { ok: true; ts: number; index: number; values?: Array<Rec | null>; result?: WriteResult; by: number }
  | { ok: false; ts: number; index?: number; code: ErrorCodeName; result?: WriteResult; by: number };

export type Respond = (r: ClientReply) => void;

/** A checkpoint sent to a lagging follower (SIM: it arrives whole; the real one is pulled in pages over NATS). */
export interface SnapshotMsg {
  from: number;
  to: number;
  ckpt: SimCheckpoint;
}

/** What the simulation provides to a server. */
export interface Host {
  readonly now: number;
  /** Run fn at time t unless this server incarnation has crashed by then. */
  at(server: SimServer, t: number, fn: () => void): void;
  fsyncDelay(): number;
  checkpointDelay(): number;
  send(m: Msg): void;
  sendSnapshot(s: SnapshotMsg): void;
  /** Possibly crash right after a sync, before anything is sent. */
  crashAfterSync(server: SimServer): boolean;
  /** Called after every Ready is issued to the disk (the log must then mirror the node's). */
  onReadyIssued(server: SimServer, r: Ready): void;
  onSynced(server: SimServer, truncated: Entry[]): void;
  /** Before applying: make sure the committed log holds up to the node's commit. */
  onCommit(server: SimServer): void;
  onApplied(server: SimServer, e: Entry, res: Applied): void;
  onCheckpoint(server: SimServer): void;
  onNotice(server: SimServer, n: Notice): void;
  trace(node: number, what: string): void;
  readonly retainEntries: number;
  readonly requestTimeout: number;
  readonly removeDeadAfterTicks: number;
}

interface PendingWrite {
  index: number;
  epoch: number;
  rid: string;
  responders: Respond[];
}

interface Waiter {
  id: number;
  after: number;
  req: Extract<ClientRequest, { kind: 'read' }>;
  respond: Respond;
  index?: number;
}

export class SimServer {
  readonly id: number;
  readonly node: Node;
  state: KvState;
  readonly disk: SimDisk;
  private host: Host;
  alive = true;
  private pumping = false;
  private again = false;
  private scheduled = false;
  private pendingByIndex = new Map<number, PendingWrite>();
  private pendingByRid = new Map<string, PendingWrite>();
  private waiters = new Map<number, Waiter>();
  private strong = new Map<number, Waiter>();
  /** Writes waiting for the core to check their token. */
  private tokenWrites = new Map<number, { req: Extract<ClientRequest, { kind: 'write' }>; respond: Respond }>();
  private nextWaiter = 1;
  private checkpointing = false;

  constructor(id: number, voters: number[], disk: SimDisk, host: Host) {
    this.id = id;
    this.disk = disk;
    this.host = host;
    // As Server's constructor: checkpoint, then the log on disk after it.
    const ckpt = disk.ckpt;
    this.state = new KvState(ckpt);
    const meta = ckpt.meta();
    const plan = restartPlan(disk);
    if (plan.discard) disk.log.truncateFrom(plan.discard); // durable at the next sync
    const { base, rest } = plan;
    this.node = new Node({
      id,
      voters: meta.voters.length > 0 ? meta.voters : voters,
      promised: disk.promise.durable,
      entries: rest,
      base,
      commit: meta.index,
      commitTs: meta.ts,
      removeDeadAfterTicks: host.removeDeadAfterTicks,
      keepOut: meta.keepOut ?? [],
    });
    this.node.checkpointIndex = meta.index;
    this.applyCommitted(this.node.commit);
  }

  // ---- inputs ----

  /** SIM: a checkpoint install is in progress (the loop holds still, as Server does while it swaps one in). */
  private installing = false;

  tick(): void {
    this.node.tick();
    this.schedule();
  }

  onPeer(m: Msg): void {
    this.node.receive(m);
    this.schedule();
  }

  private schedule(): void {
    if (this.pumping) {
      this.again = true;
      return;
    }
    if (this.scheduled) return;
    this.scheduled = true;
    // setImmediate: after everything else due now.
    this.host.at(this, this.host.now, () => {
      this.scheduled = false;
      this.pump();
    });
  }

  // ---- the loop: persist, send, apply ----

  private pump(): void {
    if (this.installing) return;
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    this.again = false;
    const r = this.node.ready();
    const hasDisk = r.truncateFrom !== null || r.append.length > 0 || r.promise !== null;
    for (const e of r.append) deepFreeze(e);
    // As Server.pump: the coordinator's appends leave before its own fsync (it counts itself
    // toward a majority only once persisted); everything else waits for the fsync.
    const early = r.send.filter((m) => m.t === 'append' && m.from === this.id && this.node.role === 'coordinator');
    for (const m of early) this.host.send(m);
    if (r.truncateFrom !== null) this.disk.log.truncateFrom(r.truncateFrom);
    if (r.append.length > 0) this.disk.log.append(r.append);
    if (r.promise !== null) this.disk.promise.write(r.promise);
    this.host.onReadyIssued(this, r);
    if (!hasDisk) {
      this.afterPersist(r, early);
      return;
    }
    const d = this.host.fsyncDelay();
    this.host.at(this, this.host.now + d, () => {
      const truncated = this.disk.log.sync();
      this.disk.promise.sync();
      this.host.onSynced(this, truncated);
      if (this.host.crashAfterSync(this)) return; // persisted, but nothing (else) sent
      this.afterPersist(r, early);
    });
  }

  private afterPersist(r: Ready, early: Msg[]): void {
    this.node.persisted(r.persistMark);
    for (const m of r.send) if (!early.includes(m)) this.host.send(m);
    this.carryOut(r);
    this.applyCommitted(r.commit);
    this.pumping = false;
    if (this.again || this.node.hasOutput()) this.pump();
  }

  private carryOut(r: Ready): void {
    if (r.lostLeadership) this.failPending('UNAVAILABLE');
    for (const n of r.notices) this.host.onNotice(this, n);
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
      this.replyError(w.respond, 'UNAVAILABLE');
    }
    for (const { id, ahead } of r.tokens) {
      const tw = this.tokenWrites.get(id);
      if (tw) {
        // A write held for its token.
        this.tokenWrites.delete(id);
        if (ahead) this.replyError(tw.respond, 'TOKEN_AHEAD');
        else this.onWrite(tw.req, tw.respond, true);
        continue;
      }
      const w = this.waiters.get(id) ?? this.strong.get(id);
      if (!w || !ahead) continue;
      this.waiters.delete(id);
      this.strong.delete(id);
      this.replyError(w.respond, 'TOKEN_AHEAD');
    }
    for (const to of r.needSnapshot) {
      // SIM: send our checkpoint, then the follower's nack brings the log after it.
      if (this.disk.ckpt.meta().index > 0) this.host.sendSnapshot({ from: this.id, to, ckpt: this.disk.ckpt.clone() });
    }
  }

  private applyCommitted(target: number): void {
    this.host.onCommit(this);
    while (this.state.applied < target) {
      const e = this.node.entry(this.state.applied + 1);
      if (!e) throw new Error(`entry ${this.state.applied + 1} committed but not in the log`);
      const res = this.state.apply(e);
      this.host.onApplied(this, e, res);
      const p = this.pendingByIndex.get(e.index);
      if (p) {
        this.pendingByIndex.delete(e.index);
        this.pendingByRid.delete(p.rid);
        if (p.epoch === e.epoch && res.result) this.replyWrite(p.responders, e.index, e.ts, res.result);
        else for (const r of p.responders) this.replyError(r, 'UNAVAILABLE');
      }
    }
    this.node.applied = this.state.applied;
    this.wakeWaiters();
  }

  private wakeWaiters(): void {
    if (this.waiters.size === 0) return;
    for (const [id, w] of this.waiters) {
      const ready = w.index !== undefined ? this.state.applied >= w.index && this.state.appliedTs >= w.after : this.state.appliedTs >= w.after;
      if (!ready) continue;
      this.waiters.delete(id);
      this.node.cancelToken(id);
      this.answerRead(w.req, w.respond);
    }
  }

  private failPending(code: ErrorCodeName): void {
    for (const p of this.pendingByIndex.values()) for (const r of p.responders) this.replyError(r, code);
    this.pendingByIndex.clear();
    this.pendingByRid.clear();
  }

  /** The operator's membership change (as Server's admin add/remove). */
  proposeConfig(voters: number[]): ReturnType<Node['proposeConfig']> {
    const res = this.node.proposeConfig(voters);
    if (typeof res !== 'string') this.schedule();
    return res;
  }

  // ---- clients (as Server.dispatch) ----

  request(req: ClientRequest, respond: Respond): void {
    if (req.kind === 'write') this.onWrite(req, respond);
    else this.onRead(req, respond);
  }

  private onRead(req: Extract<ClientRequest, { kind: 'read' }>, respond: Respond): void {
    const after = req.after;
    if (req.strong) {
      const id = this.nextWaiter++;
      const w: Waiter = { id, after, req, respond };
      if (!this.node.readIndex(id)) {
        this.replyError(respond, 'UNAVAILABLE');
        return;
      }
      this.strong.set(id, w);
      this.timeout(id);
      if (after > this.node.commitTs) this.node.checkToken(id, after);
      this.schedule();
      return;
    }
    if (after <= this.state.appliedTs) {
      this.answerRead(req, respond);
      return;
    }
    const id = this.nextWaiter++;
    this.waiters.set(id, { id, after, req, respond });
    this.timeout(id);
    if (after > this.node.knownCommitTs) {
      this.node.checkToken(id, after);
      this.schedule();
    }
  }

  private timeout(id: number): void {
    this.host.at(this, this.host.now + this.host.requestTimeout, () => {
      const w = this.waiters.get(id) ?? this.strong.get(id);
      if (!w) return;
      this.waiters.delete(id);
      this.strong.delete(id);
      this.node.cancelToken(id);
      this.replyError(w.respond, 'TIMEOUT');
    });
  }

  private answerRead(req: Extract<ClientRequest, { kind: 'read' }>, respond: Respond): void {
    const values = req.keys.map((k) => this.state.get(k) ?? null);
    respond({ ok: true, ts: this.state.appliedTs, index: this.state.applied, values, by: this.id });
  }

  private onWrite(req: Extract<ClientRequest, { kind: 'write' }>, respond: Respond, tokenChecked = false): void {
    if (this.node.role !== 'coordinator') return this.replyError(respond, 'UNAVAILABLE');
    if (req.after > this.node.knownCommitTs && req.after > this.node.clock && !tokenChecked) {
      // server.ts answers TOKEN_AHEAD here, wrongly at a coordinator deposed without knowing it.
      // Hold the write until the core has checked the token.
      const id = this.nextWaiter++;
      this.tokenWrites.set(id, { req, respond });
      this.node.checkToken(id, req.after);
      this.host.at(this, this.host.now + this.host.requestTimeout, () => {
        if (!this.tokenWrites.delete(id)) return;
        this.node.cancelToken(id);
        this.replyError(respond, 'TIMEOUT');
      });
      this.schedule();
      return;
    }
    const rid = req.rid;
    const seen = this.state.ridResult(rid);
    if (seen) {
      this.replyWrite([respond], seen.index, Math.max(seen.ts, this.state.appliedTs, req.after), seen.result);
      return;
    }
    const inflight = this.pendingByRid.get(rid);
    if (inflight) {
      inflight.responders.push(respond);
      this.awaitPending(inflight, respond);
      return;
    }
    const placed = this.node.propose(req.ops, rid);
    if (!placed) return this.replyError(respond, 'UNAVAILABLE');
    const p: PendingWrite = { index: placed.index, epoch: placed.epoch, rid, responders: [respond] };
    this.pendingByIndex.set(placed.index, p);
    this.pendingByRid.set(rid, p);
    this.awaitPending(p, respond);
    this.schedule();
  }

  /** As Server.armPending: a waiter that times out gets TIMEOUT; the write stays pending. */
  private awaitPending(p: PendingWrite, respond: Respond): void {
    this.host.at(this, this.host.now + this.host.requestTimeout, () => {
      if (this.pendingByIndex.get(p.index) !== p) return;
      const i = p.responders.indexOf(respond);
      if (i < 0) return;
      p.responders.splice(i, 1);
      this.replyError(respond, 'TIMEOUT');
    });
  }

  private replyWrite(responders: Respond[], index: number, ts: number, result: WriteResult): void {
    const reply: ClientReply = result.ok
      ? { ok: true, ts, index, result, by: this.id }
      : { ok: false, ts, index, code: 'CAS_MISMATCH', result, by: this.id };
    for (const r of responders) r(reply);
  }

  private replyError(respond: Respond, code: ErrorCodeName): void {
    respond({ ok: false, ts: this.state.appliedTs, code, by: this.id });
  }

  // ---- checkpoints (as Server.checkpoint, with the write taking simulated time) ----

  checkpoint(): void {
    if (this.checkpointing) return;
    if (this.state.applied === this.node.checkpointIndex) return;
    const delta = this.state.takeDelta();
    this.checkpointing = true;
    this.host.at(this, this.host.now + this.host.checkpointDelay(), () => {
      this.checkpointing = false;
      this.disk.ckpt.write(delta);
      this.state.release(delta);
      this.node.checkpointIndex = delta.meta.index;
      const keepFrom = delta.meta.index - this.host.retainEntries;
      if (keepFrom > 0) {
        this.node.compact(keepFrom);
        this.disk.log.removeBelow(this.node.firstIndex());
      }
      this.host.onCheckpoint(this);
    });
  }

  /**
   * Install a peer's checkpoint, as Server.receiveCheckpoint does once the pages are in (the
   * transfer itself is one simulated message): only when ahead of our commit, with the loop
   * and checkpointing still; swap the checkpoint (durable), restore the core, and if the log
   * did not hold the checkpoint's last entry, truncate it in a sync of its own (a crash in
   * between leaves a stale log, which the restart logic discards).
   */
  installSnapshot(s: SnapshotMsg): boolean {
    const meta = s.ckpt.meta();
    if (meta.index <= this.node.commit || this.checkpointing || this.pumping || this.installing || this.node.role === 'coordinator') return false;
    this.disk.ckpt = s.ckpt;
    this.state = new KvState(this.disk.ckpt);
    const kept = this.node.restore({ index: meta.index, epoch: meta.epoch, ts: meta.ts }, meta.voters, meta.keepOut ?? []);
    this.node.checkpointIndex = meta.index;
    this.node.applied = this.state.applied;
    this.host.onCheckpoint(this);
    if (!kept && this.disk.log.view.last > 0) {
      this.disk.log.truncateFrom(1);
      this.installing = true;
      this.host.at(this, this.host.now + this.host.fsyncDelay(), () => {
        this.host.onSynced(this, this.disk.log.sync());
        this.installing = false;
        this.wakeWaiters();
        this.schedule();
      });
      return true;
    }
    this.wakeWaiters();
    this.schedule();
    return true;
  }

  /** Entries applied and in-flight state, for the trace. */
  describe(): string {
    const n = this.node;
    return `${n.role}${n.role === 'coordinator' ? '' : `(c${n.coordinator ?? '-'})`} e${n.epoch} p${n.promised} last${n.lastIndex()} commit${n.commit} applied${this.state.applied} ckpt${n.checkpointIndex}${this.pumping ? ' pumping' : ''}`;
  }
}

/**
 * What Server's constructor makes of a disk: the log it keeps (entries at or below the
 * checkpoint are kept in memory for lagging followers) or discards (a log the checkpoint
 * supersedes: a checkpoint installed from a peer just before a crash).
 */
export function restartPlan(disk: SimDisk): { base: { index: number; epoch: number; ts: number }; rest: Entry[]; discard: number | null } {
  const meta = disk.ckpt.meta();
  const entries = disk.log.open();
  if (entries.length > 0 && entries[0]!.index > meta.index + 1) {
    throw new Error(`log starts at ${entries[0]!.index} but the checkpoint holds only up to ${meta.index}: entries are missing`);
  }
  let base = { index: meta.index, epoch: meta.epoch, ts: meta.ts };
  let rest = entries;
  const lastLogged = entries.length > 0 ? entries[entries.length - 1]! : undefined;
  const atCheckpoint = entries.find((e) => e.index === meta.index);
  if (meta.index > 0 && lastLogged !== undefined && (lastLogged.index < meta.index || (atCheckpoint && atCheckpoint.epoch !== meta.epoch))) {
    return { base, rest: [], discard: entries[0]!.index };
  }
  if (entries.length > 0 && entries[0]!.index <= meta.index) {
    const b = entries[0]!;
    base = { index: b.index, epoch: b.epoch, ts: b.ts };
    rest = entries.slice(1);
  }
  return { base, rest, discard: null };
}

export function deepFreeze<T>(o: T): T {
  if (o === null || typeof o !== 'object' || Object.isFrozen(o)) return o;
  Object.freeze(o);
  for (const v of Object.values(o as object)) deepFreeze(v);
  return o;
}
