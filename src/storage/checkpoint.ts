// The checkpoint: the state as of a log index, in an LMDB environment
// (`<data>/checkpoint/`), plus its in-memory twin.
//
// Layout (named databases; keys and values are raw bytes, encoded here):
//   kv     key: the key's UTF-8 bytes    value: UTF-8 JSON {"value":…,"rev":…,"ts":…}
//   rids   key: the rid's UTF-8 bytes    value: UTF-8 JSON {"index":…,"ts":…,"result":…}
//   meta   key: "meta"                   value: UTF-8 JSON CheckpointMeta
//          key: "history"                value: UTF-8 JSON {"floor":…,"count":…}
//          key: "historyChain"           value: 1 (the events of a key are chained, below)
//          key: "historyBytes"           value: bytes the events' values take (the byte bound)
//   ttl    key: the key's UTF-8 bytes    value: UTF-8 JSON {"rev":…,"ttl":…}
//   events key: index (8 bytes, big-endian) + position in its entry (4 bytes)
//                                        value: UTF-8 JSON {"keyPrev":[index,position]|null,"at":ms,"event":ChangeEvent}
//   heads  key: the key's UTF-8 bytes    value: UTF-8 JSON [index,position], the key's newest event
//   hist   (older checkpoints: an index of each key's events; emptied when the chain is made)
//
// A key's history is a chain, newest first: its head names its newest event, and each event
// the one of the same key before it (keyPrev). A checkpoint writes one head per key it
// changes, into a table no larger than the keys, and letting the oldest events go deletes
// nothing else (but the head of a key deleted, whose delete went). The index it replaces took
// an insert per event into a tree as large as the whole history and a delete per event let
// go of: ~45% of a checkpoint's cost. The chain ends at an event let go of (all older ones
// went too).
//
// Binary keys make LMDB's order (memcmp) the byte order of the UTF-8 key,
// which is what range() promises. Values are JSON rather than lmdb-js's
// msgpack so that the bytes do not depend on encoder state (msgpack's shared
// structures) and the tools can decode them on their own.
//
// A write applies one delta in one LMDB write transaction, queued with lmdb-js's batch() so
// that it commits on lmdb-js's write thread; the records are checked and encoded first, in
// slices of a few ms of work with the event loop let run between (slices.ts). Readers see
// the old state until the commit and the new one after, never a mix. The write resolves
// once the commit is flushed. (lmdb-js's async transaction(callback) hangs on this
// platform; batch() gives the same one-transaction atomicity for puts and removes.)

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { changeEventJson } from '../core/entry-text.js';
import { jsonString } from '../core/json-string.js';
import { HISTORY_BYTES_DEFAULT, HISTORY_EVENTS_DEFAULT, HISTORY_PRUNE_EVENTS_MAX, KEY_BYTES_MAX } from '../core/limits.js';
import type { ChangeEvent } from '../core/wire.js';
import { MemHistory, pruneCount } from './mem-history.js';
import type { CheckpointStore } from './ports.js';
import { crc32c } from './crc32c.js';
import { CHECKPOINT_FORMAT, CorruptRecordError, deltaProblem, deltaProblemSteps, eventProblem, metaProblem, recProblem, ridRecordProblem, type CheckpointDelta, type CheckpointMeta, type Rec, type RidRecord, type TimedRec } from '../core/records.js';
import { timedOf } from '../core/state.js';
import { CHECKPOINT_SLICE_MS, Slices } from './slices.js';

export const CHECKPOINT_DIR_NAME = 'checkpoint';

/** A checkpoint that cannot be opened at all (not an LMDB environment, a damaged meta). */
export class CheckpointDamagedError extends Error {
  constructor(readonly dir: string, detail: string) {
    super(`checkpoint ${dir} is damaged: ${detail}`);
    this.name = 'CheckpointDamagedError';
  }
}
const META_KEY = Buffer.from('meta', 'utf8');
const HISTORY_KEY = Buffer.from('history', 'utf8');
const HISTORY_CHAIN_KEY = Buffer.from('historyChain', 'utf8');
/** (Its own key: the "history" record's shape check would refuse a field older servers do not know.) */
const HISTORY_BYTES_KEY = Buffer.from('historyBytes', 'utf8');
/** (ttl, events, hist and heads came later: a read-only open of an older checkpoint finds none, and reads them as empty.) */
const DB_NAMES = ['kv', 'rids', 'meta', 'ttl', 'events', 'hist', 'heads'] as const;
const DB_LATER: ReadonlySet<string> = new Set(['ttl', 'events', 'hist', 'heads']);
const EVENT_KEY_BYTES = 12;
/** Events of one key a walk along its chain steps over before it reads the log of events instead. */
const CHAIN_WALK_STEPS_MAX = 10_000;
/**
 * Heads a writer keeps in memory (two generations of half this each): a key written again
 * soon needs no read of its head (a B-tree lookup and a checksum on the loop, ~5% of a
 * follower's CPU under put load). Bounded: memory must not follow the number of keys.
 */
const HEAD_CACHE_KEYS_MAX = 16_384;
const DIGEST_PREFIX = 'ckv-checkpoint-digest-v1\n';

export function emptyMeta(): CheckpointMeta {
  return { format: CHECKPOINT_FORMAT, index: 0, epoch: 0, ts: 0, voters: [], eventPrev: 0 };
}

// Canonical JSON with a fixed field order.
function recJson(r: Rec): string {
  return `{"value":${jsonString(r.value)},"rev":${r.rev},"ts":${r.ts}${r.ttl !== undefined ? `,"ttl":${r.ttl}` : ''}${r.b64 ? ',"b64":true' : ''}${r.lease !== undefined ? `,"lease":${r.lease}` : ''}}`;
}

/** An entry of the ttl index: which keys have a time to live or a lease (so a new coordinator, or a revoke, finds them without a scan). */
function ttlEntryProblem(x: unknown): string | null {
  const o = x as { rev?: unknown; ttl?: unknown; lease?: unknown };
  if (typeof o !== 'object' || o === null || Object.keys(o).some((k) => k !== 'rev' && k !== 'ttl' && k !== 'lease')) return 'ttl entry is not {rev, ttl | lease}';
  if (!Number.isSafeInteger(o.rev) || (o.rev as number) < 1) return 'ttl entry rev is not a positive integer';
  if ((o.ttl === undefined) === (o.lease === undefined)) return 'ttl entry has not exactly one of ttl and lease';
  if (o.ttl !== undefined && (!Number.isSafeInteger(o.ttl) || (o.ttl as number) < 1)) return 'ttl entry ttl is not a positive integer';
  if (o.lease !== undefined && (!Number.isSafeInteger(o.lease) || (o.lease as number) < 1)) return 'ttl entry lease is not a positive integer';
  return null;
}

function timedJson(t: TimedRec): string {
  return `{"rev":${t.rev}${t.ttl !== undefined ? `,"ttl":${t.ttl}` : ''}${t.lease !== undefined ? `,"lease":${t.lease}` : ''}}`;
}

/** keyPrev first: a walk along a key's chain reads it without parsing the rest. */
function eventJson(ev: ChangeEvent, at: number, keyPrev: Buffer | null): string {
  return `{"keyPrev":${keyPrev === null ? 'null' : pointerJson(keyPrev)},"at":${at},"event":${changeEventJson(ev)}}`;
}

/** An events key as stored in a chain: [index, position]. */
function pointerJson(evKey: Buffer): string {
  return `[${indexOfEventKey(evKey)},${evKey.readUInt32BE(8)}]`;
}

function pointerProblem(x: unknown): string | null {
  if (!Array.isArray(x) || x.length !== 2 || !Number.isSafeInteger(x[0]) || x[0] < 1 || !Number.isSafeInteger(x[1]) || x[1] < 0 || x[1] > 0xffff_ffff) return 'is not [index, position]';
  return null;
}

interface StoredEvent {
  /** Absent in an older checkpoint's events, until the chain is made. */
  keyPrev?: [number, number] | null;
  at: number;
  event: ChangeEvent;
}

