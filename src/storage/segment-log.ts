// The live log the server writes: segment files in <data>/log
// (segment-format.ts has the layout), opened with a torn tail cut, appended
// to, group-committed, truncated, rotated and trimmed.
//
// Writes go to the OS synchronously (one pwrite per append and segment) and
// are durable once sync() resolves (fdatasync). Truncation is rare (a
// follower dropping a conflicting suffix) and is made durable before
// truncateFrom() returns, so that no crash can leave a half-truncated log.

import fs from 'node:fs';
import path from 'node:path';
import { ENTRY_BYTES_MAX, SEGMENT_BYTES_MAX } from '../core/limits.js';
import type { Entry } from '../core/wire.js';
import { encodeEntryJson, entryBytes } from '../core/entry-text.js';
import type { LogOpenResult, LogStore } from './ports.js';
import {
  LogCorruptError,
  RECORD_HEADER_BYTES,
  SEGMENT_HEADER_BYTES,
  assertIndex,
  encodeHeader,
  fsyncDirSync,
  listSegmentFiles,
  notFollowingOn,
  parseSegment,
  segmentFileName,
  truncateFileSync,
  writeRecord,
} from './segment-format.js';

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
    let maybeLost = false;
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
          throw new LogCorruptError(file, 0, notFollowingOn(parsed.first, prev.first + prev.ends.length - 1));
        }
        let size = parsed.fileBytes;
        if (parsed.bad !== null) {
          if (!(isLast && parsed.bad.tornLike)) throw new LogCorruptError(file, parsed.bad.offset, parsed.bad.reason);
          size = parsed.bad.offset;
          if (parsed.bad.reason === 'record checksum mismatch') maybeLost = true;
          truncateFileSync(file, size);
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
    return { log, entries, warnings, ...(maybeLost ? { maybeLost } : {}) };
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
      const len = entryBytes(e);
      if (len > ENTRY_BYTES_MAX) {
        throw new Error(`log append: entry ${e.index} is ${len} bytes, more than ENTRY_BYTES_MAX (${ENTRY_BYTES_MAX})`);
      }
      texts[i] = text;
      lens[i] = len;
      total += RECORD_HEADER_BYTES + len;
    }
    const buf = Buffer.allocUnsafe(total);
    let off = 0;
    for (let i = 0; i < n; i++) off = writeRecord(buf, off, texts[i]!, lens[i]!);
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
