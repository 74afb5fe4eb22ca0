// The log on disk: <data>/log/ holds segment files named by the index of their
// first entry, zero-padded to 20 digits so that name order is index order.
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
// Writes go to the OS synchronously (one pwrite per append and segment) and
// are durable once sync() resolves (fdatasync). Truncation is rare (a
// follower dropping a conflicting suffix) and is made durable before
// truncateFrom() returns, so that no crash can leave a half-truncated log.

import fs from 'node:fs';
import path from 'node:path';
import { ENTRY_BYTES_MAX, SEGMENT_BYTES_MAX } from '../core/limits.js';
import type { Entry } from '../core/wire.js';
import { crc32c } from './crc32c.js';
import { decodeEntry, encodeEntryJson } from './entry-codec.js';
import type { LogOpenResult, LogStore } from './ports.js';

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

function encodeHeader(first: number): Buffer {
  assertIndex(first, 'segment first index');
  const h = Buffer.alloc(SEGMENT_HEADER_BYTES);
  SEGMENT_MAGIC.copy(h, 0);
  h.writeUInt32LE(SEGMENT_FORMAT_VERSION, 8);
  h.writeBigUInt64LE(BigInt(first), 12);
  h.writeUInt32LE(crc32c(h, 0, 0, 20), 20);
  return h;
}

