// The deterministic simulation: a whole ckv cluster in one process — each
// server the production replica (src/server/replica.ts) under a simulated
// environment (env.ts) — over a seeded simulated network (network.ts), with the
// faults of faults.ts, client sessions speaking the wire protocol (client.ts),
// and the invariants of invariants.ts checked after every event. Time is
// simulated (milliseconds); every choice comes from one seed, so a failing seed
// replays exactly.

import { TICK_MS } from '../../src/core/limits.js';
import { CorruptRecordError } from '../../src/core/records.js';
import { LogCorruptError } from '../../src/storage/segment-format.js';
import { subjects } from '../../src/transport/subjects.js';
import type { Reply, Request } from '../../src/core/wire.js';
import { Session, type ClientHost, type SessionOp } from './client.js';
import { SimDisk } from './disk.js';
import { SimNode } from './env.js';
import { Faults } from './faults.js';
import { Invariants, SimFailure, fail } from './invariants.js';
import { Network } from './network.js';
import { drawParams, overrideParams, type FaultKind, type Params } from './params.js';
import { Rng } from './prng.js';
import { EventQueue } from './queue.js';
import { Trace } from './trace.js';

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
  /** Faults that are off by default, turned on (params.ts FAULTS_OFF_BY_DEFAULT). */
  enable?: FaultKind[];
  /** Knobs forced, as name=value (params.ts). */
  set?: string[];
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
  pages: number;
  resent: number;
  historyOps: number;
  snapshots: number;
  repairs: number;
  /** Repairs that found a checkpoint transfer under way (its incoming store let go of first). */
  repairsReceiving: number;
  /** Times a follower's checkpoint fell dirtyMax records behind and it took no new entries. */
  holds: number;
  /** The most records any follower's checkpoint was behind by, seen after each apply. */
  followerBehindMax: number;
  spuriousTokenAhead: number;
  bogus: number;
  bogusRejected: number;
  /** Writes refused while the coordinator's checkpoint was too far behind. */
  behind: number;
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

export function replayCommand(o: Pick<SimOptions, 'seed' | 'nodes' | 'enable' | 'set'>): string {
  const extra = [...(o.enable?.length ? [`--enable ${o.enable.join(',')}`] : []), ...(o.set ?? []).map((s) => `--set ${s}`)];
  return `node dist/tools/sim-soak.js --seed ${o.seed} --nodes ${o.nodes}${extra.length ? ` ${extra.join(' ')}` : ''}`;
}

/** Longest the run goes on past its end for the cluster to settle (an election, a catch-up, a configuration change in flight). */
export const SETTLE_MS_MAX = 10_000;

export function runSeed(o: SimOptions): SimResult {
  return new Sim(o).run();
}

