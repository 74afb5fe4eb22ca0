// The checkpoint: one CheckpointStore behaviour suite run against LMDB and the
// in-memory twin, then what only one of them does (LMDB persistence, read-only
// opening and offline verification; MemCheckpoint clones), a randomised check
// that the two agree, and the key order.

import t from 'tap';
import { CHECKPOINT_FORMAT, CorruptRecordError } from '../src/core/records.js';
import fs from 'node:fs';
import path from 'node:path';
import {
  LmdbCheckpoint,
  MemCheckpoint,
  compareKeys,
  digestOf,
  emptyMeta,
  verifyCheckpoint,
  CheckpointDamagedError,
} from '../src/storage/checkpoint.js';
import type { CheckpointStore } from '../src/storage/ports.js';
import type { CheckpointDelta, CheckpointMeta, Rec, RidRecord } from '../src/core/records.js';
import type { ChangeEvent } from '../src/core/wire.js';
import { type TT, tmpDir } from './helpers/tmp-dir.js';
import { changeEventJson } from '../src/core/entry-text.js';
import { crc32c } from '../src/storage/crc32c.js';
import { Slices } from '../src/storage/slices.js';

// ---------------------------------------------------------------------------
// Checkpoint behaviour, shared by LmdbCheckpoint and MemCheckpoint.

function meta(index: number, extra: Partial<CheckpointMeta> = {}): CheckpointMeta {
  return { format: CHECKPOINT_FORMAT, index, epoch: 1, ts: index * 2, voters: [1, 2, 3], eventPrev: index, ...extra };
}

function rec(value: string, rev: number): Rec {
  return { value, rev, ts: rev * 2 };
}

function delta(index: number, kv: Array<[string, Rec | null]>, ridsSet: Array<[string, RidRecord]> = [], ridsDel: string[] = []): CheckpointDelta {
  return { kv, ridsSet, ridsDel, meta: meta(index) };
}

interface CheckpointHarness {
  name: string;
  make(tt: TT): Promise<CheckpointStore & { counts(): { keys: number; rids: number } }>;
}

function checkpointSuite(h: CheckpointHarness): void {
  t.test(`${h.name}: CheckpointStore behaviour`, async (t) => {
    t.test('empty', async (t) => {
      const cp = await h.make(t);
      t.same(cp.meta(), { format: CHECKPOINT_FORMAT, index: 0, epoch: 0, ts: 0, voters: [], eventPrev: 0 });
      t.same(cp.meta(), emptyMeta());
      t.equal(cp.get('a'), undefined);
      t.equal(cp.get(''), undefined);
      t.same(cp.range('', undefined, 10), []);
      t.same(cp.rids(), []);
      t.same([...cp.entries()], []);
      t.equal(cp.digest(), digestOf(0, []));
      t.same(cp.counts(), { keys: 0, rids: 0 });
    });

    t.test('write, get, range, rids, meta', async (t) => {
      const cp = await h.make(t);
      const keys = ['b', 'a', 'a.b', 'a/', 'a-', 'B', 'z', 'a.c', 'a.b.c', 'user.1', 'user.10', 'user.2', '_x', '=y'];
      await cp.write(
        delta(
          20,
          keys.map((k, i) => [k, rec(`v-${k}`, i + 1)]),
          [
            ['rid-b', { index: 4, ts: 8, result: { ok: true } }],
            ['rid-a', { index: 5, ts: 10, result: { ok: false, code: 'CAS_MISMATCH', failed: 0, current: null } }],
            ['rid-c', { index: 2, ts: 4, result: { ok: false, code: 'CAS_MISMATCH', failed: 1, current: 'cur' } }],
          ],
        ),
      );
      t.same(cp.meta(), meta(20));
      t.same(cp.get('a.b'), rec('v-a.b', 3));
      t.equal(cp.get('nope'), undefined);
      const sorted = [...keys].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
      t.same(
        [...cp.entries()].map(([k]) => k),
        sorted,
        'entries in byte order',
      );
      t.same(
        cp.range('', undefined, 100).map(([k]) => k),
        sorted,
      );
      t.same(
        cp.range('a', undefined, 100).map(([k]) => k),
        ['a', 'a-', 'a.b', 'a.b.c', 'a.c', 'a/'],
      );
      t.same(
        cp.range('a.', undefined, 100).map(([k]) => k),
        ['a.b', 'a.b.c', 'a.c'],
      );
      t.same(
        cp.range('a.', 'a.b', 100).map(([k]) => k),
        ['a.b.c', 'a.c'],
        'strictly after start',
      );
      t.same(
        cp.range('a', 'a.', 2).map(([k]) => k),
        ['a.b', 'a.b.c'],
        'start between keys, limited',
      );
      t.same(
        cp.range('user.', 'a', 100).map(([k]) => k),
        ['user.1', 'user.10', 'user.2'],
        'a start before the prefix is ignored',
      );
      t.same(cp.range('user.', 'user.9', 100), [], 'a start after every prefixed key');
      t.same(cp.range('user.', undefined, 0), []);
      t.same(cp.range('q', undefined, 10), []);
      t.same(cp.range('a.b', undefined, 10)[0], ['a.b', rec('v-a.b', 3)]);
      t.same(
        cp.rids().map(([r]) => r),
        ['rid-c', 'rid-b', 'rid-a'],
        'rids in index order',
      );
      t.same(cp.rids()[0], ['rid-c', { index: 2, ts: 4, result: { ok: false, code: 'CAS_MISMATCH', failed: 1, current: 'cur' } }]);
      t.same(cp.counts(), { keys: keys.length, rids: 3 });

      // Update, delete, forget rids.
      await cp.write(delta(29, [['a', rec('new', 29)], ['b', null], ['never-there', null]], [['rid-d', { index: 29, ts: 58, result: { ok: true } }]], ['rid-b', 'rid-zz']));
      t.same(cp.get('a'), rec('new', 29));
      t.equal(cp.get('b'), undefined);
      t.same(
        cp.rids().map(([r]) => r),
        ['rid-c', 'rid-a', 'rid-d'],
      );
      t.same(cp.meta(), meta(29));
      t.same(cp.counts(), { keys: keys.length - 1, rids: 3 });
      // An empty delta just moves meta.
      await cp.write(delta(29, []));
      await cp.write(delta(30, []));
      t.equal(cp.meta().index, 30);
    });

    t.test('bad deltas are refused and change nothing', async (t) => {
      const cp = await h.make(t);
      await cp.write(delta(5, [['a', rec('x', 5)]]));
      const digest = cp.digest();
      const bad: Array<[string, CheckpointDelta, RegExp]> = [
        ['backwards', delta(4, [['b', rec('y', 4)]]), /goes back/],
        ['key twice', delta(6, [['b', rec('y', 6)], ['b', null]]), /twice/],
        ['empty key', delta(6, [['', rec('y', 6)]]), /key is not a non-empty string/],
        ['rev beyond index', delta(6, [['b', rec('y', 7)]]), /beyond meta.index/],
        ['bad rec', delta(6, [['b', { value: 3, rev: 1, ts: 1 } as unknown as Rec]]), /value is not a string/],
        ['bad meta', { ...delta(6, []), meta: { ...meta(6), format: 3 } }, /format/],
        ['eventPrev beyond index', { ...delta(6, []), meta: { ...meta(6), eventPrev: 7 } }, /eventPrev/],
        ['bad rid record', delta(6, [], [['r', { index: 0, ts: 1, result: { ok: true } }]]), /rid record index/],
        ['bad rid result', delta(6, [], [['r', { index: 1, ts: 1, result: { ok: 'yes' } as unknown as RidRecord['result'] }]]), /result.ok/],
        ['long rid', delta(6, [], [], ['r'.repeat(65)]), /longer than 64/],
      ];
      for (const [what, d, re] of bad) await t.rejects(cp.write(d), re, what);
      t.equal(cp.digest(), digest);
      t.equal(cp.meta().index, 5);
      t.same([...cp.entries()], [['a', rec('x', 5)]]);
    });

    t.test('digest: equal state gives an equal digest', async (t) => {
      const one = await h.make(t);
      const two = await h.make(t);
      await one.write(delta(3, [['a', rec('1', 1)], ['b', rec('2', 2)], ['c', rec('3', 3)]]));
      await one.write(delta(6, [['a', null], ['b', rec('22', 5)], ['d', rec('4', 6)]]));
      await two.write(delta(3, [['x', rec('9', 1)], ['c', rec('3', 3)]]));
      await two.write(delta(4, [['x', null], ['d', rec('old', 4)]]));
      await two.write(delta(6, [['d', rec('4', 6)], ['b', rec('22', 5)]], [['rid', { index: 6, ts: 12, result: { ok: true } }]]));
      t.equal(one.digest(), two.digest(), 'rids and the order of writes do not matter');
      t.match(one.digest(), /^[0-9a-f]{64}$/);
      await two.write(delta(7, []));
      t.not(one.digest(), two.digest(), 'meta.index matters');
      await one.write(delta(7, [['b', rec('22', 7)]]));
      t.not(one.digest(), two.digest(), 'rev matters');
    });
  });
}

