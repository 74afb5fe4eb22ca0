// One real ckv-server process on a real nats-server, driven through the ckv
// binary and raw NATS requests: every operation, sessions, exactly-once,
// SIGKILL durability, and bad input that must change nothing.

import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { execFile } from 'node:child_process';
import { Cluster } from './helpers/cluster.js';
import { CLI_JS } from './helpers/run.js';
import { Client } from '../src/index.js';

const dec = new TextDecoder();

async function req(nc: NatsConnection, subject: string, body: unknown): Promise<any> {
  const data = typeof body === 'string' ? body : JSON.stringify(body);
  const r = await nc.request(subject, data, { timeout: 5000 });
  return JSON.parse(dec.decode(r.data));
}

t.test('single node end to end', async (t) => {
  const c = new Cluster(1, { cluster: 'one' });
  await c.start();
  t.teardown(() => c.stop());
  await c.waitForCoordinator();
  const nc = await connect({ servers: c.nats.url });
  t.teardown(() => nc.close());
  const W = 'ckv.one.write';
  const R = 'ckv.one.read';
  const sessionDir = mkdtempSync(join(tmpdir(), 'ckv-sess-'));
  t.teardown(() => rmSync(sessionDir, { recursive: true, force: true }));
  const session = join(sessionDir, 'session.json');
  const ckv = (args: string[], input?: string) => c.ckv(['--session', session, ...args], input === undefined ? {} : { input });

  await t.test('every operation through the ckv binary', async (t) => {
    let r = await ckv(['put', 'app.color', 'blue']);
    t.equal(r.code, 0, r.stderr);
    r = await ckv(['get', 'app.color']);
    t.equal(r.code, 0);
    t.equal(r.stdout.trim(), 'blue');
    r = await ckv(['put', 'app.size', '-'], 'large\n');
    t.equal(r.code, 0, r.stderr);
    r = await ckv(['get', 'app.size', '--json']);
    t.equal(JSON.parse(r.stdout).value, 'large\n', 'stdin value kept byte for byte');
    r = await ckv(['cas', 'app.color', 'red', 'green']);
    t.equal(r.code, 1, 'cas mismatch exits 1');
    r = await ckv(['cas', 'app.color', 'blue', 'green']);
    t.equal(r.code, 0, r.stderr);
    r = await ckv(['cas', '--absent', 'app.new', 'x']);
    t.equal(r.code, 0, r.stderr);
    r = await ckv(['cas', '--absent', 'app.new', 'y']);
    t.equal(r.code, 1, 'expected-absent cas fails when present');
    r = await ckv(['mget', 'app.color', 'app.new', 'app.none', '--json']);
    const mget = JSON.parse(r.stdout);
    t.same(mget.values.map((v: any) => v && v.value), ['green', 'x', null]);
    r = await ckv(['batch', JSON.stringify([{ op: 'put', key: 'app.b1', value: '1' }, { op: 'put', key: 'app.b2', value: '2' }, { op: 'del', key: 'app.new' }])]);
    t.equal(r.code, 0, r.stderr);
    r = await ckv(['batch', JSON.stringify([{ op: 'put', key: 'app.b3', value: '3' }, { op: 'cas', key: 'app.b1', expect: 'nope', value: '9' }])]);
    t.equal(r.code, 1, 'a batch with a failing cas fails');
    r = await ckv(['get', 'app.b3']);
    t.equal(r.code, 1, 'and applies none of its ops');
    r = await ckv(['list', 'app.', '--json']);
    t.same(JSON.parse(r.stdout).items.map((i: any) => i.key), ['app.b1', 'app.b2', 'app.color', 'app.size']);
    r = await ckv(['list', 'app.', '--limit', '2', '--json']);
    const page = JSON.parse(r.stdout);
    t.same(page.items.map((i: any) => i.key), ['app.b1', 'app.b2']);
    t.equal(page.next, 'app.color', 'next is the first key of the next page');
    r = await ckv(['list', 'app.', '--limit', '2', '--start', page.next, '--json']);
    t.same(JSON.parse(r.stdout).items.map((i: any) => i.key), ['app.color', 'app.size']);
    r = await ckv(['del', 'app.b2']);
    t.equal(r.code, 0);
    r = await ckv(['get', 'app.b2']);
    t.equal(r.code, 1, 'deleted key is not found');
    r = await ckv(['del', 'app.b2']);
    t.equal(r.code, 0, 'del of a missing key succeeds (as in etcdctl and consul), and makes no event (history below)');
    t.equal(r.stderr, '');
    // app.color: put blue, cas → green; app.b2: put in a batch, then deleted.
    r = await ckv(['history', 'app.color', '--json']);
    t.equal(r.code, 0, r.stderr);
    const h = JSON.parse(r.stdout);
    t.same(h.events.map((e: any) => [e.op, e.value]), [['put', 'blue'], ['put', 'green']], 'history: every change, oldest first');
    t.ok(h.since <= h.events[0].index, 'complete from an index at or before the first change');
    r = await ckv(['history', 'app.b2']);
    t.match(r.stdout, /^\d+\t\d+\tput\tapp\.b2\t2\n\d+\t\d+\tdel\tapp\.b2\n$/, 'history prints one line per change');
    t.match(r.stderr, /complete from log index \d+/);
    r = await ckv(['history', 'app.color', '--limit', '1', '--json']);
    const h1 = JSON.parse(r.stdout);
    t.same(h1.events.map((e: any) => e.value), ['green'], '--limit keeps the newest');
    t.ok(h1.since > h.events[0].index && h1.since <= h1.events[0].index, 'and says the history is complete only after the change it left out');
    r = await ckv(['history', 'app.none', '--json']);
    t.same(JSON.parse(r.stdout).events, [], 'a key never written has no history');
    r = await ckv(['history', 'app.color', '--limit', '0']);
    t.equal(r.code, 2, 'a bad limit is a usage error');
    r = await ckv(['status', '--json']);
    t.equal(r.code, 0);
    const st = JSON.parse(r.stdout);
    t.equal(st.servers[0].role, 'coordinator');
    t.ok(st.servers[0].applied > 0);
  });

  await t.test('read-your-writes across one-shot invocations through the session file', async (t) => {
    const before = JSON.parse(readFileSync(session, 'utf8'));
    const r1 = await ckv(['put', 'ryw.k', 'v1', '--json']);
    const ts = JSON.parse(r1.stdout).ts as number;
    const after = JSON.parse(readFileSync(session, 'utf8'));
    const tok = (o: any) => Math.max(...Object.values(o).map((v: any) => (typeof v === 'number' ? v : v.ts ?? 0)));
    t.ok(tok(after) >= ts && tok(after) > tok(before), 'the session file keeps the newest token');
    const r2 = await ckv(['get', 'ryw.k', '--json']);
    t.equal(JSON.parse(r2.stdout).value, 'v1');
    t.ok(JSON.parse(r2.stdout).ts >= ts, 'the read is at least as new as the write');
    const r3 = await c.ckv(['--no-session', '--after', String(ts + 1_000_000), 'get', 'ryw.k']);
    t.equal(r3.code, 4, 'a token from the future is refused');
    t.match(r3.stderr, /TOKEN_AHEAD/);
  });

  await t.test('a retried rid is applied once', async (t) => {
    const a = await req(nc, W, { op: 'put', key: 'once', value: 'first', rid: 'rid-once-1' });
    t.ok(a.ok);
    const b = await req(nc, W, { op: 'put', key: 'once', value: 'second', rid: 'rid-once-2' });
    t.ok(b.ok);
    const again = await req(nc, W, { op: 'put', key: 'once', value: 'first', rid: 'rid-once-1' });
    t.ok(again.ok);
    t.equal(again.index, a.index, 'the retry returns the first result');
    const g = await req(nc, R, { op: 'get', key: 'once' });
    t.equal(g.value, 'second', 'and is not applied again');
    const cas1 = await req(nc, W, { op: 'cas', key: 'once', expect: 'nope', value: 'x', rid: 'rid-cas' });
    t.equal(cas1.error.code, 'CAS_MISMATCH');
    await req(nc, W, { op: 'put', key: 'once', value: 'nope', rid: 'rid-once-3' });
    const cas2 = await req(nc, W, { op: 'cas', key: 'once', expect: 'nope', value: 'x', rid: 'rid-cas' });
    t.equal(cas2.error.code, 'CAS_MISMATCH', 'a retried cas returns its first result, even when it would now succeed');
  });

  await t.test('bad input gets its error code and changes nothing', async (t) => {
    const before = await req(nc, R, { op: 'list', prefix: '', limit: 1000 });
    const cases: Array<[string, string, unknown]> = [
      ['malformed JSON', 'BAD_REQUEST', '{"op":"put",'],
      ['not an object', 'BAD_REQUEST', '"put"'],
      ['unknown op', 'BAD_REQUEST', { op: 'explode', key: 'a' }],
      ['wrong type', 'BAD_REQUEST', { op: 'put', key: 'a', value: 42 }],
      ['invalid key', 'BAD_REQUEST', { op: 'put', key: 'a b', value: 'x' }],
      ['dot key', 'BAD_REQUEST', { op: 'put', key: 'a.', value: 'x' }],
      ['oversize key', 'TOO_LARGE', { op: 'put', key: 'k'.repeat(600), value: 'x' }],
      ['oversize value', 'TOO_LARGE', { op: 'put', key: 'big', value: 'v'.repeat(300 * 1024) }],
      ['negative token', 'BAD_REQUEST', { op: 'put', key: 'a', value: 'x', after: -5 }],
      ['token from the future', 'TOKEN_AHEAD', { op: 'put', key: 'a', value: 'x', after: 1e12 }],
      ['read on write subject with bad field', 'BAD_REQUEST', { op: 'get', key: 'a', bogus: true }],
      ['empty batch', 'BAD_REQUEST', { op: 'batch', ops: [] }],
      // Each value within VALUE_BYTES_MAX, the entry past ENTRY_BYTES_MAX (768 KiB): refused by the coordinator.
      ['batch larger than an entry may be', 'TOO_LARGE', { op: 'batch', ops: [0, 1, 2].map((i) => ({ op: 'put', key: `huge.${i}`, value: 'v'.repeat(256 * 1024) })) }],
      ['history with a bad limit', 'BAD_REQUEST', { op: 'history', key: 'a', limit: 5000 }],
      ['write on the read subject', 'BAD_REQUEST', null],
    ];
    for (const [name, code, body] of cases) {
      const r = body === null ? await req(nc, R, { op: 'put', key: 'a', value: 'x' }) : await req(nc, W, body);
      t.equal(r.ok, false, name);
      t.equal(r.error?.code, code, name);
      t.type(r.ts, 'number', `${name}: reply carries ts`);
    }
    const r = await req(nc, R, { op: 'get', key: 'a', after: 1e12 });
    t.equal(r.error?.code, 'TOKEN_AHEAD', 'future token on a read');
    const strong = await req(nc, W, { op: 'get', key: 'a', after: 1e12, consistency: 'strong' });
    t.equal(strong.error?.code, 'TOKEN_AHEAD', 'future token on a strong read');
    const after = await req(nc, R, { op: 'list', prefix: '', limit: 1000 });
    t.same(after.items, before.items, 'no bad request changed anything');
    t.equal(after.index, before.index, 'nor appended to the log');
    // Garbage on the peer subjects is dropped; the server goes on.
    const junk = ['{', '[]', '{"t":"append","from":9,"to":0,"epoch":99,"clock":1,"entries":"x"}', '{"t":"ack","from":2,"to":1,"epoch":1,"clock":1,"match":1e9}', 'null'];
    for (const subject of ['ckv.one.ping', 'ckv.one.repl.all', 'ckv.one.repl.1', 'ckv.one.elect.all', 'ckv.one.sync.1', 'ckv.one.snap.1']) {
      for (const j of junk) nc.publish(subject, j);
    }
    await nc.flush();
    const alive = await req(nc, W, { op: 'put', key: 'still.here', value: 'yes', rid: 'still-here' });
    t.equal(alive.ok, true, 'the server survives garbage on its peer subjects');
    const cli = await c.ckv(['--no-session', 'put', 'bad key', 'x']);
    t.equal(cli.code, 2, 'the CLI refuses an invalid key as a usage error');
  });

  await t.test('replies stay within the NATS payload limit', async (t) => {
    const big = 'v'.repeat(250 * 1024);
    const keys = ['huge.1', 'huge.2', 'huge.3', 'huge.4', 'huge.5'];
    for (const key of keys) t.equal((await req(nc, W, { op: 'put', key, value: big, rid: `huge-${key}` })).ok, true);
    const m = await req(nc, R, { op: 'mget', keys });
    t.equal(m.error?.code, 'TOO_LARGE', 'an mget whose reply would pass 1 MiB is refused');
    t.equal((await req(nc, R, { op: 'mget', keys: keys.slice(0, 2) })).values.length, 2, 'a smaller one is answered');
    // A list page of large values stops early; following `next` yields every key once.
    const seen: string[] = [];
    let start: string | undefined;
    let pages = 0;
    do {
      const page = await req(nc, R, { op: 'list', prefix: 'huge.', limit: 100, ...(start ? { start } : {}) });
      t.equal(page.ok, true, `page ${pages} is answered`);
      seen.push(...page.items.map((i: any) => i.key));
      start = page.next ?? undefined;
      pages++;
    } while (start !== undefined && pages < 10);
    t.same(seen, keys, 'paging returns every key once');
    t.ok(pages > 1, `the large values took ${pages} pages`);
    const ev = await req(nc, R, { op: 'replay', from: 1 });
    t.equal(ev.ok, true, 'replay of large events is answered within the limit');
    // Values that JSON escaping doubles: pages are measured as encoded.
    const quotes = '"'.repeat(170 * 1024);
    let firstIndex = 0;
    for (const key of ['esc.1', 'esc.2', 'esc.3']) {
      const w = await req(nc, W, { op: 'put', key, value: quotes, rid: `esc-${key}` });
      t.equal(w.ok, true, `put ${key}`);
      firstIndex ||= w.index;
    }
    const escPage = await req(nc, R, { op: 'list', prefix: 'esc.', limit: 100 });
    t.equal(escPage.ok, true, 'a list page of escaped values fits');
    t.ok(escPage.items.length < 3 && escPage.next !== null, 'and stops early');
    const escReplay = await req(nc, R, { op: 'replay', from: firstIndex });
    t.equal(escReplay.ok, true, 'so does a replay page');
    t.ok(escReplay.events.length >= 1 && escReplay.events.length < 3, 'which stops early too');
  });

  await t.test('watch sees events and replays from an index', async (t) => {
    const first = await req(nc, W, { op: 'put', key: 'w.a', value: '1', rid: 'w-1' });
    await req(nc, W, { op: 'put', key: 'w.b', value: '2', rid: 'w-2' });
    const r = await req(nc, R, { op: 'replay', from: first.index });
    t.same(r.events.filter((e: any) => e.key.startsWith('w.')).map((e: any) => [e.key, e.value]), [['w.a', '1'], ['w.b', '2']]);
    const sub = nc.subscribe('ckv.one.ev.w.>', { max: 1 });
    const got = (async () => {
      for await (const m of sub) return JSON.parse(dec.decode(m.data));
    })();
    await nc.flush();
    await req(nc, W, { op: 'put', key: 'w.c', value: '3', rid: 'w-3' });
    const ev = await got;
    t.match(ev, { key: 'w.c', op: 'put', value: '3' });
  });

  await t.test('revisions: create races, cas by revision (ABA), prefix delete with its events', async (t) => {
    // Eight one-shot processes race to create the same key: exactly one wins.
    const racers = await Promise.all(Array.from({ length: 8 }, (_, i) => c.ckv(['--no-session', 'create', 'rv.lock', `holder-${i}`])));
    t.same(racers.map((r) => r.code).sort(), [0, 1, 1, 1, 1, 1, 1, 1], 'one create wins, the others exit 1');
    const loser = racers.find((r) => r.code === 1)!;
    t.match(loser.stderr, /rv\.lock: already exists \(it holds "holder-\d"\)/);
    let r = await ckv(['get', '--json', 'rv.lock']);
    const held = JSON.parse(r.stdout);
    t.equal(held.value, `holder-${racers.findIndex((x) => x.code === 0)}`);
    // ABA: change the value and back; the old revision no longer matches though the value does.
    r = await ckv(['put', 'rv.lock', 'other']);
    r = await ckv(['put', 'rv.lock', held.value]);
    r = await ckv(['cas', '--rev', String(held.rev), 'rv.lock', 'stolen']);
    t.equal(r.code, 1, 'a stale revision: mismatch');
    r = await ckv(['get', '--json', 'rv.lock']);
    const now = JSON.parse(r.stdout);
    t.equal(now.value, held.value);
    r = await ckv(['cas', '--json', '--rev', String(now.rev), 'rv.lock', 'mine']);
    t.equal(r.code, 0, r.stderr);
    const ack = JSON.parse(r.stdout);
    r = await ckv(['get', '--json', 'rv.lock']);
    t.equal(JSON.parse(r.stdout).rev, ack.index, 'the ack\'s index is the key\'s new revision');
    r = await ckv(['cas', '--rev', '0', 'rv.fresh', 'v']);
    t.equal(r.code, 0, '--rev 0: must be absent');
    r = await ckv(['cas', '--rev', String(ack.index), '--delete', 'rv.lock']);
    t.equal(r.code, 0, r.stderr);
    t.equal((await ckv(['get', 'rv.lock'])).code, 1, 'deleted at its revision');
    t.equal((await ckv(['cas', '--rev', 'x', 'rv.lock', 'v'])).code, 2, 'a revision that is not a number: usage error');
    t.equal((await ckv(['cas', '--rev', '1', '--absent', 'rv.lock', 'v'])).code, 2, '--rev with --absent: usage error');

    // del --prefix: one entry, one event per key, nothing outside the prefix.
    r = await ckv(['batch', JSON.stringify([{ op: 'put', key: 'tmp.a', value: '1' }, { op: 'put', key: 'tmp.b.c', value: '2' }, { op: 'put', key: 'tmpx', value: 'kept' }, { op: 'create', key: 'tmp.d', value: '3' }])]);
    t.equal(r.code, 0, r.stderr);
    const sub = nc.subscribe('ckv.one.ev.tmp.>', { max: 3 });
    const events = (async () => {
      const got: any[] = [];
      for await (const m of sub) got.push(JSON.parse(dec.decode(m.data)));
      return got;
    })();
    await nc.flush();
    r = await ckv(['del', '--prefix', '--json', 'tmp.']);
    t.equal(r.code, 0, r.stderr);
    const del = JSON.parse(r.stdout);
    const evs = await events;
    t.same(evs.map((e) => [e.op, e.key, e.index]), [['del', 'tmp.a', del.index], ['del', 'tmp.b.c', del.index], ['del', 'tmp.d', del.index]], 'one del event per key, all at the one entry');
    r = await ckv(['list', '--keys', 'tmp']);
    t.equal(r.stdout.trim(), 'tmpx', 'only the key outside the prefix is left');
    r = await ckv(['del', '--prefix', 'a..b']);
    t.equal(r.code, 2, 'a bad prefix: usage error');
    const raw = await req(nc, W, { op: 'delprefix', rid: 'dp-1' });
    t.equal(raw.error.code, 'BAD_REQUEST', 'a prefix delete must say its prefix');
  });

  await t.test('bytes: --file and stdin of any bytes, get prints them back, b64 on the wire, bad base64 refused', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'ckv-bytes-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const bytes = Buffer.from([0, 1, 2, 0xff, 0xfe, 0x80, 10, 13, 0]);
    const file = join(dir, 'blob.bin');
    writeFileSync(file, bytes);
    let r = await ckv(['put', 'bin.a', '--file', file]);
    t.equal(r.code, 0, r.stderr);
    r = await ckv(['get', '--json', 'bin.a']);
    const got = JSON.parse(r.stdout);
    t.equal(got.b64, true, 'a value that is not UTF-8 is stored as bytes');
    t.equal(got.value, bytes.toString('base64'));
    const raw = await new Promise<Buffer>((resolve, reject) =>
      execFile(process.execPath, [CLI_JS, '--nats', c.nats.url, '--cluster', 'one', '--session', session, 'get', 'bin.a'], { encoding: 'buffer' }, (err, out) => (err ? reject(err) : resolve(out))),
    );
    t.same(raw, bytes, 'ckv get prints the exact bytes');
    r = await ckv(['put', 'bin.text', '--file', join(dir, 'nope')]);
    t.equal(r.code, 2, 'a missing file is a usage error');
    writeFileSync(join(dir, 'text.txt'), 'héllo\n');
    r = await ckv(['create', 'bin.text', '--file', join(dir, 'text.txt')]);
    t.equal(r.code, 0, r.stderr);
    r = await ckv(['get', '--json', 'bin.text']);
    t.same([JSON.parse(r.stdout).value, JSON.parse(r.stdout).b64], ['héllo\n', undefined], 'UTF-8 from a file stays text');
    r = await ckv(['mget', 'bin.a', 'bin.text']);
    t.equal(r.stdout, `bin.a\tb64:${bytes.toString('base64')}\nbin.text\th\u00e9llo\\n\n`, 'one-line output marks bytes');
    // cas by value compares bytes with bytes: the wire's b64 covers expect and value.
    const rev = got.rev as number;
    let w = await req(nc, W, { op: 'cas', key: 'bin.a', expect: bytes.toString('base64'), value: 'AAE=', rid: 'b1' });
    t.equal(w.error?.code, 'CAS_MISMATCH', 'a text expect never equals bytes');
    w = await req(nc, W, { op: 'cas', key: 'bin.a', expect: bytes.toString('base64'), value: 'AAE=', b64: true, rid: 'b2' });
    t.equal(w.ok, true, JSON.stringify(w));
    const ev = await req(nc, R, { op: 'replay', from: rev + 1, key: 'bin.a' });
    t.same(ev.events.map((e: any) => [e.value, e.b64]), [['AAE=', true]], 'the change event carries b64');
    for (const [body, re] of [
      [{ op: 'put', key: 'bin.b', value: 'AA', b64: true }, /base64/],
      [{ op: 'put', key: 'bin.b', value: 'AB==', b64: true }, /base64/],
      [{ op: 'put', key: 'bin.b', value: 'a b=', b64: true }, /base64/],
      [{ op: 'put', key: 'bin.b', value: 'AAE=', b64: 'yes' }, /b64 must be true/],
      [{ op: 'put', key: 'bin.b', value: 'x'.repeat(256 * 1024 + 4), b64: true }, /VALUE_BYTES_MAX|base64/],
    ] as const) {
      const bad = await req(nc, W, { ...body, rid: `bad${Math.random()}` });
      t.equal(bad.ok, false);
      t.match(bad.error.message, re, JSON.stringify(body).slice(0, 80));
    }
    r = await ckv(['get', 'bin.b']);
    t.equal(r.code, 1, 'nothing was written');
  });

  await t.test('leases: keys go with their lease, by revoke or by expiry (never before its ttl); kept alive they stay', async (t) => {
    const json = async (args: string[]) => {
      const r = await ckv(['--json', ...args]);
      t.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      return JSON.parse(r.stdout);
    };
    // Revoke: the lease and its keys, at once.
    const a = (await json(['lease', 'grant', '30s'])).id as number;
    t.ok(a > 0);
    await json(['put', '--lease', String(a), 'svc.a', '1']);
    await json(['create', '--lease', String(a), 'svc.b', '2']);
    t.equal((await json(['get', 'svc.a'])).value, '1');
    t.match((await ckv(['lease', 'list'])).stdout, new RegExp(`^${a}\\t30000$`, 'm'));
    await json(['lease', 'revoke', String(a)]);
    t.equal((await ckv(['get', 'svc.a'])).code, 1, 'revoked: its keys are gone');
    t.equal((await ckv(['get', 'svc.b'])).code, 1);
    let r = await ckv(['lease', 'keepalive', String(a)]);
    t.equal(r.code, 1, 'a revoked lease cannot be kept alive');
    t.match(r.stderr, /LEASE_NOT_FOUND|does not exist/);
    r = await ckv(['put', '--lease', String(a), 'svc.c', '3']);
    t.equal(r.code, 1, 'nor can a key be attached to it');
    t.equal((await ckv(['get', 'svc.c'])).code, 1, 'and nothing was written');
    t.equal((await ckv(['lease', 'revoke', String(a)])).code, 0, 'revoking it again is no error');
    r = await ckv(['put', '_lease.1', 'forged']);
    t.equal(r.code, 2, 'a lease record cannot be written as a key');
    r = await ckv(['put', '--lease', '5', '--ttl', '1s', 'svc.d', '4']);
    t.equal(r.code, 2, 'a lease or a ttl, not both');

    // Expiry: kept alive it stays past its ttl; left alone it goes, never before its ttl.
    const TTL = 1200;
    const b = (await json(['lease', 'grant', `${TTL}ms`])).id as number;
    await json(['put', '--lease', String(b), 'svc.e', '5']);
    const keepUntil = Date.now() + 2 * TTL;
    let lastSent = Date.now();
    while (Date.now() < keepUntil) {
      lastSent = Date.now();
      await json(['lease', 'keepalive', String(b)]);
      await new Promise((res) => setTimeout(res, TTL / 4));
    }
    t.equal((await json(['get', 'svc.e'])).value, '5', 'kept alive beyond twice its ttl');
    let goneAt = 0;
    const deadline = Date.now() + 10 * TTL;
    while (Date.now() < deadline) {
      if ((await ckv(['get', 'svc.e'])).code === 1) {
        goneAt = Date.now();
        break;
      }
    }
    t.ok(goneAt > 0, 'left alone, the lease expired and took its key');
    t.ok(goneAt - lastSent >= TTL, `not before its ttl: gone ${goneAt - lastSent} ms after the last keepalive was sent (ttl ${TTL})`);
    t.equal((await ckv(['lease', 'keepalive', String(b)])).code, 1, 'an expired lease is gone');
    t.notMatch((await ckv(['lease', 'list'])).stdout, new RegExp(`^${b}\\t`, 'm'));
  });

  await t.test('client.lease(): kept alive while held, its keys go with revoke(); lost says so when it is revoked elsewhere', async (t) => {
    const lib = await Client.connect({ servers: c.nats.url, cluster: 'one' });
    t.teardown(() => lib.close());
    const lease = await lib.lease(1000);
    await lib.put('lib.a', 'x', { lease: lease.id });
    t.same((await lib.leases()).map((l) => l.id).includes(lease.id), true, 'listed');
    await new Promise((res) => setTimeout(res, 2500));
    t.equal((await lib.get('lib.a'))?.lease, lease.id, 'still there after 2.5 ttls: kept alive');
    await lease.revoke();
    t.equal(await lib.get('lib.a'), null, 'revoked with its key');
    const other = await lib.lease(1000);
    await lib.revoke(other.id);
    const why = await Promise.race([other.lost, new Promise<null>((res) => setTimeout(() => res(null), 3000))]);
    t.equal(why?.code, 'LEASE_NOT_FOUND', 'revoked elsewhere: lost, with the reason');
    other.stop();
  });

  await t.test('ckv run: a file of operations in order, one reply per line; a bad line runs nothing', async (t) => {
    const script = ['# a comment', 'put,run.a,1', 'put,run.b,x,y', 'get,run.b', '', 'get,run.none', '{"op":"cas","key":"run.a","expect":"1","value":"2"}', '{"op":"create","key":"run.a","value":"3"}', '{"op":"mget","keys":["run.a","run.b"]}', 'del,run.a', 'get,run.a'].join('\n');
    let r = await c.ckv(['--no-session', 'run', '-'], { input: script });
    t.equal(r.code, 1, 'not found and a failed create are results: exit 1 at the end');
    const replies = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    t.equal(replies.length, 9, 'one reply per request line');
    t.same(replies.map((x) => x.ok), [true, true, true, false, true, false, true, true, false]);
    t.equal(replies[2].value, 'x,y', 'a value keeps its commas');
    t.equal(replies[3].error.code, 'NOT_FOUND');
    t.equal(replies[5].error.code, 'CAS_MISMATCH');
    t.equal(replies[5].current, '2', 'the failed create says what the key holds');
    t.same(replies[6].values.map((v: any) => v.value), ['2', 'x,y']);
    t.ok(replies.every((x, i) => i === 0 || x.ts >= replies[i - 1].ts), 'each line reads at least what the one before wrote');
    // A bad line anywhere: a usage error naming it, and nothing runs.
    r = await c.ckv(['--no-session', 'run', '-'], { input: 'put,run.c,1\nfrobnicate,x\n' });
    t.equal(r.code, 2);
    t.match(r.stderr, /run line 2/);
    r = await c.ckv(['--no-session', 'run', '-'], { input: 'put,run.c,1\n{"op":"put","key":"a..b","value":"x"}\n' });
    t.equal(r.code, 2);
    t.match(r.stderr, /run line 2: .*dot/);
    r = await c.ckv(['--no-session', 'get', 'run.c']);
    t.equal(r.code, 1, 'the good line before a bad one did not run');
    r = await c.ckv(['--no-session', 'run', '-'], { input: '{"op":"status"}\n' });
    t.equal(r.code, 2, 'admin requests are not for run');
  });

  await t.test('SIGKILL during a stream of writes loses no acknowledged write', async (t) => {
    const acked: string[] = [];
    let stop = false;
    let seq = 0;
    const writers = Array.from({ length: 8 }, async () => {
      while (!stop) {
        const k = `dur.${seq++}`;
        try {
          const r = await req(nc, W, { op: 'put', key: k, value: k, rid: `dur-${k}`, timeout: 1000 });
          if (r.ok) acked.push(k);
        } catch {
          // the server died: this write is not acknowledged
        }
      }
    });
    await c.waitFor('200 acknowledged writes', async () => (acked.length >= 200 ? true : undefined));
    await c.kill(1, 'SIGKILL');
    stop = true;
    await Promise.all(writers);
    c.startNode(1);
    await c.waitForCoordinator();
    const missing: string[] = [];
    for (let i = 0; i < acked.length; i += 500) {
      const keys = acked.slice(i, i + 500);
      const r = await req(nc, R, { op: 'mget', keys });
      r.values.forEach((v: any, j: number) => {
        if (!v || v.value !== keys[j]) missing.push(keys[j]!);
      });
    }
    t.same(missing, [], `all ${acked.length} acknowledged writes survive SIGKILL`);
  });

  await t.test('SIGTERM checkpoints and exits 0; the state survives', async (t) => {
    const p = c.procs.get(1)!;
    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    p.kill('SIGTERM');
    t.equal(await exited, 0);
    c.startNode(1);
    await c.waitForCoordinator();
    const g = await req(nc, R, { op: 'get', key: 'app.color' });
    t.equal(g.value, 'green');
  });
});

