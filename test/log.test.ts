// The log and the voter's state file: CRC-32C, the entry codec, the segment
// format and SegmentLog (torn tails, corruption, rotation, truncation, group
// commit), MemLog (one LogStore behaviour suite run against both), the
// offline inspection and repair ckvctl uses, and the state file.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ENTRY_BYTES_MAX } from '../src/core/limits.js';
import type { Entry } from '../src/core/wire.js';
import { crc32c } from '../src/storage/crc32c.js';
import { encodeEntryJson } from '../src/core/entry-text.js';
import { EntryDecodeError, decodeEntry, encodeEntry } from '../src/storage/entry-codec.js';
import { entryProblem } from '../src/core/entry-shape.js';
import { MemLog } from '../src/storage/mem-log.js';
import type { LogStore } from '../src/storage/ports.js';
import { readLog, repairLog, scanLog, verifyLog } from '../src/storage/log-inspect.js';
import { LogCorruptError, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, segmentFileName } from '../src/storage/segment-format.js';
import { SegmentLog } from '../src/storage/segment-log.js';
import { FileStateFile, MemStateFile } from '../src/storage/state-file.js';
import { type TT, tmpDir } from './helpers/tmp-dir.js';

function put(index: number, key = `k${index}`, value = `value-${index}`, epoch = 1): Entry {
  return { index, epoch, ts: index * 2, kind: 'write', rid: `r${index}`, ops: [{ op: 'put', key, value }] };
}

function range(from: number, to: number, f: (i: number) => Entry = (i) => put(i)): Entry[] {
  const out: Entry[] = [];
  for (let i = from; i <= to; i++) out.push(f(i));
  return out;
}

/** Byte offsets of every record in a segment file. */
function recordOffsets(buf: Buffer): number[] {
  const out: number[] = [];
  let off = SEGMENT_HEADER_BYTES;
  while (off + RECORD_HEADER_BYTES <= buf.length) {
    out.push(off);
    off += RECORD_HEADER_BYTES + buf.readUInt32LE(off);
  }
  return out;
}

function segFiles(logDir: string): string[] {
  return fs
    .readdirSync(logDir)
    .filter((n) => n.endsWith('.seg'))
    .sort();
}

/** A new log directory holding entries 1..n, synced and closed. */
async function writtenLog(tt: TT, n: number, segmentBytesMax?: number): Promise<string> {
  const dir = path.join(tmpDir(tt), 'log');
  const { log } = await SegmentLog.open(dir, { segmentBytesMax });
  log.append(range(1, n));
  await log.sync();
  await log.close();
  return dir;
}

// ---------------------------------------------------------------------------

t.test('crc32c', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283, 'known answer');
  t.equal(crc32c(new Uint8Array(0)), 0);
  t.equal(crc32c(new Uint8Array(32)), 0x8a9136aa, '32 zero bytes (RFC 3720 B.4)');
  t.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43, '32 0xff bytes (RFC 3720 B.4)');
  const b = Buffer.from('the quick brown fox jumps over the lazy dog, 0123456789');
  for (let cut = 0; cut <= b.length; cut += 7) {
    t.equal(crc32c(b.subarray(cut), crc32c(b.subarray(0, cut))), crc32c(b), `continued at ${cut}`);
  }
  t.equal(crc32c(b, 0, 3, 12), crc32c(b.subarray(3, 12)), 'a range equals the subarray');
  t.throws(() => crc32c(b, 0, 5, b.length + 1), /outside buffer/);
  // Against the plain bit-at-a-time definition, at every length and start offset near the
  // slice width (the sliced loop and its byte-wise tail must agree wherever they split).
  const bitwise = (bytes: Uint8Array, start: number, end: number): number => {
    let c = 0xffffffff;
    for (let i = start; i < end; i++) {
      c ^= bytes[i]!;
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    }
    return ~c >>> 0;
  };
  const r = Buffer.alloc(80);
  for (let i = 0; i < r.length; i++) r[i] = (i * 151 + 7) & 0xff;
  let wrong = 0;
  for (let start = 0; start < 9; start++) {
    for (let end = start; end <= r.length; end++) if (crc32c(r, 0, start, end) !== bitwise(r, start, end)) wrong++;
  }
  t.equal(wrong, 0, 'equals the bitwise CRC at every start 0..8 and end');
});