checkpointSuite({
  name: 'LmdbCheckpoint',
  async make(tt) {
    const cp = await LmdbCheckpoint.open(path.join(tmpDir(tt), 'checkpoint'));
    tt.teardown(() => cp.close());
    return cp;
  },
});
checkpointSuite({
  name: 'MemCheckpoint',
  async make() {
    return new MemCheckpoint();
  },
});

t.test('LmdbCheckpoint: persistence, read-only, reads during a write', async (t) => {
  const data = tmpDir(t);
  const dir = path.join(data, 'checkpoint');
  const cp = await LmdbCheckpoint.open(dir);
  await cp.write(delta(2, [['a', rec('1', 1)], ['b', rec('2', 2)]], [['r1', { index: 2, ts: 4, result: { ok: true } }]]));
  const digest = cp.digest();

  // Reads while a big write is in flight see the old state or the new one, never a mix.
  const N = 3000;
  const big = delta(
    3,
    Array.from({ length: N }, (_, i): [string, Rec] => [`big.${String(i).padStart(5, '0')}`, rec(`v${i}`, 3)]),
  );
  big.kv.push(['a', null]);
  let done = false;
  const writing = cp.write(big).then(() => {
    done = true;
  });
  t.equal(cp.meta().index, 2, 'not visible before the write completes');
  t.same(cp.get('a'), rec('1', 1));
  let samples = 0;
  let mixed = 0;
  while (!done) {
    const index = cp.meta().index;
    const n = cp.range('big.', undefined, N + 1).length;
    const a = cp.get('a');
    const old = index === 2 && n === 0 && a !== undefined;
    const now = index === 3 && n === N && a === undefined;
    if (!old && !now) mixed++;
    samples++;
    await new Promise((r) => setImmediate(r));
  }
  await writing;
  t.equal(mixed, 0, `no mixed state in ${samples} samples`);
  t.ok(samples > 0);
  t.equal(cp.meta().index, 3);
  t.equal(cp.counts().keys, N + 1);
  const digest3 = cp.digest();
  t.not(digest3, digest);
  await cp.close();
  await cp.close();
  t.throws(() => cp.get('b'), /closed/);

  // Reopen: everything is there.
  const again = await LmdbCheckpoint.open(dir);
  t.equal(again.meta().index, 3);
  t.same(again.get('b'), rec('2', 2));
  t.same(again.rids(), [['r1', { index: 2, ts: 4, result: { ok: true } }]]);
  t.equal(again.digest(), digest3);

  // Read-only, next to the writer.
  const ro = await LmdbCheckpoint.open(dir, { readOnly: true });
  t.equal(ro.digest(), digest3);
  await t.rejects(ro.write(delta(4, [])), /read-only/);
  await ro.close();
  await again.close();
  await t.rejects(LmdbCheckpoint.open(path.join(data, 'none'), { readOnly: true }), /no checkpoint/);
  t.notOk(fs.existsSync(path.join(data, 'none')), 'read-only creates nothing');

  const report = await verifyCheckpoint(dir);
  t.same(report.problems, []);
  t.equal(report.digest, digest3);
  t.equal(report.keys, N + 1);
  t.equal(report.rids, 1);
  t.equal(report.meta?.index, 3);
  const missing = await verifyCheckpoint(path.join(data, 'none'));
  t.match(missing.problems[0], /cannot open/);
});

