// Simulated disks. Each node has a log, a promise file and a checkpoint.
// Writes to the log and the promise are buffered until a sync completes; a
// crash keeps what was synced and, like a real disk, maybe some prefix of what
// was not (never anything out of order). The checkpoint is written in one
// atomic transaction, durable when the write completes.

import type { Entry } from '../../src/core/wire.js';
import type { CheckpointDelta, CheckpointMeta, CheckpointReader, Rec, RidRecord } from '../../src/core/records.js';
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
  /** Issued but not yet synced. */
  private pending: LogOp[] = [];
  /** The log as the writer sees it (durable + pending). */
  view = new Entries();

  hasPending(): boolean {
    return this.pending.length > 0;
  }

  append(entries: Entry[]): void {
    if (entries.length === 0) return;
    const op: LogOp = { t: 'app', entries: entries.slice() };
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
        for (let i = Math.max(op.from, this.durable.first); i <= this.durable.last; i++) removed.push(this.durable.at(i)!);
      }
      this.durable.apply(op);
    }
    this.pending = [];
    return removed;
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
    this.durable.removeBelow(index);
    this.view.removeBelow(index);
    for (const op of this.pending) if (op.t === 'app') op.entries = op.entries.filter((e) => e.index >= index);
  }

  /** The whole log replaced (a checkpoint installed from a peer): durable at once. */
  reset(): void {
    this.durable = new Entries();
    this.view = new Entries();
    this.pending = [];
  }

  /** What a restart reads. */
  open(): Entry[] {
    return this.durable.list.slice();
  }
}

/** The promise file: written atomically; durable once synced. */
export class SimPromise {
  durable = 0;
  private pending: number | null = null;
  write(epoch: number): void {
    this.pending = epoch;
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

const EMPTY_META: CheckpointMeta = { format: 1, index: 0, epoch: 0, ts: 0, voters: [], eventPrev: 0 };

/** An in-memory checkpoint: the CheckpointReader the state machine reads, written by deltas. */
export class SimCheckpoint implements CheckpointReader {
  private kv = new Map<string, Rec>();
  private sorted: string[] | null = null;
  private ridMap = new Map<string, RidRecord>();
  private m: CheckpointMeta = EMPTY_META;

  meta(): CheckpointMeta {
    return this.m;
  }
  get(key: string): Rec | undefined {
    return this.kv.get(key);
  }
  range(prefix: string, start: string | undefined, limit: number): Array<[string, Rec]> {
    if (!this.sorted) this.sorted = [...this.kv.keys()].sort(byteOrder);
    const out: Array<[string, Rec]> = [];
    for (const k of this.sorted) {
      if (out.length >= limit) break;
      if (!k.startsWith(prefix)) continue;
      if (start !== undefined && byteOrder(k, start) <= 0) continue;
      out.push([k, this.kv.get(k)!]);
    }
    return out;
  }
  rids(): Array<[string, RidRecord]> {
    return [...this.ridMap].sort((a, b) => a[1].index - b[1].index);
  }
  /** One atomic write transaction. */
  write(delta: CheckpointDelta): void {
    if (delta.meta.index < this.m.index) simFail(`checkpoint going back from ${this.m.index} to ${delta.meta.index}`);
    for (const [k, rec] of delta.kv) {
      if (rec === null) this.kv.delete(k);
      else this.kv.set(k, rec);
    }
    for (const [rid, rec] of delta.ridsSet) this.ridMap.set(rid, rec);
    for (const rid of delta.ridsDel) this.ridMap.delete(rid);
    this.m = { ...delta.meta, voters: [...delta.meta.voters] };
    this.sorted = null;
  }
  /** A copy (a checkpoint transfer to a peer). */
  clone(): SimCheckpoint {
    const c = new SimCheckpoint();
    c.kv = new Map(this.kv);
    c.ridMap = new Map(this.ridMap);
    c.m = { ...this.m, voters: [...this.m.voters] };
    return c;
  }
  entries(): Array<[string, Rec]> {
    return this.range('', undefined, Number.MAX_SAFE_INTEGER);
  }
}

export function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export class SimDisk {
  log = new SimLog();
  promise = new SimPromise();
  ckpt = new SimCheckpoint();
}
