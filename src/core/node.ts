// The protocol core of one server: Lamport clock, ping daemon, bully election
// with epochs and persisted promises, replication with commit by majority,
// strong-read confirmation and token checks.
//
// Pure and deterministic: it takes a tick, a message, a proposal or a query,
// and accumulates a Ready (what to persist, then send, then apply). No I/O, no
// clock, no randomness: time enters only as ticks.

import {
  ALIVE_WAIT_TICKS,
  ANNOUNCE_WAIT_TICKS,
  AUTO_REMOVE_VOTERS_MIN,
  CLAIM_CHECKPOINT_WAIT_TICKS,
  CLAIM_WAIT_TICKS,
  CLOCK_STEP_MAX,
  CONFIRM_WAIT_TICKS,
  DEAD_AFTER_TICKS,
  ENTRY_BYTES_MAX,
  EPOCH_STEP_MAX,
  KEEP_OUT_MAX,
  PEERS_MAX,
  PING_INTERVAL_TICKS,
  REPL_ENTRIES_MAX,
  RESEND_GAP_TICKS,
  STAND_BACK_TICKS,
  SUSPECT_AFTER_TICKS,
  TAKEOVER_UPTIME_TICKS,
} from './limits.js';
import { ConfirmRounds, TokenQueries, type Round } from './confirm.js';
import { EntryLog } from './entry-log.js';
import { entryBytes } from './entry-text.js';
import { BROADCAST, type Body, type Msg } from './messages.js';
import type { Entry, Liveness, Role, WriteOp } from './wire.js';
import { assert } from './assert.js';

export interface NodeInit {
  id: number;
  voters: number[];
  /** Highest epoch promised (from the state file). */
  promised: number;
  /** The log on disk after `base`, contiguous. */
  entries: Entry[];
  /** The entry just before `entries` (the checkpoint's position when the log starts after it). */
  base: { index: number; epoch: number; ts: number };
  /** Highest index known committed (at least the checkpoint's). */
  commit: number;
  commitTs: number;
  /** Remove a voter automatically once dead this long, in ticks (0: never). */
  removeDeadAfterTicks?: number;
  /** Servers kept out of the voters as of `base` (from the checkpoint), see Node.keepOut. */
  keepOut?: number[];
  /** Index the checkpoint holds (the state starts there): at least base.index. */
  checkpoint?: number;
  /** Entries kept in memory below the checkpoint for lagging followers (default: all). */
  retainEntries?: number;
  /** Bytes of entries kept below a checkpoint, at most (LOG_RETAIN_BYTES_MAX; default: no bound). */
  retainBytes?: number;
  /** Entries in one replication message, at most (default REPL_ENTRIES_MAX). */
  replEntriesMax?: number;
  /** The cluster's identity, if the checkpoint holds it (else it comes with entry 1). */
  cluster?: string;
  /** A catch-up member (the state file says so). */
  catchUp?: boolean;
  /** The identity to give a cluster if this server becomes its first coordinator (random, from the driver). */
  newClusterId?: string;
}

/** A proposal placed in the log, or why it was not. Errors are data: the code is the reply's. */
export type Proposal = { ok: true; index: number; epoch: number; ts: number } | { ok: false; code: 'UNAVAILABLE' | 'BAD_REQUEST' | 'TOO_LARGE'; message: string };

export interface PeerInfo {
  id: number;
  lastHeard: number;
  ping?: Extract<Body, { t: 'ping' }> & { epoch: number; clock: number; cid: string };
}

export type Notice =
  | { type: 'coordinator'; id: number; epoch: number }
  | { type: 'stepdown'; epoch: number; reason: string }
  | { type: 'up' | 'down'; id: number }
  | { type: 'election'; epoch: number; phase: string }
  | { type: 'config'; voters: number[]; keepOut?: number[] }
  /** Peer traffic from another cluster identity was refused (told once per identity). */
  | { type: 'foreign'; from: number; cid: string }
  /** This server lost data it may have acknowledged: it neither votes nor leads until caught up (or it is, again). */
  | { type: 'catchup'; on: boolean; target?: number };

/** What the state file holds (DESIGN §4): the promise, and whether this server is a catch-up member. */
export interface DurableState {
  promised: number;
  catchUp: boolean;
}

/**
 * What the driver must carry out, in this order: send `sendNow`; persist (truncate, append,
 * promise) and wait until durable; send `send`; apply `committed`; then call advance().
 */
export interface Ready {
  /** Truncate the log from this index (inclusive) before appending. */
  truncateFrom: number | null;
  append: Entry[];
  /** Persist this state (promise, catch-up) before sending anything in `send`. */
  state: DurableState | null;
  /**
   * May leave before the persist is durable: the coordinator's appends (it counts itself
   * toward a majority only once advance() says its log is durable, so followers' fsyncs
   * overlap with its own).
   */
  sendNow: Msg[];
  /** Leave only once everything persisted by this Ready is durable (acks, promises, votes). */
  send: Msg[];
  /** Committed entries to apply, in log order: all are durable here once the persist is. */
  committed: Entry[];
  /** Commit index as of this Ready (the last of `committed`, or where applying stands). */
  commit: number;
  /** Strong reads confirmed: answer each once applied >= index. */
  reads: Array<{ id: number; index: number }>;
  readsFailed: number[];
  /** Token checks answered: ahead means no such write exists. */
  tokens: Array<{ id: number; ahead: boolean }>;
  /** Followers that need the checkpoint (their next entry is below our log). */
  needSnapshot: number[];
  /** Leadership was lost: fail pending proposals (their outcome is unknown). */
  lostLeadership: boolean;
  notices: Notice[];
  /** Pass back to advance() once everything in this Ready is durable and applied. */
  persistMark: { last: number; gen: number };
}

type Pending = Omit<Ready, 'persistMark' | 'committed' | 'commit'>;

function emptyReady(): Pending {
  return {
    truncateFrom: null,
    append: [],
    state: null,
    sendNow: [],
    send: [],
    reads: [],
    readsFailed: [],
    tokens: [],
    needSnapshot: [],
    lostLeadership: false,
    notices: [],
  };
}

type Phase =
  | { p: 'idle' }
  | { p: 'electing'; until: number }
  | { p: 'waiting'; until: number }
  | { p: 'claiming'; epoch: number; until: number; promises: Map<number, { last: number; lastEpoch: number; commit: number }> }
  | {
      p: 'fetching';
      epoch: number;
      until: number;
      start: number;
      target: number;
      targetLast: number;
      targetCommit: number;
      /** The highest commit among the promises. */
      promisersCommit: number;
      promisers: number[];
      /** The target compacted what we lack: we wait for its checkpoint, then fetch on. */
      checkpoint: boolean;
    };

const NOT_COORDINATOR: Proposal = { ok: false, code: 'UNAVAILABLE', message: 'not the coordinator' };
const retry = (message: string): Proposal => ({ ok: false, code: 'UNAVAILABLE', message });
const refuse = (message: string): Proposal => ({ ok: false, code: 'BAD_REQUEST', message });