t.test('verifyCheckpoint reports bad records', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  const cp = await LmdbCheckpoint.open(dir);
  await cp.write(delta(4, [['a', rec('1', 1)], ['b', rec('2', 2)]], [['r', { index: 4, ts: 8, result: { ok: true } }]]));
  await cp.close();
  // Write garbage with lmdb directly, as a damaged or foreign checkpoint would hold.
  const { open } = await import('lmdb');
  const root = open({ path: dir, maxDbs: 4, keyEncoding: 'binary', encoding: 'binary' });
  const kv = root.openDB({ name: 'kv', keyEncoding: 'binary', encoding: 'binary' });
  const rids = root.openDB({ name: 'rids', keyEncoding: 'binary', encoding: 'binary' });
  await kv.put(Buffer.from('c'), Buffer.from('not json'));
  // One flipped bit in the stored value of "a" (its checksum no longer matches).
  const a = Buffer.from(kv.getBinary(Buffer.from('a'))!);
  a[a.length - 3] ^= 1;
  await kv.put(Buffer.from('a'), a);
  // A value moved under another key keeps its bytes but not its checksum.
  await kv.put(Buffer.from('d'), Buffer.from(kv.getBinary(Buffer.from('b'))!));
  await rids.put(Buffer.from('r2'), Buffer.from('{"index":1}'));
  await root.close();
  const r = await verifyCheckpoint(dir);
  t.equal(r.problems.length, 4, r.problems.join('; '));
  t.match(r.problems.join('\n'), /record of key "a": fails its checksum/);
  t.match(r.problems.join('\n'), /record of key "c": no checksum/);
  t.match(r.problems.join('\n'), /record of key "d": fails its checksum/);
  t.match(r.problems.join('\n'), /rid "r2"/);
  const again = await LmdbCheckpoint.open(dir, { readOnly: true });
  t.throws(() => again.get('a'), CorruptRecordError, 'reads refuse a record that fails its checksum');
  t.throws(() => again.range('', undefined, 10), CorruptRecordError, 'ranges too');
  t.equal(again.get('b')?.value, '2', 'a good record next to them still reads');
  await again.close();
});

t.test('LmdbCheckpoint: a big write lets the event loop run while it checks and encodes', async (t) => {
  // (Slices of 0 ms: the loop runs every 64 records, however fast this machine is.)
  const cp = await LmdbCheckpoint.open(path.join(tmpDir(t), 'checkpoint'), { sliceMs: 0 });
  const N = 5000;
  const kv = Array.from({ length: N }, (_, i): [string, Rec] => [`k.${String(i).padStart(5, '0')}`, rec(`v${i}`, 1)]);
  // The last record tells when it is first read (checked or encoded).
  let lastRead = false;
  const last = rec('last', 1);
  kv[N - 1] = ['k.zzzzz', Object.defineProperty({ ...last }, 'value', { get: () => ((lastRead = true), last.value), enumerable: true })];
  const writing = cp.write(delta(1, kv));
  await new Promise((r) => setImmediate(r));
  t.notOk(lastRead, 'a turn of the event loop came before the last record was reached');
  await writing;
  t.ok(lastRead);
  t.equal(cp.counts().keys, N);
  t.equal(cp.get('k.zzzzz')?.value, 'last');
  await cp.close();
});

t.test('slices of a checkpoint write go by time, not by count', async (t) => {
  let turns = 0;
  const counting = (ms: number): Slices =>
    new (class extends Slices {
      override async yield(): Promise<void> {
        turns++;
        await super.yield();
      }
    })(ms);
  // 0 ms: the loop runs at every look at the clock (every 64 items).
  const zero = counting(0);
  for (let i = 0; i < 6400; i++) if (zero.due()) await zero.yield();
  t.equal(turns, 100);
  // A long slice: as many items as fit in it go without a turn.
  turns = 0;
  const long = counting(60_000);
  for (let i = 0; i < 100_000; i++) if (long.due()) await long.yield();
  t.equal(turns, 0);
  // Items counted in steps (the delta's checks go 256 at a time).
  turns = 0;
  const steps = counting(0);
  for (let i = 0; i < 10; i++) if (steps.due(256)) await steps.yield();
  t.equal(turns, 10);
  // A slice that has had its time lets the loop run: a timer set before it fires in between.
  const timed = new Slices(5);
  let fired = false;
  setTimeout(() => (fired = true), 0);
  const start = performance.now();
  while (!fired && performance.now() - start < 5_000) if (timed.due()) await timed.yield();
  t.ok(fired, 'the loop ran while the work went on');
});

t.test('a file that is not an LMDB environment is refused before LMDB opens it', async (t) => {
  for (const [what, bytes] of [
    ['garbage', Buffer.alloc(64 * 1024, 0x5a)],
    ['an empty file', Buffer.alloc(0)],
    ['a short file', Buffer.from('hello')],
  ] as const) {
    const dir = path.join(tmpDir(t), 'checkpoint');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'data.mdb'), bytes);
    await t.rejects(LmdbCheckpoint.open(dir), CheckpointDamagedError, `${what}: a clear error, not a crash`);
    await t.rejects(LmdbCheckpoint.open(dir, { readOnly: true }), CheckpointDamagedError, `${what}: read-only too`);
    const r = await verifyCheckpoint(dir);
    t.match(r.problems.join('\n'), /not an LMDB environment|too short/, `${what}: verify names the problem`);
  }
});

t.test('a format-1 checkpoint (no checksums) is upgraded in place when opened for writing', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  const { open } = await import('lmdb');
  const root = open({ path: dir, maxDbs: 4, keyEncoding: 'binary', encoding: 'binary' });
  const kv = root.openDB({ name: 'kv', keyEncoding: 'binary', encoding: 'binary' });
  const rids = root.openDB({ name: 'rids', keyEncoding: 'binary', encoding: 'binary' });
  const metaDb = root.openDB({ name: 'meta', keyEncoding: 'binary', encoding: 'binary' });
  await kv.put(Buffer.from('a'), Buffer.from('{"value":"1","rev":1,"ts":2}'));
  await rids.put(Buffer.from('r'), Buffer.from('{"index":1,"ts":2,"result":{"ok":true}}'));
  await metaDb.put(Buffer.from('meta'), Buffer.from('{"format":1,"index":1,"epoch":1,"ts":2,"voters":[1],"eventPrev":1}'));
  await root.close();
  const ro = await LmdbCheckpoint.open(dir, { readOnly: true });
  t.equal(ro.get('a')?.value, '1', 'read as it is, read-only');
  await ro.close();
  const cp = await LmdbCheckpoint.open(dir);
  t.equal(cp.meta().format, CHECKPOINT_FORMAT, 'upgraded');
  t.equal(cp.get('a')?.value, '1');
  t.equal(cp.rids().length, 1);
  await cp.close();
  t.same((await verifyCheckpoint(dir)).problems, [], 'and every record now carries a checksum');
});

