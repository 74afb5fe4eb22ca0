// The deterministic simulation: a whole ckv cluster (the real protocol core,
// src/core/node.ts and src/core/state.ts, under a synchronous twin of the
// server's driver) in one process, over a seeded simulated network with delay,
// loss, duplication, reordering and partitions (symmetric and one-way), with
// crashes that lose what was not fsync'd, pauses, and client sessions. Time
// is simulated (milliseconds); every choice comes from one seed.
//
// After every event it checks: at most one coordinator per epoch (and so at
// most one committing in it); a committed entry never changes anywhere; every
// applied entry is the committed one with the model's result; timestamps
// strictly increase along the log; each node's log on disk mirrors its log in
// memory; a durable truncation never removes a committed entry; every reply
// agrees with the model (reads see exactly the committed state at their index,
// tokens are honoured, strong reads see every earlier acknowledged write, a
// write's reply is its rid's first result). After each crash: every committed
// entry is durable on a majority. At the end, after healing and quiet: every
// client request got its answer (liveness), all replicas hold the same log and
// state as the model, and the client histories are causally consistent (the
// bad patterns of Bouajjani et al.).

import { TICK_MS } from '../../src/core/limits.js';
import { BROADCAST, type Msg } from '../../src/core/messages.js';
import type { Notice, Ready } from '../../src/core/node.js';
import type { Applied } from '../../src/core/state.js';
import type { Entry } from '../../src/core/wire.js';
import { checkCausal } from './checker.js';
import { BOGUS_TS, Session, describeOp, historyOf, type ClientHost, type SessionOp } from './client.js';
import { SimDisk, byteOrder } from './disk.js';
import { Model, sameEntry, sameRec, sameResult, showEntry } from './model.js';
import { Rng } from './prng.js';
import { EventQueue } from './queue.js';
import { SimServer, deepFreeze, restartPlan, type ClientReply, type ClientRequest, type Host, type SnapshotMsg } from './server.js';

export interface SimOptions {
  seed: number;
  nodes: number;
  /** Simulated time with faults, then healed and quiet (ms). */
  chaosMs?: number;
  quietMs?: number;
  /** Lines of trace kept for a failure report. */
  traceSize?: number;
  /** Print every trace line as it happens. */
  verbose?: boolean;
  /** Treat a TOKEN_AHEAD answer to a token the cluster did issue as a failure (default: true). */
  strictTokens?: boolean;
  /** Stop with a failure after this many events (a runaway guard). */
  maxEvents?: number;
  /** Print to (defaults to console.log). */
  out?: (line: string) => void;
}

export interface SimStats {
  events: number;
  simMs: number;
  committed: number;
  epochs: number;
  crashes: number;
  writes: number;
  acked: number;
  ackedAfterHeal: number;
  reads: number;
  readsDone: number;
  historyOps: number;
  snapshots: number;
  spuriousTokenAhead: number;
  bogus: number;
  bogusRejected: number;
  messages: number;
  configs: number;
}

export interface SimResult {
  seed: number;
  nodes: number;
  ok: boolean;
  error?: string;
  /** The last events before the failure, oldest first. */
  trace?: string[];
  stats: SimStats;
  params: string;
}

export function replayCommand(seed: number, nodes: number): string {
  return `node dist/tools/sim-soak.js --seed ${seed} --nodes ${nodes}`;
}

export class SimFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SimFailure';
  }
}

function fail(msg: string): never {
  throw new SimFailure(msg);
}

type TraceItem = { t: number; n: number; x: string | (() => string) };

type FaultKind = 'partition' | 'oneway' | 'isolate' | 'heal' | 'crash' | 'crashAll' | 'pause' | 'loss' | 'dup' | 'slow' | 'join' | 'remove';

function pickWeighted<K extends string>(r: Rng, w: Record<K, number>): K {
  const keys = Object.keys(w) as K[];
  let total = 0;
  for (const k of keys) total += w[k];
  let x = r.float() * total;
  for (const k of keys) {
    x -= w[k];
    if (x < 0) return k;
  }
  return keys[keys.length - 1]!;
}

/** Per-seed fault and workload parameters. */
interface Params {
  sessions: number;
  mainKeys: number;
  lossMax: number;
  dupMax: number;
  slowMax: number;
  clientLoss: number;
  faultGapMs: [number, number];
  downMs: [number, number];
  crashAfterSync: number;
  crashAfterCheckpoint: number;
  slowDisk: boolean;
  /** How often each kind of fault is chosen (varies per seed, so some seeds concentrate on one kind). */
  faultWeights: Record<FaultKind, number>;
  /** Spread of the nodes' tick rates (clock drift), as a fraction. */
  drift: number;
  /** Membership changes: servers join (as learners, promoted when caught up) and are removed. */
  membership: boolean;
  /** Automatic removal of a voter dead this long (0: never). */
  removeDeadAfterTicks: number;
  retain: number;
  ckptEveryMs: [number, number];
}

export function runSeed(o: SimOptions): SimResult {
  const sim = new Sim(o);
  return sim.run();
}