function storedEventProblem(x: unknown): string | null {
  const o = x as { keyPrev?: unknown; at?: unknown; event?: unknown };
  const fields = typeof o === 'object' && o !== null ? Object.keys(o).join(',') : '';
  if (fields !== 'keyPrev,at,event' && fields !== 'at,event') return 'stored event is not {keyPrev, at, event}';
  if (o.keyPrev !== undefined && o.keyPrev !== null && pointerProblem(o.keyPrev) !== null) return 'stored event keyPrev is not [index, position]';
  if (!Number.isSafeInteger(o.at) || (o.at as number) < 0) return 'stored event at is not a time';
  return eventProblem(o.event);
}

const KEY_PREV_PREFIX = /^\{"keyPrev":(?:null|\[(\d{1,16}),(\d{1,10})\])/;

/** The events key of position `seq` of entry `index`: big-endian, so LMDB keeps log order. */
function eventKey(index: number, seq: number): Buffer {
  const b = Buffer.allocUnsafe(EVENT_KEY_BYTES);
  b.writeUInt32BE(Math.floor(index / 0x1_0000_0000), 0);
  b.writeUInt32BE(index % 0x1_0000_0000, 4);
  b.writeUInt32BE(seq, 8);
  return b;
}

function indexOfEventKey(b: Buffer, at = 0): number {
  return b.readUInt32BE(at) * 0x1_0000_0000 + b.readUInt32BE(at + 4);
}

/**
 * The keyPrev of a stored event (null: the first of its key still kept), checked against the
 * event's seal but not parsed: a walk steps over a key's newer events at this cost.
 */
function keyPrevOf(evKey: Buffer, bytes: Buffer, what: string): Buffer | null {
  checkSeal(evKey, bytes, what);
  const m = KEY_PREV_PREFIX.exec(bytes.toString('latin1', SEAL_BYTES, SEAL_BYTES + 40));
  if (m === null) throw new CorruptRecordError(what, 'has no keyPrev');
  if (m[1] === undefined) return null;
  const index = Number(m[1]);
  const position = Number(m[2]);
  if (!Number.isSafeInteger(index) || index < 1 || position > 0xffff_ffff) throw new CorruptRecordError(what, 'keyPrev is not [index, position]');
  return eventKey(index, position);
}

/** The events key a key's head names. (Its name for an error is made only on one: this runs for each key a checkpoint changes.) */
function decodeHead(kb: Buffer, bytes: Buffer): Buffer {
  let p: [number, number];
  try {
    p = decodeValue<[number, number]>(kb, bytes, true, 'head', pointerProblem);
  } catch (err) {
    if (err instanceof CorruptRecordError) throw new CorruptRecordError(`head of key ${JSON.stringify(kb.toString('utf8'))}`, err.detail);
    throw err;
  }
  return eventKey(p[0], p[1]);
}

/** The older checkpoints' index of a key's events. */
function histKey(key: Buffer, evKey: Buffer): Buffer {
  const out = Buffer.allocUnsafe(key.length + 1 + evKey.length);
  key.copy(out, 0);
  out[key.length] = 0;
  evKey.copy(out, key.length + 1);
  return out;
}

function byteCountProblem(x: unknown): string | null {
  return Number.isSafeInteger(x) && (x as number) >= 0 ? null : 'is not a byte count';
}

function historyJson(h: HistoryMeta): string {
  return `{"floor":${h.floor},"count":${h.count}}`;
}

function historyMetaProblem(x: unknown): string | null {
  const o = x as { floor?: unknown; count?: unknown };
  if (typeof o !== 'object' || o === null || Object.keys(o).length !== 2) return 'history is not {floor, count}';
  if (!Number.isSafeInteger(o.floor) || (o.floor as number) < 0) return 'history floor is not a non-negative integer';
  if (!Number.isSafeInteger(o.count) || (o.count as number) < 0) return 'history count is not a non-negative integer';
  return null;
}

interface HistoryOps {
  /** Events added, and let go of. */
  puts: Array<[Buffer, Buffer]>;
  dels: Buffer[];
  headPuts: Array<[Buffer, Buffer]>;
  headDels: Buffer[];
  /** Each changed key's head once written (null: none); null when every head went. */
  heads: Map<string, Buffer | null> | null;
  meta: HistoryMeta;
  /** Bytes of the events' values once written. */
  bytes: number;
}

interface HistoryMeta {
  floor: number;
  count: number;
}

function ridJson(r: RidRecord): string {
  const x = r.result;
  const res = x.ok
    ? '{"ok":true}'
    : x.code === 'CAS_MISMATCH'
      ? `{"ok":false,"code":"CAS_MISMATCH","failed":${x.failed},"current":${JSON.stringify(x.current)}}`
      : `{"ok":false,"code":"${x.code}","failed":${x.failed},"lease":${x.lease}}`;
  return `{"index":${r.index},"ts":${r.ts},"result":${res}}`;
}

function metaJson(m: CheckpointMeta): string {
  // keepOut only when set, so checkpoints without operator removals keep their bytes.
  const keepOut = m.keepOut !== undefined && m.keepOut.length > 0 ? `,"keepOut":[${m.keepOut.join(',')}]` : '';
  const cluster = m.cluster !== undefined ? `,"cluster":"${m.cluster}"` : '';
  return `{"format":${m.format},"index":${m.index},"epoch":${m.epoch},"ts":${m.ts},"voters":[${m.voters.join(',')}]${keepOut},"eventPrev":${m.eventPrev}${cluster}}`;
}

// Format 2: every value is sealed with a CRC-32C over its key and its JSON:
//   "<crc as 8 hex digits> <json>"
// so that a flipped byte in a value, or a value moved under another key, is found when read.
const ZERO = Buffer.from([0]);
const ONE = Buffer.from([1]);
const SEAL_BYTES = 9;

function checksumOf(key: Buffer, body: Uint8Array, start = 0): number {
  return crc32c(body, crc32c(ZERO, crc32c(key)), start);
}

/** Events read from LMDB at once when old ones are let go of. */
const CHECKPOINT_SLICE_ITEMS = 1024;
/** Records checked between two looks at the slice's clock. */
const CHECKPOINT_CHECK_STEP_ITEMS = 256;

const HEX_DIGITS = Buffer.from('0123456789abcdef', 'latin1');

/** "<crc as 8 hex digits> <json>" in one buffer (this runs for every record a checkpoint writes). */
function sealValue(key: Buffer, json: string): Buffer {
  const out = Buffer.allocUnsafe(SEAL_BYTES + Buffer.byteLength(json, 'utf8'));
  out.write(json, SEAL_BYTES, 'utf8');
  const crc = checksumOf(key, out, SEAL_BYTES);
  for (let i = 0; i < 8; i++) out[i] = HEX_DIGITS[(crc >>> (28 - 4 * i)) & 0xf]!;
  out[8] = 0x20;
  return out;
}

/** A sealed value's checksum holds (over its key and its JSON). Throws CorruptRecordError. */
function checkSeal(key: Buffer, bytes: Buffer, what: string): void {
  if (bytes.length < SEAL_BYTES || bytes[8] !== 0x20) throw new CorruptRecordError(what, 'no checksum');
  const head = bytes.toString('latin1', 0, 8);
  if (!/^[0-9a-f]{8}$/.test(head) || checksumOf(key, bytes.subarray(0, bytes.length), SEAL_BYTES) !== parseInt(head, 16)) throw new CorruptRecordError(what, 'fails its checksum');
}

/**
 * The JSON of a stored value, checked: its seal (format 2), its shape. Throws CorruptRecordError.
 * lmdb-js's getBinaryFast buffers report the whole shared buffer as byteLength: go by .length only.
 */
function decodeValue<T>(key: Buffer, bytes: Buffer, sealed: boolean, what: string, problem: (x: unknown) => string | null): T {
  let text: string;
  if (sealed) {
    checkSeal(key, bytes, what);
    text = bytes.toString('utf8', SEAL_BYTES);
  } else text = bytes.toString('utf8');
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new CorruptRecordError(what, 'is not JSON');
  }
  const p = problem(raw);
  if (p !== null) throw new CorruptRecordError(what, p);
  return raw as T;
}

