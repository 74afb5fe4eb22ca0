// The replica: the one driver of a ckv server, in production and in the
// simulation alike. It owns the protocol core (Node) and the state machine
// (KvState) and carries out the core's output in order — send what may leave
// early, persist and wait until durable, send the rest, apply — with group
// commit: everything that arrives while an fsync is in flight shares the next.
// Around that it decides every client request (validation, token holds,
// exactly-once retries, paging), runs checkpoints, pulls and installs a peer's
// checkpoint, and shuts down.
//
// It is synchronous and deterministic given its inputs: it never awaits, never
// reads the clock, never sets a timer itself. Time, timers, disk completions and
// sends come through the ReplicaEnv it is given: src/server/server.ts gives it
// NATS, files, LMDB and Node timers; tools/sim gives it simulated ones.

import { releaseEntryText } from '../core/entry-text.js';
import { CkvError, ErrorCode } from '../core/errors.js';
import {
  BATCH_OPS_MAX,
  CHECKPOINT_DIRTY_RECORDS_TRIGGER,
  DIRTY_RECORDS_MAX,
  NO_COORDINATOR_WARN_MS,
  CHECKPOINT_LOG_BYTES_TRIGGER,
  LIST_PAGE_BYTES_MAX,
  LOG_RETAIN_BYTES_MAX,
  LOG_RETAIN_ENTRIES,
  REPLAY_EVENTS_MAX,
  REPLAY_PAGE_BYTES_MAX,
  REPLAY_SCAN_EVENTS_MAX,
  SHUTDOWN_DRAIN_MS_MAX,
  SNAPSHOT_HOLD_MS,
  SNAPSHOT_HOLD_TOTAL_MS_MAX,
  SNAPSHOT_PAGE_BYTES_MAX,
  SNAPSHOT_PAGE_ITEMS_MAX,
  SNAPSHOT_PAGE_TIMEOUT_MS,
  SNAPSHOT_PAGE_TRIES_MAX,
  TICK_MS,
  TRANSFER_RELEASE_MS_MAX,
  HOLD_LOG_MS,
} from '../core/limits.js';
import type { Msg } from '../core/messages.js';
import { Node, type DurableState, type Notice, type Proposal, type Ready } from '../core/node.js';
import { CorruptRecordError, metaProblem, recProblem, ridRecordProblem, type CheckpointDelta, type CheckpointMeta, type CheckpointReader, type HistoryReader, type Rec, type RidRecord, type TimedRec } from '../core/records.js';
import { KvState, keyValue, type Applied } from '../core/state.js';
import { TtlClock } from '../core/ttl-clock.js';
import { isWrite, parseRequest, requestTimeoutMs } from '../core/validate.js';
import type { ChangeEvent, Entry, KeyValue, NodeStatus, PeerStatus, Reply, Request, SnapshotPage, WriteOp, WriteResult } from '../core/wire.js';
import { subjects } from '../transport/subjects.js';

import { VERSION } from '../core/version.js';
import { assert } from '../core/assert.js';

/** How soon a checkpoint asked for by a committed configuration change is tried again, when ours was held still. */
const CONFIG_CHECKPOINT_RETRY_MS = 1_000;

export { VERSION };

// ---------------------------------------------------------------------------
// The environment

/** Cancels a timer (no effect once it has fired). */
export type Cancel = () => void;
export type Respond = (reply: Reply) => void;
export type ClientSubject = 'read' | 'write' | 'admin';

/** The log on disk. Appends and truncations are buffered until a sync. */
export interface ReplicaLog {
  readonly last: number;
  append(entries: Entry[]): void;
  truncateFrom(from: number): void;
  /** Make everything appended or truncated so far durable, then call done. Failure is fatal. */
  sync(done: () => void): void;
  /** Delete segments wholly below `index` (in the background). */
  removeBelow(index: number): void;
  /** Bytes appended after entry `index` (the checkpoint size trigger). */
  bytesAfter(index: number): number;
}

/** The checkpoint: synchronous reads, a write that completes later. */
export interface ReplicaCheckpoint extends CheckpointReader, HistoryReader {
  /** Apply a delta in one transaction; done once durable. Failure is fatal. Reads go on meanwhile. */
  write(delta: CheckpointDelta, done: () => void): void;
}

/** A checkpoint port over a store with synchronous reads, and a write that completes later. */
export class CheckpointPort<S extends CheckpointReader & HistoryReader> implements ReplicaCheckpoint {
  constructor(
    readonly store: S,
    private writer: (store: S, delta: CheckpointDelta, done: () => void) => void,
  ) {}
  meta(): CheckpointMeta {
    return this.store.meta();
  }
  get(key: string): Rec | undefined {
    return this.store.get(key);
  }
  range(prefix: string, start: string | undefined, limit: number): Array<[string, Rec]> {
    return this.store.range(prefix, start, limit);
  }
  rids(): Array<[string, RidRecord]> {
    return this.store.rids();
  }
  counts(): { keys: number; rids: number } {
    return this.store.counts();
  }
  ttlKeys(): Array<[string, TimedRec]> {
    return this.store.ttlKeys();
  }
  historyFloor(): number {
    return this.store.historyFloor();
  }
  historyCount(): number {
    return this.store.historyCount();
  }
  events(from: number, key?: string): Iterable<ChangeEvent> {
    return this.store.events(from, key);
  }
  keyEventsBefore(key: string, below: number): Iterable<ChangeEvent> {
    return this.store.keyEventsBefore(key, below);
  }
  write(delta: CheckpointDelta, done: () => void): void {
    this.writer(this.store, delta, done);
  }
}

/** Pulling a peer's checkpoint and putting it in place of ours. */
export interface CheckpointTransfer {
  /** Ask server `from` for one page; done with its answer, or with null on a timeout or failure. */
  requestPage(from: number, request: string, done: (reply: Uint8Array | string | null) => void): void;
  /** A fresh, empty checkpoint to fill (null: none can be made now). */
  begin(done: (incoming: ReplicaCheckpoint | null) => void): void;
  /** Make `incoming` the checkpoint durably, in place of `current`; done with the one now open. Failure is fatal. */
  swap(current: ReplicaCheckpoint, incoming: ReplicaCheckpoint, done: (installed: ReplicaCheckpoint) => void): void;
  abort(incoming: ReplicaCheckpoint, done: () => void): void;
}

export interface ReplicaLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** What the replica did, for checkers (the simulation) and metrics. */
export type ReplicaEvent =
  | { t: 'ready'; ready: Ready }
  | { t: 'applied'; entry: Entry; result: Applied }
  | { t: 'checkpointed'; index: number; ms: number; records: number }
  /** A tick of the coordinator's in which keys' countdowns stood still (writes refused). */
  | { t: 'ttlPaused' }
  /** A follower's checkpoint fell behind: it takes no new entries until one is taken. */
  | { t: 'holding'; records: number }
  /** A client request answered: its op ('invalid' when it did not parse), the reply's code, and how long it took. */
  | { t: 'answered'; op: string; code: string; ms: number }
  | { t: 'installed'; index: number }
  | { t: 'notice'; notice: Notice };

export interface ReplicaEnv {
  /** Milliseconds on a monotonic clock. */
  now(): number;
  /** Call fn after ms, unless cancelled. */
  timer(ms: number, fn: () => void): Cancel;
  /** Call fn once the inputs that arrived in this turn have been taken (group commit). */
  defer(fn: () => void): void;
  sendPeer(m: Msg): void;
  /** Publish on server `to`'s snapshot subject (a checkpoint offer). */
  sendSnapshot(to: number, data: string): void;
  publishEvent(ev: ChangeEvent): void;
  publishMembers(n: Notice & { by: number }): void;
  /** Start or stop serving a client subject. */
  serve(subject: ClientSubject, on: boolean): void;
  log: ReplicaLog;
  /** Write the state file (the promise, the catch-up flag) durably, then call done. Failure is fatal. */
  writeState(state: DurableState, done: () => void): void;
  checkpoint: ReplicaCheckpoint;
  /** Absent: this server cannot receive a checkpoint. */
  transfer?: CheckpointTransfer;
  logger: ReplicaLogger;
  observe?: (e: ReplicaEvent) => void;
  /** The replica cannot go on (an invariant broke, a disk failed): stop the process. */
  fatal(err: Error): void;
}

