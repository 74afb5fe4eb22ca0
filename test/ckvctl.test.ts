// ckvctl's offline commands, run as the compiled program (dist/tools/ckvctl.js)
// on data directories written by the real storage adapters.

import t from 'tap';
import { CHECKPOINT_FORMAT } from '../src/core/records.js';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Entry } from '../src/core/wire.js';
import { LmdbCheckpoint } from '../src/storage/checkpoint.js';
import type { CheckpointDelta, Rec } from '../src/core/records.js';
import { scanLog } from '../src/storage/log-inspect.js';
import { SEGMENT_HEADER_BYTES } from '../src/storage/segment-format.js';
import { SegmentLog } from '../src/storage/segment-log.js';
import { CKVCTL_JS, ROOT, runNode, type RunOptions, type RunResult } from './helpers/run.js';


// `npm test` builds first; when this file is run on its own, build if the
// compiled tool is missing or older than what it is compiled from.
function ensureBuilt(): void {
  const sources = [
    'tools/ckvctl.ts',
    'tools/ckvctl-online.ts',
    ...fs.readdirSync(path.join(ROOT, 'src', 'storage')).map((f) => `src/storage/${f}`),
  ].filter((f) => f.endsWith('.ts'));
  const stale = sources.some((src) => {
    const out = path.join(ROOT, 'dist', src.replace(/\.ts$/, '.js'));
    return !fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(path.join(ROOT, src)).mtimeMs;
  });
  if (stale) spawnSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: ROOT });
  if (!fs.existsSync(CKVCTL_JS)) throw new Error(`${CKVCTL_JS} is missing: run npm run build`);
}
ensureBuilt();

function ckvctl(args: string[], env: Record<string, string | undefined> = {}, opts: RunOptions = {}): Promise<RunResult> {
  return runNode(CKVCTL_JS, args, { ...opts, env: { CKV_DATA: undefined, ...env } });
}

const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ckv-ckvctl-'));
t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));

function entries(n: number, variant = ''): Entry[] {
  const out: Entry[] = [
    { index: 1, epoch: 1, ts: 1, kind: 'noop' },
    { index: 2, epoch: 1, ts: 2, kind: 'config', voters: [1, 2, 3] },
  ];
  for (let i = 3; i <= n; i++) {
    const ops: Extract<Entry, { kind: 'write' }>['ops'] =
      i % 5 === 0
        ? [{ op: 'del', key: `k${i - 1}` }]
        : i % 7 === 0
          ? [{ op: 'cas', key: `k${i}`, expect: null, value: `v${i}` }]
          : [{ op: 'put', key: `k${i}`, value: `value ${i}${variant}` }];
    out.push({ index: i, epoch: 1, ts: i, kind: 'write', rid: `rid-${i}`, ops });
  }
  return out;
}

function rec(value: string, rev: number): Rec {
  return { value, rev, ts: rev };
}

async function makeData(name: string, opts: { kv?: Array<[string, Rec | null]>; index?: number; n?: number } = {}): Promise<string> {
  const data = path.join(base, name);
  const { log } = await SegmentLog.open(path.join(data, 'log'), { segmentBytesMax: 600 });
  log.append(entries(opts.n ?? 40));
  await log.sync();
  await log.close();
  const cp = await LmdbCheckpoint.open(path.join(data, 'checkpoint'));
  const delta: CheckpointDelta = {
    kv: opts.kv ?? [
      ['app.config', rec('{"debug":true}', 3)],
      ['app.name', rec('ckv', 4)],
      ['jobs/1', rec('done', 6)],
      ['Zeta', rec('upper case sorts first', 8)],
    ],
    ridsSet: [['rid-3', { index: 3, ts: 3, result: { ok: true } }]],
    ridsDel: [],
    meta: { format: CHECKPOINT_FORMAT, index: opts.index ?? 20, epoch: 1, ts: 20, voters: [1, 2, 3], eventPrev: 19 },
  };
  await cp.write(delta);
  await cp.close();
  return data;
}

/** A fingerprint of everything ckvctl must not change (LMDB's lock file aside). */
function fingerprint(data: string): string {
  const h = createHash('sha256');
  const walk = (dir: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, name);
      if (fs.statSync(p).isDirectory()) walk(p);
      else if (name !== 'lock.mdb') h.update(p).update(fs.readFileSync(p));
    }
  };
  walk(data);
  return h.digest('hex');
}