export class Node {
  readonly id: number;
  /** The voters: those of the newest configuration entry in the log (committed or not). */
  voters: number[];
  /**
   * Servers an operator removed: never added back automatically (one removed automatically,
   * because it was dead, is added back once it returns and catches up). Part of the
   * configuration, in the log, so every coordinator knows it.
   */
  keepOut: number[] = [];
  private removeDeadAfterTicks: number;
  role: Role = 'follower';
  coordinator: number | null = null;
  /** Epoch of the coordinator we follow (or lead). */
  epoch = 0;
  /** Highest epoch promised; durable. */
  promised: number;
  /** Highest epoch seen anywhere. */
  private epochSeen: number;
  clock: number;
  commit: number;
  commitTs: number;
  /** Highest commitTs heard from a coordinator (followers: lower bound on the cluster's). */
  knownCommitTs: number;
  /** Index of the last entry known durable locally. */
  private persistedLast: number;
  /**
   * Coordinator: the highest commit another server reported this epoch (in its promise or
   * its pings). Those entries are committed, so they are in our log too.
   */
  private peersCommit = 0;
  private gen = 0;
  /** The log in memory (entries after the checkpoint, and those retained below it). */
  private log: EntryLog;
  /** Highest index known to match the current coordinator's log. */
  private matched: number;
  private now = 0;
  private startTick = 0;
  private peers = new Map<number, PeerInfo>();
  private peerDead = new Set<number>();
  private phase: Phase = { p: 'idle' };
  // Coordinator state.
  private match = new Map<number, number>();
  private broadcastUpTo = 0;
  private epochStart = 0;
  private commitToSend = false;
  private resentAt = new Map<number, number>();
  /** Followers being caught up by unicast: the last index sent to each (the next slice goes once it is acked). */
  private streaming = new Map<number, number>();
  // Follower state.
  /** Last tick we heard our coordinator acting as coordinator of our epoch (an append, or a coordinator's ping). */
  private coordHeard = -100;
  /**
   * A claim failed because the most up-to-date log no longer holds the entries we lack
   * (compacted into a checkpoint): we stand back from elections until our commit reaches
   * cannotLeadBelow, or until cannotLeadUntil (so that a cluster where that log's holder
   * died is not left without a candidate).
   */
  private cannotLeadBelow = 0;
  private cannotLeadUntil = 0;
  private nackAt = -100;
  /** Set by the replica while its checkpoint is too far behind: see holdAppends. */
  private holding = false;
  private lastAppendTick = -100;
  /** Strong reads and token checks waiting for a majority to confirm we lead (coordinator). */
  private rounds = new ConfirmRounds();
  /** Token checks asked of the coordinator (follower). */
  private queries = new TokenQueries();
  /** Peer messages dropped because their epoch or clock jumped too far (see EPOCH_STEP_MAX). */
  droppedOutOfRange = 0;
  /** Peer messages dropped because they came from another cluster identity. */
  droppedForeign = 0;
  /** The cluster's identity: '' until this server knows entry 1 is committed (or has a checkpoint that says). */
  cid: string;
  /**
   * A catch-up member: a server whose log may lack what it once acknowledged (its data
   * directory was empty when it first took entries from a coordinator, its log was cut by
   * repair, its checkpoint discarded). Persisted in the state file. Such a server, and an
   * empty one, is "without data": it votes or claims only when that cannot lose a committed
   * entry (see mayVote), and stops being one once its log holds the newest entry the servers
   * with data report.
   */
  catchUp: boolean;
  /** The catch-up flag as last persisted (appends wait until entering catch-up is durable). */
  private catchUpDurable: boolean;
  private foreignTold = new Set<string>();
  private newClusterId: string;
  /** Highest index handed to the driver to apply (in a Ready's `committed`). */
  private handedOut: number;
  /** Highest index the driver has applied (advance()), and checkpointed (checkpointed()). */
  private appliedIndex: number;
  private checkpointAt: number;
  private retainEntries: number;
  private retainBytes: number;
  private replEntriesMax: number;
  private out: Pending = emptyReady();

  constructor(init: NodeInit) {
    assert(init.voters.includes(init.id) || init.voters.length > 0, 'voters must not be empty');
    this.id = init.id;
    this.log = new EntryLog(init.base, init.entries, { voters: init.voters, keepOut: init.keepOut ?? [] });
    const config = this.log.configAt(init.base.index);
    this.voters = config.voters;
    this.keepOut = config.keepOut;
    this.removeDeadAfterTicks = init.removeDeadAfterTicks ?? 0;
    this.promised = init.promised;
    this.epochSeen = init.promised;
    this.setConfig(this.log.configAt(this.lastIndex()));
    this.persistedLast = this.lastIndex();
    this.commit = Math.min(init.commit, this.lastIndex());
    this.commitTs = init.commitTs;
    this.knownCommitTs = init.commitTs;
    this.clock = Math.max(this.log.lastTs, init.commitTs);
    this.epochSeen = Math.max(this.epochSeen, this.lastEpoch());
    this.matched = this.commit;
    this.checkpointAt = Math.max(init.checkpoint ?? init.base.index, init.base.index);
    this.appliedIndex = this.checkpointAt;
    this.handedOut = this.checkpointAt;
    this.retainEntries = init.retainEntries ?? Number.MAX_SAFE_INTEGER;
    this.retainBytes = init.retainBytes ?? Number.MAX_SAFE_INTEGER;
    this.replEntriesMax = init.replEntriesMax ?? REPL_ENTRIES_MAX;
    this.cid = init.cluster ?? '';
    this.catchUp = init.catchUp ?? false;
    this.catchUpDurable = this.catchUp;
    this.newClusterId = init.newClusterId ?? '';
    this.learnIdentity();
    for (const v of this.voters) if (v !== this.id) this.peers.set(v, { id: v, lastHeard: 0 });
  }

  /** Nothing here: no log, no checkpoint, no identity (a new server, or one whose data was lost). */
  private isEmpty(): boolean {
    return this.lastIndex() === 0 && this.checkpointAt === 0 && this.cid === '';
  }

  /** The identity is entry 1's, once it is committed. */
  private learnIdentity(): void {
    if (this.cid !== '' || this.commit < 1) return;
    const first = this.log.at(1);
    if (first?.kind === 'noop' && first.cluster !== undefined) this.cid = first.cluster;
  }

  /** The role as heartbeats and status show it: a server without data is catching up; a follower outside the voters, a learner. */
  shownRole(): Role {
    if (this.withoutData() && this.role !== 'coordinator') return 'catchup';
    return this.role === 'follower' && !this.isVoter(this.id) ? 'learner' : this.role;
  }

  /** Without data: empty, or catching up. */
  private withoutData(): boolean {
    return this.catchUp || this.isEmpty();
  }

  /**
   * What the voters heard lately say of their data: those without any (empty, or catching
   * up; we count ourselves among them), those unheard, and the best log among those with data,
   * under every configuration in play (a server without data may not know the configuration:
   * its own is as old as its data).
   *
   * A server whose own newest configuration entry leaves it out, at the very position the
   * claimant's newest one is (same index and epoch: the logs agree up to there), adds nothing
   * the claimant lacks: the entries after that position were committed, if at all, by that
   * configuration, without it. (Else a removed server holding entries no voter holds, never
   * committed, would keep a server without data from ever voting.)
   *
   * A server with data whose newest configuration entry is committed (its commit reaches it)
   * holds the committed log up to its commit: a configuration entry at or below that index in
   * any other log is either that one (or an older one it replaced), or never committed, and so
   * never committed anything. Only configurations from there on are in play. (Else a server
   * whose data is as old as a voter since removed for good would wait for that voter forever.)
   */
  private dataView(claimant?: LogPosition): DataView {
    const lost = (p: NonNullable<PeerInfo['ping']>): boolean => p.role === 'catchup' || (p.last === 0 && p.checkpoint === 0 && p.cid === '');
    // The configurations in play: ours (unless we are empty: then it is only our command
    // line's first voters) and every one a server with data reports. A committed entry may lie
    // on a majority of an older configuration than the newest (one change at a time), so the
    // view must be safe under each, and the best log is taken over the voters of all of them.
    const withData: Array<NonNullable<PeerInfo['ping']>> = [];
    let floor = 0;
    let anchor: number[] | null = null;
    for (const peer of this.peers.values()) {
      const p = peer.ping;
      if (!p || lost(p) || this.liveness(peer.id) === 'dead') continue;
      withData.push(p);
      // (A server of an older version says nothing of its configuration's position: unknown.)
      if (p.cfgIndex !== undefined && p.cfgIndex <= p.commit && p.commit > floor) {
        floor = p.commit;
        anchor = p.voters;
      }
    }
    const configs: number[][] = [];
    const seen = new Set<string>();
    // `atMost`: the index of the configuration entry, or one above it (a configuration in a
    // checkpoint lies at or below it).
    const add = (voters: number[], atMost: number): void => {
      const k = voters.join();
      if (voters.length > 0 && (atMost >= floor || voters === anchor) && !seen.has(k)) {
        seen.add(k);
        configs.push(voters);
      }
    };
    for (const p of withData) add(p.voters, p.cfgIndex === undefined ? Infinity : p.cfgIndex > 0 ? p.cfgIndex : p.checkpoint);
    const mine = this.log.configPosition().index;
    if (!this.isEmpty()) add(this.voters, mine > 0 ? mine : this.log.offset);
    if (configs.length === 0) add(this.voters, Infinity);
    const best = { last: 0, lastEpoch: 0 };
    let safe = true;
    for (const voters of configs) {
      let without = 0;
      let unheard = 0;
      for (const v of voters) {
        const p = v === this.id ? undefined : this.peers.get(v)?.ping;
        if (v === this.id) without++;
        else if (!p || this.liveness(v) === 'dead') unheard++;
        else if (lost(p)) without++;
        else if (claimant !== undefined && !p.voters.includes(v) && sameConfigEntry(p, claimant)) continue;
        else if (newer(p, best)) {
          best.last = p.last;
          best.lastEpoch = p.lastEpoch;
        }
      }
      if (unheard > 0 && without + unheard >= Math.floor(voters.length / 2) + 1) safe = false;
    }
    return { safe, best };
  }