t.test('MemCheckpoint: clone is an independent copy; records are immutable', async (t) => {
  const cp = new MemCheckpoint();
  await cp.write(delta(2, [['a', rec('1', 1)]], [['r', { index: 2, ts: 4, result: { ok: true } }]]));
  const copy = cp.clone();
  await cp.write(delta(3, [['a', null], ['b', rec('2', 3)]]));
  t.same([...copy.entries()], [['a', rec('1', 1)]]);
  t.equal(copy.meta().index, 2);
  t.same(copy.rids().length, 1);
  t.not(copy.digest(), cp.digest());
  const got = cp.get('b')!;
  t.throws(() => {
    (got as { value: string }).value = 'changed';
  }, TypeError);
  const m = cp.meta();
  m.voters.push(99);
  t.same(cp.meta().voters, [1, 2, 3], 'meta() returns a copy');
  t.equal(cp.writes, 2);
  await cp.close();
});

t.test('MemCheckpoint and LmdbCheckpoint agree on random deltas', async (t) => {
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const alphabet = ['a', 'b', 'B', '.', '-', '/', '_', '=', '0', 'z'];
  const key = (): string => {
    let k = alphabet[rnd(alphabet.length)]!;
    for (let n = rnd(4); n > 0; n--) k += alphabet[rnd(alphabet.length)];
    return k;
  };
  const lmdb = await LmdbCheckpoint.open(path.join(tmpDir(t), 'checkpoint'));
  t.teardown(() => lmdb.close());
  const mem = new MemCheckpoint();
  let index = 0;
  for (let round = 0; round < 25; round++) {
    index += 1 + rnd(5);
    const kv = new Map<string, Rec | null>();
    for (let n = rnd(40); n > 0; n--) kv.set(key(), rnd(4) === 0 ? null : rec(`v${rnd(1000)}`, index));
    const rid = `rid${rnd(30)}`;
    const d: CheckpointDelta = {
      kv: [...kv.entries()],
      ridsSet: [[rid, { index, ts: index * 2, result: { ok: true } }]],
      ridsDel: rnd(2) === 0 ? [`rid${rnd(30)}`].filter((r) => r !== rid) : [],
      meta: meta(index),
    };
    await Promise.all([lmdb.write(d), mem.write(d)]);
    t.equal(lmdb.digest(), mem.digest(), `digest after round ${round}`);
  }
  t.same([...lmdb.entries()], [...mem.entries()]);
  t.same(lmdb.rids(), mem.rids());
  t.same(lmdb.meta(), mem.meta());
  t.same(lmdb.counts(), mem.counts());
  for (let n = 0; n < 50; n++) {
    const p = key().slice(0, rnd(3));
    const s = rnd(2) === 0 ? undefined : key();
    const limit = 1 + rnd(20);
    t.same(lmdb.range(p, s, limit), mem.range(p, s, limit), `range(${JSON.stringify(p)}, ${JSON.stringify(s)}, ${limit})`);
    const k = key();
    t.same(lmdb.get(k), mem.get(k));
  }
});

t.test('compareKeys is UTF-8 byte order', async (t) => {
  const words = ['a', 'B', 'ab', '', 'é', 'z', '\uffff', '\u{10000}', '\ue000', '\u00ff', 'a\u{1f600}', 'a\uffff'];
  const bytes = [...words].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
  t.same([...words].sort(compareKeys), bytes);
  t.equal(compareKeys('same', 'same'), 0);
});

t.test('the ttl index: keys with a time to live are found after a reopen without a scan, and leave it when rewritten without', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  const meta = (index: number): CheckpointMeta => ({ format: CHECKPOINT_FORMAT, index, epoch: 1, ts: index, voters: [1], eventPrev: 0 });
  let cp = await LmdbCheckpoint.open(dir);
  await cp.write({ kv: [['a', { value: '1', rev: 1, ts: 1, ttl: 5000 }], ['b', { value: '2', rev: 2, ts: 2 }], ['c', { value: '3', rev: 3, ts: 3, ttl: 60_000 }]], ridsSet: [], ridsDel: [], meta: meta(3) });
  t.same(cp.ttlKeys().sort(), [['a', { rev: 1, ttl: 5000 }], ['c', { rev: 3, ttl: 60_000 }]]);
  await cp.close();
  cp = await LmdbCheckpoint.open(dir);
  t.same(cp.ttlKeys().sort(), [['a', { rev: 1, ttl: 5000 }], ['c', { rev: 3, ttl: 60_000 }]], 'after a reopen');
  t.same(cp.get('a'), { value: '1', rev: 1, ts: 1, ttl: 5000 }, 'the record keeps its ttl');
  // Rewritten without a ttl, deleted, or given one: the index follows.
  await cp.write({ kv: [['a', { value: '1b', rev: 4, ts: 4 }], ['b', { value: '2b', rev: 5, ts: 5, ttl: 100 }], ['c', null]], ridsSet: [], ridsDel: [], meta: meta(5) });
  t.same(cp.ttlKeys(), [['b', { rev: 5, ttl: 100 }]]);
  await cp.close();
  cp = await LmdbCheckpoint.open(dir, { readOnly: true });
  t.same(cp.ttlKeys(), [['b', { rev: 5, ttl: 100 }]], 'read-only, after a reopen');
  const m = new MemCheckpoint();
  await m.write({ kv: [['x', { value: '1', rev: 1, ts: 1, ttl: 50 }], ['y', { value: '2', rev: 1, ts: 1 }]], ridsSet: [], ridsDel: [], meta: meta(1) });
  t.same(m.ttlKeys(), [['x', { rev: 1, ttl: 50 }]], 'MemCheckpoint agrees');
  t.rejects(cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(6) }), /read-only/);
  await cp.close();
  // A ttl out of range is a damaged record, as anything else would be.
  const w = await LmdbCheckpoint.open(path.join(tmpDir(t), 'checkpoint'));
  await t.rejects(w.write({ kv: [['k', { value: 'v', rev: 1, ts: 1, ttl: 0 }]], ridsSet: [], ridsDel: [], meta: meta(1) }), /ttl/);
  await w.close();
});

