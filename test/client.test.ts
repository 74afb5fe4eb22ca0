// The client library, the session file and the one-shot CLI, against a real
// nats-server and a scripted fake ckv server (the real server is tested end to
// end elsewhere). The CLI tests run the compiled dist/ (npm test builds first).

import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect, type NatsConnection, type Msg } from '@nats-io/transport-node';
import { startNatsServer, type NatsServer } from './helpers/nats-server.js';
import { CasMismatchError, CkvError, Client, natsTransport } from '../src/client/client.js';
import { defaultSessionPath, readSession, readToken, saveToken } from '../src/client/session.js';
import type { ChangeEvent, NodeStatus } from '../src/core/wire.js';

const ROOT = resolve(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..');
const CLI = join(ROOT, 'dist', 'src', 'client', 'cli.js');
const SESSION_JS = join(ROOT, 'dist', 'src', 'client', 'session.js');

const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

function run(cmd: string, args: string[], opts: { env?: Record<string, string | undefined>; input?: string | Buffer } = {}): Promise<RunResult> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...opts.env })) if (v !== undefined) env[k] = v;
  const start = performance.now();
  return new Promise((resolvePromise, reject) => {
    const p = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolvePromise({ code, stdout, stderr, ms: performance.now() - start }));
    p.stdin.end(opts.input ?? '');
  });
}

// ---------------------------------------------------------------------------
// A scripted fake server: one handler per subject kind, swapped by each test.

type Handler = (req: Record<string, unknown>, msg: Msg) => unknown;

interface Fake {
  nc: NatsConnection;
  on: { read?: Handler; write?: Handler; admin?: Handler };
  /** Every request seen, by subject kind. */
  seen: { read: Record<string, unknown>[]; write: Record<string, unknown>[]; admin: Record<string, unknown>[] };
  reset(): void;
  publishEvent(cluster: string, e: ChangeEvent): void;
}

async function fakeServer(url: string, cluster: string): Promise<Fake> {
  const nc = await connect({ servers: url });
  const fake: Fake = {
    nc,
    on: {},
    seen: { read: [], write: [], admin: [] },
    reset() {
      this.on = {};
      this.seen = { read: [], write: [], admin: [] };
    },
    publishEvent(c, e) {
      nc.publish(`ckv.${c}.ev.${e.key}`, JSON.stringify(e));
    },
  };
  for (const kind of ['read', 'write', 'admin'] as const) {
    nc.subscribe(`ckv.${cluster}.${kind}`, {
      ...(kind === 'admin' ? {} : { queue: kind }),
      callback: (_err, msg) => {
        const req = JSON.parse(dec.decode(msg.data)) as Record<string, unknown>;
        fake.seen[kind].push(req);
        const h = fake.on[kind];
        if (!h) return;
        const reply = h(req, msg);
        if (reply !== undefined) msg.respond(JSON.stringify(reply));
      },
    });
  }
  await nc.flush();
  return fake;
}

const ok = (ts: number, body: Record<string, unknown> = {}) => ({ ok: true, ts, index: ts, ...body });
const fail = (ts: number, code: string, extra: Record<string, unknown> = {}) => ({ ok: false, ts, error: { code, message: `fake ${code}` }, ...extra });

function nodeStatus(id: number, voters: number[]): NodeStatus {
  return { id, cluster: 'lib', epoch: 1, role: id === 1 ? 'coordinator' : 'follower', coordinator: 1, clock: 9, last: 9, commit: 9, applied: 9, checkpoint: 0, voters, version: 'test', uptimeMs: 1 };
}

let ns: NatsServer;
t.before(async () => {
  ns = await startNatsServer();
});
t.teardown(() => ns?.stop());

// ---------------------------------------------------------------------------
// Session file