  /**
   * A server without data may vote for (or be) a claimant whose log is at least the best log
   * among the voters with data it hears, and only when every majority that may have committed
   * something without it either has a member among those (whose log the claimant then covers)
   * or has lost its data anyway: no voter is unheard, or the unheard and those without data
   * together are fewer than a majority. (A new cluster is the case where every voter is empty.)
   */
  private mayVote(log: LogPosition): boolean {
    if (!this.withoutData()) return true;
    const v = this.dataView(log);
    return v.safe && !newer(v.best, log);
  }

  private persistState(): void {
    this.out.state = { promised: this.promised, catchUp: this.catchUp };
  }

  /** An empty server about to take its first entries from a coordinator becomes a catch-up member. */
  private enterCatchUp(): void {
    this.catchUp = true;
    this.catchUpDurable = false;
    this.persistState();
    this.out.notices.push({ type: 'catchup', on: true });
  }

  /** A catch-up member whose log durably holds the coordinator's up to the best log heard is one no more. */
  private checkCatchUp(): void {
    if (!this.catchUp || !this.catchUpDurable || this.coordinator === null || this.role !== 'follower') return;
    // The coordinator's own report too (it holds every committed entry), once we have heard it.
    const c = this.peers.get(this.coordinator)?.ping;
    if (!c || c.epoch !== this.epoch || c.role !== 'coordinator') return;
    const v = this.dataView(c);
    if (!v.safe) return;
    const target = Math.max(v.best.last, c.last, 1);
    if (Math.min(this.matched, this.persistedLast) < target || this.lastIndex() < target) return;
    this.catchUp = false;
    this.persistState();
    this.out.notices.push({ type: 'catchup', on: false, target });
  }

  // ---- log access ----

  lastIndex(): number {
    return this.log.last;
  }
  lastEpoch(): number {
    return this.log.lastEpoch;
  }
  firstIndex(): number {
    return this.log.first;
  }
  /** The entry at index, if in memory. */
  entry(index: number): Entry | undefined {
    return this.log.at(index);
  }
  /** Epoch of the entry at index; undefined when below our log or beyond it. */
  private epochAt(index: number): number | undefined {
    return this.log.epochAt(index);
  }
  private majority(): number {
    return Math.floor(this.voters.length / 2) + 1;
  }
  private isVoter(id: number): boolean {
    return this.voters.includes(id);
  }
  liveness(id: number): Liveness {
    if (id === this.id) return 'alive';
    const p = this.peers.get(id);
    if (!p) return 'dead';
    const silent = this.now - p.lastHeard;
    return silent > DEAD_AFTER_TICKS ? 'dead' : silent > SUSPECT_AFTER_TICKS ? 'suspect' : 'alive';
  }
  peerTable(): PeerInfo[] {
    return [...this.peers.values()];
  }
  get ticks(): number {
    return this.now;
  }
  /** Highest index the driver reported applied. */
  get applied(): number {
    return this.appliedIndex;
  }
  /** Index of the newest durable checkpoint. */
  get checkpointIndex(): number {
    return this.checkpointAt;
  }

  // ---- output ----

  /** Take what accumulated since the last call. */
  ready(): Ready {
    if (this.role === 'coordinator') {
      const sent = this.flushAppends();
      if (this.commitToSend && !sent && this.voters.length > 1) {
        this.send(BROADCAST, { t: 'append', prevIndex: this.lastIndex(), prevEpoch: this.lastEpoch(), entries: [], commit: this.commit, commitTs: this.commitTs });
      }
    }
    this.commitToSend = false;
    const committed = this.commit > this.handedOut ? this.log.slice(this.handedOut + 1, this.commit) : [];
    this.handedOut = this.commit;
    // A Ready that persists a promise sends nothing before it is durable (a single voter
    // claims and leads in one turn: its first appends must not outrun its promise).
    if (this.out.state !== null && this.out.sendNow.length > 0) {
      this.out.send = [...this.out.sendNow, ...this.out.send];
      this.out.sendNow = [];
    }
    const r: Ready = { ...this.out, committed, commit: this.commit, persistMark: { last: this.lastIndex(), gen: this.gen } };
    this.out = emptyReady();
    return r;
  }

  /**
   * The Ready `r` is carried out: what it persisted is durable and its committed entries are
   * applied. (A truncation since it was issued voids its persist mark: a later Ready covers it.)
   */
  advance(r: Ready): void {
    const last = r.committed.length > 0 ? r.committed[r.committed.length - 1]!.index : 0;
    if (last > this.appliedIndex) this.appliedIndex = last;
    if (r.state?.catchUp) this.catchUpDurable = true;
    const mark = r.persistMark;
    if (mark.gen === this.gen) {
      if (mark.last > this.persistedLast) this.persistedLast = Math.min(mark.last, this.lastIndex());
      if (this.role === 'coordinator') this.advanceCommit();
    }
    this.checkCatchUp();
  }

  /**
   * A checkpoint holding the state up to `index` is durable. Entries more than retainEntries
   * below it, or beyond retainBytes, leave memory; returns the first index still needed (the
   * driver may delete log segments wholly below it).
   */
  checkpointed(index: number): number {
    assert(index <= this.appliedIndex && index >= this.checkpointAt, `checkpoint at ${index} outside ${this.checkpointAt}..${this.appliedIndex}`);
    this.checkpointAt = index;
    const keepFrom = Math.max(index - this.retainEntries, this.retainBytes === Number.MAX_SAFE_INTEGER ? 0 : this.log.bytesFloor(index, this.retainBytes, index - this.retainEntries));
    if (keepFrom > 0) this.compact(keepFrom);
    return this.firstIndex();
  }

  private send(to: number, body: Body, epoch = this.role === 'candidate' ? this.promised : this.epoch): void {
    const m = { from: this.id, to, epoch, clock: this.clock, cid: this.cid, ...body } as Msg;
    // See Ready.sendNow: a coordinator's appends need not wait for its own fsync.
    if (m.t === 'append' && this.role === 'coordinator') this.out.sendNow.push(m);
    else this.out.send.push(m);
  }

  private persistPromise(epoch: number): void {
    assert(epoch > this.promised, 'promises only increase');
    this.promised = epoch;
    this.epochSeen = Math.max(this.epochSeen, epoch);
    this.persistState();
  }

  private appendLocal(entries: Entry[]): void {
    for (const e of entries) {
      this.log.append(e);
      this.out.append.push(e);
      if (e.ts > this.clock) this.clock = e.ts;
      if (e.kind === 'config') this.setConfig({ voters: e.voters, keepOut: e.keepOut ?? [] });
    }
  }

  private setConfig(c: { voters: number[]; keepOut: number[] }): void {
    const next = [...c.voters].sort((a, b) => a - b);
    const keepOut = [...c.keepOut].sort((a, b) => a - b);
    if (next.join(',') === this.voters.join(',') && keepOut.join(',') === this.keepOut.join(',')) return;
    this.voters = next;
    this.keepOut = keepOut;
    for (const v of next) if (v !== this.id && !this.peers.has(v)) this.peers.set(v, { id: v, lastHeard: this.now });
    this.out.notices.push({ type: 'config', voters: next, ...(keepOut.length > 0 ? { keepOut } : {}) });
  }

  private truncateLocal(from: number): void {
    assert(from > this.commit, `truncating committed entry ${from} (commit ${this.commit})`);
    if (from > this.lastIndex()) return;
    this.log.truncateFrom(from);
    this.gen++;
    this.persistedLast = Math.min(this.persistedLast, from - 1);
    this.matched = Math.min(this.matched, from - 1);
    // Entries queued for append at or beyond `from` are dropped too, and so are acks of them
    // not sent yet (to an older coordinator): they would claim entries the disk will not hold.
    this.out.append = this.out.append.filter((e) => e.index < from);
    this.out.send = this.out.send.filter((m) => m.t !== 'ack' || m.match < from);
    this.out.truncateFrom = this.out.truncateFrom === null ? from : Math.min(this.out.truncateFrom, from);
    if (this.broadcastUpTo >= from) this.broadcastUpTo = from - 1;
    // A configuration entry may have gone with the suffix.
    this.setConfig(this.log.configAt(this.lastIndex()));
  }

  // ---- inputs ----

  /** One tick of time. */
  tick(): void {
    this.now++;
    this.updateLiveness();
    if (this.now % PING_INTERVAL_TICKS === 0) this.sendPing();
    switch (this.role) {
      case 'coordinator':
        this.tickCoordinator();
        break;
      default:
        this.tickFollower();
    }
    // A round that timed out fails its reads; its token checks wait for one that succeeds
    // (or for a step-down, which hands them on).
    const failed = this.rounds.expire(this.now);
    if (failed) {
      this.out.readsFailed.push(...failed);
      this.startReadRound();
    }
    this.flushTokenQueries();
  }

