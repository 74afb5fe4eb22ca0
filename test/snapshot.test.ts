// Backup and restore (issue 10): `ckvctl snapshot save` from a running cluster while
// writes go on, `snapshot show` and `restore` refusing damaged files and non-empty
// directories, a fresh 3-server cluster started from the restored directories (a new
// cluster identity, every key served, `checkpoint diff` against the original), and the
// snapshot requests on the admin subject refusing what is malformed.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import { Cluster } from './helpers/cluster.js';
import { CKVCTL_JS, runNode, type RunResult } from './helpers/run.js';

const dec = new TextDecoder();
/** More keys than one snapshot page holds (SNAPSHOT_PAGE_ITEMS_MAX = 2000), so save pages on. */
const KEYS = 2_600;

function ckvctl(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return runNode(CKVCTL_JS, args, { env: { CKV_DATA: undefined as unknown as string, ...env } });
}

t.test('save from a live cluster, restore into a new one', async (t) => {
  const a = new Cluster(3, { cluster: 'snapa' });
  const b = new Cluster(3, { cluster: 'snapb' });
  t.teardown(async () => {
    if (!t.passing()) t.comment(`logs: ${a.saveLogs()} ${b.saveLogs()}`);
    await a.stop();
    await b.stop();
  });
  await a.start();
  await a.waitForCoordinator();
  const lines = Array.from({ length: KEYS }, (_, i) => JSON.stringify({ key: `k.${String(i).padStart(5, '0')}`, value: `value ${i}` })).join('\n') + '\n';
  let r = await a.ckv(['import'], { input: lines });
  t.equal(r.code, 0, r.stderr);
  r = await a.ckv(['put', 'last.before.save', 'yes']);
  t.equal(r.code, 0, r.stderr);

  // Writes go on while the snapshot is read: it holds every write acknowledged before it
  // started, and is consistent (its digest is checked by show and restore).
  const file = path.join(a.dir, 'backup.ckvsnap');
  const nc = await connect({ servers: a.nats.url });
  t.teardown(() => nc.close());
  let writing = true;
  let concurrent = 0;
  const writer = (async () => {
    while (writing) {
      const rep = JSON.parse(dec.decode((await nc.request('ckv.snapa.write', JSON.stringify({ op: 'put', key: `during.${concurrent}`, value: 'x' }), { timeout: 5000 })).data));
      if (rep.ok) concurrent++;
    }
  })();
  const save = await runNode(CKVCTL_JS, ['snapshot', 'save', file, '--nats', a.nats.url, '--cluster', 'snapa']);
  writing = false;
  await writer;
  t.equal(save.code, 0, save.stderr);
  t.match(save.stdout, /^saved \d+ keys and \d+ request ids at index \d+/);
  t.notOk(fs.existsSync(`${file}.part`), 'no part file is left');
  t.ok(concurrent > 0, `writes went on during the save (${concurrent})`);

  const show = await ckvctl(['snapshot', 'show', '--json', file]);
  t.equal(show.code, 0, show.stderr);
  const h = JSON.parse(show.stdout);
  t.ok(h.counts.keys >= KEYS + 1, `every key written before the save is in it (${h.counts.keys})`);
  t.ok(h.counts.rids >= 1, 'the exactly-once table is in it');

  // Restore each voter of a new cluster; the identity is the same for all three, new, and
  // another token gives another.
  const ids: string[] = [];
  for (const id of b.voters) {
    const rr = await ckvctl(['snapshot', 'restore', file, '--data', b.dataDir(id), '--id', String(id), '--voters', '1,2,3', '--json']);
    t.equal(rr.code, 0, rr.stderr);
    const o = JSON.parse(rr.stdout);
    t.equal(o.keys, h.counts.keys);
    t.equal(o.digest, h.digest);
    ids.push(o.cluster);
  }
  t.equal(new Set(ids).size, 1, 'every restored voter has the same cluster identity');
  t.not(ids[0], h.clusterId, 'a new cluster identity');
  const other = await ckvctl(['snapshot', 'restore', file, '--data', path.join(b.dir, 'other'), '--id', '1', '--voters', '1,2,3', '--token', 'second', '--json']);
  t.equal(other.code, 0, other.stderr);
  t.not(JSON.parse(other.stdout).cluster, ids[0], 'another --token, another identity');

  // The restored directory holds exactly the source's checkpoint state (its voters named).
  const diff = await ckvctl(['checkpoint', 'diff', '--json', a.dataDir(h.server), b.dataDir(1)]);
  const d = JSON.parse(diff.stdout);
  if (d.left.meta.index === h.meta.index) {
    t.same(d.keys, [], 'the same keys and records as the source checkpoint');
    t.same(d.metaDiffers, d.left.meta.voters.join(',') === '1,2,3' ? [] : ['voters']);
  } else {
    // The source checkpointed the writes made during the save since: compare on the file.
    t.ok(d.left.meta.index > h.meta.index);
  }
  const restoredShow = await ckvctl(['checkpoint', 'show', '--json', '--data', b.dataDir(2)]);
  t.equal(restoredShow.code, 0, restoredShow.stderr);
  t.equal(JSON.parse(restoredShow.stdout).digest, h.digest, 'checkpoint show prints the snapshot\'s digest');

  // The new cluster serves every key, takes writes, and says its identity.
  await b.start();
  await b.waitForCoordinator();
  r = await b.ckv(['get', 'last.before.save']);
  t.equal(r.stdout.trim(), 'yes', r.stderr);
  r = await b.ckv(['export', 'k.']);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout.trim().split('\n').length, KEYS, 'every imported key is served by the new cluster');
  r = await b.ckv(['put', 'after.restore', '1']);
  t.equal(r.code, 0, r.stderr);
  r = await b.ckv(['status', '--json']);
  const st = JSON.parse(r.stdout);
  t.ok(st.servers.every((s: { clusterId?: string }) => s.clusterId === ids[0]), 'the new cluster runs under the restored identity');

  // Stopped cleanly, the new cluster's checkpoint differs from the snapshot only by what it wrote since.
  await Promise.all(b.voters.map((id) => b.kill(id, 'SIGTERM')));
  const after = await ckvctl(['checkpoint', 'diff', '--json', path.join(b.dir, 'other'), b.dataDir(1)]);
  const ad = JSON.parse(after.stdout);
  t.same(
    ad.keys.map((k: { key: string }) => k.key),
    ['after.restore'],
    'only the write made after the restore differs',
  );
});