export interface ReplicaOptions {
  id: number;
  cluster: string;
  /** The first voters (used when the checkpoint does not name them). */
  voters: number[];
  /** Every entry the log holds on disk, in order. */
  logEntries: Entry[];
  /** The state file: the durable promise, and whether this server is catching up. */
  state: DurableState;
  /** A random identity, given to the cluster if this server becomes its first coordinator. */
  newClusterId: string;
  /** Bytes of log since the last checkpoint that trigger one. */
  checkpointBytes?: number;
  /** Entries kept below a checkpoint for lagging followers. */
  retainEntries?: number;
  /** Bytes of log entries kept in memory below a checkpoint (default LOG_RETAIN_BYTES_MAX). */
  retainBytes?: number;
  /** Remove a voter dead this long, in ms, if the rest still form a majority (0: never). */
  removeDeadAfterMs?: number;
  /** Items per checkpoint-transfer page (the simulation makes pages small). */
  snapshotPageItems?: number;
  /** Entries per replication message (the simulation makes them few). */
  replEntriesMax?: number;
  /** Records not yet checkpointed past which new writes are refused (default DIRTY_RECORDS_MAX; the simulation makes it small). */
  dirtyRecordsMax?: number;
}

/**
 * The replica found a damaged record in its checkpoint: it stops, and the shell repairs the
 * data directory (the checkpoint set aside, the log kept only if it reaches back to entry 1,
 * the state file marked catching up) and starts it again: a catch-up member that fetches a
 * checkpoint from its peers and votes again once it holds what the cluster committed.
 */
export class RepairNeeded extends Error {
  constructor(readonly damage: CorruptRecordError) {
    super(`a damaged record (${damage.message}): repairing from the peers`);
    this.name = 'RepairNeeded';
  }
}

// ---------------------------------------------------------------------------
// Restart

export interface RestartPlan {
  /** The entry just below `rest` (where the in-memory log starts). */
  base: { index: number; epoch: number; ts: number };
  rest: Entry[];
  /** Truncate the log on disk from here: the checkpoint supersedes it. */
  discard: number | null;
}

/**
 * What a restart makes of the checkpoint and the log on disk: the log must reach back to
 * the checkpoint; entries at or below it are kept in memory for lagging followers; a log
 * the checkpoint supersedes (one installed from a peer just before a crash) is discarded.
 */
export function restartPlan(meta: CheckpointMeta, entries: Entry[]): RestartPlan {
  if (entries.length > 0 && entries[0]!.index > meta.index + 1) {
    throw new Error(`log starts at ${entries[0]!.index} but the checkpoint holds only up to ${meta.index}: entries are missing`);
  }
  const base = { index: meta.index, epoch: meta.epoch, ts: meta.ts };
  const lastLogged = entries.length > 0 ? entries[entries.length - 1]! : undefined;
  // Entries are contiguous: the one at the checkpoint's index is found by arithmetic.
  const atCheckpoint = entries.length > 0 && meta.index >= entries[0]!.index ? entries[meta.index - entries[0]!.index] : undefined;
  if (meta.index > 0 && lastLogged !== undefined && (lastLogged.index < meta.index || (atCheckpoint && atCheckpoint.epoch !== meta.epoch))) {
    return { base, rest: [], discard: entries[0]!.index };
  }
  if (entries.length > 0 && entries[0]!.index <= meta.index) {
    const b = entries[0]!;
    return { base: { index: b.index, epoch: b.epoch, ts: b.ts }, rest: entries.slice(1), discard: null };
  }
  return { base, rest: entries, discard: null };
}

// ---------------------------------------------------------------------------
// The replica

type WriteRequest = Extract<Request, { op: 'put' | 'del' | 'delprefix' | 'cas' | 'create' | 'grant' | 'keepalive' | 'revoke' | 'batch' }>;

interface PendingWrite {
  index: number;
  epoch: number;
  rid: string | undefined;
  responders: Respond[];
  /** Armed while someone waits; on expiry they get TIMEOUT but the write stays pending (a
   * retry with its rid waits for it instead of proposing it again). */
  cancel: Cancel | null;
}

interface Waiter {
  after: number;
  req: Request;
  respond: Respond;
  cancel: Cancel;
  /** Strong reads: the index to reach, once a majority confirmed the read. */
  index?: number;
}

interface TokenWrite {
  req: WriteRequest;
  respond: Respond;
  cancel: Cancel;
  deadline: number;
}

/** A checkpoint being pulled from a peer, page by page. */
interface Transfer {
  from: number;
  incoming: ReplicaCheckpoint | null;
  phase: 'kv' | 'rids';
  after: string | null;
  meta: CheckpointMeta | null;
  /** Which page answer we wait for: answers to anything else are dropped. */
  awaiting: number;
  /** Answers refused (stale, duplicated, malformed) or missing for the page asked now. */
  tries: number;
  /** All pages are in: swap once the loop holds still. */
  complete: boolean;
  swapStarted: boolean;
  /** Being let go of (its incoming checkpoint is removed; it ends when that is done). */
  ending: boolean;
  /** Its incoming checkpoint is being made (begin has not answered yet). */
  opening: boolean;
  /** Ended while opening: the begin callback lets go of what it gets, then this. */
  ended: (() => void) | null;
}

type Page = { meta: CheckpointMeta; items: Array<[string, Rec | RidRecord]>; next: string | null };

export class Replica {
  readonly id: number;
  readonly cluster: string;
  readonly node: Node;
  private env: ReplicaEnv;
  private st: KvState;
  private ckpt: ReplicaCheckpoint;
  private subjects: ReturnType<typeof subjects>;
  private started: number;
  /** Since when no coordinator is heard (reset while one is), and whether we said so. */
  private noCoordinatorSince: number;
  private noCoordinatorWarned = false;
  private pumping = false;
  private again = false;
  private scheduled = false;
  private dead = false;
  private pendingByIndex = new Map<number, PendingWrite>();
  private pendingByRid = new Map<string, PendingWrite>();
  /** Causal reads waiting for their token to be applied, and strong reads once confirmed. */
  private waiters = new Map<number, Waiter>();
  /** Strong reads waiting for confirmation by a majority. */
  private strong = new Map<number, Waiter>();
  /** Writes held until the core has checked their token (it is beyond what we know). */
  private tokenWrites = new Map<number, TokenWrite>();
  private nextWaiter = 1;
  /** Change events applied since the checkpoint's index (its history holds the older ones). */
  private events: ChangeEvent[] = [];
  private serving = { read: false, write: false, admin: false };
  private checkpointing = false;
  /** Keys' countdowns, while we are coordinator (ttlLeading). */
  private ttl = new TtlClock();
  private ttlLeading = false;
  private afterCheckpoint: Array<() => void> = [];
  private checkpointBytes: number;
  private dirtyRecordsMax: number;
  /** Records of the checkpoint being written (still in the overlay until it lands). */
  private checkpointRecords = 0;
  /** When we last said that we take no new entries (syncHold). */
  private holdLoggedAt = -Infinity;
  private snapshotPageItems: number;
  private closing = false;
  /** Set once shutdown has drained: peer messages and ticks are no longer taken in. */
  private peersStopped = false;
  private transfer: Transfer | null = null;
  private transferSeq = 0;
  /** Set while a received checkpoint is swapped in: the loop, ticks and peers hold still. */
  private swapping = false;
  /** Until when checkpoints wait, because a follower is reading ours, and since when. */
  private holdCheckpointUntil = 0;
  private holdStartedAt = 0;
  private lastOffer = new Map<number, number>();
  /**
   * An offer that came before we knew its sender as our coordinator or as our claim's source
   * (the offer and the message that tells us travel apart, and may cross): taken up once we
   * do, while recent. Dropped, it would stall us until the sender offers again.
   */
  private earlyOffer: { from: number; at: number } | null = null;

  constructor(o: ReplicaOptions, env: ReplicaEnv) {
    this.id = o.id;
    this.cluster = o.cluster;
    this.env = env;
    this.subjects = subjects(o.cluster);
    this.started = env.now();
    this.noCoordinatorSince = this.started;
    this.checkpointBytes = o.checkpointBytes ?? CHECKPOINT_LOG_BYTES_TRIGGER;
    this.dirtyRecordsMax = o.dirtyRecordsMax ?? DIRTY_RECORDS_MAX;
    // (0 would refuse every write for good: the checkpoint that would end it has nothing to write.)
    assert(Number.isSafeInteger(this.dirtyRecordsMax) && this.dirtyRecordsMax >= 1, `dirtyRecordsMax ${this.dirtyRecordsMax} is not a positive integer`);
    this.snapshotPageItems = o.snapshotPageItems ?? SNAPSHOT_PAGE_ITEMS_MAX;
    this.ckpt = env.checkpoint;
    this.st = new KvState(this.ckpt);
    const meta = this.ckpt.meta();
    const plan = restartPlan(meta, o.logEntries);
    if (plan.discard !== null) {
      env.logger.warn({ logLast: o.logEntries[o.logEntries.length - 1]?.index, checkpoint: meta.index }, 'discarding a log that the checkpoint supersedes');
      env.log.truncateFrom(plan.discard); // durable at the next sync
    }
    this.node = new Node({
      id: o.id,
      voters: meta.voters.length > 0 ? meta.voters : o.voters,
      promised: o.state.promised,
      catchUp: o.state.catchUp,
      newClusterId: o.newClusterId,
      ...(meta.cluster !== undefined ? { cluster: meta.cluster } : {}),
      entries: plan.rest,
      base: plan.base,
      // Only the checkpoint is known committed: the rest waits until the cluster says so.
      commit: meta.index,
      commitTs: meta.ts,
      checkpoint: meta.index,
      retainEntries: o.retainEntries ?? LOG_RETAIN_ENTRIES,
      retainBytes: o.retainBytes ?? LOG_RETAIN_BYTES_MAX,
      removeDeadAfterTicks: Math.ceil((o.removeDeadAfterMs ?? 0) / TICK_MS),
      keepOut: meta.keepOut ?? [],
      ...(o.replEntriesMax !== undefined ? { replEntriesMax: o.replEntriesMax } : {}),
    });
  }