t.test('entry codec', async (t) => {
  const samples: Entry[] = [
    { index: 1, epoch: 0, ts: 0, kind: 'noop' },
    { index: 2, epoch: 3, ts: 9, kind: 'config', voters: [1, 2, 3] },
    {
      index: 3,
      epoch: 3,
      ts: 10,
      kind: 'write',
      rid: 'abc-1',
      ops: [
        { op: 'put', key: 'a/b', value: 'héllo "quoted" \n ☃ 𝄞' },
        { op: 'del', key: 'x' },
        { op: 'cas', key: 'c', expect: null, value: 'v' },
        { op: 'cas', key: 'd', expect: 'old', value: null },
      ],
    },
    { index: 4, epoch: 3, ts: 11, kind: 'write', ops: [] },
  ];
  for (const e of samples) {
    const bytes = encodeEntry(e);
    t.same(decodeEntry(bytes), e, `${e.kind} round trip`);
    t.equal(bytes.toString('utf8'), encodeEntryJson(e));
  }
  // Canonical: field order of the input does not matter.
  const shuffled = { ops: [{ value: 'v', key: 'k', op: 'put' }], kind: 'write', ts: 2, epoch: 1, index: 1 } as unknown as Entry;
  t.equal(encodeEntryJson(shuffled), '{"index":1,"epoch":1,"ts":2,"kind":"write","ops":[{"op":"put","key":"k","value":"v"}]}');
  const buf = Buffer.concat([Buffer.from('xx'), encodeEntry(samples[0]!), Buffer.from('yy')]);
  t.same(decodeEntry(buf, 2, buf.length - 2), samples[0], 'decode a range');

  const bad: Array<[string, string | Uint8Array]> = [
    ['not JSON', 'garbage'],
    ['bad UTF-8', new Uint8Array([0x7b, 0xff, 0x7d])],
    ['array', '[1,2]'],
    ['null', 'null'],
    ['unknown kind', '{"index":1,"epoch":1,"ts":1,"kind":"nope"}'],
    ['extra field', '{"index":1,"epoch":1,"ts":1,"kind":"noop","x":1}'],
    ['index 0', '{"index":0,"epoch":1,"ts":1,"kind":"noop"}'],
    ['float index', '{"index":1.5,"epoch":1,"ts":1,"kind":"noop"}'],
    ['negative epoch', '{"index":1,"epoch":-1,"ts":1,"kind":"noop"}'],
    ['string ts', '{"index":1,"epoch":1,"ts":"1","kind":"noop"}'],
    ['ops missing', '{"index":1,"epoch":1,"ts":1,"kind":"write"}'],
    ['bad op', '{"index":1,"epoch":1,"ts":1,"kind":"write","ops":[{"op":"inc","key":"a"}]}'],
    ['op extra field', '{"index":1,"epoch":1,"ts":1,"kind":"write","ops":[{"op":"del","key":"a","value":"x"}]}'],
    ['put without value', '{"index":1,"epoch":1,"ts":1,"kind":"write","ops":[{"op":"put","key":"a"}]}'],
    ['empty key', '{"index":1,"epoch":1,"ts":1,"kind":"write","ops":[{"op":"del","key":""}]}'],
    ['cas bad expect', '{"index":1,"epoch":1,"ts":1,"kind":"write","ops":[{"op":"cas","key":"a","expect":1,"value":null}]}'],
    ['cas bad value', '{"index":1,"epoch":1,"ts":1,"kind":"write","ops":[{"op":"cas","key":"a","expect":null,"value":2}]}'],
    ['op not object', '{"index":1,"epoch":1,"ts":1,"kind":"write","ops":[3]}'],
    ['empty rid', '{"index":1,"epoch":1,"ts":1,"kind":"write","rid":"","ops":[]}'],
    ['voters empty', '{"index":1,"epoch":1,"ts":1,"kind":"config","voters":[]}'],
    ['voters zero', '{"index":1,"epoch":1,"ts":1,"kind":"config","voters":[0]}'],
    ['voters repeated', '{"index":1,"epoch":1,"ts":1,"kind":"config","voters":[2,2]}'],
    ['__proto__ field', '{"index":1,"epoch":1,"ts":1,"kind":"noop","__proto__":{}}'],
  ];
  for (const [what, b] of bad) {
    t.throws(() => decodeEntry(typeof b === 'string' ? Buffer.from(b) : b), EntryDecodeError, what);
  }
  t.throws(() => decodeEntry(new Uint8Array(ENTRY_BYTES_MAX + 1)), /ENTRY_BYTES_MAX/);
  t.throws(() => encodeEntry({ index: 0, epoch: 1, ts: 1, kind: 'noop' }), /invalid entry/);
  t.throws(() => encodeEntry(put(1, 'k', 'x'.repeat(ENTRY_BYTES_MAX))), /ENTRY_BYTES_MAX/);
  t.equal(entryProblem({ index: 1, epoch: 1, ts: 1, kind: 'write', rid: 'x'.repeat(65), ops: [] }), 'rid is longer than RID_BYTES_MAX (64)');
  t.equal(entryProblem(samples[2]), null);
});

// ---------------------------------------------------------------------------
// LogStore behaviour, shared by SegmentLog and MemLog.

interface LogHarness {
  name: string;
  make(tt: TT): Promise<LogStore>;
  /** Sync, then what a restart finds. */
  reopen(log: LogStore): Promise<{ log: LogStore; entries: Entry[] }>;
}

