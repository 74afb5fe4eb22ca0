// The pure core: validation, the state machine, and the single-voter protocol
// path (election, proposals, commit, clock and token rules), driven by hand.

import t from 'tap';
import { parseByteSize } from '../src/core/duration.js';
import { CHECKPOINT_FORMAT } from '../src/core/records.js';
import { ErrorCode, CkvError } from '../src/core/errors.js';
import { KEY_BYTES_MAX, VALUE_BYTES_MAX, BATCH_OPS_MAX, PREFIX_DELETE_KEYS_MAX } from '../src/core/limits.js';
import { Node, type Ready } from '../src/core/node.js';
import { KvState, timedOf } from '../src/core/state.js';
import { TtlClock } from '../src/core/ttl-clock.js';
import { parseRequest, keyProblem, validateRequest } from '../src/core/validate.js';
import type { Entry } from '../src/core/wire.js';
import type { CheckpointMeta, CheckpointReader, Rec, RidRecord, TimedRec } from '../src/core/records.js';

/** A tiny CheckpointReader over a sorted array, enough for the state machine tests. */
class ArrayCheckpoint implements CheckpointReader {
  constructor(
    private kv: Array<[string, Rec]> = [],
    private m: CheckpointMeta = { format: CHECKPOINT_FORMAT, index: 0, epoch: 0, ts: 0, voters: [], eventPrev: 0 },
  ) {}
  meta() {
    return this.m;
  }
  get(key: string) {
    return this.kv.find(([k]) => k === key)?.[1];
  }
  range(prefix: string, start: string | undefined, limit: number) {
    return this.kv.filter(([k]) => k.startsWith(prefix) && (start === undefined || k > start)).slice(0, limit);
  }
  rids(): Array<[string, RidRecord]> {
    return [];
  }
  counts() {
    return { keys: this.kv.length, rids: 0 };
  }
  ttlKeys(): Array<[string, TimedRec]> {
    return this.kv.filter(([, r]) => r.ttl !== undefined || r.lease !== undefined).map(([k, r]) => [k, timedOf(r)]);
  }
}

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof CkvError ? e.code : `not a CkvError: ${String(e)}`;
  }
  return undefined;
}

t.test('sizes as people write them', async (t) => {
  t.equal(parseByteSize('4096'), 4096);
  t.equal(parseByteSize('512K'), 512 * 1024);
  t.equal(parseByteSize('64m'), 64 * 1024 ** 2);
  t.equal(parseByteSize('4G'), 4 * 1024 ** 3);
  for (const bad of ['', '0', '-1', '1.5G', '4GB', 'G', '1P', '99999999999T']) t.equal(parseByteSize(bad), null, `${JSON.stringify(bad)} is not a size`);
});

t.test('validation: every bad input gets its code', async (t) => {
  t.equal(code(() => parseRequest('{nope')), ErrorCode.BAD_REQUEST, 'malformed JSON');
  t.equal(code(() => parseRequest('[]')), ErrorCode.BAD_REQUEST, 'not an object');
  t.equal(code(() => parseRequest('{"op":"frobnicate"}')), ErrorCode.BAD_REQUEST, 'unknown op');
  t.equal(code(() => parseRequest('{"op":"get","key":5}')), ErrorCode.BAD_REQUEST, 'wrong type');
  t.equal(code(() => parseRequest('{"op":"get","key":"a b"}')), ErrorCode.BAD_REQUEST, 'bad charset');
  t.equal(code(() => parseRequest('{"op":"get","key":".a"}')), ErrorCode.BAD_REQUEST, 'leading dot');
  t.equal(code(() => parseRequest('{"op":"get","key":"a..b"}')), ErrorCode.BAD_REQUEST, 'double dot');
  t.equal(code(() => parseRequest(JSON.stringify({ op: 'get', key: 'k'.repeat(KEY_BYTES_MAX + 1) }))), ErrorCode.TOO_LARGE, 'long key');
  t.equal(code(() => parseRequest(JSON.stringify({ op: 'put', key: 'k', value: 'v'.repeat(VALUE_BYTES_MAX + 1) }))), ErrorCode.TOO_LARGE, 'big value');
  t.equal(code(() => parseRequest(JSON.stringify({ op: 'put', key: 'k', value: 7 }))), ErrorCode.BAD_REQUEST, 'value not a string');
  t.equal(code(() => parseRequest(JSON.stringify({ op: 'put', key: 'k', value: 'v', after: -1 }))), ErrorCode.BAD_REQUEST, 'negative token');
  t.equal(code(() => parseRequest(JSON.stringify({ op: 'put', key: 'k', value: 'v', extra: 1 }))), ErrorCode.BAD_REQUEST, 'unknown field');
  t.equal(code(() => parseRequest(JSON.stringify({ op: 'cas', key: 'k', value: 'v' }))), ErrorCode.BAD_REQUEST, 'cas without expect');
  const ops = Array.from({ length: BATCH_OPS_MAX + 1 }, (_, i) => ({ op: 'put', key: `k${i}`, value: 'v' }));
  t.equal(code(() => parseRequest(JSON.stringify({ op: 'batch', ops }))), ErrorCode.TOO_LARGE, 'batch too long');
  t.equal(code(() => parseRequest(JSON.stringify({ op: 'batch', ops: [{ op: 'get', key: 'a' }] }))), ErrorCode.BAD_REQUEST, 'read inside batch');
  t.equal(code(() => parseRequest(JSON.stringify({ op: 'list', prefix: 'a', limit: 0 }))), ErrorCode.BAD_REQUEST, 'zero limit');
  t.same(parseRequest('{"op":"put","key":"users.alice","value":"x","rid":"r1","after":3}'), { op: 'put', key: 'users.alice', value: 'x', rid: 'r1', after: 3 });
  t.equal(keyProblem('a/b=c-d_e.f'), null);
});

