// The on-disk format of the log: <data>/log/ holds segment files named by the
// index of their first entry, zero-padded to 20 digits so that name order is
// index order.
//
// Segment layout (all integers little-endian):
//   header  (SEGMENT_HEADER_BYTES = 24)
//     [8]  magic "CKVLOG\0\x01"
//     [u32] format version (SEGMENT_FORMAT_VERSION)
//     [u64] index of the first entry
//     [u32] crc32c of the 20 bytes above
//   records, back to back
//     [u32] length of the entry bytes (1..ENTRY_BYTES_MAX)
//     [u32] crc32c of the entry bytes
//     [length] the entry (entry-codec.ts: canonical UTF-8 JSON)
//
// What both the live log (segment-log.ts) and the offline tools
// (log-inspect.ts) need: the layout, encoding, parsing a segment's bytes with
// the classification of what is bad (a torn tail or corruption), and the few
// file operations both do to a log directory.

import fs from 'node:fs';
import path from 'node:path';
import { ENTRY_BYTES_MAX } from '../core/limits.js';
import type { Entry } from '../core/wire.js';
import { crc32c } from './crc32c.js';
import { decodeEntry } from './entry-codec.js';

export const SEGMENT_MAGIC = Buffer.from('CKVLOG\0\x01', 'latin1');
export const SEGMENT_FORMAT_VERSION = 1;
export const SEGMENT_HEADER_BYTES = 24;
export const RECORD_HEADER_BYTES = 8;
/** Digits in a segment file name (enough for any safe integer). */
const SEGMENT_NAME_DIGITS = 20;
const SEGMENT_NAME = /^(\d{20})\.seg$/;
export const LOG_DIR_NAME = 'log';

/** A bad record or header anywhere but the torn tail: the server must not start. */
export class LogCorruptError extends Error {
  readonly file: string;
  readonly offset: number;
  readonly reason: string;
  constructor(file: string, offset: number, reason: string) {
    super(`log segment ${file} is corrupt at byte ${offset}: ${reason} (ckvctl log repair cuts the log there)`);
    this.name = 'LogCorruptError';
    this.file = file;
    this.offset = offset;
    this.reason = reason;
  }
}

export function segmentFileName(first: number): string {
  return String(first).padStart(SEGMENT_NAME_DIGITS, '0') + '.seg';
}

/** `<data>/log`: where the server keeps its log. */
export function logDirOf(dataDir: string): string {
  return path.join(dataDir, LOG_DIR_NAME);
}

/** The header of a segment whose first entry is `first`. */
export function encodeHeader(first: number): Buffer {
  assertIndex(first, 'segment first index');
  const h = Buffer.alloc(SEGMENT_HEADER_BYTES);
  SEGMENT_MAGIC.copy(h, 0);
  h.writeUInt32LE(SEGMENT_FORMAT_VERSION, 8);
  h.writeBigUInt64LE(BigInt(first), 12);
  h.writeUInt32LE(crc32c(h, 0, 0, 20), 20);
  return h;
}

