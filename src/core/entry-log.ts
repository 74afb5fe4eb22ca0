// The protocol's view of the log: the entries held in memory after a base
// position (the entry just below them: the checkpoint's, or the oldest one
// compacted away), with index arithmetic, epoch and ts lookup, slicing for
// replication messages, truncation, compaction and the configuration in force
// at any index. Pure bookkeeping: what to persist is the Node's business.

import { entryBytes } from './entry-text.js';
import { REPL_BYTES_MAX } from './limits.js';
import type { Entry } from './wire.js';
import { assert } from './assert.js';

export interface Position {
  index: number;
  epoch: number;
  ts: number;
}

export interface Config {
  voters: number[];
  keepOut: number[];
}


const sorted = (xs: number[]): number[] => [...xs].sort((a, b) => a - b);

export class EntryLog {
  /** entries[i] has index base.index + 1 + i. */
  private entries: Entry[];
  private base: Position;
  /** The configuration as of the base position. */
  private baseConfig: Config;

  constructor(base: Position, entries: Entry[], baseConfig: Config) {
    this.base = { ...base };
    this.entries = [...entries];
    this.baseConfig = { voters: sorted(baseConfig.voters), keepOut: sorted(baseConfig.keepOut) };
    for (let i = 0; i < this.entries.length; i++) assert(this.entries[i]!.index === base.index + 1 + i, 'log must be contiguous');
  }

  /** Index of the entry just below the in-memory log. */
  get offset(): number {
    return this.base.index;
  }
  get first(): number {
    return this.base.index + 1;
  }
  get last(): number {
    return this.base.index + this.entries.length;
  }
  get lastEpoch(): number {
    return this.entries.length ? this.entries[this.entries.length - 1]!.epoch : this.base.epoch;
  }
  get lastTs(): number {
    return this.entries.length ? this.entries[this.entries.length - 1]!.ts : this.base.ts;
  }

  /** The entry at index, if in memory. */
  at(index: number): Entry | undefined {
    return this.entries[index - this.base.index - 1];
  }
  /** Epoch of the entry at index (the base's too); undefined when below the base or beyond the end. */
  epochAt(index: number): number | undefined {
    if (index === this.base.index) return this.base.epoch;
    return this.at(index)?.epoch;
  }
  tsAt(index: number): number {
    if (index === this.base.index) return this.base.ts;
    const e = this.at(index);
    assert(e !== undefined, `ts of entry ${index} outside the log`);
    return e.ts;
  }

  append(e: Entry): void {
    assert(e.index === this.last + 1, `append ${e.index} after ${this.last}`);
    assert(e.ts > this.lastTs || e.index === 1, `ts must increase along the log at ${e.index}`);
    this.entries.push(e);
  }

  /** Drop the entries from `from` on. */
  truncateFrom(from: number): void {
    if (from > this.last) return;
    this.entries.length = Math.max(0, from - this.base.index - 1);
  }

  /** Entries from..to: all of them, or at most `count` and (roughly) REPL_BYTES_MAX (at least one). */
  slice(from: number, to: number, count?: number): Entry[] {
    if (count === undefined) return this.entries.slice(from - this.base.index - 1, to - this.base.index);
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = from; i <= to && out.length < count; i++) {
      const e = this.at(i)!;
      const size = entryBytes(e);
      if (out.length > 0 && bytes + size > REPL_BYTES_MAX) break;
      bytes += size;
      out.push(e);
    }
    return out;
  }

  /**
   * Where to compact so that the entries kept at or below `upTo` hold at most `bytes` bytes
   * encoded: the highest index whose entry would take them past it (0 when all above
   * `downTo` fit: nothing at or below it is looked at, it goes anyway).
   */
  bytesFloor(upTo: number, bytes: number, downTo = 0): number {
    let sum = 0;
    for (let i = Math.min(upTo, this.last); i > Math.max(this.base.index, downTo); i--) {
      sum += entryBytes(this.at(i)!);
      if (sum > bytes) return i;
    }
    return 0;
  }

  /** Forget the entries up to `upTo` (they are in a checkpoint): it becomes the base. */
  compact(upTo: number): void {
    if (upTo <= this.base.index) return;
    const e = this.at(upTo)!;
    this.baseConfig = this.configAt(upTo);
    this.entries = this.entries.slice(upTo - this.base.index);
    this.base = { index: e.index, epoch: e.epoch, ts: e.ts };
  }

  /**
   * A checkpoint at `base` replaces what lies below it. The entries after it are kept when the
   * log holds its last entry (same index and epoch); returns whether they were.
   */
  restore(base: Position, config: Partial<Config>): boolean {
    const keep = base.index <= this.last && this.epochAt(base.index) === base.epoch;
    if (keep) {
      assert(this.tsAt(base.index) === base.ts, `checkpoint entry ${base.index} has the same epoch but not the same ts`);
      this.entries = this.entries.slice(base.index - this.base.index);
    } else this.entries = [];
    this.base = { ...base };
    this.baseConfig = {
      voters: config.voters !== undefined && config.voters.length > 0 ? sorted(config.voters) : this.baseConfig.voters,
      keepOut: config.keepOut !== undefined ? sorted(config.keepOut) : this.baseConfig.keepOut,
    };
    return keep;
  }

  /** The configuration as of entry `index`: the newest configuration entry at or below it. */
  configAt(index: number): Config {
    for (let i = Math.min(index, this.last); i > this.base.index; i--) {
      const e = this.at(i)!;
      if (e.kind === 'config') return { voters: e.voters, keepOut: e.keepOut ?? [] };
    }
    return this.baseConfig;
  }

  /** Where the newest configuration entry in memory is; 0/0 when the configuration is the base's. */
  configPosition(): { index: number; epoch: number } {
    for (let i = this.last; i > this.base.index; i--) {
      const e = this.at(i)!;
      if (e.kind === 'config') return { index: e.index, epoch: e.epoch };
    }
    return { index: 0, epoch: 0 };
  }

  /** A configuration entry above `index` (a change not yet committed when index is the commit). */
  configAbove(index: number): boolean {
    for (let i = this.last; i > index; i--) if (this.at(i)!.kind === 'config') return true;
    return false;
  }
}
