// Three real ckv-server processes on a real nats-server: read-your-writes
// across one-shot clients and servers, SIGKILL of the coordinator during
// writes, SIGSTOP/SIGCONT of a follower, catch-up by checkpoint transfer, watches that
// go on after every server restarted, and locks and elections held by scripts.

import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Cluster, parseStatus, type StatusRow } from './helpers/cluster.js';
import { CKVCTL_JS, CLI_JS, runNode, start } from './helpers/run.js';

const dec = new TextDecoder();

async function req(nc: NatsConnection, subject: string, body: unknown, timeoutMs = 5000): Promise<any> {
  const r = await nc.request(subject, JSON.stringify(body), { timeout: timeoutMs });
  return JSON.parse(dec.decode(r.data));
}

/** A write retried (same rid) until it is acknowledged or the deadline passes. */
async function write(nc: NatsConnection, body: Record<string, unknown>, deadlineMs = 15_000): Promise<any> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    try {
      // Attempts as short as the client library's (800 ms): a request to a dead server gets no reply.
      const r = await req(nc, 'ckv.c3.write', { ...body, timeout: 700 }, 800);
      if (r.ok || (r.error.code !== 'UNAVAILABLE' && r.error.code !== 'TIMEOUT')) return r;
    } catch {
      // no responders (no coordinator yet) or timeout: retry with the same rid
    }
    if (Date.now() > deadline) throw new Error(`write ${JSON.stringify(body)} not acknowledged in time`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function statuses(c: Cluster): Promise<StatusRow[]> {
  const r = await c.ckv(['status', '--json', '--no-session', '--timeout', '1500']);
  return r.code === 0 ? parseStatus(r.stdout) : [];
}

t.test('three-node cluster', async (t) => {
  const c = new Cluster(3, { cluster: 'c3', extraArgs: ['--checkpoint-cron', '* * * * * *', '--retain-entries', '20', '--remove-dead-after', '1500'] });
  await c.start();
  t.teardown(async () => {
    // On a failure, keep the servers' logs for the post-mortem.
    if (!t.passing()) t.comment(`server logs: ${c.saveLogs()}`);
    await c.stop();
  });
  const first = await c.waitForCoordinator();
  t.ok(first >= 1 && first <= 3);
  const nc = await connect({ servers: c.nats.url });
  t.teardown(() => nc.close());

  await t.test('read-your-writes across one-shot invocations, whichever server answers', async (t) => {
    const sessionDir = mkdtempSync(join(tmpdir(), 'ckv-sess-'));
    t.teardown(() => rmSync(sessionDir, { recursive: true, force: true }));
    const session = join(sessionDir, 's.json');
    for (let i = 0; i < 12; i++) {
      const w = await c.ckv(['--session', session, 'put', `ryw.${i}`, `v${i}`]);
      t.equal(w.code, 0, w.stderr);
      const r = await c.ckv(['--session', session, 'get', `ryw.${i}`]);
      t.equal(r.stdout, `v${i}`, `read ${i} sees its write`);
    }
    // Causal reads are served by followers too: every server has applied the writes.
    const rows = await c.waitFor('all servers applied', async () => {
      const s = await statuses(c);
      return s.length === 3 && new Set(s.map((x) => x.applied)).size === 1 ? s : undefined;
    });
    t.equal(rows.filter((r) => r.role === 'coordinator').length, 1, 'exactly one coordinator');
  });

  await t.test('SIGKILL of the coordinator during writes: a new one, no acknowledged write lost, none applied twice', async (t) => {
    const coord = await c.waitForCoordinator();
    const acked = new Map<string, number>();
    let maxTs = 0;
    // An observer of the change feed and of the members subject, as any NATS client would be.
    const live: any[] = [];
    const evSub = nc.subscribe('ckv.c3.ev.>', { callback: (_e, m) => live.push(JSON.parse(dec.decode(m.data))) });
    const notices: any[] = [];
    const memSub = nc.subscribe('ckv.c3.members', { callback: (_e, m) => notices.push(JSON.parse(dec.decode(m.data))) });
    t.teardown(() => {
      evSub.unsubscribe();
      memSub.unsubscribe();
    });
    await nc.flush();
    let stop = false;
    let n = 0;
    let killedAt = 0;
    let resumedAt = 0;
    const writers = Array.from({ length: 6 }, async () => {
      while (!stop) {
        const k = `fo.${n++}`;
        try {
          const r = await write(nc, { op: 'put', key: k, value: k, rid: `fo-${k}` }, 20_000);
          if (r.ok) {
            if (killedAt > 0 && resumedAt === 0) resumedAt = Date.now();
            acked.set(k, r.index);
            maxTs = Math.max(maxTs, r.ts);
          }
        } catch {
          // gave up on this one: not acknowledged
        }
      }
    });
    await c.waitFor('100 acknowledged writes', async () => (acked.size >= 100 ? true : undefined));
    await c.kill(coord, 'SIGKILL');
    killedAt = Date.now();
    const ackedAtKill = acked.size;
    await c.waitFor('writes to resume', async () => (acked.size >= ackedAtKill + 50 ? true : undefined), 20_000);
    t.comment(`first write acknowledged ${resumedAt - killedAt} ms after the SIGKILL (not a timed assertion: see tools/bench --failover)`);
    stop = true;
    await Promise.all(writers);
    const newCoord = await c.waitForCoordinator();
    t.not(newCoord, coord, 'another server leads');
    // Every acknowledged write is readable (from any live server).
    const keys = [...acked.keys()];
    const missing: string[] = [];
    for (let i = 0; i < keys.length; i += 500) {
      const chunk = keys.slice(i, i + 500);
      const r = await req(nc, 'ckv.c3.read', { op: 'mget', keys: chunk, after: 0 });
      r.values.forEach((v: any, j: number) => v?.value === chunk[j] || missing.push(chunk[j]!));
    }
    t.same(missing, [], `all ${keys.length} acknowledged writes present`);
    // None applied twice: each key's write produced exactly one event.
    const seen = new Map<string, number>();
    let from = 1;
    for (;;) {
      const r = await req(nc, 'ckv.c3.read', { op: 'replay', from });
      if (!r.ok || r.events.length === 0) break;
      for (const e of r.events) if (e.key.startsWith('fo.')) seen.set(e.key, (seen.get(e.key) ?? 0) + 1);
      from = r.events[r.events.length - 1].index + 1;
    }
    const twice = [...seen].filter(([, count]) => count > 1);
    t.same(twice, [], 'no write applied twice');
    // The feed: an observer following `prev` fills every gap by replay; duplicates it skips.
    await nc.flush();
    const observed = new Set<string>();
    let last = live.length > 0 ? live[0].prev : 0;
    let gaps = 0;
    let dups = 0;
    for (const ev of live) {
      if (ev.index <= last) {
        dups += ev.index < last ? 1 : 0;
        if (ev.index === last) observed.add(ev.key);
        continue;
      }
      if (ev.prev > last) {
        gaps++;
        let from = last + 1;
        while (from < ev.index) {
          const r = await req(nc, 'ckv.c3.read', { op: 'replay', from, after: maxTs });
          t.equal(r.ok, true, `a gap before ${ev.index} can be filled from ${from}`);
          if (!r.ok || r.events.length === 0) break;
          for (const g of r.events) if (g.index < ev.index) observed.add(g.key);
          from = r.events[r.events.length - 1].index + 1;
        }
      }
      observed.add(ev.key);
      last = ev.index;
    }
    const unseen = keys.filter((k) => !observed.has(k));
    t.same(unseen, [], `the feed (${live.length} events, ${gaps} gaps filled by replay, ${dups} duplicates) covers every acknowledged write`);
    t.ok(
      notices.some((x) => x.type === 'coordinator' && x.id === newCoord),
      'the new coordinator is announced on the members subject',
    );
    // Bring the killed server back; it rejoins and catches up.
    c.startNode(coord);
    await c.waitFor('the restarted server to catch up', async () => {
      const s = await statuses(c);
      const me = s.find((x) => x.id === coord);
      const lead = s.find((x) => x.role === 'coordinator');
      return me && lead && me.applied >= lead.commit && lead.commit > 0 ? true : undefined;
    });
  });

  await t.test('SIGSTOP of a follower: writes go on; SIGCONT: it catches up', async (t) => {
    const coord = await c.waitForCoordinator();
    const follower = c.voters.find((v) => v !== coord)!;
    await c.kill(follower, 'SIGSTOP');
    for (let i = 0; i < 30; i++) {
      const r = await write(nc, { op: 'put', key: `stop.${i}`, value: String(i), rid: `stop-${i}` });
      t.ok(r.ok, `write ${i} while a follower is stopped`);
    }
    const ctl = await c.waitFor('ckvctl status to see the stopped follower dead', async () => {
      const r = await runNode(CKVCTL_JS, ['status', '--json', '--nats', c.nats.url, '--cluster', 'c3']);
      const rows = JSON.parse(r.stdout).servers as Array<{ id: number; liveness: string; answered: boolean }>;
      return r.code === 0 && rows.find((x) => x.id === follower)?.liveness === 'dead' ? rows : undefined;
    });
    t.equal(ctl.length, 3, 'the table lists every voter');
    t.equal(ctl.find((x) => x.id === follower)!.answered, false);
    const table = await c.ckv(['status', '--no-session']);
    t.match(table.stdout, /^ID\s+ROLE\s+EPOCH\s+LIVENESS\s+LAST\s+COMMIT\s+APPLIED\s+CHECKPOINT\s+LAG/, 'ckv status shows the table');
    t.match(table.stdout, new RegExp(`\\n${follower}\\s+follower \\(no answer\\)\\s+\\d+\\s+dead`), 'with the stopped follower dead');
    await c.kill(follower, 'SIGCONT');
    await c.waitFor('the follower to catch up', async () => {
      const s = await statuses(c);
      const f = s.find((x) => x.id === follower);
      const lead = s.find((x) => x.role === 'coordinator');
      return f && lead && f.applied === lead.applied ? true : undefined;
    });
  });

  await t.test('membership: a new server joins as a learner, becomes a voter; operator and automatic removal', async (t) => {
    const members: any[] = [];
    const sub = nc.subscribe('ckv.c3.members', { callback: (_e, m) => members.push(JSON.parse(dec.decode(m.data))) });
    t.teardown(() => sub.unsubscribe());
    const votersOf = async () => {
      const s = await statuses(c);
      return s.find((x) => x.role === 'coordinator') as (StatusRow & { voters: number[] }) | undefined;
    };
    c.startNode(4);
    const joined = await c.waitFor('server 4 to become a voter', async () => {
      const lead = await votersOf();
      return lead && lead.voters.join(',') === '1,2,3,4' ? lead : undefined;
    });
    t.same(joined.voters, [1, 2, 3, 4]);
    t.ok(members.some((m) => m.type === 'config' && m.voters.join(',') === '1,2,3,4'), 'the change is an event on members');
    const w = await write(nc, { op: 'put', key: 'after.join', value: 'x', rid: 'after-join' });
    t.ok(w.ok, 'writes go on with four voters');
    // Bully order: the highest id takes over once it has caught up, and every server agrees.
    const lead = await c.waitFor('server 4 to take over as coordinator', async () => {
      const s = await statuses(c);
      const leads = s.filter((x) => x.role === 'coordinator');
      return s.length === 4 && leads.length === 1 && leads[0]!.id === 4 ? (leads[0] as StatusRow & { voters: number[] }) : undefined;
    });
    const victim = lead.voters.find((v) => v !== lead.id)!;
    const removed = await runNode(CKVCTL_JS, ['member', 'remove', String(victim), '--nats', c.nats.url, '--cluster', 'c3']);
    t.equal(removed.code, 0, removed.stderr);
    await c.waitFor('the removal on members', async () =>
      members.some((m) => m.type === 'config' && m.voters.join(',') === [1, 2, 3, 4].filter((v) => v !== victim).join(',')) ? true : undefined,
    );
    const bad = await runNode(CKVCTL_JS, ['member', 'remove', String(lead.id), '--nats', c.nats.url, '--cluster', 'c3']);
    t.equal(bad.code, 1, 'removing the coordinator is refused');
    // Still running, the removed server goes on as a learner; it is not added back on its own.
    await c.waitFor('the removed server to run as a learner', async () => {
      const s = (await statuses(c)).find((x) => x.id === victim);
      return s && s.role === 'learner' ? true : undefined;
    });
    t.equal((await votersOf())?.voters.length, 3, 'a removed server is not added back automatically');
    const readd = await runNode(CKVCTL_JS, ['member', 'add', String(victim), '--nats', c.nats.url, '--cluster', 'c3', '--timeout', '20000']);
    t.equal(readd.code, 0, readd.stderr);
    await c.waitFor('the re-added server to be a voter', async () => ((await votersOf())?.voters.length === 4 ? true : undefined));
    // Dead, a voter is removed automatically.
    await c.kill(victim, 'SIGKILL');
    await c.waitFor('the dead voter to be removed', async () => {
      const v = (await votersOf())?.voters;
      return v && v.length === 3 && !v.includes(victim) ? true : undefined;
    });
    const after = await write(nc, { op: 'put', key: 'after.remove', value: 'x', rid: 'after-remove' });
    t.ok(after.ok, 'writes go on after the removal');
    // Removed automatically (not by an operator), it is added back once it returns and catches up.
    c.startNode(victim);
    await c.waitFor('the restarted server to rejoin', async () => ((await votersOf())?.voters.length === 4 ? true : undefined));
    const again = await runNode(CKVCTL_JS, ['member', 'add', String(victim), '--nats', c.nats.url, '--cluster', 'c3']);
    t.equal(again.code, 0, `adding a voter twice is not an error: ${again.stderr}`);
  });

  await t.test('a follower behind the retained log receives the checkpoint', async (t) => {
    const coord = await c.waitForCoordinator();
    const follower = c.voters.find((v) => v !== coord)!;
    await c.kill(follower, 'SIGKILL');
    for (let i = 0; i < 200; i++) {
      const r = await write(nc, { op: 'put', key: `far.${i % 50}`, value: String(i), rid: `far-${i}` });
      t.equal(r.ok, true);
    }
    // The coordinator checkpoints every second and keeps 20 entries below it.
    const target = (await statuses(c)).find((x) => x.role === 'coordinator')!.applied;
    await c.waitFor('the coordinator to checkpoint past the writes', async () => {
      const lead = (await statuses(c)).find((x) => x.role === 'coordinator');
      return lead && lead.checkpoint >= target - 5 ? true : undefined;
    });
    c.startNode(follower);
    await c.waitFor('the follower to catch up through a checkpoint transfer', async () => {
      const s = await statuses(c);
      const f = s.find((x) => x.id === follower);
      const lead = s.find((x) => x.role === 'coordinator');
      return f && lead && f.applied === lead.applied && f.applied >= target ? true : undefined;
    }, 30_000);
    t.match(c.logs.get(follower) ?? '', /checkpoint installed/, 'it installed a checkpoint from a peer');
    // Dead for longer than --remove-dead-after, it was removed; caught up, it is added back by a
    // configuration entry. Wait for that to settle everywhere: an entry committed while the
    // servers stop would reach some final checkpoints and not others.
    await c.waitFor('the follower to be a voter again, every server at the same applied index', async () => {
      const s = (await statuses(c)) as Array<StatusRow & { voters?: number[] }>;
      const lead = s.find((x) => x.role === 'coordinator');
      if (!lead || s.length !== c.procs.size) return undefined;
      return s.every((x) => x.voters?.includes(follower) && x.applied === lead.applied) ? true : undefined;
    }, 20_000);
    // Stop everything cleanly: each server checkpoints at the same applied index.
    await Promise.all([...c.procs.keys()].map((id) => c.kill(id, 'SIGTERM')));
    for (const id of c.voters.filter((v) => v !== follower)) {
      const d = await runNode(CKVCTL_JS, ['checkpoint', 'diff', c.dataDir(follower), c.dataDir(id)]);
      t.equal(d.code, 0, `checkpoint of ${follower} identical to ${id}'s: ${d.stdout}${d.stderr}`);
    }
  });
});

t.test('durable history and watches that do not stop: after every server was killed, beyond the retention, from a restarted one, and from current values', async (t) => {
  // Checkpoints every second; 8 events of history kept.
  const c = new Cluster(3, { cluster: 'wt', extraArgs: ['--checkpoint-cron', '* * * * * *', '--history', '8'] });
  await c.start();
  t.teardown(async () => {
    if (!t.passing()) t.comment(`server logs: ${c.saveLogs()}`);
    await c.stop();
  });
  await c.waitForCoordinator();
  const ckv = (args: string[]) => c.ckv(['--no-session', ...args]);
  const watchers: Array<ReturnType<typeof start>> = [];
  t.teardown(() => {
    for (const w of watchers) w.proc.kill('SIGKILL');
  });
  const watch = (args: string[]) => {
    const w = start(process.execPath, [CLI_JS, '--nats', c.nats.url, '--cluster', 'wt', '--no-session', 'watch', ...args], { timeoutMs: 60_000 });
    watchers.push(w);
    return w;
  };
  const indexOf = async (args: string[]): Promise<number> => {
    const r = await ckv(['--json', ...args]);
    t.equal(r.code, 0, args.join(' '));
    return JSON.parse(r.stdout).index as number;
  };
  const a1 = await indexOf(['put', 'w.a', '1']);
  const b2 = await indexOf(['put', 'w.b', '2']);
  await indexOf(['put', 'other', 'x']);
  const a10 = await indexOf(['put', 'w.a', '10']);
  const bDel = await indexOf(['del', 'w.b']);
  // Bytes and a leased key, to come back from the log and the checkpoint as they went in.
  const lease = JSON.parse((await ckv(['--json', 'lease', 'grant', '1h'])).stdout).id as number;
  t.equal((await c.ckv(['--no-session', 'put', '--lease', String(lease), 'bin.x', '-'], { input: Buffer.from([0xff, 0, 0xfe]) })).code, 0);
  const checkpointedAll = (index: number) =>
    c.waitFor(`every server's checkpoint at ${index}`, async () => {
      const rows = await statuses(c);
      return rows.length === 3 && rows.every((r) => r.checkpoint >= index) ? true : undefined;
    }, 15_000);

  // Every server is killed (half of the events only in the log's tail, or all in checkpoints).
  await checkpointedAll(a10);
  await Promise.all(c.voters.map((id) => c.kill(id, 'SIGKILL')));
  for (const id of c.voters) c.startNode(id);
  await c.waitForCoordinator();
  await c.waitFor('every server applied the writes', async () => {
    const rows = await statuses(c);
    return rows.length === 3 && rows.every((r) => r.applied >= bDel) ? true : undefined;
  }, 15_000);
  const bin = JSON.parse((await ckv(['get', '--json', 'bin.x'])).stdout);
  t.same([bin.value, bin.b64, bin.lease], [Buffer.from([0xff, 0, 0xfe]).toString('base64'), true, lease], 'bytes from stdin, with their lease, after every server was killed');
  // The same answer whichever server answers (the read queue group picks one at random).
  for (let i = 0; i < 6; i++) {
    const h = await ckv(['history', '--json', 'w.a']);
    t.equal(h.code, 0);
    const hj = JSON.parse(h.stdout);
    t.same(hj.events.map((e: { index: number; value: string }) => [e.index, e.value]), [[a1, '1'], [a10, '10']], `history of w.a (try ${i + 1})`);
    t.ok(hj.since <= a1, 'complete from before the first write');
    t.equal((await ckv(['get', '--rev', String(a1), 'w.a'])).stdout, '1', 'w.a as of its first write');
    t.equal((await ckv(['get', '--rev', String(a10 - 1), 'w.a'])).stdout, '1', 'w.a just before its second write');
    t.equal((await ckv(['get', '--rev', String(bDel - 1), 'w.b'])).stdout, '2', 'w.b before its deletion');
    const gone = await ckv(['get', '--rev', String(bDel), 'w.b']);
    t.equal(gone.code, 1, 'w.b as of its deletion: not found');
    const before = await ckv(['get', '--rev', String(b2 - 1), 'w.b']);
    t.equal(before.code, 1, 'w.b before it was written: not found');
  }
  const replayed = watch(['w.', '--from', '1']);
  await replayed.waitForStdout((s) => s.split('\n').filter(Boolean).length >= 4, 'four replayed events');
  t.same(
    replayed.stdout().split('\n').filter(Boolean).map((l) => l.split('\t').filter((_, i) => i !== 1).join(' ')),
    [`${a1} put w.a 1`, `${b2} put w.b 2`, `${a10} put w.a 10`, `${bDel} del w.b`],
    'the events under w. from 1, in order, after every server was killed',
  );
  replayed.proc.kill('SIGINT');
  t.equal((await replayed.done).code, 0);

  // Beyond the retention: more writes than 8 events, checkpointed everywhere.
  let lastOther = 0;
  for (let i = 0; i < 10; i++) lastOther = await indexOf(['put', 'other', `y${i}`]);
  await checkpointedAll(lastOther);
  let r = await ckv(['watch', 'w.', '--from', '1', '--timeout', '5000']);
  t.equal(r.code, 4, 'the events are gone at every server: exit 4');
  t.match(r.stderr, /COMPACTED/);
  r = await ckv(['get', '--rev', String(a1), 'w.a']);
  t.equal(r.code, 4, 'w.a as of a revision below the history: exit 4');
  t.match(r.stderr, /COMPACTED.*oldest kept/);
  t.equal((await ckv(['get', '--rev', String(a10), 'w.a'])).stdout, '10', 'a revision below the history, but the key has not changed since: its value');
  await ckv(['put', 'w.a', '1']);
  await ckv(['put', 'w.b', '2']);

  // --resync: the current values instead, then live changes.
  const resync = watch(['w.', '--from', '1', '--resync']);
  await resync.waitForStdout((s) => /\tput\tw\.a\t1\n/.test(s) && /\tput\tw\.b\t2\n/.test(s), 'the current values');
  // --initial: the same, and a mark on stderr where they end.
  const initial = watch(['w.', '--initial']);
  await initial.waitForStdout((s) => s.split('\n').filter(Boolean).length === 2, 'two current values');
  await c.waitFor('the initial mark', async () => (/current values end here/.test(initial.stderr()) ? true : undefined), 10_000);
  const put = await ckv(['put', '--json', 'w.c', '3']);
  const cIndex = JSON.parse(put.stdout).index as number;
  for (const w of [resync, initial]) await w.waitForStdout((s) => s.includes(`${cIndex}\t`) && /\tput\tw\.c\t3\n/.test(s), 'the live change after the current values');
  t.notMatch(resync.stdout() + initial.stdout(), /other/, 'only keys under the prefix');

  // One follower restarts: it lacks the events from w.c on; others have them, and are asked.
  const status = JSON.parse((await ckv(['status', '--json'])).stdout);
  const follower = status.servers.find((s: { role: string }) => s.role === 'follower').id as number;
  await c.kill(follower, 'SIGTERM');
  c.startNode(follower);
  await c.waitFor('the follower back', async () => {
    const s = JSON.parse((await ckv(['status', '--json'])).stdout);
    return s.servers.find((x: { id: number; applied: number }) => x.id === follower && x.applied >= cIndex) ? true : undefined;
  });
  for (let i = 0; i < 4; i++) {
    const w = watch(['w.c', '--from', String(cIndex)]);
    await w.waitForStdout((s) => /\tput\tw\.c\t3\n/.test(s), `the event at ${cIndex} (try ${i + 1})`);
    w.proc.kill('SIGINT');
    const done = await w.done;
    t.equal(done.code, 0, `try ${i + 1}: replayed from a server that has the events, then stopped cleanly`);
  }
});

t.test('locks and elections for scripts: contention, fencing tokens, a holder killed with SIGKILL', async (t) => {
  const c = new Cluster(3, { cluster: 'lk' });
  await c.start();
  const dir = mkdtempSync(join(tmpdir(), 'ckv-lock-'));
  const orphans: number[] = [];
  t.teardown(async () => {
    for (const pid of orphans) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (!t.passing()) t.comment(`server logs: ${c.saveLogs()}`);
    await c.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await c.waitForCoordinator();
  const base = [CLI_JS, '--nats', c.nats.url, '--cluster', 'lk', '--no-session'];

  // Six scripts contend for one lock: never two inside at once (mkdir fails if one is), each
  // runs once, and the fencing tokens they are given strictly increase in the order they ran.
  const critical = `mkdir "${dir}/inside" || { echo OVERLAP >> "${dir}/log"; exit 9; }; echo "$CKV_FENCE $CKV_LOCK_KEY" >> "${dir}/log"; sleep 0.2; rmdir "${dir}/inside"`;
  const runs = await Promise.all(Array.from({ length: 6 }, () => runNode(base[0]!, [...base.slice(1), 'lock', 'deploy', '--ttl', '3s', '--', 'sh', '-c', critical], { timeoutMs: 30_000 })));
  t.same(runs.map((r) => r.code), [0, 0, 0, 0, 0, 0], runs.map((r) => r.stderr).join(''));
  const lines = readFileSync(join(dir, 'log'), 'utf8').trim().split('\n');
  t.notOk(lines.includes('OVERLAP'), 'never two holders at once');
  t.equal(lines.length, 6, 'each ran once');
  const fences = lines.map((l) => Number(l.split(' ')[0]));
  t.ok(fences.every((f, i) => i === 0 || f > fences[i - 1]!), `fencing tokens strictly increase: ${fences.join(' ')}`);
  t.ok(lines.every((l) => l.endsWith(' locks.deploy')));
  t.equal((await runNode(base[0]!, [...base.slice(1), 'get', 'locks.deploy'])).code, 1, 'released: the key is gone');

  // The command's status is ckv's; held, --no-wait exits 1 at once.
  let r = await runNode(base[0]!, [...base.slice(1), 'lock', 'st', '--', 'sh', '-c', 'exit 7']);
  t.equal(r.code, 7, "ckv lock exits with the command's status");

  // A holder killed with SIGKILL: its lock is free again after its ttl, not before.
  const holder = start(process.execPath, [...base, 'lock', 'job', '--ttl', '1500ms', '--', 'sh', '-c', `echo "$$ $CKV_FENCE" > "${dir}/held"; exec sleep 30`], { timeoutMs: 60_000 });
  await c.waitFor('the holder inside', async () => (existsSync(join(dir, 'held')) && readFileSync(join(dir, 'held'), 'utf8').includes(' ') ? true : undefined));
  const [shPid, firstFence] = readFileSync(join(dir, 'held'), 'utf8').trim().split(' ').map(Number);
  orphans.push(shPid!);
  r = await runNode(base[0]!, [...base.slice(1), 'lock', 'job', '--no-wait', '--', 'true']);
  t.equal(r.code, 1, 'held: --no-wait exits 1');
  t.match(r.stderr, /locks\.job is held by/);
  holder.proc.kill('SIGKILL');
  const killedAt = Date.now();
  r = await runNode(base[0]!, [...base.slice(1), 'lock', 'job', '--wait', '10s', '--', 'sh', '-c', 'echo "$CKV_FENCE"'], { timeoutMs: 20_000 });
  const waited = Date.now() - killedAt;
  t.equal(r.code, 0, r.stderr);
  t.ok(Number(r.stdout.trim()) > firstFence!, `a larger fencing token (${r.stdout.trim()} > ${firstFence})`);
  // Refreshed every 500 ms, so it was good for at least 1000 ms after the kill.
  t.ok(waited >= 900, `not taken before the ttl ran out (${waited} ms after the kill)`);

  // A lock taken away while its command runs (here: deleted by someone): the command gets
  // SIGTERM (SIGKILL a second later), and ckv exits 4 whatever the command made of it.
  const victim = start(process.execPath, [...base, 'lock', 'gone', '--ttl', '1500ms', '--', 'sh', '-c', `trap 'echo got-term > "${dir}/term"; exit 0' TERM; echo in > "${dir}/gone"; while true; do sleep 0.05; done`], { timeoutMs: 30_000 });
  await c.waitFor('the victim inside', async () => (existsSync(join(dir, 'gone')) ? true : undefined));
  t.equal((await runNode(base[0]!, [...base.slice(1), 'del', 'locks.gone'])).code, 0);
  const v = await victim.done;
  t.equal(v.code, 4, `a lost lock: exit 4 (${v.stderr.trim()})`);
  t.match(v.stderr, /lost locks\.gone/);
  t.ok(existsSync(join(dir, 'term')), 'the command was sent SIGTERM');

  // Elections: an observer sees each leader, and the gap between them.
  const observer = start(process.execPath, [...base, 'elect', '--observe', 'db'], { timeoutMs: 60_000 });
  await observer.waitForStdout((s) => s === '\n', 'nobody leads yet');
  r = await runNode(base[0]!, [...base.slice(1), 'elect', 'db', 'host-a:5432', '--', 'sh', '-c', 'sleep 0.3; echo "$CKV_LOCK_KEY"']);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout.trim(), 'elections.db');
  await observer.waitForStdout((s) => s === '\nhost-a:5432\n\n', 'the leader, then nobody once it stepped down');
  observer.proc.kill('SIGINT');
  t.equal((await observer.done).code, 0);
});