// With the writer's cache of heads at its default, rotating (6 and 2), and off (0: every head read).
for (const headCacheKeysMax of [undefined, 6, 2, 0]) t.test(`durable history: LMDB and the in-memory twin agree under retention, across a reopen (head cache ${headCacheKeysMax ?? 'default'})`, async (t) => {
  let seed = 777;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const keys = ['a', 'a.b', 'ab', 'b', 'c.1', 'c.10'];
  const dir = path.join(tmpDir(t), 'checkpoint');
  const MAX = 25;
  let lmdb = await LmdbCheckpoint.open(dir, { historyEventsMax: MAX, headCacheKeysMax });
  t.teardown(() => lmdb.close());
  const mem = new MemCheckpoint(MAX);
  const all: ChangeEvent[] = [];
  let index = 0;
  let prev = 0;
  const compare = (what: string): void => {
    t.equal(lmdb.historyFloor(), mem.historyFloor(), `${what}: floor`);
    t.equal(lmdb.historyCount(), mem.historyCount(), `${what}: count`);
    const kept = all.filter((e) => e.index > mem.historyFloor());
    t.same([...lmdb.events(0)], kept, `${what}: every event above the floor, in order`);
    t.ok(kept.length <= MAX, `${what}: within the retention`);
    for (let n = 0; n < 8; n++) {
      const from = rnd(index + 2);
      const key = keys[rnd(keys.length)]!;
      t.same([...lmdb.events(from, key)], [...mem.events(from, key)], `${what}: events(${from}, ${key})`);
      t.same([...lmdb.events(from, key)], kept.filter((e) => e.index >= from && e.key === key));
      t.same([...lmdb.keyEventsBefore(key, from)], kept.filter((e) => e.index < from && e.key === key).reverse(), `${what}: keyEventsBefore(${key}, ${from})`);
    }
  };
  for (let round = 0; round < 30; round++) {
    const events: ChangeEvent[] = [];
    for (let n = rnd(4); n >= 0; n--) {
      index++;
      // Some entries produce no events; some several (a batch, a prefix delete).
      for (let m = rnd(3); m > 0; m--) {
        const key = keys[rnd(keys.length)]!;
        events.push(rnd(3) === 0 ? { index, ts: index, op: 'del', key, prev } : { index, ts: index, op: 'put', key, value: `v${index}.${m}`, prev });
      }
      if (events.length > 0 && events[events.length - 1]!.index === index) prev = index;
    }
    const d: CheckpointDelta = { kv: [], ridsSet: [], ridsDel: [], meta: meta(index), events };
    await Promise.all([lmdb.write(d), mem.write(d)]);
    all.push(...events);
    compare(`round ${round}`);
  }
  t.ok(mem.historyFloor() > 0, 'retention let go of some');
  await lmdb.close();
  lmdb = await LmdbCheckpoint.open(dir, { historyEventsMax: MAX, headCacheKeysMax });
  compare('after a reopen');
  const report = await verifyCheckpoint(dir);
  t.same(report.problems, [], 'verify finds the history whole');
  t.equal(report.events, lmdb.historyCount());

  // A delta without events (a checkpoint from a peer or a backup): history starts over.
  const d: CheckpointDelta = { kv: [], ridsSet: [], ridsDel: [], meta: meta(index + 5) };
  await Promise.all([lmdb.write(d), mem.write(d)]);
  t.equal(lmdb.historyFloor(), index + 5);
  t.equal(lmdb.historyCount(), 0);
  t.same([...lmdb.events(0)], []);
  t.same([...lmdb.keyEventsBefore('a', Infinity)], [], 'no hist entry left behind');
  t.equal(mem.historyFloor(), index + 5);
});

t.test('durable history: age retention, a damaged event, an older checkpoint without history, bad deltas', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  let now = 1_000_000;
  const cp = await LmdbCheckpoint.open(dir, { historyAgeMs: 60_000, now: () => now });
  const ev = (index: number, key: string, value: string, prev: number): ChangeEvent => ({ index, ts: index, op: 'put', key, value, prev });
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(2), events: [ev(1, 'a', '1', 0), ev(2, 'b', '2', 1)] });
  now += 30_000;
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(3), events: [ev(3, 'a', '3', 2)] });
  t.equal(cp.historyFloor(), 0, 'nothing older than the age yet');
  now += 40_000;
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(4), events: [ev(4, 'c', '4', 3)] });
  t.equal(cp.historyFloor(), 2, 'the first checkpoint\'s events are older than 60 s: let go of');
  t.same([...cp.events(0)].map((e) => e.index), [3, 4]);
  t.rejects(cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(5), events: [ev(4, 'c', 'x', 3)] }), /event at index 4/, 'an event at or below the checkpoint index is refused');
  t.rejects(cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(5), events: [{ index: 5, ts: 5, op: 'put', key: 'c', prev: 4 } as ChangeEvent] }), /value/, 'a put event without a value is refused');
  await cp.close();

  // A flipped bit in a stored event: reads refuse it (the replica repairs), verify reports it.
  const { open } = await import('lmdb');
  const root = open({ path: dir, maxDbs: 7, keyEncoding: 'binary', encoding: 'binary' });
  const events = root.openDB({ name: 'events', keyEncoding: 'binary', encoding: 'binary' });
  const first = [...events.getRange({})][0]!;
  const bad = Buffer.from(first.value as Buffer);
  bad[bad.length - 3] ^= 1;
  await events.put(Buffer.from(first.key as Buffer), bad);
  await root.close();
  const report = await verifyCheckpoint(dir);
  t.match(report.problems.join('\n'), /event 3\/0: fails its checksum/);
  const again = await LmdbCheckpoint.open(dir, { historyAgeMs: 60_000, now: () => now });
  t.throws(() => [...again.events(0)], CorruptRecordError);
  t.throws(() => [...again.keyEventsBefore('a', 10)], CorruptRecordError);
  // Letting go of a damaged event does not fail the write (else every checkpoint after would).
  now += 100_000;
  await again.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(6), events: [ev(6, 'a', '6', 4)] });
  t.same([...again.events(0)].map((e) => e.index), [6]);
  t.same([...again.keyEventsBefore('a', 10)].map((e) => e.index), [6], 'the damaged event\'s hist entry is skipped');
  await again.close();

  // A checkpoint written before the history existed: no events or hist database, no "history" meta.
  const oldDir = path.join(tmpDir(t), 'old');
  const oldRoot = open({ path: oldDir, maxDbs: 5, keyEncoding: 'binary', encoding: 'binary' });
  for (const name of ['kv', 'rids', 'ttl']) oldRoot.openDB({ name, keyEncoding: 'binary', encoding: 'binary' });
  const metaDb = oldRoot.openDB({ name: 'meta', keyEncoding: 'binary', encoding: 'binary' });
  await metaDb.put(Buffer.from('meta'), Buffer.from(JSON.stringify({ format: 1, index: 9, epoch: 1, ts: 9, voters: [1], eventPrev: 0 })));
  await oldRoot.close();
  const ro = await LmdbCheckpoint.open(oldDir, { readOnly: true });
  t.equal(ro.historyFloor(), 9, 'read-only: the history starts at its index');
  t.same([...ro.events(0)], []);
  await ro.close();
  const rw = await LmdbCheckpoint.open(oldDir);
  t.equal(rw.historyFloor(), 9);
  await rw.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(10), events: [ev(10, 'a', '1', 0)] });
  t.same([...rw.events(0)].map((e) => e.index), [10]);
  await rw.close();
});

