// What the state machine stores and reads back: records, the exactly-once
// table, and the checkpoint it sits on (its metadata, the delta a checkpoint
// writes, and the synchronous read port). Storage implements these; the core
// owns them.

import { CLUSTER_ID_PATTERN, KEY_BYTES_MAX, RID_BYTES_MAX, TTL_MS_MAX, TTL_MS_MIN } from './limits.js';
import type { ChangeEvent, WriteResult } from './wire.js';

/** Layout version of a checkpoint (its meta carries it). */
export const CHECKPOINT_FORMAT = 2;

/**
 * A stored record failed its checksum (or does not decode): the server must not serve it.
 * `what` names the record (a key, a request id, the meta).
 */
export class CorruptRecordError extends Error {
  constructor(readonly what: string, readonly detail: string) {
    super(`checkpoint: ${what}: ${detail}`);
    this.name = 'CorruptRecordError';
  }
}

/** A stored value with the log position that wrote it. */
export interface Rec {
  value: string;
  /** Log index of the write that set it. */
  rev: number;
  /** Lamport ts of that write. */
  ts: number;
  /** Time to live in ms, counted from that write (the coordinator expires it). */
  ttl?: number;
  /** The value is the base64 of bytes. */
  b64?: true;
  /** The lease it is attached to (deleted with it). */
  lease?: number;
}

/** What the index of timed keys holds of a record: a key with a ttl, or attached to a lease. */
export interface TimedRec {
  rev: number;
  ttl?: number;
  lease?: number;
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
  /** The cluster's identity, once its first entry is in the checkpoint. */
  cluster?: string;
}

/** Changes since the last checkpoint, written in one transaction. */
export interface CheckpointDelta {
  /** Keys set (rec) or deleted (null), each at most once. */
  kv: Array<[key: string, rec: Rec | null]>;
  /** Request ids added, and ids forgotten (evicted) since the last checkpoint. */
  ridsSet: Array<[rid: string, rec: RidRecord]>;
  ridsDel: string[];
  meta: CheckpointMeta;
  /**
   * The change events of the entries after the checkpoint's index through meta.index, in log
   * order: kept as history. Absent: the history starts over at meta.index (a checkpoint taken
   * from a peer or a backup holds the state, not how it came about).
   */
  events?: ChangeEvent[];
}

/** Read side of the checkpoint, synchronous (LMDB reads are). */
export interface CheckpointReader {
  meta(): CheckpointMeta;
  get(key: string): Rec | undefined;
  /** Keys with this prefix, in byte order, strictly after `start` when given, at most `limit`. */
  range(prefix: string, start: string | undefined, limit: number): Array<[string, Rec]>;
  /** Every remembered request id (loaded once at start), in index order. */
  rids(): Array<[string, RidRecord]>;
  /** How many keys and request ids it holds. */
  counts(): { keys: number; rids: number };
  /** Every key that has a time to live or a lease, with the revision, ttl and lease of its record. */
  ttlKeys(): Array<[key: string, rec: TimedRec]>;
}

/**
 * The checkpoint's durable history: the change events of the entries it holds, from
 * historyFloor() + 1 through meta().index, all of them (older ones were let go by retention).
 */
export interface HistoryReader {
  historyFloor(): number;
  /** How many events are kept. */
  historyCount(): number;
  /** Kept events at indexes >= from, in log order; only those of `key` when given. */
  events(from: number, key?: string): Iterable<ChangeEvent>;
  /** Kept events of `key` at indexes < below, newest first. */
  keyEventsBefore(key: string, below: number): Iterable<ChangeEvent>;
}

// ---------------------------------------------------------------------------
// Shapes, checked on every record read from disk and every page a peer sends.

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/** Standard base64 with padding, in its one canonical spelling (so equal bytes are equal text). */
export function isBase64(s: string): boolean {
  return s.length % 4 === 0 && /^[A-Za-z0-9+/]*={0,2}$/.test(s) && Buffer.from(s, 'base64').toString('base64') === s;
}