export function assertIndex(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${what} must be a positive safe integer, got ${n}`);
}

/**
 * Write the record of an entry whose encoded text is `text` (`len` bytes of
 * UTF-8) into buf at `off`; returns the offset just past it.
 */
export function writeRecord(buf: Buffer, off: number, text: string, len: number): number {
  buf.writeUInt32LE(len, off);
  buf.write(text, off + RECORD_HEADER_BYTES, len, 'utf8');
  buf.writeUInt32LE(crc32c(buf, 0, off + RECORD_HEADER_BYTES, off + RECORD_HEADER_BYTES + len), off + 4);
  return off + RECORD_HEADER_BYTES + len;
}

// ---------------------------------------------------------------------------
// Parsing: shared by SegmentLog.open() and the offline scanner, verify and repair.

export interface BadSpot {
  offset: number;
  reason: string;
  /** What a crash in the middle of a write can leave: a cut or garbage reaching the end of the file. */
  tornLike: boolean;
}

export interface ParsedSegment {
  /** From the header, or from the name when the header is bad. */
  first: number;
  /** The header is unusable (then there are no records). */
  headerBad: BadSpot | null;
  /** End offset of each good record, in order. */
  ends: number[];
  entries: Entry[] | null;
  /** The first bad record, if any: everything from its offset on is unusable. */
  bad: BadSpot | null;
  fileBytes: number;
}

function allZero(buf: Uint8Array, from: number): boolean {
  for (let i = from; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

/**
 * A segment file's bytes: its header, then records up to the first bad one.
 * `nameFirst` is the first index its file name gives; `collect` keeps the
 * decoded entries as well.
 */
export function parseSegment(buf: Buffer, nameFirst: number, collect: boolean): ParsedSegment {
  const out: ParsedSegment = { first: nameFirst, headerBad: null, ends: [], entries: collect ? [] : null, bad: null, fileBytes: buf.length };
  if (buf.length < SEGMENT_HEADER_BYTES) {
    out.headerBad = { offset: 0, reason: `partial header (${buf.length} of ${SEGMENT_HEADER_BYTES} bytes)`, tornLike: true };
    return out;
  }
  const zeroFile = allZero(buf, 0);
  if (!buf.subarray(0, 8).equals(SEGMENT_MAGIC)) {
    out.headerBad = { offset: 0, reason: 'bad magic (not a ckv log segment)', tornLike: zeroFile };
    return out;
  }
  if (buf.readUInt32LE(20) !== crc32c(buf, 0, 0, 20)) {
    out.headerBad = { offset: 0, reason: 'bad header checksum', tornLike: false };
    return out;
  }
  const version = buf.readUInt32LE(8);
  if (version !== SEGMENT_FORMAT_VERSION) {
    out.headerBad = { offset: 0, reason: `unsupported segment format version ${version}`, tornLike: false };
    return out;
  }
  const first = Number(buf.readBigUInt64LE(12));
  if (first !== nameFirst) {
    out.headerBad = { offset: 0, reason: `header says first index ${first} but the file name says ${nameFirst}`, tornLike: false };
    return out;
  }
  let offset = SEGMENT_HEADER_BYTES;
  const size = buf.length;
  while (offset < size) {
    if (size - offset < RECORD_HEADER_BYTES) {
      out.bad = { offset, reason: `partial record header (${size - offset} bytes)`, tornLike: true };
      break;
    }
    const len = buf.readUInt32LE(offset);
    const end = offset + RECORD_HEADER_BYTES + len;
    if (len === 0 || len > ENTRY_BYTES_MAX) {
      out.bad = { offset, reason: `bad record length ${len}`, tornLike: end > size || allZero(buf, offset) };
      break;
    }
    if (end > size) {
      out.bad = { offset, reason: `record of ${len} bytes runs past the end of the file`, tornLike: true };
      break;
    }
    const crc = buf.readUInt32LE(offset + 4);
    if (crc !== crc32c(buf, 0, offset + RECORD_HEADER_BYTES, end)) {
      // A bad checksum is a torn write only if nothing follows the record.
      out.bad = { offset, reason: 'record checksum mismatch', tornLike: end === size };
      break;
    }
    const expected = first + out.ends.length;
    let entry: Entry;
    try {
      entry = decodeEntry(buf, offset + RECORD_HEADER_BYTES, end);
    } catch (err) {
      out.bad = { offset, reason: `record does not decode: ${(err as Error).message}`, tornLike: false };
      break;
    }
    if (entry.index !== expected) {
      out.bad = { offset, reason: `record holds entry ${entry.index}, expected ${expected}`, tornLike: false };
      break;
    }
    out.ends.push(end);
    if (out.entries !== null) out.entries.push(entry);
    offset = end;
  }
  return out;
}

/** Why a segment starting at `first` cannot follow one whose last entry is `prevLast`. */
export function notFollowingOn(first: number, prevLast: number): string {
  return `first index ${first} does not follow on from the previous segment's last index ${prevLast}`;
}

// ---------------------------------------------------------------------------
// Segment files in a log directory: what the live log and the offline tools
// both do to them.

export interface SegmentFile {
  name: string;
  first: number;
}

/** The segment files in `logDir`, oldest first, and the names of any other files. */
export function listSegmentFiles(logDir: string): { segments: SegmentFile[]; others: string[] } {
  let names: string[];
  try {
    names = fs.readdirSync(logDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { segments: [], others: [] };
    throw err;
  }
  const segments: SegmentFile[] = [];
  const others: string[] = [];
  for (const name of names) {
    const m = SEGMENT_NAME.exec(name);
    if (m === null) {
      others.push(name);
      continue;
    }
    const first = Number(m[1]);
    if (!Number.isSafeInteger(first) || first < 1) {
      others.push(name);
      continue;
    }
    segments.push({ name, first });
  }
  // Zero-padded names: string order is index order.
  segments.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  others.sort();
  return { segments, others };
}

/** Make what was created, renamed or deleted in `dir` durable. */
export function fsyncDirSync(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Cut `file` to `size` bytes, durably (fdatasync) before returning. */
export function truncateFileSync(file: string, size: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.ftruncateSync(fd, size);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