  private updateLiveness(): void {
    for (const p of this.peers.values()) {
      const dead = this.liveness(p.id) === 'dead';
      if (dead && !this.peerDead.has(p.id)) {
        this.peerDead.add(p.id);
        if (p.ping) this.out.notices.push({ type: 'down', id: p.id });
      }
    }
  }

  private sendPing(): void {
    this.send(BROADCAST, {
      t: 'ping',
      // A follower outside the voter set is a learner: it replicates but neither elects nor votes.
      role: this.shownRole(),
      coordinator: this.coordinator,
      last: this.lastIndex(),
      lastEpoch: this.lastEpoch(),
      commit: this.commit,
      commitTs: this.commitTs,
      matched: this.matched,
      applied: this.applied,
      checkpoint: this.checkpointIndex,
      voters: this.voters,
      uptimeTicks: this.now - this.startTick,
      ...this.configPosition(),
    });
  }

  private configPosition(): { cfgIndex: number; cfgEpoch: number } {
    const c = this.log.configPosition();
    return { cfgIndex: c.index, cfgEpoch: c.epoch };
  }

  /** Our log's end and newest configuration entry, as a claim states them. */
  private logPosition(): LogPosition {
    return { last: this.lastIndex(), lastEpoch: this.lastEpoch(), ...this.configPosition() };
  }

  private tickCoordinator(): void {
    // A coordinator that cannot hear a majority steps down, so a minority side stops taking writes.
    let heard = 1;
    for (const v of this.voters) if (v !== this.id && this.liveness(v) !== 'dead') heard++;
    if (heard < this.majority()) {
      this.stepDown('lost contact with a majority of voters');
      return;
    }
    if (this.now % PING_INTERVAL_TICKS === 0) this.manageMembers();
    if (this.now % PING_INTERVAL_TICKS === 0 && this.broadcastUpTo >= this.lastIndex()) {
      // Heartbeat append: tells followers the commit index and lets them find gaps.
      this.send(BROADCAST, {
        t: 'append',
        prevIndex: this.lastIndex(),
        prevEpoch: this.lastEpoch(),
        entries: [],
        commit: this.commit,
        commitTs: this.commitTs,
      });
    }
  }

  private tickFollower(): void {
    const ph = this.phase;
    if (ph.p === 'idle') {
      if (!this.isVoter(this.id)) return;
      if (!this.canLead()) return;
      const coordDead = !this.coordinatorAlive();
      // At start, give peers time to be heard before electing (unless alone).
      const settled = this.now > DEAD_AFTER_TICKS || this.voters.length === 1;
      if (coordDead && settled) this.startElection();
      else if (!coordDead && this.coordinator !== null && this.id > this.coordinator && this.caughtUp()) this.startElection();
      return;
    }
    if (this.now < ph.until) return;
    switch (ph.p) {
      case 'electing':
        this.claim();
        break;
      case 'waiting':
        this.phase = { p: 'idle' };
        if (!this.coordinatorAlive() && this.canLead()) this.startElection();
        break;
      case 'claiming': {
        // A voter with a better log promised, but too few did for us: let it (a lower id) try,
        // since it may win where we cannot (voters without data vote only for a log like theirs).
        let better: { last: number; lastEpoch: number } | null = null;
        for (const [id, p] of ph.promises) if (id !== this.id && newer(p, better ?? { last: this.lastIndex(), lastEpoch: this.lastEpoch() })) better = p;
        if (better !== null) {
          this.cannotLeadBelow = better.last;
          this.cannotLeadUntil = this.now + STAND_BACK_TICKS;
        }
        this.abandonClaim('timed out');
        break;
      }
      case 'fetching':
        if (ph.checkpoint) {
          // Claiming again would wait for the same transfer (which goes on and installs):
          // stand back meanwhile, as when the target cannot send a checkpoint at all.
          this.cannotLeadBelow = ph.targetCommit;
          this.cannotLeadUntil = this.now + STAND_BACK_TICKS;
          this.abandonClaim(`server ${ph.target}'s checkpoint did not arrive in time`);
        } else this.abandonClaim('timed out');
        break;
    }
  }

  /**
   * Our coordinator is alive while we hear it acting as coordinator of our epoch. Any message
   * is not enough: a coordinator that stepped down keeps pinging as a follower, and a follower
   * that kept treating it as alive would never elect (nor let lower ids elect: it answers alive).
   */
  /** We lead, or hear a coordinator of our epoch lately (for readiness checks). */
  hasLiveCoordinator(): boolean {
    return this.coordinatorAlive();
  }

  private coordinatorAlive(): boolean {
    return this.coordinator !== null && (this.coordinator === this.id || this.now - this.coordHeard <= DEAD_AFTER_TICKS);
  }

  /** See cannotLeadBelow. */
  private canLead(): boolean {
    return this.commit >= this.cannotLeadBelow || this.now >= this.cannotLeadUntil;
  }

  /** Caught up enough to bully a live lower-id coordinator. */
  private caughtUp(): boolean {
    if (this.now - this.startTick < TAKEOVER_UPTIME_TICKS) return false;
    const c = this.coordinator === null ? undefined : this.peers.get(this.coordinator)?.ping;
    if (!c || c.epoch !== this.epoch) return false;
    return this.matched >= c.commit && this.commit >= c.commit;
  }

  private startElection(): void {
    // Only voters elect (a learner that promised a claimant gets here when its wait ends),
    // and not while catching up or before a new cluster can form.
    if (!this.isVoter(this.id) || !this.mayVote(this.logPosition())) {
      this.phase = { p: 'idle' };
      return;
    }
    const higher = this.voters.filter((v) => v > this.id && this.liveness(v) !== 'dead');
    this.out.notices.push({ type: 'election', epoch: this.epochSeen, phase: 'start' });
    if (higher.length === 0) {
      this.claim();
      return;
    }
    this.send(BROADCAST, { t: 'election' });
    this.phase = { p: 'electing', until: this.now + ALIVE_WAIT_TICKS };
  }

  private claim(): void {
    if (!this.isVoter(this.id) || !this.mayVote(this.logPosition())) {
      this.phase = { p: 'idle' };
      return;
    }
    const epoch = Math.max(this.promised, this.epochSeen) + 1;
    if (this.role === 'coordinator') this.stepDown('claiming a new epoch');
    this.persistPromise(epoch);
    this.role = 'candidate';
    this.coordinator = null;
    const promises = new Map([[this.id, { last: this.lastIndex(), lastEpoch: this.lastEpoch(), commit: this.commit }]]);
    this.phase = { p: 'claiming', epoch, until: this.now + CLAIM_WAIT_TICKS, promises };
    this.out.notices.push({ type: 'election', epoch, phase: 'claim' });
    this.send(BROADCAST, { t: 'claim', ...this.logPosition() });
    this.checkPromises();
  }

  private abandonClaim(reason: string): void {
    this.out.notices.push({ type: 'election', epoch: this.promised, phase: `abandon: ${reason}` });
    this.role = 'follower';
    this.phase = { p: 'idle' };
  }

  /** A client write at the coordinator: placed in the log (committed later), or refused. */
  propose(ops: WriteOp[], rid?: string): Proposal {
    if (this.role !== 'coordinator') return NOT_COORDINATOR;
    const e: Entry = {
      index: this.lastIndex() + 1,
      epoch: this.epoch,
      ts: this.clock + 1,
      kind: 'write',
      ...(rid !== undefined ? { rid } : {}),
      ops,
    };
    // Measured on the entry itself: its text is kept, and the log and the append reuse it.
    const bytes = entryBytes(e);
    if (bytes > ENTRY_BYTES_MAX) return { ok: false, code: 'TOO_LARGE', message: `write is ${bytes} bytes encoded, more than ENTRY_BYTES_MAX (${ENTRY_BYTES_MAX})` };
    this.clock = e.ts;
    this.appendLocal([e]);
    return { ok: true, index: e.index, epoch: e.epoch, ts: e.ts };
  }

  /**
   * An operator's membership request: add a server to the voters, or remove one. Idempotent:
   * null when the configuration already is so (a script may retry). Removing a server that is
   * not a voter still records that it stays out (a configuration entry), once.
   */
  changeMembers(req: { add: number } | { remove: number }): Proposal | null {
    if (this.role !== 'coordinator') return NOT_COORDINATOR;
    const target = 'add' in req ? req.add : req.remove;
    if (this.voters.includes(target) !== ('add' in req)) {
      return 'add' in req ? this.proposeConfig([...this.voters, req.add]) : this.proposeConfig(this.voters.filter((v) => v !== req.remove));
    }
    // Already so: answered once the change that made it so is committed.
    if (this.configPending()) return retry('a configuration change is in progress; retry');
    return 'add' in req ? null : this.proposeKeepOut(req.remove);
  }