t.test('damaged files, non-empty directories and bad arguments change nothing', async (t) => {
  const c = new Cluster(3, { cluster: 'snapc' });
  t.teardown(async () => {
    if (!t.passing()) t.comment(`logs: ${c.saveLogs()}`);
    await c.stop();
  });
  await c.start();
  await c.waitForCoordinator();
  for (const [k, v] of [['a', '1'], ['b', '2'], ['c', '3']]) t.equal((await c.ckv(['put', k!, v!])).code, 0);
  const file = path.join(c.dir, 'snap');
  // --server names the server; a follower's copy is as good.
  const save = await runNode(CKVCTL_JS, ['snapshot', 'save', file, '--server', '2', '--nats', c.nats.url, '--cluster', 'snapc']);
  t.equal(save.code, 0, save.stderr);
  t.match(save.stdout, /from server 2/);
  const bytes = fs.readFileSync(file);

  // A flipped byte inside a value, a truncated file, text after the end: refused, nothing made.
  const cases: Array<[string, Buffer, RegExp]> = [];
  const flipped = Buffer.from(bytes);
  const at = bytes.indexOf('"value":"2"') + 9;
  flipped[at] = '7'.charCodeAt(0);
  cases.push(['flipped', flipped, /checksum mismatch/]);
  cases.push(['truncated', bytes.subarray(0, bytes.lastIndexOf('{"end"')), /cut short/]);
  cases.push(['half-line', bytes.subarray(0, bytes.length - 20), /not JSON/]);
  cases.push(['trailing', Buffer.concat([bytes, Buffer.from('{"k":"z","r":{"value":"9","rev":1,"ts":1}}\n')]), /after the end line/]);
  cases.push(['empty', Buffer.alloc(0), /empty/]);
  cases.push(['not-a-snapshot', Buffer.from('{"hello":1}\n'), /not a ckv snapshot/]);
  for (const [name, content, why] of cases) {
    const f = path.join(c.dir, name);
    fs.writeFileSync(f, content);
    const s = await ckvctl(['snapshot', 'show', f]);
    t.equal(s.code, 1, `${name}: show refuses it`);
    t.match(s.stderr, why, name);
    const dir = path.join(c.dir, `r-${name}`);
    const r = await ckvctl(['snapshot', 'restore', f, '--data', dir, '--id', '1', '--voters', '1,2,3']);
    t.equal(r.code, 1, `${name}: restore refuses it`);
    t.notOk(fs.existsSync(dir), `${name}: no directory is made`);
  }

  // A directory in use is never written into.
  const used = c.dataDir(1);
  const before = fs.readdirSync(used).sort();
  let r = await ckvctl(['snapshot', 'restore', file, '--data', used, '--id', '1', '--voters', '1,2,3']);
  t.equal(r.code, 1);
  t.match(r.stderr, /is not empty/);
  t.same(fs.readdirSync(used).sort(), before);

  for (const args of [
    ['snapshot', 'restore', file, '--data', path.join(c.dir, 'x'), '--id', '4', '--voters', '1,2,3'],
    ['snapshot', 'restore', file, '--data', path.join(c.dir, 'x'), '--voters', '1,2,3'],
    ['snapshot', 'restore', file, '--data', path.join(c.dir, 'x'), '--id', '1'],
    ['snapshot', 'restore', file, '--data', path.join(c.dir, 'x'), '--id', '1', '--voters', '1,1,2'],
    ['snapshot', 'restore', file, '--id', '1', '--voters', '1,2,3'],
    ['snapshot', 'frobnicate'],
    ['snapshot', 'show'],
    ['snapshot', 'save'],
    ['snapshot', 'save', file, '--server', 'zero'],
  ]) {
    r = await ckvctl(args);
    t.equal(r.code, 2, `usage error: ${args.slice(1).join(' ')}: ${r.stderr.trim()}`);
  }
  t.notOk(fs.existsSync(path.join(c.dir, 'x')), 'no usage error makes a directory');

  // A server that is not there: save says so (exit 3) and leaves no file.
  const none = path.join(c.dir, 'none');
  r = await runNode(CKVCTL_JS, ['snapshot', 'save', none, '--server', '9', '--timeout', '1500', '--nats', c.nats.url, '--cluster', 'snapc']);
  t.equal(r.code, 3, r.stderr);
  t.notOk(fs.existsSync(none) || fs.existsSync(`${none}.part`));

  // The snapshot requests on the wire: malformed ones get BAD_REQUEST, the wrong subject too.
  const nc = await connect({ servers: c.nats.url });
  t.teardown(() => nc.close());
  const ask = async (subject: string, body: unknown): Promise<any> => JSON.parse(dec.decode((await nc.request(subject, JSON.stringify(body), { timeout: 3000 })).data));
  for (const body of [
    { op: 'snapshot', server: 1, phase: 'kv', cursor: 12 },
    { op: 'snapshot', server: 1, phase: 'nope' },
    { op: 'snapshot', server: 1, cursor: 'a' },
    { op: 'snapshot', server: 1, phase: 'rids', cursor: '-1' },
    { op: 'snapshot', server: 0 },
    { op: 'snapshot', server: 1, extra: true },
  ]) {
    const rep = await ask('ckv.snapc.admin', body);
    t.equal(rep.ok, false, JSON.stringify(body));
    t.equal(rep.error.code, 'BAD_REQUEST', JSON.stringify(body));
  }
  const wrong = await ask('ckv.snapc.read', { op: 'snapshot', server: 1 });
  t.equal(wrong.error.code, 'BAD_REQUEST');
  t.match(wrong.error.message, /admin/);
  const far = await ask('ckv.snapc.admin', { op: 'snapshot', server: 1, phase: 'rids', cursor: '999999' });
  t.equal(far.ok, true, 'a cursor past the end is an empty last page');
  t.same(far.snapshot.items, []);
  t.equal(far.snapshot.next, null);
  // Still serving.
  r = await c.ckv(['get', 'b']);
  t.equal(r.stdout.trim(), '2');
});
