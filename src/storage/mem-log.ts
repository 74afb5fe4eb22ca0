// The in-memory twin of SegmentLog for tests and the deterministic simulation.
// It models durability the way SegmentLog provides it:
//   - append() is lost on a crash until a sync() covers it;
//   - truncateFrom() is durable when it returns (SegmentLog fsyncs it at once);
//   - removeBelow() only forgets entries that were already durable.
// crash() returns what a restart would find on disk; a new MemLog built from
// it is the restarted log. Everything is synchronous except sync(), whose
// promise resolves on the next microtask (the entries are durable from the call).
// Entries are stored by reference: callers must treat them as immutable.

import { ENTRY_BYTES_MAX } from '../core/limits.js';
import type { Entry } from '../core/wire.js';
import { entryBytes } from '../core/entry-text.js';
import type { LogOpenResult, LogStore } from './ports.js';
import { RECORD_HEADER_BYTES } from './segment-format.js';

export class MemLog implements LogStore {
  private entries: Entry[] = [];
  /** cum[i]: record bytes (as SegmentLog writes them) up to and including entries[i], counted from `base`. */
  private cum: number[] = [];
  /** The cum value just before entries[0] (removeBelow keeps counting from there). */
  private base = 0;
  /** entries[0, durableCount) survive a crash. */
  private durableCount = 0;
  private crashed = false;
  private closed = false;

  syncCalls = 0;
  fsyncRounds = 0;

  /** A log holding `entries` (contiguous), all durable: what a restart finds. */
  constructor(entries: readonly Entry[] = []) {
    if (entries.length > 0) this.append([...entries]);
    this.durableCount = this.entries.length;
  }

  /** Like SegmentLog.open: the log plus what it holds. */
  static open(entries: readonly Entry[] = []): LogOpenResult & { log: MemLog } {
    const log = new MemLog(entries);
    return { log, entries: log.all(), warnings: [] };
  }

  get last(): number {
    const n = this.entries.length;
    return n === 0 ? 0 : this.entries[n - 1]!.index;
  }

  get first(): number {
    return this.entries.length === 0 ? 0 : this.entries[0]!.index;
  }

  /** Highest index that would survive a crash now. */
  get durable(): number {
    return this.durableCount === 0 ? 0 : this.entries[this.durableCount - 1]!.index;
  }

  /** Every entry held (durable or not), in order. */
  all(): Entry[] {
    return this.entries.slice();
  }

  private check(): void {
    if (this.crashed) throw new Error('MemLog: used after crash()');
    if (this.closed) throw new Error('MemLog: closed');
  }

  append(entries: Entry[]): void {
    this.check();
    const n = entries.length;
    if (n === 0) return;
    const last = this.last;
    const start = last === 0 ? entries[0]!.index : last + 1;
    if (!Number.isSafeInteger(start) || start < 1) throw new Error(`log append: bad entry index ${start}`);
    // Check everything first, as SegmentLog does, so a bad batch changes nothing.
    const sizes = new Array<number>(n);
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      if (e.index !== start + i) {
        throw new Error(`log append: entry index ${e.index} does not follow on (expected ${start + i}, last is ${last})`);
      }
      const len = entryBytes(e);
      if (len > ENTRY_BYTES_MAX) {
        throw new Error(`log append: entry ${e.index} is ${len} bytes, more than ENTRY_BYTES_MAX (${ENTRY_BYTES_MAX})`);
      }
      sizes[i] = RECORD_HEADER_BYTES + len;
    }
    let total = this.cum.length === 0 ? this.base : this.cum[this.cum.length - 1]!;
    for (let i = 0; i < n; i++) {
      total += sizes[i]!;
      this.entries.push(entries[i]!);
      this.cum.push(total);
    }
  }

  truncateFrom(from: number): void {
    this.check();
    if (!Number.isSafeInteger(from) || from < 0) throw new Error(`log truncateFrom: bad index ${from}`);
    const first = this.first;
    if (first === 0 || from > this.last) return;
    const keep = from <= first ? 0 : from - first;
    this.entries.length = keep;
    this.cum.length = keep;
    if (this.durableCount > keep) this.durableCount = keep;
  }

  sync(): Promise<void> {
    try {
      this.check();
    } catch (err) {
      return Promise.reject(err);
    }
    this.syncCalls++;
    if (this.durableCount !== this.entries.length) {
      this.durableCount = this.entries.length;
      this.fsyncRounds++;
    }
    return Promise.resolve();
  }

  async removeBelow(index: number): Promise<void> {
    this.check();
    // Keep the last entry (SegmentLog never removes the last segment) and anything not yet durable.
    let drop = 0;
    const limit = Math.min(this.entries.length - 1, this.durableCount);
    while (drop < limit && this.entries[drop]!.index < index) drop++;
    if (drop === 0) return;
    this.base = this.cum[drop - 1]!;
    this.entries.splice(0, drop);
    this.cum.splice(0, drop);
    this.durableCount -= drop;
  }

  bytesAfter(index: number): number {
    const n = this.entries.length;
    if (n === 0 || index >= this.last) return 0;
    const i = index - this.first;
    return this.cum[n - 1]! - (i < 0 ? this.base : this.cum[i]!);
  }

  /**
   * Simulate a crash: this log becomes unusable and the result is what was
   * durable, plus the first `keepUnsynced` unsynced entries (the OS may have
   * written some of them before the crash: a torn tail keeps a prefix).
   */
  crash(keepUnsynced = 0): Entry[] {
    if (this.crashed) throw new Error('MemLog: used after crash()');
    this.crashed = true;
    const keep = Math.min(this.entries.length, this.durableCount + Math.max(0, keepUnsynced));
    return this.entries.slice(0, keep);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