  /**
   * Propose a new voter set differing from the current one by exactly one server.
   * One change at a time: refused while an earlier change is not committed, or before our
   * own epoch's no-op is (until then the current configuration may not be final).
   * `by`: an operator's removal sticks (the server is not added back automatically).
   */
  proposeConfig(voters: number[], by: 'operator' | 'auto' = 'operator'): Proposal {
    if (this.role !== 'coordinator') return NOT_COORDINATOR;
    if (this.commit < this.epochStart) return retry('the coordinator is not settled yet; retry');
    if (this.configPending()) return retry('a configuration change is in progress; retry');
    const next = [...new Set(voters)].sort((a, b) => a - b);
    const added = next.filter((v) => !this.voters.includes(v));
    const removed = this.voters.filter((v) => !next.includes(v));
    if (added.length + removed.length !== 1) return refuse('a configuration change adds or removes exactly one voter');
    if (removed[0] === this.id) return refuse('the coordinator cannot remove itself; stop it first');
    // A voter that cannot vote yet would only make the majority harder to reach.
    if (added.length === 1 && !this.caughtUpLearner(added[0]!)) return retry(`server ${added[0]} is not a live, caught-up learner yet; retry`);
    if (next.length === 0) return refuse('the voter set cannot be empty');
    // An operator's removal is remembered in the configuration; an addition lifts it.
    const keepOut = this.keepOut.filter((v) => !added.includes(v));
    if (removed.length === 1 && by === 'operator' && !keepOut.includes(removed[0]!)) keepOut.push(removed[0]!);
    return this.appendConfig(next, keepOut);
  }

  private appendConfig(voters: number[], keepOut: number[]): Proposal {
    // Bounded: past KEEP_OUT_MAX the lowest ids (the oldest servers, as a rule) are forgotten.
    const sorted = [...keepOut].sort((a, b) => a - b).slice(-KEEP_OUT_MAX);
    const e: Entry = { index: this.lastIndex() + 1, epoch: this.epoch, ts: ++this.clock, kind: 'config', voters, ...(sorted.length > 0 ? { keepOut: sorted } : {}) };
    this.appendLocal([e]);
    return { ok: true, index: e.index, epoch: e.epoch, ts: e.ts };
  }

  /** Make room in a full ping table: forget the longest-silent dead non-voter, if any. */
  private forgetDeadLearner(): boolean {
    let oldest: PeerInfo | undefined;
    for (const p of this.peers.values()) {
      if (this.isVoter(p.id) || this.liveness(p.id) !== 'dead') continue;
      if (!oldest || p.lastHeard < oldest.lastHeard) oldest = p;
    }
    if (!oldest) return false;
    this.peers.delete(oldest.id);
    this.peerDead.delete(oldest.id);
    this.match.delete(oldest.id);
    this.resentAt.delete(oldest.id);
    this.streaming.delete(oldest.id);
    return true;
  }

  private caughtUpLearner(id: number): boolean {
    const p = this.peers.get(id);
    return p !== undefined && p.ping?.role !== 'catchup' && this.liveness(id) === 'alive' && (this.match.get(id) ?? 0) >= this.commit;
  }

  /**
   * An operator removes a server that is not a voter (any more): keep it out for good. A
   * configuration entry (same voters) when that is news; null when nothing is to change.
   */
  private proposeKeepOut(id: number): Proposal | null {
    if (this.voters.includes(id)) return refuse(`server ${id} is a voter`);
    if (this.keepOut.includes(id)) return null;
    if (this.commit < this.epochStart) return retry('the coordinator is not settled yet; retry');
    if (this.configPending()) return retry('a configuration change is in progress; retry');
    return this.appendConfig(this.voters, [...this.keepOut, id]);
  }

  /** A configuration entry above the commit index. */
  configPending(): boolean {
    return this.log.configAbove(this.commit);
  }

  /**
   * Membership on the coordinator: a caught-up learner becomes a voter; a voter dead for
   * removeDeadAfterTicks is removed if the live voters still form a majority of the old set.
   */
  private manageMembers(): void {
    if (this.commit < this.epochStart || this.configPending()) return;
    for (const p of this.peers.values()) {
      if (this.voters.includes(p.id) || this.keepOut.includes(p.id) || p.ping?.role !== 'learner') continue;
      if (this.caughtUpLearner(p.id)) {
        this.proposeConfig([...this.voters, p.id], 'auto');
        return;
      }
    }
    if (this.removeDeadAfterTicks <= 0 || this.voters.length <= AUTO_REMOVE_VOTERS_MIN) return;
    const alive = this.voters.filter((v) => this.liveness(v) !== 'dead');
    for (const v of this.voters) {
      const p = this.peers.get(v);
      if (v === this.id || !p || this.now - p.lastHeard < this.removeDeadAfterTicks) continue;
      if (alive.length >= this.majority()) {
        this.proposeConfig(this.voters.filter((x) => x !== v), 'auto');
        return;
      }
    }
  }

  /** A strong read: answered in a later Ready (reads or readsFailed) with the index to wait for. */
  readIndex(id: number): boolean {
    if (this.role !== 'coordinator') return false;
    this.rounds.addRead(id);
    this.startReadRound();
    return true;
  }

  private startReadRound(): void {
    // Our no-op must be committed, or commit may lag what earlier coordinators committed.
    if (this.commit < this.epochStart) return;
    const round = this.rounds.start(this.id, this.commit, this.now + CONFIRM_WAIT_TICKS);
    if (!round) return;
    const done = this.rounds.finishIfDone(this.majority());
    if (done) this.finishReadRound(done);
    else this.send(BROADCAST, { t: 'confirm', seq: round.seq });
  }

  private finishReadRound(r: Round): void {
    for (const id of r.ids) this.out.reads.push({ id, index: r.index });
    // We led when the majority confirmed, after these questions were asked: every write
    // committed before them is at or below our commit.
    for (const q of r.tokens) this.out.tokens.push({ id: q.id, ahead: q.after > this.commitTs });
    for (const q of r.tsqs) this.send(q.to, { t: 'tsr', seq: q.seq, commitTs: this.commitTs });
    this.startReadRound();
  }

  /**
   * A request carries `after` beyond what this server has applied and heard committed:
   * find out whether such a write exists (answer in Ready.tokens), or keep waiting.
   */
  checkToken(id: number, after: number): void {
    if (after <= this.knownCommitTs || (this.role === 'coordinator' && this.commit >= this.epochStart && after <= this.commitTs)) {
      this.out.tokens.push({ id, ahead: false });
      return;
    }
    if (this.role === 'coordinator') {
      // Maybe ahead: say so only once a majority confirms we still lead (we may have been deposed).
      this.rounds.addToken({ id, after });
      this.startReadRound();
      return;
    }
    this.queries.add({ id, after });
    this.flushTokenQueries();
  }

  private flushTokenQueries(): void {
    if (this.coordinator === null || this.coordinator === this.id || this.liveness(this.coordinator) === 'dead') return;
    const seq = this.queries.ask();
    if (seq !== null) this.send(this.coordinator, { t: 'tsq', seq });
  }

  /** Forget in-memory entries up to index (they are in the checkpoint and past the retention margin). */
  private compact(index: number): void {
    const upTo = Math.min(index, this.commit, this.appliedIndex, this.checkpointAt);
    this.log.compact(upTo);
  }

  /**
   * A checkpoint at `base` was installed from a peer. If our log holds the checkpoint's last
   * entry (same index and epoch), the entries after it are kept: they may be committed and
   * counted on for a majority, so dropping them could lose a committed write. Otherwise the
   * whole log goes. Returns true when the log after `base` was kept (the driver then leaves
   * its log alone), false when it must discard its log entirely.
   */
  restore(base: { index: number; epoch: number; ts: number }, voters?: number[], keepOut?: number[], cluster?: string): boolean {
    assert(base.index >= this.commit, 'restore must not go back');
    if (cluster !== undefined && this.cid === '') this.cid = cluster;
    const keep = this.log.restore(base, { ...(voters !== undefined ? { voters } : {}), ...(keepOut !== undefined ? { keepOut } : {}) });
    if (keep) {
      this.persistedLast = Math.max(this.persistedLast, base.index);
      this.matched = Math.max(this.matched, base.index);
    } else {
      this.persistedLast = base.index;
      this.matched = base.index;
      // Nothing queued for the log survives: the driver discards its log.
      this.out.append = [];
      this.out.truncateFrom = null;
      this.broadcastUpTo = Math.min(this.broadcastUpTo, base.index);
      this.gen++;
    }
    this.commit = base.index;
    this.commitTs = base.ts;
    if (base.ts > this.knownCommitTs) this.knownCommitTs = base.ts;
    this.appliedIndex = base.index;
    this.handedOut = base.index;
    this.checkpointAt = base.index;
    if (base.ts > this.clock) this.clock = base.ts;
    this.setConfig(this.log.configAt(this.lastIndex()));
    const ph = this.phase;
    if (ph.p === 'fetching' && ph.checkpoint) {
      // Our claim waited for this: fetch the rest of the target's log.
      ph.checkpoint = false;
      ph.start = this.commit + 1;
      ph.until = this.now + CLAIM_WAIT_TICKS;
      this.send(ph.target, { t: 'fetch', start: ph.start });
    }
    return keep;
  }

