// The client library and the session file, against a real nats-server and a
// scripted fake ckv server (test/helpers/fake-server.ts; the real server is
// tested end to end elsewhere). The one-shot CLI is tested in cli.test.ts.

import t from 'tap';
import { mkdtemp, readFile, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { startNatsServer, type NatsServer } from './helpers/nats-server.js';
import { fail, fakeServer, nodeStatus, ok } from './helpers/fake-server.js';
import { ROOT, run } from './helpers/run.js';
import { within } from './helpers/deadline.js';
import { CasMismatchError, CkvError, Client, natsTransport, type Transport } from '../src/client/client.js';
import { ErrorCode } from '../src/core/errors.js';
import { defaultSessionPath, readSession, readToken, saveToken } from '../src/client/session.js';
import type { ChangeEvent, NodeStatus, PeerStatus } from '../src/core/wire.js';
import { coordinatorOf, formatStatusTable, hasCoordinator, statusRows } from '../src/client/status-table.js';

const SESSION_JS = join(ROOT, 'dist', 'src', 'client', 'session.js');
const dec = new TextDecoder();

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
    const nc = await connect({ servers: ns.url });
    t.teardown(() => nc.close());
    // The client's own transport, to see its first attempt fail before the server appears.
    const base = natsTransport(nc);
    const failures: string[] = [];
    let refused!: () => void;
    const firstRefusal = new Promise<void>((r) => (refused = r));
    const transport: Transport = {
      ...base,
      request: async (subject, data, opts) => {
        try {
          return await base.request(subject, data, opts);
        } catch (err) {
          failures.push((err as CkvError).code);
          refused();
          throw err;
        }
      },
    };
    const c = new Client(transport, { cluster: 'late', timeout: 3000 });
    const pending = c.put('x', '1');
    await firstRefusal;
    let rid: unknown;
    const server = await connect({ servers: ns.url });
    t.teardown(() => server.close());
    server.subscribe('ckv.late.write', {
      callback: (_e, m) => {
        rid = JSON.parse(dec.decode(m.data)).rid;
        m.respond(JSON.stringify(ok(5)));
      },
    });
    await server.flush();
    const ack = await pending;
    t.equal(failures[0], 'UNAVAILABLE', 'the first attempt found nobody listening');
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
    t.equal(((await c.put('k', 'half \ud83d').catch((e: unknown) => e)) as CkvError).code, 'BAD_REQUEST', 'a lone surrogate');
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
    // A second "server" that answers each status request once the first one's reply is on its way.
    const nc2 = await connect({ servers: ns.url });
    t.teardown(() => nc2.close());
    const answerAsTwoServers = (voters1: number[]) => (_r: Record<string, unknown>, msg: { reply?: string; respond(data: string): boolean }) => {
      msg.respond(JSON.stringify(ok(9, { status: nodeStatus(1, voters1) })));
      void fake.nc.flush().then(() => nc2.publish(msg.reply!, JSON.stringify(ok(8, { status: nodeStatus(2, [1, 2]) }))));
      return undefined;
    };
    fake.on.admin = answerAsTwoServers([1, 2]);
    let t0 = Date.now();
    let st = await c.status();
    t.same(st.map((s) => s.id), [1, 2]);
    t.ok(Date.now() - t0 < 250, `no waiting for the window when every voter answered (${Date.now() - t0} ms)`);
    t.equal(c.token, 9);

    fake.on.admin = answerAsTwoServers([1, 2, 3]);
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

  t.test('connect to servers that accept and never answer: UNAVAILABLE within the budget, every socket closed', async (t) => {
    // What a paused nats-server looks like from here: the kernel accepts, nothing is said.
    const accepted: Socket[] = [];
    const silent = () =>
      new Promise<Server>((resolve) => {
        const srv = createServer((sock) => accepted.push(sock));
        srv.listen(0, '127.0.0.1', () => resolve(srv));
      });
    const listeners = [await silent(), await silent()];
    t.teardown(() => {
      for (const s of accepted) s.destroy();
      for (const l of listeners) l.close();
    });
    const servers = listeners.map((l) => `nats://127.0.0.1:${(l.address() as AddressInfo).port}`);
    const t0 = Date.now();
    const err = await Client.connect({ servers, cluster: 'lib', timeout: 400 }).catch((e: unknown) => e);
    const ms = Date.now() - t0;
    t.type(err, CkvError);
    t.equal((err as CkvError).code, 'UNAVAILABLE');
    t.match((err as CkvError).message, /cannot connect to NATS/);
    t.ok(ms < 400 + 300, `one budget for the whole server list, not one each (${ms} ms)`);
    t.equal(accepted.length, 2, 'each server was tried');
    const closed = accepted.map((s) => new Promise<void>((r) => (s.closed ? r() : s.once('close', () => r()))));
    await within(Promise.all(closed), 2000, 'the client to close its sockets');
    t.pass('the client closed both sockets');
  });

  t.test('deadline: no call runs past it, whatever its own budget', async (t) => {
    const c = await Client.connect({ servers: ns.url, cluster: 'nobody3', timeout: 5000, deadline: Date.now() + 300 });
    clients.push(c);
    const t0 = Date.now();
    t.equal(((await c.get('k').catch((e: unknown) => e)) as CkvError).code, 'UNAVAILABLE');
    t.ok(Date.now() - t0 < 600, `ended at the deadline (${Date.now() - t0} ms)`);
    t.equal(((await c.status().catch((e: unknown) => e)) as CkvError).code, 'UNAVAILABLE', 'a call after the deadline fails at once');
    t.ok(Date.now() - t0 < 700);
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
// The status table (ckv status, ckvctl status), from fabricated answers

t.test('status table', async (t) => {
  const st = (id: number, role: NodeStatus['role'], epoch: number, extra: Partial<NodeStatus> = {}): NodeStatus => ({
    ...nodeStatus(id, [1, 2, 3]),
    role,
    epoch,
    coordinator: role === 'coordinator' ? id : null,
    ...extra,
  });
  const peer = (s: NodeStatus, liveness: PeerStatus['liveness']): PeerStatus => ({ ...s, liveness, silentMs: liveness === 'dead' ? 5000 : 50 });
  const starred = (table: string) => table.split('\n').filter((l) => /^\d+\*/.test(l));

  t.test('two servers claim the role: the higher epoch is the coordinator, one star', async (t) => {
    // 1 was paused through an election and has not heard of epoch 3 yet.
    const answers = [st(1, 'coordinator', 2, { commit: 20, applied: 20 }), st(2, 'follower', 3, { applied: 25 }), st(3, 'coordinator', 3, { commit: 30, applied: 30 })];
    t.equal(coordinatorOf(answers)?.id, 3);
    const rows = statusRows(answers);
    t.same(rows.filter((r) => r.coordinator).map((r) => r.id), [3]);
    t.same(rows.map((r) => r.lag), [10, 5, 0], "lag behind the real coordinator's commit");
    const table = formatStatusTable(rows);
    t.same(starred(table).map((l) => l.split(/\s+/)[0]), ['3*']);
    t.match(table, /\n1\s+coordinator \(stale\)\s+2\s/);
    t.ok(hasCoordinator(rows));
    t.equal(statusRows([...answers].reverse()).find((r) => r.coordinator)?.id, 3, 'whatever the order of the answers');
  });

  t.test('a removed server known only from a ping table is never the coordinator', async (t) => {
    // 3 was coordinator, died, and was removed; 1 leads now. 1's ping table still has 3's last heartbeat.
    const dead3 = peer(st(3, 'coordinator', 4, { voters: [1, 2, 3] }), 'dead');
    const answers = [st(1, 'coordinator', 5, { voters: [1, 2], peers: [peer(st(2, 'follower', 5), 'alive'), dead3] }), st(2, 'follower', 5, { voters: [1, 2] })];
    const rows = statusRows(answers);
    t.same(rows.map((r) => [r.id, r.coordinator, r.answered, r.liveness]), [
      [1, true, true, 'alive'],
      [2, false, true, 'alive'],
      [3, false, false, 'dead'],
    ]);
    const table = formatStatusTable(rows);
    t.same(starred(table).map((l) => l.split(/\s+/)[0]), ['1*']);
    t.match(table, /\n3\s+coordinator \(stale\) \(no answer\)\s+4\s+dead/);
    // Even with a higher epoch than any live claimant, a server that did not answer is not it.
    const onlyDead = statusRows([st(1, 'follower', 4, { peers: [peer(st(3, 'coordinator', 9), 'dead')] })]);
    t.notOk(hasCoordinator(onlyDead));
    t.same(onlyDead.map((r) => r.lag), [null, null], 'no coordinator: no lag');
    t.same(starred(formatStatusTable(onlyDead)), []);
  });

  t.test('nobody claims the role: no coordinator, no star', async (t) => {
    const rows = statusRows([st(1, 'candidate', 6), st(2, 'follower', 5)]);
    t.notOk(hasCoordinator(rows));
    t.equal(coordinatorOf([st(1, 'candidate', 6)]), undefined);
    t.same(starred(formatStatusTable(rows)), []);
    t.same(statusRows([]), []);
  });

  t.test('the same epoch claimed twice (never by a correct cluster): still one star', async (t) => {
    const rows = statusRows([st(2, 'coordinator', 7, { commit: 40 }), st(1, 'coordinator', 7, { commit: 40 }), st(3, 'coordinator', 7, { commit: 39 })]);
    t.same(rows.filter((r) => r.coordinator).map((r) => r.id), [1], 'the highest commit, then the lowest id');
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

/** The next n events, or an error naming what came if they do not all come within ms. */
async function take(it: AsyncIterator<ChangeEvent>, n: number, ms = 3000): Promise<ChangeEvent[]> {
  const got: ChangeEvent[] = [];
  const collect = async () => {
    while (got.length < n) {
      const r = await it.next();
      if (r.done) break;
      got.push(r.value);
    }
    return got;
  };
  return within(collect(), ms, () => `${n} events (got ${JSON.stringify(got.map((e) => [e.index, e.key]))})`);
}

t.test('watch', async (t) => {
  const fake = await fakeServer(ns.url, 'w');
  t.teardown(() => fake.nc.close());
  // A client over a connection of ours, so that a flush() round trip tells when the
  // server has its subscriptions and its requests.
  const nc = await connect({ servers: ns.url });
  const c = new Client(natsTransport(nc), { cluster: 'w', timeout: 2000 });
  t.teardown(async () => {
    await c.close();
    await nc.close();
  });
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
  // A stopped watch may have had a replay in flight: once our connection and then the fake's
  // have made a round trip, the fake has seen it, so the next test's reset starts clean.
  t.afterEach(async () => {
    await nc.flush();
    await fake.nc.flush();
  });
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
    await nc.flush(); // the server has the watch's subscription
    fake.publishEvent('w', log.find((e) => e.index === 2)!);
    // 4 and 6 are lost; 8 shows the gap (its prev is 7 > 2).
    fake.publishEvent('w', log.find((e) => e.index === 8)!);
    fake.publishEvent('w', log.find((e) => e.key === 'd')!); // another subject: not delivered to us anyway
    const got = await take(w, 4);
    t.same(got.map(key), ['2:users.a', '4:users.b', '6:users.c', '8:users.b']);
    t.match(fake.seen.read[0], { op: 'replay', from: 2, prefix: 'users.' }, 'from the last index seen (it may have been a partial batch), of the prefix only');
    await w.return!();
  });

  t.test('an exact-key watch subscribes to that key only', async (t) => {
    fake.on.read = replayHandler(1000);
    const w = c.watch('users.b', { from: 1 });
    const got = await take(w, 2);
    t.same(got.map(key), ['4:users.b', '8:users.b']);
    w.stop();
  });

  t.test('a replay that hits COMPACTED at every try ends the iterator with that error', async (t) => {
    fake.on.read = () => fail(5, 'COMPACTED');
    const w = c.watch('', { from: 1 });
    const err = await w.next().catch((e: unknown) => e);
    t.type(err, CkvError);
    t.equal((err as CkvError).code, 'COMPACTED');
    t.ok(fake.seen.read.length > 1, `other servers were asked (${fake.seen.read.length} tries)`);
    t.same(await w.next(), { value: undefined, done: true });
  });

  t.test('COMPACTED from one server (it restarted), the events from another: the watch goes on', async (t) => {
    const handler = replayHandler(1000);
    let n = 0;
    fake.on.read = (r) => (++n <= 2 ? fail(5, 'COMPACTED') : handler(r));
    const w = c.watch('users.b', { from: 1 });
    t.same((await take(w, 2)).map(key), ['4:users.b', '8:users.b']);
    t.match(fake.seen.read[2], { op: 'replay', from: 1, key: 'users.b' });
    w.stop();
  });

  // Current values as the fake holds them at index 7 (users.b absent: deleted at 4), in pages of 1.
  const listHandler = (r: Record<string, unknown>) => {
    const items = [
      { key: 'users.a', value: 'v2', rev: 2 },
      { key: 'users.c', value: 'v6', rev: 6 },
    ].filter((kv) => kv.key.startsWith(r.prefix as string) && (r.start === undefined || kv.key >= (r.start as string)));
    // The first page is read at index 5, the second at 7 (the cluster moved on between them).
    const index = r.start === undefined ? 5 : 7;
    return ok(100 + index, { index, items: items.slice(0, 1), next: items[1]?.key ?? null });
  };

  t.test('initial: the current values, a mark in order, then the changes since, none twice', async (t) => {
    const replay = replayHandler(1000);
    applied = 9;
    fake.on.read = (r) => (r.op === 'list' ? listHandler(r) : replay(r));
    const marks: Array<[number, number]> = [];
    let consumed = 0;
    const w = c.watch('users.', { initial: true, onInitial: (i) => marks.push([i, consumed]) });
    const got: ChangeEvent[] = [];
    while (got.length < 3) {
      got.push(...(await take(w, 1)));
      consumed++;
    }
    t.same(
      got.map((e) => [key(e), e.initial ?? false]),
      [
        ['2:users.a', true],
        ['6:users.c', true],
        ['8:users.b', false],
      ],
      'users.c at 6 was read with its value (page 2, at 7): its event is not given again; 8 is new',
    );
    t.same(marks, [[7, 2]], 'the mark comes after the two initial values were consumed, with the index they reach');
    t.match(fake.seen.read.find((r) => r.op === 'replay'), { from: 6, prefix: 'users.' }, 'the changes since the first page (read at 5)');
    t.throws(() => c.watch('x', { initial: true, from: 3 }), { code: 'BAD_REQUEST' });
    w.stop();
  });

  t.test('resync: the events are gone at every server, so the watch starts again from the current values', async (t) => {
    const replay = replayHandler(1000);
    applied = 9;
    // Events up to 5 are gone everywhere (every server restarted).
    fake.on.read = (r) => (r.op === 'list' ? listHandler(r) : (r.from as number) <= 5 ? fail(109, 'COMPACTED') : replay(r));
    const marks: number[] = [];
    const w = c.watch('users.', { from: 1, resync: true, onInitial: (i) => marks.push(i) });
    const got = await take(w, 3);
    t.same(
      got.map((e) => [key(e), e.initial ?? false]),
      [
        ['2:users.a', true],
        ['6:users.c', true],
        ['8:users.b', false],
      ],
    );
    t.same(marks, [7]);
    w.stop();
  });

  t.test('for-await and close() end watches', async (t) => {
    const nc2 = await connect({ servers: ns.url });
    t.teardown(() => nc2.close());
    const c2 = new Client(natsTransport(nc2), { cluster: 'w' });
    const w = c2.watch('x');
    let gotOne!: () => void;
    const first = new Promise<void>((r) => (gotOne = r));
    const done = (async () => {
      const seen: ChangeEvent[] = [];
      for await (const e of w) {
        seen.push(e);
        gotOne();
      }
      return seen;
    })();
    await nc2.flush(); // subscribed
    fake.publishEvent('w', { index: 20, ts: 120, op: 'put', key: 'x', value: '1', prev: 0 });
    await first;
    await c2.close();
    t.same((await done).map(key), ['20:x']);
  });

  t.test('bad targets are rejected', async (t) => {
    t.throws(() => c.watch('a..b'), { code: 'BAD_REQUEST' });
    t.throws(() => c.watch('.'), { code: 'BAD_REQUEST' });
    t.throws(() => c.watch('a', { from: -1 }), { code: 'BAD_REQUEST' });
  });
});


t.test('reads go to the ckv servers on our own NATS server first, the cluster\'s read subject when none answer there', async (t) => {
  const enc = new TextEncoder();
  const sent: string[] = [];
  let localAnswers: 'ok' | 'nobody' | 'busy' | 'compacted' | 'refused' | 'stopped' = 'ok';
  const localTimeouts: number[] = [];
  let id: string | undefined = 'NCLOCAL7';
  let lastBody: { timeout?: number } = {};
  const reply = (body: object): Uint8Array => enc.encode(JSON.stringify({ ok: true, ts: 1, index: 1, ...body }));
  const transport: Transport = {
    request: async (subject, data, opts) => {
      sent.push(subject);
      lastBody = JSON.parse(new TextDecoder().decode(data)) as { timeout?: number };
      if (subject.includes('~')) {
        localTimeouts.push(opts.timeout);
        if (localAnswers === 'compacted') return enc.encode(JSON.stringify({ ok: false, ts: 1, error: { code: 'COMPACTED', message: 'history up to index 9 is no longer kept here' } }));
        if (localAnswers === 'refused') throw new CkvError(ErrorCode.AUTH, `Permissions Violation for Publish to "${subject}"`);
        if (localAnswers === 'stopped') {
          await new Promise((r) => setTimeout(r, opts.timeout));
          throw new CkvError(ErrorCode.TIMEOUT, `no reply on ${subject} within ${opts.timeout} ms`);
        }
        if (localAnswers === 'nobody') throw new CkvError(ErrorCode.UNAVAILABLE, `no server is listening on ${subject}`);
        if (localAnswers === 'busy') return enc.encode(JSON.stringify({ ok: false, ts: 1, error: { code: 'UNAVAILABLE', message: 'installing a checkpoint; retry' } }));
      }
      return reply(subject.endsWith('.write') ? { index: 2 } : { value: 'v', rev: 1 });
    },
    requestMany: () => ({ unsubscribe: () => undefined }),
    subscribe: () => ({ unsubscribe: () => undefined }),
    flush: async () => undefined,
    close: async () => undefined,
    natsServerId: () => id,
  };
  const c = new Client(transport, { cluster: 'loc', timeout: 2000 });
  t.equal((await c.get('k'))?.value, 'v');
  await c.put('k', 'w');
  t.same(sent, ['ckv.loc~NCLOCAL7.read', 'ckv.loc.write'], 'a read on the local subject; writes to the coordinator as ever');
  // Nobody on our NATS server: at once (no backoff) the cluster's subject, and for a while after.
  sent.length = 0;
  localAnswers = 'nobody';
  t.equal((await c.get('k'))?.value, 'v');
  t.equal((await c.get('k'))?.value, 'v');
  t.same(sent, ['ckv.loc~NCLOCAL7.read', 'ckv.loc.read', 'ckv.loc.read']);
  // A local server that answers UNAVAILABLE: the same (another server may answer).
  const c2 = new Client(transport, { cluster: 'loc', timeout: 2000 });
  sent.length = 0;
  localAnswers = 'busy';
  t.equal((await c2.get('k'))?.value, 'v');
  t.same(sent, ['ckv.loc~NCLOCAL7.read', 'ckv.loc.read']);
  // What another server may answer better, from the local one: COMPACTED (it installed a
  // checkpoint lately), AUTH (NATS permissions that allow only the cluster's read subject),
  // no answer at all (stopped: its attempt is short, and the read is still answered within a
  // budget smaller than one whole attempt).
  for (const what of ['compacted', 'refused', 'stopped'] as const) {
    const cx = new Client(transport, { cluster: 'loc', timeout: 700 });
    sent.length = 0;
    localTimeouts.length = 0;
    localAnswers = what;
    t.equal((await cx.get('k'))?.value, 'v', what);
    t.same(sent, ['ckv.loc~NCLOCAL7.read', 'ckv.loc.read'], what);
    t.ok(localTimeouts[0]! <= 350, `${what}: the local attempt had ${localTimeouts[0]} ms of 700`);
  }
  // Strong reads and writes never take the local subject.
  localAnswers = 'ok';
  sent.length = 0;
  const cs = new Client(transport, { cluster: 'loc', timeout: 2000 });
  await cs.get('k', { consistency: 'strong' });
  t.same(sent, ['ckv.loc.write']);
  // A deadline in fractions of a ms (the CLI's is its start plus --timeout) and a budget below
  // one attempt's: the server is still given a whole number of ms (it refuses anything else).
  const c3 = new Client(transport, { cluster: 'loc', timeout: 2000, deadline: Date.now() + 600.37 });
  await c3.get('k');
  t.ok(Number.isInteger(lastBody.timeout) && lastBody.timeout! > 0, `timeout ${lastBody.timeout}`);
  // No id, or one that is no subject token: the cluster's subject only.
  for (const bad of [undefined, 'A.B', 'x y', '']) {
    id = bad;
    sent.length = 0;
    await new Client(transport, { cluster: 'loc', timeout: 2000 }).get('k');
    t.same(sent, ['ckv.loc.read'], `id ${JSON.stringify(bad)}`);
  }
});