class Sim implements Host {
  readonly o: Required<Omit<SimOptions, 'out'>> & { out: (line: string) => void };
  private q = new EventQueue();
  private t = 0;
  /** Every server started so far (joiners are added); retired ones never come back. */
  private ids: number[];
  private readonly initialVoters: number[];
  private retired = new Set<number>();
  /** Servers stopped for good, whose removal from the voters the operator keeps proposing until committed. */
  private toRemove = new Set<number>();
  /** Servers an operator asked to add (back): only these may leave a keepOut list. */
  private operatorAdds = new Set<number>();
  private servers = new Map<number, SimServer | null>();
  private disks = new Map<number, SimDisk>();
  private pausedUntil = new Map<number, number>();
  private drift = new Map<number, number>();
  private blocked = new Set<string>();
  private loss = 0;
  private dup = 0;
  private slow = 0;
  private healed = false;
  private issuing = true;
  private readonly endAt: number;
  private readonly healAt: number;
  private readonly stopAt: number;
  // Random streams, one per concern.
  private netRng: Rng;
  private faultRng: Rng;
  private diskRng: Rng;
  private timeRng: Rng;
  private clientRng: Rng;
  readonly p: Params;
  // Checking.
  private model: Model;
  private leaderOf = new Map<number, number>();
  private seenCommit = new Map<number, number>();
  private sessions: Session[] = [];
  private ackedMax = 0;
  private acked = new Set<string>();
  private ackedAfterHeal = 0;
  private stats: SimStats = {
    events: 0,
    simMs: 0,
    committed: 0,
    epochs: 0,
    crashes: 0,
    writes: 0,
    acked: 0,
    ackedAfterHeal: 0,
    reads: 0,
    readsDone: 0,
    historyOps: 0,
    snapshots: 0,
    spuriousTokenAhead: 0,
    bogus: 0,
    bogusRejected: 0,
    messages: 0,
    configs: 0,
  };
  private ring: TraceItem[] = [];
  private ringAt = 0;
  readonly mainKeys: string[];
  readonly noiseKeys = ['n.0', 'n.1', 'n.2'];

  constructor(o: SimOptions) {
    this.o = {
      chaosMs: 20_000,
      quietMs: 8_000,
      traceSize: 300,
      verbose: false,
      strictTokens: true,
      maxEvents: 5_000_000,
      out: (line: string) => console.log(line),
      ...o,
    } as Sim['o'];
    const root = new Rng(o.seed);
    this.netRng = root.fork();
    this.faultRng = root.fork();
    this.diskRng = root.fork();
    this.timeRng = root.fork();
    this.clientRng = root.fork();
    const pr = root.fork();
    this.p = {
      sessions: pr.chance(0.2) ? pr.range(7, 12) : pr.range(2, 6),
      mainKeys: pr.range(2, 6),
      lossMax: pr.pick([0, 0.02, 0.05, 0.1]),
      dupMax: pr.pick([0, 0.02, 0.05]),
      slowMax: pr.pick([0, 0.05, 0.2, 0.5]),
      clientLoss: pr.pick([0, 0, 0.01, 0.03]),
      faultGapMs: pr.pick([
        [100, 800],
        [300, 2000],
        [1000, 4000],
      ] as Array<[number, number]>),
      downMs: pr.pick([
        [20, 400],
        [200, 3000],
      ] as Array<[number, number]>),
      crashAfterSync: pr.pick([0, 0.001, 0.005]),
      crashAfterCheckpoint: pr.pick([0, 0.01, 0.05]),
      slowDisk: pr.chance(0.25),
      drift: pr.pick([0.02, 0.05, 0.3]),
      membership: false,
      removeDeadAfterTicks: 0,
      faultWeights: pr.chance(0.3)
        ? { partition: 14, oneway: 10, isolate: 6, heal: 16, crash: 16, crashAll: 3, pause: 8, loss: 10, dup: 7, slow: 10, join: 0, remove: 0 }
        : {
            partition: pr.pick([0, 5, 15, 30]),
            oneway: pr.pick([0, 5, 15, 30]),
            isolate: pr.pick([0, 5, 15]),
            heal: pr.pick([5, 15, 30]),
            crash: pr.pick([0, 5, 15, 30]),
            crashAll: pr.pick([0, 1, 3]),
            pause: pr.pick([0, 5, 15]),
            loss: pr.pick([0, 5, 10]),
            dup: pr.pick([0, 5, 10]),
            slow: pr.pick([0, 5, 10]),
            join: 0,
            remove: 0,
          },
      retain: pr.chance(0.5) ? 1_000_000_000 : pr.range(0, 40),
      ckptEveryMs: pr.pick([
        [50, 400],
        [300, 3000],
      ] as Array<[number, number]>),
    };
    // Drawn last, so that seeds without membership changes keep the runs they had.
    if (pr.chance(0.3)) {
      this.p.membership = true;
      this.p.removeDeadAfterTicks = pr.pick([0, 30, 80]);
      this.p.faultWeights.join = pr.pick([3, 8]);
      this.p.faultWeights.remove = pr.pick([2, 6]);
    }
    this.mainKeys = Array.from({ length: this.p.mainKeys }, (_, i) => `k.${i}`);
    this.ids = Array.from({ length: o.nodes }, (_, i) => i + 1);
    this.initialVoters = [...this.ids];
    this.model = new Model(this.initialVoters);
    this.healAt = this.o.chaosMs;
    this.stopAt = this.o.chaosMs + Math.floor(this.o.quietMs * 0.5);
    this.endAt = this.o.chaosMs + this.o.quietMs;
  }

  // ---- Host ----

  get now(): number {
    return this.t;
  }
  get retainEntries(): number {
    return this.p.retain;
  }
  readonly requestTimeout = 1000;
  get removeDeadAfterTicks(): number {
    return this.p.removeDeadAfterTicks;
  }

  at(server: SimServer, time: number, fn: () => void): void {
    const run = (): void => {
      if (!server.alive) return;
      const until = this.pausedUntil.get(server.id) ?? 0;
      if (until > this.t) {
        this.q.push(until, run);
        return;
      }
      fn();
    };
    this.q.push(time, run);
  }

  fsyncDelay(): number {
    const r = this.timeRng;
    const x = r.float();
    if (this.p.slowDisk) return x < 0.5 ? r.real(2, 20) : x < 0.9 ? r.real(20, 60) : r.real(60, 300);
    return x < 0.7 ? r.real(0.2, 3) : x < 0.95 ? r.real(3, 20) : r.real(20, 150);
  }

  checkpointDelay(): number {
    return this.timeRng.real(0.5, 30);
  }

  private netDelay(): number {
    const r = this.netRng;
    let d = r.real(0.1, 2);
    if (r.chance(this.slow)) d += r.real(0, 80);
    if (r.chance(0.01)) d += r.real(100, 500);
    return d;
  }

  private isBlocked(from: number, to: number): boolean {
    return this.blocked.size > 0 && this.blocked.has(`${from}>${to}`);
  }

