// ckv-server --metrics: Prometheus text at /metrics, /healthz, /readyz, against
// a real 3-server cluster; killing two of three turns the survivor's /readyz
// to 503 within seconds, with the reason, and its log says no coordinator is heard.

import t from 'tap';
import { Cluster } from './helpers/cluster.js';
import { freePort } from './helpers/nats-server.js';

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(3000) });
  return { status: r.status, body: await r.text() };
}

/** The value of an unlabelled metric line. */
const metric = (text: string, name: string): number | undefined => {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
};

t.test('metrics, health and readiness of a real cluster', async (t) => {
  const ports = [await freePort(), await freePort(), await freePort()];
  const c = new Cluster(3, { cluster: 'mx' });
  await c.start([]);
  for (const id of c.voters) c.startNode(id, ['--metrics', `127.0.0.1:${ports[id - 1]}`]);
  t.teardown(() => c.stop());
  await c.waitForCoordinator();
  for (let i = 0; i < 5; i++) t.equal((await c.ckv(['--no-session', 'put', `m.${i}`, 'v'])).code, 0);
  t.equal((await c.ckv(['--no-session', 'get', 'm.0'])).code, 0);
  await c.ckv(['--no-session', 'get', 'm.none']);

  const texts = await Promise.all(ports.map((p) => get(p, '/metrics')));
  for (const r of texts) t.equal(r.status, 200);
  const names = ['ckv_server_is_coordinator', 'ckv_server_has_coordinator', 'ckv_epoch', 'ckv_log_last_index', 'ckv_commit_index', 'ckv_applied_index', 'ckv_checkpoint_index', 'ckv_follower_lag_entries', 'ckv_log_bytes', 'ckv_checkpoint_bytes', 'ckv_coordinator_changes_total', 'ckv_checkpoint_behind_holds_total'];
  for (const n of names) t.ok(texts.every((r) => metric(r.body, n) !== undefined), `${n} on every server`);
  for (const n of ['ckv_log_fsync_duration_seconds', 'ckv_checkpoint_duration_seconds', 'ckv_request_duration_seconds', 'ckv_requests_total', 'ckv_peer_messages_dropped_total']) {
    t.ok(texts.every((r) => r.body.includes(`# TYPE ${n} `)), `${n} exported`);
  }
  t.ok(texts.every((r) => (metric(r.body, 'ckv_log_fsync_duration_seconds_count') ?? 0) > 0), 'log syncs timed on every server');
  t.equal(texts.reduce((a, r) => a + metric(r.body, 'ckv_server_is_coordinator')!, 0), 1, 'exactly one coordinator');
  t.ok(texts.every((r) => metric(r.body, 'ckv_server_has_coordinator') === 1), 'every server hears it');
  const all = texts.map((r) => r.body).join('\n');
  t.match(all, /ckv_requests_total\{op="put",code="OK"\} [1-9]/, 'puts counted by op and code');
  t.match(all, /ckv_requests_total\{op="get",code="NOT_FOUND"\} 1/, 'a miss counted with its code');
  t.ok(texts.every((r) => (metric(r.body, 'ckv_commit_index') ?? 0) >= 6), 'commit index moved');

  for (const p of ports) {
    t.equal((await get(p, '/healthz')).status, 200);
    const ready = await get(p, '/readyz?verbose');
    t.equal(ready.status, 200, ready.body);
    t.match(ready.body, /\[\+\]coordinator ok/);
  }
  t.equal((await get(ports[0]!, '/nothing')).status, 404);

  // Two of three gone: the survivor hears no coordinator, and says so.
  const survivor = c.voters[0]!;
  for (const id of c.voters) if (id !== survivor) await c.kill(id);
  const deadline = Date.now() + 10_000;
  let ready = await get(ports[survivor - 1]!, '/readyz');
  while (ready.status === 200 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    ready = await get(ports[survivor - 1]!, '/readyz');
  }
  t.equal(ready.status, 503, 'not ready without a majority');
  t.match(ready.body, /\[-\]coordinator failed/, ready.body);
  t.equal((await get(ports[survivor - 1]!, '/healthz')).status, 200, 'but alive');
  t.equal(metric((await get(ports[survivor - 1]!, '/metrics')).body, 'ckv_server_has_coordinator'), 0);
  // And its log says so once, after NO_COORDINATOR_WARN_MS (5 s).
  const logDeadline = Date.now() + 15_000;
  while (!/no coordinator heard/.test(c.logs.get(survivor) ?? '') && Date.now() < logDeadline) await new Promise((r) => setTimeout(r, 100));
  t.equal((c.logs.get(survivor)!.match(/no coordinator heard/g) ?? []).length, 1, 'a warning in the survivor\'s log, once');

  // SIGTERM stops it, metrics listener and its kept-alive connections included (it once
  // lingered forever, still answering /readyz).
  const p = c.procs.get(survivor)!;
  const exited = new Promise<number | null>((resolve) => p.once('exit', (code) => resolve(code)));
  const started = Date.now();
  p.kill('SIGTERM');
  const code = await Promise.race([exited, new Promise<'lingered'>((r) => setTimeout(() => r('lingered'), 10_000))]);
  t.equal(code, 0, `SIGTERM: exit 0 (after ${Date.now() - started} ms)`);
  const after = await fetch(`http://127.0.0.1:${ports[survivor - 1]}/healthz`, { signal: AbortSignal.timeout(2000) }).then(
    () => 'answered',
    () => 'refused',
  );
  t.equal(after, 'refused', 'the metrics port is closed');
});