t.test('session file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ckv-session-'));

  t.test('default path follows XDG_STATE_HOME, then HOME', async (t) => {
    t.equal(defaultSessionPath({ XDG_STATE_HOME: '/x/state', HOME: '/h' }), '/x/state/ckv/session.json');
    t.equal(defaultSessionPath({ HOME: '/h' }), '/h/.local/state/ckv/session.json');
    t.equal(defaultSessionPath({ XDG_STATE_HOME: 'relative', HOME: '/h' }), '/h/.local/state/ckv/session.json', 'a relative XDG path is ignored, as the spec says');
  });

  t.test('missing file reads as 0; save keeps the max per cluster', async (t) => {
    const path = join(dir, 'a', 'nested', 'session.json');
    t.equal(await readToken(path, 'ckv'), 0);
    await saveToken(path, 'ckv', 10);
    await saveToken(path, 'ckv', 7);
    await saveToken(path, 'other', 3);
    t.equal(await readToken(path, 'ckv'), 10, 'never lowered');
    t.same(JSON.parse(await readFile(path, 'utf8')), { ckv: 10, other: 3 });
    await saveToken(path, '__proto__', 5);
    t.equal(await readToken(path, '__proto__'), 5, 'any valid cluster name is a plain key');
  });

  t.test('a corrupt file is ignored with a warning, then replaced', async (t) => {
    const path = join(dir, 'corrupt.json');
    await writeFile(path, '{"ckv": 12, trailing garbage');
    const warnings: string[] = [];
    t.equal(await readToken(path, 'ckv', (m) => warnings.push(m)), 0);
    t.match(warnings[0], /corrupt/);
    await writeFile(path, '[1,2]');
    t.equal(await readToken(path, 'ckv', (m) => warnings.push(m)), 0);
    await writeFile(path, '{"ckv":"x","b":4}');
    t.same({ ...(await readSession(path, (m) => warnings.push(m))) }, { b: 4 }, 'bad entries dropped, good ones kept');
    await saveToken(path, 'ckv', 5, (m) => warnings.push(m));
    t.equal(await readToken(path, 'ckv'), 5);
    t.equal(await readToken(path, 'b'), 4);
  });

  t.test('concurrent writers in separate processes keep the maximum', async (t) => {
    const path = join(dir, 'shared', 'session.json');
    const procs = 8;
    const perProc = 40;
    // Process i writes i, i+procs, ... in a shuffled order, into two clusters.
    const script = `
      import { saveToken } from ${JSON.stringify(SESSION_JS)};
      const [i, n, per, path] = process.argv.slice(1).map((x, k) => k < 3 ? Number(x) : x);
      const vals = Array.from({ length: per }, (_, k) => i + k * n).sort(() => Math.random() - 0.5);
      for (const v of vals) {
        await saveToken(path, 'c1', v, (m) => console.error(m));
        await saveToken(path, 'c2', 1000000 - v, (m) => console.error(m));
      }`;
    const results = await Promise.all(
      Array.from({ length: procs }, (_, i) => run(process.execPath, ['--input-type=module', '-e', script, String(i), String(procs), String(perProc), path])),
    );
    for (const r of results) t.equal(r.code, 0, r.stderr);
    t.equal(results.map((r) => r.stderr).join(''), '', 'no warnings');
    t.equal(await readToken(path, 'c1'), procs * perProc - 1, 'the largest token of any writer');
    t.equal(await readToken(path, 'c2'), 1000000, 'each cluster its own maximum');
    t.same((await readdir(join(dir, 'shared'))).sort(), ['session.json'], 'no temp or lock file left behind');
  });
});

// ---------------------------------------------------------------------------
// Client library against the fake server