function logSuite(h: LogHarness): void {
  t.test(`${h.name}: LogStore behaviour`, async (t) => {
    t.test('append, sync, reopen', async (t) => {
      const log = await h.make(t);
      t.equal(log.last, 0);
      await log.sync();
      log.append([]);
      log.append(range(1, 3));
      log.append(range(4, 10));
      t.equal(log.last, 10);
      t.throws(() => log.append([put(12)]), /does not follow on/, 'gap');
      t.throws(() => log.append([put(10)]), /does not follow on/, 'repeat');
      t.throws(() => log.append([put(11), put(13)]), /does not follow on/, 'gap inside a batch');
      t.throws(() => log.append([put(11), { index: 12, epoch: 1, ts: 1, kind: 'bogus' } as unknown as Entry]), /invalid entry/);
      t.equal(log.last, 10, 'a rejected batch changes nothing');
      const r = await h.reopen(log);
      t.same(r.entries, range(1, 10));
      t.equal(r.log.last, 10);
      r.log.append([put(11)]);
      const r2 = await h.reopen(r.log);
      t.same(r2.entries, range(1, 11));
      await r2.log.close();
    });

    t.test('an empty log takes any first index', async (t) => {
      const log = await h.make(t);
      log.append(range(500, 502));
      t.equal(log.last, 502);
      const r = await h.reopen(log);
      t.same(r.entries, range(500, 502));
      await r.log.close();
    });

    t.test('truncateFrom', async (t) => {
      const log = await h.make(t);
      log.append(range(1, 20));
      await log.sync();
      log.truncateFrom(25);
      t.equal(log.last, 20, 'beyond the end: nothing');
      log.truncateFrom(15);
      t.equal(log.last, 14);
      t.throws(() => log.append([put(16)]), /does not follow on/);
      log.append([put(15, 'k15', 'other', 2)]);
      let r = await h.reopen(log);
      t.same(r.entries, [...range(1, 14), put(15, 'k15', 'other', 2)]);
      // Truncating everything empties the log; it may then start anywhere.
      r.log.truncateFrom(0);
      t.equal(r.log.last, 0);
      r.log.append(range(40, 41));
      r = await h.reopen(r.log);
      t.same(r.entries, range(40, 41));
      r.log.truncateFrom(40);
      t.equal(r.log.last, 0);
      r = await h.reopen(r.log);
      t.same(r.entries, []);
      t.throws(() => r.log.truncateFrom(-1), /bad index/);
      await r.log.close();
    });

    t.test('bytesAfter', async (t) => {
      const log = await h.make(t);
      t.equal(log.bytesAfter(0), 0);
      log.append(range(1, 10));
      const sizes = range(1, 10).map((e) => RECORD_HEADER_BYTES + encodeEntry(e).length);
      const sum = (from: number): number => sizes.slice(from).reduce((a, b) => a + b, 0);
      t.equal(log.bytesAfter(0), sum(0));
      t.equal(log.bytesAfter(3), sum(3));
      t.equal(log.bytesAfter(9), sum(9));
      t.equal(log.bytesAfter(10), 0);
      t.equal(log.bytesAfter(99), 0);
      await log.sync();
      await log.removeBelow(6);
      t.equal(log.bytesAfter(7), sum(7), 'unchanged by removeBelow');
      t.ok(log.bytesAfter(0) <= sum(0));
      t.ok(log.bytesAfter(0) >= sum(5));
      await log.close();
    });

    t.test('removeBelow keeps the last entry', async (t) => {
      const log = await h.make(t);
      log.append(range(1, 30));
      await log.sync();
      await log.removeBelow(1000);
      t.equal(log.last, 30);
      const r = await h.reopen(log);
      t.ok(r.entries.length >= 1 && r.entries.length <= 30);
      t.equal(r.entries[r.entries.length - 1]!.index, 30);
      t.equal(r.entries[0]!.index, 31 - r.entries.length, 'a contiguous suffix');
      await r.log.close();
    });

    t.test('closed', async (t) => {
      const log = await h.make(t);
      log.append([put(1)]);
      await log.close();
      await log.close();
      t.throws(() => log.append([put(2)]));
      await t.rejects(log.sync());
    });
  });
}

function segHarness(opts: { segmentBytesMax?: number } = {}): LogHarness {
  const dirs = new WeakMap<LogStore, string>();
  return {
    name: `SegmentLog${opts.segmentBytesMax !== undefined ? ` (segments of ${opts.segmentBytesMax} bytes)` : ''}`,
    async make(tt) {
      const dir = path.join(tmpDir(tt), 'log');
      const { log, entries, warnings } = await SegmentLog.open(dir, opts);
      tt.same(entries, []);
      tt.same(warnings, []);
      dirs.set(log, dir);
      tt.teardown(() => log.close());
      return log;
    },
    async reopen(log) {
      await log.sync();
      await log.close();
      const dir = dirs.get(log)!;
      const r = await SegmentLog.open(dir, opts);
      if (r.warnings.length > 0) throw new Error(`unexpected warnings: ${r.warnings.join('; ')}`);
      dirs.set(r.log, dir);
      return r;
    },
  };
}

logSuite(segHarness());
logSuite(segHarness({ segmentBytesMax: 300 }));
logSuite({
  name: 'MemLog',
  async make() {
    return new MemLog();
  },
  async reopen(log) {
    await log.sync();
    const entries = (log as MemLog).crash();
    return { log: new MemLog(entries), entries };
  },
});

// ---------------------------------------------------------------------------
// SegmentLog on disk

t.test('SegmentLog: files and layout', async (t) => {
  const data = tmpDir(t);
  const dir = path.join(data, 'log');
  const { log } = await SegmentLog.open(dir);
  t.same(segFiles(dir), [], 'no file until the first append');
  log.append(range(1, 3));
  await log.sync();
  t.same(segFiles(dir), [segmentFileName(1)]);
  t.equal(segmentFileName(1), '00000000000000000001.seg');
  const buf = fs.readFileSync(path.join(dir, segmentFileName(1)));
  t.equal(buf.subarray(0, 8).toString('latin1'), 'CKVLOG\0\x01');
  t.equal(buf.readUInt32LE(8), 1, 'format version');
  t.equal(Number(buf.readBigUInt64LE(12)), 1, 'first index');
  const offs = recordOffsets(buf);
  t.equal(offs.length, 3);
  const len = buf.readUInt32LE(offs[0]!);
  const body = buf.subarray(offs[0]! + 8, offs[0]! + 8 + len);
  t.equal(buf.readUInt32LE(offs[0]! + 4), crc32c(body));
  t.same(JSON.parse(body.toString()), put(1));
  t.equal(log.first, 1);
  t.equal(log.durable, 3);
  await log.close();
  await t.rejects(SegmentLog.open(dir, { segmentBytesMax: 10 }), /segmentBytesMax/);
});