  /** Records the checkpoint is behind by (see writesBehind; for checkers and tools). */
  get recordsBehind(): number {
    return this.writesBehind();
  }

  /** A checkpoint transfer from a peer is under way (for checkers and tools). */
  get receivingCheckpoint(): boolean {
    return this.transfer !== null;
  }

  /** The state machine (read only: for status, checkers and tools). */
  get state(): KvState {
    return this.st;
  }

  /** True while this replica serves the subject (the coordinator serves writes). */
  serves(subject: ClientSubject): boolean {
    return this.serving[subject];
  }

  /** Start serving: client subjects, and the first tick. */
  start(): void {
    this.setServing('read', true);
    this.setServing('admin', true);
    this.tick();
  }

  // ---- inputs ----

  /** One protocol tick (every TICK_MS). */
  tick(): void {
    // While a received checkpoint is swapped in, the core holds still (no elections meanwhile).
    if (this.swapping || this.peersStopped || this.dead) return;
    this.guard(() => this.node.tick());
    this.guard(() => this.syncHold());
    this.watchCoordinator();
    this.guard(() => this.expireDue());
    this.schedule();
  }

  /**
   * The coordinator counts down keys' times to live and proposes the expiry of those due
   * (see TtlClock); other servers count nothing.
   */
  private expireDue(): void {
    if (this.node.role !== 'coordinator' || this.closing) {
      if (this.ttlLeading) this.ttl.clear();
      this.ttlLeading = false;
      return;
    }
    if (!this.ttlLeading) {
      this.ttlLeading = true;
      this.ttl.clear();
      for (const [key, r] of this.st.ttlKeys()) if (r.ttl !== undefined) this.ttl.arm(key, r.rev, r.ttl);
    }
    // While writes are refused, refreshes are too: no key's time may run out meanwhile (a
    // `ckv lock` would be lost), so the countdowns stand still, and a checkpoint is started
    // (no write may come to start one).
    if (this.refusingWrites()) {
      this.env.observe?.({ t: 'ttlPaused' });
      this.checkpoint();
      return;
    }
    const due = this.ttl.tick();
    for (let i = 0; i < due.length; i += BATCH_OPS_MAX) {
      const chunk = due.slice(i, i + BATCH_OPS_MAX);
      const p = this.node.propose(chunk.map(({ key, rev }) => ({ op: 'expire' as const, key, rev })));
      // (Only while coordinator, checked above; should it fail anyway, those keys try again.)
      if (!p.ok) for (const { key, rev } of chunk) this.ttl.arm(key, rev, TICK_MS);
    }
  }

  /** Say when no coordinator has been heard for NO_COORDINATOR_WARN_MS, and when one is again. */
  private watchCoordinator(): void {
    const now = this.env.now();
    if (this.node.hasLiveCoordinator()) {
      if (this.noCoordinatorWarned) this.env.logger.info({ coordinator: this.node.coordinator, ms: Math.round(now - this.noCoordinatorSince) }, 'a coordinator again');
      this.noCoordinatorSince = now;
      this.noCoordinatorWarned = false;
    } else if (!this.noCoordinatorWarned && now - this.noCoordinatorSince >= NO_COORDINATOR_WARN_MS) {
      this.noCoordinatorWarned = true;
      this.env.logger.warn({ ms: Math.round(now - this.noCoordinatorSince), role: this.node.shownRole() }, 'no coordinator heard: writes wait (no majority reachable, or an election cannot finish)');
    }
  }

  /** A peer message (already validated by the transport). */
  onPeer(m: Msg): void {
    if (this.peersStopped || this.swapping || this.dead) return;
    // An invariant broke on a peer's message: stop rather than risk the log.
    this.guard(() => this.node.receive(m));
    if (this.earlyOffer !== null) this.takeEarlyOffer();
    this.schedule();
  }

  /** A client request on one of the client subjects: raw bytes, as they came. */
  request(subject: ClientSubject, data: Uint8Array | string, respond: Respond): void {
    if (this.dead) return;
    let op = 'invalid';
    if (this.env.observe) {
      // Measured from arrival to reply (waits for commit or a token included).
      const startedAt = this.env.now();
      const inner = respond;
      respond = (reply) => {
        this.env.observe?.({ t: 'answered', op, code: reply.ok ? 'OK' : reply.error.code, ms: this.env.now() - startedAt });
        inner(reply);
      };
    }
    let req: Request;
    try {
      req = parseRequest(data);
    } catch (err) {
      const e = err instanceof CkvError ? err : new CkvError(ErrorCode.BAD_REQUEST, String(err));
      this.fail(respond, e.code, e.message);
      return;
    }
    op = req.op;
    this.safely(respond, () => this.dispatch(subject, req, respond));
  }

  // ---- the loop: send early, persist, send, apply ----

  private schedule(): void {
    if (this.pumping) {
      this.again = true;
      return;
    }
    if (this.scheduled) return;
    this.scheduled = true;
    this.env.defer(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    if (this.swapping || this.dead) return;
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    this.guard(() => {
      for (;;) {
        this.again = false;
        const r = this.node.ready();
        for (const m of r.sendNow) this.env.sendPeer(m);
        const logged = r.truncateFrom !== null || r.append.length > 0;
        if (r.truncateFrom !== null) this.env.log.truncateFrom(r.truncateFrom);
        if (r.append.length > 0) this.env.log.append(r.append);
        this.env.observe?.({ t: 'ready', ready: r });
        let waits = (logged ? 1 : 0) + (r.state !== null ? 1 : 0);
        if (waits > 0) {
          const durable = (): void => {
            if (--waits > 0 || this.dead) return;
            this.guard(() => this.finish(r));
            this.pumping = false;
            this.continueLoop();
          };
          if (r.state !== null) this.env.writeState(r.state, durable);
          if (logged) this.env.log.sync(durable);
          return;
        }
        this.finish(r);
        if (this.dead) return;
        if (this.swapping || !(this.again || this.node.hasOutput())) break;
      }
      this.pumping = false;
      this.continueLoop();
    });
  }

  private continueLoop(): void {
    if (this.dead) return;
    if (this.swapping) this.maybeSwap();
    else if (this.again || this.node.hasOutput()) this.pump();
  }

  /** Everything the Ready persisted is durable: send the rest, answer, apply. */
  private finish(r: Ready): void {
    for (const m of r.send) this.env.sendPeer(m);
    for (const e of r.append) releaseEntryText(e);
    this.carryOut(r);
    this.apply(r.committed);
    this.node.advance(r);
    this.wakeWaiters();
    if (this.env.log.bytesAfter(this.node.checkpointIndex) > this.checkpointBytes || (this.st.dirtyCount >= CHECKPOINT_DIRTY_RECORDS_TRIGGER && !this.checkpointing)) this.checkpoint();
    else if (r.committed.some((e) => e.kind === 'config')) this.checkpointConfig(r.commit);
    this.syncHold();
  }

  /**
   * A follower whose checkpoint is as far behind as a coordinator would refuse writes at takes
   * no new entries until one is taken (Node.holdAppends), and starts one. Not while a server
   * reads our checkpoint (held still, for a bounded time): no checkpoint could end the hold,
   * and commits may need us meanwhile (sim seed 1800042 with dirtyMax=8 stalled 8 s so).
   */
  private syncHold(): void {
    const behind = (): boolean => this.node.role !== 'coordinator' && !this.closing && this.refusingWrites();
    if (behind()) this.checkpoint();
    const on = behind();
    if (on && !this.node.holdingAppends) {
      this.env.observe?.({ t: 'holding', records: this.writesBehind() });
      const now = this.env.now();
      if (now - this.holdLoggedAt >= HOLD_LOG_MS) {
        this.holdLoggedAt = now;
        this.env.logger.warn({ records: this.writesBehind(), max: this.dirtyRecordsMax }, 'the checkpoint is behind: taking no new entries until one is taken (a slow disk?)');
      }
    }
    this.node.holdAppends(on);
  }

  /**
   * A configuration change committed: checkpoint now, not at the next cron. After a restart a
   * server knows committed only what its checkpoint holds; a change it takes for pending makes
   * its commits wait on a majority of the voters before the change too, and those may be gone
   * for good (a voter decommissioned once the change committed).
   */
  private checkpointConfig(index: number): void {
    if (this.dead || this.closing || this.node.checkpointIndex >= index) return;
    if (this.checkpointing) {
      this.afterCheckpoint.push(() => this.checkpointConfig(index));
      return;
    }
    this.checkpoint();
    // Held (a follower or a backup reads our checkpoint) or swapping: try again shortly.
    if (!this.checkpointing) this.env.timer(CONFIG_CHECKPOINT_RETRY_MS, () => this.guard(() => this.checkpointConfig(index)));
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
      w.cancel();
      this.node.cancelToken(id);
      this.fail(w.respond, ErrorCode.UNAVAILABLE, 'could not confirm leadership with a majority');
    }
    for (const { id, ahead } of r.tokens) {
      const tw = this.tokenWrites.get(id);
      if (tw) {
        this.tokenWrites.delete(id);
        tw.cancel();
        if (ahead) this.fail(tw.respond, ErrorCode.TOKEN_AHEAD, `no write with timestamp ${tw.req.after} exists in the cluster`);
        else if (this.closing) this.fail(tw.respond, ErrorCode.UNAVAILABLE, 'server is shutting down; retry with the same rid');
        else this.safely(tw.respond, () => this.onWrite(tw.req, tw.respond, tw.deadline));
        continue;
      }
      const w = this.waiters.get(id) ?? this.strong.get(id);
      if (!w || !ahead) continue;
      this.waiters.delete(id);
      this.strong.delete(id);
      w.cancel();
      this.fail(w.respond, ErrorCode.TOKEN_AHEAD, `no write with timestamp ${w.after} exists in the cluster`);
    }
    for (const f of r.needSnapshot) this.offerCheckpoint(f);
    this.syncWriteSubscription();
  }