t.test('validation: a payload that is not UTF-8, or a string with a lone surrogate, is a BAD_REQUEST', async (t) => {
  const bytes = (...parts: (string | number[])[]) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p))));
  const refused = (f: () => unknown, re: RegExp, what: string) => {
    let err: unknown;
    try {
      f();
    } catch (e) {
      err = e;
    }
    t.type(err, CkvError, what);
    t.equal((err as CkvError).code, ErrorCode.BAD_REQUEST, what);
    t.match((err as CkvError).message, re, what);
  };
  // Bytes the default decoder would turn into U+FFFD without a word.
  const notUtf8: [number[], string][] = [
    [[0xff], 'a byte never in UTF-8'],
    [[0xc3], 'a truncated sequence'],
    [[0xc0, 0xaf], 'an overlong encoding'],
    [[0xed, 0xa0, 0x80], 'an encoded surrogate (CESU-8)'],
    [[0xf4, 0x90, 0x80, 0x80], 'beyond U+10FFFF'],
  ];
  for (const [bad, what] of notUtf8) {
    refused(() => parseRequest(bytes('{"op":"put","key":"k","value":"', bad, '"}')), /not valid UTF-8/, `value: ${what}`);
  }
  refused(() => parseRequest(bytes('{"op":"get","key":"k', [0xff], '"}')), /not valid UTF-8/, 'in a key');
  refused(() => parseRequest(bytes('{"op":"get","key":"k","x', [0x80], '":1}')), /not valid UTF-8/, 'in a field name');
  // Lone surrogates: from \u escapes in the JSON, or from a caller's string.
  for (const [json, what] of [
    ['{"op":"put","key":"k","value":"\\ud800"}', 'a lone high surrogate'],
    ['{"op":"put","key":"k","value":"x\\udc00y"}', 'a lone low surrogate'],
    ['{"op":"put","key":"k","value":"\\udc00\\ud800"}', 'a pair in the wrong order'],
    ['{"op":"cas","key":"k","expect":"\\ud83d","value":"v"}', 'in expect'],
    ['{"op":"cas","key":"k","expect":null,"value":"\\ud83d"}', 'in a cas value'],
    ['{"op":"batch","ops":[{"op":"put","key":"a","value":"ok"},{"op":"put","key":"b","value":"\\udfff"}]}', 'in a batch op'],
  ] as const) {
    refused(() => parseRequest(json), /lone surrogate/, `${what} (text)`);
    refused(() => parseRequest(Buffer.from(json)), /lone surrogate/, `${what} (bytes)`);
  }
  refused(() => validateRequest({ op: 'put', key: 'k', value: 'a\ud800' }), /lone surrogate/, 'a caller string');
  refused(() => validateRequest({ op: 'get', key: 'k\ud800' }), /letters, digits/, 'in a key (not in the key alphabet)');
  refused(() => validateRequest({ op: 'list', prefix: '\udc00' }), /letters, digits/, 'in a prefix');
  // What is valid stays valid, bytes for bytes.
  const text = 'grüße \u{1f600} \u0000 \ufffd \u{10ffff}';
  t.equal((parseRequest(Buffer.from(JSON.stringify({ op: 'put', key: 'k', value: text }))) as { value: string }).value, text, 'any Unicode text, U+FFFD and NUL included');
  t.equal((parseRequest(Buffer.from('{"op":"put","key":"k","value":"\\ud83d\\ude00"}')) as { value: string }).value, '\u{1f600}', 'a surrogate pair from escapes');
  t.equal(code(() => parseRequest(bytes([0xef, 0xbb, 0xbf], '{"op":"get","key":"k"}'))), ErrorCode.BAD_REQUEST, 'a BOM is not JSON, as before');
});

t.test('state machine: put, del, cas, batch atomicity, rids, overlay over checkpoint', async (t) => {
  const base = new ArrayCheckpoint(
    [
      ['a', { value: 'A', rev: 1, ts: 1 }],
      ['b', { value: 'B', rev: 2, ts: 2 }],
      ['c', { value: 'C', rev: 3, ts: 3 }],
    ],
    { format: CHECKPOINT_FORMAT, index: 3, epoch: 1, ts: 3, voters: [1], eventPrev: 3 },
  );
  const s = new KvState(base, 2);
  const w = (index: number, ops: Entry extends infer E ? (E extends { kind: 'write' } ? E['ops'] : never) : never, rid?: string): Entry => ({ index, epoch: 1, ts: index * 10, kind: 'write', ops, ...(rid ? { rid } : {}) });
  let r = s.apply(w(4, [{ op: 'put', key: 'b', value: 'B2' }], 'r4'));
  t.same(r.result, { ok: true });
  t.same(r.events, [{ index: 4, ts: 40, op: 'put', key: 'b', value: 'B2', prev: 3 }]);
  r = s.apply(w(5, [{ op: 'del', key: 'a' }]));
  t.equal(s.get('a'), undefined, 'tombstone hides the checkpoint value');
  t.same(s.range('', undefined, 10).map((x) => x.key), ['b', 'c']);
  r = s.apply(w(6, [{ op: 'put', key: 'd', value: 'D' }, { op: 'cas', key: 'c', expect: 'nope', value: 'C2' }], 'r6'));
  t.same(r.result, { ok: false, code: 'CAS_MISMATCH', failed: 1, current: 'C' });
  t.equal(s.get('d'), undefined, 'a failed batch changes nothing');
  t.same(r.events, []);
  r = s.apply(w(7, [{ op: 'cas', key: 'x', expect: null, value: 'X' }, { op: 'cas', key: 'c', expect: 'C', value: null }], 'r7'));
  t.same(r.result, { ok: true });
  t.equal(s.get('x')?.value, 'X');
  t.equal(s.get('c'), undefined);
  r = s.apply(w(8, [{ op: 'put', key: 'x', value: 'again' }], 'r7'));
  t.ok(r.duplicate, 'a retried rid is not applied twice');
  t.equal(s.get('x')?.value, 'X');
  t.equal(s.ridResult('r4'), undefined, 'oldest rid evicted beyond the table size');
  t.throws(() => s.apply(w(10, [])), /out of order/);
  const page1 = s.range('', undefined, 1);
  t.same(page1.map((x) => x.key), ['b']);
  t.same(s.range('', 'b', 5).map((x) => x.key), ['x']);
  const delta = s.takeDelta();
  t.equal(delta.meta.index, 8);
  t.same(delta.kv.map(([k]) => k), ['a', 'b', 'c', 'x']);
  t.ok(s.overlaySize > 0);
  s.release(delta);
  t.equal(s.overlaySize, 0, 'the overlay empties once a checkpoint lands');
});

t.test('request ids: forgotten oldest first, in log order, those loaded from the checkpoint too, across many evictions', async (t) => {
  const base = new ArrayCheckpoint([], { format: CHECKPOINT_FORMAT, index: 2, epoch: 1, ts: 2, voters: [1], eventPrev: 0 });
  base.rids = () => [
    ['old1', { index: 1, ts: 1, result: { ok: true } }],
    ['old2', { index: 2, ts: 2, result: { ok: true } }],
  ];
  const s = new KvState(base, 3);
  const put = (index: number, rid: string): Entry => ({ index, epoch: 1, ts: index, kind: 'write', rid, ops: [{ op: 'put', key: 'k', value: String(index) }] });
  s.apply(put(3, 'w3'));
  t.ok(s.ridResult('old1') && s.ridResult('old2') && s.ridResult('w3'), 'three fit');
  s.apply(put(4, 'w4'));
  t.equal(s.ridResult('old1'), undefined, 'the oldest goes first');
  t.ok(s.ridResult('old2'));
  let wrong = 0;
  // Well past the queue's compaction (every few thousand evictions).
  for (let i = 5; i < 12_000; i++) {
    s.apply(put(i, `w${i}`));
    if (!s.ridResult(`w${i}`) || !s.ridResult(`w${i - 1}`) || !s.ridResult(`w${i - 2}`) || s.ridResult(`w${i - 3}`) !== undefined) wrong++;
  }
  t.equal(wrong, 0, 'after every write exactly the three newest ids are remembered');
  t.ok(s.apply(put(12_000, 'w11999')).duplicate, 'a retry of a remembered id is still found');
  const delta = s.takeDelta();
  t.same(delta.ridsDel.sort(), ['old1', 'old2'], 'of the forgotten, only those in the checkpoint are deleted from it');
  t.same(delta.ridsSet.map(([r]) => r).sort(), ['w11997', 'w11998', 'w11999']);
});