t.test('SegmentLog: torn tails are cut with a warning', async (t) => {
  function lastFile(dir: string): string {
    const f = segFiles(dir);
    return path.join(dir, f[f.length - 1]!);
  }

  t.test('cut in the middle of the last record', async (t) => {
    const dir = await writtenLog(t, 5);
    const file = lastFile(dir);
    const buf = fs.readFileSync(file);
    const last = recordOffsets(buf)[4]!;
    fs.truncateSync(file, last + 11);
    const warned: string[] = [];
    const { log, entries, warnings } = await SegmentLog.open(dir, { log: (w) => warned.push(w) });
    t.same(entries, range(1, 4));
    t.equal(warnings.length, 1);
    t.match(warnings[0], /torn tail/);
    t.match(warnings[0], file);
    t.match(warnings[0], `byte ${last}`);
    t.same(warned, warnings, 'also given to the callback');
    t.equal(fs.statSync(file).size, last, 'the file was cut');
    log.append([put(5, 'k5', 'again')]);
    await log.sync();
    await log.close();
    const r = await SegmentLog.open(dir);
    t.same(r.entries, [...range(1, 4), put(5, 'k5', 'again')]);
    t.same(r.warnings, []);
    await r.log.close();
  });

  t.test('cut inside a record header', async (t) => {
    const dir = await writtenLog(t, 5);
    const file = lastFile(dir);
    const last = recordOffsets(fs.readFileSync(file))[4]!;
    fs.truncateSync(file, last + 3);
    const { log, entries, warnings } = await SegmentLog.open(dir);
    t.same(entries, range(1, 4));
    t.match(warnings[0], /partial record header/);
    await log.close();
  });

  t.test('garbage appended', async (t) => {
    const dir = await writtenLog(t, 5);
    const file = lastFile(dir);
    const size = fs.statSync(file).size;
    fs.appendFileSync(file, 'garbage that is not a record');
    const { log, entries, warnings } = await SegmentLog.open(dir);
    t.same(entries, range(1, 5));
    t.equal(warnings.length, 1);
    t.match(warnings[0], /torn tail/);
    t.equal(fs.statSync(file).size, size);
    await log.close();
  });

  t.test('zeros appended (a preallocated tail)', async (t) => {
    const dir = await writtenLog(t, 5);
    const file = lastFile(dir);
    fs.appendFileSync(file, Buffer.alloc(100));
    const { log, entries, warnings } = await SegmentLog.open(dir);
    t.same(entries, range(1, 5));
    t.match(warnings[0], /bad record length 0/);
    await log.close();
  });

  t.test('bad checksum in the last record', async (t) => {
    const dir = await writtenLog(t, 5);
    const file = lastFile(dir);
    const buf = fs.readFileSync(file);
    buf[buf.length - 3] ^= 0x40;
    fs.writeFileSync(file, buf);
    const { log, entries, warnings } = await SegmentLog.open(dir);
    t.same(entries, range(1, 4));
    t.match(warnings[0], /checksum/);
    await log.close();
  });

  t.test('a new segment with a partial header is removed', async (t) => {
    const dir = await writtenLog(t, 10, 400);
    const files = segFiles(dir);
    t.ok(files.length >= 2);
    const lastName = files[files.length - 1]!;
    const first = Number(lastName.slice(0, 20));
    // What a crash right after creating segment `next` can leave.
    const next = path.join(dir, segmentFileName(11));
    fs.writeFileSync(next, fs.readFileSync(path.join(dir, lastName)).subarray(0, 10));
    const { log, entries, warnings } = await SegmentLog.open(dir, { segmentBytesMax: 400 });
    t.same(entries, range(1, 10));
    t.match(warnings[0], /partial header/);
    t.notOk(fs.existsSync(next));
    t.ok(first <= 10);
    log.append([put(11)]);
    await log.sync();
    await log.close();
    const r = await SegmentLog.open(dir, { segmentBytesMax: 400 });
    t.same(r.entries, range(1, 11));
    await r.log.close();
  });

  t.test('unexpected files are ignored with a warning', async (t) => {
    const dir = await writtenLog(t, 5);
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'hi');
    const { log, entries, warnings } = await SegmentLog.open(dir);
    t.same(entries, range(1, 5));
    t.match(warnings[0], /unexpected file/);
    await log.close();
  });
});