  private onNotice(n: Notice): void {
    if (n.type === 'foreign') this.env.logger.warn({ from: n.from, cid: n.cid, ours: this.node.cid }, 'refusing peer traffic from another cluster identity (the same name and key?)');
    // (A repair has already been warned about; an empty directory may be a new server or a lost one.)
    else if (n.type === 'catchup') this.env.logger.info(n, n.on ? 'catching up: taking entries into an empty (or repaired) data directory; not voting until it holds what the servers with data report' : 'caught up: voting');
    else this.env.logger.info({ notice: n }, `members: ${n.type}`);
    this.env.observe?.({ t: 'notice', notice: n });
    this.env.publishMembers({ ...n, by: this.id });
  }

  private setServing(subject: ClientSubject, on: boolean): void {
    if (this.serving[subject] === on) return;
    this.serving[subject] = on;
    this.env.serve(subject, on);
  }

  private syncWriteSubscription(): void {
    this.setServing('write', this.node.role === 'coordinator' && !this.closing);
  }

  private apply(committed: Entry[]): void {
    const lead = this.node.role === 'coordinator';
    for (const e of committed) {
      const res = this.st.apply(e);
      this.env.observe?.({ t: 'applied', entry: e, result: res });
      for (const ev of res.events) {
        this.events.push(ev);
        if (lead) this.env.publishEvent(ev);
        if (this.ttlLeading) {
          // A put's record is in the overlay now: its ttl, if any, counts from here.
          const rec = ev.op === 'put' ? this.st.get(ev.key) : undefined;
          if (rec !== undefined && rec.ttl !== undefined) this.ttl.arm(ev.key, rec.rev, rec.ttl);
          else this.ttl.disarm(ev.key);
        }
      }
      const p = this.pendingByIndex.get(e.index);
      if (!p) continue;
      this.pendingByIndex.delete(e.index);
      if (p.rid !== undefined) this.pendingByRid.delete(p.rid);
      p.cancel?.();
      // Another epoch's entry at our index: ours was lost with the coordinator that placed it.
      const result = p.epoch !== e.epoch ? undefined : e.kind === 'config' ? ({ ok: true } as const) : res.result;
      if (result) this.replyWrite(p.responders, e.index, e.ts, result);
      else for (const r of p.responders) this.fail(r, ErrorCode.UNAVAILABLE, 'the coordinator changed; retry with the same rid');
    }
  }

  /** Change events at indexes >= from, in log order: the checkpoint's history, then those since. */
  private *eventsFrom(from: number, key?: string): Iterable<ChangeEvent> {
    const through = this.ckpt.meta().index;
    for (const ev of this.ckpt.events(from, key)) {
      if (ev.index > through) break;
      yield ev;
    }
    // (A checkpoint committed but not yet reported holds some of ours: the index divides them.)
    for (const ev of this.events) if (ev.index >= from && ev.index > through && (key === undefined || ev.key === key)) yield ev;
  }

  /** A key's change events at indexes < below, newest first. */
  private *keyEventsBefore(key: string, below: number): Iterable<ChangeEvent> {
    const through = this.ckpt.meta().index;
    for (let i = this.events.length - 1; i >= 0; i--) {
      const ev = this.events[i]!;
      if (ev.index <= through) break;
      if (ev.index < below && ev.key === key) yield ev;
    }
    yield* this.ckpt.keyEventsBefore(key, Math.min(below, through + 1));
  }

  /** The key as of index `at` (a revision still in the history): its record, null where absent, or undefined if that is no longer known. */
  private recordAt(key: string, at: number): KeyValue | null | undefined {
    const current = this.st.get(key);
    if (current !== undefined && current.rev <= at) return { key, value: current.value, rev: current.rev, ...(current.b64 ? { b64: true as const } : {}) };
    for (const ev of this.keyEventsBefore(key, at + 1)) return ev.op === 'put' ? { key, value: ev.value!, rev: ev.index, ...(ev.b64 ? { b64: true as const } : {}) } : null;
    // No change of it in (floor, at]: it was then what it was at the floor, known only if the
    // history goes back to the start (nothing was there), or if it is absent now with no
    // change since (else it would be here).
    const floor = this.ckpt.historyFloor();
    if (at < floor) return undefined;
    if (floor === 0) return null;
    return current === undefined && isEmpty(this.keyEventsBefore(key, Infinity)) ? null : undefined;
  }

  private compacted(respond: Respond, ts: number, index: number, floor: number, what = 'events'): void {
    this.reply(respond, { ok: false, ts, index, oldest: floor + 1, error: { code: ErrorCode.COMPACTED, message: `${what}: history up to index ${floor} is no longer kept here (the oldest kept is ${floor + 1})` } });
  }

  private wakeWaiters(): void {
    if (this.waiters.size === 0) return;
    for (const [id, w] of this.waiters) {
      const ready = this.st.appliedTs >= w.after && (w.index === undefined || this.st.applied >= w.index);
      if (!ready) continue;
      this.waiters.delete(id);
      w.cancel();
      this.node.cancelToken(id);
      this.safely(w.respond, () => this.answerRead(w.req, w.respond));
    }
  }

  private failPending(code: ErrorCode, message: string): void {
    for (const p of this.pendingByIndex.values()) {
      p.cancel?.();
      for (const r of p.responders) this.fail(r, code, message);
    }
    this.pendingByIndex.clear();
    this.pendingByRid.clear();
  }

  // ---- clients ----