  send(m: Msg): void {
    deepFreeze(m);
    const targets = m.to === BROADCAST ? this.ids.filter((i) => i !== m.from && !this.retired.has(i)) : [m.to];
    for (const to of targets) {
      if (this.isBlocked(m.from, to) || this.netRng.chance(this.loss)) continue;
      const copies = this.netRng.chance(this.dup) ? 2 : 1;
      for (let c = 0; c < copies; c++) this.q.push(this.t + this.netDelay(), () => this.arrive(m, to));
    }
  }

  private arrive(m: Msg, to: number): void {
    const s = this.servers.get(to);
    if (!s || this.isBlocked(m.from, to)) return;
    const until = this.pausedUntil.get(to) ?? 0;
    if (until > this.t) {
      this.q.push(until, () => this.arrive(m, to));
      return;
    }
    this.stats.messages++;
    this.trace(to, () => `<- ${fmtMsg(m)}`);
    s.onPeer(m);
  }

  sendSnapshot(sn: SnapshotMsg): void {
    if (this.isBlocked(sn.from, sn.to) || this.netRng.chance(this.loss)) return;
    this.trace(sn.from, `snapshot at ${sn.ckpt.meta().index} -> ${sn.to}`);
    const arrive = (): void => {
      const s = this.servers.get(sn.to);
      if (!s || this.isBlocked(sn.from, sn.to)) return;
      const until = this.pausedUntil.get(sn.to) ?? 0;
      if (until > this.t) {
        this.q.push(until, arrive);
        return;
      }
      if (s.installSnapshot(sn)) {
        this.stats.snapshots++;
        this.trace(sn.to, `installed snapshot at ${sn.ckpt.meta().index}: ${s.describe()}`);
        this.seenCommit.set(s.id, Math.max(this.seenCommit.get(s.id) ?? 0, s.node.commit));
        this.checkState(s, 'after a snapshot install');
      }
    };
    this.q.push(this.t + this.netDelay() + 5, arrive);
  }

  crashAfterSync(server: SimServer): boolean {
    if (this.healed || !this.faultRng.chance(this.p.crashAfterSync)) return false;
    this.crash(server.id, 'right after an fsync, before sending');
    return true;
  }

  onReadyIssued(s: SimServer, r: Ready): void {
    if (r.append.length > 0 || r.truncateFrom !== null || r.promise !== null || r.notices.length > 0) {
      this.trace(s.id, () => `ready: ${r.truncateFrom !== null ? `truncate from ${r.truncateFrom}, ` : ''}${r.append.length ? `append ${r.append[0]!.index}..${r.append[r.append.length - 1]!.index}, ` : ''}${r.promise !== null ? `promise ${r.promise}, ` : ''}commit ${r.commit}, send ${r.send.length}${r.notices.length ? `, ${r.notices.map(fmtNotice).join('; ')}` : ''}`);
    }
    // The log on disk (with what is pending) must be the log in memory.
    const n = s.node;
    const view = s.disk.log.view;
    const last = n.lastIndex();
    if (last >= n.firstIndex()) {
      const d = view.at(last);
      if (!d || view.last !== last || !sameEntry(d, n.entry(last)!)) {
        fail(`node ${s.id}: its log ends at ${showEntry(n.entry(last))} in memory but at ${showEntry(view.at(view.last))} on disk after carrying out a Ready`);
      }
      if (view.first > n.firstIndex()) fail(`node ${s.id}: log starts at ${view.first} on disk but ${n.firstIndex()} in memory`);
    } else if (view.last > last) {
      fail(`node ${s.id}: empty log in memory after ${last} but the disk holds up to ${view.last}`);
    }
    if (r.promise !== null && s.node.promised !== r.promise && s.node.promised < r.promise) fail(`node ${s.id}: promise ${r.promise} above the node's ${s.node.promised}`);
  }