t.test('durable history: a smaller retention lets go of thousands of events, a slice at a time, by whole entries', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  let cp = await LmdbCheckpoint.open(dir);
  const events: ChangeEvent[] = [];
  for (let i = 1; i <= 1500; i++) for (const key of ['a', 'b']) events.push({ index: i, ts: i, op: 'put', key, value: String(i), prev: i - 1 });
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(1500), events });
  t.equal(cp.historyCount(), 3000);
  await cp.close();
  cp = await LmdbCheckpoint.open(dir, { historyEventsMax: 100 });
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(1501), events: [{ index: 1501, ts: 1501, op: 'del', key: 'a', prev: 1500 }] });
  // 3001 events, 100 kept: 2901 go, and the cut falls between the two events of entry 1451: the whole entry goes.
  t.equal(cp.historyCount(), 99, 'whole entries: one more let go than the count asks');
  t.equal(cp.historyFloor(), 1451);
  t.same([...cp.events(0)][0], { index: 1452, ts: 1452, op: 'put', key: 'a', value: '1452', prev: 1451 });
  t.same([...cp.keyEventsBefore('b', 1452)], [], 'their hist entries went too');
  const report = await verifyCheckpoint(dir).catch((e) => e);
  t.ok(report, 'verify runs while open (read-only alongside)');
  await cp.close();
  t.same((await verifyCheckpoint(dir)).problems, []);
});

t.test('durable history: an entry whose events span several read slices goes whole', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  const cp = await LmdbCheckpoint.open(dir, { historyEventsMax: 24 });
  t.teardown(() => cp.close());
  // A prefix delete's 20 events at index 1, then one event each at 2..5.
  const first: ChangeEvent[] = Array.from({ length: 20 }, (_, i) => ({ index: 1, ts: 1, op: 'del', key: `p.${String(i).padStart(2, '0')}`, prev: 0 }));
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(1), events: first });
  const more: ChangeEvent[] = [2, 3, 4, 5].map((i) => ({ index: i, ts: i, op: 'put', key: 'k', value: String(i), prev: i - 1 }));
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(5), events: more });
  t.equal(cp.historyCount(), 24, 'at the retention: nothing let go');
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(6), events: [{ index: 6, ts: 6, op: 'put', key: 'k', value: '6', prev: 5 }] });
  // One too many: all 20 of entry 1 go (read 9, then 8, then the rest), none of entry 2.
  t.equal(cp.historyFloor(), 1);
  t.equal(cp.historyCount(), 5);
  t.same([...cp.events(0)].map((e) => e.index), [2, 3, 4, 5, 6]);
  t.same([...cp.keyEventsBefore('p.19', 10)], []);
});

/** A value sealed as the checkpoint seals one: "<crc32c of key, 0x00, json as 8 hex digits> <json>". */
function sealed(key: Buffer, json: string): Buffer {
  const body = Buffer.from(json, 'utf8');
  const crc = crc32c(body, crc32c(Buffer.from([0]), crc32c(key)));
  return Buffer.concat([Buffer.from(`${(crc >>> 0).toString(16).padStart(8, '0')} `, 'latin1'), body]);
}

const lmdbDbs = async (dir: string) => {
  const { open } = await import('lmdb');
  const enc = { keyEncoding: 'binary', encoding: 'binary' } as const;
  const root = open({ path: dir, maxDbs: 8, ...enc });
  const db = (name: string) => root.openDB({ name, ...enc });
  return { root, events: db('events'), heads: db('heads'), hist: db('hist'), meta: db('meta') };
};