  receive(m: Msg): void {
    if (m.from === this.id) return;
    if (m.to !== BROADCAST && m.to !== this.id) return;
    // No message moves our epoch or clock by more than a bounded step: one forged or corrupt
    // message cannot push them to where the protocol cannot move past. (The transport has
    // checked that the message's entries and commitTs are within its own clock and epoch.)
    if (m.epoch > Math.max(this.promised, this.epochSeen, this.epoch) + EPOCH_STEP_MAX || m.clock > Math.max(this.clock, this.knownCommitTs) + CLOCK_STEP_MAX) {
      this.droppedOutOfRange++;
      return;
    }
    // Another cluster's traffic (the same name and key, another identity) is refused.
    if (m.cid !== '' && this.cid !== '' && m.cid !== this.cid) {
      this.droppedForeign++;
      if (!this.foreignTold.has(m.cid) && this.foreignTold.size < PEERS_MAX) {
        this.foreignTold.add(m.cid);
        this.out.notices.push({ type: 'foreign', from: m.from, cid: m.cid });
      }
      return;
    }
    if (m.clock > this.clock) this.clock = m.clock;
    if (m.epoch > this.epochSeen) this.epochSeen = m.epoch;
    const peer = this.peers.get(m.from);
    if (peer) {
      peer.lastHeard = this.now;
      if (this.peerDead.delete(m.from) && peer.ping) this.out.notices.push({ type: 'up', id: m.from });
    } else if (m.t === 'ping' && (this.peers.size < PEERS_MAX || this.forgetDeadLearner())) {
      // A server outside the voter set (a learner) becomes known by its heartbeat; the table is bounded.
      this.peers.set(m.from, { id: m.from, lastHeard: this.now });
    }
    switch (m.t) {
      case 'ping':
        return this.onPing(m);
      case 'append':
        return this.onAppend(m);
      case 'ack':
        return this.onAck(m);
      case 'nack':
        return this.onNack(m);
      case 'election':
        return this.onElection(m);
      case 'alive':
        if (this.phase.p === 'electing') this.phase = { p: 'waiting', until: this.now + ANNOUNCE_WAIT_TICKS };
        return;
      case 'claim':
        return this.onClaim(m);
      case 'promise':
        return this.onPromise(m);
      case 'fetch':
        return this.onFetch(m);
      case 'fetched':
        return this.onFetched(m);
      case 'confirm':
        if (m.epoch === this.promised && this.role !== 'coordinator' && this.coordinator === m.from && !this.withoutData()) {
          this.send(m.from, { t: 'confirmed', seq: m.seq });
        }
        return;
      case 'confirmed':
        // Only voters count toward the majority that confirms we still lead.
        if (this.role === 'coordinator' && m.epoch === this.epoch && this.isVoter(m.from)) {
          const done = this.rounds.confirmed(m.seq, m.from, this.majority());
          if (done) this.finishReadRound(done);
        }
        return;
      case 'tsq':
        // Answered once a confirmation round shows we still lead (see finishReadRound).
        if (this.role === 'coordinator') {
          this.rounds.addTsq(m.from, m.seq);
          this.startReadRound();
        }
        return;
      case 'tsr':
        return this.onTsr(m);
    }
  }

  /**
   * A follower's log is shorter than what it acknowledged: it lost data (an empty directory, a
   * repair). Its acknowledgements no longer count: it must acknowledge again.
   */
  private forgetLost(from: number, last: number): void {
    const had = this.match.get(from);
    if (had !== undefined && last < had) {
      this.match.set(from, last);
      this.streaming.delete(from);
    }
  }

  private onPing(m: Extract<Msg, { t: 'ping' }>): void {
    const peer = this.peers.get(m.from);
    if (!peer) return;
    peer.ping = m;
    if (this.role === 'coordinator') this.forgetLost(m.from, m.last);
    if (this.catchUp) this.checkCatchUp();
    if (m.role === 'coordinator') {
      if (m.epoch > this.epoch && m.epoch >= this.promised) {
        // A coordinator of a newer epoch: follow it (its appends will bring our log).
        this.follow(m.from, m.epoch);
      }
      if (m.epoch === this.epoch && m.from === this.coordinator) {
        this.coordHeard = this.now;
        if (m.commitTs > this.knownCommitTs) this.knownCommitTs = m.commitTs;
        this.learnCommit(m.commit, m.commitTs);
        // A gap (lost append): ask for what we lack.
        if (!this.holding && m.last > this.matched && this.now - this.lastAppendTick > RESEND_GAP_TICKS) this.sendNack();
      }
    } else if (this.role === 'coordinator' && m.epoch === this.epoch && (m.role === 'follower' || m.role === 'learner') && m.coordinator === this.id) {
      // A lost ack is recovered from the follower's heartbeat. Only a follower of ours: a
      // candidate's ping carries its claimed epoch, which may equal ours (it had not heard
      // of us), with `matched` measured against another coordinator's log.
      const matched = m.matched > (this.match.get(m.from) ?? 0) && m.matched <= this.lastIndex();
      if (matched) this.match.set(m.from, m.matched);
      if (m.commit > this.peersCommit) this.peersCommit = m.commit;
      if (matched || m.commit > this.commit) this.advanceCommit();
    }
  }

  private follow(coordinator: number, epoch: number): void {
    if (epoch > this.promised) this.persistPromise(epoch);
    if (this.role === 'coordinator' && coordinator !== this.id) this.stepDown(`coordinator ${coordinator} leads epoch ${epoch}`);
    const changed = this.coordinator !== coordinator || this.epoch !== epoch;
    this.role = 'follower';
    this.coordinator = coordinator;
    this.coordHeard = this.now;
    if (epoch !== this.epoch) this.matched = this.commit;
    this.epoch = epoch;
    this.phase = { p: 'idle' };
    if (changed) this.out.notices.push({ type: 'coordinator', id: coordinator, epoch });
  }

  private learnCommit(commit: number, commitTs: number): void {
    const c = Math.min(commit, this.matched);
    if (c > this.commit) {
      this.commit = c;
      this.commitTs = c === commit ? commitTs : this.log.tsAt(c);
      this.learnIdentity();
    }
    this.answerTokens();
  }

  /**
   * While on, a follower takes no entries beyond those it holds, and asks for none (no nack):
   * set by the replica while its checkpoint is too far behind (DIRTY_RECORDS_MAX), so that a
   * follower's memory, too, follows the writes not yet checkpointed. To the coordinator it is a
   * follower that lags: it acks nothing new, and is sent the rest once it nacks again. Like a
   * lost message, it can delay commits but never changes what is committed.
   */
  holdAppends(on: boolean): void {
    this.holding = on;
  }

  /** Whether holdAppends is on. */
  get holdingAppends(): boolean {
    return this.holding;
  }

