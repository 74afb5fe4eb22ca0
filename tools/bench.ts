#!/usr/bin/env node
// ckv's benchmark: ckv against baselines started in the same run (these
// machines are noisy: only ratios within one run mean anything). A program,
// never a pass/fail test. `node dist/tools/bench.js --help` for the options.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { table, writeReport, ratios, type Row } from './bench/report.js';
import { etcdBinary, Procs, startCkv, startEtcd, startJetStream, startRaw, type CkvCluster, type Target } from './bench/systems.js';
import { describe, generate, keyName, measure, median, readWorkloadFile, type Op, type Result, type WorkloadSpec } from './bench/workload.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SERVER = join(ROOT, 'dist', 'src', 'server', 'main.js');
const CLI_BUNDLE = join(ROOT, 'dist', 'src', 'client', 'launch.cjs');
const CLI_TREE = join(ROOT, 'dist', 'src', 'client', 'cli.js');
const ECHO = join(ROOT, 'dist', 'tools', 'bench', 'echo.js');

const HELP = `usage: node dist/tools/bench.js [options]   (npm run bench -- [options])

Systems (each started as real processes in this run, measured one at a time):
  --systems LIST     raw,jetstream,etcd,ckv (default: all; etcd only if installed)
  --nodes LIST       ckv cluster sizes (default 3)
  --topology LIST    single (every ckv server on one nats-server) and/or cluster
                     (one per node of a 3-node NATS cluster) (default single,cluster)
Workload (every combination is run on every system):
  --read LIST        percent of gets (default 0,100)
  --clients LIST     operations in flight (default 1,64)
  --values LIST      value bytes (default 100)
  --keys N           distinct keys (default 1000)
  --dist D           uniform or zipf:S, e.g. zipf:0.99 (default uniform)
  --ops N            operations per run with 1 in flight; 4N with more (default 2000)
  --workload FILE    replay FILE instead: lines "get,KEY" / "put,KEY,VALUE"
  --reps N           repeat each run, report medians (default 1)
Also:
  --oneshot N        time N one-shot "ckv get" against "node -e 0" (default 10; 0: skip)
  --failover         time until writes resume after SIGKILL of ckv's coordinator
  --profile DIR      run the ckv servers with --cpu-prof, profiles in DIR (written on exit)
  --scale N          only this: load N keys (100 B) into ckv 3 on one nats-server, then
                     report checkpoint cost, put p99 during checkpoints against without,
                     server RSS per million keys, and time to serving after a graceful
                     restart and after kill -9 of every server
  --json             print the results as one JSON object instead of the table
  --report DIR       write DIR/report.md and SVG charts (throughput, p99 by clients)`;