t.test('client library', async (t) => {
  const fake = await fakeServer(ns.url, 'lib');
  t.teardown(() => fake.nc.close());
  const clients: Client[] = [];
  const client = async (opts: { timeout?: number; after?: number } = {}) => {
    const c = await Client.connect({ servers: ns.url, cluster: 'lib', ...opts });
    clients.push(c);
    return c;
  };
  t.teardown(async () => {
    for (const c of clients) await c.close();
  });
  t.beforeEach(() => fake.reset());

  t.test('UNAVAILABLE twice, then ok: retried with the same rid and the token', async (t) => {
    const c = await client({ after: 4 });
    let n = 0;
    fake.on.write = () => (++n <= 2 ? fail(4, 'UNAVAILABLE') : ok(20));
    const ack = await c.put('a.b', 'v');
    t.same(ack, { index: 20, ts: 20 });
    t.equal(fake.seen.write.length, 3);
    const rids = fake.seen.write.map((r) => r.rid);
    t.type(rids[0], 'string');
    t.ok((rids[0] as string).length >= 22 && (rids[0] as string).length <= 64, 'a 128-bit id within RID_BYTES_MAX');
    t.same(new Set(rids).size, 1, 'every retry carries the same rid');
    t.ok(fake.seen.write.every((r) => r.after === 4 && r.op === 'put' && r.key === 'a.b' && r.value === 'v'));
    t.ok(fake.seen.write.every((r) => typeof r.timeout === 'number' && (r.timeout as number) > 0 && (r.timeout as number) <= 5000));
    t.equal(c.token, 20);
    await c.put('a.b', 'w');
    t.not(fake.seen.write[3]!.rid, rids[0], 'a new logical write gets a new rid');
    t.equal(fake.seen.write[3]!.after, 20);
  });

  t.test('server TIMEOUT and a NATS timeout are retried with the same rid', async (t) => {
    const c = await client({ timeout: 3000 });
    let n = 0;
    fake.on.write = () => {
      n++;
      if (n === 1) return fail(1, 'TIMEOUT');
      if (n === 2) return undefined; // no reply at all: the client's attempt times out
      return ok(30);
    };
    const t0 = Date.now();
    await c.del('k');
    t.ok(Date.now() - t0 < 3000, 'within the budget');
    t.equal(fake.seen.write.length, 3);
    t.equal(new Set(fake.seen.write.map((r) => r.rid)).size, 1);
  });

  t.test('no responders: retried until the budget ends, then UNAVAILABLE', async (t) => {
    const c = await Client.connect({ servers: ns.url, cluster: 'nobody', timeout: 400 });
    clients.push(c);
    const t0 = Date.now();
    const err = await c.get('k').catch((e: unknown) => e);
    const ms = Date.now() - t0;
    t.type(err, CkvError);
    t.equal((err as CkvError).code, 'UNAVAILABLE');
    t.ok(ms >= 350 && ms < 1500, `gave up after the budget (${ms} ms)`);
  });

  t.test('no responders, then a server appears: the retry reaches it', async (t) => {
    const c = await Client.connect({ servers: ns.url, cluster: 'late', timeout: 3000 });
    clients.push(c);
    let rid: unknown;
    setTimeout(async () => {
      const nc = await connect({ servers: ns.url });
      nc.subscribe('ckv.late.write', {
        callback: (_e, m) => {
          rid = JSON.parse(dec.decode(m.data)).rid;
          m.respond(JSON.stringify(ok(5)));
        },
      });
      t.teardown(() => nc.close());
    }, 200);
    const ack = await c.put('x', '1');
    t.equal(ack.index, 5);
    t.type(rid, 'string');
  });

  t.test('the token is the max of every reply, errors included', async (t) => {
    const c = await client();
    const tss = [5, 3, 9, 2];
    let i = 0;
    fake.on.read = () => ok(tss[i++]!, { value: 'v', rev: 1 });
    for (let k = 0; k < 4; k++) await c.get('k');
    t.equal(c.token, 9);
    t.same(fake.seen.read.map((r) => r.after), [undefined, 5, 5, 9], 'each request carries the token so far');
    fake.on.read = () => fail(12, 'NOT_FOUND');
    t.equal(await c.get('missing'), null, 'a missing key is null, not an error');
    t.equal(c.token, 12);
    c.observe(7);
    t.equal(c.token, 12, 'observe never lowers it');
    c.observe(40);
    t.equal(c.token, 40);
  });

  t.test('final errors are not retried; cas mismatch carries the current value', async (t) => {
    const c = await client();
    fake.on.write = () => fail(3, 'CAS_MISMATCH', { current: 'now', failed: 0 });
    const err = await c.cas('k', 'old', 'new').catch((e: unknown) => e);
    t.type(err, CasMismatchError);
    t.equal((err as CasMismatchError).code, 'CAS_MISMATCH');
    t.equal((err as CasMismatchError).current, 'now');
    t.equal(fake.seen.write.length, 1);
    t.match(fake.seen.write[0], { op: 'cas', key: 'k', expect: 'old', value: 'new' });

    fake.reset();
    fake.on.write = () => fail(3, 'TOKEN_AHEAD');
    const e2 = await c.put('k', 'v').catch((e: unknown) => e);
    t.equal((e2 as CkvError).code, 'TOKEN_AHEAD');
    t.equal(fake.seen.write.length, 1);

    fake.reset();
    fake.on.write = () => fail(3, 'SOMETHING_NEW');
    t.equal(((await c.put('k', 'v').catch((e: unknown) => e)) as CkvError).code, 'INTERNAL', 'an unknown code is INTERNAL');
  });

  t.test('invalid requests fail locally with BAD_REQUEST or TOO_LARGE', async (t) => {
    const c = await client();
    for (const bad of ['', '.a', 'a.', 'a..b', 'a b', 'ä', 'a*', 'a>']) {
      const err = await c.get(bad).catch((e: unknown) => e);
      t.equal((err as CkvError).code, 'BAD_REQUEST', JSON.stringify(bad));
    }
    t.equal(((await c.put('k'.repeat(513), 'v').catch((e: unknown) => e)) as CkvError).code, 'TOO_LARGE');
    t.equal(((await c.put('k', 'v'.repeat(256 * 1024 + 1)).catch((e: unknown) => e)) as CkvError).code, 'TOO_LARGE');
    t.equal(((await c.batch([]).catch((e: unknown) => e)) as CkvError).code, 'BAD_REQUEST');
    t.equal(fake.seen.write.length + fake.seen.read.length, 0, 'nothing was sent');
  });

  t.test('reads: strong goes to the write subject; mget and list shapes', async (t) => {
    const c = await client();
    fake.on.write = (r) => ok(2, { value: `strong:${String(r.key)}`, rev: 2 });
    t.same(await c.get('k', { consistency: 'strong' }), { key: 'k', value: 'strong:k', rev: 2 });
    t.equal(fake.seen.write[0]!.consistency, 'strong');
    fake.on.read = (r) =>
      r.op === 'mget'
        ? ok(3, { values: [{ key: 'a', value: '1', rev: 1 }, null] })
        : ok(3, { items: [{ key: 'p.a', value: '1', rev: 1 }], next: 'p.b' });
    t.same(await c.mget(['a', 'b']), [{ key: 'a', value: '1', rev: 1 }, null]);
    t.same(await c.list('p.', { limit: 1 }), { items: [{ key: 'p.a', value: '1', rev: 1 }], next: 'p.b' });
    t.match(fake.seen.read[1], { op: 'list', prefix: 'p.', limit: 1 });
  });

  t.test('status gathers every server, and stops early once all voters answered', async (t) => {
    const c = await client();
    // A second "server" on the admin subject (not a queue group: both answer).
    const nc2 = await connect({ servers: ns.url });
    t.teardown(() => nc2.close());
    nc2.subscribe('ckv.lib.admin', { callback: (_e, m) => void setTimeout(() => m.respond(JSON.stringify(ok(8, { status: nodeStatus(2, [1, 2]) }))), 20) });
    await nc2.flush();
    fake.on.admin = () => ok(9, { status: nodeStatus(1, [1, 2]) });
    let t0 = Date.now();
    let st = await c.status();
    t.same(st.map((s) => s.id), [1, 2]);
    t.ok(Date.now() - t0 < 250, `no waiting for the window when every voter answered (${Date.now() - t0} ms)`);
    t.equal(c.token, 9);

    fake.on.admin = () => ok(9, { status: nodeStatus(1, [1, 2, 3]) });
    t0 = Date.now();
    st = await c.status();
    const ms = Date.now() - t0;
    t.same(st.map((s) => s.id), [1, 2], 'voter 3 is silent');
    t.ok(ms >= 280 && ms < 1000, `waited for the window (${ms} ms)`);
  });

  t.test('status with nobody listening is UNAVAILABLE', async (t) => {
    const c = await Client.connect({ servers: ns.url, cluster: 'nobody2', timeout: 300 });
    clients.push(c);
    t.equal(((await c.status().catch((e: unknown) => e)) as CkvError).code, 'UNAVAILABLE');
  });

  t.test('a transport can be injected; close() leaves a caller-owned one open', async (t) => {
    const nc = await connect({ servers: ns.url });
    const c = new Client(natsTransport(nc), { cluster: 'lib' });
    fake.on.read = () => ok(1, { value: 'x', rev: 1 });
    t.same(await c.get('k'), { key: 'k', value: 'x', rev: 1 });
    await c.close();
    t.equal(nc.isClosed(), false);
    t.equal(((await c.get('k').catch((e: unknown) => e)) as CkvError).code, 'UNAVAILABLE', 'a closed client refuses');
    await nc.close();
  });
});