t.test('a checkpoint starts once enough records changed, before the cron', async (t) => {
  // The cron fires once a year: only the dirty-records trigger can checkpoint here.
  const c = new Cluster(1, { cluster: 'dirty', extraArgs: ['--checkpoint-cron', '0 0 0 1 1 *'] });
  await c.start();
  t.teardown(() => c.stop());
  await c.waitForCoordinator();
  const nc = await connect({ servers: c.nats.url });
  t.teardown(() => nc.close());
  const status = async (): Promise<{ checkpoint: number; applied: number }> => (await req(nc, 'ckv.dirty.admin', { op: 'status' })).status;
  t.equal((await status()).checkpoint, 0, 'no checkpoint yet');
  // 3,000 keys in batches of 100: more than CHECKPOINT_DIRTY_RECORDS_TRIGGER (2048) records.
  for (let b = 0; b < 30; b++) {
    const ops = Array.from({ length: 100 }, (_, i) => ({ op: 'put', key: `d.${b}.${i}`, value: 'x' }));
    const r = await req(nc, 'ckv.dirty.write', { op: 'batch', ops });
    t.ok(r.ok, JSON.stringify(r.error));
  }
  const deadline = Date.now() + 10_000;
  let s = await status();
  while (s.checkpoint === 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    s = await status();
  }
  t.ok(s.checkpoint > 0, `checkpointed at ${s.checkpoint} of ${s.applied} without the cron`);
});