t.test('state machine: cas by revision, create, prefix delete (alone and inside a batch)', async (t) => {
  const base = new ArrayCheckpoint(
    [
      ['job.1', { value: 'a', rev: 1, ts: 1 }],
      ['job.2', { value: 'b', rev: 2, ts: 2 }],
      ['jobs', { value: 'not under "job."', rev: 3, ts: 3 }],
      ['other', { value: 'o', rev: 3, ts: 3 }],
    ],
    { format: CHECKPOINT_FORMAT, index: 3, epoch: 1, ts: 3, voters: [1], eventPrev: 3 },
  );
  const s = new KvState(base);
  const w = (index: number, ops: Extract<Entry, { kind: 'write' }>['ops']): Entry => ({ index, epoch: 1, ts: index * 10, kind: 'write', ops });
  // By revision: the key's rev must match; 0 means absent.
  let r = s.apply(w(4, [{ op: 'cas', key: 'job.1', expectRev: 2, value: 'x' }]));
  t.same(r.result, { ok: false, code: 'CAS_MISMATCH', failed: 0, current: 'a' }, 'a stale revision fails, even with the value unchanged');
  r = s.apply(w(5, [{ op: 'cas', key: 'job.1', expectRev: 1, value: 'a2' }]));
  t.same(r.result, { ok: true });
  t.same(s.get('job.1'), { value: 'a2', rev: 5, ts: 50 });
  // The ABA case a value compare cannot see: a → b → a leaves the value but not the revision.
  s.apply(w(6, [{ op: 'put', key: 'other', value: 'o2' }]));
  s.apply(w(7, [{ op: 'put', key: 'other', value: 'o' }]));
  r = s.apply(w(8, [{ op: 'cas', key: 'other', expectRev: 3, value: 'late' }]));
  t.equal(r.result?.ok, false, 'ABA: the old revision no longer matches');
  r = s.apply(w(9, [{ op: 'cas', key: 'other', expect: 'o', value: 'by value' }]));
  t.equal(r.result?.ok, true, 'while a compare by value still passes');
  // create = cas at revision 0.
  t.same(validateRequest({ op: 'create', key: 'new', value: 'v' }), { op: 'cas', key: 'new', expectRev: 0, value: 'v' });
  r = s.apply(w(10, [{ op: 'cas', key: 'job.2', expectRev: 0, value: 'dup' }]));
  t.same(r.result, { ok: false, code: 'CAS_MISMATCH', failed: 0, current: 'b' }, 'create of a present key fails');
  // A prefix delete, inside a batch: sees what earlier ops did, and later ops see its effect.
  r = s.apply(
    w(11, [
      { op: 'put', key: 'job.3', value: 'c' },
      { op: 'delprefix', prefix: 'job.' },
      { op: 'cas', key: 'job.1', expectRev: 0, value: 'fresh' },
    ]),
  );
  t.same(r.result, { ok: true });
  t.same(s.range('', undefined, 10).map((x) => `${x.key}=${x.value}`), ['job.1=fresh', 'jobs=not under "job."', 'other=by value']);
  t.same(
    r.events.map((e) => `${e.op} ${e.key}`),
    ['del job.3', 'put job.1', 'del job.2'],
    'one event per key changed (job.3 put then deleted is one del; job.1 deleted then created is one put), in the order keys were first changed',
  );
  r = s.apply(w(12, [{ op: 'delprefix', prefix: 'none.' }]));
  t.same([r.result, r.events], [{ ok: true }, []], 'a prefix with no keys changes nothing');
  r = s.apply(w(13, [{ op: 'delprefix', prefix: '' }, { op: 'cas', key: 'x', expect: 'no', value: 'y' }]));
  t.equal(r.result?.ok, false);
  t.equal(s.range('', undefined, 10).length, 3, 'a failed batch with a prefix delete deletes nothing');
  r = s.apply(w(14, [{ op: 'delprefix', prefix: '' }]));
  t.equal(s.range('', undefined, 10).length, 0, 'the empty prefix deletes every key');
  t.equal(r.events.length, 3);
  // Validation of the new ops.
  t.equal(code(() => validateRequest({ op: 'cas', key: 'k', expect: 'a', expectRev: 1, value: 'v' })), ErrorCode.BAD_REQUEST, 'both expect and expectRev');
  t.equal(code(() => validateRequest({ op: 'cas', key: 'k', expectRev: -1, value: 'v' })), ErrorCode.BAD_REQUEST, 'negative revision');
  t.equal(code(() => validateRequest({ op: 'cas', key: 'k', expectRev: '3', value: 'v' })), ErrorCode.BAD_REQUEST, 'revision as a string');
  t.equal(code(() => validateRequest({ op: 'delprefix' })), ErrorCode.BAD_REQUEST, 'prefix delete without a prefix');
  t.equal(code(() => validateRequest({ op: 'delprefix', prefix: 'a..b' })), ErrorCode.BAD_REQUEST, 'a bad prefix');
  t.equal(code(() => validateRequest({ op: 'create', key: 'k' })), ErrorCode.BAD_REQUEST, 'create without a value');
  t.equal(code(() => validateRequest({ op: 'create', key: 'k', value: null })), ErrorCode.BAD_REQUEST, 'create with a null value');
  t.same(validateRequest({ op: 'batch', ops: [{ op: 'create', key: 'a', value: '1' }, { op: 'delprefix', prefix: 'b.' }] }), {
    op: 'batch',
    ops: [
      { op: 'cas', key: 'a', expectRev: 0, value: '1' },
      { op: 'delprefix', prefix: 'b.' },
    ],
  });
});