  private dispatch(subject: ClientSubject, req: Request, respond: Respond): void {
    if (req.op === 'status') {
      this.reply(respond, { ok: true, ts: this.st.appliedTs, index: this.st.applied, status: this.status() });
      return;
    }
    // Every server hears the admin subject: a snapshot request is for one of them.
    if (req.op === 'snapshot' && subject === 'admin' && req.server !== this.id) return;
    if (this.closing) return this.fail(respond, ErrorCode.UNAVAILABLE, 'server is shutting down');
    // The old checkpoint is closed during the swap: nothing may read it.
    if (this.swapping) return this.fail(respond, ErrorCode.UNAVAILABLE, 'installing a checkpoint; retry');
    if ((subject === 'admin') !== (req.op === 'snapshot')) {
      return this.fail(respond, ErrorCode.BAD_REQUEST, subject === 'admin' ? `op ${req.op} does not belong on the admin subject` : `snapshot goes to one server on ${this.subjects.admin}`);
    }
    if (req.op === 'config') {
      if (subject !== 'write') return this.fail(respond, ErrorCode.BAD_REQUEST, `config goes to the coordinator on ${this.subjects.write}`);
      return this.onConfig(req, respond);
    }
    if (isWrite(req)) {
      if (subject !== 'write') return this.fail(respond, ErrorCode.BAD_REQUEST, `op ${req.op} is a write: send it on ${this.subjects.write}`);
      return this.onWrite(req, respond);
    }
    const strong = 'consistency' in req && req.consistency === 'strong';
    if (strong && subject !== 'write') return this.fail(respond, ErrorCode.BAD_REQUEST, `strong reads go to the coordinator on ${this.subjects.write}`);
    const after = req.after ?? 0;
    if (strong) {
      const id = this.nextWaiter++;
      if (!this.node.readIndex(id)) return this.fail(respond, ErrorCode.UNAVAILABLE, 'not the coordinator');
      this.strong.set(id, { after, req, respond, cancel: this.expireWaiter(id, requestTimeoutMs(req)) });
      // A token beyond our commit may be from the future, or we may have been deposed: the
      // core answers once a majority confirms we still lead (Ready.tokens).
      if (after > this.node.commitTs) this.node.checkToken(id, after);
      this.schedule();
      return;
    }
    // A read as of a revision waits until it is applied here (a revision beyond every index times out).
    const atRev = req.op === 'get' && req.rev !== undefined && req.rev > this.st.applied ? { index: req.rev } : {};
    if (after <= this.st.appliedTs && atRev.index === undefined) return this.answerRead(req, respond);
    const id = this.nextWaiter++;
    this.waiters.set(id, { after, req, respond, cancel: this.expireWaiter(id, requestTimeoutMs(req)), ...atRev });
    if (after > this.node.knownCommitTs) {
      this.node.checkToken(id, after);
      this.schedule();
    }
  }

  private expireWaiter(id: number, ms: number): Cancel {
    return this.env.timer(ms, () => {
      const w = this.waiters.get(id) ?? this.strong.get(id);
      if (!w) return;
      this.waiters.delete(id);
      this.strong.delete(id);
      this.node.cancelToken(id);
      this.fail(w.respond, ErrorCode.TIMEOUT, `state did not reach timestamp ${w.after} within ${ms} ms`);
    });
  }

  private answerRead(req: Request, respond: Respond): void {
    const ts = this.st.appliedTs;
    const index = this.st.applied;
    switch (req.op) {
      case 'get': {
        if (req.rev !== undefined) {
          const at = this.recordAt(req.key, req.rev);
          if (at === undefined) return this.compacted(respond, ts, index, this.ckpt.historyFloor(), `key ${req.key} as of revision ${req.rev}`);
          if (at === null) return this.reply(respond, { ok: false, ts, index, error: { code: ErrorCode.NOT_FOUND, message: `key ${req.key} did not exist at revision ${req.rev}` } });
          return this.reply(respond, { ok: true, ts, index, value: at.value, rev: at.rev, ...(at.b64 ? { b64: true as const } : {}) });
        }
        const rec = this.st.get(req.key);
        if (!rec) return this.reply(respond, { ok: false, ts, index, error: { code: ErrorCode.NOT_FOUND, message: `key ${req.key} not found` } });
        return this.reply(respond, { ok: true, ts, index, value: rec.value, rev: rec.rev, ...(rec.ttl !== undefined ? { ttl: rec.ttl } : {}), ...(rec.b64 ? { b64: true as const } : {}), ...(rec.lease !== undefined ? { lease: rec.lease } : {}) });
      }
      case 'mget': {
        const values = req.keys.map((key) => {
          const rec = this.st.get(key);
          return rec ? keyValue(key, rec) : null;
        });
        return this.reply(respond, { ok: true, ts, index, values });
      }
      case 'list': {
        // `start` is inclusive (the previous page's `next`); ranges below are exclusive.
        const limit = req.limit!;
        const items: KeyValue[] = [];
        const first = req.start !== undefined && req.start.startsWith(req.prefix) ? this.st.get(req.start) : undefined;
        if (first) items.push(keyValue(req.start!, first));
        const from = req.start !== undefined && req.start < req.prefix ? undefined : req.start;
        items.push(...this.st.range(req.prefix, from, limit + 1 - items.length));
        let next = items.length > limit ? items[limit]!.key : null;
        if (items.length > limit) items.length = limit;
        // A page of large values stops early (it always holds at least one item). Bytes as
        // encoded: JSON escaping can make a value's reply several times its UTF-8 size.
        const fit = prefixWithin(items, LIST_PAGE_BYTES_MAX);
        if (fit < items.length) {
          next = items[fit]!.key;
          items.length = fit;
        }
        return this.reply(respond, { ok: true, ts, index, items, next });
      }
      case 'replay': {
        const from = Math.max(req.from, 1);
        const floor = this.ckpt.historyFloor();
        if (from <= floor) return this.compacted(respond, ts, index, floor);
        const limit = req.limit ?? REPLAY_EVENTS_MAX;
        const events: ChangeEvent[] = [];
        let bytes = 0;
        let scanned = 0;
        // Every event at an index <= through that the request asks for is in the page.
        let through = index;
        for (const ev of this.eventsFrom(from, req.key)) {
          // Whole entries only: a page ends between indexes, at the count or byte bound, or
          // once it looked at enough events (a rare prefix's page says how far it looked).
          const full = events.length >= limit || bytes > REPLAY_PAGE_BYTES_MAX || ++scanned > REPLAY_SCAN_EVENTS_MAX;
          if (full && ev.index !== events[events.length - 1]?.index) {
            through = ev.index - 1;
            break;
          }
          if (req.prefix !== undefined && !ev.key.startsWith(req.prefix)) continue;
          events.push(ev);
          bytes += encodedBytes(ev);
        }
        return this.reply(respond, { ok: true, ts, index, events, through });
      }
      case 'snapshot':
        return this.answerSnapshot(req, respond);
      case 'history': {
        // Newest first while within the limits, then given oldest first. `since`: every change
        // to the key at an index >= since is here (older ones are not kept, or did not fit).
        const limit = req.limit!;
        const picked: ChangeEvent[] = [];
        let bytes = 0;
        let since = this.ckpt.historyFloor() + 1;
        for (const ev of this.keyEventsBefore(req.key, Infinity)) {
          const size = encodedBytes(ev);
          if (picked.length >= limit || (picked.length > 0 && bytes + size > LIST_PAGE_BYTES_MAX)) {
            since = ev.index + 1;
            break;
          }
          picked.push(ev);
          bytes += size;
        }
        return this.reply(respond, { ok: true, ts, index, events: picked.reverse(), since });
      }
      default:
        return this.fail(respond, ErrorCode.BAD_REQUEST, `op ${req.op} is not a read`);
    }
  }

  /**
   * Where a write is decided. `deadline`: set when the write comes back from a token check
   * (its time runs on).
   */
  private onWrite(req: WriteRequest, respond: Respond, deadline?: number): void {
    if (this.node.role !== 'coordinator') return this.fail(respond, ErrorCode.UNAVAILABLE, 'not the coordinator');
    const timeoutMs = deadline === undefined ? requestTimeoutMs(req) : Math.max(1, deadline - this.env.now());
    if (deadline === undefined && req.after !== undefined && req.after > this.node.knownCommitTs && req.after > this.node.clock) {
      // Beyond every timestamp we issued: from the future, or we were deposed without
      // knowing. The core tells which once a majority answers (Ready.tokens).
      const id = this.nextWaiter++;
      const cancel = this.env.timer(timeoutMs, () => {
        if (!this.tokenWrites.delete(id)) return;
        this.node.cancelToken(id);
        this.fail(respond, ErrorCode.TIMEOUT, `could not check timestamp ${req.after} in time`);
      });
      this.tokenWrites.set(id, { req, respond, cancel, deadline: this.env.now() + timeoutMs });
      this.node.checkToken(id, req.after);
      this.schedule();
      return;
    }
    const rid = req.rid;
    if (rid !== undefined) {
      const seen = this.st.ridResult(rid);
      if (seen) {
        // The reply's ts never goes below what the client has seen, nor below our state.
        return this.replyWrite([respond], seen.index, Math.max(seen.ts, this.st.appliedTs, req.after ?? 0), seen.result);
      }
      const inflight = this.pendingByRid.get(rid);
      if (inflight) {
        inflight.responders.push(respond);
        if (!inflight.cancel) this.armPending(inflight, timeoutMs);
        return;
      }
    }
    // The checkpoint is far behind: no new write until it catches up (a retry with the same
    // rid is answered once one lands; one already placed above is answered as ever). Not
    // while a follower reads our checkpoint (it is held still, for a bounded time): that
    // would stop every write until the transfer ends. (Lease keepalives and revokes still go,
    // alone or batched: a lease, and the locks on it, must not expire because the checkpoint is slow.)
    if (this.refusingWrites() && !leaseUpkeep(req)) {
      this.checkpoint();
      return this.fail(respond, ErrorCode.UNAVAILABLE, `${this.writesBehind()} records are not checkpointed yet (at most ${this.dirtyRecordsMax} more than the checkpoint being written): retry`);
    }
    const ops: WriteOp[] = req.op === 'batch' ? req.ops : [stripWrite(req)];
    // (The core refuses an entry larger than ENTRY_BYTES_MAX: TOO_LARGE.)
    this.placed(this.node.propose(ops, rid), rid, respond, timeoutMs);
  }

