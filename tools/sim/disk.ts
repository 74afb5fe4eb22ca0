// Simulated disks. Each node has a log, a state file and a checkpoint.
// Writes to the log and the state file are buffered until a sync completes; a
// crash keeps what was synced and, like a real disk, maybe some prefix of what
// was not (never anything out of order). The checkpoint is written in one
// atomic transaction, durable when the write completes. A bit can flip in a
// durable log record (found by its checksum when the log is opened, as the
// segment log does) or in a checkpoint record (served as it reads).

import type { ChangeEvent, Entry } from '../../src/core/wire.js';
import { CHECKPOINT_FORMAT, CorruptRecordError, type CheckpointDelta, type CheckpointMeta, type CheckpointReader, type HistoryReader, type Rec, type RidRecord, type TimedRec } from '../../src/core/records.js';
import { timedOf } from '../../src/core/state.js';
import { encodeEntryJson } from '../../src/core/entry-text.js';
import { decodeEntry } from '../../src/storage/entry-codec.js';
import { MemHistory } from '../../src/storage/mem-history.js';
import type { DurableState } from '../../src/core/node.js';
import { LogCorruptError } from '../../src/storage/segment-format.js';
import type { Rng } from './prng.js';

type LogOp = { t: 'trunc'; from: number } | { t: 'app'; entries: Entry[] };

function simFail(msg: string): never {
  throw new Error(`sim disk: ${msg}`);
}

/** Contiguous entries with an index offset. */
class Entries {
  list: Entry[] = [];
  /** Index of list[0] (meaningful when non-empty). */
  get first(): number {
    return this.list.length ? this.list[0]!.index : 0;
  }
  get last(): number {
    return this.list.length ? this.list[this.list.length - 1]!.index : 0;
  }
  at(index: number): Entry | undefined {
    if (this.list.length === 0) return undefined;
    return this.list[index - this.first];
  }
  apply(op: LogOp): void {
    if (op.t === 'trunc') {
      if (this.list.length === 0 || op.from > this.last) return;
      this.list.length = Math.max(0, op.from - this.first);
      return;
    }
    for (const e of op.entries) {
      if (this.list.length > 0 && e.index !== this.last + 1) simFail(`append of entry ${e.index} after ${this.last}: the log must stay contiguous`);
      this.list.push(e);
    }
  }
  removeBelow(index: number): void {
    if (this.list.length === 0) return;
    const n = Math.min(this.list.length, Math.max(0, index - this.first));
    if (n > 0) this.list = this.list.slice(n);
  }
  clone(): Entries {
    const c = new Entries();
    c.list = this.list.slice();
    return c;
  }
}

export class SimLog {
  /** What survives a crash for sure. */
  durable = new Entries();
  /** Indexes of durable records whose bytes were damaged. */
  private damaged = new Set<number>();
  /** Issued but not yet synced. */
  private pending: LogOp[] = [];
  /** The log as the writer sees it (durable + pending). */
  view = new Entries();

  hasPending(): boolean {
    return this.pending.length > 0;
  }

  append(entries: Entry[]): void {
    if (entries.length === 0) return;
    // Through the log's own codec, as the segment log writes them: a field it drops is lost here too.
    const op: LogOp = { t: 'app', entries: entries.map((e) => decodeEntry(Buffer.from(encodeEntryJson(e), 'utf8'))) };
    this.view.apply(op);
    this.pending.push(op);
  }

  truncateFrom(from: number): void {
    const op: LogOp = { t: 'trunc', from };
    this.view.apply(op);
    this.pending.push(op);
  }

  /** fsync: everything issued so far is durable. Returns the entries a truncation removed from the durable log. */
  sync(): Entry[] {
    const removed: Entry[] = [];
    for (const op of this.pending) {
      if (op.t === 'trunc' && this.durable.list.length > 0) {
        for (let i = Math.max(op.from, this.durable.first); i <= this.durable.last; i++) {
          removed.push(this.durable.at(i)!);
          this.damaged.delete(i);
        }
      }
      this.durable.apply(op);
    }
    this.pending = [];
    return removed;
  }

  /** The first damaged record, if any (what a repair cuts the log at). */
  firstDamaged(): number | null {
    return this.damaged.size > 0 ? Math.min(...this.damaged) : null;
  }