  private onAppend(m: Extract<Msg, { t: 'append' }>): void {
    // Entering catch-up must be durable before our log holds anything again (else a restart
    // would find a partial log and no flag, and vote with it).
    if (this.catchUp && !this.catchUpDurable) return;
    // An empty server's first entries: it may have been a voter that lost what it acknowledged.
    if (this.isEmpty() && !this.catchUp && m.epoch >= this.promised) {
      this.enterCatchUp();
      return;
    }
    if (m.epoch < this.promised) {
      // A coordinator of an old epoch: tell it (our nack carries the newer epoch).
      this.send(m.from, { t: 'nack', last: this.lastIndex(), commit: this.commit }, this.promised);
      return;
    }
    if (this.role === 'coordinator' && m.epoch === this.epoch) return; // cannot happen: one claimant per epoch
    if (m.epoch !== this.epoch || this.coordinator !== m.from || this.role !== 'follower') this.follow(m.from, m.epoch);
    this.lastAppendTick = this.now;
    this.coordHeard = this.now;
    if (m.commitTs > this.knownCommitTs) this.knownCommitTs = m.commitTs;
    let prev = m.prevIndex;
    let entries = m.entries;
    // Entries at or below our commit are committed, hence identical: skip them.
    if (prev < this.commit) {
      const skip = Math.min(entries.length, this.commit - prev);
      entries = entries.slice(skip);
      prev += skip;
      if (prev < this.commit) {
        // The whole message lies below our commit: nothing to do but learn.
        this.learnCommit(m.commit, m.commitTs);
        return;
      }
    }
    const prevEpoch = prev === m.prevIndex ? m.prevEpoch : m.entries[prev - m.prevIndex - 1]!.epoch;
    const have = this.epochAt(prev);
    if (have === undefined || have !== prevEpoch) {
      if (!this.holding && (this.now - this.nackAt >= RESEND_GAP_TICKS || entries.length === 0)) this.sendNack();
      return;
    }
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      const mine = this.epochAt(e.index);
      if (mine === e.epoch) continue;
      // Holding: only what we already hold counts (as if the rest were lost on the way).
      if (this.holding) {
        entries = entries.slice(0, i);
        break;
      }
      if (mine !== undefined) this.truncateLocal(e.index);
      this.appendLocal(entries.slice(i));
      break;
    }
    const covered = prev + entries.length;
    if (covered > this.matched) this.matched = covered;
    if (entries.length > 0) this.send(m.from, { t: 'ack', match: this.matched });
    this.learnCommit(m.commit, m.commitTs);
  }

  private sendNack(): void {
    if (this.coordinator === null) return;
    this.nackAt = this.now;
    this.send(this.coordinator, { t: 'nack', last: this.lastIndex(), commit: this.commit });
  }

  private onAck(m: Extract<Msg, { t: 'ack' }>): void {
    if (this.role !== 'coordinator' || m.epoch !== this.epoch) return;
    // An ack beyond our log cannot come from a follower of ours in this epoch: ignore it.
    if (m.match > (this.match.get(m.from) ?? 0) && m.match <= this.lastIndex()) {
      this.match.set(m.from, m.match);
      this.advanceCommit();
      // A follower being caught up acked the last slice: send the next one now.
      const sent = this.streaming.get(m.from);
      if (sent !== undefined && m.match >= sent) this.sendFrom(m.from, m.match);
    }
  }

  private onNack(m: Extract<Msg, { t: 'nack' }>): void {
    if (m.epoch > this.epoch && this.role === 'coordinator') {
      this.stepDown(`server ${m.from} promised epoch ${m.epoch}`);
      return;
    }
    if (this.role !== 'coordinator' || m.epoch !== this.epoch) return;
    this.forgetLost(m.from, m.last);
    const at = this.resentAt.get(m.from);
    if (at !== undefined && this.now - at < RESEND_GAP_TICKS) return;
    this.resentAt.set(m.from, this.now);
    // From what the follower is known to hold of our log (its acks this epoch), else from its
    // commit: resending from its commit each time would never get a follower further behind
    // than one message's worth of entries past its commit.
    const held = Math.min(this.match.get(m.from) ?? 0, m.last);
    this.sendFrom(m.from, Math.max(Math.min(m.commit, this.lastIndex()), held));
  }

  /** Unicast entries after `prev` to one follower (catch-up), or ask for a snapshot. */
  private sendFrom(to: number, prev: number): void {
    if (prev < this.log.offset) {
      this.out.needSnapshot.push(to);
      return;
    }
    const entries = this.slice(prev + 1, this.lastIndex());
    this.send(to, { t: 'append', prevIndex: prev, prevEpoch: this.epochAt(prev)!, entries, commit: this.commit, commitTs: this.commitTs });
    if (prev + entries.length < this.broadcastUpTo) this.streaming.set(to, prev + entries.length);
    else this.streaming.delete(to);
  }

  /** Entries from..to for one replication message. */
  private slice(from: number, to: number): Entry[] {
    return this.log.slice(from, to, this.replEntriesMax);
  }

  private flushAppends(): boolean {
    const before = this.broadcastUpTo;
    while (this.broadcastUpTo < this.lastIndex()) {
      const prev = this.broadcastUpTo;
      const entries = this.slice(prev + 1, this.lastIndex());
      this.send(BROADCAST, { t: 'append', prevIndex: prev, prevEpoch: this.epochAt(prev)!, entries, commit: this.commit, commitTs: this.commitTs });
      this.broadcastUpTo = prev + entries.length;
    }
    return this.broadcastUpTo > before;
  }

  /** True when ready() would return something to carry out. */
  hasOutput(): boolean {
    const o = this.out;
    return (
      this.commit > this.handedOut ||
      o.sendNow.length > 0 ||
      o.send.length > 0 || o.append.length > 0 || o.truncateFrom !== null || o.state !== null || o.reads.length > 0 ||
      o.readsFailed.length > 0 || o.tokens.length > 0 || o.needSnapshot.length > 0 || o.lostLeadership || o.notices.length > 0 ||
      this.commitToSend || (this.role === 'coordinator' && this.broadcastUpTo < this.lastIndex())
    );
  }

  /** The highest index held by a majority of `voters`. */
  private majorityMatch(voters: readonly number[]): number {
    const idx = voters.map((v) => (v === this.id ? this.persistedLast : (this.match.get(v) ?? 0))).sort((a, b) => b - a);
    return idx[Math.floor(voters.length / 2)]!;
  }

  private advanceCommit(): void {
    // While a configuration change is not committed, an entry commits only once a majority of
    // the configuration before it holds it too: the servers that know only the old one must
    // find every committed entry among themselves, even after a voter both count lost its disk
    // (a new voter may not yet hold the change that makes it one, and nobody would know to ask
    // it). Only the newest change can be uncommitted: a coordinator proposes one only once the
    // one before is committed. (So after a restart, whose commit is only the checkpoint's,
    // older changes in the log do not hold writes back.)
    //
    // What another server holds committed is committed: an elected coordinator's log holds
    // every committed entry, so those entries are ours too. (A restarted coordinator knows only
    // its checkpoint committed: without this, a configuration change that was committed would
    // look pending, and wait on old voters that may be gone for good.) Only what is durable
    // here: a coordinator's commit never passes its own log on disk.
    const known = Math.min(this.peersCommit, this.persistedLast);
    let n = this.majorityMatch(this.voters);
    // (configAbove scans only the uncommitted tail: this runs on every ack.)
    if (this.log.configAbove(Math.max(this.commit, known))) n = Math.min(n, this.majorityMatch(this.log.configAt(this.log.configPosition().index - 1).voters));
    // Only entries of our own epoch are committed by counting (older ones ride along).
    if (this.epochAt(n) !== this.epoch) n = 0;
    n = Math.max(n, known);
    if (n > this.commit) {
      this.commit = n;
      this.commitTs = this.log.tsAt(n);
      this.knownCommitTs = Math.max(this.knownCommitTs, this.commitTs);
      this.learnIdentity();
      // Tell followers promptly, once per Ready (an append in it carries the commit too).
      this.commitToSend = true;
      this.startReadRound();
    }
  }

  private onElection(m: Extract<Msg, { t: 'election' }>): void {
    if (!this.isVoter(this.id) || m.from > this.id) return;
    // We could not win (or may not claim, being without data): let the lower ids elect.
    if (this.role !== 'coordinator' && (!this.canLead() || !this.mayVote(this.logPosition()))) return;
    this.send(m.from, { t: 'alive' });
    if (this.role === 'coordinator') {
      this.sendPing();
      return;
    }
    const coordAlive = this.coordinatorAlive();
    if (this.phase.p === 'idle' && (!coordAlive || (this.coordinator! < this.id && this.caughtUp()))) this.startElection();
  }

  private onClaim(m: Extract<Msg, { t: 'claim' }>): void {
    // Promise whether or not our own log names us a voter: a server added by a configuration
    // entry it has not received yet is a voter to the claimant, who counts only its voters.
    // (Refusing would leave a cluster whose new majority needs that server without a leader.)
    // But not while catching up, nor while empty before every voter is known to be empty too.
    if (!this.mayVote(m)) return;
    if (m.epoch <= this.promised) {
      this.send(m.from, { t: 'promise', ok: false, last: this.lastIndex(), lastEpoch: this.lastEpoch(), commit: this.commit }, this.promised);
      return;
    }
    if (this.role === 'coordinator') this.stepDown(`promised epoch ${m.epoch} to ${m.from}`);
    this.persistPromise(m.epoch);
    this.role = 'follower';
    this.coordinator = null;
    this.phase = { p: 'waiting', until: this.now + ANNOUNCE_WAIT_TICKS };
    this.send(m.from, { t: 'promise', ok: true, last: this.lastIndex(), lastEpoch: this.lastEpoch(), commit: this.commit }, m.epoch);
  }

  private onPromise(m: Extract<Msg, { t: 'promise' }>): void {
    const ph = this.phase;
    if (ph.p !== 'claiming') return;
    if (!m.ok) {
      if (m.epoch > ph.epoch) this.abandonClaim(`server ${m.from} promised epoch ${m.epoch}`);
      return;
    }
    if (m.epoch !== ph.epoch || !this.isVoter(m.from)) return;
    ph.promises.set(m.from, { last: m.last, lastEpoch: m.lastEpoch, commit: m.commit });
    this.checkPromises();
  }

  private checkPromises(): void {
    const ph = this.phase;
    if (ph.p !== 'claiming') return;
    let votes = 0;
    for (const id of ph.promises.keys()) if (this.isVoter(id)) votes++;
    if (votes < this.majority()) return;
    // The most up-to-date log among a majority holds every committed entry.
    let best = this.id;
    let b = ph.promises.get(this.id)!;
    for (const [id, p] of ph.promises) {
      if (p.lastEpoch > b.lastEpoch || (p.lastEpoch === b.lastEpoch && p.last > b.last)) {
        best = id;
        b = p;
      }
    }
    let known = 0;
    for (const p of ph.promises.values()) known = Math.max(known, p.commit);
    if (best === this.id) {
      this.becomeCoordinator(ph.epoch, known);
      return;
    }
    const start = this.commit + 1;
    this.phase = {
      p: 'fetching',
      epoch: ph.epoch,
      until: this.now + CLAIM_WAIT_TICKS,
      start,
      target: best,
      targetLast: b.last,
      targetCommit: b.commit,
      promisersCommit: known,
      promisers: [...ph.promises.keys()],
      checkpoint: false,
    };
    this.send(best, { t: 'fetch', start });
  }

  private onFetch(m: Extract<Msg, { t: 'fetch' }>): void {
    // Serve only the claimant we promised to (its epoch is our promise).
    if (m.epoch !== this.promised) return;
    const compacted = m.start <= this.log.offset;
    const entries = compacted ? [] : this.slice(m.start, this.lastIndex());
    this.send(m.from, { t: 'fetched', start: m.start, entries, last: this.lastIndex(), compacted }, this.promised);
    // What it lacks is in our checkpoint only: offer that (it holds committed entries only).
    if (compacted) this.out.needSnapshot.push(m.from);
  }

  /** The server whose checkpoint our claim waits for (the driver accepts its offer), if any. */
  claimCheckpointSource(): number | null {
    return this.phase.p === 'fetching' && this.phase.checkpoint ? this.phase.target : null;
  }

  private onFetched(m: Extract<Msg, { t: 'fetched' }>): void {
    const ph = this.phase;
    if (ph.p !== 'fetching' || m.epoch !== ph.epoch || m.start !== ph.start || m.from !== ph.target) return;
    if (m.compacted) {
      // The target offers its checkpoint (committed entries only, so ours to install whatever
      // becomes of this claim); once installed, restore() fetches on from after it. Waiting
      // matters when the target cannot lead itself (say a voter whose removal is pending): no
      // one else could bring us up to date.
      if (!ph.checkpoint) {
        ph.checkpoint = true;
        ph.until = this.now + CLAIM_CHECKPOINT_WAIT_TICKS;
      }
      return;
    }
    const fromIdx = m.start;
    // Everything from our commit on is replaced by the best log's entries.
    for (let i = 0; i < m.entries.length; i++) {
      const e = m.entries[i]!;
      const mine = this.epochAt(e.index);
      if (mine === e.epoch) continue;
      if (mine !== undefined) this.truncateLocal(e.index);
      this.appendLocal(m.entries.slice(i));
      break;
    }
    const got = fromIdx + m.entries.length - 1;
    if (got < ph.targetLast) {
      if (m.entries.length > 0) {
        ph.start = got + 1;
        ph.until = this.now + CLAIM_WAIT_TICKS;
        this.send(ph.target, { t: 'fetch', start: ph.start });
        return;
      }
      // The target no longer holds the log it promised with (it restarted from a repaired or
      // wiped disk): what we hold may lack committed entries, so we must not lead on it.
      // (Sim seed 1903095: a claimant led on 34 of 38 and replaced committed entry 35.)
      this.abandonClaim(`server ${ph.target} no longer holds entries ${got + 1}..${ph.targetLast} of the log it promised with`);
      return;
    }
    // Our own entries beyond the best log's end are from older epochs and never committed.
    if (this.lastIndex() > ph.targetLast) this.truncateLocal(ph.targetLast + 1);
    // The best log may hold newer configurations than the one we counted promises in (we were
    // behind; perhaps even removed). Lead only with promises from a majority of the voters of
    // the log we now hold: that configuration is then the newest committed one (or the one
    // pending after it), whose majorities meet every majority that committed an entry, so
    // the best log holds them all. Otherwise claim again, with this configuration.
    const promised = ph.promisers.filter((v) => this.isVoter(v)).length;
    if (!this.isVoter(this.id) || promised < this.majority()) {
      this.abandonClaim(`the configuration changed to [${this.voters.join(',')}]: promises from [${ph.promisers.join(',')}] are not a majority of it`);
      return;
    }
    this.becomeCoordinator(ph.epoch, ph.promisersCommit);
  }

  /** `peersCommit`: the highest commit among the promises (see advanceCommit). */
  private becomeCoordinator(epoch: number, peersCommit: number): void {
    assert(epoch === this.promised, 'a coordinator leads the epoch it was promised');
    assert(this.isVoter(this.id), 'a coordinator is a voter of its configuration');
    this.role = 'coordinator';
    this.coordinator = this.id;
    this.epoch = epoch;
    this.phase = { p: 'idle' };
    this.match = new Map();
    this.peersCommit = peersCommit;
    this.resentAt = new Map();
    this.streaming = new Map();
    this.broadcastUpTo = this.lastIndex();
    // The first coordinator of a new cluster names it: entry 1 carries the identity.
    const index = this.lastIndex() + 1;
    const named = index === 1 && this.newClusterId !== '' ? { cluster: this.newClusterId } : {};
    const noop: Entry = { index, epoch, ts: ++this.clock, kind: 'noop', ...named };
    this.epochStart = noop.index;
    this.appendLocal([noop]);
    // Followers may lack entries before the no-op: they nack and we resend from their commit.
    this.broadcastUpTo = noop.index - 1;
    this.out.notices.push({ type: 'coordinator', id: this.id, epoch });
    this.advanceCommit();
  }

  private stepDown(reason: string): void {
    if (this.role !== 'coordinator') return;
    this.role = 'follower';
    this.coordinator = null;
    this.out.lostLeadership = true;
    this.out.notices.push({ type: 'stepdown', epoch: this.epoch, reason });
    // Every strong read fails; our own token checks go to whoever leads next.
    const { failed, tokens } = this.rounds.stepDown();
    this.out.readsFailed.push(...failed);
    for (const q of tokens) this.queries.add(q);
    this.phase = { p: 'waiting', until: this.now + ANNOUNCE_WAIT_TICKS };
  }

  private onTsr(m: Extract<Msg, { t: 'tsr' }>): void {
    if (m.from !== this.coordinator) return;
    if (m.commitTs > this.knownCommitTs) this.knownCommitTs = m.commitTs;
    this.out.tokens.push(...this.queries.answered(m.seq, m.commitTs));
  }

  private answerTokens(): void {
    this.out.tokens.push(...this.queries.known(this.knownCommitTs));
  }

  /** Drop a token check (its request timed out). */
  cancelToken(id: number): void {
    this.queries.cancel(id);
    this.rounds.cancel(id);
  }
}

/** What a server without data hears of the voters' data: whether voting cannot lose a committed entry, and the best log. */
interface DataView {
  safe: boolean;
  best: { last: number; lastEpoch: number };
}

/** A log's end, and where its newest configuration entry is (0: below the log held). */
interface LogPosition {
  last: number;
  lastEpoch: number;
  cfgIndex?: number;
  cfgEpoch?: number;
}

/** Both logs hold the same newest configuration entry (so they agree up to it). */
function sameConfigEntry(a: LogPosition, b: LogPosition): boolean {
  return (a.cfgIndex ?? 0) > 0 && a.cfgIndex === b.cfgIndex && a.cfgEpoch === b.cfgEpoch;
}

/** p's log is more up to date than q's (higher last epoch, then higher index). */
function newer(p: { last: number; lastEpoch: number }, q: { last: number; lastEpoch: number }): boolean {
  return p.lastEpoch > q.lastEpoch || (p.lastEpoch === q.lastEpoch && p.last > q.last);
}