t.test('durable history: each key\'s events are a chain; a checkpoint from before the chain is read through its index, and chained at a writable open', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  let seed = 4242;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const keys = ['a', 'b', 'c', 'a.1', 'once.1', 'once.2', 'once.3'];
  const MAX = 40;
  let cp = await LmdbCheckpoint.open(dir, { historyEventsMax: MAX });
  const mem = new MemCheckpoint(MAX);
  const all: ChangeEvent[] = [];
  let index = 0;
  for (let round = 0; round < 40; round++) {
    const events: ChangeEvent[] = [];
    for (let n = rnd(3); n >= 0; n--) {
      index++;
      // Keys changed only early on ('once.*') are let go of whole: the heads of those deleted must go too.
      const key = round < 5 ? keys[rnd(keys.length)]! : keys[rnd(4)]!;
      events.push(rnd(3) === 0 ? { index, ts: index, op: 'del', key, prev: index - 1 } : { index, ts: index, op: 'put', key, value: `v${index}`, prev: index - 1 });
    }
    const d: CheckpointDelta = { kv: [], ridsSet: [], ridsDel: [], meta: meta(index), events };
    await Promise.all([cp.write(d), mem.write(d)]);
    all.push(...events);
  }
  // A head for each key with events kept, and for each key whose last change (let go of) was a
  // put: its next change rewrites it. A deleted key's head goes with its delete.
  const newestOp = new Map(all.map((e) => [e.key, e.op]));
  const same = (c: LmdbCheckpoint, what: string): void => {
    for (const key of keys) {
      for (const from of [0, Math.floor(index / 2), index - 3, index + 1]) {
        t.same([...c.events(from, key)], [...mem.events(from, key)], `${what}: events(${from}, ${key})`);
        t.same([...c.keyEventsBefore(key, from)], [...mem.keyEventsBefore(key, from)], `${what}: keyEventsBefore(${key}, ${from})`);
      }
    }
  };
  same(cp, 'chained');
  await cp.close();
  let db = await lmdbDbs(dir);
  const heads = [...db.heads.getKeys({})].map((k) => (k as Buffer).toString('utf8')).sort();
  const keysKept = [...new Set([...mem.events(0)].map((e) => e.key))].sort();
  const withHead = [...new Set([...keysKept, ...[...newestOp].filter(([, op]) => op === 'put').map(([k]) => k)])].sort();
  t.ok(keysKept.length < keys.length, 'some keys had all their events let go of');
  t.ok([...newestOp].some(([k, op]) => op === 'del' && !keysKept.includes(k)), 'a deleted key among them');
  t.same(heads, withHead, 'a head for each key with events kept or last put; none for a key deleted whose events all went');
  t.same([...db.hist.getKeys({})], [], 'no hist index');
  await db.root.close();
  t.same((await verifyCheckpoint(dir)).problems, [], 'verify: every chain whole');

  // Make it a checkpoint from before the chain: events without keyPrev, a hist index, no heads, no mark.
  db = await lmdbDbs(dir);
  const stored = [...db.events.getRange({})].map(({ key, value }) => ({ key: Buffer.from(key as Buffer), json: JSON.parse((value as Buffer).toString('utf8', 9)) }));
  await db.root.batch(() => {
    for (const { key, json } of stored) {
      void db.events.put(key, sealed(key, `{"at":${json.at},"event":${changeEventJson(json.event)}}`));
      void db.hist.put(Buffer.concat([Buffer.from(json.event.key, 'utf8'), Buffer.from([0]), key]), Buffer.from([1]));
    }
    for (const k of [...db.heads.getKeys({})]) void db.heads.remove(Buffer.from(k as Buffer));
    void db.meta.remove(Buffer.from('historyChain'));
    void db.meta.remove(Buffer.from('historyBytes'));
  });
  await db.root.close();
  const ro = await LmdbCheckpoint.open(dir, { readOnly: true });
  same(ro, 'older, read-only (through the hist index)');
  await ro.close();
  t.same((await verifyCheckpoint(dir)).problems, [], 'verify: the older index whole');
  cp = await LmdbCheckpoint.open(dir, { historyEventsMax: MAX });
  same(cp, 'chained at a writable open');
  await cp.close();
  db = await lmdbDbs(dir);
  t.same([...db.hist.getKeys({})], [], 'the hist index is emptied');
  t.same([...db.heads.getKeys({})].map((k) => (k as Buffer).toString('utf8')).sort(), keysKept, 'chaining makes heads for the keys with events kept');
  await db.root.close();
  t.same((await verifyCheckpoint(dir)).problems, [], 'verify: chained whole');
  cp = await LmdbCheckpoint.open(dir, { historyEventsMax: MAX });
  const d: CheckpointDelta = { kv: [], ridsSet: [], ridsDel: [], meta: meta(index + 1), events: [{ index: index + 1, ts: index + 1, op: 'del', key: 'a', prev: index }] };
  await Promise.all([cp.write(d), mem.write(d)]);
  index++;
  same(cp, 'written after');
  await cp.close();
});

t.test('durable history: chaining an older checkpoint keeps a damaged event in its key\'s chain, so reads still refuse it', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  let cp = await LmdbCheckpoint.open(dir);
  const ev = (index: number): ChangeEvent => ({ index, ts: index, op: 'put', key: 'a', value: `v${index}`, prev: index - 1 });
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(3), events: [ev(1), ev(2), ev(3)] });
  await cp.close();
  // Older format, with event 2 damaged (one bit).
  const db = await lmdbDbs(dir);
  const stored = [...db.events.getRange({})].map(({ key, value }) => ({ key: Buffer.from(key as Buffer), json: JSON.parse((value as Buffer).toString('utf8', 9)) }));
  await db.root.batch(() => {
    for (const { key, json } of stored) {
      const v = sealed(key, `{"at":${json.at},"event":${changeEventJson(json.event)}}`);
      if (json.event.index === 2) v[v.length - 3] ^= 1;
      void db.events.put(key, v);
      void db.hist.put(Buffer.concat([Buffer.from('a'), Buffer.from([0]), key]), Buffer.from([1]));
    }
    for (const k of [...db.heads.getKeys({})]) void db.heads.remove(Buffer.from(k as Buffer));
    void db.meta.remove(Buffer.from('historyChain'));
    void db.meta.remove(Buffer.from('historyBytes'));
  });
  await db.root.close();
  cp = await LmdbCheckpoint.open(dir);
  t.teardown(() => cp.close());
  t.equal(cp.keyEventsBefore('a', 10)[Symbol.iterator]().next().value?.index, 3, 'the newest reads back');
  t.throws(() => [...cp.keyEventsBefore('a', 3)], /event 2\/0: fails its checksum/, 'the damaged one is refused, not stepped over');
  t.throws(() => [...cp.events(0, 'a')], CorruptRecordError);
});