t.test('ckv export and import: a round trip; a bad line changes nothing', async (t) => {
  const c = new Cluster(1, { cluster: 'exim' });
  await c.start();
  t.teardown(() => c.stop());
  await c.waitForCoordinator();
  const ckv = (args: string[], input?: string) => c.ckv(['--no-session', ...args], input === undefined ? {} : { input });
  const values: Record<string, string> = { 'e.a': '1', 'e.b': 'two words', 'e.c': 'q"uote\nline', 'e.d': '' };
  for (const [k, v] of Object.entries(values)) t.equal((await ckv(['put', k, '-'], v)).code, 0);
  t.equal((await ckv(['put', 'other.x', 'x'])).code, 0);
  let r = await ckv(['export', 'e.']);
  t.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.same(lines, Object.entries(values).map(([key, value]) => ({ key, value })), 'every key of the prefix, in key order, values exact');
  // Into other keys (from a file), then back (from stdin).
  const dir = mkdtempSync(join(tmpdir(), 'ckv-exim-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const moved = r.stdout.replaceAll('"key":"e.', '"key":"f.');
  writeFileSync(join(dir, 'f.jsonl'), moved);
  r = await ckv(['import', join(dir, 'f.jsonl')]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /imported 4 keys/);
  r = await ckv(['export', 'f.']);
  t.equal(r.stdout, moved, 'the same lines back');
  // Many keys: more than one batch.
  const many = Array.from({ length: 300 }, (_, i) => JSON.stringify({ key: `g.${String(i).padStart(3, '0')}`, value: `v${i}` })).join('\n') + '\n';
  r = await ckv(['import', '--json'], many);
  t.equal(r.code, 0, r.stderr);
  t.equal(JSON.parse(r.stdout).imported, 300);
  r = await ckv(['export', 'g.']);
  t.equal(r.stdout, many);
  // A bad line anywhere: usage error naming it, and nothing written, not even the lines before it.
  for (const [bad, why] of [
    ['{"key":"bad key!","value":"x"}', /line 2: key may contain/],
    ['not json', /line 2: not JSON/],
    ['{"key":"h.b","value":1}', /line 2: expected/],
    ['{"key":"h.b","value":"x","extra":1}', /line 2: expected/],
  ] as const) {
    r = await ckv(['import'], `{"key":"h.a","value":"1"}\n${bad}\n`);
    t.equal(r.code, 2, `${bad}: usage error`);
    t.match(r.stderr, why);
    t.equal((await ckv(['get', 'h.a'])).code, 1, `${bad}: h.a not written`);
  }
  r = await ckv(['import', join(dir, 'none.jsonl')]);
  t.equal(r.code, 2);
  t.match(r.stderr, /cannot read .*ENOENT/);
});