t.test('time to live: records keep it, an expiry deletes only the record it was armed for, clients cannot expire', async (t) => {
  const s = new KvState(new ArrayCheckpoint());
  const w = (index: number, ops: Extract<Entry, { kind: 'write' }>['ops']): Entry => ({ index, epoch: 1, ts: index, kind: 'write', ops });
  s.apply(w(1, [{ op: 'put', key: 'a', value: '1', ttl: 1000 }]));
  s.apply(w(2, [{ op: 'put', key: 'b', value: '2', ttl: 500 }, { op: 'put', key: 'c', value: '3' }]));
  t.same(s.get('a'), { value: '1', rev: 1, ts: 1, ttl: 1000 });
  t.same(s.ttlKeys().sort(), [['a', { rev: 1, ttl: 1000 }], ['b', { rev: 2, ttl: 500 }]]);
  // A refresh (a write since) wins over an expiry armed for the old record.
  s.apply(w(3, [{ op: 'cas', key: 'a', expectRev: 1, value: '1', ttl: 1000 }]));
  let r = s.apply(w(4, [{ op: 'expire', key: 'a', rev: 1 }, { op: 'expire', key: 'b', rev: 2 }, { op: 'expire', key: 'c', rev: 2 }]));
  t.same(r.events.map((e) => `${e.op} ${e.key}`), ['del b'], 'a (refreshed) and c (no ttl) stay; b expires');
  t.equal(s.get('a')?.rev, 3);
  t.equal(s.get('c')?.value, '3');
  // A put without a ttl ends the countdown.
  s.apply(w(5, [{ op: 'put', key: 'a', value: 'forever' }]));
  t.same(s.ttlKeys(), []);
  r = s.apply(w(6, [{ op: 'expire', key: 'a', rev: 3 }]));
  t.same(r.events, [], 'an expiry of a record since replaced changes nothing');
  // Validation: clients cannot send expire; a ttl is 50 ms..7 days, and never on a delete.
  t.equal(code(() => validateRequest({ op: 'expire', key: 'a', rev: 1 })), ErrorCode.BAD_REQUEST, 'expire from a client');
  t.equal(code(() => validateRequest({ op: 'batch', ops: [{ op: 'expire', key: 'a', rev: 1 }] })), ErrorCode.BAD_REQUEST, 'expire inside a batch');
  t.equal(code(() => validateRequest({ op: 'put', key: 'a', value: 'v', ttl: 10 })), ErrorCode.BAD_REQUEST, 'ttl too short');
  t.equal(code(() => validateRequest({ op: 'put', key: 'a', value: 'v', ttl: 8 * 24 * 3600 * 1000 })), ErrorCode.BAD_REQUEST, 'ttl too long');
  t.equal(code(() => validateRequest({ op: 'put', key: 'a', value: 'v', ttl: 1.5 })), ErrorCode.BAD_REQUEST, 'ttl not an integer');
  t.equal(code(() => validateRequest({ op: 'cas', key: 'a', expect: 'v', value: null, ttl: 1000 })), ErrorCode.BAD_REQUEST, 'a deleting cas with a ttl');
  t.same(validateRequest({ op: 'create', key: 'a', value: 'v', ttl: 1000 }), { op: 'cas', key: 'a', expectRev: 0, value: 'v', ttl: 1000 });
});

t.test('TtlClock: due after the ttl in whole ticks plus one, re-armed and disarmed keys skipped', async (t) => {
  const c = new TtlClock();
  c.arm('a', 1, 100); // 100 ms = 2 ticks, +1: due at tick 3
  c.arm('b', 2, 120); // 3 ticks, +1: due at tick 4
  c.arm('c', 3, 50);
  c.disarm('c');
  t.same(c.tick(), []);
  t.same(c.tick(), []);
  t.same(c.tick(), [{ key: 'a', rev: 1 }]);
  c.arm('b', 5, 50); // re-armed (a refresh) at tick 3: due at tick 5, not 4
  t.same(c.tick(), [], 'the old countdown of b is gone');
  t.same(c.tick(), [{ key: 'b', rev: 5 }]);
  t.equal(c.size, 0);
  c.arm('d', 6, 50);
  c.clear();
  t.same([c.tick(), c.tick(), c.tick()], [[], [], []], 'cleared');
});

/** Drive a single-voter node like the server does, synchronously. */
function drive(n: Node): Ready[] {
  const out: Ready[] = [];
  for (let i = 0; i < 10 && (n.hasOutput() || i === 0); i++) {
    const r = n.ready();
    n.advance(r);
    out.push(r);
  }
  return out;
}

t.test('single voter: elects itself, commits after persist, timestamps increase', async (t) => {
  const n = new Node({ id: 1, voters: [1], promised: 0, entries: [], base: { index: 0, epoch: 0, ts: 0 }, commit: 0, commitTs: 0 });
  n.tick();
  t.equal(n.role, 'coordinator');
  const r = n.ready();
  t.same(r.state, { promised: 1, catchUp: false }, 'the promise is persisted');
  t.same(r.append.map((e) => e.kind), ['noop']);
  t.equal(n.commit, 0, 'nothing commits before it is persisted');
  n.advance(r);
  t.equal(n.commit, 1);
  const a = n.propose([{ op: 'put', key: 'k', value: 'v' }], 'x');
  const b = n.propose([{ op: 'put', key: 'k', value: 'w' }]);
  if (!a.ok || !b.ok) throw new Error('proposals refused at a single-voter coordinator');
  t.ok(b.ts > a.ts && a.ts > 1, 'entry ts strictly increase');
  const readies = drive(n);
  t.same(
    readies.flatMap((x) => x.committed.map((e) => e.index)),
    [1, 2, 3],
    'the Readies hand out each committed entry once, in order',
  );
  t.equal(n.commit, 3);
  t.equal(n.commitTs, b.ts);
  // A write whose entry would pass ENTRY_BYTES_MAX (each op within its own limits) is refused, and changes nothing.
  const big = 'v'.repeat(VALUE_BYTES_MAX);
  const ops = [0, 1, 2].map((i) => ({ op: 'put' as const, key: `big${i}`, value: big }));
  const tooLarge = n.propose(ops, 'y');
  t.same(tooLarge.ok ? null : tooLarge.code, 'TOO_LARGE', 'three 256 KiB values in one entry: TOO_LARGE');
  t.notOk(n.hasOutput(), 'nothing appended');
  const c = n.propose(ops.slice(0, 2), 'z');
  t.ok(c.ok && c.index === 4 && c.ts === b.ts + 1, 'the next write takes the next index and timestamp: the refused one used neither');
});

t.test('log retention below a checkpoint: bounded by entries and by encoded bytes, whichever keeps fewer', async (t) => {
  const run = (retainEntries: number, retainBytes: number | undefined, value: string): number => {
    const n = new Node({ id: 1, voters: [1], promised: 0, entries: [], base: { index: 0, epoch: 0, ts: 0 }, commit: 0, commitTs: 0, retainEntries, ...(retainBytes !== undefined ? { retainBytes } : {}) });
    n.tick();
    drive(n);
    for (let i = 0; i < 20; i++) n.propose([{ op: 'put', key: `k${i}`, value }]);
    drive(n);
    t.equal(n.commit, 21);
    return n.checkpointed(21);
  };
  t.equal(run(5, undefined, 'v'), 17, 'by entries: 5 kept at or below the checkpoint');
  t.equal(run(5, 1_000_000, 'v'), 17, 'a byte bound that is not reached changes nothing');
  // Each entry is a little over 1,000 bytes encoded: 3,500 bytes keep 3 of them.
  const first = run(5, 3500, 'x'.repeat(1000));
  t.equal(first, 19, 'by bytes: only what fits in 3,500 bytes is kept');
  t.equal(run(1000, 0, 'v'), 22, 'no bytes: nothing below the next entry is kept');
});

t.test('token rules: ahead at once at the coordinator, never moving the clock', async (t) => {
  const n = new Node({ id: 1, voters: [1], promised: 0, entries: [], base: { index: 0, epoch: 0, ts: 0 }, commit: 0, commitTs: 0 });
  n.tick();
  drive(n);
  n.propose([{ op: 'put', key: 'k', value: 'v' }]);
  drive(n);
  const clock = n.clock;
  n.checkToken(7, n.commitTs + 1000);
  n.checkToken(8, n.commitTs);
  const r = n.ready();
  t.same(r.tokens, [
    { id: 7, ahead: true },
    { id: 8, ahead: false },
  ]);
  t.equal(n.clock, clock, 'a token from the future does not move the clock');
});