t.test('log commands', async (t) => {
  const data = await makeData('logs');
  const before = fingerprint(data);
  const segs = scanLog(path.join(data, 'log'));
  t.ok(segs.length >= 3, 'several segments');

  // Independent read-only runs go in parallel: process start-up dominates.
  const [ls, lsJson, dump, part, verify, vj, none] = await Promise.all([
    ckvctl(['log', 'ls', '--data', data]),
    ckvctl(['log', 'ls', '--json', '--data', data]),
    ckvctl(['log', 'dump', '--data', data]),
    ckvctl(['log', 'dump', '--from', '10', '--to', '12', '--json', '--data', data]),
    ckvctl(['log', 'verify', '--data', data]),
    ckvctl(['log', 'verify', '--json'], { CKV_DATA: data }),
    ckvctl(['log', 'repair', '--data', data]),
  ]);
  t.equal(ls.code, 0, ls.stderr);
  const lines = ls.stdout.trim().split('\n');
  t.match(lines[0], /^FILE\s+FIRST\s+LAST\s+ENTRIES\s+BYTES/);
  t.equal(lines.length, segs.length + 1);
  t.match(lines[1], new RegExp(`^00000000000000000001\\.seg\\s+1\\s+${segs[0]!.lastIndex}\\s+${segs[0]!.count}\\s+${segs[0]!.bytes}`));
  t.same(JSON.parse(lsJson.stdout), segs);

  t.equal(dump.code, 0, dump.stderr);
  const dl = dump.stdout.trim().split('\n');
  t.match(dl[0], /^INDEX\s+EPOCH\s+TS\s+KIND\s+DETAIL$/);
  t.equal(dl.length, 41);
  t.match(dl[1], /^1\s+1\s+1\s+noop$/);
  t.match(dl[2], /^2\s+1\s+2\s+config\s+voters=1,2,3$/);
  t.match(dl[3], /^3\s+1\s+3\s+write\s+rid=rid-3 put k3="value 3"$/);
  t.match(dl[5], /del k4$/);
  t.match(dl[7], /cas k7 expect=null value="v7"$/);
  t.equal(part.code, 0);
  t.same(
    part.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Entry),
    entries(40).slice(9, 12),
  );

  t.equal(verify.code, 0);
  t.equal(verify.stdout.trim(), `ok: ${segs.length} segments, 40 entries, 1..40`);
  t.equal(vj.code, 0, 'CKV_DATA names the data directory');
  t.match(JSON.parse(vj.stdout), { ok: true, entries: 40, first: 1, last: 40, problems: [] });

  t.equal(none.code, 0);
  t.match(none.stdout, /nothing to repair/);
  t.equal(fingerprint(data), before, 'nothing changed the data directory');
});

t.test('log repair after corruption', async (t) => {
  const data = await makeData('corrupt');
  const logDir = path.join(data, 'log');
  const segs = scanLog(logDir);
  const victim = segs[1]!;
  const buf = fs.readFileSync(victim.file);
  const off = SEGMENT_HEADER_BYTES; // the segment's first record
  buf[off + 10] ^= 0x20;
  fs.writeFileSync(victim.file, buf);
  const before = fingerprint(data);

  const [verify, vj, ls, dump] = await Promise.all([
    ckvctl(['log', 'verify', '--data', data]),
    ckvctl(['log', 'verify', '--json', '--data', data]),
    ckvctl(['log', 'ls', '--data', data]),
    ckvctl(['log', 'dump', '--data', data]),
  ]);
  t.equal(verify.code, 1);
  t.match(verify.stdout, `${victim.file}: byte ${off}: record checksum mismatch`);
  t.equal(vj.code, 1);
  t.match(JSON.parse(vj.stdout), { ok: false, problems: [{ file: victim.file, offset: off, torn: false }] });
  t.equal(ls.code, 1, 'ls shows the problem too');
  t.match(ls.stdout, /checksum mismatch at byte 24/);
  t.equal(dump.code, 1);
  t.equal(dump.stdout.trim().split('\n').length, 1 + victim.firstIndex - 1, 'entries up to the bad record');
  t.match(dump.stderr, `corrupt at byte ${off}`);
  t.equal(fingerprint(data), before, 'verify, ls and dump change nothing');
  await t.rejects(SegmentLog.open(logDir), { name: 'LogCorruptError', file: victim.file, offset: off });

  const repair = await ckvctl(['log', 'repair', '--data', data]);
  t.equal(repair.code, 0, repair.stderr);
  t.match(repair.stdout, `cut ${victim.file} at byte ${off}: record checksum mismatch`);
  for (const s of segs.slice(2)) t.match(repair.stdout, `deleted ${s.file}`);
  const after = await ckvctl(['log', 'verify', '--data', data]);
  t.equal(after.code, 0);
  const { log, entries: got, warnings } = await SegmentLog.open(logDir);
  t.same(got, entries(40).slice(0, victim.firstIndex - 1));
  t.same(warnings, []);
  await log.close();

  // A torn tail is reported as such, and repaired the same way.
  fs.appendFileSync(path.join(logDir, path.basename(segs[1]!.file)), 'torn');
  const torn = await ckvctl(['log', 'verify', '--data', data]);
  t.equal(torn.code, 1);
  t.match(torn.stdout, /torn tail/);
  const rj = await ckvctl(['log', 'repair', '--json', '--data', data]);
  t.match(JSON.parse(rj.stdout), { repaired: true, offset: 24, entriesDropped: 0, bytesDropped: 4 });
});