function assertIndex(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${what} must be a positive safe integer, got ${n}`);
}

// ---------------------------------------------------------------------------
// Parsing: shared by open(), the offline scanner, verify and repair.

interface BadSpot {
  offset: number;
  reason: string;
  /** What a crash in the middle of a write can leave: a cut or garbage reaching the end of the file. */
  tornLike: boolean;
}

interface ParsedSegment {
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

function parseSegment(buf: Buffer, nameFirst: number, collect: boolean): ParsedSegment {
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

interface SegmentFile {
  name: string;
  first: number;
}

function listSegmentFiles(logDir: string): { segments: SegmentFile[]; others: string[] } {
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

function fsyncDirSync(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function fdatasyncP(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

function fsyncP(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
}

function writeAll(fd: number, buf: Buffer, off: number, len: number, pos: number): void {
  while (len > 0) {
    const n = fs.writeSync(fd, buf, off, len, pos);
    if (n <= 0) throw new Error(`log write returned ${n}`);
    off += n;
    len -= n;
    pos += n;
  }
}

// ---------------------------------------------------------------------------
// The live log.

interface Segment {
  first: number;
  name: string;
  path: string;
  /** ends[i]: byte offset just past the record of entry first + i. */
  ends: number[];
  /** Bytes in the file (SEGMENT_HEADER_BYTES when it has no records). */
  size: number;
  /** Open while current, waiting for a sync, or being synced; else -1. */
  fd: number;
}

export interface SegmentLogOptions {
  /** Called with each warning (also returned in `warnings`). */
  warn?: (warning: string) => void;
  /** Same as `warn` (either may be given). */
  log?: (warning: string) => void;
  /** Rotate to a new segment file beyond this size, in bytes. */
  segmentBytesMax?: number;
}

export interface SegmentLogOpenResult extends LogOpenResult {
  log: SegmentLog;
}

export class SegmentLog implements LogStore {
  readonly dir: string;
  private readonly segmentBytesMax: number;
  private readonly dirFd: number;
  private segments: Segment[] = [];
  private firstIdx = 0;
  private lastIdx = 0;
  /** Highest index known durable (covered by a completed sync). */
  private durableIdx = 0;

  /** Segments other than the current one with writes not yet fdatasync'd. */
  private readonly pending = new Set<Segment>();
  /** Segments whose fd the in-flight sync round is using. */
  private readonly roundSegs = new Set<Segment>();
  private dirDirty = false;
  /** Bumped by every change that a sync must cover. */
  private writeSeq = 0;
  private syncedSeq = 0;
  private roundSeq = 0;
  private roundTruncLow = Infinity;
  private inflight: Promise<void> | null = null;
  private queued: Promise<void> | null = null;
  private failure: Error | null = null;
  private closed = false;

  /** sync() calls, and fsync rounds actually run (group commit shares rounds). */
  syncCalls = 0;
  fsyncRounds = 0;

  private constructor(dir: string, segmentBytesMax: number, dirFd: number) {
    this.dir = dir;
    this.segmentBytesMax = segmentBytesMax;
    this.dirFd = dirFd;
  }

  /**
   * Open (creating if needed) the log in directory `dir` (the server uses
   * `<data>/log`). Cuts a torn tail with a warning; throws LogCorruptError on
   * any other bad record.
   */
  static async open(dir: string, opts: SegmentLogOptions = {}): Promise<SegmentLogOpenResult> {
    const segmentBytesMax = opts.segmentBytesMax ?? SEGMENT_BYTES_MAX;
    if (!Number.isSafeInteger(segmentBytesMax) || segmentBytesMax < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1) {
      throw new Error(`segmentBytesMax must be an integer of at least ${SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1} bytes`);
    }
    if (!fs.existsSync(dir)) {
      fs.mkdirSync(dir, { recursive: true });
      // Make the new directory entry durable.
      fsyncDirSync(path.dirname(dir));
    }
    const warnings: string[] = [];
    const warn = (w: string): void => {
      warnings.push(w);
      opts.warn?.(w);
      opts.log?.(w);
    };
    const { segments: files, others } = listSegmentFiles(dir);
    for (const o of others) warn(`log: ignoring unexpected file ${path.join(dir, o)}`);

    const dirFd = fs.openSync(dir, 'r');
    const log = new SegmentLog(dir, segmentBytesMax, dirFd);
    const entries: Entry[] = [];
    try {
      let dirChanged = false;
      for (let i = 0; i < files.length; i++) {
        const f = files[i]!;
        const file = path.join(dir, f.name);
        const isLast = i === files.length - 1;
        const parsed = parseSegment(fs.readFileSync(file), f.first, true);
        if (parsed.headerBad !== null) {
          if (isLast && parsed.headerBad.tornLike) {
            // A segment created just before a crash: it holds no records.
            fs.unlinkSync(file);
            dirChanged = true;
            warn(`log: removed ${file}: ${parsed.headerBad.reason} (torn segment header, no entries lost)`);
            break;
          }
          throw new LogCorruptError(file, parsed.headerBad.offset, parsed.headerBad.reason);
        }
        const prev = log.segments[log.segments.length - 1];
        if (prev !== undefined && parsed.first !== prev.first + prev.ends.length) {
          throw new LogCorruptError(
            file,
            0,
            `first index ${parsed.first} does not follow on from the previous segment's last index ${prev.first + prev.ends.length - 1}`,
          );
        }
        let size = parsed.fileBytes;
        if (parsed.bad !== null) {
          if (!(isLast && parsed.bad.tornLike)) throw new LogCorruptError(file, parsed.bad.offset, parsed.bad.reason);
          size = parsed.bad.offset;
          const fd = fs.openSync(file, 'r+');
          try {
            fs.ftruncateSync(fd, size);
            fs.fdatasyncSync(fd);
          } finally {
            fs.closeSync(fd);
          }
          warn(
            `log: cut torn tail of ${file} at byte ${size} (${parsed.fileBytes - size} bytes dropped): ${parsed.bad.reason}`,
          );
        }
        log.segments.push({ first: parsed.first, name: f.name, path: file, ends: parsed.ends, size, fd: -1 });
        for (const e of parsed.entries!) entries.push(e);
      }
      // What we read may still be only in the page cache (the process died,
      // not the machine): make it durable before anyone relies on it.
      for (const seg of log.segments) {
        const fd = fs.openSync(seg.path, 'r');
        try {
          fs.fdatasyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
      }
      if (dirChanged || log.segments.length > 0) fs.fsyncSync(dirFd);
      const cur = log.segments[log.segments.length - 1];
      if (cur !== undefined) cur.fd = fs.openSync(cur.path, 'r+');
      if (entries.length > 0) {
        log.firstIdx = entries[0]!.index;
        log.lastIdx = entries[entries.length - 1]!.index;
      }
      log.durableIdx = log.lastIdx;
    } catch (err) {
      for (const s of log.segments) if (s.fd >= 0) fs.closeSync(s.fd);
      fs.closeSync(dirFd);
      throw err;
    }
    return { log, entries, warnings };
  }

  /** Index of the last entry (0 when empty). */
  get last(): number {
    return this.lastIdx;
  }

  /** Index of the first entry still on disk (0 when empty). */
  get first(): number {
    return this.firstIdx;
  }

  /** Highest index covered by a completed sync() (or by open). */
  get durable(): number {
    return this.durableIdx;
  }

  /** Names of the segment files, oldest first. */
  files(): string[] {
    return this.segments.map((s) => s.name);
  }

  private check(): void {
    this.checkFailure();
    if (this.closed) throw new Error(`log ${this.dir} is closed`);
  }

  private checkFailure(): void {
    if (this.failure !== null) throw new Error(`log ${this.dir} failed earlier and cannot be used: ${this.failure.message}`);
  }

  /** An I/O error leaves the files in an unknown state: refuse all further use. */
  private fail(err: unknown): Error {
    const e = err instanceof Error ? err : new Error(String(err));
    if (this.failure === null) this.failure = e;
    return e;
  }

  private current(): Segment | undefined {
    return this.segments[this.segments.length - 1];
  }

  append(entries: Entry[]): void {
    this.check();
    const n = entries.length;
    if (n === 0) return;
    const start = this.lastIdx === 0 ? entries[0]!.index : this.lastIdx + 1;
    assertIndex(start, 'entry index');
    // Encode and check everything before writing anything.
    const texts = new Array<string>(n);
    const lens = new Array<number>(n);
    let total = 0;
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      if (e.index !== start + i) {
        throw new Error(`log append: entry index ${e.index} does not follow on (expected ${start + i}, last is ${this.lastIdx})`);
      }
      const text = encodeEntryJson(e);
      const len = Buffer.byteLength(text, 'utf8');
      if (len > ENTRY_BYTES_MAX) {
        throw new Error(`log append: entry ${e.index} is ${len} bytes, more than ENTRY_BYTES_MAX (${ENTRY_BYTES_MAX})`);
      }
      texts[i] = text;
      lens[i] = len;
      total += RECORD_HEADER_BYTES + len;
    }
    const buf = Buffer.allocUnsafe(total);
    let off = 0;
    for (let i = 0; i < n; i++) {
      const len = lens[i]!;
      buf.writeUInt32LE(len, off);
      buf.write(texts[i]!, off + RECORD_HEADER_BYTES, len, 'utf8');
      buf.writeUInt32LE(crc32c(buf, 0, off + RECORD_HEADER_BYTES, off + RECORD_HEADER_BYTES + len), off + 4);
      off += RECORD_HEADER_BYTES + len;
    }
    try {
      if (this.lastIdx === 0) this.rebase(start);
      // Write runs of records, one pwrite per segment, rotating at record boundaries.
      let i = 0;
      off = 0;
      while (i < n) {
        let seg = this.current()!;
        let runBytes = 0;
        let j = i;
        while (j < n) {
          const rec = RECORD_HEADER_BYTES + lens[j]!;
          const segEmpty = seg.ends.length === 0 && runBytes === 0;
          if (!segEmpty && seg.size + runBytes + rec > this.segmentBytesMax) break;
          runBytes += rec;
          j++;
        }
        if (j === i) {
          // The current segment is full: start a new one with this record.
          seg = this.rotate(start + i);
          continue;
        }
        writeAll(seg.fd, buf, off, runBytes, seg.size);
        let end = seg.size;
        for (let k = i; k < j; k++) {
          end += RECORD_HEADER_BYTES + lens[k]!;
          seg.ends.push(end);
        }
        seg.size = end;
        off += runBytes;
        i = j;
      }
    } catch (err) {
      throw this.fail(err);
    }
    if (this.firstIdx === 0) this.firstIdx = start;
    this.lastIdx = start + n - 1;
    this.writeSeq++;
  }

  /** Make sure the current segment can take entry `index` as the first of an empty log. */
  private rebase(index: number): void {
    const cur = this.current();
    if (cur !== undefined && cur.first === index) return;
    if (cur !== undefined) {
      // The log is empty, so this segment holds no records: replace it.
      // Removing it durably first means a crash leaves either it or nothing.
      if (this.segments.length !== 1 || cur.ends.length !== 0) {
        throw new Error(`log rebase: expected one empty segment, found ${this.segments.length}`);
      }
      this.segments.pop();
      this.pending.delete(cur);
      this.closeIfIdle(cur);
      fs.unlinkSync(cur.path);
      fs.fsyncSync(this.dirFd);
    }
    this.createSegment(index);
  }

  private rotate(first: number): Segment {
    const old = this.current()!;
    // Its last writes still need an fdatasync: the next sync round does it.
    this.pending.add(old);
    return this.createSegment(first);
  }

  private createSegment(first: number): Segment {
    const name = segmentFileName(first);
    const file = path.join(this.dir, name);
    const fd = fs.openSync(file, 'wx');
    const header = encodeHeader(first);
    try {
      writeAll(fd, header, 0, header.length, 0);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    const seg: Segment = { first, name, path: file, ends: [], size: SEGMENT_HEADER_BYTES, fd };
    this.segments.push(seg);
    this.dirDirty = true;
    this.writeSeq++;
    return seg;
  }

  private closeIfIdle(seg: Segment): void {
    if (seg.fd < 0 || seg === this.current() || this.pending.has(seg) || this.roundSegs.has(seg)) return;
    fs.closeSync(seg.fd);
    seg.fd = -1;
  }

  truncateFrom(from: number): void {
    this.check();
    if (!Number.isSafeInteger(from) || from < 0) throw new Error(`log truncateFrom: bad index ${from}`);
    if (this.lastIdx === 0 || from > this.lastIdx) return;
    const keepLast = from <= this.firstIdx ? 0 : from - 1;
    try {
      // The segment that will hold the new last entry (or the first one, emptied).
      let k = 0;
      if (keepLast > 0) {
        k = this.segments.length - 1;
        while (this.segments[k]!.first > keepLast) k--;
      }
      const removed = this.segments.splice(k + 1);
      // Newest first, so that a crash midway leaves a prefix of the log.
      for (let i = removed.length - 1; i >= 0; i--) {
        const seg = removed[i]!;
        this.pending.delete(seg);
        this.closeIfIdle(seg);
        fs.unlinkSync(seg.path);
      }
      if (removed.length > 0) fs.fsyncSync(this.dirFd);
      const seg = this.segments[k]!;
      const keep = keepLast === 0 ? 0 : keepLast - seg.first + 1;
      const size = keep === 0 ? SEGMENT_HEADER_BYTES : seg.ends[keep - 1]!;
      seg.ends.length = keep;
      seg.size = size;
      this.pending.delete(seg);
      if (seg.fd < 0) seg.fd = fs.openSync(seg.path, 'r+');
      fs.ftruncateSync(seg.fd, size);
      fs.fdatasyncSync(seg.fd);
    } catch (err) {
      throw this.fail(err);
    }
    this.lastIdx = keepLast;
    if (keepLast === 0) this.firstIdx = 0;
    if (this.durableIdx > keepLast) this.durableIdx = keepLast;
    if (this.roundTruncLow > keepLast) this.roundTruncLow = keepLast;
  }

  sync(): Promise<void> {
    try {
      this.check();
    } catch (err) {
      return Promise.reject(err);
    }
    this.syncCalls++;
    if (this.syncedSeq === this.writeSeq) return Promise.resolve();
    // A queued round starts after the in-flight one and covers every write made until then.
    if (this.queued !== null) return this.queued;
    if (this.inflight === null) return this.startRound();
    if (this.roundSeq === this.writeSeq) return this.inflight;
    // Writes arrived after the in-flight round began: one more round covers
    // them, and every caller until it starts shares it.
    const next = (): Promise<void> => {
      this.queued = null;
      // A sync asked for before close() still runs: close() waits for it.
      this.checkFailure();
      if (this.inflight !== null) throw new Error('log sync: a round is already in flight (bug)');
      return this.syncedSeq === this.writeSeq ? Promise.resolve() : this.startRound();
    };
    this.queued = this.inflight.then(next, next);
    return this.queued;
  }

  private startRound(): Promise<void> {
    const p = this.round();
    this.inflight = p;
    return p;
  }

  private async round(): Promise<void> {
    const seq = this.writeSeq;
    const lastAtStart = this.lastIdx;
    this.roundSeq = seq;
    this.roundTruncLow = Infinity;
    const cur = this.current();
    for (const s of this.pending) this.roundSegs.add(s);
    this.pending.clear();
    if (cur !== undefined) this.roundSegs.add(cur);
    const syncDir = this.dirDirty;
    this.dirDirty = false;
    const segs = [...this.roundSegs];
    try {
      await Promise.all(segs.map((s) => fdatasyncP(s.fd)));
      // Entries in a new segment are reachable only once its directory entry is durable.
      if (syncDir) await fsyncP(this.dirFd);
    } catch (err) {
      throw this.fail(err);
    } finally {
      this.roundSegs.clear();
      for (const s of segs) this.closeIfIdle(s);
      this.inflight = null;
    }
    this.fsyncRounds++;
    if (seq > this.syncedSeq) this.syncedSeq = seq;
    const covered = Math.min(lastAtStart, this.roundTruncLow);
    if (covered > this.durableIdx) this.durableIdx = covered;
  }

  async removeBelow(index: number): Promise<void> {
    this.check();
    const victims: Segment[] = [];
    // Never remove the segment holding the last entry, so the log keeps its position.
    while (this.segments.length > 1) {
      const seg = this.segments[0]!;
      const segLast = seg.first + seg.ends.length - 1;
      if (segLast >= index || segLast >= this.lastIdx) break;
      victims.push(this.segments.shift()!);
    }
    if (victims.length === 0) return;
    this.firstIdx = this.segments[0]!.first;
    for (const seg of victims) {
      this.pending.delete(seg);
      this.closeIfIdle(seg);
    }
    try {
      // Oldest first, so that a crash midway leaves a suffix of them.
      for (const seg of victims) await fs.promises.unlink(seg.path);
      await fsyncP(this.dirFd);
    } catch (err) {
      throw this.fail(err);
    }
  }

  bytesAfter(index: number): number {
    if (this.lastIdx === 0 || index >= this.lastIdx) return 0;
    let total = 0;
    for (let i = this.segments.length - 1; i >= 0; i--) {
      const seg = this.segments[i]!;
      if (seg.ends.length === 0) continue;
      if (index < seg.first) {
        total += seg.size - SEGMENT_HEADER_BYTES;
        continue;
      }
      total += seg.size - seg.ends[index - seg.first]!;
      break;
    }
    return total;
  }

  /** Waits for syncs already asked for; does not sync anything else. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const waiting = this.queued ?? this.inflight;
    if (waiting !== null) await waiting.catch(() => undefined);
    for (const s of this.segments) {
      if (s.fd >= 0) fs.closeSync(s.fd);
      s.fd = -1;
    }
    fs.closeSync(this.dirFd);
  }
}

// ---------------------------------------------------------------------------
// Offline inspection for ckvctl: read-only, except repairLog.

export interface SegmentInfo {
  file: string;
  firstIndex: number;
  /** firstIndex - 1 when the segment holds no entries. */
  lastIndex: number;
  /** Good records (up to the first problem). */
  count: number;
  /** Size of the file. */
  bytes: number;
  /** The first problem in this segment, if any. */
  problem: string | null;
}