t.test('restart from a log: promise survives, a new epoch is higher', async (t) => {
  const entries: Entry[] = [
    { index: 1, epoch: 1, ts: 1, kind: 'noop' },
    { index: 2, epoch: 1, ts: 2, kind: 'write', ops: [{ op: 'put', key: 'a', value: '1' }] },
  ];
  const n = new Node({ id: 1, voters: [1], promised: 1, entries, base: { index: 0, epoch: 0, ts: 0 }, commit: 0, commitTs: 0 });
  n.tick();
  drive(n);
  t.equal(n.epoch, 2);
  t.equal(n.commit, 3, 'the new epoch no-op commits the old entries');
  t.ok(n.entry(3)!.ts > 2);
});

t.test('checkpoints: replay onto a checkpoint equals live apply; the same log gives a byte-identical checkpoint', async (t) => {
  const { LmdbCheckpoint } = await import('../src/storage/checkpoint.js');
  const { mkdtempSync, readFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'ckv-ckpt-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // A seeded log of puts, deletes, cas and batches over a small key space.
  let seed = 42;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
  const log: Entry[] = [];
  for (let i = 1; i <= 600; i++) {
    const key = () => `k.${rnd(40)}`;
    const pick = rnd(10);
    const ops: any[] =
      pick < 5 ? [{ op: 'put', key: key(), value: `v${i}` }]
      : pick < 7 ? [{ op: 'del', key: key() }]
      : pick < 9 ? [{ op: 'cas', key: key(), expect: rnd(2) ? null : `v${i - 1}`, value: `c${i}` }]
      : [{ op: 'put', key: key(), value: `b${i}` }, { op: 'del', key: key() }];
    log.push({ index: i, epoch: 1, ts: i, kind: 'write', rid: `r${i % 150}`, ops });
  }
  /** Apply the log with a checkpoint every `every` entries; reopen ("restart") at `restartAt`. */
  async function build(name: string, every: number, restartAt: number) {
    const path = join(dir, name);
    let ck = await LmdbCheckpoint.open(path);
    let s = new KvState(ck, 100);
    let maxOverlay = 0;
    for (const e of log) {
      if (e.index === restartAt + 1) {
        await ck.write(s.takeDelta());
        await ck.close();
        ck = await LmdbCheckpoint.open(path);
        s = new KvState(ck, 100);
        t.equal(s.applied, restartAt, `${name}: restart resumes at the checkpoint`);
      }
      s.apply(e);
      maxOverlay = Math.max(maxOverlay, s.overlaySize);
      if (e.index % every === 0) {
        const d = s.takeDelta();
        await ck.write(d);
        s.release(d);
        t.equal(s.overlaySize, 0, `${name}: overlay empty after the checkpoint at ${e.index}`);
      }
    }
    const d = s.takeDelta();
    await ck.write(d);
    s.release(d);
    const live = [...Array(40).keys()].map((k) => s.get(`k.${k}`)?.value ?? null);
    const digest = ck.digest();
    const dump = JSON.stringify([...ck.entries()]);
    await ck.close();
    return { live, digest, dump, path, maxOverlay };
  }
  const a = await build('a', 50, 0);
  const b = await build('b', 1000, 333);
  const c = await build('c', 50, 0);
  t.same(b.live, a.live, 'replaying the log onto a checkpoint gives the live state');
  t.equal(b.digest, a.digest, 'equal state, equal digest, whatever the checkpoint schedule');
  t.equal(b.dump, a.dump, 'and an identical dump');
  t.ok(a.maxOverlay <= 40, 'the overlay is bounded by the writes since the last checkpoint');
  t.ok(readFileSync(join(a.path, 'data.mdb')).equals(readFileSync(join(c.path, 'data.mdb'))), 'the same log and schedule give a byte-identical LMDB file');
});

t.test('peer messages: malformed ones are refused before they reach the core', async (t) => {
  const { peerMessageProblem } = await import('../src/transport/peer-validate.js');
  const head = { from: 2, to: 0, epoch: 1, clock: 5, cid: '' };
  t.equal(peerMessageProblem({ ...head, t: 'ack', match: 3 }), null);
  t.equal(peerMessageProblem({ ...head, t: 'append', prevIndex: 0, prevEpoch: 0, commit: 0, commitTs: 0, entries: [{ index: 1, epoch: 1, ts: 1, kind: 'noop' }] }), null);
  t.match(peerMessageProblem(null), /not an object/);
  t.match(peerMessageProblem({ ...head, t: 'boom' }), /unknown type/);
  t.match(peerMessageProblem({ ...head, t: 'ack', match: -1 }), /match/);
  t.match(peerMessageProblem({ ...head, from: 0, t: 'alive' }), /server id/);
  t.match(peerMessageProblem({ ...head, t: 'append', prevIndex: 0, prevEpoch: 0, commit: 0, commitTs: 0, entries: 'x' }), /not an array/);
  t.match(peerMessageProblem({ ...head, t: 'append', prevIndex: 0, prevEpoch: 0, commit: 0, commitTs: 0, entries: [{ index: 2, epoch: 1, ts: 1, kind: 'noop' }] }), /contiguous/);
  t.match(peerMessageProblem({ ...head, t: 'append', prevIndex: 0, prevEpoch: 0, commit: 0, commitTs: 0, entries: [{ index: 1, epoch: 1, ts: 1, kind: 'evil' }] }), /entry 0/);
  t.match(peerMessageProblem({ ...head, cid: 'not an id', t: 'ack', match: 3 }), /cid/);
  t.match(peerMessageProblem({ ...head, t: 'append', prevIndex: 0, prevEpoch: 0, commit: 0, commitTs: 9, entries: [] }), /commitTs is beyond/);
  t.match(peerMessageProblem({ ...head, t: 'append', prevIndex: 0, prevEpoch: 0, commit: 0, commitTs: 0, entries: [{ index: 1, epoch: 1, ts: 6, kind: 'noop' }] }), /beyond the sender's clock/);
  t.match(peerMessageProblem({ ...head, t: 'claim' }), /last/);
  // A claim's configuration position is optional (older servers send none), but a number when there.
  t.equal(peerMessageProblem({ ...head, t: 'claim', last: 3, lastEpoch: 1 }), null);
  t.equal(peerMessageProblem({ ...head, t: 'claim', last: 3, lastEpoch: 1, cfgIndex: 2, cfgEpoch: 1 }), null);
  t.match(peerMessageProblem({ ...head, t: 'claim', last: 3, lastEpoch: 1, cfgIndex: 'x', cfgEpoch: 1 }), /cfgIndex/);
  t.match(peerMessageProblem({ ...head, t: 'claim', last: 3, lastEpoch: 1, cfgIndex: 2, cfgEpoch: -1 }), /cfgEpoch/);
  t.match(peerMessageProblem({ ...head, t: 'ping', role: 'king', coordinator: null, last: 0, lastEpoch: 0, commit: 0, commitTs: 0, matched: 0, applied: 0, checkpoint: 0, voters: [1], uptimeTicks: 0 }), /role/);
});

t.test('jsonString: the text JSON.stringify gives, for every string', async (t) => {
  const { jsonString } = await import('../src/core/json-string.js');
  const tricky = ['', 'plain', 'a"b', 'a\\b', 'tab\tnl\n', '\u0000\u001f\u007f', 'é ü ß', '\u2028\u2029', '😀', '\ud800', 'x\udfffy', '\udbff\udfff', '</script>'];
  for (const [i, s] of tricky.entries()) t.equal(jsonString(s), JSON.stringify(s), `tricky string ${i}`);
  t.equal(jsonString(null), 'null');
  // Random strings over an alphabet of every kind of character that matters.
  const alphabet = ['a', '"', '\\', '\n', '\u0001', '\u001f', ' ', '\u007f', 'é', '\u2028', '\ud83d', '\ude00', '\uffff'];
  let x = 7;
  let wrong = 0;
  for (let i = 0; i < 2000; i++) {
    let s = '';
    const n = (x = (Math.imul(x, 1103515245) + 12345) & 0x7fffffff) % 12;
    for (let j = 0; j < n; j++) s += alphabet[(x = (Math.imul(x, 1103515245) + 12345) & 0x7fffffff) % alphabet.length];
    if (jsonString(s) !== JSON.stringify(s)) wrong++;
  }
  t.equal(wrong, 0, '2,000 random strings quote as JSON.stringify quotes them');
  // Where it is used on its own: a reply with a long value, a published change event.
  const { encodeReply } = await import('../src/server/server.js');
  const { changeEventJson } = await import('../src/core/entry-text.js');
  for (const value of ['short', 'v'.repeat(5000), 'q"\\\n'.repeat(40), '😀\ud800'.repeat(40)]) {
    const r = { ok: true as const, ts: 9, index: 4, value, rev: 3, b64: true as const, cluster: 'c' };
    t.same(JSON.parse(encodeReply(r)), r, `a get reply with a ${value.length}-character value reads back as it was`);
    const ev = { index: 4, ts: 9, op: 'put' as const, key: 'k"\u2028', value, lease: 7, prev: 2 };
    t.same(JSON.parse(changeEventJson(ev)), ev, `a change event with a ${value.length}-character value reads back as it was`);
  }
  t.same(JSON.parse(changeEventJson({ index: 5, ts: 10, op: 'del', key: 'k', prev: 4 })), { index: 5, ts: 10, op: 'del', key: 'k', prev: 4 });
});

t.test('peer messages: entries travel as their canonical text, and read back as sent', async (t) => {
  const { encodePeerMessage } = await import('../src/transport/peer-auth.js');
  const { peerMessageProblem } = await import('../src/transport/peer-validate.js');
  const { encodeEntryJson } = await import('../src/core/entry-text.js');
  const head = { from: 2, to: 0, epoch: 3, clock: 50, cid: '' };
  // Fields in an order that is not the canonical one: the text must be the canonical one anyway.
  const entries: Entry[] = [
    { kind: 'noop', ts: 1, epoch: 3, index: 1, cluster: 'c1-0000000000000000000' } as Entry,
    { ops: [{ value: 'v\u2028"x', key: 'k/é', op: 'put', ttl: 5000 }], rid: 'r-1', kind: 'write', ts: 2, epoch: 3, index: 2 } as Entry,
    { index: 3, epoch: 3, ts: 3, kind: 'config', voters: [1, 2, 3] },
  ];
  const msgs = [
    { ...head, t: 'append', prevIndex: 0, prevEpoch: 0, entries, commit: 1, commitTs: 1 },
    { ...head, t: 'append', prevIndex: 3, prevEpoch: 3, entries: [], commit: 4, commitTs: 1 },
    { ...head, t: 'fetched', start: 1, entries, last: 3, compacted: false },
    { ...head, t: 'ack', match: 3 },
  ] as const;
  for (const m of msgs) {
    const text = encodePeerMessage(m as never);
    t.same(JSON.parse(text), m, `${m.t} with ${'entries' in m ? m.entries.length : 0} entries reads back equal`);
    t.equal(peerMessageProblem(JSON.parse(text)), null, `${m.t}: a valid peer message`);
  }
  const text = encodePeerMessage(msgs[0] as never);
  for (const e of entries) t.ok(text.includes(encodeEntryJson(e)), `entry ${e.index} is in it as its canonical text`);
  t.throws(() => encodePeerMessage({ ...msgs[0], entries: [{ index: 0, epoch: 1, ts: 1, kind: 'noop' }] } as never), /invalid entry/, 'an invalid entry is a bug: never sent');
});

t.test('ping table: bounded at PEERS_MAX; a dead learner makes room for a new one', async (t) => {
  const { PEERS_MAX } = await import('../src/core/limits.js');
  const { DEAD_AFTER_TICKS } = await import('../src/core/limits.js');
  const n = new Node({ id: 1, voters: [1], promised: 0, entries: [], base: { index: 0, epoch: 0, ts: 0 }, commit: 0, commitTs: 0 });
  const ping = (from: number) =>
    n.receive({ t: 'ping', from, to: 0, epoch: 0, clock: 0, role: 'learner', coordinator: 1, last: 0, lastEpoch: 0, commit: 0, commitTs: 0, matched: 0, applied: 0, checkpoint: 0, voters: [1], uptimeTicks: 0 } as any);
  for (let id = 100; id < 100 + 2 * PEERS_MAX; id++) ping(id);
  t.equal(n.peerTable().length, PEERS_MAX, 'strangers beyond the bound are not taken in');
  ping(9999);
  t.notOk(n.peerTable().some((p) => p.id === 9999), 'no room while every learner is alive');
  for (let i = 0; i <= DEAD_AFTER_TICKS + 1; i++) n.tick();
  ping(9999);
  t.ok(n.peerTable().some((p) => p.id === 9999), 'a dead learner is forgotten to make room');
  t.equal(n.peerTable().length, PEERS_MAX);
});

t.test('config entries: keepOut round-trips and is checked', async (t) => {
  const { encodeEntryJson } = await import('../src/core/entry-text.js');
  const { entryProblem } = await import('../src/core/entry-shape.js');
  const e: Entry = { index: 7, epoch: 2, ts: 9, kind: 'config', voters: [1, 3], keepOut: [2, 5] };
  t.equal(encodeEntryJson(e), '{"index":7,"epoch":2,"ts":9,"kind":"config","voters":[1,3],"keepOut":[2,5]}');
  t.same(JSON.parse(encodeEntryJson(e)), e);
  t.equal(encodeEntryJson({ index: 7, epoch: 2, ts: 9, kind: 'config', voters: [1, 3] }), '{"index":7,"epoch":2,"ts":9,"kind":"config","voters":[1,3]}', 'absent keepOut: the old bytes');
  t.match(entryProblem({ ...e, keepOut: [5, 2] }), /sorted/);
  t.match(entryProblem({ ...e, keepOut: [1] }), /is a voter/);
  t.match(entryProblem({ ...e, keepOut: [] }), /keepOut/);
  t.match(entryProblem({ ...e, keepOut: [0] }), /positive/);
});

t.test('membership: an operator removal is in the log, so a new coordinator keeps it', async (t) => {
  // A coordinator restarted from a log whose configuration keeps 2 out: 2, alive and caught
  // up as a learner, is not added back; an operator add lifts it.
  const entries: Entry[] = [
    { index: 1, epoch: 1, ts: 1, kind: 'noop' },
    { index: 2, epoch: 1, ts: 2, kind: 'config', voters: [1], keepOut: [2] },
  ];
  const n = new Node({ id: 1, voters: [1, 2], promised: 1, entries, base: { index: 0, epoch: 0, ts: 0 }, commit: 2, commitTs: 2 });
  t.same(n.voters, [1]);
  t.same(n.keepOut, [2]);
  n.tick();
  drive(n);
  t.equal(n.role, 'coordinator');
  const ping = () =>
    n.receive({ t: 'ping', from: 2, to: 0, epoch: n.epoch, clock: 0, role: 'learner', coordinator: 1, last: n.lastIndex(), lastEpoch: n.epoch, commit: n.commit, commitTs: 0, matched: n.lastIndex(), applied: n.commit, checkpoint: 0, voters: [1], uptimeTicks: 0 } as any);
  ping();
  n.receive({ t: 'ack', from: 2, to: 1, epoch: n.epoch, clock: 0, match: n.lastIndex() } as any);
  for (let i = 0; i < 5; i++) {
    ping();
    n.tick();
    drive(n);
  }
  t.same(n.voters, [1], 'not added back automatically');
  const add = n.changeMembers({ add: 2 });
  t.equal(add?.ok, true, `an operator adds it: ${JSON.stringify(add)}`);
  drive(n);
  t.same(n.voters, [1, 2]);
  t.same(n.keepOut, [], 'and the add lifts the keep-out');
});

t.test('prefix delete: at most PREFIX_DELETE_KEYS_MAX keys per entry, the first in key order, as of the batch so far', async (t) => {
  const n = PREFIX_DELETE_KEYS_MAX + 5;
  const keys = Array.from({ length: n }, (_, i) => `p.${String(i).padStart(5, '0')}`);
  // Half in the checkpoint, half written since (the overlay), and one more in the same batch.
  const base = new ArrayCheckpoint(
    keys.filter((_, i) => i % 2 === 0).map((k, i) => [k, { value: 'v', rev: i + 1, ts: i + 1 }]),
    { format: CHECKPOINT_FORMAT, index: n, epoch: 1, ts: n, voters: [1], eventPrev: 0 },
  );
  const s = new KvState(base);
  const w = (index: number, ops: Extract<Entry, { kind: 'write' }>['ops']): Entry => ({ index, epoch: 1, ts: index, kind: 'write', ops });
  let i = n;
  for (const k of keys.filter((_, j) => j % 2 === 1)) s.apply(w(++i, [{ op: 'put', key: k, value: 'v' }]));
  const r = s.apply(w(++i, [{ op: 'del', key: keys[0]! }, { op: 'put', key: 'p.-first', value: 'x' }, { op: 'delprefix', prefix: 'p.' }]));
  t.equal(r.events.length, PREFIX_DELETE_KEYS_MAX + 1, 'the del of the first key, then 1000 deletes');
  const left = s.range('p.', undefined, 100).map((x) => x.key);
  // keys[0] was already gone; p.-first sorts first ('-' < '0'): the 1000 are it and keys[1..999].
  t.same(left, keys.slice(PREFIX_DELETE_KEYS_MAX), 'the last keys in key order are left');
  s.apply(w(++i, [{ op: 'delprefix', prefix: 'p.' }]));
  t.same(s.range('p.', undefined, 100), [], 'a second entry deletes the rest');
});

t.test('membership: while a change is not committed, entries commit only with a majority of the configuration before it too', async (t) => {
  // 1 leads {1}, adds 3, then 4. With the change to {1,3,4} not committed, 4's ack alone (with
  // ours: a majority of {1,3,4}) commits nothing: {1,3} would not hold it, and should 3 lose its
  // disk, 1 and an empty 3 would elect a coordinator without it.
  const n = new Node({ id: 1, voters: [1], promised: 0, entries: [], base: { index: 0, epoch: 0, ts: 0 }, commit: 0, commitTs: 0 });
  n.tick();
  drive(n);
  t.equal(n.role, 'coordinator');
  const ping = (from: number) =>
    n.receive({ t: 'ping', from, to: 0, epoch: n.epoch, clock: 0, role: 'learner', coordinator: 1, last: n.lastIndex(), lastEpoch: n.epoch, commit: n.commit, commitTs: 0, matched: n.lastIndex(), applied: n.commit, checkpoint: 0, voters: n.voters, uptimeTicks: 0 } as any);
  const ack = (from: number) => n.receive({ t: 'ack', from, to: 1, epoch: n.epoch, clock: 0, match: n.lastIndex() } as any);
  ping(3);
  ack(3);
  t.equal(n.changeMembers({ add: 3 })?.ok, true);
  drive(n);
  ack(3);
  drive(n);
  t.same(n.voters, [1, 3]);
  t.equal(n.commit, n.lastIndex(), 'the change to {1,3} is committed');
  ping(4);
  ack(4);
  t.equal(n.changeMembers({ add: 4 })?.ok, true);
  const p = n.propose([{ op: 'put', key: 'k', value: 'v' }]);
  t.equal(p.ok, true);
  drive(n);
  t.same(n.voters, [1, 3, 4]);
  const before = n.commit;
  ack(4);
  drive(n);
  t.equal(n.commit, before, 'a majority of {1,3,4} without 3 commits nothing yet');
  ack(3);
  drive(n);
  t.equal(n.commit, n.lastIndex(), 'with 3, both configurations agree: committed');
});

t.test('membership: a restarted coordinator learns from its peers that a change is committed, and no longer waits on the voters before it', async (t) => {
  // 4 was added to {2,3} (entry 3); 3 has since been decommissioned. 4 restarts knowing only
  // entry 1 committed (its checkpoint), so the change looks pending and its commits would need
  // 3 (a majority of {2,3}) for good. 2's promise, or a later heartbeat, says entry 3 committed.
  const entries: Entry[] = [
    { index: 1, epoch: 1, ts: 1, kind: 'noop' },
    { index: 2, epoch: 1, ts: 2, kind: 'config', voters: [2, 3], keepOut: [1] },
    { index: 3, epoch: 1, ts: 3, kind: 'config', voters: [2, 3, 4], keepOut: [1] },
    { index: 4, epoch: 1, ts: 4, kind: 'write', ops: [{ op: 'put', key: 'a', value: '1' }] },
  ];
  const elect = (promiseCommit: number): Node => {
    const n = new Node({ id: 4, voters: [2, 3, 4], promised: 1, entries, base: { index: 0, epoch: 0, ts: 0 }, commit: 1, commitTs: 1 });
    for (let i = 0; i < 200 && n.role !== 'coordinator'; i++) {
      n.tick();
      for (const r of drive(n)) {
        for (const m of [...r.sendNow, ...r.send]) {
          if (m.t !== 'claim') continue;
          n.receive({ t: 'promise', from: 2, to: 4, epoch: m.epoch, clock: 0, ok: true, last: 4, lastEpoch: 1, commit: promiseCommit } as any);
        }
      }
    }
    t.equal(n.role, 'coordinator', `4 is elected with 2's promise (commit ${promiseCommit})`);
    drive(n);
    n.receive({ t: 'ack', from: 2, to: 4, epoch: n.epoch, clock: 0, match: n.lastIndex() } as any);
    drive(n);
    return n;
  };
  const ping = (n: Node, commit: number) =>
    n.receive({ t: 'ping', from: 2, to: 0, epoch: n.epoch, clock: 0, role: 'follower', coordinator: 4, last: n.lastIndex(), lastEpoch: n.epoch, commit, commitTs: 0, matched: n.lastIndex(), applied: commit, checkpoint: 0, voters: [2, 3, 4], uptimeTicks: 0 } as any);

  const unknown = elect(2);
  t.equal(unknown.commit, 2, 'told only up to entry 2: entry 3 may be pending, and 2 and 4 commit nothing past it without 3');
  ping(unknown, 2);
  drive(unknown);
  t.equal(unknown.commit, 2, 'a heartbeat that says no more changes nothing');
  ping(unknown, 3);
  drive(unknown);
  t.equal(unknown.commit, unknown.lastIndex(), 'a heartbeat saying entry 3 committed: 2 and 4 are a majority of {2,3,4}, which alone counts now');

  const known = elect(3);
  t.equal(known.commit, known.lastIndex(), "the promise said so: 2's ack of the no-op commits it");
  ping(known, 1_000);
  drive(known);
  t.equal(known.commit, known.lastIndex(), 'a commit past our log is not taken for more than our log');
});

t.test('leases: grant, attach, keepalive, revoke and expiry take the keys along; refused where the lease is gone or full; found again after a restart', async (t) => {
  const meta: CheckpointMeta = { format: CHECKPOINT_FORMAT, index: 0, epoch: 1, ts: 0, voters: [1], eventPrev: 0 };
  const s = new KvState(new ArrayCheckpoint([], meta));
  const w = (index: number, ops: any[]): Entry => ({ index, epoch: 1, ts: index * 10, kind: 'write', ops });
  let r = s.apply(w(1, [{ op: 'grant', ttl: 5000 }]));
  t.same(r.result, { ok: true });
  t.same(s.get('_lease.1'), { value: '', rev: 1, ts: 10, ttl: 5000 }, 'the lease is the record _lease.<its index>, with the ttl');
  r = s.apply(w(2, [{ op: 'put', key: 'svc.a', value: 'x', lease: 1 }, { op: 'put', key: 'svc.b', value: 'y', lease: 1 }, { op: 'put', key: 'other', value: 'z' }]));
  t.same(r.result, { ok: true });
  t.equal(s.get('svc.a')?.lease, 1);
  t.same(r.events[0], { index: 2, ts: 20, op: 'put', key: 'svc.a', value: 'x', lease: 1, prev: 1 }, 'events say the lease');
  r = s.apply(w(3, [{ op: 'put', key: 'svc.c', value: 'q', lease: 99 }]));
  t.same(r.result, { ok: false, code: 'LEASE_NOT_FOUND', failed: 0, lease: 99 }, 'a lease that never was');
  t.equal(s.get('svc.c'), undefined);
  r = s.apply(w(4, [{ op: 'keepalive', lease: 1 }]));
  t.same(s.get('_lease.1'), { value: '', rev: 4, ts: 40, ttl: 5000 }, 'keepalive rewrites the lease: its countdown starts again');
  r = s.apply(w(5, [{ op: 'delprefix', prefix: '' }]));
  t.ok(s.get('_lease.1'), 'a prefix delete leaves lease records (they go with their keys, by revoke or expiry)');
  t.equal(s.get('svc.a'), undefined, 'but deletes keys, leased ones too');
  s.apply(w(6, [{ op: 'put', key: 'svc.a', value: 'x2', lease: 1 }, { op: 'put', key: 'svc.d', value: 'd', lease: 1 }]));
  s.apply(w(7, [{ op: 'put', key: 'svc.d', value: 'free' }]));
  t.equal(s.get('svc.d')?.lease, undefined, 'rewritten without the lease: detached');
  r = s.apply(w(8, [{ op: 'revoke', lease: 1 }]));
  t.same(r.events.map((e) => [e.op, e.key]), [['del', '_lease.1'], ['del', 'svc.a']], 'revoke deletes the lease and its keys in one entry');
  t.equal(s.get('svc.d')?.value, 'free');
  r = s.apply(w(9, [{ op: 'revoke', lease: 1 }]));
  t.same(r.result, { ok: true }, 'revoking a lease that is gone changes nothing');
  r = s.apply(w(10, [{ op: 'keepalive', lease: 1 }]));
  t.same(r.result, { ok: false, code: 'LEASE_NOT_FOUND', failed: 0, lease: 1 });
  // Expiry (the coordinator's expire op) takes the keys along too; a restart finds them from the checkpoint's index.
  s.apply(w(11, [{ op: 'grant', ttl: 1000 }]));
  s.apply(w(12, [{ op: 'put', key: 'k1', value: '1', lease: 11 }, { op: 'put', key: 'k2', value: '2', lease: 11 }]));
  const kv = s.range('', undefined, 100).map((x) => [x.key, s.get(x.key)!] as [string, Rec]);
  const restarted = new KvState(new ArrayCheckpoint(kv, { ...meta, index: 12, ts: 120 }));
  r = restarted.apply(w(13, [{ op: 'expire', key: '_lease.11', rev: 11 }]));
  t.same(r.events.map((e) => e.key), ['_lease.11', 'k1', 'k2'], 'after a restart the expiry still finds its keys');
  // At most LEASE_KEYS_MAX keys per lease: one entry's events must fit a replay page.
  const f = new KvState(new ArrayCheckpoint([], meta));
  f.apply(w(1, [{ op: 'grant', ttl: 5000 }]));
  let index = 2;
  for (let n = 0; n < 1000; n += 100, index++) f.apply(w(index, Array.from({ length: 100 }, (_, i) => ({ op: 'put', key: `f.${n + i}`, value: 'v', lease: 1 }))));
  r = f.apply(w(index, [{ op: 'put', key: 'f.more', value: 'v', lease: 1 }]));
  t.same(r.result, { ok: false, code: 'LEASE_FULL', failed: 0, lease: 1 });
  r = f.apply(w(index + 1, [{ op: 'put', key: 'f.5', value: 'again', lease: 1 }]));
  t.same(r.result, { ok: true }, 'rewriting a key already on the lease is not one more');
  t.throws(() => validateRequest({ op: 'put', key: '_lease.1', value: 'forged' } as any), /leases/, 'clients cannot write lease records');
  t.throws(() => validateRequest({ op: 'batch', ops: [{ op: 'grant', ttl: 1000 }] } as any), /alone/);
  t.throws(() => validateRequest({ op: 'put', key: 'a', value: 'v', lease: 1, ttl: 100 } as any), /not both/);
  t.throws(() => validateRequest({ op: 'keepalive', lease: 0 } as any), /lease id/);
});