const { values: o } = parseArgs({
  options: {
    systems: { type: 'string', default: 'raw,jetstream,etcd,ckv' },
    nodes: { type: 'string', default: '3' },
    topology: { type: 'string', default: 'single,cluster' },
    read: { type: 'string', default: '0,100' },
    clients: { type: 'string', default: '1,64' },
    values: { type: 'string', default: '100' },
    keys: { type: 'string', default: '1000' },
    dist: { type: 'string', default: 'uniform' },
    ops: { type: 'string', default: '2000' },
    workload: { type: 'string' },
    reps: { type: 'string', default: '1' },
    oneshot: { type: 'string', default: '10' },
    failover: { type: 'boolean', default: false },
    profile: { type: 'string' },
    scale: { type: 'string' },
    json: { type: 'boolean', default: false },
    report: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (o.help) {
  process.stdout.write(`${HELP}\n`);
  process.exit(0);
}

function usage(msg: string): never {
  process.stderr.write(`bench: ${msg}\n${HELP}\n`);
  process.exit(2);
}
function nums(name: string, s: string, min: number, max: number): number[] {
  const xs = s.split(',').map((x) => Number(x.trim()));
  if (xs.length === 0 || !xs.every((x) => Number.isInteger(x) && x >= min && x <= max)) usage(`--${name}: a comma-separated list of integers ${min}..${max}`);
  return xs;
}

const systems = new Set(o.systems.split(','));
for (const s of systems) if (!['raw', 'jetstream', 'etcd', 'ckv'].includes(s)) usage(`--systems: unknown system ${s}`);
const topologies = o.topology.split(',') as Array<'single' | 'cluster'>;
for (const t of topologies) if (t !== 'single' && t !== 'cluster') usage(`--topology: single or cluster, not ${t}`);
const nodeCounts = nums('nodes', o.nodes, 1, 9);
const [keys] = nums('keys', o.keys, 1, 10_000_000);
const [ops] = nums('ops', o.ops, 1, 100_000_000);
const [reps] = nums('reps', o.reps, 1, 100);
const [oneshotN] = nums('oneshot', o.oneshot, 0, 1000);
const scaleN = o.scale === undefined ? 0 : nums('scale', o.scale, 1, 100_000_000)[0]!;
const distM = /^(uniform|zipf:(\d+(\.\d+)?))$/.exec(o.dist);
if (!distM) usage('--dist: uniform or zipf:S');
const fileOps: Op[] | null = o.workload ? readWorkloadFile(o.workload) : null;

const specs: WorkloadSpec[] = [];
for (const clients of nums('clients', o.clients, 1, 4096)) {
  if (fileOps) {
    specs.push({ readPct: 0, clients, valueBytes: 0, keys: 0, dist: 'uniform', zipfS: 0, ops: fileOps.length, file: { path: o.workload!, ops: fileOps } });
    continue;
  }
  for (const readPct of nums('read', o.read, 0, 100))
    for (const valueBytes of nums('values', o.values, 0, 1024 * 1024))
      specs.push({ readPct, clients, valueBytes, keys: keys!, dist: distM[2] ? 'zipf' : 'uniform', zipfS: distM[2] ? Number(distM[2]) : 0, ops: clients === 1 ? ops! : ops! * 4 });
}

const env = { ...process.env };
delete env.NODE_EXTRA_CA_CERTS; // adds ~70 ms to every Node start
const dir = mkdtempSync(join(tmpdir(), 'ckv-bench-'));
const procs = new Procs(dir, env);
const rows: Row[] = [];
const notes: string[] = [];
const extra: Record<string, unknown> = {};

const tty = process.stderr.isTTY === true;
function progress(s: string, final = false): void {
  if (o.json && !tty) return;
  if (tty) process.stderr.write(`\r\x1b[K${s}${final ? '\n' : ''}`);
  else if (final || !s.includes(' ops')) process.stderr.write(`${s}\n`);
}
function say(s: string): void {
  notes.push(s);
  if (!o.json) progress(s, true);
}

/** Preload the keys the gets will ask for (every system gets the same). */
async function preload(t: Target): Promise<void> {
  const need = Math.max(...specs.filter((s) => s.readPct > 0 && !s.file).map((s) => s.keys), 0);
  if (need === 0) return;
  const value = 'v'.repeat(Math.max(...specs.map((s) => s.valueBytes)));
  const load: Op[] = Array.from({ length: need }, (_, i) => ({ op: 'put', key: keyName(i), value }));
  progress(`${t.name}: loading ${need} keys`);
  const r = await measure(load, 64, (op) => t.run(op));
  if (r.errors > 0) throw new Error(`${t.name}: ${r.errors} errors while loading keys`);
}

let runNo = 0;
const runsTotal = (): number => specs.length * reps!;
async function measureAll(t: Target): Promise<void> {
  await preload(t);
  for (const spec of specs) {
    const results: Result[] = [];
    const opsList = generate(spec);
    for (let rep = 0; rep < reps!; rep++) {
      const label = `[${++runNo}] ${t.name}: ${describe(spec)}${reps! > 1 ? ` (rep ${rep + 1}/${reps})` : ''}`;
      progress(label);
      results.push(await measure(opsList, spec.clients, (op) => t.run(op), (done) => progress(`${label}: ${done}/${opsList.length} ops`), () => t.pids()));
    }
    const result: Result = {
      opsPerSec: median(results.map((r) => r.opsPerSec)),
      p50us: median(results.map((r) => r.p50us)),
      p99us: median(results.map((r) => r.p99us)),
      errors: results.reduce((a, r) => a + r.errors, 0),
      errorKinds: {},
      cpuUsPerOp: median(results.map((r) => r.cpuUsPerOp)),
    };
    for (const r of results) for (const [k, n] of Object.entries(r.errorKinds)) result.errorKinds[k] = (result.errorKinds[k] ?? 0) + n;
    if (result.errors > 0) say(`${t.name}, ${describe(spec)}: ${result.errors} errors: ${Object.entries(result.errorKinds).map(([k, n]) => `${n} x ${k}`).join('; ')}`);
    rows.push({ workload: describe(spec), spec, system: t.name, result, reps: reps! });
  }
}

function timeCmd(args: string[], n: number): number {
  const ts: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = process.hrtime.bigint();
    spawnSync(process.execPath, args, { env, stdio: 'ignore' });
    ts.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  return median(ts);
}

async function oneShot(c: CkvCluster, url: string): Promise<void> {
  progress('one-shot: timing node -e 0 and ckv get');
  const common = ['--nats', url, '--cluster', c.cluster, '--no-session', 'get', 'bench.warmup'];
  // Interleaved in rounds, so that drift in machine load hits all three alike.
  const node: number[] = [];
  const bundle: number[] = [];
  const tree: number[] = [];
  for (let i = 0; i < oneshotN!; i++) {
    node.push(timeCmd(['-e', '0'], 1));
    bundle.push(timeCmd([CLI_BUNDLE, ...common], 1));
    tree.push(timeCmd([CLI_TREE, ...common], 1));
  }
  const [n, b, t] = [median(node), median(bundle), median(tree)];
  extra.oneshot = { nodeMs: n, ckvGetMs: b, ckvGetUnbundledMs: t, runs: oneshotN };
  say(`one-shot (median of ${oneshotN}): node -e 0 ${n.toFixed(0)} ms; ckv get ${b.toFixed(0)} ms (${(b / n).toFixed(2)}x); unbundled ${t.toFixed(0)} ms (${(t / n).toFixed(2)}x)`);
}

async function failover(c: CkvCluster): Promise<void> {
  const st = await c.nc.request(`ckv.${c.cluster}.admin`, JSON.stringify({ op: 'status' }), { timeout: 2000 });
  const coord = JSON.parse(new TextDecoder().decode(st.data)).status.coordinator as number;
  const victim = c.servers.get(coord)!;
  let i = 0;
  const killedAt = Date.now();
  victim.kill('SIGKILL');
  for (;;) {
    try {
      const r = await c.nc.request(`ckv.${c.cluster}.write`, JSON.stringify({ op: 'put', key: 'bench.failover', value: String(i), rid: `f${process.pid}.${i++}`, timeout: 200 }), { timeout: 300 });
      if (JSON.parse(new TextDecoder().decode(r.data)).ok) break;
    } catch {
      // no responders or timeout: keep trying
    }
    if (Date.now() - killedAt > 30_000) throw new Error('failover: writes did not resume within 30 s');
    await new Promise((r) => setTimeout(r, 5));
  }
  extra.failoverMs = Date.now() - killedAt;
  say(`failover: writes resumed ${Date.now() - killedAt} ms after SIGKILL of coordinator ${coord}`);
}

/** Run `f` with processes started meanwhile killed afterwards (one system at a time on the CPU). */
async function alone(f: () => Promise<void>): Promise<void> {
  const before = procs.all.length;
  try {
    await f();
  } finally {
    for (const p of procs.all.slice(before)) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
}

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** The process's own memory (heap, stacks): RSS less the pages of mapped files (LMDB's map, shared with the page cache). */
function anonMb(pid: number): number {
  const m = /RssAnon:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Checkpoint cost, put p99 with and without a checkpoint running, RSS, restart times, with n keys. */
async function scale(url: string, n: number): Promise<void> {
  const c = await startCkv(procs, SERVER, 3, 'single', url, [], 'info');
  const checkpoints: Array<{ id: number; end: number; ms: number; keys: number }> = [];
  let stepdowns = 0;
  let firstStepdown = '';
  let retries = 0;
  c.onLog((id, l) => {
    if (l.msg === 'checkpoint written') checkpoints.push({ id, end: Number(l.time), ms: Number(l.ms), keys: Number(l.keys) });
    if (l.msg === 'members: stepdown' && stepdowns++ === 0) firstStepdown = String((l.notice as { reason?: string } | undefined)?.reason);
  });
  const rss0 = [...c.servers.values()].map((p) => rssMb(p.pid!));
  // Load in batches (BATCH_OPS_MAX ops each), 16 in flight.
  const value = 'v'.repeat(100);
  const BATCH = 100;
  let next = 0;
  const t0 = Date.now();
  let rid = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < n) {
        const from = next;
        next = Math.min(n, next + BATCH);
        const ops = [];
        for (let i = from; i < next; i++) ops.push({ op: 'put', key: keyName(i), value });
        // Retried with the same rid, as a client would, through a coordinator change (no
        // responders while none leads, or a timeout).
        const body = JSON.stringify({ op: 'batch', ops, rid: `load.${process.pid}.${++rid}` });
        for (let tries = 0; ; tries++) {
          let r: { ok: boolean; error?: { code: string } };
          try {
            r = JSON.parse(new TextDecoder().decode((await c.nc.request(`ckv.${c.cluster}.write`, body, { timeout: 30_000 })).data));
          } catch (err) {
            if (tries >= 20) throw err;
            retries++;
            await new Promise((res) => setTimeout(res, 250));
            continue;
          }
          if (r.ok) break;
          if (r.error?.code !== 'UNAVAILABLE') throw new Error(`load: ${JSON.stringify(r.error)}`);
        }
        if ((from / BATCH) % 50 === 0) progress(`scale: loaded ${next}/${n} keys`);
      }
    }),
  );
  const loadSecs = (Date.now() - t0) / 1000;
  say(`scale: loaded ${n} keys of 100 B in ${loadSecs.toFixed(1)} s (${Math.round(n / loadSecs)} keys/s, batches of ${BATCH}, 16 in flight); ${stepdowns} coordinator stepdowns${stepdowns > 0 ? ` (first: ${firstStepdown})` : ''}, ${retries} batches retried`);
  // Puts over the loaded keys, 64 in flight, for long enough to span cron checkpoints
  // (every 10 s): each op's latency is set against whether the coordinator was checkpointing.
  const st = JSON.parse(new TextDecoder().decode((await c.nc.request(`ckv.${c.cluster}.admin`, JSON.stringify({ op: 'status' }), { timeout: 2000 })).data));
  const coord = st.status.coordinator as number;
  const spans: Array<[number, number, number]> = [];
  const until = Date.now() + 22_000;
  let k = 0;
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (Date.now() < until) {
        const s = Date.now();
        const h = process.hrtime.bigint();
        await c.target.run({ op: 'put', key: keyName((k++ * 7919) % n), value });
        spans.push([s, Date.now(), Number(process.hrtime.bigint() - h) / 1000]);
        if (spans.length % 2000 === 0) progress(`scale: puts during checkpoints: ${spans.length}`);
      }
    }),
  );
  const busy = checkpoints.filter((x) => x.id === coord).map((x) => [x.end - x.ms, x.end] as const);
  const during = spans.filter(([s, e]) => busy.some(([b0, b1]) => s <= b1 && e >= b0)).map((x) => x[2]);
  const outside = spans.filter(([s, e]) => !busy.some(([b0, b1]) => s <= b1 && e >= b0)).map((x) => x[2]);
  const p99 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.99)] ?? NaN;
  const big = checkpoints.filter((x) => x.keys > 0).sort((a, b) => b.keys - a.keys)[0];
  const rate = checkpoints.filter((x) => x.keys >= 1000);
  const usPerKey = rate.length ? median(rate.map((x) => (x.ms * 1000) / x.keys)) : NaN;
  say(`scale: checkpoints: largest ${big ? `${big.keys} keys in ${big.ms} ms` : 'none'}; median ${usPerKey.toFixed(1)} us per dirty key (${((usPerKey * 100_000) / 1e6).toFixed(2)} s per 100,000)`);
  say(`scale: put p99 (64 in flight) while the coordinator checkpoints ${(p99(during) / 1000).toFixed(2)} ms (${during.length} ops) vs otherwise ${(p99(outside) / 1000).toFixed(2)} ms (${outside.length} ops): ${(p99(during) / p99(outside)).toFixed(2)}x`);
  const rss = [...c.servers.values()].map((p) => rssMb(p.pid!));
  const anon = [...c.servers.values()].map((p) => anonMb(p.pid!));
  say(`scale: server RSS ${rss.map((r) => r.toFixed(0)).join(', ')} MB with ${n} keys (at start ${rss0.map((r) => r.toFixed(0)).join(', ')} MB): ${(((median(rss) - median(rss0)) * 1e6) / n).toFixed(0)} MB per million keys; of it the process's own (not mapped files) ${anon.map((r) => r.toFixed(0)).join(', ')} MB`);
  const graceful = await c.restart('SIGTERM', keyName(0));
  const rssAfter = [...c.servers.values()].map((p) => rssMb(p.pid!));
  say(`scale: restart after SIGTERM of every server: serving in ${graceful} ms; RSS then ${rssAfter.map((r) => r.toFixed(0)).join(', ')} MB`);
  // Some writes after the last checkpoint, so that kill -9 leaves a log to replay.
  for (let i = 0; i < 2000; i++) await c.target.run({ op: 'put', key: keyName(i), value: `${value}!` });
  const killed = await c.restart('SIGKILL', keyName(0));
  say(`scale: restart after kill -9 of every server: serving in ${killed} ms`);
  extra.scale = { keys: n, loadSecs, checkpoints, usPerDirtyKey: usPerKey, p99DuringUs: p99(during), p99OutsideUs: p99(outside), rssMb: rss, rssAnonMb: anon, rssStartMb: rss0, restartGracefulMs: graceful, restartKill9Ms: killed };
  await c.target.close();
}