t.test('checkpoint commands', async (t) => {
  const data = await makeData('cp');
  const before = fingerprint(data);
  const cp = await LmdbCheckpoint.open(path.join(data, 'checkpoint'), { readOnly: true });
  const digest = cp.digest();
  await cp.close();

  const empty = path.join(base, 'empty');
  fs.mkdirSync(empty);
  const [show, sj, get, gj, missing, dump, dj, verify, vj, noCp, noLog, cv] = await Promise.all([
    ckvctl(['checkpoint', 'show', '--data', data]),
    ckvctl(['checkpoint', 'show', '--json', '--data', data]),
    ckvctl(['checkpoint', 'get', 'app.name', '--data', data]),
    ckvctl(['checkpoint', 'get', 'app.config', '--json', '--data', data]),
    ckvctl(['checkpoint', 'get', 'nope', '--data', data]),
    ckvctl(['checkpoint', 'dump', '--data', data]),
    ckvctl(['checkpoint', 'dump', '--json', '--data', data]),
    ckvctl(['checkpoint', 'verify', '--data', data]),
    ckvctl(['checkpoint', 'verify', '--json', '--data', data]),
    ckvctl(['checkpoint', 'show', '--data', empty]),
    ckvctl(['log', 'ls', '--data', empty]),
    ckvctl(['checkpoint', 'verify', '--data', empty]),
  ]);
  t.equal(show.code, 0, show.stderr);
  t.match(show.stdout, /^index\s+20$/m);
  t.match(show.stdout, /^voters\s+1,2,3$/m);
  t.match(show.stdout, /^keys\s+4$/m);
  t.match(show.stdout, /^rids\s+1$/m);
  t.match(show.stdout, new RegExp(`^digest\\s+${digest}$`, 'm'));
  t.match(JSON.parse(sj.stdout), { meta: { format: CHECKPOINT_FORMAT, index: 20, eventPrev: 19 }, keys: 4, rids: 1, digest });

  t.equal(get.code, 0);
  t.match(get.stdout, /^value\s+"ckv"$/m);
  t.match(get.stdout, /^rev\s+4$/m);
  t.same(JSON.parse(gj.stdout), { key: 'app.config', value: '{"debug":true}', rev: 3, ts: 3 });
  t.equal(missing.code, 1);
  t.match(missing.stderr, /"nope" is not in the checkpoint/);

  t.equal(dump.code, 0);
  const dl = dump.stdout.trim().split('\n');
  t.match(dl[0], /^KEY\s+REV\s+TS\s+VALUE$/);
  t.same(
    dl.slice(1).map((l) => l.split(/\s+/)[0]),
    ['Zeta', 'app.config', 'app.name', 'jobs/1'],
    'byte order',
  );
  t.same(
    dj.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as unknown),
    [
      { key: 'Zeta', value: 'upper case sorts first', rev: 8, ts: 8 },
      { key: 'app.config', value: '{"debug":true}', rev: 3, ts: 3 },
      { key: 'app.name', value: 'ckv', rev: 4, ts: 4 },
      { key: 'jobs/1', value: 'done', rev: 6, ts: 6 },
    ],
  );

  t.equal(verify.code, 0, verify.stdout);
  t.match(verify.stdout, `digest ${digest}`);
  t.match(verify.stdout, /^ok$/m);
  t.match(JSON.parse(vj.stdout), { ok: true, keys: 4, rids: 1, digest, problems: [] });
  t.equal(fingerprint(data), before, 'nothing changed the data directory');

  t.equal(noCp.code, 1);
  t.match(noCp.stderr, /no checkpoint at/);
  t.equal(noLog.code, 1);
  t.match(noLog.stderr, /no log at/);
  t.same(fs.readdirSync(empty), [], 'nothing created');
  t.equal(cv.code, 1);
});