/** Why `dir/data.mdb` cannot be an LMDB environment (LMDB itself would crash on it), or null. */
export function lmdbFileProblem(dir: string): string | null {
  const file = path.join(dir, 'data.mdb');
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    return null; // absent: a new checkpoint
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 2 * LMDB_PAGE_BYTES_MIN) return `${file} is ${size} bytes: too short for an LMDB environment`;
    const b = Buffer.alloc(LMDB_PAGE_BYTES_MIN + 32);
    fs.readSync(fd, b, 0, b.length, 0);
    const c = Buffer.alloc(32);
    fs.readSync(fd, c, 0, 32, LMDB_PAGE_BYTES_MIN);
    // Either of LMDB's two meta pages (at the start of the first two pages) carries its magic.
    if (b.readUInt32LE(LMDB_MAGIC_OFFSET) !== LMDB_MAGIC && c.readUInt32LE(LMDB_MAGIC_OFFSET) !== LMDB_MAGIC) return `${file} is not an LMDB environment (no LMDB magic in its meta pages)`;
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

const LMDB_MAGIC = 0xbeefc0de;
const LMDB_MAGIC_OFFSET = 24;
const LMDB_PAGE_BYTES_MIN = 4096;

/** Compare two strings in the byte order of their UTF-8 encodings. */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    // UTF-16 order differs from UTF-8 order only between surrogates
    // (D800-DFFF, code points >= 0x10000) and E000-FFFF: move surrogates up.
    if (x >= 0xd800 && y >= 0xd800) {
      x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    }
    return x - y;
  }
  return a.length - b.length;
}

/**
 * The digest of a logical state: sha256 over the meta index and every
 * key/record in key order. Equal state gives an equal digest however it was built.
 */
export function digestOf(index: number, entries: Iterable<[string, Rec]>): string {
  const d = new StateDigest(index);
  for (const [key, rec] of entries) d.add(key, rec);
  return d.hex();
}

/** One record's line of the digest. (A ttl, bytes, only when set: digests of states without them stay what they were.) */
function digestLine(key: string, rec: Rec): string {
  const line: unknown[] = [key, rec.value, rec.rev, rec.ts];
  if (rec.ttl !== undefined) line.push(rec.ttl);
  if (rec.b64) line.push('b64');
  if (rec.lease !== undefined) line.push(`lease ${rec.lease}`);
  return JSON.stringify(line) + '\n';
}

/** digestOf, fed one key at a time (in key order): for states that arrive in pages. */
export class StateDigest {
  private readonly h = createHash('sha256');
  constructor(index: number) {
    this.h.update(DIGEST_PREFIX);
    this.h.update(`index ${index}\n`);
  }
  add(key: string, rec: Rec): void {
    this.h.update(digestLine(key, rec));
  }
  hex(): string {
    return this.h.digest('hex');
  }
}

export interface CheckpointCounts {
  keys: number;
  rids: number;
}

// ---------------------------------------------------------------------------
// LMDB

export interface LmdbCheckpointOptions {
  /** Open for reading only (the operator tool): writes throw, nothing is created. */
  readOnly?: boolean;
  /** History retention: most events kept (default HISTORY_EVENTS_DEFAULT), and (if set) most age in ms. */
  historyEventsMax?: number;
  historyAgeMs?: number;
  /** Most bytes the kept events' stored values take (default HISTORY_BYTES_DEFAULT). */
  historyBytesMax?: number;
  /** Wall clock for the history's age (ms since the epoch). */
  now?: () => number;
  /** Heads kept in memory (default HEAD_CACHE_KEYS_MAX; 0: none, every head read). For tests. */
  headCacheKeysMax?: number;
  /** A write's slices of work on the loop, ms (default CHECKPOINT_SLICE_MS; 0: the loop runs every few records). For tests. */
  sliceMs?: number;
}

type Bytes = Buffer;

export class LmdbCheckpoint implements CheckpointStore {
  readonly dir: string;
  readonly readOnly: boolean;
  private readonly root: RootDatabase<Bytes, Bytes>;
  private readonly kv: Database<Bytes, Bytes>;
  private readonly ridsDb: Database<Bytes, Bytes>;
  private readonly metaDb: Database<Bytes, Bytes>;
  /** Keys with a time to live (null: an older read-only checkpoint without the database). */
  private readonly ttlDb: Database<Bytes, Bytes> | null;
  private ttlIndex = new Map<string, TimedRec>();
  /** (null: an older read-only checkpoint, without history.) */
  private readonly eventsDb: Database<Bytes, Bytes> | null;
  /** (Older checkpoints: read only while not yet chained, read-only.) */
  private readonly histDb: Database<Bytes, Bytes> | null;
  private readonly headsDb: Database<Bytes, Bytes> | null;
  /** Each key's events are chained (false: an older checkpoint opened read-only, read through hist). */
  private chained = false;
  private hist: HistoryMeta = { floor: 0, count: 0 };
  private historyEventsMax = HISTORY_EVENTS_DEFAULT;
  private historyAgeMs = 0;
  private historyBytesMax = HISTORY_BYTES_DEFAULT;
  /** Bytes the kept events' stored values take. */
  private histBytes = 0;
  /**
   * Heads as the last write left them, for keys written lately (newer first; `old` is what
   * `young` was when it filled). Only this writer changes heads, and it updates these once its
   * batch has committed: a hit is what the heads table holds (or held before a flipped byte).
   */
  private headCacheKeysMax = HEAD_CACHE_KEYS_MAX;
  private sliceMs = CHECKPOINT_SLICE_MS;
  private headsYoung = new Map<string, Buffer>();
  private headsOld = new Map<string, Buffer>();
  private now: () => number = Date.now;
  /** Writes run one at a time, in call order. */
  private chain: Promise<void> = Promise.resolve();
  private closed = false;
  /** Values carry checksums (format 2); false while a format-1 checkpoint is read as it is. */
  private sealed = true;

  private constructor(dir: string, readOnly: boolean, root: RootDatabase<Bytes, Bytes>, dbs: Array<Database<Bytes, Bytes> | undefined>) {
    this.dir = dir;
    this.readOnly = readOnly;
    this.root = root;
    this.kv = dbs[0]!;
    this.ridsDb = dbs[1]!;
    this.metaDb = dbs[2]!;
    this.ttlDb = dbs[3] ?? null;
    this.eventsDb = dbs[4] ?? null;
    this.histDb = dbs[5] ?? null;
    this.headsDb = dbs[6] ?? null;
  }