export class Sim {
  readonly o: Required<Omit<SimOptions, 'out' | 'enable' | 'set'>> & { out: (line: string) => void };
  readonly q = new EventQueue();
  t = 0;
  readonly tickMs = TICK_MS;
  /** Every server started so far (joiners are added); retired ones never come back. */
  readonly ids: number[];
  readonly initialVoters: number[];
  readonly retired = new Set<number>();
  readonly servers = new Map<number, SimNode | null>();
  readonly disks = new Map<number, SimDisk>();
  readonly pausedUntil = new Map<number, number>();
  readonly drift = new Map<number, number>();
  healed = false;
  private issuing = true;
  readonly endAt: number;
  readonly healAt: number;
  readonly stopAt: number;
  /** Random streams, one per concern. */
  readonly rng: { net: Rng; fault: Rng; disk: Rng; time: Rng; client: Rng };
  readonly p: Params;
  readonly trace: Trace;
  readonly net: Network;
  readonly faults: Faults;
  readonly inv: Invariants;
  private sessions: Session[] = [];
  readonly stats: SimStats = {
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
    pages: 0,
    resent: 0,
    historyOps: 0,
    snapshots: 0,
    repairs: 0,
    repairsReceiving: 0,
    holds: 0,
    followerBehindMax: 0,
    spuriousTokenAhead: 0,
    bogus: 0,
    bogusRejected: 0,
    behind: 0,
    messages: 0,
    configs: 0,
  };
  readonly mainKeys: string[];
  readonly noiseKeys = ['n.0', 'n.1', 'n.2'];
  /** NATS subjects, as the servers' transport names them (peer messages are sealed to theirs). */
  readonly subjects = subjects('sim');
  private readonly replay: string;

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
    this.rng = { net: root.fork(), fault: root.fork(), disk: root.fork(), time: root.fork(), client: root.fork() };
    this.p = drawParams(root.fork(), o.enable);
    overrideParams(this.p, o.set ?? []);
    this.replay = replayCommand(o);
    this.trace = new Trace(this.o.traceSize, this.o.verbose ? this.o.out : null);
    this.mainKeys = Array.from({ length: this.p.mainKeys }, (_, i) => `k.${i}`);
    this.ids = Array.from({ length: o.nodes }, (_, i) => i + 1);
    this.initialVoters = [...this.ids];
    this.healAt = this.o.chaosMs;
    this.stopAt = this.o.chaosMs + Math.floor(this.o.quietMs * 0.5);
    this.endAt = this.o.chaosMs + this.o.quietMs;
    this.net = new Network(this);
    this.faults = new Faults(this);
    this.inv = new Invariants(this);
  }

  note(node: number, what: string): void {
    this.trace.add(this.t, node, what);
  }

  /** Run fn at `time` in server incarnation `n`, unless it has crashed by then; a pause delays it. */
  at(n: SimNode, time: number, fn: () => void): void {
    const run = (): void => {
      if (!n.alive) return;
      const until = this.pausedUntil.get(n.id) ?? 0;
      if (until > this.t) {
        this.q.push(until, run);
        return;
      }
      fn();
    };
    this.q.push(time, run);
  }

  fsyncDelay(): number {
    const r = this.rng.time;
    const x = r.float();
    if (this.p.slowDisk) return x < 0.5 ? r.real(2, 20) : x < 0.9 ? r.real(20, 60) : r.real(60, 300);
    return x < 0.7 ? r.real(0.2, 3) : x < 0.95 ? r.real(3, 20) : r.real(20, 150);
  }

  checkpointDelay(): number {
    return this.rng.time.real(0.5, 30);
  }

  /** Start (or restart) server `id` from its disk, with its ticker and checkpoint cron. */
  start(id: number): void {
    let n: SimNode;
    try {
      n = new SimNode(this, id, this.disks.get(id)!);
    } catch (err) {
      if (err instanceof SimFailure) throw err;
      // As the server's shell: a damaged log or checkpoint found on opening is repaired, and the
      // server starts as a catch-up member. Anything else: it stays down (the end checks say so).
      if (err instanceof CorruptRecordError || err instanceof LogCorruptError) {
        this.note(id, `REPAIR on start: ${(err as Error).message}`);
        this.disks.get(id)!.repair(err instanceof CorruptRecordError);
        this.stats.repairs++;
        return this.start(id);
      }
      this.note(id, `REFUSES TO START: ${(err as Error).message}`);
      return;
    }
    this.servers.set(id, n);
    this.note(id, `started: ${n.describe()}`);
    this.inv.onStart(n);
    const tick = (): void => {
      n.replica.tick();
      const period = TICK_MS * this.drift.get(id)! + this.rng.time.real(-2, 2);
      this.at(n, this.t + period, tick);
    };
    this.at(n, this.t, () => {
      n.replica.start();
      this.at(n, this.t + TICK_MS * this.drift.get(id)!, tick);
    });
    const ckpt = (): void => {
      n.replica.checkpoint();
      this.at(n, this.t + this.rng.time.range(...this.p.ckptEveryMs), ckpt);
    };
    this.at(n, this.t + this.rng.time.range(...this.p.ckptEveryMs), ckpt);
  }

  describeServers(): string {
    return this.ids.map((id) => `${id}: ${this.retired.has(id) ? 'retired' : this.servers.get(id)?.describe() ?? 'down'}`).join(' | ');
  }

  // ---- clients ----

  private clientHost(): ClientHost {
    const sim = this;
    return {
      get now() {
        return sim.t;
      },
      rng: this.rng.client,
      send: (s, op, req, attempt) => this.clientSend(s, op, req, attempt),
      wakeAt: (s, time) => this.q.push(time, () => s.tick()),
      checkReply: (s, op, req, reply, by, acked) => this.inv.checkReply(s, op, req, reply, by, acked),
      onAck: (_s, rid) => {
        this.inv.acked.add(rid);
        this.inv.ackedMax = Math.max(this.inv.ackedMax, this.inv.model.rids.get(rid)!.index);
        if (this.healed) this.inv.ackedAfterHeal++;
      },
      trace: (what) => this.note(0, what),
      clientTimeout: 1500,
      get ackedMax() {
        return sim.inv.ackedMax;
      },
      get committedLast() {
        return sim.inv.model.last;
      },
      mainKeys: this.mainKeys,
      noiseKeys: this.noiseKeys,
      dataOps: this.p.dataOps,
      get issuing() {
        return sim.issuing;
      },
    };
  }

  private clientSend(s: Session, op: SessionOp, req: Request, attempt: number): boolean {
    // Remember every value a write carries: a read may return only these.
    if (req.op === 'put' || req.op === 'create') this.inv.issued.add(req.value);
    else if (req.op === 'cas' && req.value !== null) this.inv.issued.add(req.value);
    else if (req.op === 'grant') this.inv.issued.add(''); // a lease's record holds ""
    else if (req.op === 'batch') for (const w of req.ops) if ((w.op === 'put' || w.op === 'cas') && w.value !== null) this.inv.issued.add(w.value);
    const acked = this.inv.ackedMax;
    const loss = this.healed ? 0 : this.p.clientLoss;
    return this.net.clientRequest(req, (reply: Reply, by: number) => s.onReply(op, req, attempt, reply, by, acked), loss);
  }

  // ---- the run ----

  run(): SimResult {
    const params = JSON.stringify(this.p);
    try {
      this.setup();
      // Past the end, the run goes on (quiet) only until the cluster has settled, within a bound.
      let until = this.endAt;
      while (this.q.size > 0) {
        const time = this.q.peekTime()!;
        if (time > until) {
          if (until >= this.endAt + SETTLE_MS_MAX || this.inv.settled()) break;
          until += 100;
          continue;
        }
        const ev = this.q.pop()!;
        this.t = ev.time;
        ev.run();
        this.inv.afterEvent();
        if (++this.stats.events > this.o.maxEvents) fail(`more than ${this.o.maxEvents} events: a message storm?`);
      }
      this.t = Math.max(this.t, this.endAt);
      this.inv.finalChecks(this.sessions);
      this.collect();
      return { seed: this.o.seed, nodes: this.o.nodes, ok: true, stats: this.stats, params };
    } catch (err) {
      this.collect();
      const e = err as Error;
      const msg = `${e instanceof SimFailure ? '' : `${e.stack ?? e.message}\n`}seed ${this.o.seed} (${this.o.nodes} nodes) failed at ${this.t.toFixed(1)} ms: ${e.message}\nreplay: ${this.replay}`;
      return { seed: this.o.seed, nodes: this.o.nodes, ok: false, error: msg, trace: this.trace.lines(), stats: this.stats, params };
    }
  }

  private setup(): void {
    for (const id of this.ids) {
      this.disks.set(id, new SimDisk());
      this.drift.set(id, this.rng.time.real(1 - this.p.drift, 1 + this.p.drift));
    }
    for (const id of this.ids) this.q.push(this.rng.time.real(0, TICK_MS), () => this.start(id));
    const host = this.clientHost();
    for (let i = 1; i <= this.p.sessions; i++) this.sessions.push(new Session(i, host));
    for (const s of this.sessions) {
      s.sessions = this.sessions;
      this.q.push(this.rng.client.real(0, 500), () => s.tick());
    }
    const faults = (): void => {
      if (this.healed) return;
      this.faults.strike();
      this.q.push(this.t + this.rng.fault.range(...this.p.faultGapMs), faults);
    };
    this.q.push(this.rng.fault.range(...this.p.faultGapMs), faults);
    this.q.push(this.healAt, () => {
      this.inv.onHeal();
      this.faults.heal();
    });
    this.q.push(this.stopAt, () => {
      this.issuing = false;
      this.note(0, 'clients stop issuing new requests');
    });
  }

  private collect(): void {
    this.stats.simMs = this.t;
    this.stats.committed = this.inv.model.last;
    this.stats.messages = this.net.messages;
    this.stats.writes = this.stats.acked = this.stats.reads = this.stats.readsDone = this.stats.pages = this.stats.resent = this.stats.bogus = this.stats.bogusRejected = this.stats.behind = 0;
    for (const s of this.sessions) {
      this.stats.writes += s.stats.writes;
      this.stats.acked += s.stats.acked;
      this.stats.reads += s.stats.reads;
      this.stats.readsDone += s.stats.readsDone;
      this.stats.pages += s.stats.pages;
      this.stats.resent += s.stats.resent;
      this.stats.bogus += s.stats.bogus;
      this.stats.bogusRejected += s.stats.bogusRejected;
      this.stats.behind += s.stats.behind;
    }
    this.stats.ackedAfterHeal = this.inv.ackedAfterHeal;
  }
}