  private onConfig(req: Extract<Request, { op: 'config' }>, respond: Respond): void {
    const placed = this.node.changeMembers(req.add !== undefined ? { add: req.add } : { remove: req.remove! });
    // Already so: answer at once (scripts retry membership changes).
    if (placed === null) return this.reply(respond, { ok: true, ts: this.node.commitTs, index: this.node.commit });
    this.placed(placed, undefined, respond, requestTimeoutMs(req));
  }

  /** A proposal's outcome: refused at once, or pending until its entry is applied. */
  private placed(p: Proposal, rid: string | undefined, respond: Respond, timeoutMs: number): void {
    if (!p.ok) return this.fail(respond, p.code, p.message);
    const pending: PendingWrite = { index: p.index, epoch: p.epoch, rid, responders: [respond], cancel: null };
    this.armPending(pending, timeoutMs);
    this.pendingByIndex.set(p.index, pending);
    if (rid !== undefined) this.pendingByRid.set(rid, pending);
    this.schedule();
  }

  private armPending(p: PendingWrite, ms: number): void {
    p.cancel = this.env.timer(ms, () => {
      p.cancel = null;
      const waiting = p.responders;
      p.responders = [];
      for (const r of waiting) this.fail(r, ErrorCode.TIMEOUT, 'not committed in time; the write may still apply: retry with the same rid');
    });
  }

  private replyWrite(responders: Respond[], index: number, ts: number, result: WriteResult): void {
    const reply: Reply = result.ok
      ? { ok: true, ts, index }
      : result.code === 'CAS_MISMATCH'
        ? { ok: false, ts, index, error: { code: ErrorCode.CAS_MISMATCH, message: `compare-and-set failed at op ${result.failed}` }, current: result.current, failed: result.failed }
        : result.code === 'LEASE_NOT_FOUND'
          ? { ok: false, ts, index, error: { code: ErrorCode.LEASE_NOT_FOUND, message: `lease ${result.lease} does not exist (never granted, expired or revoked): op ${result.failed}` }, failed: result.failed }
          : { ok: false, ts, index, error: { code: ErrorCode.TOO_LARGE, message: `lease ${result.lease} has LEASE_KEYS_MAX keys already: op ${result.failed}` }, failed: result.failed };
    for (const r of responders) this.reply(r, reply);
  }

  private reply(respond: Respond, reply: Reply): void {
    respond(this.node.cid !== '' ? { ...reply, cluster: this.node.cid } : reply);
  }

  private fail(respond: Respond, code: ErrorCode, message: string): void {
    this.reply(respond, { ok: false, ts: this.st.appliedTs, error: { code, message } });
  }