t.test('SegmentLog: corruption before the tail is refused', async (t) => {
  t.test('a flipped byte in an early record', async (t) => {
    const dir = await writtenLog(t, 12);
    const file = path.join(dir, segmentFileName(1));
    const buf = fs.readFileSync(file);
    const off = recordOffsets(buf)[2]!;
    buf[off + 20] ^= 0x01;
    fs.writeFileSync(file, buf);
    const before = fs.readFileSync(file);
    const err = await SegmentLog.open(dir).then(
      () => null,
      (e: unknown) => e,
    );
    t.type(err, LogCorruptError);
    const e = err as LogCorruptError;
    t.equal(e.file, file);
    t.equal(e.offset, off);
    t.match(e.message, file);
    t.match(e.message, `byte ${off}`);
    t.match(e.message, /checksum/);
    t.same(fs.readFileSync(file), before, 'nothing was changed');
  });

  t.test('a bad length before the end', async (t) => {
    const dir = await writtenLog(t, 12);
    const file = path.join(dir, segmentFileName(1));
    const buf = fs.readFileSync(file);
    const off = recordOffsets(buf)[5]!;
    buf.writeUInt32LE(0, off);
    fs.writeFileSync(file, buf);
    await t.rejects(SegmentLog.open(dir), { name: 'LogCorruptError', offset: off });
  });

  t.test('a bad record at the end of a segment that is not the last', async (t) => {
    const dir = await writtenLog(t, 12, 300);
    const files = segFiles(dir);
    t.ok(files.length >= 3);
    const file = path.join(dir, files[0]!);
    const buf = fs.readFileSync(file);
    buf[buf.length - 2] ^= 0x10;
    fs.writeFileSync(file, buf);
    await t.rejects(SegmentLog.open(dir, { segmentBytesMax: 300 }), { name: 'LogCorruptError', file });
  });

  t.test('a missing segment in the middle', async (t) => {
    const dir = await writtenLog(t, 12, 300);
    const files = segFiles(dir);
    fs.unlinkSync(path.join(dir, files[1]!));
    await t.rejects(SegmentLog.open(dir, { segmentBytesMax: 300 }), {
      name: 'LogCorruptError',
      file: path.join(dir, files[2]!),
      offset: 0,
      message: /does not follow on/,
    });
  });

  t.test('a bad header', async (t) => {
    const dir = await writtenLog(t, 12, 300);
    const file = path.join(dir, segFiles(dir)[0]!);
    const buf = fs.readFileSync(file);
    buf[14] ^= 1;
    fs.writeFileSync(file, buf);
    await t.rejects(SegmentLog.open(dir, { segmentBytesMax: 300 }), { name: 'LogCorruptError', offset: 0, message: /header checksum/ });
  });

  t.test('a file name that does not match its header', async (t) => {
    const dir = await writtenLog(t, 12);
    fs.renameSync(path.join(dir, segmentFileName(1)), path.join(dir, segmentFileName(2)));
    await t.rejects(SegmentLog.open(dir), { name: 'LogCorruptError', message: /file name says 2/ });
  });

  t.test('a record holding the wrong entry', async (t) => {
    const dir = await writtenLog(t, 3);
    const file = path.join(dir, segmentFileName(1));
    const buf = fs.readFileSync(file);
    const [o1, o2] = recordOffsets(buf) as [number, number];
    // Swap records 1 and 2 (checksums stay valid, indexes do not).
    const r1 = buf.subarray(o1, o2);
    const o3 = recordOffsets(buf)[2]!;
    const r2 = buf.subarray(o2, o3);
    fs.writeFileSync(file, Buffer.concat([buf.subarray(0, o1), r2, r1, buf.subarray(o3)]));
    await t.rejects(SegmentLog.open(dir), { name: 'LogCorruptError', offset: o1, message: /holds entry 2, expected 1/ });
  });

  t.test('a record that checks out but does not decode', async (t) => {
    const dir = await writtenLog(t, 2);
    const file = path.join(dir, segmentFileName(1));
    const buf = fs.readFileSync(file);
    const off = recordOffsets(buf)[0]!;
    const body = Buffer.from('{"not":"an entry"}');
    const rec = Buffer.alloc(8 + body.length);
    rec.writeUInt32LE(body.length, 0);
    rec.writeUInt32LE(crc32c(body), 4);
    body.copy(rec, 8);
    fs.writeFileSync(file, Buffer.concat([buf.subarray(0, off), rec, buf.subarray(recordOffsets(buf)[1]!)]));
    await t.rejects(SegmentLog.open(dir), { name: 'LogCorruptError', message: /does not decode/ });
  });
});