  /** Repair: the log is cut at its first damaged record (durable at once). */
  cutAtDamage(): void {
    const at = this.firstDamaged();
    if (at === null) return;
    this.durable.apply({ t: 'trunc', from: at });
    this.view = this.durable.clone();
    this.pending = [];
    this.damaged.clear();
  }

  /** A bit flips in one durable record: false if there is none. */
  flip(rng: Rng): number | null {
    if (this.durable.list.length === 0) return null;
    const index = this.durable.first + rng.int(this.durable.list.length);
    this.damaged.add(index);
    return index;
  }

  /** A crash: keep the durable log and maybe a prefix of what was pending (torn at an entry boundary). */
  crash(rng: Rng): void {
    if (this.pending.length > 0 && rng.chance(0.5)) {
      const keep = rng.int(this.pending.length + 1);
      for (let i = 0; i < keep; i++) this.durable.apply(this.pending[i]!);
      const next = this.pending[keep];
      if (next && next.t === 'app' && next.entries.length > 1) {
        this.durable.apply({ t: 'app', entries: next.entries.slice(0, rng.int(next.entries.length)) });
      }
    }
    this.pending = [];
    this.view = this.durable.clone();
  }

  /** Segments wholly below `index` deleted (modelled exactly, durable at once). */
  removeBelow(index: number): void {
    for (const i of this.damaged) if (i < index) this.damaged.delete(i);
    this.durable.removeBelow(index);
    this.view.removeBelow(index);
    for (const op of this.pending) if (op.t === 'app') op.entries = op.entries.filter((e) => e.index >= index);
  }

  /** The whole log replaced (a checkpoint installed from a peer): durable at once. */
  reset(): void {
    this.durable = new Entries();
    this.view = new Entries();
    this.pending = [];
    this.damaged.clear();
  }

  /**
   * What a restart reads, as the segment log reads it: a damaged last record is a torn tail,
   * cut off with a warning; a damaged record anywhere else stops the open.
   */
  open(): { entries: Entry[]; warnings: string[]; maybeLost?: boolean } {
    const warnings: string[] = [];
    let maybeLost = false;
    if (this.damaged.size > 0) {
      const first = Math.min(...this.damaged);
      if (first !== this.durable.last) throw new LogCorruptError(`sim log`, first, `record ${first} fails its checksum (not the last record)`);
      this.durable.apply({ t: 'trunc', from: first });
      this.view = this.durable.clone();
      this.damaged.clear();
      warnings.push(`cut a torn tail at record ${first}`);
      // A whole record failing its checksum (a flipped bit): it may have been acknowledged.
      maybeLost = true;
    }
    return { entries: this.durable.list.slice(), warnings, ...(maybeLost ? { maybeLost } : {}) };
  }
}

/** The state file (the promise, the catch-up flag): written atomically; durable once synced. */
export class SimState {
  durable: DurableState = { promised: 0, catchUp: false };
  private pending: DurableState | null = null;
  write(state: DurableState): void {
    this.pending = { ...state };
  }
  sync(): void {
    if (this.pending !== null) this.durable = this.pending;
    this.pending = null;
  }
  crash(rng: Rng): void {
    if (this.pending !== null && rng.chance(0.5)) this.durable = this.pending;
    this.pending = null;
  }
}

const EMPTY_META: CheckpointMeta = { format: CHECKPOINT_FORMAT, index: 0, epoch: 0, ts: 0, voters: [], eventPrev: 0 };

/** Events a simulated checkpoint keeps: few, so that retention lets go of some in most runs. */
export const SIM_HISTORY_EVENTS_MAX = 300;

/** An in-memory checkpoint: the CheckpointReader the state machine reads, written by deltas. */
export class SimCheckpoint implements CheckpointReader, HistoryReader {
  constructor(private readonly historyMax = SIM_HISTORY_EVENTS_MAX) {
    this.history = new MemHistory(historyMax);
  }
  private history: MemHistory;
  private kv = new Map<string, Rec>();
  /** Keys whose stored record was damaged: reading them fails their checksum, as in LMDB. */
  private damaged = new Set<string>();
  private sorted: string[] | null = null;
  private ridMap = new Map<string, RidRecord>();
  private m: CheckpointMeta = EMPTY_META;