// ---------------------------------------------------------------------------
// Watch: replay, live dedupe, gap fill

/** A log of events with prev links, as a server would keep it. */
function eventLog(specs: [index: number, key: string, op?: 'put' | 'del'][]): ChangeEvent[] {
  const out: ChangeEvent[] = [];
  let prevIndex = 0;
  let lastIndex = 0;
  for (const [index, key, op = 'put'] of specs) {
    if (index !== lastIndex) {
      prevIndex = lastIndex;
      lastIndex = index;
    }
    out.push({ index, ts: 100 + index, op, key, ...(op === 'put' ? { value: `v${index}` } : {}), prev: prevIndex });
  }
  return out;
}

async function take(it: AsyncIterator<ChangeEvent>, n: number, ms = 3000): Promise<ChangeEvent[]> {
  const got: ChangeEvent[] = [];
  const deadline = Date.now() + ms;
  while (got.length < n) {
    const r = await Promise.race([it.next(), sleep(Math.max(0, deadline - Date.now())).then(() => 'timeout' as const)]);
    if (r === 'timeout') throw new Error(`timed out after ${got.length} events: ${JSON.stringify(got.map((e) => [e.index, e.key]))}`);
    if (r.done) break;
    got.push(r.value);
  }
  return got;
}

t.test('watch', async (t) => {
  const fake = await fakeServer(ns.url, 'w');
  t.teardown(() => fake.nc.close());
  const c = await Client.connect({ servers: ns.url, cluster: 'w', timeout: 2000 });
  t.teardown(() => c.close());
  t.beforeEach(() => fake.reset());

  // The log: 1..5, a batch at 6 (two keys), 7, 8 (users.b), 9.
  const log = eventLog([
    [1, 'a'],
    [2, 'users.a'],
    [3, 'b'],
    [4, 'users.b', 'del'],
    [5, 'c'],
    [6, 'users.c'],
    [6, 'd'],
    [7, 'e'],
    [8, 'users.b'],
    [9, 'f'],
  ]);
  /** What the fake server has applied (and can replay). */
  let applied = 9;
  /** Replay in small pages (2 events), as a server with a lower cap might. */
  const replayHandler = (pageMax = 2) => (r: Record<string, unknown>) => {
    if (r.op !== 'replay') return fail(0, 'BAD_REQUEST');
    const from = r.from as number;
    return ok(100 + applied, { index: applied, events: log.filter((e) => e.index >= from && e.index <= applied).slice(0, pageMax) });
  };
  t.afterEach(() => sleep(100)); // let a stopped watch's last replay land before the next test's reset
  const key = (e: ChangeEvent) => `${e.index}:${e.key}`;

  t.test('replay from an index, then live: no gap, no duplicate, gaps filled', async (t) => {
    let replays = 0;
    const handler = replayHandler();
    fake.on.read = (r) => {
      replays++;
      return handler(r);
    };
    applied = 5;
    const w = c.watch('', { from: 3 });
    const first = await take(w, 3);
    t.same(first.map(key), ['3:b', '4:users.b', '5:c']);
    const replaysBefore = replays;
    applied = 9; // the server goes on; its events arrive live
    for (const e of log.filter((e) => e.index >= 5 && e.index <= 6)) fake.publishEvent('w', e); // 5 is a duplicate
    // 7 is lost on the wire; 8 arrives and its prev (7) shows the gap.
    fake.publishEvent('w', log.find((e) => e.index === 8)!);
    fake.publishEvent('w', log.find((e) => e.index === 8)!); // a duplicate
    fake.publishEvent('w', log.find((e) => e.index === 9)!);
    const rest = await take(w, 5);
    t.same(rest.map(key), ['6:users.c', '6:d', '7:e', '8:users.b', '9:f'], 'the batch at 6 was cut by a replay page: both keys, once');
    t.same([...first, ...rest].map(key), log.filter((e) => e.index >= 3).map(key), 'exactly the log from 3, in order, once');
    t.ok(fake.seen.read.every((r) => r.op === 'replay'));
    t.ok(replaysBefore >= 2, 'the first replay was paged');
    t.ok(fake.seen.read.slice(replaysBefore).some((r) => (r.from as number) <= 7), 'the gap at 7 was filled by replay');
    t.ok(c.token >= 109, 'events advance the token');
    w.stop();
    t.same(await w.next(), { value: undefined, done: true });
  });

  t.test('a prefix watch sees only its keys, and fills its gaps from replay', async (t) => {
    fake.on.read = replayHandler(1000);
    const w = c.watch('users.');
    await sleep(50); // subscribed
    fake.publishEvent('w', log.find((e) => e.index === 2)!);
    // 4 and 6 are lost; 8 shows the gap (its prev is 7 > 2).
    fake.publishEvent('w', log.find((e) => e.index === 8)!);
    fake.publishEvent('w', log.find((e) => e.key === 'd')!); // another subject: not delivered to us anyway
    const got = await take(w, 4);
    t.same(got.map(key), ['2:users.a', '4:users.b', '6:users.c', '8:users.b']);
    t.match(fake.seen.read[0], { op: 'replay', from: 2 }, 'from the last index seen (it may have been a partial batch)');
    await w.return!();
  });

  t.test('an exact-key watch subscribes to that key only', async (t) => {
    fake.on.read = replayHandler(1000);
    const w = c.watch('users.b', { from: 1 });
    const got = await take(w, 2);
    t.same(got.map(key), ['4:users.b', '8:users.b']);
    w.stop();
  });

  t.test('a replay that hits COMPACTED ends the iterator with that error', async (t) => {
    fake.on.read = () => fail(5, 'COMPACTED');
    const w = c.watch('', { from: 1 });
    const err = await w.next().catch((e: unknown) => e);
    t.type(err, CkvError);
    t.equal((err as CkvError).code, 'COMPACTED');
    t.same(await w.next(), { value: undefined, done: true });
  });

  t.test('for-await and close() end watches', async (t) => {
    const c2 = await Client.connect({ servers: ns.url, cluster: 'w' });
    const w = c2.watch('x');
    const done = (async () => {
      const seen: ChangeEvent[] = [];
      for await (const e of w) seen.push(e);
      return seen;
    })();
    await sleep(50);
    fake.publishEvent('w', { index: 20, ts: 120, op: 'put', key: 'x', value: '1', prev: 0 });
    await sleep(50);
    await c2.close();
    t.same((await done).map(key), ['20:x']);
  });

  t.test('bad targets are rejected', async (t) => {
    t.throws(() => c.watch('a..b'), { code: 'BAD_REQUEST' });
    t.throws(() => c.watch('.'), { code: 'BAD_REQUEST' });
    t.throws(() => c.watch('a', { from: -1 }), { code: 'BAD_REQUEST' });
  });
});

