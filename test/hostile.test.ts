// What a hostile tester found (issue 8), tried again against real processes: forged and
// malformed peer messages published on the NATS server, a second process with the same
// --id, servers started without --voters, and a kill -9 of every server at once while
// the coordinator is ahead of its followers.

import t, { type Test } from 'tap';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { PeerSeal, loadClusterKey, newIncarnation } from '../src/transport/peer-auth.js';
import { Cluster } from './helpers/cluster.js';
import { CKVCTL_JS, SERVER_JS, runNode } from './helpers/run.js';

const dec = new TextDecoder();

async function req(nc: NatsConnection, subject: string, body: unknown, timeoutMs = 2000): Promise<any> {
  const r = await nc.request(subject, JSON.stringify(body), { timeout: timeoutMs });
  return JSON.parse(dec.decode(r.data));
}

/** A write retried with the same rid until acknowledged, bounded by a deadline. */
async function write(nc: NatsConnection, cluster: string, body: Record<string, unknown>, deadlineMs = 20_000): Promise<any> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    try {
      const r = await req(nc, `ckv.${cluster}.write`, { ...body, timeout: 700 }, 800);
      if (r.ok || (r.error.code !== 'UNAVAILABLE' && r.error.code !== 'TIMEOUT')) return r;
    } catch {
      // no coordinator yet
    }
    if (Date.now() > deadline) throw new Error(`write ${JSON.stringify(body)} not acknowledged in time`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Every server's status, straight from the admin subject. */
async function statuses(nc: NatsConnection, cluster: string): Promise<any[]> {
  const inbox = nc.subscribe('_INBOX.hostile.' + Math.random().toString(36).slice(2), { max: 10 });
  const got: any[] = [];
  nc.publish(`ckv.${cluster}.admin`, JSON.stringify({ op: 'status' }), { reply: inbox.getSubject() });
  const timer = setTimeout(() => inbox.unsubscribe(), 500);
  for await (const m of inbox) got.push(JSON.parse(dec.decode(m.data)).status);
  clearTimeout(timer);
  return got.sort((a, b) => a.id - b.id);
}

/** A running 3-server cluster with a coordinator and a NATS connection; both stopped (logs kept on a failure) at teardown. */
async function upCluster(t: Test, cluster: string, opts: { extraArgs?: string[] } = {}): Promise<{ c: Cluster; nc: NatsConnection }> {
  const c = new Cluster(3, { cluster, ...opts });
  await c.start();
  t.teardown(async () => {
    if (!t.passing()) t.comment(`server logs: ${c.saveLogs()}`);
    await c.stop();
  });
  await c.waitForCoordinator();
  const nc = await connect({ servers: c.nats.url });
  t.teardown(() => nc.close());
  // A new cluster's followers take their first entries into empty directories, so they start
  // as catch-up members (not voting) until a coordinator's ping shows them caught up: the
  // tests below kill servers and need every one voting first.
  await c.waitFor('every server voting', async () => {
    const s = await statuses(nc, cluster);
    return s.length === 3 && s.every((x) => x.role === 'follower' || x.role === 'coordinator') ? s : undefined;
  });
  return { c, nc };
}

t.test('forged and malformed peer messages change nothing and wedge nothing', async (t) => {
  const { c, nc } = await upCluster(t, 'h1');

  const a = await write(nc, 'h1', { op: 'put', key: 'forged.append', value: 'GOOD', rid: 'good-1' });
  t.ok(a.ok, 'an acknowledged write');
  const before = await statuses(nc, 'h1');
  const coord = before.find((s) => s.role === 'coordinator');
  t.ok(coord, 'a coordinator');

  // 1. The 2^50 claim of the report, unsealed, then sealed with the cluster's key (as a
  //    buggy peer would): neither may move an epoch far, nor stop elections or writes.
  const claim = { t: 'claim', from: 1, to: 0, epoch: 2 ** 50, clock: 0 };
  nc.publish('ckv.h1.elect.all', JSON.stringify(claim));
  const seal = new PeerSeal(loadClusterKey(c.keyFile), newIncarnation(Date.now() + 60_000));
  nc.publish('ckv.h1.elect.all', seal.seal('ckv.h1.elect.all', JSON.stringify(claim)));

  // 2. A forged append in the coordinator's name, at the index of the acknowledged write.
  const forged = {
    t: 'append',
    from: coord.id,
    to: 0,
    epoch: coord.epoch,
    clock: coord.clock + 1,
    prevIndex: a.index - 1,
    prevEpoch: coord.epoch,
    entries: [{ index: a.index, epoch: coord.epoch, ts: coord.clock + 1, kind: 'write', ops: [{ op: 'put', key: 'forged.append', value: 'EVIL' }] }],
    commit: a.index,
    commitTs: coord.clock + 1,
  };
  nc.publish('ckv.h1.repl.all', JSON.stringify(forged));
  nc.publish('ckv.h1.repl.all', `ckv1 ${newIncarnation(Date.now())} 1 ${'A'.repeat(43)}\n${JSON.stringify(forged)}`);

  // 3. A flood of malformed and unsealed peer messages on every peer subject.
  for (let i = 0; i < 20_000; i++) {
    const subject = ['ckv.h1.ping', 'ckv.h1.elect.all', 'ckv.h1.repl.all', 'ckv.h1.sync.all', 'ckv.h1.repl.2', 'ckv.h1.snap.1'][i % 6]!;
    nc.publish(subject, i % 3 === 0 ? '{"t":"append"' : i % 3 === 1 ? JSON.stringify({ ...forged, epoch: i }) : `ckv1 x ${i} -\n{}`);
  }
  await nc.flush();

  // Writes still commit, and every server holds the acknowledged value.
  const b = await write(nc, 'h1', { op: 'put', key: 'after.forgery', value: 'x', rid: 'good-2' });
  t.ok(b.ok, 'writes still commit after the forgeries and the flood');
  const after = await c.waitFor('every server applied the next write', async () => {
    const s = await statuses(nc, 'h1');
    return s.length === 3 && s.every((x) => x.applied >= b.index) ? s : undefined;
  });
  t.ok(after.every((s) => s.epoch < 2 ** 32), `no epoch was pushed far (${after.map((s) => s.epoch).join(',')})`);
  // Each server's own state: stopped cleanly (a final checkpoint), read offline.
  for (const id of c.voters) await c.kill(id, 'SIGTERM');
  for (const id of c.voters) {
    const r = await runNode(CKVCTL_JS, ['checkpoint', 'get', 'forged.append', '--data', c.dataDir(id), '--json']);
    t.equal(JSON.parse(r.stdout || '{}').value, 'GOOD', `server ${id} holds the acknowledged value`);
  }
  for (const [x, y] of [[1, 2], [1, 3]] as const) {
    const d = await runNode(CKVCTL_JS, ['checkpoint', 'diff', c.dataDir(x), c.dataDir(y)]);
    t.equal(d.code, 0, `servers ${x} and ${y} hold the same state: ${d.stdout}`);
  }
  // The flood is reported, not logged line by line.
  for (const id of c.voters) {
    const lines = (c.logs.get(id) ?? '').split('\n').filter((l) => l.includes('dropped'));
    t.ok(lines.length <= 12, `server ${id} logged ${lines.length} lines about dropped peer messages, not one per message`);
    t.notMatch(c.logs.get(id) ?? '', /"stack"/, `server ${id} logged no stack trace`);
  }
});

t.test('a second process with the same --id refuses to run; the first goes on', async (t) => {
  const { c, nc } = await upCluster(t, 'h2');
  // Server 2 again, with its own (empty) data directory.
  const dup = await runNode(SERVER_JS, ['--id', '2', '--data', `${c.dir}/dup-2`, '--nats', c.nats.url, '--cluster', 'h2', '--voters', '1,2,3', '--cluster-key', c.keyFile], { timeoutMs: 10_000 });
  t.equal(dup.code, 1, 'the second process exits with status 1');
  t.match(dup.stderr, /another live process already runs as server 2/, 'and says why');
  const w = await write(nc, 'h2', { op: 'put', key: 'dup.after', value: 'x', rid: 'dup-1' });
  t.ok(w.ok, 'the cluster goes on');
  const s = await statuses(nc, 'h2');
  t.same(s.map((x) => x.id), [1, 2, 3], 'one row per server');
  t.equal(c.procs.get(2)!.exitCode, null, 'the first server 2 still runs');
});

t.test('servers started without --voters refuse to form one-server clusters', async (t) => {
  const c = new Cluster(3, { cluster: 'h3' });
  c.nats = await (await import('./helpers/nats-server.js')).startNatsServer();
  t.teardown(() => c.stop());
  const runs = await Promise.all(
    [1, 2, 3].map((id) => runNode(SERVER_JS, ['--id', String(id), '--data', c.dataDir(id), '--nats', c.nats.url, '--cluster', 'h3', '--cluster-key', c.keyFile], { timeoutMs: 10_000 })),
  );
  for (const [i, r] of runs.entries()) {
    t.equal(r.code, 2, `server ${i + 1} exits with the usage status`);
    t.match(r.stderr, /--voters is needed/, 'and names what is missing');
  }
  const noKey = await runNode(SERVER_JS, ['--id', '1', '--data', c.dataDir(1), '--nats', c.nats.url, '--cluster', 'h3', '--voters', '1'], { timeoutMs: 10_000 });
  t.equal(noKey.code, 2, 'without a cluster key (and without --insecure-peer-messages) a server does not start');
  t.match(noKey.stderr, /cluster key is required/);
  const badBytes = await runNode(SERVER_JS, ['--id', '1', '--data', c.dataDir(1), '--nats', c.nats.url, '--cluster', 'h3', '--voters', '1', '--cluster-key', c.keyFile, '--history-bytes', '4GB'], { timeoutMs: 10_000 });
  t.equal(badBytes.code, 2, 'a history byte bound that is not a size: usage error');
  t.match(badBytes.stderr, /--history-bytes takes a size/);
});

t.test('kill -9 of every server at once, mid-stream, repeated: writes resume, nothing acknowledged is lost', async (t) => {
  // No checkpoint runs during the test: after the restart every follower's commit is far below
  // the coordinator's log, by more than one replication message (512 entries).
  const { c, nc } = await upCluster(t, 'h4', { extraArgs: ['--checkpoint-cron', '0 0 0 1 1 *'] });
  const acked = new Map<string, string>();
  const recoveries: number[] = [];
  let lastTs = 0;
  for (let round = 0; round < 3; round++) {
    // A stream of writes, 64 in flight, until at least 1500 are acknowledged; then kill -9 all.
    let n = 0;
    let stop = false;
    const worker = async (): Promise<void> => {
      while (!stop) {
        const i = n++;
        const key = `crash.${round}.${i}`;
        try {
          const r = await req(nc, 'ckv.h4.write', { op: 'put', key, value: `v${i}`, rid: `crash-${round}-${i}`, timeout: 2000 }, 2500);
          if (r.ok) acked.set(key, `v${i}`);
        } catch {
          // the servers are gone: this write may or may not have been applied
        }
      }
    };
    const workers = Array.from({ length: 64 }, worker);
    await c.waitFor('1500 writes acknowledged', async () => ([...acked.keys()].filter((k) => k.startsWith(`crash.${round}.`)).length >= 1500 ? true : undefined), 60_000);
    await Promise.all(c.voters.map((id) => c.kill(id, 'SIGKILL')));
    stop = true;
    await Promise.all(workers);
    const t0 = Date.now();
    for (const id of c.voters) c.startNode(id);
    const w = await write(nc, 'h4', { op: 'put', key: `resumed.${round}`, value: 'x', rid: `resumed-${round}` }, 60_000);
    t.ok(w.ok, `round ${round}: writes resume after the restart`);
    lastTs = w.ts;
    recoveries.push(Date.now() - t0);
  }
  t.comment(`first write acknowledged after restarting every server: ${recoveries.join(', ')} ms (not a timed assertion)`);
  // Every acknowledged write is readable with its value.
  const keys = [...acked.keys()];
  let missing = 0;
  for (let i = 0; i < keys.length; i += 500) {
    const batch = keys.slice(i, i + 500);
    // With a token past every acknowledged write, whichever server answers.
    const r = await req(nc, 'ckv.h4.read', { op: 'mget', keys: batch, after: lastTs, timeout: 5000 }, 6000);
    batch.forEach((k, j) => {
      if (r.values?.[j]?.value !== acked.get(k)) missing++;
    });
  }
  t.equal(missing, 0, `all ${keys.length} acknowledged writes are readable with their values`);
});

t.test('a wiped voter does not vote until caught up: a committed write survives', async (t) => {
  const { c, nc } = await upCluster(t, 'h5');
  await write(nc, 'h5', { op: 'put', key: 'warm', value: 'up', rid: 'wipe-0' });
  // X is committed by servers 1 and 2 while 3 is down.
  await c.kill(3);
  const x = await write(nc, 'h5', { op: 'put', key: 'wiped.x', value: 'X', rid: 'wipe-x' });
  t.ok(x.ok, 'X is acknowledged with 3 down');
  // 2 loses its data; 1 goes down; 2 (empty) and 3 (without X) come up.
  await c.kill(2);
  rmSync(c.dataDir(2), { recursive: true, force: true });
  await c.kill(1);
  c.startNode(2);
  c.startNode(3);
  await c.waitFor('servers 2 and 3 answering', async () => {
    const s = await statuses(nc, 'h5');
    return s.length === 2 ? s : undefined;
  });
  // Without 1 no majority holds X: no write may commit (2 must not vote for 3's shorter log).
  const until = Date.now() + 3000;
  let committed = 0;
  for (let i = 0; Date.now() < until; i++) {
    try {
      const r = await req(nc, 'ckv.h5.write', { op: 'put', key: `wait.${i}`, value: 'w', rid: `wait-${i}`, timeout: 300 }, 400);
      if (r.ok) committed++;
    } catch {
      // no coordinator: what we expect
    }
  }
  t.equal(committed, 0, 'no write commits while only 2 (wiped) and 3 (without X) are up');
  const st = await statuses(nc, 'h5');
  t.equal(st.find((s) => s.id === 2)?.role, 'catchup', 'server 2 reports itself catching up');
  c.startNode(1);
  const after = await write(nc, 'h5', { op: 'put', key: 'wiped.after', value: 'y', rid: 'wipe-after' }, 30_000);
  t.ok(after.ok, 'writes resume once 1 is back');
  const got = await req(nc, 'ckv.h5.read', { op: 'get', key: 'wiped.x', after: after.ts, timeout: 5000 }, 6000);
  t.equal(got.value, 'X', 'X, committed before the wipe, is there');
  await c.waitFor('server 2 caught up and voting again', async () => {
    const s = (await statuses(nc, 'h5')).find((x) => x.id === 2);
    return s && s.role === 'follower' ? s : undefined;
  });
});

/** Stop a server with SIGTERM (its final checkpoint holds everything it applied). */
async function stopClean(c: Cluster, id: number): Promise<void> {
  await c.kill(id, 'SIGTERM');
}

t.test('a damaged checkpoint is never served and repairs itself: a flipped byte, garbage, an empty file', async (t) => {
  const { c, nc } = await upCluster(t, 'h6');
  const good = 'corruptme-0123456789';
  const w = await write(nc, 'h6', { op: 'put', key: 'victim', value: good, rid: 'victim-1' });
  for (let i = 0; i < 20; i++) await write(nc, 'h6', { op: 'put', key: `other.${i}`, value: `v${i}`, rid: `other-${i}` });
  const coord = (await statuses(nc, 'h6')).find((s) => s.role === 'coordinator')!.id;
  const followers = c.voters.filter((v) => v !== coord);

  // 1. One flipped byte in the stored value, on a follower.
  const f = followers[0]!;
  await stopClean(c, f);
  const file = join(c.dataDir(f), 'checkpoint', 'data.mdb');
  const bytes = readFileSync(file);
  const at = bytes.indexOf(Buffer.from(good));
  t.ok(at > 0, 'the value is in the checkpoint file');
  bytes[at + 3] ^= 0x20;
  writeFileSync(file, bytes);
  const v = await runNode(CKVCTL_JS, ['checkpoint', 'verify', '--data', c.dataDir(f)]);
  t.equal(v.code, 1, 'ckvctl checkpoint verify finds it');
  t.match(v.stdout + v.stderr, /victim.*checksum/, 'and names the record');
  c.startNode(f);
  // Reads land on every server (one queue group): none may answer with the damaged value.
  const seen = new Set<string>();
  const deadline = Date.now() + 8000;
  while (Date.now() < deadline) {
    const r = await c.ckv(['get', 'victim', '--no-session', '--after', String(w.ts), '--timeout', '3000']);
    seen.add(r.code === 0 ? r.stdout.trim() : `exit ${r.code}`);
    if ((c.logs.get(f) ?? '').includes('repaired the checkpoint')) break;
  }
  t.same([...seen], [good], 'every read answered with the acknowledged value');
  await c.waitFor(`server ${f} repaired and caught up`, async () => {
    const s = (await statuses(nc, 'h6')).find((x) => x.id === f);
    return (c.logs.get(f) ?? '').includes('repaired the checkpoint') && s && s.role === 'follower' ? s : undefined;
  }, 30_000);

  // 2. Garbage over the other follower's data.mdb, then an empty one: refused with a message, repaired.
  const g = followers[1]!;
  for (const [what, content] of [
    ['garbage', Buffer.alloc(64 * 1024, 0x5a)],
    ['an empty file', Buffer.alloc(0)],
  ] as const) {
    await stopClean(c, g);
    writeFileSync(join(c.dataDir(g), 'checkpoint', 'data.mdb'), content);
    const vg = await runNode(CKVCTL_JS, ['checkpoint', 'verify', '--data', c.dataDir(g)]);
    t.equal(vg.code, 1, `${what}: verify exits 1, no crash`);
    t.match(vg.stdout + vg.stderr, /not an LMDB environment|too short/, `${what}: and says what is wrong`);
    c.logs.set(g, '');
    c.startNode(g);
    await c.waitFor(`server ${g} repaired (${what}) and caught up`, async () => {
      const s = (await statuses(nc, 'h6')).find((x) => x.id === g);
      return (c.logs.get(g) ?? '').includes('repaired the checkpoint') && s && s.role === 'follower' && s.applied >= w.index ? s : undefined;
    }, 30_000);
    t.pass(`${what}: the server set the checkpoint aside and caught up from its peers`);
  }
  const last = await write(nc, 'h6', { op: 'put', key: 'after.repair', value: 'x', rid: 'after-repair' });
  await c.waitFor('every server applied the last write', async () => {
    const s = await statuses(nc, 'h6');
    return s.length === 3 && s.every((x) => x.applied >= last.index) ? s : undefined;
  });
  for (const id of c.voters) await stopClean(c, id);
  for (const [x, y] of [[coord, f], [coord, g]] as const) {
    const d = await runNode(CKVCTL_JS, ['checkpoint', 'diff', c.dataDir(x), c.dataDir(y)]);
    t.equal(d.code, 0, `servers ${x} and ${y} end with the same state`);
  }
});

t.test('a session token from an earlier cluster of the same name is dropped with a warning, not an error', async (t) => {
  const { c } = await upCluster(t, 'h7');
  const session = join(c.dir, 'session.json');
  for (let i = 0; i < 30; i++) t.equal((await c.ckv(['--session', session, 'put', `s.${i}`, 'v'])).code, 0);
  const old = JSON.parse(readFileSync(session, 'utf8')).h7;
  t.ok(old.ts >= 30 && typeof old.id === 'string' && old.id.length === 22, `the session keeps the token and the cluster identity (${JSON.stringify(old)})`);
  // The same cluster name, formed anew (every data directory gone).
  for (const id of c.voters) await c.kill(id);
  for (const id of c.voters) rmSync(c.dataDir(id), { recursive: true, force: true });
  for (const id of c.voters) c.startNode(id);
  await c.waitForCoordinator(30_000);
  const r = await c.ckv(['--session', session, 'put', 'fresh', 'x']);
  t.equal(r.code, 0, `the first command succeeds: ${r.stderr}`);
  t.match(r.stderr, /from another incarnation of it/, 'with a warning that the old token was dropped');
  const now = JSON.parse(readFileSync(session, 'utf8')).h7;
  t.not(now.id, old.id, 'the session now holds the new identity');
  t.ok(now.ts < old.ts, 'and the new cluster\'s (smaller) token');
  const g = await c.ckv(['--session', session, 'get', 'fresh']);
  t.equal(g.stdout.trim(), 'x', 'and the next command reads its own write');
  t.notMatch(g.stderr, /incarnation/, 'without any warning');
});