  meta(): CheckpointMeta {
    return this.m;
  }
  get(key: string): Rec | undefined {
    if (this.damaged.has(key)) throw new CorruptRecordError(`record of key ${JSON.stringify(key)}`, 'fails its checksum');
    return this.kv.get(key);
  }
  range(prefix: string, start: string | undefined, limit: number): Array<[string, Rec]> {
    if (!this.sorted) this.sorted = [...this.kv.keys()].sort(byteOrder);
    const out: Array<[string, Rec]> = [];
    for (const k of this.sorted) {
      if (out.length >= limit) break;
      if (!k.startsWith(prefix)) continue;
      if (start !== undefined && byteOrder(k, start) <= 0) continue;
      out.push([k, this.get(k)!]);
    }
    return out;
  }
  rids(): Array<[string, RidRecord]> {
    return [...this.ridMap].sort((a, b) => a[1].index - b[1].index);
  }
  counts(): { keys: number; rids: number } {
    return { keys: this.kv.size, rids: this.ridMap.size };
  }
  ttlKeys(): Array<[string, TimedRec]> {
    const out: Array<[string, TimedRec]> = [];
    // (As LMDB's: the index is kept apart from the records, so a damaged record is still in it.)
    for (const [k, r] of this.kv) if (r.ttl !== undefined || r.lease !== undefined) out.push([k, timedOf(r)]);
    return out;
  }
  /** One atomic write transaction. */
  write(delta: CheckpointDelta): void {
    if (delta.meta.index < this.m.index) simFail(`checkpoint going back from ${this.m.index} to ${delta.meta.index}`);
    for (const [k, rec] of delta.kv) {
      // A record written anew is whole again.
      this.damaged.delete(k);
      if (rec === null) this.kv.delete(k);
      else this.kv.set(k, rec);
    }
    for (const [rid, rec] of delta.ridsSet) this.ridMap.set(rid, rec);
    for (const rid of delta.ridsDel) this.ridMap.delete(rid);
    if (delta.events !== undefined) {
      for (const ev of delta.events) if (ev.index <= this.m.index || ev.index > delta.meta.index) simFail(`checkpoint event at ${ev.index} outside ${this.m.index + 1}..${delta.meta.index}`);
    }
    this.history.add(delta.events, delta.meta.index);
    this.m = { ...delta.meta, voters: [...delta.meta.voters] };
    this.sorted = null;
  }
  historyFloor(): number {
    return this.history.historyFloor();
  }
  historyCount(): number {
    return this.history.historyCount();
  }
  events(from: number, key?: string): Iterable<ChangeEvent> {
    return this.history.events(from, key);
  }
  keyEventsBefore(key: string, below: number): Iterable<ChangeEvent> {
    return this.history.keyEventsBefore(key, below);
  }
  /** A copy (a checkpoint transfer to a peer). */
  clone(): SimCheckpoint {
    const c = new SimCheckpoint(this.historyMax);
    c.history = this.history.clone();
    c.kv = new Map(this.kv);
    c.damaged = new Set(this.damaged);
    c.ridMap = new Map(this.ridMap);
    c.m = { ...this.m, voters: [...this.m.voters] };
    return c;
  }
  entries(): Array<[string, Rec]> {
    return this.range('', undefined, Number.MAX_SAFE_INTEGER);
  }
  /** Some record is damaged (and not yet rewritten). */
  hasDamage(): boolean {
    return this.damaged.size > 0;
  }

  /** A bit flips in one stored record (its checksum no longer matches): the key, or null if none. */
  flip(rng: Rng): string | null {
    if (this.kv.size === 0) return null;
    const keys = [...this.kv.keys()].sort(byteOrder);
    const key = keys[rng.int(keys.length)]!;
    this.damaged.add(key);
    return key;
  }
}

export function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export class SimDisk {
  log = new SimLog();
  state = new SimState();
  ckpt = new SimCheckpoint();

  /**
   * What the server's shell does when the replica finds its data damaged (RepairNeeded, or a
   * damaged record when it opens): a damaged checkpoint is replaced by an empty one and the log
   * kept only if it reaches back to entry 1; a damaged log is cut at its first bad record; the
   * server is marked catching up (it may have lost what it acknowledged).
   */
  /** Damage not found yet (a flipped bit in the log or the checkpoint). */
  hasDamage(): boolean {
    return this.log.firstDamaged() !== null || this.ckpt.hasDamage();
  }

  repair(checkpoint: boolean): void {
    if (checkpoint) {
      this.ckpt = new SimCheckpoint();
      if (this.log.durable.first !== 1) this.log.reset();
    }
    this.log.cutAtDamage();
    this.state.durable = { ...this.state.durable, catchUp: true };
  }
}
