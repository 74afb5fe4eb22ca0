// Storage ports. The server's driver uses these; each has a real adapter
// (segment files, LMDB) and an in-memory twin for tests and the simulation.

import type { Entry } from '../core/wire.js';
import type { CheckpointDelta, CheckpointReader, HistoryReader, Rec } from '../core/records.js';

export interface CheckpointStore extends CheckpointReader, HistoryReader {
  /** Apply a delta in one write transaction; resolves once durable. Never blocks reads. */
  write(delta: CheckpointDelta): Promise<void>;
  /** All key/value pairs in key order (for dump, diff, snapshot transfer). */
  entries(): Iterable<[string, Rec]>;
  /** A digest of the logical state (kv + meta.index): equal digests mean equal state. */
  digest(): string;
  close(): Promise<void>;
}

/** What opening a log found. */
export interface LogOpenResult {
  /** Every entry still on disk, in index order (contiguous). */
  entries: Entry[];
  /** Human-readable warnings, e.g. a torn tail that was cut. */
  warnings: string[];
  /**
   * A whole record at the end failed its checksum and was cut: it may have been written and
   * fsync'd (and acknowledged) before its bytes went bad, so the server must catch up before
   * it votes. (A record cut short is a write the crash interrupted: never acknowledged.)
   */
  maybeLost?: boolean;
}

/** The append-only event log. Appends are buffered until sync(). */
export interface LogStore {
  /** Index of the last entry written (0 when empty). */
  readonly last: number;
  /** Append entries; each must follow on from the last. Not durable until sync() resolves. */
  append(entries: Entry[]): void;
  /** Remove entries with index >= from (a conflicting suffix). Durable at the next sync(). */
  truncateFrom(from: number): void;
  /** fsync everything appended or truncated so far. Concurrent calls share work. */
  sync(): Promise<void>;
  /** Delete segment files that lie wholly below `index`. */
  removeBelow(index: number): Promise<void>;
  /** Bytes appended since entry `index` (for the checkpoint size trigger). */
  bytesAfter(index: number): number;
  close(): Promise<void>;
}

/** The durable promise of a voter (DESIGN §4 `<data>/state`). */
export interface PromiseState {
  /** Highest epoch promised. */
  promised: number;
  /** Set while the server is a catch-up member (it lost data it may have acknowledged). */
  catchUp?: boolean;
}

export interface StateFile {
  read(): PromiseState;
  /** Write atomically and fsync before resolving. */
  write(state: PromiseState): Promise<void>;
}