async function main(): Promise<void> {
  const url = await procs.nats();
  if (scaleN > 0) {
    await alone(() => scale(url, scaleN));
    progress('', false);
    if (o.json) process.stdout.write(`${JSON.stringify({ ...extra, notes })}\n`);
    return;
  }
  say(`ckv bench, node ${process.version}, ${specs.length} workload(s) x ${reps} rep(s), fsync on for ckv (always) and etcd (default); JetStream KV at its default (no fsync before acknowledging)`);
  const each = async (start: () => Promise<Target>): Promise<void> =>
    alone(async () => {
      const t = await start();
      await measureAll(t);
      await t.close();
    });
  if (systems.has('raw')) await each(() => startRaw(procs, url, ECHO));
  if (systems.has('jetstream')) await each(() => startJetStream(procs));
  if (systems.has('etcd')) {
    const bin = etcdBinary();
    if (bin) await each(() => startEtcd(procs, bin));
    else say('etcd: not installed (Debian: apt-get install etcd-server); skipped');
  }
  if (systems.has('ckv')) {
    let first = true;
    for (const nodes of nodeCounts)
      for (const topology of topologies)
        await alone(async () => {
          const c = await startCkv(procs, SERVER, nodes, topology, url, o.profile ? ['--cpu-prof', `--cpu-prof-dir=${resolve(o.profile)}`] : []);
          await measureAll(c.target);
          if (first && topology === 'single' && oneshotN! > 0) await oneShot(c, url);
          if (first && o.failover && nodes >= 3) await failover(c);
          first = false;
          await c.target.close();
          // A profile is written when the process exits of itself.
          if (o.profile) await Promise.all([...c.servers.values()].map((p) => new Promise((res) => (p.exitCode !== null ? res(null) : (p.once('exit', res), p.kill('SIGTERM'))))));
        });
  }
  progress('', false);
  if (o.json) process.stdout.write(`${JSON.stringify({ rows: rows.map(({ spec, ...r }) => ({ ...r, spec: { ...spec, file: spec.file?.path } })), ratios: ratios(rows), ...extra, notes })}\n`);
  else process.stdout.write(`${table(rows)}\n`);
  if (o.report) {
    const files = writeReport(o.report, rows, notes);
    if (!o.json) process.stdout.write(`report: ${files.map((f) => join(o.report!, f)).join(', ')}\n`);
  }
}

main()
  .catch((err: Error) => {
    process.stderr.write(`\nbench: ${err.stack}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    procs.killAll();
    rmSync(dir, { recursive: true, force: true });
    process.exit();
  });