  /**
   * Run a request handler: a bug in it becomes an INTERNAL reply, never a crash; a damaged
   * record is never served (the client goes to another server) and starts a repair.
   */
  private safely(respond: Respond, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if (err instanceof CorruptRecordError) {
        this.fail(respond, ErrorCode.UNAVAILABLE, 'this server found a damaged record and is repairing itself; another server answers');
        this.die(new RepairNeeded(err));
        return;
      }
      this.env.logger.error({ err }, 'request failed');
      this.fail(respond, ErrorCode.INTERNAL, 'internal error');
    }
  }

  /** Run protocol work: a broken invariant stops the replica; a damaged record starts a repair. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      // Already dead: the environment's fatal() threw (the simulation does); let it through.
      if (this.dead) throw err;
      this.die(err instanceof CorruptRecordError ? new RepairNeeded(err) : (err as Error));
    }
  }

  private die(err: Error): void {
    if (this.dead) return;
    this.dead = true;
    this.env.fatal(err);
  }

  // ---- checkpoint transfer: serving ours ----

  private offerCheckpoint(follower: number): void {
    const now = this.env.now();
    const last = this.lastOffer.get(follower);
    if (last !== undefined && now - last < SNAPSHOT_PAGE_TIMEOUT_MS) return;
    this.lastOffer.set(follower, now);
    this.env.logger.info({ follower, checkpoint: this.node.checkpointIndex }, 'offering our checkpoint to a server behind our log');
    this.env.sendSnapshot(follower, JSON.stringify({ t: 'offer', from: this.id, index: this.node.checkpointIndex }));
  }

  /** A message on our snapshot subject: an offer (no reply), or a page request (reply). */
  onSnapshot(data: Uint8Array | string, respond: ((reply: string) => void) | null): void {
    if (this.dead) return;
    let m: { t?: unknown; from?: unknown; phase?: unknown; after?: unknown };
    try {
      m = JSON.parse(typeof data === 'string' ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'));
    } catch {
      return;
    }
    // Anyone can publish here: drop what is not a well-formed offer or page request.
    if (typeof m !== 'object' || m === null || Array.isArray(m)) return;
    // Another process starting with our id asks whether we are alive (see main.ts): yes.
    if (m.t === 'alive?') {
      respond?.(JSON.stringify({ t: 'alive', id: this.id }));
      return;
    }
    if (m.t === 'offer') {
      if (typeof m.from === 'number' && Number.isSafeInteger(m.from) && m.from >= 1 && m.from !== this.id) this.onOffer(m.from);
      return;
    }
    if (m.t !== 'page' || !respond || (m.after !== null && m.after !== undefined && typeof m.after !== 'string')) return;
    // Mid-swap our checkpoint store is closed: the requester retries.
    if (this.swapping) return;
    // Hold our checkpoint still while a follower reads it.
    this.holdCheckpoint();
    const after = typeof m.after === 'string' ? m.after : undefined;
    this.guard(() => this.servePage(m.phase === 'rids' ? 'rids' : 'kv', after, respond));
  }

  /** Hold our checkpoint still while someone reads it page by page. (The hold starts again only after a checkpoint has run, or after a quiet spell.) */
  private holdCheckpoint(): void {
    const now = this.env.now();
    if (this.holdStartedAt === 0 || now >= this.holdCheckpointUntil + SNAPSHOT_HOLD_MS) this.holdStartedAt = now;
    this.holdCheckpointUntil = Math.min(now + SNAPSHOT_HOLD_MS, this.holdStartedAt + SNAPSHOT_HOLD_TOTAL_MS_MAX);
  }

  private servePage(phase: 'kv' | 'rids', after: string | undefined, respond: (reply: string) => void): void {
    const page = this.checkpointPage(phase, after);
    if (page !== null) respond(JSON.stringify({ ...page, after: after ?? null }));
  }

  /** One page of our checkpoint (null: a cursor out of range). */
  private checkpointPage(phase: 'kv' | 'rids', after: string | undefined): Required<Pick<SnapshotPage, 'meta' | 'phase' | 'items' | 'next'>> | null {
    const meta = this.ckpt.meta();
    const max = this.snapshotPageItems;
    if (phase === 'rids') {
      const all = this.ckpt.rids();
      const startAt = after === undefined ? 0 : Number(after);
      if (!Number.isSafeInteger(startAt) || startAt < 0) return null;
      const items = all.slice(startAt, startAt + max);
      items.length = prefixWithin(items, SNAPSHOT_PAGE_BYTES_MAX);
      const next = startAt + items.length < all.length ? String(startAt + items.length) : null;
      return { meta, phase: 'rids', items, next };
    }
    const got = this.ckpt.range('', after, max);
    const items = got.slice(0, prefixWithin(got, SNAPSHOT_PAGE_BYTES_MAX));
    const next = items.length < got.length || got.length === max ? items[items.length - 1]![0] : null;
    return { meta, phase: 'kv', items, next };
  }

  /**
   * A backup reads our checkpoint (ckvctl snapshot save). Beginning, it must hold everything
   * we have applied (the request waited for its token): checkpoint first, then hold it still.
   */
  private answerSnapshot(req: Extract<Request, { op: 'snapshot' }>, respond: Respond): void {
    if (req.phase !== undefined) {
      this.holdCheckpoint();
      const page = this.checkpointPage(req.phase, req.cursor);
      if (page === null) return this.fail(respond, ErrorCode.BAD_REQUEST, `snapshot cursor ${JSON.stringify(req.cursor)} is out of range`);
      return this.reply(respond, { ok: true, ts: this.st.appliedTs, index: this.st.applied, snapshot: page });
    }
    const want = this.st.applied;
    this.checkpoint(() =>
      this.safely(respond, () => {
        if (this.dead) return;
        const meta = this.ckpt.meta();
        // Held by a follower's transfer (or swapping): the backup retries shortly.
        if (meta.index < want) return this.fail(respond, ErrorCode.UNAVAILABLE, `this server's checkpoint (index ${meta.index}) is held by a transfer and does not hold index ${want} yet; retry`);
        this.holdCheckpoint();
        this.reply(respond, { ok: true, ts: this.st.appliedTs, index: this.st.applied, snapshot: { meta, counts: this.ckpt.counts() } });
      }),
    );
  }

  // ---- checkpoint transfer: pulling a peer's, then swapping it in ----

  private onOffer(from: number): void {
    if (this.closing || !this.env.transfer || this.node.role === 'coordinator') return;
    if (!this.offerCounts(from)) {
      this.earlyOffer = { from, at: this.env.now() };
      return;
    }
    const t0 = this.transfer;
    if (t0) {
      // A transfer from a server we no longer take one from (it crashed, or lost the lead)
      // would hold us for up to its page timeouts (15 s): the offer of the one we follow now
      // replaces it, once the old one is let go of.
      if (t0.from !== from && !t0.complete && !t0.ending && !this.offerCounts(t0.from)) {
        this.earlyOffer = { from, at: this.env.now() };
        this.endTransfer(t0, `server ${from} offers its checkpoint, and server ${t0.from} is no longer the one to take it from`);
      }
      return;
    }
    this.earlyOffer = null;
    const t: Transfer = { from, incoming: null, phase: 'kv', after: null, meta: null, awaiting: 0, tries: 0, complete: false, swapStarted: false, ending: false, opening: true, ended: null };
    this.transfer = t;
    this.env.logger.info({ from }, 'receiving a checkpoint');
    this.env.transfer.begin((incoming) => {
      t.opening = false;
      if (t.ending) {
        // Superseded meanwhile: let go of the store it made (it shares the incoming directory with the next).
        if (incoming) this.env.transfer!.abort(incoming, t.ended!);
        else t.ended!();
        return;
      }
      if (incoming === null) return this.endTransfer(t, 'no place for it');
      t.incoming = incoming;
      this.requestPage(t);
    });
  }

  /** Only the offer of our coordinator (it found us behind its log) or of the promiser whose log our claim fetches (it compacted what we lack) counts. */
  private offerCounts(from: number): boolean {
    return this.node.coordinator === from || this.node.claimCheckpointSource() === from;
  }

  private takeEarlyOffer(): void {
    const o = this.earlyOffer!;
    // After this long the sender offers again of itself (see offerCheckpoint).
    if (this.env.now() - o.at > SNAPSHOT_PAGE_TIMEOUT_MS) this.earlyOffer = null;
    else if (this.offerCounts(o.from) && this.transfer?.from !== o.from) this.onOffer(o.from);
  }

  private requestPage(t: Transfer): void {
    if (this.transfer !== t || t.ending || this.dead) return;
    if (this.closing) return this.endTransfer(t, 'shutting down');
    const seq = ++this.transferSeq;
    t.awaiting = seq;
    this.env.transfer!.requestPage(t.from, JSON.stringify({ t: 'page', phase: t.phase, after: t.after }), (raw) => this.onPage(t, seq, raw));
  }

  private onPage(t: Transfer, seq: number, raw: Uint8Array | string | null): void {
    // A duplicate, or an answer to a request given up on: drop it.
    if (this.transfer !== t || t.ending || t.awaiting !== seq || this.dead) return;
    t.awaiting = 0;
    const page = raw === null ? `no answer from server ${t.from} in time` : parsePage(raw, t.phase, t.after);
    if (typeof page === 'string') {
      // Ask for the same page again a few times: an answer to another request (a stale or
      // duplicated page) is refused, never written.
      if (++t.tries < SNAPSHOT_PAGE_TRIES_MAX) return this.requestPage(t);
      return this.endTransfer(t, page);
    }
    t.tries = 0;
    if (t.meta === null) {
      t.meta = page.meta;
      // Caught up meanwhile by ordinary replication: nothing to install.
      if (t.meta.index <= this.node.commit) return this.endTransfer(t, null);
    }
    if (page.meta.index !== t.meta.index || page.meta.epoch !== t.meta.epoch) return this.endTransfer(t, 'the checkpoint changed during the transfer');
    const delta: CheckpointDelta = {
      kv: t.phase === 'kv' ? (page.items as Array<[string, Rec]>) : [],
      ridsSet: t.phase === 'rids' ? (page.items as Array<[string, RidRecord]>) : [],
      ridsDel: [],
      // The incoming store is never opened as a checkpoint until the swap: the final meta can go in from the start.
      meta: t.meta,
    };
    t.incoming!.write(delta, () => {
      if (this.transfer !== t || t.ending) return;
      if (page.next !== null) t.after = page.next;
      else if (t.phase === 'kv') {
        t.phase = 'rids';
        t.after = null;
      } else {
        t.complete = true;
        if (t.meta!.index <= this.node.commit || this.closing) return this.endTransfer(t, null);
        // Let the loop finish what it is doing, then swap while it holds still.
        this.swapping = true;
        return this.maybeSwap();
      }
      this.requestPage(t);
    });
  }

  /**
   * Once stopped on a damaged record (the shell repairs the data directory and runs a new
   * replica in this process): let go of a checkpoint transfer's incoming store, which would
   * stay open otherwise (an LMDB environment on a directory the next transfer deletes).
   * `done` once no transfer holds one; a swap under way finishes first (the shell then closes
   * what is current). Bounded by TRANSFER_RELEASE_MS_MAX, except a swap: going on while its
   * renames run would race the repair of the same directory.
   */
  releaseTransfer(done: () => void): void {
    const t = this.transfer;
    if (t !== null && !t.ending && !t.swapStarted) this.endTransfer(t, 'the server stopped');
    const deadline = this.env.now() + TRANSFER_RELEASE_MS_MAX;
    const wait = (): void => {
      if (this.transfer === null) return done();
      if (this.env.now() >= deadline && !this.transfer.swapStarted) {
        this.env.logger.warn({ from: this.transfer.from }, 'a checkpoint transfer did not end in time: going on without it');
        return done();
      }
      this.env.timer(TICK_MS, wait);
    };
    wait();
  }

  /** A transfer ends without a swap: failed (reason) or not needed any more (null). */
  private endTransfer(t: Transfer, reason: string | null): void {
    if (t.ending) return;
    t.ending = true;
    if (reason !== null) this.env.logger.warn({ from: t.from, reason }, 'checkpoint transfer failed; will retry when offered again');
    else this.env.logger.info({ index: t.meta?.index, commit: this.node.commit }, 'checkpoint transfer not needed any more');
    const done = (): void => {
      if (this.transfer === t) this.transfer = null;
      this.schedule();
    };
    if (t.incoming) this.env.transfer!.abort(t.incoming, done);
    else if (t.opening) t.ended = done;
    else done();
  }

  private maybeSwap(): void {
    const t = this.transfer;
    if (!this.swapping || !t || !t.complete || t.swapStarted || this.pumping || this.checkpointing || this.dead) return;
    if (t.meta!.index <= this.node.commit || this.closing) {
      this.swapping = false;
      return this.endTransfer(t, null);
    }
    const meta = t.meta!;
    t.swapStarted = true;
    this.env.transfer!.swap(this.ckpt, t.incoming!, (installed) => {
      this.guard(() => {
        this.ckpt = installed;
        this.st = new KvState(installed);
        const kept = this.node.restore({ index: meta.index, epoch: meta.epoch, ts: meta.ts }, meta.voters, meta.keepOut ?? [], meta.cluster);
        if (kept || this.env.log.last === 0) return this.installed(meta);
        // Our log does not hold the checkpoint's last entry: it restarts after the checkpoint
        // (a stale log is also dropped on restart, should we crash before this sync).
        this.env.log.truncateFrom(1);
        this.env.log.sync(() => this.installed(meta));
      });
    });
  }

  private installed(meta: CheckpointMeta): void {
    this.swapping = false;
    this.transfer = null;
    // Countdowns were for the state replaced: armed again from the new one (later, never earlier).
    this.ttlLeading = false;
    this.ttl.clear();
    this.events = [];
    this.env.logger.info({ index: meta.index }, 'checkpoint installed');
    this.env.observe?.({ t: 'installed', index: meta.index });
    this.wakeWaiters();
    this.schedule();
  }

  // ---- checkpoints ----

  /**
   * Records the checkpoint is behind by: what changed since the checkpoint being written was
   * taken (writes go on once one is taken, so memory stays within about twice the bound), and
   * the writes placed but not applied yet (each at least one record: commits may stall while
   * many are taken).
   */
  private writesBehind(): number {
    return this.st.dirtyCount - this.checkpointRecords + this.pendingByIndex.size;
  }

  /** New writes wait for a checkpoint (see DIRTY_RECORDS_MAX); never while a follower holds ours still. */
  private refusingWrites(): boolean {
    return this.writesBehind() >= this.dirtyRecordsMax && !this.checkpointHeld();
  }

  /** A follower is reading our checkpoint page by page (held still until SNAPSHOT_HOLD_TOTAL_MS_MAX at most). */
  private checkpointHeld(): boolean {
    return this.env.now() < this.holdCheckpointUntil && !this.closing;
  }

  /**
   * Write what was applied since the last checkpoint into it; never blocks requests. `done`
   * runs once no checkpoint is in flight (the final one, on shutdown).
   */
  checkpoint(done?: () => void): void {
    if (this.dead) return;
    if (this.checkpointing) {
      if (done) this.afterCheckpoint.push(done);
      return;
    }
    // A follower is reading our checkpoint page by page: keep it still (the cron comes back).
    if (this.swapping || this.st.applied === this.node.checkpointIndex || this.checkpointHeld()) {
      done?.();
      return;
    }
    const startedAt = this.env.now();
    const delta = this.st.takeDelta();
    // (The overlay's records leave dirtyCount when the checkpoint lands; its request ids already have.)
    this.checkpointRecords = delta.kv.length;
    // The events of what the delta holds become its history (all we have: none is at or below the checkpoint's index).
    assert(this.events.length === 0 || this.events[0]!.index > this.ckpt.meta().index, 'events since the checkpoint start above its index');
    delta.events = this.events.filter((ev) => ev.index <= delta.meta.index);
    this.checkpointing = true;
    if (done) this.afterCheckpoint.push(done);
    this.ckpt.write(delta, () => {
      this.guard(() => {
        this.checkpointing = false;
        this.holdStartedAt = 0;
        this.st.release(delta);
        this.checkpointRecords = 0;
        let kept = 0;
        while (kept < this.events.length && this.events[kept]!.index <= delta.meta.index) kept++;
        this.events = this.events.slice(kept);
        const first = this.node.checkpointed(delta.meta.index);
        this.env.log.removeBelow(first);
        this.env.logger.info({ index: delta.meta.index, keys: delta.kv.length, ms: Math.round(this.env.now() - startedAt) }, 'checkpoint written');
        this.env.observe?.({ t: 'checkpointed', index: delta.meta.index, ms: this.env.now() - startedAt, records: delta.kv.length + delta.ridsSet.length + delta.ridsDel.length });
        this.syncHold();
      });
      const waiting = this.afterCheckpoint;
      this.afterCheckpoint = [];
      for (const fn of waiting) fn();
      this.maybeSwap();
    });
  }

  // ---- shutdown ----

  /**
   * Stop taking requests, let in-flight writes commit (peers go on meanwhile, for at most
   * SHUTDOWN_DRAIN_MS_MAX), answer everyone still waiting, write a final checkpoint; then done.
   */
  close(done: () => void): void {
    if (this.closing) return;
    this.closing = true;
    this.setServing('read', false);
    this.syncWriteSubscription();
    const deadline = this.env.now() + SHUTDOWN_DRAIN_MS_MAX;
    const drain = (): void => {
      if (this.dead) return;
      if ((this.pendingByIndex.size > 0 || this.pumping) && this.env.now() < deadline) {
        this.env.timer(TICK_MS, drain);
        return;
      }
      this.peersStopped = true;
      this.failPending(ErrorCode.UNAVAILABLE, 'server is shutting down; retry with the same rid');
      for (const w of [...this.waiters.values(), ...this.strong.values(), ...this.tokenWrites.values()]) {
        w.cancel();
        this.fail(w.respond, ErrorCode.UNAVAILABLE, 'server is shutting down');
      }
      this.tokenWrites.clear();
      this.waiters.clear();
      this.strong.clear();
      settle();
    };
    // A transfer in flight ends at its next step; the loop finishes its persist.
    const settle = (): void => {
      if (this.dead) return;
      this.maybeSwap(); // a complete transfer waiting to swap ends now (we are closing)
      if (this.pumping || this.transfer !== null) {
        this.env.timer(5, settle);
        return;
      }
      this.checkpoint(() => {
        this.setServing('admin', false);
        done();
      });
    };
    drain();
  }

  // ---- status ----

  /** What readiness and metrics need beyond status(): whether a coordinator is heard, and whether we stopped. */
  health(): { liveCoordinator: boolean; stopped: boolean } {
    return { liveCoordinator: this.node.hasLiveCoordinator(), stopped: this.dead };
  }

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
      ...(n.cid !== '' ? { clusterId: n.cid } : {}),
      epoch: n.epoch,
      // A follower outside the voter set is a learner (it replicates but does not vote).
      role: n.shownRole(),
      coordinator: n.coordinator,
      clock: n.clock,
      last: n.lastIndex(),
      commit: n.commit,
      applied: this.st.applied,
      checkpoint: n.checkpointIndex,
      voters: n.voters,
      version: VERSION,
      uptimeMs: this.env.now() - this.started,
      peers,
    };
  }
}

