// Offline inspection and repair of a log directory, for ckvctl: read-only,
// except repairLog. The server never uses this; it opens the log with
// SegmentLog (segment-log.ts), which cuts a torn tail itself.

import fs from 'node:fs';
import path from 'node:path';
import type { Entry } from '../core/wire.js';
import {
  LogCorruptError,
  fsyncDirSync,
  listSegmentFiles,
  notFollowingOn,
  parseSegment,
  truncateFileSync,
  type ParsedSegment,
} from './segment-format.js';

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
        problem = { file, offset: 0, reason: notFollowingOn(parsed.first, prevLast), torn: false };
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
 * ignored here, as SegmentLog.open() ignores them (with a warning).
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
    truncateFileSync(cut.file, problem.offset);
  }
  fsyncDirSync(dir);
  return result;
}
