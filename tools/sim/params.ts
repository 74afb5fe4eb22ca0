// Per-seed parameters of a simulation run: the workload, the network, the
// disks, and how often each kind of fault strikes. Every knob is drawn from
// the seed, so that some seeds concentrate on one kind of fault; a knob can
// also be forced from the command line (sim-soak --set name=value).

import type { Rng } from './prng.js';

export type FaultKind =
  | 'partition'
  | 'oneway'
  | 'isolate'
  | 'heal'
  | 'crash'
  | 'crashAll'
  | 'pause'
  | 'loss'
  | 'dup'
  | 'slow'
  | 'join'
  | 'remove'
  /** A server restarted with an empty data directory under the same id. */
  | 'wipe'
  /** A bit flipped in one record of one server's log, or of its checkpoint. */
  | 'flipLog'
  | 'flipCheckpoint'
  /** Someone on the NATS server publishes forged peer messages: unsealed, or sealed with epochs and clocks far ahead. */
  | 'forge';

export const FAULT_KINDS: readonly FaultKind[] = ['partition', 'oneway', 'isolate', 'heal', 'crash', 'crashAll', 'pause', 'loss', 'dup', 'slow', 'join', 'remove', 'wipe', 'flipLog', 'flipCheckpoint', 'forge'];

export interface Params {
  sessions: number;
  mainKeys: number;
  lossMax: number;
  dupMax: number;
  slowMax: number;
  clientLoss: number;
  faultGapMs: [number, number];
  downMs: [number, number];
  /** Chance that a server crashes right after an fsync, before it sends anything. */
  crashAfterSync: number;
  crashAfterCheckpoint: number;
  /** Chance that a server crashes right after sending a message (before anything else it had issued is durable). */
  crashAfterSend: number;
  slowDisk: boolean;
  /** How often each kind of fault is chosen. */
  faultWeights: Record<FaultKind, number>;
  /** Spread of the nodes' tick rates (clock drift), as a fraction. */
  drift: number;
  /** Membership changes: servers join (as learners, promoted when caught up) and are removed. */
  membership: boolean;
  /** Automatic removal of a voter dead this long (0: never). */
  removeDeadAfterTicks: number;
  retain: number;
  /** Bytes of log kept below a checkpoint: small values compact by bytes rather than by count. */
  retainBytes: number;
  /** Records not yet checkpointed past which the coordinator refuses new writes and a follower takes no new entries (off unless set: `--set dirtyMax=8`). */
  dirtyMax: number;
  /** A bit flip in a checkpoint goes to a server receiving a checkpoint transfer, when one is (off unless set: `--set flipReceiving=true`). */
  flipReceiving: boolean;
  ckptEveryMs: [number, number];
  /** Entries per replication message: small values make catch-up take many rounds. */
  replEntriesMax: number;
  /** Items per checkpoint-transfer page: small values make transfers take many pages. */
  snapshotPageItems: number;
  /** Chance that a page answer comes twice, and that a stale page answers a later request. */
  pageDup: number;
  pageStale: number;
  /** Peer messages travel as JSON through the transport's validation (else as frozen objects). */
  wire: boolean;
  /**
   * Share of client ops that are data-model ops (cas by revision, create, prefix delete).
   * Not drawn from the seed: at 0 a run makes exactly the draws it made before these ops
   * existed, so the regression seeds found earlier replay as they were (they set it to 0).
   */
  dataOps: number;
}

/** Faults that are off unless asked for: each finds a hole not closed yet (see the notes in test/simulation.test.ts). */
export const FAULTS_OFF_BY_DEFAULT: readonly FaultKind[] = [];

export function drawParams(pr: Rng, enabled: readonly FaultKind[] = []): Params {
  const p: Params = {
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
    crashAfterSend: 0,
    slowDisk: pr.chance(0.25),
    drift: pr.pick([0.02, 0.05, 0.3]),
    membership: false,
    removeDeadAfterTicks: 0,
    faultWeights: pr.chance(0.3)
      ? { partition: 14, oneway: 10, isolate: 6, heal: 16, crash: 16, crashAll: 3, pause: 8, loss: 10, dup: 7, slow: 10, join: 0, remove: 0, wipe: 2, flipLog: 2, flipCheckpoint: 2, forge: 3 }
      : {
          partition: pr.pick([0, 5, 15, 30]),
          oneway: pr.pick([0, 5, 15, 30]),
          isolate: pr.pick([0, 5, 15]),
          heal: pr.pick([5, 15, 30]),
          crash: pr.pick([0, 5, 15, 30]),
          crashAll: pr.pick([0, 1, 3, 8]),
          pause: pr.pick([0, 5, 15]),
          loss: pr.pick([0, 5, 10]),
          dup: pr.pick([0, 5, 10]),
          slow: pr.pick([0, 5, 10]),
          join: 0,
          remove: 0,
          wipe: pr.pick([0, 2, 6]),
          flipLog: pr.pick([0, 2, 6]),
          flipCheckpoint: pr.pick([0, 2, 6]),
          forge: 0,
        },
    retain: pr.chance(0.5) ? 1_000_000_000 : pr.range(0, 40),
    ckptEveryMs: pr.pick([
      [50, 400],
      [300, 3000],
    ] as Array<[number, number]>),
    replEntriesMax: pr.pick([512, 512, 16, 3]),
    snapshotPageItems: pr.pick([2000, 64, 8]),
    pageDup: pr.pick([0, 0.1, 0.3]),
    pageStale: pr.pick([0, 0.05, 0.2]),
    wire: pr.chance(0.5),
    dataOps: 0.08,
    retainBytes: 1_000_000_000,
    dirtyMax: 1_000_000_000,
    flipReceiving: false,
  };
  if (pr.chance(0.3)) {
    p.membership = true;
    p.removeDeadAfterTicks = pr.pick([0, 30, 80]);
    p.faultWeights.join = pr.pick([3, 8]);
    p.faultWeights.remove = pr.pick([2, 6]);
  }
  p.crashAfterSend = pr.pick([0, 0.0005, 0.002]);
  if (p.faultWeights.forge === 0) p.faultWeights.forge = pr.pick([0, 2, 5]);
  // (Drawn last: the draws above stay as they were for seeds noted before.)
  p.retainBytes = pr.pick([1_000_000_000, 1_000_000_000, 4096, 400]);
  for (const k of FAULTS_OFF_BY_DEFAULT) if (!enabled.includes(k)) p.faultWeights[k] = 0;
  return p;
}

/** Force knobs, e.g. ["replEntriesMax=3", "faultWeights.crashAll=20"] (numbers and booleans). */
export function overrideParams(p: Params, sets: readonly string[]): void {
  for (const s of sets) {
    const m = /^([a-zA-Z.]+)=(.+)$/.exec(s);
    if (!m) throw new Error(`--set takes name=value, not ${s}`);
    const path = m[1]!.split('.');
    const raw = m[2]!;
    const value: unknown = raw === 'true' ? true : raw === 'false' ? false : raw.includes(',') ? raw.split(',').map(Number) : Number(raw);
    if (typeof value === 'number' && Number.isNaN(value)) throw new Error(`--set ${s}: not a number`);
    let o = p as unknown as Record<string, unknown>;
    for (const k of path.slice(0, -1)) {
      if (typeof o[k] !== 'object' || o[k] === null) throw new Error(`--set ${s}: no such knob`);
      o = o[k] as Record<string, unknown>;
    }
    const last = path[path.length - 1]!;
    if (!(last in o)) throw new Error(`--set ${s}: no such knob`);
    o[last] = value;
  }
}