t.test('SegmentLog: rotation and removeBelow', async (t) => {
  const dir = path.join(tmpDir(t), 'log');
  const max = 400;
  const { log } = await SegmentLog.open(dir, { segmentBytesMax: max });
  log.append(range(1, 7));
  for (let i = 8; i <= 30; i++) log.append([put(i)]);
  await log.sync();
  const files = segFiles(dir);
  t.ok(files.length >= 5, `several segments (${files.length})`);
  t.same((log as SegmentLog).files(), files);
  for (const f of files) {
    const size = fs.statSync(path.join(dir, f)).size;
    t.ok(size <= max, `${f} is ${size} bytes, at most ${max}`);
  }
  const segs = scanLog(dir);
  t.equal(segs.length, files.length);
  t.equal(segs[0]!.firstIndex, 1);
  t.equal(segs[segs.length - 1]!.lastIndex, 30);
  for (let i = 1; i < segs.length; i++) t.equal(segs[i]!.firstIndex, segs[i - 1]!.lastIndex + 1);
  t.equal(
    log.bytesAfter(0),
    segs.reduce((n, s) => n + s.bytes - SEGMENT_HEADER_BYTES, 0),
    'bytesAfter(0) is every record byte',
  );
  await log.close();

  let r = await SegmentLog.open(dir, { segmentBytesMax: max });
  t.same(r.entries, range(1, 30), 'reopen reads every segment');

  // removeBelow(i) deletes only segments whose entries are all below i.
  const cutAt = segs[2]!.firstIndex + 1;
  await r.log.removeBelow(cutAt);
  t.same(segFiles(dir), files.slice(2), 'the segment holding cutAt stays');
  t.equal((r.log as SegmentLog).first, segs[2]!.firstIndex);
  await r.log.removeBelow(segs[2]!.firstIndex);
  t.same(segFiles(dir), files.slice(2), 'exactly at a segment start: that segment stays');
  await r.log.removeBelow(1_000_000);
  t.same(segFiles(dir), files.slice(-1), 'never the last segment');
  t.equal(r.log.last, 30);
  await r.log.close();
  r = await SegmentLog.open(dir, { segmentBytesMax: max });
  t.equal(r.entries[r.entries.length - 1]!.index, 30);
  t.equal(r.entries[0]!.index, segs[segs.length - 1]!.firstIndex);
  r.log.append([put(31)]);
  await r.log.close();

  // One large append spans segments, one pwrite per segment.
  const dir2 = path.join(tmpDir(t), 'log');
  const big = await SegmentLog.open(dir2, { segmentBytesMax: max });
  big.log.append(range(1, 40));
  await big.log.sync();
  t.ok(segFiles(dir2).length >= 5);
  await big.log.close();
  t.same((await SegmentLog.open(dir2, { segmentBytesMax: max })).entries, range(1, 40));

  // A record larger than a segment gets a segment of its own.
  const dir3 = path.join(tmpDir(t), 'log');
  const huge = await SegmentLog.open(dir3, { segmentBytesMax: max });
  huge.log.append([put(1), put(2, 'k', 'x'.repeat(2 * max)), put(3)]);
  await huge.log.close();
  t.same(segFiles(dir3), [segmentFileName(1), segmentFileName(2), segmentFileName(3)]);
  const h2 = await SegmentLog.open(dir3, { segmentBytesMax: max });
  t.same(h2.entries, [put(1), put(2, 'k', 'x'.repeat(2 * max)), put(3)]);
  await h2.log.close();
});

t.test('SegmentLog: truncateFrom across a segment boundary', async (t) => {
  const dir = path.join(tmpDir(t), 'log');
  const max = 400;
  const { log } = await SegmentLog.open(dir, { segmentBytesMax: max });
  log.append(range(1, 30));
  await log.sync();
  const segs = scanLog(dir);
  t.ok(segs.length >= 4);
  // Cut in the middle of the second segment: later segments go.
  const cut = segs[1]!.firstIndex + 1;
  log.truncateFrom(cut);
  t.equal(log.last, cut - 1);
  t.same(segFiles(dir), segs.slice(0, 2).map((s) => path.basename(s.file)));
  t.equal(log.durable, cut - 1, 'a truncation is durable at once');
  t.equal(fs.statSync(segs[1]!.file).size, SEGMENT_HEADER_BYTES + (RECORD_HEADER_BYTES + encodeEntry(put(cut - 1)).length));
  const replaced = range(cut, 30, (i) => put(i, `k${i}`, 'new', 2));
  log.append(replaced);
  await log.sync();
  await log.close();
  let r = await SegmentLog.open(dir, { segmentBytesMax: max });
  t.same(r.entries, [...range(1, cut - 1), ...replaced]);

  // Cut exactly at a segment's first entry: that segment goes too.
  const segs2 = scanLog(dir);
  r.log.truncateFrom(segs2[2]!.firstIndex);
  t.same(segFiles(dir), segs2.slice(0, 2).map((s) => path.basename(s.file)));
  r.log.append([put(segs2[2]!.firstIndex)]);
  await r.log.close();
  r = await SegmentLog.open(dir, { segmentBytesMax: max });
  t.equal(r.log.last, segs2[2]!.firstIndex);

  // Everything: one empty segment stays until the next append decides where the log starts.
  r.log.truncateFrom(1);
  t.same(segFiles(dir), [segmentFileName(1)]);
  r.log.append([put(1000)]);
  t.same(segFiles(dir), [segmentFileName(1000)]);
  await r.log.close();
  r = await SegmentLog.open(dir, { segmentBytesMax: max });
  t.same(r.entries, [put(1000)]);
  await r.log.close();
});

t.test('SegmentLog: group commit', async (t) => {
  const dir = path.join(tmpDir(t), 'log');
  const { log } = await SegmentLog.open(dir, { segmentBytesMax: 2000 });
  // Count the real fdatasync calls.
  const orig = fs.fdatasync;
  let fdatasyncs = 0;
  (fs as { fdatasync: typeof fs.fdatasync }).fdatasync = ((fd: number, cb: (err: NodeJS.ErrnoException | null) => void) => {
    fdatasyncs++;
    orig(fd, cb);
  }) as typeof fs.fdatasync;
  t.teardown(() => {
    (fs as { fdatasync: typeof fs.fdatasync }).fdatasync = orig;
  });

  const syncs: Promise<void>[] = [];
  for (let i = 1; i <= 100; i++) {
    log.append([put(i)]);
    syncs.push(log.sync());
  }
  await Promise.all(syncs);
  t.equal(log.syncCalls, 100);
  t.equal(log.fsyncRounds, 2, 'one round for the first sync, one shared by the 99 after it');
  t.ok(fdatasyncs < 100, `${fdatasyncs} fdatasync calls for 100 syncs`);
  t.equal(log.durable, 100);

  // Nothing new: the same in-flight promise, or nothing at all.
  log.append([put(101)]);
  const a = log.sync();
  const b = log.sync();
  t.equal(a, b, 'concurrent syncs with nothing new in between share the round');
  // More appends while a round is in flight: a later round covers them.
  log.append([put(102)]);
  const c = log.sync();
  const d = log.sync();
  t.not(c, a);
  t.equal(c, d);
  await a;
  t.ok(log.durable >= 101);
  await c;
  t.equal(log.durable, 102);
  const rounds = log.fsyncRounds;
  await log.sync();
  t.equal(log.fsyncRounds, rounds, 'nothing to sync: no fsync');
  // close() lets syncs already asked for finish.
  log.append([put(103)]);
  const e = log.sync();
  log.append([put(104)]);
  const f = log.sync();
  await log.close();
  await e;
  await f;
  t.equal(log.durable, 104);
  const r = await SegmentLog.open(dir);
  t.equal(r.log.last, 104);
  await r.log.close();
});