t.test('durable history: a byte bound keeps the stored events within it, oldest whole entries first; the count survives a reopen', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  const MAX = 40_000;
  let cp = await LmdbCheckpoint.open(dir, { historyBytesMax: MAX });
  const all: ChangeEvent[] = [];
  let index = 0;
  const check = async (what: string): Promise<void> => {
    const kept = [...cp.events(0)];
    t.ok(cp.historyBytes() <= MAX, `${what}: ${cp.historyBytes()} bytes kept, within ${MAX}`);
    t.same(kept, all.filter((e) => e.index > cp.historyFloor()), `${what}: the newest events, every one above the floor`);
    t.ok(kept.length > 0 && kept[0]!.index !== all[all.indexOf(kept[0]!) - 1]?.index, `${what}: whole entries`);
  };
  for (let round = 0; round < 12; round++) {
    const events: ChangeEvent[] = [];
    // Entries of 1 to 3 events of 1 KiB values.
    for (let n = 0; n < 5; n++) {
      index++;
      for (let m = 0; m <= (index % 3); m++) events.push({ index, ts: index, op: 'put', key: `k${m}`, value: 'x'.repeat(1024), prev: index - 1 });
    }
    await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(index), events });
    all.push(...events);
    await check(`round ${round}`);
  }
  t.ok(cp.historyFloor() > 0, 'some went');
  // One delta alone larger than the bound: its oldest go too.
  const big: ChangeEvent[] = [];
  for (let n = 0; n < 60; n++) {
    index++;
    big.push({ index, ts: index, op: 'put', key: 'big', value: 'y'.repeat(1024), prev: index - 1 });
  }
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(index), events: big });
  all.push(...big);
  await check('a delta larger than the bound');
  t.ok(cp.historyCount() < 60 && cp.historyCount() > 30, `${cp.historyCount()} of its 60 events kept`);
  const bytes = cp.historyBytes();
  await cp.close();
  t.same((await verifyCheckpoint(dir)).problems, [], 'verify: the byte count is what the events take');
  cp = await LmdbCheckpoint.open(dir, { historyBytesMax: MAX });
  t.equal(cp.historyBytes(), bytes, 'the count is kept across a reopen');
  await cp.close();
  // A checkpoint that does not say (written before the bound): counted at open.
  const db = await lmdbDbs(dir);
  await db.meta.remove(Buffer.from('historyBytes'));
  await db.root.close();
  cp = await LmdbCheckpoint.open(dir, { historyBytesMax: MAX });
  t.equal(cp.historyBytes(), bytes, 'counted where the checkpoint does not say');
  await cp.close();
});

t.test('durable history: a key changed more often than a walk along its chain should take is read from the log of events (same answers)', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  const cp = await LmdbCheckpoint.open(dir);
  t.teardown(() => cp.close());
  // 12,000 changes of 'hot' (more than the 10,000 steps a walk takes), with a few of 'cold' among them.
  const events: ChangeEvent[] = [];
  for (let i = 1; i <= 12_100; i++) events.push({ index: i, ts: i, op: i % 7 === 0 ? 'del' : 'put', key: i % 121 === 0 ? 'cold' : 'hot', ...(i % 7 === 0 ? {} : { value: String(i) }), prev: i - 1 } as ChangeEvent);
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(12_100), events });
  const of = (key: string) => events.filter((e) => e.key === key);
  for (const from of [1, 50, 2_000, 12_000]) {
    t.same([...cp.events(from, 'hot')].map((e) => e.index), of('hot').filter((e) => e.index >= from).map((e) => e.index), `events(${from}, hot)`);
    t.same([...cp.keyEventsBefore('hot', from)].map((e) => e.index), of('hot').filter((e) => e.index < from).reverse().map((e) => e.index), `keyEventsBefore(hot, ${from})`);
    t.same([...cp.events(from, 'cold')].map((e) => e.index), of('cold').filter((e) => e.index >= from).map((e) => e.index), `events(${from}, cold)`);
  }
  const first = cp.keyEventsBefore('hot', 100)[Symbol.iterator]().next().value;
  t.same(first, events[98], 'the newest change below 100, read back whole');
});

t.test('durable history: a damaged head or a broken chain is refused when read and named by verify; a write replaces a damaged head', async (t) => {
  const dir = path.join(tmpDir(t), 'checkpoint');
  let cp = await LmdbCheckpoint.open(dir);
  const ev = (index: number, key: string): ChangeEvent => ({ index, ts: index, op: 'put', key, value: String(index), prev: index - 1 });
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(3), events: [ev(1, 'a'), ev(2, 'b'), ev(3, 'a')] });
  await cp.close();

  // Event 3 of 'a' sealed as sound but naming a later event as the one before it: a walk could loop.
  let db = await lmdbDbs(dir);
  const k3 = [...db.events.getKeys({})].map((k) => Buffer.from(k as Buffer))[2]!;
  const v3 = JSON.parse((db.events.getBinary(k3) as Buffer).toString('utf8', 9));
  await db.events.put(k3, sealed(k3, `{"keyPrev":[9,0],"at":${v3.at},"event":${changeEventJson(v3.event)}}`));
  await db.root.close();
  cp = await LmdbCheckpoint.open(dir);
  t.throws(() => [...cp.keyEventsBefore('a', 10)], /names a later event/);
  t.throws(() => [...cp.events(0, 'a')], CorruptRecordError);
  t.same([...cp.keyEventsBefore('b', 10)].map((e) => e.index), [2], 'other keys are unaffected');
  await cp.close();
  t.match((await verifyCheckpoint(dir)).problems.join('\n'), /event 3\/0 of key "a" names 9\/0 as the one before it, not 1\/0/);

  // Put it back, then flip a bit in 'a''s head.
  db = await lmdbDbs(dir);
  await db.events.put(k3, sealed(k3, `{"keyPrev":[1,0],"at":${v3.at},"event":${changeEventJson(v3.event)}}`));
  const head = Buffer.from(db.heads.getBinary(Buffer.from('a')) as Buffer);
  head[head.length - 2] ^= 1;
  await db.heads.put(Buffer.from('a'), head);
  await db.root.close();
  t.match((await verifyCheckpoint(dir)).problems.join('\n'), /head of key "a": fails its checksum/);
  cp = await LmdbCheckpoint.open(dir);
  t.throws(() => [...cp.keyEventsBefore('a', 10)], CorruptRecordError, 'a read refuses a damaged head');
  // A write that changes the key replaces its head (the chain starts again from the new event).
  await cp.write({ kv: [], ridsSet: [], ridsDel: [], meta: meta(4), events: [ev(4, 'a')] });
  t.same([...cp.keyEventsBefore('a', 10)].map((e) => e.index), [4], 'the new head; the events before it are out of the chain');
  await cp.close();
  const report = await verifyCheckpoint(dir);
  t.match(report.problems.join('\n'), /event 4\/0 of key "a" names null as the one before it, not 3\/0/, 'verify names the chain the damage cut');
});