// ---------------------------------------------------------------------------
// Helpers

function isEmpty(xs: Iterable<unknown>): boolean {
  for (const _ of xs) return false;
  return true;
}

function encodedBytes(x: unknown): number {
  return Buffer.byteLength(JSON.stringify(x));
}

/** How many of the first items fit within `max` bytes encoded (at least one). */
function prefixWithin(items: unknown[], max: number): number {
  let bytes = 0;
  for (let i = 0; i < items.length; i++) {
    bytes += encodedBytes(items[i]);
    if (bytes > max && i > 0) return i;
  }
  return items.length;
}

/** A page of a peer's checkpoint, checked as anything from outside is, or why it is not one. */
function parsePage(raw: Uint8Array | string, phase: 'kv' | 'rids', after: string | null): Page | string {
  let x: unknown;
  try {
    x = JSON.parse(typeof raw === 'string' ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('utf8'));
  } catch {
    return 'not JSON';
  }
  if (typeof x !== 'object' || x === null || Array.isArray(x)) return 'not an object';
  const p = x as { meta?: unknown; phase?: unknown; after?: unknown; items?: unknown; next?: unknown };
  // A page names the request it answers: an answer to another one is refused.
  if (p.phase !== phase || p.after !== after) return `a page for ${JSON.stringify([p.phase, p.after])}, not ${JSON.stringify([phase, after])}`;
  const mp = metaProblem(p.meta);
  if (mp !== null) return mp;
  if (!Array.isArray(p.items)) return 'items is not an array';
  if (p.next !== null && typeof p.next !== 'string') return 'next is not a string or null';
  let prev = phase === 'kv' ? after : null;
  for (const item of p.items) {
    if (!Array.isArray(item) || item.length !== 2 || typeof item[0] !== 'string') return 'an item is not a [name, record] pair';
    const problem = phase === 'kv' ? recProblem(item[1]) : ridRecordProblem(item[1]);
    if (problem !== null) return problem;
    // Keys come in order, after the page asked for: a stale or reordered page is refused.
    if (phase === 'kv' && prev !== null && !(item[0] > prev)) return `key ${JSON.stringify(item[0])} is out of order`;
    if (phase === 'kv') prev = item[0];
  }
  return p as Page;
}

function stripWrite(req: Exclude<WriteRequest, { op: 'batch' }>): WriteOp {
  const ttl = 'ttl' in req && req.ttl !== undefined ? { ttl: req.ttl } : {};
  const b64 = 'b64' in req && req.b64 === true ? { b64: true as const } : {};
  const lease = (req.op === 'put' || req.op === 'cas' || req.op === 'create') && req.lease !== undefined ? { lease: req.lease } : {};
  switch (req.op) {
    case 'grant':
      return { op: 'grant', ttl: req.ttl };
    case 'keepalive':
    case 'revoke':
      return { op: req.op, lease: req.lease };
    case 'create':
      return { op: 'cas', key: req.key, expectRev: 0, value: req.value, ...ttl, ...b64, ...lease };
    case 'put':
      return { op: 'put', key: req.key, value: req.value, ...ttl, ...b64, ...lease };
    case 'del':
      return { op: 'del', key: req.key };
    case 'delprefix':
      return { op: 'delprefix', prefix: req.prefix };
    case 'cas':
      return 'expectRev' in req ? { op: 'cas', key: req.key, expectRev: req.expectRev, value: req.value, ...ttl, ...b64, ...lease } : { op: 'cas', key: req.key, expect: req.expect, value: req.value, ...ttl, ...b64, ...lease };
  }
}

/** Keeps leases alive or ends them, and nothing else: goes through while writes are refused (see onWrite). */
function leaseUpkeep(req: WriteRequest): boolean {
  const upkeep = (op: string): boolean => op === 'keepalive' || op === 'revoke';
  return upkeep(req.op) || (req.op === 'batch' && req.ops.every((o) => upkeep(o.op)));
}