t.test('checkpoint diff', async (t) => {
  const a = await makeData('diff-a');
  const b = await makeData('diff-b');
  const c = await makeData('diff-c', {
    kv: [
      ['app.config', rec('{"debug":true}', 3)],
      ['app.name', rec('other', 4)],
      ['jobs/2', rec('new', 6)],
      ['Zeta', rec('upper case sorts first', 8)],
    ],
  });
  const d = await makeData('diff-d', { index: 21 });
  const [same, sameDirect, diff, dj, metaOnly] = await Promise.all([
    ckvctl(['checkpoint', 'diff', a, b]),
    ckvctl(['checkpoint', 'diff', path.join(a, 'checkpoint'), b]),
    ckvctl(['checkpoint', 'diff', a, c]),
    ckvctl(['checkpoint', 'diff', '--json', a, c]),
    ckvctl(['checkpoint', 'diff', a, d]),
  ]);
  t.equal(same.code, 0, same.stderr);
  t.match(same.stdout, /^identical$/m);
  t.equal(sameDirect.code, 0, 'a checkpoint directory is accepted too');
  t.equal(diff.code, 1);
  t.match(diff.stdout, /^app\.name\s+"ckv" rev 4 ts 4\s+"other" rev 4 ts 4$/m);
  t.match(diff.stdout, /^jobs\/1\s+"done" rev 6 ts 6\s+\(absent\)$/m);
  t.match(diff.stdout, /^jobs\/2\s+\(absent\)\s+"new" rev 6 ts 6$/m);
  t.notMatch(diff.stdout, /app\.config/);
  t.match(diff.stdout, /different: 3 keys/);
  const parsed = JSON.parse(dj.stdout) as { identical: boolean; keys: Array<{ key: string }>; metaDiffers: string[] };
  t.equal(parsed.identical, false);
  t.same(
    parsed.keys.map((k) => k.key),
    ['app.name', 'jobs/1', 'jobs/2'],
  );
  t.same(parsed.metaDiffers, []);

  t.equal(metaOnly.code, 1, 'a different index is a difference');
  t.match(metaOnly.stdout, /meta\.index differs: 20 vs 21/);
});

t.test('usage errors exit 2', async (t) => {
  const data = await makeData('usage');
  const cases: string[][] = [
    [],
    ['bogus'],
    ['log'],
    ['log', 'bogus', '--data', data],
    ['checkpoint', 'bogus', '--data', data],
    ['log', 'ls'],
    ['log', 'ls', 'extra', '--data', data],
    ['log', 'ls', '--nope', '--data', data],
    ['log', 'dump', '--from', 'x', '--data', data],
    ['log', 'dump', '--from', '5', '--to', '2', '--data', data],
    ['log', 'ls', '--from', '5', '--data', data],
    ['checkpoint', 'get', '--data', data],
    ['checkpoint', 'diff', data],
  ];
  const runs = await Promise.all(cases.map((args) => ckvctl(args)));
  for (const [i, r] of runs.entries()) {
    t.equal(r.code, 2, `ckvctl ${cases[i]!.join(' ')}`);
    t.match(r.stderr, /^ckvctl: .+\nrun 'ckvctl --help' for usage/, 'says what is wrong');
    t.equal(r.stdout, '');
  }
  // The online commands check their flags before connecting (port 1: nothing listens).
  for (const args of [
    ['member', 'add', '4', '--timeout', 'abc'],
    ['member', 'add', 'x'],
    ['status', '--timeout', '0'],
  ]) {
    const r = await ckvctl([...args, '--nats', 'nats://127.0.0.1:1']);
    t.equal(r.code, 2, `ckvctl ${args.join(' ')}`);
  }
  const help = await ckvctl(['--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /^usage: ckvctl/);
  t.match(help.stdout, /checkpoint diff DIR1 DIR2/);
});

t.test('a reader that goes away (| head) ends the output quietly, with the usual status', async (t) => {
  const data = await makeData('epipe', { n: 400 });
  for (const [args, code] of [
    [['log', 'dump', '--data', data], 0],
    [['checkpoint', 'dump', '--json', '--data', data], 0],
    [['--help'], 0],
    [['checkpoint', 'get', 'nope', '--data', data], 1],
  ] as const) {
    const r = await ckvctl([...args], {}, { closeStdout: true });
    t.equal(r.code, code, `ckvctl ${args.join(' ')}`);
    t.equal(r.stderr.includes('EPIPE') || r.stderr.includes('    at '), false, `ckvctl ${args.join(' ')}: no stack trace (${r.stderr})`);
  }
});

t.test('the offline tool loads no logger, cron or NATS', async (t) => {
  // Follow the static imports of the compiled tool; the online part is a dynamic import.
  const seen = new Set<string>();
  const bare = new Set<string>();
  const visit = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    const src = fs.readFileSync(file, 'utf8');
    for (const m of src.matchAll(/^\s*import\s+(?:[^'"]*?\s+from\s+)?['"]([^'"]+)['"]/gm)) {
      const spec = m[1]!;
      if (spec.startsWith('.')) visit(path.resolve(path.dirname(file), spec));
      else bare.add(spec);
    }
  };
  visit(CKVCTL_JS);
  t.ok(seen.size > 3);
  for (const b of bare) t.notMatch(b, /^(pino|cron|@nats-io)/, `ckvctl imports ${b}`);
  t.ok(bare.has('lmdb'));
});
