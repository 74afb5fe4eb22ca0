// Storage ports. The server's driver uses these; each has a real adapter
// (segment files, LMDB) and an in-memory twin for tests and the simulation.

import type { Entry, WriteResult } from '../core/wire.js';

/** A stored value with the log position that wrote it. */
export interface Rec {
  value: string;
  /** Log index of the write that set it. */
  rev: number;
  /** Lamport ts of that write. */
  ts: number;
}

/** What the exactly-once table remembers of one request id. */
export interface RidRecord {
  index: number;
  ts: number;
  result: WriteResult;
}

/** The checkpoint's metadata: the state it holds is exactly the log applied up to `index`. */
export interface CheckpointMeta {
  /** Format version of the checkpoint layout. */
  format: number;
  index: number;
  epoch: number;
  ts: number;
  voters: number[];
  /** Servers kept out of the voters (operator removals), when any. */
  keepOut?: number[];
  /** Index of the last entry (<= index) that produced change events; 0 if none. */
  eventPrev: number;
}

/** Changes since the last checkpoint, written in one transaction. */
export interface CheckpointDelta {
  /** Keys set (rec) or deleted (null), each at most once. */
  kv: Array<[key: string, rec: Rec | null]>;
  /** Request ids added, and ids forgotten (evicted) since the last checkpoint. */
  ridsSet: Array<[rid: string, rec: RidRecord]>;
  ridsDel: string[];
  meta: CheckpointMeta;
}

/** Read side of the checkpoint, synchronous (LMDB reads are). */
export interface CheckpointReader {
  meta(): CheckpointMeta;
  get(key: string): Rec | undefined;
  /** Keys with this prefix, in byte order, strictly after `start` when given, at most `limit`. */
  range(prefix: string, start: string | undefined, limit: number): Array<[string, Rec]>;
  /** Every remembered request id (loaded once at start), in index order. */
  rids(): Array<[string, RidRecord]>;
}

export interface CheckpointStore extends CheckpointReader {
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
}

export interface StateFile {
  read(): PromiseState;
  /** Write atomically and fsync before resolving. */
  write(state: PromiseState): Promise<void>;
}