  /**
   * A restart now would not take a stale entry for committed: of the log the restart logic
   * keeps (restartPlan), every entry up to the checkpoint is the committed one.
   */
  private checkLogUnderCheckpoint(id: number, when: string): void {
    const d = this.disks.get(id)!;
    const plan = restartPlan(d);
    const upTo = d.ckpt.meta().index;
    const check = (e: { index: number; epoch: number; ts: number }): void => {
      if (e.index === 0 || e.index > upTo) return;
      const c = this.model.entry(e.index);
      if (!c || c.epoch !== e.epoch || c.ts !== e.ts) {
        fail(`node ${id}: a restart ${when} would keep ${'kind' in e ? showEntry(e as Entry) : `#${e.index}/e${e.epoch}`} under its checkpoint at ${upTo}, but the committed entry is ${showEntry(c)}`);
      }
    };
    check(plan.base);
    for (const e of plan.rest) check(e);
  }

  onSynced(s: SimServer, truncated: Entry[]): void {
    this.checkLogUnderCheckpoint(s.id, 'after an fsync');
    const covered = s.disk.ckpt.meta().index;
    for (const e of truncated) {
      if (e.index <= covered) continue; // the checkpoint holds it
      const c = this.model.entry(e.index);
      if (c && sameEntry(c, e)) {
        const now = s.disk.log.durable.at(e.index);
        if (!now || !sameEntry(now, c)) fail(`node ${s.id}: a durable truncation removed committed entry ${showEntry(c)}`);
      }
    }
  }

  onCommit(s: SimServer): void {
    const n = s.node;
    let seen = this.seenCommit.get(s.id) ?? 0;
    if (n.commit <= seen) return;
    if (n.role === 'coordinator') this.checkLeader(s);
    for (let i = seen + 1; i <= n.commit; i++) {
      const e = n.entry(i);
      const c = this.model.entry(i);
      if (!e) {
        if (!c && i > this.model.last) fail(`node ${s.id}: commit ${n.commit} covers entry ${i}, which it does not hold and nobody reported committed`);
        continue;
      }
      if (c) {
        if (!sameEntry(c, e)) fail(`node ${s.id}: committed entry ${i} is ${showEntry(e)} here but ${showEntry(c)} was committed before`);
        continue;
      }
      if (i !== this.model.last + 1) fail(`node ${s.id}: commit ${n.commit} but the committed log is known only to ${this.model.last}`);
      const prev = this.model.entry(i - 1);
      if (prev && e.ts <= prev.ts) fail(`timestamps do not increase along the committed log: ${showEntry(prev)} then ${showEntry(e)}`);
      this.model.push(e);
      this.trace(s.id, () => `committed ${showEntry(e)}`);
      if (e.ts >= BOGUS_TS) fail(`node ${s.id}: ${showEntry(e)} committed with a ts from a bogus token: a token beyond every write moved a clock`);
      if (e.kind === 'write' && e.ops.some((op) => op.op === 'put' && op.value.startsWith('bogus.'))) fail(`node ${s.id}: ${showEntry(e)}, a write carrying a bogus token, was committed`);
      // Committed means fsync'd on a majority (of the coordinator's voters), from the moment anyone counts it committed.
      const holders = this.durableHolders(i, true);
      const voters = n.role === 'coordinator' ? n.voters : this.model.votersAt(i);
      const need = n.role === 'coordinator' ? Math.floor(voters.length / 2) + 1 : Math.ceil(voters.length / 2);
      const have = holders.filter((id) => voters.includes(id));
      if (have.length < need) fail(`node ${s.id}: entry ${showEntry(e)} counted committed while durable only on [${have.join(',')}] of the voters [${voters.join(',')}]`);
      if (e.kind === 'config') {
        this.stats.configs++;
        for (const id of this.toRemove) if (!e.voters.includes(id)) this.toRemove.delete(id);
        // An operator's removal sticks, across coordinators: only an operator adds it back.
        const before = this.model.configAt(i - 1);
        for (const v of e.voters) {
          if (!before.voters.includes(v) && before.keepOut.includes(v) && !this.operatorAdds.has(v)) {
            fail(`node ${s.id}: ${showEntry(e)} adds server ${v}, which an operator removed, without an operator asking`);
          }
        }
      }
    }
    seen = n.commit;
    this.seenCommit.set(s.id, seen);
  }

  onApplied(s: SimServer, e: Entry, res: Applied): void {
    const c = this.model.entry(e.index);
    if (!c || !sameEntry(c, e)) fail(`node ${s.id}: applied ${showEntry(e)}, but the committed entry ${e.index} is ${showEntry(c)}`);
    const want = this.model.results[e.index - 1]!;
    if (!sameResult(want.result, res.result) || want.duplicate !== res.duplicate) {
      fail(`node ${s.id}: applying ${showEntry(e)} gave ${JSON.stringify(res.result)}${res.duplicate ? ' (duplicate)' : ''}, the model ${JSON.stringify(want.result)}${want.duplicate ? ' (duplicate)' : ''}`);
    }
    // Change events (what observers see), in order, with the gap-detecting prev index.
    const same =
      res.events.length === want.events.length &&
      res.events.every((x, i) => {
        const y = want.events[i]!;
        return x.index === y.index && x.ts === y.ts && x.op === y.op && x.key === y.key && x.value === y.value && x.prev === y.prev;
      });
    if (!same) fail(`node ${s.id}: applying ${showEntry(e)} produced events ${JSON.stringify(res.events)}, the model ${JSON.stringify(want.events)}`);
  }

  onCheckpoint(s: SimServer): void {
    this.trace(s.id, () => `checkpoint at ${s.node.checkpointIndex}, log from ${s.node.firstIndex()}`);
    this.checkState(s, 'after a checkpoint', false);
    this.checkLogUnderCheckpoint(s.id, 'after a checkpoint');
    if (!this.healed && this.faultRng.chance(this.p.crashAfterCheckpoint)) {
      // Crash as soon as the checkpoint is durable, while the log may still have writes in flight.
      this.q.push(this.t, () => this.crash(s.id, 'right after a checkpoint'));
    }
  }

  onNotice(s: SimServer, n: Notice): void {
    if (n.type === 'coordinator' && n.id === s.id) {
      this.stats.epochs++;
      this.checkLeader(s);
    }
  }

  trace(node: number, x: string | (() => string)): void {
    const item: TraceItem = { t: this.t, n: node, x };
    if (this.o.verbose) this.o.out(fmtTrace(item));
    if (this.ring.length < this.o.traceSize) this.ring.push(item);
    else {
      this.ring[this.ringAt] = item;
      this.ringAt = (this.ringAt + 1) % this.o.traceSize;
    }
  }

  private traceLines(): string[] {
    const items = this.ring.length < this.o.traceSize ? this.ring : [...this.ring.slice(this.ringAt), ...this.ring.slice(0, this.ringAt)];
    return items.map(fmtTrace);
  }

  // ---- checks ----

  private checkLeader(s: SimServer): void {
    const n = s.node;
    if (n.role !== 'coordinator') return;
    const l = this.leaderOf.get(n.epoch);
    if (l === undefined) this.leaderOf.set(n.epoch, s.id);
    else if (l !== s.id) fail(`two coordinators in epoch ${n.epoch}: ${l} and ${s.id}`);
  }

  private checkAll(): void {
    for (const s of this.servers.values()) {
      if (!s) continue;
      if (s.node.role === 'coordinator') this.checkLeader(s);
      if (s.node.commit > (this.seenCommit.get(s.id) ?? 0)) this.onCommit(s);
      if (s.state.applied > s.node.commit && s.state.applied > s.node.checkpointIndex) {
        fail(`node ${s.id}: applied ${s.state.applied} beyond its commit ${s.node.commit}`);
      }
    }
  }

  /** A server's state machine holds exactly the model's state at its applied index. */
  private checkState(s: SimServer, when: string, allRids = true): void {
    const at = s.state.applied;
    if (at > this.model.last) fail(`node ${s.id}: state at ${at} ${when}, beyond the committed log (${this.model.last})`);
    if (s.state.appliedTs !== this.model.tsAt(at)) fail(`node ${s.id}: state ts ${s.state.appliedTs} at ${at} ${when}, the log says ${this.model.tsAt(at)}`);
    const voters = this.model.votersAt(at);
    if (s.state.voters.length > 0 && [...s.state.voters].sort((x, y) => x - y).join() !== voters.join()) {
      fail(`node ${s.id}: state voters [${s.state.voters.join(',')}] at ${at} ${when}, the log says [${voters.join(',')}]`);
    }
    const keys = new Set([...this.model.keys(), ...this.mainKeys, ...this.noiseKeys]);
    const want: string[] = [];
    for (const k of keys) {
      const m = this.model.valueAt(k, at);
      const got = s.state.get(k) ?? null;
      if (!sameRec(m, got)) fail(`node ${s.id}: key ${k} is ${JSON.stringify(got)} at ${at} ${when}, the model says ${JSON.stringify(m)}`);
      if (m) want.push(k);
    }
    want.sort(byteOrder);
    const listed = s.state.range('', undefined, 1000).map((kv) => kv.key);
    if (listed.join() !== want.join()) fail(`node ${s.id}: list shows [${listed.join()}] at ${at} ${when}, the model [${want.join()}]`);
    // Paged listing, two at a time, must agree too.
    const paged: string[] = [];
    let start: string | undefined;
    for (let i = 0; i < 100; i++) {
      const page = s.state.range('', start, 2);
      paged.push(...page.map((kv) => kv.key));
      if (page.length < 2) break;
      start = page[page.length - 1]!.key;
    }
    if (paged.join() !== want.join()) fail(`node ${s.id}: paged list shows [${paged.join()}] at ${at} ${when}, the model [${want.join()}]`);
    // The exactly-once table: all of it, or (after a checkpoint) the newest requests.
    const rids = this.model.ridOrder;
    let hi = rids.length;
    while (hi > 0 && this.model.rids.get(rids[hi - 1]!)!.index > at) hi--;
    for (let k = allRids ? 0 : Math.max(0, hi - 20); k < hi; k++) {
      const rid = rids[k]!;
      const r = this.model.rids.get(rid)!;
      const got = s.state.ridResult(rid);
      if (!got || got.index !== r.index || !sameResult(got.result, r.result)) {
        fail(`node ${s.id}: rid ${rid} is ${JSON.stringify(got)} at ${at} ${when}, the model ${JSON.stringify(r)}`);
      }
    }
  }

  /** Servers holding committed entry i durably: in the log on disk, or under the checkpoint. */
  private durableHolders(i: number, withRetired = false): number[] {
    const c = this.model.entry(i)!;
    const have: number[] = [];
    for (const id of this.ids) {
      if (this.retired.has(id) && !withRetired) continue;
      const d = this.disks.get(id)!;
      if (d.ckpt.meta().index >= i) have.push(id);
      else {
        const e = d.log.durable.at(i);
        if (e && sameEntry(e, c)) have.push(id);
      }
    }
    return have;
  }

  /**
   * Every committed entry is durable on servers that meet every majority of the latest
   * committed configuration that can still form (retired servers never come back). With one
   * change at a time this holds even while a newer configuration is pending; with a fixed
   * set of voters and none retired it is "on a majority".
   */
  private checkDurable(when: string): void {
    const voters = this.model.votersAt(this.model.last);
    const majority = Math.floor(voters.length / 2) + 1;
    const available = voters.filter((v) => !this.retired.has(v)).length;
    for (let i = 1; i <= this.model.last; i++) {
      const have = this.durableHolders(i).filter((id) => voters.includes(id));
      if (available - have.length >= majority) {
        fail(`committed entry ${showEntry(this.model.entry(i))} is durable only on [${have.join(',')}]: a majority of the voters [${voters.join(',')}] without it can form ${when}`);
      }
    }
  }

  private checkReply(s: Session, op: SessionOp, req: ClientRequest, reply: ClientReply, ackedAtSend: number): void {
    const what = `reply from ${reply.by} to c${s.id} ${describeOp(op)} (after=${req.after})`;
    if (op.t === 'bogus' && (reply.ok || reply.code === 'CAS_MISMATCH')) fail(`${what}: answered ${reply.ok ? 'ok' : reply.code} at ts ${reply.ts}, not TOKEN_AHEAD`);
    if (!reply.ok && reply.code !== 'CAS_MISMATCH') {
      if (reply.code === 'TOKEN_AHEAD' && req.after <= this.model.tsAt(this.model.last)) {
        this.stats.spuriousTokenAhead++;
        this.trace(reply.by, `TOKEN_AHEAD for token ${req.after}, which the cluster issued (committed ts ${this.model.tsAt(this.model.last)})`);
        if (this.o.strictTokens) fail(`${what}: TOKEN_AHEAD though a write with ts ${req.after} exists`);
      }
      return;
    }
    const index = reply.index!;
    if (index > this.model.last) fail(`${what}: index ${index} beyond the committed log (${this.model.last})`);
    if (req.kind === 'write') {
      const e = this.model.entry(index);
      if (!e || e.kind !== 'write' || e.rid !== req.rid) fail(`${what}: acknowledged at ${index}, which is ${showEntry(e)}`);
      const first = this.model.rids.get(req.rid)!;
      if (!sameResult(first.result, reply.result)) fail(`${what}: result ${JSON.stringify(reply.result)}, but its first application gave ${JSON.stringify(first.result)}`);
      if (reply.ts < first.ts) fail(`${what}: ts ${reply.ts} below the write's own ${first.ts}`);
      return;
    }
    if (reply.ts !== this.model.tsAt(index)) fail(`${what}: ts ${reply.ts} but the entry at ${index} has ts ${this.model.tsAt(index)}`);
    if (reply.ts < req.after) fail(`${what}: answered from ts ${reply.ts}, below the token ${req.after}`);
    if (req.strong && index < ackedAtSend) fail(`${what}: a strong read answered at index ${index}, but a write at ${ackedAtSend} was acknowledged before it was sent`);
    const values = reply.ok ? reply.values : undefined;
    if (!values || values.length !== req.keys.length) fail(`${what}: ${values?.length ?? 'no'} values for ${req.keys.length} keys`);
    req.keys.forEach((k, i) => {
      const want = this.model.valueAt(k, index);
      if (!sameRec(want, values[i])) fail(`${what}: ${k} = ${JSON.stringify(values[i])} at index ${index}, the committed log says ${JSON.stringify(want)}`);
    });
  }

  // ---- servers: start, crash, restart, pause ----

  private start(id: number): void {
    this.seenCommit.set(id, 0);
    const s = new SimServer(id, this.initialVoters, this.disks.get(id)!, this);
    this.servers.set(id, s);
    this.trace(id, () => `started: ${s.describe()}`);
    this.checkState(s, 'after a restart');
    this.onCommit(s);
    const tick = (): void => {
      s.tick();
      const period = TICK_MS * this.drift.get(id)! + this.timeRng.real(-2, 2);
      this.at(s, this.t + period, tick);
    };
    this.at(s, this.t, tick);
    const ckpt = (): void => {
      s.checkpoint();
      this.at(s, this.t + this.timeRng.range(...this.p.ckptEveryMs), ckpt);
    };
    this.at(s, this.t + this.timeRng.range(...this.p.ckptEveryMs), ckpt);
  }

  private crash(id: number, why: string): void {
    const s = this.servers.get(id);
    if (!s) return;
    s.alive = false;
    this.servers.set(id, null);
    this.pausedUntil.delete(id);
    const d = this.disks.get(id)!;
    d.log.crash(this.diskRng);
    d.promise.crash(this.diskRng);
    this.stats.crashes++;
    this.trace(id, `CRASH (${why}): disk log ${d.log.durable.first}..${d.log.durable.last}, promise ${d.promise.durable}, checkpoint ${d.ckpt.meta().index}`);
    this.checkDurable(`after server ${id} crashed`);
    if (!this.healed) {
      const back = this.t + this.faultRng.range(...this.p.downMs);
      this.q.push(back, () => {
        if (this.servers.get(id) === null && !this.retired.has(id)) this.start(id);
      });
    }
  }

  // ---- faults ----

  private fault(): void {
    if (this.healed) return;
    const r = this.faultRng;
    const ids = this.ids;
    const kind = pickWeighted(r, this.p.faultWeights);
    if (kind === 'partition') {
      // Symmetric partition into two sides.
      const sh = r.shuffle([...ids]);
      const cut = r.range(1, ids.length - 1);
      const a = sh.slice(0, cut);
      const b = sh.slice(cut);
      for (const i of a) for (const j of b) this.blocked.add(`${i}>${j}`).add(`${j}>${i}`);
      this.trace(0, `PARTITION {${a.join(',')}} | {${b.join(',')}}`);
    } else if (kind === 'oneway' && r.chance(0.5)) {
      // A server deaf to some peers (it does not hear them, they hear it), or mute to some.
      const i = this.target(r, ids);
      const deaf = r.chance(0.5);
      const others = r.shuffle(ids.filter((j) => j !== i));
      const some = others.slice(0, r.range(1, others.length));
      for (const j of some) this.blocked.add(deaf ? `${j}>${i}` : `${i}>${j}`);
      this.trace(i, `${deaf ? 'DEAF to' : 'MUTE to'} ${some.join(',')}`);
    } else if (kind === 'oneway') {
      const n = r.range(1, ids.length);
      const cut: string[] = [];
      for (let k = 0; k < n; k++) {
        const i = r.pick(ids);
        const j = r.pick(ids.filter((v) => v !== i));
        this.blocked.add(`${i}>${j}`);
        cut.push(`${i}>${j}`);
      }
      this.trace(0, `ONE-WAY cut ${cut.join(' ')}`);
    } else if (kind === 'isolate') {
      const i = this.target(r, ids);
      for (const j of ids) if (j !== i) this.blocked.add(`${i}>${j}`).add(`${j}>${i}`);
      this.trace(0, `ISOLATE ${i}`);
    } else if (kind === 'heal') {
      this.blocked.clear();
      this.trace(0, 'HEAL partitions');
    } else if (kind === 'crash') {
      const up = ids.filter((i) => this.servers.get(i));
      if (up.length) this.crash(this.target(r, up), 'kill -9');
    } else if (kind === 'crashAll') {
      for (const i of ids) this.crash(i, 'kill -9 of every process');
    } else if (kind === 'pause') {
      const up = ids.filter((i) => this.servers.get(i));
      if (up.length) {
        const i = this.target(r, up);
        const ms = r.range(50, 1500);
        this.pausedUntil.set(i, this.t + ms);
        this.trace(i, `PAUSE for ${ms} ms`);
      }
    } else if (kind === 'loss') {
      this.loss = r.chance(0.3) ? 0 : r.real(0, this.p.lossMax);
      this.trace(0, `loss ${(this.loss * 100).toFixed(1)}%`);
    } else if (kind === 'dup') {
      this.dup = r.chance(0.3) ? 0 : r.real(0, this.p.dupMax);
      this.trace(0, `duplication ${(this.dup * 100).toFixed(1)}%`);
    } else if (kind === 'join') {
      if (!this.addLearner(r)) this.join();
    } else if (kind === 'remove') {
      this.removeVoter(r);
    } else if (kind === 'slow') {
      this.slow = r.chance(0.3) ? 0 : r.real(0, this.p.slowMax);
      this.trace(0, `slow messages ${(this.slow * 100).toFixed(0)}%`);
    }
  }

  /** A server to hit: half the time a coordinator, if any among `from`. */
  private target(r: Rng, from: number[]): number {
    const coords = from.filter((i) => this.servers.get(i)?.node.role === 'coordinator');
    return coords.length > 0 && r.chance(0.5) ? r.pick(coords) : r.pick(from);
  }

  private heal(): void {
    this.healed = true;
    this.blocked.clear();
    this.loss = 0;
    this.dup = 0;
    this.slow = 0;
    this.pausedUntil.clear();
    this.trace(0, 'HEAL everything; quiet from now on');
    for (const id of this.ids) if (!this.servers.get(id) && !this.retired.has(id)) this.start(id);
  }

  /** Decommission a server (removed from the voters by a committed configuration): it never comes back. */
  private retire(id: number): void {
    if (this.retired.has(id)) return;
    this.crash(id, 'decommissioned');
    this.retired.add(id);
    this.trace(id, 'RETIRED');
  }

  /** A new server joins: it starts as a learner, and the coordinator promotes it once caught up. */
  private join(): void {
    if (this.ids.length >= this.o.nodes + 2) return;
    const id = Math.max(...this.ids) + 1;
    this.ids.push(id);
    this.disks.set(id, new SimDisk());
    this.drift.set(id, this.timeRng.real(1 - this.p.drift, 1 + this.p.drift));
    this.trace(id, `JOIN: server ${id} starts`);
    this.start(id);
  }

  /**
   * The operator adds back a running server that was removed (a learner now); the
   * coordinator refuses until it is caught up. False if there is none to add.
   */
  private addLearner(r: Rng): boolean {
    const c = this.ids.map((i) => this.servers.get(i)).find((s) => s && s.node.role === 'coordinator');
    if (!c) return false;
    const learners = this.ids.filter((i) => this.servers.get(i) && !this.retired.has(i) && !c.node.voters.includes(i));
    if (learners.length === 0 || !r.chance(0.7)) return false;
    const v = r.pick(learners);
    this.operatorAdds.add(v);
    const res = c.proposeConfig([...c.node.voters, v]);
    this.trace(c.id, `ADD learner ${v}: ${typeof res === 'string' ? `refused: ${res}` : `config entry ${res.index}`}`);
    return true;
  }

  /**
   * The operator removes a voter, at the coordinator. Either the server keeps running (it
   * becomes a learner, not added back until the operator adds it), or it is
   * decommissioned: stopped for good first, then removed (proposed again until committed;
   * one per run, so that the voters that remain can always form a majority).
   */
  private removeVoter(r: Rng): void {
    const c = this.ids.map((i) => this.servers.get(i)).find((s) => s && s.node.role === 'coordinator');
    if (!c) return;
    let v = [...this.toRemove].find((x) => c.node.voters.includes(x));
    if (v === undefined) {
      const candidates = c.node.voters.filter((x) => x !== c.id);
      if (candidates.length < 2) return;
      v = r.pick(candidates);
      if (this.retired.size === 0 && c.node.voters.length >= 3 && r.chance(0.5)) {
        this.retire(v);
        this.toRemove.add(v);
      }
    }
    const res = c.proposeConfig(c.node.voters.filter((x) => x !== v));
    this.trace(c.id, `REMOVE voter ${v}${this.retired.has(v) ? ' (decommissioned)' : ''}: ${typeof res === 'string' ? `refused: ${res}` : `config entry ${res.index}`}`);
  }

  // ---- clients ----

  private clientHost(): ClientHost {
    const sim = this;
    return {
      get now() {
        return sim.t;
      },
      rng: this.clientRng,
      send: (s, op, req, attempt, toCoord) => this.clientSend(s, op, req, attempt, toCoord),
      wakeAt: (s, time) => this.q.push(time, () => s.tick()),
      checkReply: (s, op, req, reply, acked) => this.checkReply(s, op, req, reply, acked),
      onAck: (s, rid, index) => {
        void index;
        this.acked.add(rid);
        this.ackedMax = Math.max(this.ackedMax, this.model.rids.get(rid)!.index);
        if (this.healed) this.ackedAfterHeal++;
      },
      trace: (what) => this.trace(0, what),
      clientTimeout: 1500,
      get ackedMax() {
        return sim.ackedMax;
      },
      mainKeys: this.mainKeys,
      noiseKeys: this.noiseKeys,
      get issuing() {
        return sim.issuing;
      },
    };
  }

  private clientSend(s: Session, op: SessionOp, req: ClientRequest, attempt: number, toCoord: boolean): boolean {
    const up = this.ids.map((i) => this.servers.get(i)).filter((x): x is SimServer => !!x && (!toCoord || x.node.role === 'coordinator'));
    if (up.length === 0) return false;
    const target = this.clientRng.pick(up);
    const acked = this.ackedMax;
    if (this.clientRng.chance(this.healed ? 0 : this.p.clientLoss)) return true;
    const respond = (reply: ClientReply): void => {
      if (this.clientRng.chance(this.healed ? 0 : this.p.clientLoss)) return;
      this.q.push(this.t + this.clientRng.real(0.1, 2), () => s.onReply(op, req, attempt, reply, acked));
    };
    this.at(target, this.t + this.clientRng.real(0.1, 2), () => target.request(req, respond));
    return true;
  }

  // ---- the run ----

  run(): SimResult {
    const params = JSON.stringify(this.p);
    try {
      this.setup();
      while (this.q.size > 0) {
        const time = this.q.peekTime()!;
        if (time > this.endAt) break;
        const ev = this.q.pop()!;
        this.t = ev.time;
        ev.run();
        this.checkAll();
        if (++this.stats.events > this.o.maxEvents) fail(`more than ${this.o.maxEvents} events: a message storm?`);
      }
      this.t = this.endAt;
      this.finalChecks();
      this.collect();
      return { seed: this.o.seed, nodes: this.o.nodes, ok: true, stats: this.stats, params };
    } catch (err) {
      this.collect();
      const e = err as Error;
      const msg = `${e instanceof SimFailure ? '' : `${e.stack ?? e.message}\n`}seed ${this.o.seed} (${this.o.nodes} nodes) failed at ${this.t.toFixed(1)} ms: ${e.message}\nreplay: ${replayCommand(this.o.seed, this.o.nodes)}`;
      return { seed: this.o.seed, nodes: this.o.nodes, ok: false, error: msg, trace: this.traceLines(), stats: this.stats, params };
    }
  }

  private setup(): void {
    for (const id of this.ids) {
      this.disks.set(id, new SimDisk());
      this.drift.set(id, this.timeRng.real(1 - this.p.drift, 1 + this.p.drift));
    }
    for (const id of this.ids) this.q.push(this.timeRng.real(0, TICK_MS), () => this.start(id));
    const host = this.clientHost();
    for (let i = 1; i <= this.p.sessions; i++) this.sessions.push(new Session(i, host));
    for (const s of this.sessions) {
      s.sessions = this.sessions;
      this.q.push(this.clientRng.real(0, 500), () => s.tick());
    }
    const faults = (): void => {
      if (this.healed) return;
      this.fault();
      this.q.push(this.t + this.faultRng.range(...this.p.faultGapMs), faults);
    };
    this.q.push(this.faultRng.range(...this.p.faultGapMs), faults);
    this.q.push(this.healAt, () => this.heal());
    this.q.push(this.stopAt, () => {
      this.issuing = false;
      this.trace(0, 'clients stop issuing new requests');
    });
  }

  private collect(): void {
    this.stats.simMs = this.t;
    this.stats.committed = this.model.last;
    for (const s of this.sessions) {
      this.stats.writes += s.stats.writes;
      this.stats.acked += s.stats.acked;
      this.stats.reads += s.stats.reads;
      this.stats.readsDone += s.stats.readsDone;
      this.stats.bogus += s.stats.bogus;
      this.stats.bogusRejected += s.stats.bogusRejected;
    }
    this.stats.ackedAfterHeal = this.ackedAfterHeal;
  }

  private finalChecks(): void {
    // Liveness: after healing and quiet, every request got its final answer.
    for (const s of this.sessions) {
      if (s.busy) fail(`liveness: client ${s.id} still waiting for ${describeOp(s.busy.op)} after ${this.o.quietMs} ms healed (${s.busy.tries} tries); servers: ${this.describeServers()}`);
    }
    const writesAfterHeal = this.sessions.some((s) => s.stats.writes > 0);
    if (writesAfterHeal && this.ackedAfterHeal === 0 && this.stopAt > this.healAt + 2000) {
      fail(`liveness: no write acknowledged after healing; servers: ${this.describeServers()}`);
    }
    // Convergence.
    const last = this.model.last;
    let coord: number | null = null;
    const live = this.ids.filter((id) => !this.retired.has(id));
    for (const id of live) {
      const s = this.servers.get(id);
      if (!s) fail(`server ${id} is down at the end`);
      const n = s.node;
      if (n.role === 'coordinator') {
        if (coord !== null) fail(`two coordinators at the end: ${coord} and ${id}`);
        coord = id;
      }
      if (n.commit !== last || s.state.applied !== last || n.lastIndex() !== last) {
        fail(`no convergence after healing and quiet: server ${id} has last ${n.lastIndex()}, commit ${n.commit}, applied ${s.state.applied}; the committed log ends at ${last}; servers: ${this.describeServers()}`);
      }
      this.checkState(s, 'at the end');
    }
    if (coord === null) fail(`no coordinator at the end; servers: ${this.describeServers()}`);
    for (const id of live) {
      const n = this.servers.get(id)!.node;
      if (n.coordinator !== coord) fail(`server ${id} follows ${n.coordinator}, not the coordinator ${coord}; servers: ${this.describeServers()}`);
    }
    this.checkDurable('at the end');
    for (const rid of this.acked) if (!this.model.rids.has(rid)) fail(`acknowledged write ${rid} is not in the committed log`);
    for (const id of live) {
      const n = this.servers.get(id)!.node;
      if (n.clock >= BOGUS_TS || n.knownCommitTs >= BOGUS_TS) fail(`server ${id}: clock ${n.clock}, knownCommitTs ${n.knownCommitTs}: a bogus token moved a clock`);
    }
    // Causal consistency of the client histories.
    const h = historyOf(this.sessions);
    this.stats.historyOps = h.ops.length;
    const bad = checkCausal(h);
    if (bad.length > 0) fail(`causal consistency: ${bad.map((v) => `${v.pattern}: ${v.detail}`).join('; ')}`);
  }

  private describeServers(): string {
    return this.ids.map((id) => `${id}: ${this.retired.has(id) ? 'retired' : this.servers.get(id)?.describe() ?? 'down'}`).join(' | ');
  }
}

function fmtTrace(i: TraceItem): string {
  const text = typeof i.x === 'string' ? i.x : i.x();
  return `${i.t.toFixed(2).padStart(10)} ${i.n === 0 ? '  ' : `n${i.n}`} ${text}`;
}

function fmtNotice(n: Notice): string {
  switch (n.type) {
    case 'coordinator':
      return `coordinator ${n.id} epoch ${n.epoch}`;
    case 'stepdown':
      return `stepdown epoch ${n.epoch}: ${n.reason}`;
    case 'election':
      return `election ${n.phase} epoch ${n.epoch}`;
    case 'config':
      return `config voters ${n.voters.join(',')}`;
    default:
      return `${n.type} ${n.id}`;
  }
}

export function fmtMsg(m: Msg): string {
  const head = `${m.t} ${m.from}->${m.to === BROADCAST ? '*' : m.to} e${m.epoch} clk${m.clock}`;
  switch (m.t) {
    case 'ping':
      return `${head} ${m.role} c${m.coordinator ?? '-'} last${m.last}/${m.lastEpoch} commit${m.commit} matched${m.matched}`;
    case 'append':
      return `${head} prev${m.prevIndex}/${m.prevEpoch} [${m.entries.map((e) => `${e.index}/${e.epoch}`).join(' ')}] commit${m.commit}`;
    case 'ack':
      return `${head} match${m.match}`;
    case 'nack':
      return `${head} last${m.last} commit${m.commit}`;
    case 'promise':
      return `${head} ${m.ok ? 'ok' : 'NO'} last${m.last}/${m.lastEpoch} commit${m.commit}`;
    case 'fetch':
      return `${head} from${m.start}`;
    case 'fetched':
      return `${head} start${m.start} [${m.entries.map((e) => `${e.index}/${e.epoch}`).join(' ')}] last${m.last}${m.compacted ? ' compacted' : ''}`;
    case 'confirm':
    case 'confirmed':
    case 'tsq':
      return `${head} seq${m.seq}`;
    case 'tsr':
      return `${head} seq${m.seq} commitTs${m.commitTs}`;
    default:
      return head;
  }
}