export interface LogProblem {
  file: string;
  offset: number;
  reason: string;
  /** A torn tail: opening the log would cut it with a warning. */
  torn: boolean;
}

interface ScannedSegment {
  file: string;
  parsed: ParsedSegment;
  problem: LogProblem | null;
}

/** Segments one at a time, oldest first (only one segment's entries in memory when collecting). */
function* scanSegmentsIter(dir: string, collect: boolean): Generator<ScannedSegment> {
  const { segments: files } = listSegmentFiles(dir);
  let prev: ScannedSegment | undefined;
  for (let i = 0; i < files.length; i++) {
    const f = files[i]!;
    const file = path.join(dir, f.name);
    const isLast = i === files.length - 1;
    const parsed = parseSegment(fs.readFileSync(file), f.first, collect);
    let problem: LogProblem | null = null;
    const bad = parsed.headerBad ?? parsed.bad;
    if (bad !== null) {
      problem = { file, offset: bad.offset, reason: bad.reason, torn: isLast && bad.tornLike };
    }
    // Continuity is checkable only when the previous segment was read to its end.
    if (problem === null || problem.offset > 0) {
      if (prev !== undefined && prev.problem === null && parsed.first !== prev.parsed.first + prev.parsed.ends.length) {
        const prevLast = prev.parsed.first + prev.parsed.ends.length - 1;
        problem = {
          file,
          offset: 0,
          reason: `first index ${parsed.first} does not follow on from the previous segment's last index ${prevLast}`,
          torn: false,
        };
      }
    }
    prev = { file, parsed, problem };
    yield prev;
  }
}

