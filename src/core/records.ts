// What the state machine stores and reads back: records, the exactly-once
// table, and the checkpoint it sits on (its metadata, the delta a checkpoint
// writes, and the synchronous read port). Storage implements these; the core
// owns them.

import type { WriteResult } from './wire.js';

/** Layout version of a checkpoint (its meta carries it). */
export const CHECKPOINT_FORMAT = 1;

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