  /** Open (creating unless read-only) the LMDB environment in `dir` (the server uses `<data>/checkpoint`). */
  static async open(dir: string, opts: LmdbCheckpointOptions = {}): Promise<LmdbCheckpoint> {
    const readOnly = opts.readOnly === true;
    if (readOnly) {
      if (!fs.existsSync(path.join(dir, 'data.mdb'))) throw new Error(`no checkpoint at ${dir} (no data.mdb)`);
    } else if (!fs.existsSync(dir)) {
      fs.mkdirSync(dir, { recursive: true });
      const fd = fs.openSync(path.dirname(dir), 'r');
      try {
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
    const bad = lmdbFileProblem(dir);
    if (bad !== null) throw new CheckpointDamagedError(dir, bad);
    const enc = { keyEncoding: 'binary', encoding: 'binary' } as const;
    const root = open<Bytes, Bytes>({ path: dir, maxDbs: DB_NAMES.length + 1, readOnly, ...enc });
    const dbs: Array<Database<Bytes, Bytes> | undefined> = [];
    for (const name of DB_NAMES) {
      const db = root.openDB<Bytes, Bytes>({ name, ...enc }) as Database<Bytes, Bytes> | undefined;
      if (db === undefined && DB_LATER.has(name) && readOnly) {
        dbs.push(undefined);
        continue;
      }
      if (db === undefined) {
        await root.close();
        throw new Error(`checkpoint ${dir} has no "${name}" database`);
      }
      dbs.push(db);
    }
    const cp = new LmdbCheckpoint(dir, readOnly, root, dbs);
    if (opts.historyEventsMax !== undefined) cp.historyEventsMax = opts.historyEventsMax;
    if (opts.historyAgeMs !== undefined) cp.historyAgeMs = opts.historyAgeMs;
    if (opts.historyBytesMax !== undefined) cp.historyBytesMax = opts.historyBytesMax;
    if (opts.headCacheKeysMax !== undefined) cp.headCacheKeysMax = opts.headCacheKeysMax;
    if (opts.sliceMs !== undefined) cp.sliceMs = opts.sliceMs;
    if (opts.now !== undefined) cp.now = opts.now;
    const raw = cp.metaDb.getBinary(META_KEY);
    if (raw === undefined) {
      // A new checkpoint: write the empty state's meta so every reader finds one.
      if (!readOnly) {
        await cp.metaDb.put(META_KEY, sealValue(META_KEY, metaJson(emptyMeta())));
        await cp.root.flushed;
      }
    } else if (raw[0] === 0x7b) {
      // Format 1 (no checksums): upgraded in one transaction, or read as it is.
      cp.sealed = false;
      if (!readOnly) {
        try {
          await cp.upgrade();
        } catch (err) {
          await root.close();
          throw new CheckpointDamagedError(dir, (err as Error).message);
        }
      }
    }
    try {
      cp.chained = cp.metaDb.getBinary(HISTORY_CHAIN_KEY) !== undefined;
      if (!cp.chained && !readOnly) await cp.chainHistory();
      const meta = cp.meta();
      cp.loadTtlIndex();
      const h = cp.metaDb.getBinary(HISTORY_KEY);
      // A checkpoint from before the history: it starts at the checkpoint's index.
      cp.hist = h === undefined ? { floor: meta.index, count: 0 } : decodeValue<HistoryMeta>(HISTORY_KEY, h, true, 'history', historyMetaProblem);
      if (cp.hist.floor > meta.index) throw new Error(`history floor ${cp.hist.floor} is beyond meta.index ${meta.index}`);
      const hb = cp.metaDb.getBinary(HISTORY_BYTES_KEY);
      // (Counted once where a checkpoint does not say yet.)
      cp.histBytes = hb !== undefined ? decodeValue<number>(HISTORY_BYTES_KEY, hb, true, 'history bytes', byteCountProblem) : cp.storedEventBytes();
    } catch (err) {
      await root.close();
      throw new CheckpointDamagedError(dir, (err as Error).message);
    }
    return cp;
  }

  private check(): void {
    if (this.closed) throw new Error(`checkpoint ${this.dir} is closed`);
  }

  private loadTtlIndex(): void {
    this.ttlIndex.clear();
    if (this.ttlDb === null) return;
    for (const { key, value } of this.ttlDb.getRange({})) {
      const k = key.toString('utf8');
      this.ttlIndex.set(k, decodeValue<TimedRec>(key, value, true, `ttl entry of key ${JSON.stringify(k)}`, ttlEntryProblem));
    }
  }

  ttlKeys(): Array<[string, TimedRec]> {
    this.check();
    return [...this.ttlIndex];
  }

  historyFloor(): number {
    this.check();
    return this.hist.floor;
  }

  historyCount(): number {
    this.check();
    return this.hist.count;
  }

  /** Bytes the kept events' stored values take (what the byte bound counts). */
  historyBytes(): number {
    this.check();
    return this.histBytes;
  }

  /** Bytes of every stored event's value, counted. */
  storedEventBytes(): number {
    let n = 0;
    if (this.eventsDb !== null) for (const { value } of this.eventsDb.getRange({})) n += value.length;
    return n;
  }

  private decodeEvent(key: Buffer, value: Buffer): ChangeEvent {
    return this.decodeStoredEvent(key, value).event;
  }

  private decodeStoredEvent(key: Buffer, value: Buffer): StoredEvent {
    const index = indexOfEventKey(key);
    const what = `event ${index}/${key.readUInt32BE(8)}`;
    const stored = decodeValue<StoredEvent>(key, value, true, what, storedEventProblem);
    if (stored.event.index !== index) throw new CorruptRecordError(what, `says index ${stored.event.index}`);
    return stored;
  }

  *events(from: number, key?: string): Iterable<ChangeEvent> {
    this.check();
    if (this.eventsDb === null) return;
    const start = eventKey(Math.max(from, 0), 0);
    if (key === undefined) {
      for (const { key: k, value } of this.eventsDb.getRange({ start })) yield this.decodeEvent(k, value);
      return;
    }
    const kb = Buffer.from(key, 'utf8');
    if (this.chained) {
      // The chain runs newest first: find the events at or after `from` (their keys only), then
      // read them in order. A key changed more often since `from` than a walk should take
      // (each page of a replay would walk it again) is read from the log of events instead,
      // where it is then common.
      const found: Buffer[] = [];
      let cut = false;
      for (const [ptr] of this.walk(kb)) {
        if (indexOfEventKey(ptr) < from) break;
        if (found.length === CHAIN_WALK_STEPS_MAX) {
          cut = true;
          break;
        }
        found.push(ptr);
      }
      if (cut) {
        for (const { key: k, value } of this.eventsDb.getRange({ start })) {
          const ev = this.decodeEvent(k, value);
          if (ev.key === key) yield ev;
        }
        return;
      }
      for (let i = found.length - 1; i >= 0; i--) {
        const ev = this.eventAt(found[i]!);
        if (ev !== null) yield this.ofKey(ev, key);
      }
      return;
    }
    if (this.histDb === null) return;
    for (const ptr of this.histDb.getKeys({ start: histKey(kb, start), end: Buffer.concat([kb, ONE]) })) {
      const ev = this.eventAt(ptr.subarray(kb.length + 1));
      if (ev !== null && ev.key === key) yield ev;
    }
  }

  *keyEventsBefore(key: string, below: number): Iterable<ChangeEvent> {
    this.check();
    if (this.eventsDb === null || below <= 0) return;
    const kb = Buffer.from(key, 'utf8');
    if (this.chained) {
      // Newer events are stepped over without being parsed; a key changed more often since
      // `below` than a walk should take is looked for in the log of events, back from `below`.
      let steps = 0;
      for (const [ptr, bytes] of this.walk(kb)) {
        if (indexOfEventKey(ptr) < below) yield this.ofKey(this.decodeEvent(ptr, bytes), key);
        else if (++steps > CHAIN_WALK_STEPS_MAX) {
          const start = eventKey(Math.min(below, Number.MAX_SAFE_INTEGER), 0);
          for (const { key: k, value } of this.eventsDb.getRange({ start, reverse: true, exclusiveStart: true })) {
            const ev = this.decodeEvent(k, value);
            if (ev.key === key) yield ev;
          }
          return;
        }
      }
      return;
    }
    if (this.histDb === null) return;
    const start = histKey(kb, eventKey(Math.min(below, Number.MAX_SAFE_INTEGER), 0));
    for (const ptr of this.histDb.getKeys({ start, end: Buffer.concat([kb, ZERO]), reverse: true, exclusiveStart: true })) {
      const ev = this.eventAt(ptr.subarray(kb.length + 1));
      if (ev !== null && ev.key === key) yield ev;
    }
  }

  /**
   * A key's events newest first, as [events key, stored bytes] (the bytes are lmdb-js's shared
   * buffer: good until the next read). Each is checked against its seal before its keyPrev is
   * followed; the walk ends at an event let go of.
   */
  private *walk(kb: Buffer): Iterable<[Buffer, Buffer]> {
    let ptr = this.headOf(kb);
    while (ptr !== null) {
      const bytes = this.eventsDb!.getBinaryFast(ptr);
      if (bytes === undefined) return;
      const what = `event ${indexOfEventKey(ptr)}/${ptr.readUInt32BE(8)}`;
      const prev = keyPrevOf(ptr, bytes, what);
      if (prev !== null && Buffer.compare(prev, ptr) >= 0) throw new CorruptRecordError(what, 'names a later event as the one before it');
      yield [ptr, bytes];
      ptr = prev;
    }
  }

  /** The events key of a key's newest event, or null. */
  private headOf(kb: Buffer): Buffer | null {
    const b = this.headsDb?.getBinaryFast(kb);
    return b === undefined ? null : decodeHead(kb, b);
  }

  /** An event reached along `key`'s chain is one of that key's. */
  private ofKey(ev: ChangeEvent, key: string): ChangeEvent {
    if (ev.key !== key) throw new CorruptRecordError(`event ${ev.index}`, `is in the chain of key ${JSON.stringify(key)} but changes ${JSON.stringify(ev.key)}`);
    return ev;
  }

  /** The event a hist entry points at (null: let go of, while its hist entry could not be). */
  private eventAt(evKey: Buffer): ChangeEvent | null {
    if (evKey.length !== EVENT_KEY_BYTES) return null;
    const k = Buffer.from(evKey);
    const b = this.eventsDb!.getBinaryFast(k);
    return b === undefined ? null : this.decodeEvent(k, b);
  }

  meta(): CheckpointMeta {
    this.check();
    const b = this.metaDb.getBinaryFast(META_KEY);
    if (b === undefined) return emptyMeta();
    // A format-1 checkpoint's meta says format 1 (read as it is until it is upgraded).
    return decodeValue<CheckpointMeta>(META_KEY, b, this.sealed, 'meta', this.sealed ? metaProblem : (x) => metaProblem({ ...(x as object), format: CHECKPOINT_FORMAT }));
  }

  get(key: string): Rec | undefined {
    this.check();
    if (key.length === 0) return undefined;
    const k = Buffer.from(key, 'utf8');
    const b = this.kv.getBinaryFast(k);
    if (b === undefined) return undefined;
    return decodeValue<Rec>(k, b, this.sealed, `record of key ${JSON.stringify(key)}`, recProblem);
  }

  range(prefix: string, start: string | undefined, limit: number): Array<[string, Rec]> {
    this.check();
    const out: Array<[string, Rec]> = [];
    if (limit <= 0) return out;
    let from = prefix;
    let exclusive = false;
    if (start !== undefined && compareKeys(start, prefix) >= 0) {
      from = start;
      exclusive = true;
    }
    const opts = from.length === 0 ? {} : { start: Buffer.from(from, 'utf8'), exclusiveStart: exclusive };
    for (const { key, value } of this.kv.getRange(opts)) {
      const k = key.toString('utf8');
      if (!k.startsWith(prefix)) break;
      out.push([k, decodeValue<Rec>(key, value, this.sealed, `record of key ${JSON.stringify(k)}`, recProblem)]);
      if (out.length >= limit) break;
    }
    return out;
  }

  rids(): Array<[string, RidRecord]> {
    this.check();
    const out: Array<[string, RidRecord]> = [];
    for (const { key, value } of this.ridsDb.getRange({})) {
      const rid = key.toString('utf8');
      out.push([rid, decodeValue<RidRecord>(key, value, this.sealed, `rid ${JSON.stringify(rid)}`, ridRecordProblem)]);
    }
    out.sort((a, b) => a[1].index - b[1].index || compareKeys(a[0], b[0]));
    return out;
  }

  *entries(): Iterable<[string, Rec]> {
    this.check();
    for (const { key, value } of this.kv.getRange({})) {
      const k = key.toString('utf8');
      yield [k, decodeValue<Rec>(key, value, this.sealed, `record of key ${JSON.stringify(k)}`, recProblem)];
    }
  }

  digest(): string {
    return digestOf(this.meta().index, this.entries());
  }

  counts(): CheckpointCounts {
    this.check();
    return { keys: this.kv.getKeysCount(), rids: this.ridsDb.getKeysCount() };
  }

  /** Decode a raw value as reads do (checksum, shape), for verification. */
  decodeRaw<T>(key: Buffer, value: Buffer, what: string, problem: (x: unknown) => string | null): T {
    return decodeValue<T>(key, value, this.sealed, what, problem);
  }

  /** The raw bytes of one database, in key order (for verification). */
  *raw(db: 'kv' | 'rids' | 'events' | 'hist' | 'heads'): Iterable<{ key: Buffer; value: Buffer }> {
    this.check();
    const d = { kv: this.kv, rids: this.ridsDb, events: this.eventsDb, hist: this.histDb, heads: this.headsDb }[db];
    if (d === null) return;
    for (const { key, value } of d.getRange({})) yield { key: Buffer.from(key), value };
  }

  /** Decode a stored event as reads do (checksum, shape, index), for verification; with its keyPrev (undefined: not chained). */
  decodeEventRaw(key: Buffer, value: Buffer): { event: ChangeEvent; keyPrev: Buffer | null | undefined } {
    const { event, keyPrev: p } = this.decodeStoredEvent(key, value);
    return { event, keyPrev: p === undefined ? undefined : p === null ? null : eventKey(p[0], p[1]) };
  }

  /** Decode a head as reads do, for verification. */
  decodeHeadRaw(key: Buffer, value: Buffer): Buffer {
    return decodeHead(key, value);
  }

  /** Each key's events are chained (false: an older checkpoint read as it is). */
  isChained(): boolean {
    return this.chained;
  }

  write(delta: CheckpointDelta): Promise<void> {
    const run = (): Promise<void> => this.writeNow(delta);
    const next = this.chain.then(run, run);
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async writeNow(delta: CheckpointDelta): Promise<void> {
    this.check();
    if (this.readOnly) throw new Error(`checkpoint ${this.dir} is open read-only`);
    // Check and encode everything first (nothing inside the batch may throw halfway), a slice
    // at a time with the event loop let run in between: requests go on meanwhile.
    const sl = new Slices(this.sliceMs);
    const before = this.meta();
    const steps = deltaProblemSteps(delta, before, CHECKPOINT_CHECK_STEP_ITEMS);
    for (;;) {
      const r = steps.next();
      if (r.done) {
        if (r.value !== null) throw new Error(`checkpoint write: ${r.value}`);
        break;
      }
      if (sl.due(CHECKPOINT_CHECK_STEP_ITEMS)) await sl.yield();
    }
    const kvOps: Array<[Buffer, Buffer | null]> = new Array(delta.kv.length);
    // The ttl index follows the records: set for a record with a ttl, removed where one had it.
    const ttlOps: Array<[string, Buffer, Buffer | null, TimedRec | null]> = [];
    for (let i = 0; i < delta.kv.length; i++) {
      if (sl.due()) await sl.yield();
      const [k, rec] = delta.kv[i]!;
      const key = Buffer.from(k, 'utf8');
      kvOps[i] = [key, rec === null ? null : sealValue(key, recJson(rec))];
      if (rec !== null && (rec.ttl !== undefined || rec.lease !== undefined)) {
        const t = timedOf(rec);
        ttlOps.push([k, key, sealValue(key, timedJson(t)), t]);
      }
      else if (this.ttlIndex.has(k)) ttlOps.push([k, key, null, null]);
    }
    const ridSets: Array<[Buffer, Buffer]> = new Array(delta.ridsSet.length);
    for (let i = 0; i < delta.ridsSet.length; i++) {
      if (sl.due()) await sl.yield();
      const [rid, rec] = delta.ridsSet[i]!;
      const key = Buffer.from(rid, 'utf8');
      ridSets[i] = [key, sealValue(key, ridJson(rec))];
    }
    this.check();
    const history = await this.historyOps(delta, sl);
    this.check();
    const ridDels = delta.ridsDel.map((rid) => Buffer.from(rid, 'utf8'));
    const meta = sealValue(META_KEY, metaJson(delta.meta));
    const hb = sealValue(HISTORY_BYTES_KEY, String(history.bytes));
    const hm = sealValue(HISTORY_KEY, historyJson(history.meta));
    // lmdb-js's batch(): one transaction, committed on its write thread. Its callback is
    // synchronous (~1 µs per record on the loop), which is why the slices above keep
    // checkpoints small under load. Nothing in it throws (all checked and encoded above):
    // a throw would commit what was queued before it. (A worker thread running this batch,
    // 752ed1c, was dropped: process.exit hangs while lmdb-js's writer waits on that thread's
    // JS, and under load it let checkpoints grow without bound; see issue 9's notes.)
    await this.root.batch(() => {
      for (const [k, v] of kvOps) {
        if (v === null) void this.kv.remove(k);
        else void this.kv.put(k, v);
      }
      for (const k of ridDels) void this.ridsDb.remove(k);
      for (const [k, v] of ridSets) void this.ridsDb.put(k, v);
      for (const [, k, v] of ttlOps) {
        if (v === null) void this.ttlDb!.remove(k);
        else void this.ttlDb!.put(k, v);
      }
      for (const k of history.dels) void this.eventsDb!.remove(k);
      for (const [k, v] of history.puts) void this.eventsDb!.put(k, v);
      for (const k of history.headDels) void this.headsDb!.remove(k);
      for (const [k, v] of history.headPuts) void this.headsDb!.put(k, v);
      void this.metaDb.put(HISTORY_KEY, hm);
      void this.metaDb.put(HISTORY_BYTES_KEY, hb);
      void this.metaDb.put(META_KEY, meta);
    });
    // Visible from here (the batch resolves once committed): the history's meta and the ttl
    // index follow in the same turn, so no read sees the new events with the old floor.
    this.hist = history.meta;
    this.histBytes = history.bytes;
    for (const [k, , , t] of ttlOps) {
      if (t !== null) this.ttlIndex.set(k, t);
      else this.ttlIndex.delete(k);
    }
    // Durable once flushed.
    await this.root.flushed;
    if (history.heads === null) this.forgetHeads();
    else {
      // (Sliced: only writes read the heads, and the chain holds the next one until this resolves.)
      for (const [key, head] of history.heads) {
        if (sl.due()) await sl.yield();
        this.rememberHead(key, head);
      }
    }
  }

  /**
   * The history's part of a write: the delta's events added (each chained to its key's event
   * before), the oldest let go of beyond the retention (by whole entries, at most
   * HISTORY_PRUNE_EVENTS_MAX more than are added), and the heads of the keys they change.
   */
  private async historyOps(delta: CheckpointDelta, sl: Slices): Promise<HistoryOps> {
    const dels: Buffer[] = [];
    const headDels: Buffer[] = [];
    /**
     * The newest event let go of, per key, where it is a delete: the key's head goes too if it
     * names it. (A head naming a put let go of stays: the key is in kv, and its next change
     * rewrites the head anyway. So heads never outnumber the keys by more than those deleted
     * with some history kept, and the keys changed once and let go of cost no delete here.)
     */
    const dropped = new Map<string, Buffer>();
    const dropOld = (ev: ChangeEvent | null, k: Buffer): void => {
      const kk = Buffer.from(k);
      dels.push(kk);
      // (An event that does not decode may leave its key's head naming it: the chain ends there.)
      if (ev === null) return;
      if (ev.op === 'del') dropped.set(ev.key, kk);
      else dropped.delete(ev.key);
    };
    if (delta.events === undefined) {
      // Starting over: a fresh store in practice; anything there goes.
      for (const k of this.eventsDb!.getKeys({})) dels.push(Buffer.from(k));
      for (const k of this.headsDb!.getKeys({})) headDels.push(Buffer.from(k));
      return { puts: [], dels, headPuts: [], headDels, heads: null, meta: { floor: delta.meta.index, count: 0 }, bytes: 0 };
    }
    const at = this.now();
    const events = delta.events;
    // Encoded first: the byte bound goes by their sizes.
    const enc: Array<[Buffer, Buffer]> = new Array(events.length);
    /** Each key's event so far in this delta: the next one's keyPrev. */
    const before = new Map<string, Buffer>();
    let newBytes = 0;
    let seq = 0;
    let prevIndex = -1;
    for (let i = 0; i < events.length; i++) {
      // Encoding many events lets the loop run between slices, as the records' encoding does.
      if (sl.due()) await sl.yield();
      const ev = events[i]!;
      seq = ev.index === prevIndex ? seq + 1 : 0;
      prevIndex = ev.index;
      const k = eventKey(ev.index, seq);
      // (It may name an event let go of by this very write: the chain then ends there.)
      const keyPrev = before.get(ev.key) ?? this.headForWrite(ev.key);
      enc[i] = [k, sealValue(k, eventJson(ev, at, keyPrev))];
      before.set(ev.key, k);
      newBytes += enc[i]![1].length;
    }
    let { floor, count } = this.hist;
    let bytes = this.histBytes;
    let excess = count + events.length - this.historyEventsMax;
    let bytesExcess = bytes + newBytes - this.historyBytesMax;
    const ageCut = this.historyAgeMs > 0 ? at - this.historyAgeMs : -1;
    let budget = events.length + HISTORY_PRUNE_EVENTS_MAX;
    let last = -1;
    // Oldest first, a slice of events per read (each its own read: no cursor is held while the
    // loop runs; only this writer changes the history, and its writes run one at a time).
    let cursor: Buffer | null = null;
    // Nothing to let go of (the usual case): no read at all. (Once something went, go on to
    // the end of its entry, in the next slice if need be.)
    scan: while (excess > 0 || bytesExcess > 0 || ageCut >= 0 || last >= 0) {
      // Only as many as may go (an entry's few more, read in the next slice), or a slice when ages or bytes decide.
      const limit = ageCut >= 0 || bytesExcess > 0 ? CHECKPOINT_SLICE_ITEMS : Math.min(CHECKPOINT_SLICE_ITEMS, Math.max(excess, 0) + 8);
      const slice: Array<{ key: Buffer; stored: StoredEvent | null; size: number }> = [...this.eventsDb!.getRange({ ...(cursor !== null ? { start: cursor, exclusiveStart: true } : {}), limit })].map(({ key, value }) => ({ key: Buffer.from(key), stored: this.decodeStored(key, value), size: value.length }));
      for (const { key, stored, size } of slice) {
        const index = indexOfEventKey(key);
        // Whole entries only: decide at each new index.
        // (A damaged event's age is unknown: it goes once the age limit is reached, or by count or bytes.)
        if (index !== last && (budget <= 0 || (excess <= 0 && bytesExcess <= 0 && (stored === null ? ageCut < 0 : stored.at >= ageCut)))) break scan;
        dropOld(stored?.event ?? null, key);
        excess--;
        bytesExcess -= size;
        bytes -= size;
        budget--;
        count--;
        last = index;
      }
      if (slice.length < limit) break;
      cursor = slice[slice.length - 1]!.key;
      if (sl.due(slice.length)) await sl.yield();
    }
    if (last >= 0) floor = last;
    // Fewer kept than one delta holds (by count or by bytes): let go of its oldest too.
    let firstKept = 0;
    if ((excess > 0 || bytesExcess > 0) && count <= 0) {
      count = 0;
      bytes = 0;
      let fit = 0;
      for (let room = this.historyBytesMax, i = events.length - 1; i >= 0 && enc[i]![1].length <= room; i--, fit++) room -= enc[i]![1].length;
      const [drop, f] = pruneCount(events, Math.min(fit, events.length - Math.max(excess, 0)));
      if (drop > 0) {
        firstKept = drop;
        floor = f;
      }
    }
    const puts = enc.slice(firstKept);
    for (const [, v] of puts) bytes += v.length;
    /** Each key's newest event kept: its head. */
    // (A slice at a time too: at a million keys this is a head per event, ~150 ms in one go.)
    const newest = new Map<string, Buffer>();
    for (let i = firstKept; i < events.length; i++) {
      if (sl.due()) await sl.yield();
      newest.set(events[i]!.key, enc[i]![0]);
    }
    const headPuts: Array<[Buffer, Buffer]> = [];
    const heads = new Map<string, Buffer | null>();
    for (const [key, k] of newest) {
      if (sl.due()) await sl.yield();
      const kb = Buffer.from(key, 'utf8');
      headPuts.push([kb, sealValue(kb, pointerJson(k))]);
      heads.set(key, k);
    }
    for (const [key, k] of dropped) {
      if (sl.due()) await sl.yield();
      if (newest.has(key)) continue;
      const head = this.headForWrite(key);
      if (head !== null && head.equals(k)) {
        headDels.push(Buffer.from(key, 'utf8'));
        heads.set(key, null);
      }
    }
    return { puts, dels, headPuts, headDels, heads, meta: { floor, count: count + puts.length }, bytes };
  }

  /** A key's head as a write finds it; a damaged one counts as none (the write replaces it, or leaves it). */
  private headForWrite(key: string): Buffer | null {
    const cached = this.headsYoung.get(key) ?? this.headsOld.get(key);
    if (cached !== undefined) return cached;
    try {
      return this.headOf(Buffer.from(key, 'utf8'));
    } catch (err) {
      if (err instanceof CorruptRecordError) return null;
      throw err;
    }
  }

  /** After a committed write: its head for key (null: it has none now). */
  private rememberHead(key: string, head: Buffer | null): void {
    if (head === null || this.headCacheKeysMax === 0) {
      this.headsYoung.delete(key);
      this.headsOld.delete(key);
      return;
    }
    // (A key in old stays there too until old goes: young is looked at first.)
    if (!this.headsYoung.has(key) && this.headsYoung.size >= Math.max(1, this.headCacheKeysMax >> 1)) {
      this.headsOld = this.headsYoung;
      this.headsYoung = new Map();
    }
    // A copy of its own: the event key is a slice of Node's shared pool, which it would keep.
    const own = Buffer.alloc(head.length);
    head.copy(own);
    this.headsYoung.set(key, own);
  }

  private forgetHeads(): void {
    this.headsYoung = new Map();
    this.headsOld = new Map();
  }

  private decodeStored(key: Buffer, value: Buffer): StoredEvent | null {
    try {
      return decodeValue<StoredEvent>(key, value, true, 'event', storedEventProblem);
    } catch {
      return null;
    }
  }

  /**
   * Chain each key's events (an older checkpoint indexed them in hist, emptied here), in one
   * transaction; a new checkpoint only gets the mark. Once, at a writable open.
   */
  private async chainHistory(): Promise<void> {
    const newest = new Map<string, Buffer>();
    const puts: Array<[Buffer, Buffer]> = [];
    let bytes = 0;
    // The hist index names each event's key: a damaged event stays as it is but in its key's
    // chain, so that reads still fail on it (and the server repairs), as they did through hist.
    const keyOf = new Map<string, string>();
    for (const hk of this.histDb!.getKeys({})) {
      const sep = hk.length - EVENT_KEY_BYTES - 1;
      if (sep >= 0 && hk[sep] === 0) keyOf.set(hk.toString('hex', sep + 1), hk.toString('utf8', 0, sep));
    }
    for (const { key, value } of this.eventsDb!.getRange({})) {
      const stored = this.decodeStored(key, value);
      if (stored === null) {
        bytes += value.length;
        const owner = keyOf.get(key.toString('hex'));
        if (owner !== undefined) newest.set(owner, Buffer.from(key));
        continue;
      }
      const k = Buffer.from(key);
      puts.push([k, sealValue(k, eventJson(stored.event, stored.at, newest.get(stored.event.key) ?? null))]);
      bytes += puts[puts.length - 1]![1].length;
      newest.set(stored.event.key, k);
    }
    const histKeys = [...this.histDb!.getKeys({})].map((k) => Buffer.from(k));
    await this.root.batch(() => {
      for (const [k, v] of puts) void this.eventsDb!.put(k, v);
      for (const [key, k] of newest) {
        const kb = Buffer.from(key, 'utf8');
        void this.headsDb!.put(kb, sealValue(kb, pointerJson(k)));
      }
      for (const k of histKeys) void this.histDb!.remove(k);
      void this.metaDb.put(HISTORY_CHAIN_KEY, sealValue(HISTORY_CHAIN_KEY, '1'));
      void this.metaDb.put(HISTORY_BYTES_KEY, sealValue(HISTORY_BYTES_KEY, String(bytes)));
    });
    await this.root.flushed;
    this.chained = true;
  }

  /** Rewrite a format-1 checkpoint with checksums (format 2), in one transaction. */
  private async upgrade(): Promise<void> {
    const kv = [...this.kv.getRange({})].map(({ key, value }) => [Buffer.from(key), sealValue(key, recJson(decodeValue<Rec>(key, value, false, `record of key ${key.toString('utf8')}`, recProblem)))] as const);
    const rids = [...this.ridsDb.getRange({})].map(({ key, value }) => [Buffer.from(key), sealValue(key, ridJson(decodeValue<RidRecord>(key, value, false, `rid ${key.toString('utf8')}`, ridRecordProblem)))] as const);
    const old = decodeValue<CheckpointMeta & { format: number }>(META_KEY, this.metaDb.getBinary(META_KEY)!, false, 'meta', (x) => metaProblem({ ...(x as object), format: CHECKPOINT_FORMAT }));
    const meta = sealValue(META_KEY, metaJson({ ...old, format: CHECKPOINT_FORMAT }));
    await this.root.batch(() => {
      for (const [k, v] of kv) void this.kv.put(k, v);
      for (const [k, v] of rids) void this.ridsDb.put(k, v);
      void this.metaDb.put(META_KEY, meta);
    });
    await this.root.flushed;
    this.sealed = true;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.chain;
    this.closed = true;
    await this.root.close();
  }
}

// ---------------------------------------------------------------------------
// In memory

/** The in-memory twin: a sorted map. A write is atomic (applied at once); clone() is the state a crash leaves. */
export class MemCheckpoint implements CheckpointStore {
  private history: MemHistory;
  constructor(private readonly historyMax = HISTORY_EVENTS_DEFAULT) {
    this.history = new MemHistory(historyMax);
  }
  private readonly map = new Map<string, Readonly<Rec>>();
  /** Keys in byte order. */
  private keys: string[] = [];
  private readonly ridMap = new Map<string, Readonly<RidRecord>>();
  private metaValue: CheckpointMeta = emptyMeta();
  writes = 0;

  meta(): CheckpointMeta {
    return { ...this.metaValue, voters: [...this.metaValue.voters] };
  }

  get(key: string): Rec | undefined {
    return this.map.get(key);
  }

  /** Position of the first key >= k (or > k when `after`). */
  private lowerBound(k: string, after: boolean): number {
    let lo = 0;
    let hi = this.keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = compareKeys(this.keys[mid]!, k);
      if (c < 0 || (after && c === 0)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  range(prefix: string, start: string | undefined, limit: number): Array<[string, Rec]> {
    const out: Array<[string, Rec]> = [];
    if (limit <= 0) return out;
    const i0 =
      start !== undefined && compareKeys(start, prefix) >= 0 ? this.lowerBound(start, true) : this.lowerBound(prefix, false);
    for (let i = i0; i < this.keys.length && out.length < limit; i++) {
      const k = this.keys[i]!;
      if (!k.startsWith(prefix)) break;
      out.push([k, this.map.get(k)!]);
    }
    return out;
  }

  rids(): Array<[string, RidRecord]> {
    const out = [...this.ridMap.entries()];
    out.sort((a, b) => a[1].index - b[1].index || compareKeys(a[0], b[0]));
    return out;
  }

  *entries(): Iterable<[string, Rec]> {
    for (const k of this.keys) yield [k, this.map.get(k)!];
  }

  digest(): string {
    return digestOf(this.metaValue.index, this.entries());
  }

  counts(): CheckpointCounts {
    return { keys: this.keys.length, rids: this.ridMap.size };
  }

  ttlKeys(): Array<[string, TimedRec]> {
    const out: Array<[string, TimedRec]> = [];
    for (const [k, r] of this.map) if (r.ttl !== undefined || r.lease !== undefined) out.push([k, timedOf(r)]);
    return out;
  }

  write(delta: CheckpointDelta): Promise<void> {
    const p = deltaProblem(delta, this.metaValue);
    if (p !== null) return Promise.reject(new Error(`checkpoint write: ${p}`));
    for (const [key, rec] of delta.kv) {
      const had = this.map.has(key);
      if (rec === null) {
        if (had) {
          this.map.delete(key);
          this.keys.splice(this.lowerBound(key, false), 1);
        }
      } else {
        if (!had) this.keys.splice(this.lowerBound(key, false), 0, key);
        const copy: Rec = { value: rec.value, rev: rec.rev, ts: rec.ts };
        if (rec.ttl !== undefined) copy.ttl = rec.ttl;
        if (rec.b64) copy.b64 = true;
        if (rec.lease !== undefined) copy.lease = rec.lease;
        this.map.set(key, Object.freeze(copy));
      }
    }
    for (const rid of delta.ridsDel) this.ridMap.delete(rid);
    for (const [rid, rec] of delta.ridsSet) {
      const result = Object.freeze(rec.result.ok ? { ok: true as const } : { ...rec.result });
      this.ridMap.set(rid, Object.freeze({ index: rec.index, ts: rec.ts, result }));
    }
    this.history.add(delta.events, delta.meta.index);
    this.metaValue = { ...delta.meta, voters: [...delta.meta.voters] };
    this.writes++;
    return Promise.resolve();
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

  /** An independent copy: what a restart after a crash finds (writes are atomic). */
  clone(): MemCheckpoint {
    const c = new MemCheckpoint(this.historyMax);
    c.history = this.history.clone();
    for (const [k, v] of this.map) c.map.set(k, v);
    c.keys = this.keys.slice();
    for (const [k, v] of this.ridMap) c.ridMap.set(k, v);
    c.metaValue = this.meta();
    return c;
  }

  async close(): Promise<void> {}
}

// ---------------------------------------------------------------------------
// Offline verification for ckvctl.

export interface CheckpointReport {
  meta: CheckpointMeta | null;
  keys: number;
  rids: number;
  /** The durable history: events kept, and the index above which all are. */
  events: number;
  historyFloor: number | null;
  digest: string | null;
  problems: string[];
}

/** Open the checkpoint read-only and check every record; never throws for a bad record, lists it. */
export async function verifyCheckpoint(dir: string): Promise<CheckpointReport> {
  const report: CheckpointReport = { meta: null, keys: 0, rids: 0, events: 0, historyFloor: null, digest: null, problems: [] };
  let cp: LmdbCheckpoint;
  try {
    cp = await LmdbCheckpoint.open(dir, { readOnly: true });
  } catch (err) {
    report.problems.push(`cannot open: ${(err as Error).message}`);
    return report;
  }
  const PROBLEMS_MAX = 1000;
  const problem = (p: string): void => {
    if (report.problems.length < PROBLEMS_MAX) report.problems.push(p);
  };
  try {
    try {
      report.meta = cp.meta();
    } catch (err) {
      problem((err as Error).message);
    }
    const index = report.meta?.index ?? Number.MAX_SAFE_INTEGER;
    const h = createHash('sha256');
    h.update(DIGEST_PREFIX);
    h.update(`index ${report.meta?.index ?? 0}\n`);
    let prevKey: Buffer | null = null;
    for (const { key, value } of cp.raw('kv')) {
      report.keys++;
      const k = key.toString('utf8');
      if (!Buffer.from(k, 'utf8').equals(key)) problem(`key ${JSON.stringify(k)} is not valid UTF-8`);
      if (key.length > KEY_BYTES_MAX) problem(`key ${JSON.stringify(k)} is longer than KEY_BYTES_MAX`);
      if (prevKey !== null && Buffer.compare(prevKey, key) >= 0) problem(`key ${JSON.stringify(k)} is out of order`);
      prevKey = Buffer.from(key);
      try {
        const rec = cp.decodeRaw<Rec>(key, value, `record of key ${JSON.stringify(k)}`, recProblem);
        if (rec.rev > index) problem(`key ${JSON.stringify(k)}: rev ${rec.rev} is beyond meta.index ${index}`);
        h.update(digestLine(k, rec));
      } catch (err) {
        problem((err as Error).message);
      }
    }
    for (const { key, value } of cp.raw('rids')) {
      report.rids++;
      const rid = key.toString('utf8');
      try {
        const rec = cp.decodeRaw<RidRecord>(key, value, `rid ${JSON.stringify(rid)}`, ridRecordProblem);
        if (rec.index > index) problem(`rid ${JSON.stringify(rid)}: index ${rec.index} is beyond meta.index ${index}`);
      } catch (err) {
        problem((err as Error).message);
      }
    }
    const floor = cp.historyFloor();
    report.historyFloor = floor;
    const chained = cp.isChained();
    const evKeys = new Map<string, string>();
    /** Each key's newest event so far, in log order: the next one's keyPrev, and in the end its head. */
    const newest = new Map<string, Buffer>();
    const show = (k: Buffer): string => `${indexOfEventKey(k)}/${k.readUInt32BE(8)}`;
    let lastIndex = floor;
    let eventBytes = 0;
    for (const { key, value } of cp.raw('events')) {
      report.events++;
      eventBytes += value.length;
      try {
        const { event: ev, keyPrev } = cp.decodeEventRaw(key, value);
        if (ev.index <= floor || ev.index > index) problem(`event ${ev.index} is outside the history ${floor + 1}..${index}`);
        if (ev.index < lastIndex) problem(`event ${ev.index} is out of order`);
        lastIndex = ev.index;
        evKeys.set(key.toString('hex'), ev.key);
        if (chained) {
          // keyPrev names the key's event before, or (being its first kept) none or one let go of.
          const want = newest.get(ev.key);
          const ok = want !== undefined ? keyPrev?.equals(want) === true : keyPrev === null || (keyPrev !== undefined && indexOfEventKey(keyPrev) <= floor);
          if (!ok) problem(`event ${show(key)} of key ${JSON.stringify(ev.key)} names ${keyPrev ? show(keyPrev) : String(keyPrev)} as the one before it, not ${want ? show(want) : 'none kept'}`);
          newest.set(ev.key, key);
        }
      } catch (err) {
        problem((err as Error).message);
      }
    }
    if (report.events !== cp.historyCount()) problem(`the history counts ${cp.historyCount()} events but holds ${report.events}`);
    if (eventBytes !== cp.historyBytes()) problem(`the history counts ${cp.historyBytes()} bytes of events but holds ${eventBytes}`);
    if (chained) {
      for (const { key, value } of cp.raw('heads')) {
        const k = key.toString('utf8');
        try {
          const head = cp.decodeHeadRaw(key, value);
          const want = newest.get(k);
          newest.delete(k);
          // A head may name an event let go of: a put (its key is still there), or a damaged one.
          if (want !== undefined ? !head.equals(want) : indexOfEventKey(head) > floor) problem(`the head of key ${JSON.stringify(k)} names ${show(head)}, not ${want ? show(want) : 'an event let go of'}`);
        } catch (err) {
          problem((err as Error).message);
        }
      }
      for (const [k, ev] of newest) problem(`key ${JSON.stringify(k)} has events (the newest ${show(ev)}) but no head`);
    } else {
      let hist = 0;
      for (const { key } of cp.raw('hist')) {
        hist++;
        const sep = key.length - 13;
        const owner = sep >= 0 && key[sep] === 0 ? evKeys.get(key.subarray(sep + 1).toString('hex')) : undefined;
        if (owner === undefined || owner !== key.toString('utf8', 0, sep)) problem(`hist entry ${JSON.stringify(key.toString('utf8', 0, Math.max(sep, 0)))} points at no event of its key`);
      }
      if (hist !== report.events) problem(`${hist} hist entries for ${report.events} events`);
    }
    if (report.meta !== null) report.digest = h.digest('hex');
  } finally {
    await cp.close();
  }
  return report;
}