function scanSegments(dir: string): ScannedSegment[] {
  return [...scanSegmentsIter(dir, false)];
}

/** The segments of the log in directory `dir`, oldest first. Reads only. */
export function scanLog(dir: string): SegmentInfo[] {
  return scanSegments(dir).map(({ file, parsed, problem }) => ({
    file,
    firstIndex: parsed.first,
    lastIndex: parsed.first + parsed.ends.length - 1,
    count: parsed.ends.length,
    bytes: parsed.fileBytes,
    problem: problem === null ? null : `${problem.reason} at byte ${problem.offset}${problem.torn ? ' (torn tail)' : ''}`,
  }));
}

/**
 * Every problem in the log, without changing anything: the first bad spot of
 * each segment (what follows a bad record cannot be trusted) and segments that
 * do not follow on from the previous one. Files that are not segments are
 * ignored here, as open() ignores them (with a warning).
 */
export function verifyLog(dir: string): LogProblem[] {
  const segments = scanSegments(dir);
  const problems: LogProblem[] = [];
  for (const s of segments) if (s.problem !== null) problems.push(s.problem);
  return problems;
}

/**
 * The entries of the log in index order, from `from` to `to` inclusive.
 * Throws LogCorruptError (after yielding every entry before it) at the first problem.
 */