t.test('SegmentLog: an fsync failure makes the log unusable', async (t) => {
  const dir = path.join(tmpDir(t), 'log');
  const { log } = await SegmentLog.open(dir);
  const orig = fs.fdatasync;
  (fs as { fdatasync: typeof fs.fdatasync }).fdatasync = ((_fd: number, cb: (err: NodeJS.ErrnoException | null) => void) => {
    const e = new Error('EIO: simulated') as NodeJS.ErrnoException;
    e.code = 'EIO';
    setImmediate(() => cb(e));
  }) as typeof fs.fdatasync;
  t.teardown(() => {
    (fs as { fdatasync: typeof fs.fdatasync }).fdatasync = orig;
  });
  log.append([put(1)]);
  const first = log.sync();
  log.append([put(2)]);
  const second = log.sync();
  await t.rejects(first, /EIO/);
  await t.rejects(second, /failed earlier/);
  t.throws(() => log.append([put(3)]), /failed earlier/);
  (fs as { fdatasync: typeof fs.fdatasync }).fdatasync = orig;
  await log.close();
});

t.test('offline log tools: scan, verify, read, repair', async (t) => {
  const dir = path.join(tmpDir(t), 'log');
  t.same(scanLog(dir), [], 'no directory: no segments');
  t.same(verifyLog(dir), []);
  t.equal(repairLog(dir), null);
  const max = 400;
  const { log } = await SegmentLog.open(dir, { segmentBytesMax: max });
  log.append(range(1, 30));
  await log.close();
  t.same(verifyLog(dir), []);
  t.same([...readLog(dir)], range(1, 30));
  t.same([...readLog(dir, 5, 9)], range(5, 9));
  t.same([...readLog(dir, 29)], range(29, 30));
  t.equal(repairLog(dir), null, 'nothing to repair');

  const segs = scanLog(dir);
  const victim = segs[1]!;
  const buf = fs.readFileSync(victim.file);
  const off = recordOffsets(buf)[1]!;
  buf[off + 12] ^= 0x02;
  fs.writeFileSync(victim.file, buf);
  // And a torn tail on the last segment.
  const lastSeg = segs[segs.length - 1]!;
  fs.appendFileSync(lastSeg.file, 'torn');
  const before = segFiles(dir).map((f) => fs.readFileSync(path.join(dir, f)));

  const problems = verifyLog(dir);
  t.equal(problems.length, 2);
  t.same(problems[0], { file: victim.file, offset: off, reason: 'record checksum mismatch', torn: false });
  t.equal(problems[1]!.file, lastSeg.file);
  t.equal(problems[1]!.torn, true);
  const scanned = scanLog(dir);
  t.match(scanned[1]!.problem, /checksum mismatch at byte/);
  t.equal(scanned[1]!.count, 1);
  t.same(
    segFiles(dir).map((f) => fs.readFileSync(path.join(dir, f))),
    before,
    'scan and verify change nothing',
  );
  const got: Entry[] = [];
  t.throws(() => {
    for (const e of readLog(dir)) got.push(e);
  }, LogCorruptError);
  t.same(got, range(1, victim.firstIndex), 'read yields everything before the problem');

  const rep = repairLog(dir)!;
  t.equal(rep.file, victim.file);
  t.equal(rep.offset, off);
  t.same(
    rep.segmentsDeleted,
    segs.slice(2).map((s) => s.file),
  );
  t.equal(rep.entriesDropped, segs.slice(2).reduce((n, s) => n + s.count, 0));
  t.ok(rep.bytesDropped > 0);
  t.same(verifyLog(dir), [], 'clean after repair');
  const r = await SegmentLog.open(dir, { segmentBytesMax: max });
  t.same(r.entries, range(1, victim.firstIndex));
  t.same(r.warnings, []);
  await r.log.close();

  // A bad header: the whole segment and everything after it goes.
  const dir2 = path.join(tmpDir(t), 'log');
  const l2 = await SegmentLog.open(dir2, { segmentBytesMax: max });
  l2.log.append(range(1, 30));
  await l2.log.close();
  const s2 = scanLog(dir2);
  fs.writeFileSync(s2[2]!.file, Buffer.concat([Buffer.from('NOTALOG!'), fs.readFileSync(s2[2]!.file).subarray(8)]));
  t.match(verifyLog(dir2)[0], { file: s2[2]!.file, offset: 0, reason: /bad magic/ });
  const rep2 = repairLog(dir2)!;
  t.same(rep2.segmentsDeleted, s2.slice(2).map((s) => s.file));
  t.same([...readLog(dir2)], range(1, s2[1]!.lastIndex));

  // A gap between segments.
  const dir3 = path.join(tmpDir(t), 'log');
  const l3 = await SegmentLog.open(dir3, { segmentBytesMax: max });
  l3.log.append(range(1, 30));
  await l3.log.close();
  const s3 = scanLog(dir3);
  fs.unlinkSync(s3[1]!.file);
  t.match(verifyLog(dir3), [{ file: s3[2]!.file, offset: 0, reason: /does not follow on/ }]);
  t.throws(() => [...readLog(dir3)], LogCorruptError);
  repairLog(dir3);
  t.same([...readLog(dir3)], range(1, s3[0]!.lastIndex));
});