function isNat(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function extraField(o: Record<string, unknown>, allowed: readonly string[]): string | null {
  for (const k in o) if (!allowed.includes(k)) return k;
  return null;
}

export function metaProblem(x: unknown): string | null {
  if (!isObject(x)) return 'meta is not an object';
  const extra = extraField(x, ['format', 'index', 'epoch', 'ts', 'voters', 'keepOut', 'eventPrev', 'cluster']);
  if (extra !== null) return `meta has unknown field "${extra}"`;
  if (x.format !== CHECKPOINT_FORMAT) return `meta.format is ${JSON.stringify(x.format)}, expected ${CHECKPOINT_FORMAT}`;
  for (const f of ['index', 'epoch', 'ts', 'eventPrev'] as const) {
    if (!isNat(x[f])) return `meta.${f} is not a non-negative integer`;
  }
  if ((x.eventPrev as number) > (x.index as number)) return `meta.eventPrev ${String(x.eventPrev)} is beyond meta.index ${String(x.index)}`;
  if (!Array.isArray(x.voters)) return 'meta.voters is not an array';
  for (const v of x.voters) if (!isNat(v) || v < 1) return 'meta.voters holds something other than positive integers';
  if (x.cluster !== undefined && (typeof x.cluster !== 'string' || !CLUSTER_ID_PATTERN.test(x.cluster))) return 'meta.cluster is not a cluster identity';
  if (x.keepOut !== undefined) {
    if (!Array.isArray(x.keepOut)) return 'meta.keepOut is not an array';
    for (const v of x.keepOut) if (!isNat(v) || v < 1) return 'meta.keepOut holds something other than positive integers';
  }
  return null;
}

/** A change event as stored in the history (or sent by a peer). */
export function eventProblem(x: unknown): string | null {
  if (!isObject(x)) return 'event is not an object';
  const extra = extraField(x, ['index', 'ts', 'op', 'key', 'value', 'b64', 'lease', 'prev']);
  if (extra !== null) return `event has unknown field "${extra}"`;
  if (!isNat(x.index) || x.index < 1) return 'event index is not a positive integer';
  if (!isNat(x.ts)) return 'event ts is not a non-negative integer';
  if (!isNat(x.prev) || x.prev >= x.index) return 'event prev is not an earlier index';
  const np = nameProblem(x.key, 'event key', KEY_BYTES_MAX);
  if (np !== null) return np;
  if (x.op === 'put') {
    if (typeof x.value !== 'string') return 'put event value is not a string';
    if (x.b64 !== undefined && (x.b64 !== true || !isBase64(x.value))) return 'put event b64 is not true with a base64 value';
    if (x.lease !== undefined && (!isNat(x.lease) || x.lease < 1)) return 'put event lease is not a positive integer';
  } else if (x.op === 'del') {
    if (x.value !== undefined || x.b64 !== undefined || x.lease !== undefined) return 'del event has a value';
  } else return 'event op is not put or del';
  return null;
}

export function recProblem(x: unknown): string | null {
  if (!isObject(x)) return 'record is not an object';
  const extra = extraField(x, ['value', 'rev', 'ts', 'ttl', 'b64', 'lease']);
  if (extra !== null) return `record has unknown field "${extra}"`;
  if (typeof x.value !== 'string') return 'record value is not a string';
  if (x.b64 !== undefined && (x.b64 !== true || !isBase64(x.value))) return 'record b64 is not true with a base64 value';
  if (x.lease !== undefined && (!isNat(x.lease) || x.lease < 1 || x.ttl !== undefined)) return 'record lease is not a positive integer (and a leased record has no ttl)';
  if (!isNat(x.rev) || x.rev < 1) return 'record rev is not a positive integer';
  if (!isNat(x.ts)) return 'record ts is not a non-negative integer';
  if (x.ttl !== undefined && (!isNat(x.ttl) || x.ttl < TTL_MS_MIN || x.ttl > TTL_MS_MAX)) return `record ttl is not ${TTL_MS_MIN}..${TTL_MS_MAX} ms`;
  return null;
}

export function ridRecordProblem(x: unknown): string | null {
  if (!isObject(x)) return 'rid record is not an object';
  const extra = extraField(x, ['index', 'ts', 'result']);
  if (extra !== null) return `rid record has unknown field "${extra}"`;
  if (!isNat(x.index) || x.index < 1) return 'rid record index is not a positive integer';
  if (!isNat(x.ts)) return 'rid record ts is not a non-negative integer';
  const r = x.result;
  if (!isObject(r)) return 'rid record result is not an object';
  if (r.ok === true) {
    if (extraField(r, ['ok']) !== null) return 'rid record result has unknown fields';
  } else if (r.ok === false && (r.code === 'LEASE_NOT_FOUND' || r.code === 'LEASE_FULL')) {
    if (extraField(r, ['ok', 'code', 'failed', 'lease']) !== null) return 'rid record result has unknown fields';
    if (!isNat(r.failed)) return 'rid record result.failed is not a non-negative integer';
    if (!isNat(r.lease) || r.lease < 1) return 'rid record result.lease is not a positive integer';
  } else if (r.ok === false) {
    if (extraField(r, ['ok', 'code', 'failed', 'current']) !== null) return 'rid record result has unknown fields';
    if (r.code !== 'CAS_MISMATCH') return `rid record result code is ${JSON.stringify(r.code)}`;
    if (!isNat(r.failed)) return 'rid record result.failed is not a non-negative integer';
    if (r.current !== null && typeof r.current !== 'string') return 'rid record result.current is not a string or null';
  } else {
    return 'rid record result.ok is not a boolean';
  }
  return null;
}

function nameProblem(s: unknown, what: string, maxBytes: number): string | null {
  if (typeof s !== 'string' || s.length === 0) return `${what} is not a non-empty string`;
  if (Buffer.byteLength(s, 'utf8') > maxBytes) return `${what} is longer than ${maxBytes} bytes`;
  return null;
}

/** Why `delta` cannot be applied on top of a checkpoint at `current`, or null. */
export function deltaProblem(delta: CheckpointDelta, current: CheckpointMeta): string | null {
  const steps = deltaProblemSteps(delta, current, Infinity);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/**
 * deltaProblem in steps: yields after every `every` records checked, so that a writer can let
 * the event loop run between them (a checkpoint of many keys would stall requests otherwise).
 */
export function* deltaProblemSteps(delta: CheckpointDelta, current: CheckpointMeta, every: number): Generator<void, string | null> {
  const mp = metaProblem(delta.meta);
  if (mp !== null) return mp;
  if (delta.meta.index < current.index) {
    return `delta goes back from index ${current.index} to ${delta.meta.index}`;
  }
  const seen = new Set<string>();
  let n = 0;
  for (const [key, rec] of delta.kv) {
    if (++n % every === 0) yield;
    const np = nameProblem(key, 'key', KEY_BYTES_MAX);
    if (np !== null) return np;
    if (seen.has(key)) return `key ${JSON.stringify(key)} appears twice in one delta`;
    seen.add(key);
    if (rec !== null) {
      const rp = recProblem(rec);
      if (rp !== null) return `key ${JSON.stringify(key)}: ${rp}`;
      if (rec.rev > delta.meta.index) return `key ${JSON.stringify(key)}: rev ${rec.rev} is beyond meta.index ${delta.meta.index}`;
    }
  }
  for (const [rid, rec] of delta.ridsSet) {
    if (++n % every === 0) yield;
    const np = nameProblem(rid, 'rid', RID_BYTES_MAX);
    if (np !== null) return np;
    const rp = ridRecordProblem(rec);
    if (rp !== null) return `rid ${JSON.stringify(rid)}: ${rp}`;
  }
  for (const rid of delta.ridsDel) {
    const np = nameProblem(rid, 'rid', RID_BYTES_MAX);
    if (np !== null) return np;
  }
  if (delta.events !== undefined) {
    let last = current.index;
    for (const ev of delta.events) {
      if (++n % every === 0) yield;
      const ep = eventProblem(ev);
      if (ep !== null) return `event at index ${String((ev as { index?: unknown }).index)}: ${ep}`;
      if (ev.index < last || ev.index <= current.index || ev.index > delta.meta.index) {
        return `event at index ${ev.index} is out of order or outside ${current.index + 1}..${delta.meta.index}`;
      }
      last = ev.index;
    }
  }
  return null;
}