export function* readLog(dir: string, from = 1, to = Number.MAX_SAFE_INTEGER): Generator<Entry> {
  for (const s of scanSegmentsIter(dir, true)) {
    const entries = s.parsed.entries!;
    const last = s.parsed.first + entries.length - 1;
    if (s.problem === null || s.problem.offset > 0) {
      if (last >= from && s.parsed.first <= to) {
        for (const e of entries) if (e.index >= from && e.index <= to) yield e;
      }
    }
    if (s.problem !== null) throw new LogCorruptError(s.problem.file, s.problem.offset, s.problem.reason);
    if (last >= to) return;
  }
}

export interface LogRepair {
  /** Where the log was cut. */
  file: string;
  offset: number;
  reason: string;
  /** Readable entries that were after the cut (a bad record itself is not counted). */
  entriesDropped: number;
  bytesDropped: number;
  /** Later segment files that were deleted (and `file` itself when cut at byte 0). */
  segmentsDeleted: string[];
}

/**
 * Cut the log at its first problem: truncate that segment there (delete it if
 * the problem is its header) and delete every later segment. Returns what was
 * cut, or null when the log has no problem. The server then fetches the rest
 * from its peers.
 */
export function repairLog(dir: string): LogRepair | null {
  const segments = scanSegments(dir);
  const k = segments.findIndex((s) => s.problem !== null);
  if (k < 0) return null;
  const cut = segments[k]!;
  const problem = cut.problem!;
  const result: LogRepair = {
    file: problem.file,
    offset: problem.offset,
    reason: problem.reason,
    entriesDropped: 0,
    bytesDropped: 0,
    segmentsDeleted: [],
  };
  // Newest first, so that a crash midway leaves a prefix of the log.
  for (let i = segments.length - 1; i > k; i--) {
    const s = segments[i]!;
    result.entriesDropped += s.parsed.ends.length;
    result.bytesDropped += s.parsed.fileBytes;
    fs.unlinkSync(s.file);
    result.segmentsDeleted.unshift(s.file);
  }
  if (problem.offset === 0) {
    // A bad header or a segment that does not follow on: the whole file goes.
    result.entriesDropped += cut.parsed.ends.length;
    result.bytesDropped += cut.parsed.fileBytes;
    fs.unlinkSync(cut.file);
    result.segmentsDeleted.unshift(cut.file);
  } else {
    result.bytesDropped += cut.parsed.fileBytes - problem.offset;
    const fd = fs.openSync(cut.file, 'r+');
    try {
      fs.ftruncateSync(fd, problem.offset);
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }
  fsyncDirSync(dir);
  return result;
}