// ---------------------------------------------------------------------------
// MemLog durability

t.test('MemLog: a crash loses what was not synced', async (t) => {
  const log = new MemLog();
  log.append(range(1, 5));
  await log.sync();
  log.append(range(6, 8));
  t.equal(log.last, 8);
  t.equal(log.durable, 5);
  const p = log.sync();
  t.equal(log.durable, 8, 'durable from the call');
  await p;
  log.append(range(9, 12));
  t.same(new MemLog(log.all().slice(0, 0)).last, 0);
  const kept = log.crash();
  t.same(kept, range(1, 8));
  t.throws(() => log.append([put(13)]), /after crash/);
  t.throws(() => log.crash(), /after crash/);
  await t.rejects(log.sync(), /after crash/);

  const log2 = new MemLog(kept);
  t.equal(log2.last, 8);
  t.equal(log2.durable, 8);
  log2.append(range(9, 12));
  t.same(log2.crash(2), range(1, 10), 'a torn tail keeps a prefix of the unsynced entries');

  // A truncation is durable at once (as SegmentLog makes it).
  const log3 = new MemLog(range(1, 10));
  log3.truncateFrom(6);
  log3.append(range(6, 7, (i) => put(i, `k${i}`, 'new', 2)));
  t.same(log3.crash(), range(1, 5));

  // removeBelow never drops what is not yet durable.
  const log4 = new MemLog(range(1, 5));
  log4.append(range(6, 10));
  await log4.removeBelow(100);
  t.equal(log4.first, 6, 'only the durable entries 1..5 went');
  t.equal(log4.last, 10);
  t.equal(log4.syncCalls, 0);
  const o = MemLog.open(range(3, 4));
  t.same(o.entries, range(3, 4));
  t.same(o.warnings, []);
  t.same(o.log.all(), range(3, 4));
});

// ---------------------------------------------------------------------------
// State file

t.test('state file', async (t) => {
  const dir = tmpDir(t);
  const file = path.join(dir, 'state');
  const sf = new FileStateFile(file);
  t.same(sf.read(), { promised: 0 }, 'absent: nothing promised');
  await sf.write({ promised: 3 });
  t.same(sf.read(), { promised: 3 });
  t.same(JSON.parse(fs.readFileSync(file, 'utf8')), { promised: 3 });
  t.notOk(fs.existsSync(file + '.tmp'), 'no temporary file left');
  t.same(new FileStateFile(file).read(), { promised: 3 }, 'read by a new instance');
  // Concurrent writes run in order; the last one wins.
  await Promise.all([sf.write({ promised: 4 }), sf.write({ promised: 5 }), sf.write({ promised: 6 })]);
  t.same(sf.read(), { promised: 6 });
  await t.rejects(sf.write({ promised: -1 }), /invalid state/);
  await t.rejects(sf.write({ promised: 1.5 }), /invalid state/);
  t.same(sf.read(), { promised: 6 });
  // A leftover temporary file from a crash is harmless.
  fs.writeFileSync(file + '.tmp', 'half');
  t.same(sf.read(), { promised: 6 });
  await sf.write({ promised: 7 });
  t.same(sf.read(), { promised: 7 });
  // The directory is created if needed.
  const nested = new FileStateFile(path.join(dir, 'a', 'b', 'state'));
  await nested.write({ promised: 1 });
  t.same(nested.read(), { promised: 1 });

  for (const [what, text, re] of [
    ['not JSON', '{"promised": 3', /not JSON/],
    ['empty', '', /not JSON/],
    ['wrong type', '{"promised":"3"}', /non-negative integer/],
    ['negative', '{"promised":-2}', /non-negative integer/],
    ['extra field', '{"promised":2,"x":1}', /unknown field/],
    ['array', '[2]', /not a JSON object/],
  ] as const) {
    fs.writeFileSync(file, text);
    t.throws(() => sf.read(), re, what);
    t.throws(() => sf.read(), new RegExp(`state file ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is corrupt`));
  }
  fs.rmSync(file);
  fs.mkdirSync(file);
  t.throws(() => sf.read(), /EISDIR/, 'other read errors are not hidden');

  const mem = new MemStateFile();
  t.same(mem.read(), { promised: 0 });
  await mem.write({ promised: 9 });
  const got = mem.read();
  got.promised = 100;
  t.same(mem.read(), { promised: 9 }, 'read returns a copy');
  t.equal(mem.writes, 1);
  await t.rejects(mem.write({ promised: -1 }));
  t.same(new MemStateFile({ promised: 4 }).read(), { promised: 4 });
});