// ---------------------------------------------------------------------------
// The CLI

t.test('cli', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ckv-cli-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const session = join(dir, 'session.json');
  // No NATS on this port: usage errors must be found before connecting.
  const deadEnv = { CKV_NATS: 'nats://127.0.0.1:1', CKV_SESSION: session, CKV_AFTER: undefined, CKV_CLUSTER: undefined };
  const cli = (args: string[], env: Record<string, string | undefined> = deadEnv, input?: string | Buffer) => run(process.execPath, [CLI, ...args], { env, ...(input !== undefined ? { input } : {}) });

  t.test('usage errors exit 2 without touching the network', async (t) => {
    const cases: [string[], RegExp][] = [
      [[], /no command/],
      [['frobnicate'], /unknown command/],
      [['get'], /usage: ckv get KEY/],
      [['get', 'a', 'b'], /usage/],
      [['get', 'a..b'], /dot/],
      [['get', '.a'], /dot/],
      [['get', 'a b'], /letters, digits/],
      [['get', 'k'.repeat(513)], /KEY_BYTES_MAX/],
      [['put', 'k'], /usage/],
      [['put', 'k', '-5'], /--/],
      [['get', 'k', '--bogus'], /Unknown option/],
      [['get', 'k', '--limit', '3'], /--limit does not apply to get/],
      [['put', 'k', 'v', '--strong'], /--strong does not apply/],
      [['list', 'p', '--limit', 'x'], /--limit must be/],
      [['list', 'p', '--limit', '0'], /limit/],
      [['cas', 'k', 'v'], /usage: ckv cas/],
      [['cas', '--absent', 'k', 'old', 'new'], /usage/],
      [['cas', '--absent', '--delete', 'k', 'x'], /usage/],
      [['mget'], /usage/],
      [['batch', '{'], /not valid JSON/],
      [['batch', '{}'], /JSON array/],
      [['batch', '[{"op":"put","key":"a..b","value":"1"}]'], /dot/],
      [['watch', 'a', 'b'], /usage/],
      [['watch', '--from', '-1'], /./],
      [['get', 'k', '--after', 'abc'], /--after must be/],
      [['get', 'k', '--timeout', '0'], /timeout/],
      [['get', 'k', '--cluster', 'a.b'], /cluster name/],
      [['get', 'k', '--no-session', '--session', 'x'], /contradict/],
    ];
    for (const [args, re] of cases) {
      const r = await cli(args);
      t.equal(r.code, 2, `ckv ${args.join(' ')}: ${r.stderr}`);
      t.match(r.stderr, re, `ckv ${args.join(' ')}`);
    }
    const r = await cli(['get', 'k'], { ...deadEnv, CKV_AFTER: 'x' });
    t.equal(r.code, 2);
    t.match(r.stderr, /CKV_AFTER/);
    const big = await cli(['put', 'k', '-'], deadEnv, Buffer.alloc(256 * 1024 + 1, 0x61));
    t.equal(big.code, 2);
    t.match(big.stderr, /VALUE_BYTES_MAX/);
    const latin1 = await cli(['put', 'k', '-'], deadEnv, Buffer.from([0xff, 0xfe]));
    t.equal(latin1.code, 2);
    t.match(latin1.stderr, /UTF-8/);
    const twoStdin = await cli(['cas', 'k', '-', '-'], deadEnv, 'x');
    t.equal(twoStdin.code, 2);
  });

  t.test('help for ckv and for every command', async (t) => {
    for (const args of [['--help'], ['-h'], ['help']]) {
      const r = await cli(args);
      t.equal(r.code, 0);
      t.match(r.stdout, /Usage: ckv/);
      t.match(r.stdout, /Exit status/);
    }
    for (const cmd of ['get', 'put', 'del', 'cas', 'mget', 'list', 'batch', 'watch', 'status']) {
      const a = await cli([cmd, '--help']);
      const b = await cli(['help', cmd]);
      t.equal(a.code, 0, cmd);
      t.match(a.stdout, new RegExp(`Usage: ckv \\[flags\\] ${cmd}`));
      t.equal(a.stdout, b.stdout);
    }
  });

  t.test('NATS down: exit 3', async (t) => {
    const r = await cli(['get', 'k']);
    t.equal(r.code, 3);
    t.match(r.stderr, /UNAVAILABLE: cannot connect to NATS/);
  });

  t.test('against a fake server', async (t) => {
    const fake = await fakeServer(ns.url, 'cli');
    t.teardown(() => fake.nc.close());
    const env = { CKV_NATS: ns.url, CKV_CLUSTER: 'cli', CKV_SESSION: session, CKV_AFTER: undefined };
    const store = new Map<string, string>();
    let ts = 100;
    const handle = (r: Record<string, unknown>) => {
      switch (r.op) {
        case 'put':
          store.set(r.key as string, r.value as string);
          return ok(++ts);
        case 'del':
          return store.delete(r.key as string) ? ok(++ts) : fail(ts, 'NOT_FOUND');
        case 'cas': {
          const cur = store.get(r.key as string) ?? null;
          if (cur !== r.expect) return fail(ts, 'CAS_MISMATCH', { current: cur, failed: 0 });
          if (r.value === null) store.delete(r.key as string);
          else store.set(r.key as string, r.value as string);
          return ok(++ts);
        }
        case 'get':
          return store.has(r.key as string) ? ok(ts, { value: store.get(r.key as string), rev: 1 }) : fail(ts, 'NOT_FOUND');
        case 'mget':
          return ok(ts, { values: (r.keys as string[]).map((k) => (store.has(k) ? { key: k, value: store.get(k), rev: 1 } : null)) });
        case 'list': {
          const keys = [...store.keys()].filter((k) => k.startsWith(r.prefix as string) && (!r.start || k >= (r.start as string))).sort();
          const page = keys.slice(0, r.limit as number);
          return ok(ts, { items: page.map((k) => ({ key: k, value: store.get(k), rev: 1 })), next: keys[r.limit as number] ?? null });
        }
        case 'batch':
          for (const op of r.ops as Record<string, string>[]) if (op.op === 'put') store.set(op.key!, op.value!);
          return ok(++ts);
        case 'status':
          return ok(ts, { status: nodeStatus(1, [1]) });
        default:
          return fail(ts, 'BAD_REQUEST');
      }
    };
    fake.on.read = handle;
    fake.on.write = handle;
    fake.on.admin = handle;

    let r = await cli(['put', 'cfg.a', 'hello'], env);
    t.equal(r.code, 0, r.stderr);
    t.equal(r.stdout, '');
    t.same(JSON.parse(await readFile(session, 'utf8')), { cli: 101 }, 'the session file keeps the token');

    r = await cli(['get', 'cfg.a'], env);
    t.equal(r.stdout, 'hello', 'exact bytes: no newline when stdout is not a terminal');
    t.equal(fake.seen.read.at(-1)!.after, 101, 'the next process reads after the token');

    r = await cli(['put', 'multi', '-'], env, 'a\nb\tc\\');
    t.equal(r.code, 0);
    t.equal((await cli(['get', 'multi'], env)).stdout, 'a\nb\tc\\');
    t.equal((await cli(['mget', 'cfg.a', 'multi', 'nope'], env)).stdout, 'cfg.a\thello\nmulti\ta\\nb\\tc\\\\\n');
    t.equal((await cli(['mget', 'cfg.a', 'nope'], env)).code, 1);

    r = await cli(['get', 'nope'], env);
    t.equal(r.code, 1);
    t.match(r.stderr, /nope: not found/);
    r = await cli(['get', 'nope', '--json'], env);
    t.equal(r.code, 1);
    t.same(JSON.parse(r.stdout), { key: 'nope', value: null, ts: 102 });

    r = await cli(['cas', 'cfg.a', 'wrong', 'x'], env);
    t.equal(r.code, 1);
    t.match(r.stderr, /cas mismatch.*"hello"/);
    t.equal((await cli(['cas', 'cfg.a', 'hello', 'x'], env)).code, 0);
    t.equal((await cli(['cas', '--absent', 'fresh', 'y'], env)).code, 0);
    t.equal((await cli(['cas', '--delete', 'fresh', 'y'], env)).code, 0);
    t.equal(fake.seen.write.at(-1)!.value, null);
    t.equal((await cli(['del', 'fresh'], env)).code, 1, 'del of a missing key: not found, if the server says so');

    r = await cli(['list', 'cfg.', '--json'], env);
    t.same(JSON.parse(r.stdout).items.map((i: { key: string }) => i.key), ['cfg.a']);
    for (const k of ['l.1', 'l.2', 'l.3']) await cli(['put', k, k], env);
    r = await cli(['list', 'l.', '--limit', '2', '--keys'], env);
    t.equal(r.stdout, 'l.1\nl.2\n');
    t.match(r.stderr, /--start l\.3/);
    r = await cli(['list', 'l.', '--limit', '2', '--all', '--keys'], env);
    t.equal(r.stdout, 'l.1\nl.2\nl.3\n');
    t.equal(r.stderr, '');

    r = await cli(['batch', '-'], env, '[{"op":"put","key":"b1","value":"1"},{"op":"put","key":"b2","value":"2"}]');
    t.equal(r.code, 0, r.stderr);
    t.equal(store.get('b2'), '2');

    r = await cli(['status'], env);
    t.equal(r.code, 0);
    t.match(r.stdout, /^ID\s+ROLE/);
    t.match(r.stdout, /\n1\*\s+coordinator/);

    // Token passing without a session file.
    const before = ts;
    r = await cli(['--no-session', '--print-token', 'put', 'tp', '1'], env);
    t.equal(r.stderr.trim(), String(before + 1), '--print-token prints the new token on stderr');
    r = await cli(['get', 'tp', '--no-session', '--after', '5'], env);
    t.equal(fake.seen.read.at(-1)!.after, 5);
    t.equal(r.stderr.trim(), String(ts), '--after implies printing the new token');
    await cli(['get', 'tp', '--no-session'], { ...env, CKV_AFTER: '7' });
    t.equal(fake.seen.read.at(-1)!.after, 7, 'CKV_AFTER');
    await cli(['get', 'tp', '--no-session'], env);
    t.equal(fake.seen.read.at(-1)!.after, undefined, '--no-session: no token');

    fake.on.read = () => fail(ts, 'TOKEN_AHEAD');
    r = await cli(['get', 'tp'], env);
    t.equal(r.code, 4);
    t.match(r.stderr, /session file/);
    fake.on.read = () => fail(ts, 'BAD_REQUEST');
    t.equal((await cli(['get', 'tp'], env)).code, 2, 'a request the server rejects is a usage error');

    r = await cli(['--timeout', '300', '--cluster', 'nobody', 'get', 'k'], env);
    t.equal(r.code, 3);
    t.match(r.stderr, /UNAVAILABLE/);
  });

  t.test('watch prints events until SIGINT', async (t) => {
    const fake = await fakeServer(ns.url, 'cliw');
    t.teardown(() => fake.nc.close());
    const p = spawn(process.execPath, [CLI, 'watch', 'j.', '--no-session'], { env: { ...process.env, CKV_NATS: ns.url, CKV_CLUSTER: 'cliw' } });
    let stdout = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    const exited = new Promise<number | null>((r) => p.on('close', r));
    // Publish until the watcher is subscribed and has printed.
    for (let i = 0; i < 100 && !stdout; i++) {
      fake.publishEvent('cliw', { index: 1, ts: 11, op: 'put', key: 'j.a', value: 'x\ny', prev: 0 });
      await sleep(50);
    }
    fake.publishEvent('cliw', { index: 2, ts: 12, op: 'del', key: 'j.a', prev: 1 });
    await sleep(100);
    p.kill('SIGINT');
    t.equal(await exited, 0);
    t.equal(stdout, '1\t11\tput\tj.a\tx\\ny\n2\t12\tdel\tj.a\n');
  });

  t.test('startup time of a one-shot get', async (t) => {
    const fake = await fakeServer(ns.url, 'perf');
    t.teardown(() => fake.nc.close());
    fake.on.read = () => ok(1, { value: 'v', rev: 1 });
    // No coverage hooks (tap's NODE_OPTIONS) and no extra CA file: the time a user sees.
    const env = { CKV_NATS: ns.url, CKV_CLUSTER: 'perf', CKV_SESSION: join(dir, 'perf.json'), NODE_EXTRA_CA_CERTS: undefined, NODE_OPTIONS: undefined };
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const cliMs: number[] = [];
    const nodeMs: number[] = [];
    // Through env -u: tap's process tracking adds its loader to NODE_OPTIONS of every child.
    const bare = (args: string[]) => run('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, ...args], { env });
    for (let i = 0; i < 7; i++) {
      const r = await bare([CLI, 'get', 'k']);
      t.equal(r.code, 0, r.stderr);
      cliMs.push(r.ms);
      nodeMs.push((await bare(['-e', '0'])).ms);
    }
    const c = median(cliMs);
    const n = median(nodeMs);
    t.comment(`ckv get k: median ${c.toFixed(0)} ms; node -e 0: median ${n.toFixed(0)} ms; overhead ${(c - n).toFixed(0)} ms`);
    t.ok(c - n < 1000, 'a one-shot get costs well under a second over a bare node start');
  });
});
