#!/usr/bin/env node
// Benchmarks, reported as ratios against baselines measured in the same run
// (this machine is noisy). Never a pass/fail test.
//
//   node dist/tools/bench.js [--nodes 1|3] [--ops N] [--jetstream] [--failover]
//
// Measures: sequential and 64-concurrent put and get against a ckv cluster of
// real processes; raw NATS request/reply to a separate process (baseline);
// optionally NATS JetStream KV (R1 on one nats-server, or R3 on a 3-node
// nats-server cluster); the wall time of a one-shot `ckv get` against `node -e 0`;
// and optionally the time writes take to resume after SIGKILL of the coordinator.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { newClusterKeyText } from '../src/transport/peer-auth.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SERVER = join(ROOT, 'dist', 'src', 'server', 'main.js');
const CLI = join(ROOT, 'dist', 'src', 'client', 'cli.js');
const ECHO = join(ROOT, 'dist', 'tools', 'bench-echo.js');
const CONCURRENCY = 64;
const REQUEST_TIMEOUT_MS = 10_000;

const { values } = parseArgs({
  options: {
    nodes: { type: 'string', default: '3' },
    ops: { type: 'string', default: '2000' },
    jetstream: { type: 'boolean', default: false },
    failover: { type: 'boolean', default: false },
    oneshot: { type: 'string', default: '10' },
  },
});
const NODES = Number(values.nodes);
const OPS = Number(values.ops);
const procs: ChildProcess[] = [];
const dir = mkdtempSync(join(tmpdir(), 'ckv-bench-'));
const env = { ...process.env };
delete env.NODE_EXTRA_CA_CERTS;

interface Result {
  name: string;
  opsPerSec: number;
  p50us: number;
  p99us: number;
}

function startProc(cmd: string, args: string[], readyText: string | null, name: string): Promise<ChildProcess> {
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    procs.push(p);
    let buf = '';
    const timer = setTimeout(() => rej(new Error(`${name} did not start: ${buf.slice(-400)}`)), 15_000);
    const on = (d: Buffer) => {
      buf += d.toString();
      if (readyText === null || buf.includes(readyText)) {
        clearTimeout(timer);
        res(p);
      }
    };
    p.stdout!.on('data', on);
    p.stderr!.on('data', on);
    p.once('exit', (c) => rej(new Error(`${name} exited ${c}: ${buf.slice(-400)}`)));
    if (readyText === null) on(Buffer.alloc(0));
  });
}

async function startNats(port: number, extra: string[] = []): Promise<void> {
  await startProc('nats-server', ['-a', '127.0.0.1', '-p', String(port), ...extra], 'Server is ready', `nats-server:${port}`);
}

/** Run `total` operations with `conc` in flight; latency per op in µs. */
async function measure(name: string, total: number, conc: number, op: (i: number) => Promise<void>): Promise<Result> {
  const lat: number[] = [];
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: conc }, async () => {
      while (next < total) {
        const i = next++;
        const s = process.hrtime.bigint();
        await op(i);
        lat.push(Number(process.hrtime.bigint() - s) / 1000);
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  lat.sort((a, b) => a - b);
  return { name, opsPerSec: total / secs, p50us: lat[Math.floor(lat.length / 2)]!, p99us: lat[Math.floor(lat.length * 0.99)]! };
}

async function ckvRequest(nc: NatsConnection, subject: string, body: object): Promise<any> {
  for (;;) {
    try {
      const r = await nc.request(subject, JSON.stringify(body), { timeout: REQUEST_TIMEOUT_MS });
      const reply = JSON.parse(new TextDecoder().decode(r.data));
      if (!reply.ok && reply.error?.code !== 'NOT_FOUND') {
        if (reply.error?.code === 'UNAVAILABLE') continue;
        throw new Error(`${subject}: ${JSON.stringify(reply.error)}`);
      }
      return reply;
    } catch (err) {
      if ((err as Error).message.includes('no responders')) {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      throw err;
    }
  }
}

function row(r: Result, base?: Result): string {
  const ratio = base ? `${(r.opsPerSec / base.opsPerSec).toFixed(2)}x` : '';
  return `${r.name.padEnd(44)} ${r.opsPerSec.toFixed(0).padStart(9)} ops/s  p50 ${(r.p50us / 1000).toFixed(2).padStart(7)} ms  p99 ${(r.p99us / 1000).toFixed(2).padStart(7)} ms  ${ratio}`;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
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

async function main(): Promise<void> {
  const port = 14000 + Math.floor(Math.random() * 1000);
  const url = `nats://127.0.0.1:${port}`;
  await startNats(port);
  const nc = await connect({ servers: url });
  const lines: string[] = [];
  const out = (s: string) => {
    lines.push(s);
    process.stdout.write(`${s}\n`);
  };
  out(`ckv bench: ${NODES} node(s), ${OPS} ops per run, concurrency 1 and ${CONCURRENCY}, node ${process.version}`);

  // Baseline: raw request/reply to another process.
  await startProc(process.execPath, [ECHO, url, 'bench.echo'], 'ready', 'echo');
  const rawSeq = await measure('raw NATS request/reply, sequential', OPS, 1, async (i) => void (await nc.request('bench.echo', JSON.stringify({ op: 'get', key: `k${i}` }), { timeout: REQUEST_TIMEOUT_MS })));
  const rawConc = await measure(`raw NATS request/reply, ${CONCURRENCY} concurrent`, OPS * 4, CONCURRENCY, async (i) => void (await nc.request('bench.echo', JSON.stringify({ op: 'get', key: `k${i}` }), { timeout: REQUEST_TIMEOUT_MS })));
  out(row(rawSeq));
  out(row(rawConc));

  // ckv cluster of real processes.
  const voters = Array.from({ length: NODES }, (_, i) => i + 1);
  const key = join(dir, 'cluster.key');
  writeFileSync(key, newClusterKeyText(), { mode: 0o600 });
  for (const id of voters) {
    await startProc(process.execPath, [SERVER, '--id', String(id), '--data', join(dir, `node-${id}`), '--nats', url, '--cluster', 'bench', '--voters', voters.join(','), '--cluster-key', key, '--log-level', 'warn'], null, `ckv-server ${id}`);
  }
  await ckvRequest(nc, 'ckv.bench.write', { op: 'put', key: 'warmup', value: 'x', rid: 'warmup' });
  const value = 'v'.repeat(100);
  const putSeq = await measure('ckv put, sequential', OPS, 1, async (i) => void (await ckvRequest(nc, 'ckv.bench.write', { op: 'put', key: `k${i}`, value, rid: `s${i}` })));
  const putConc = await measure(`ckv put, ${CONCURRENCY} concurrent`, OPS * 4, CONCURRENCY, async (i) => void (await ckvRequest(nc, 'ckv.bench.write', { op: 'put', key: `k${i}`, value, rid: `c${i}` })));
  const getSeq = await measure('ckv get (causal), sequential', OPS, 1, async (i) => void (await ckvRequest(nc, 'ckv.bench.read', { op: 'get', key: `k${i % OPS}` })));
  const getConc = await measure(`ckv get (causal), ${CONCURRENCY} concurrent`, OPS * 4, CONCURRENCY, async (i) => void (await ckvRequest(nc, 'ckv.bench.read', { op: 'get', key: `k${i % OPS}` })));
  out(row(putSeq, rawSeq));
  out(row(putConc, rawConc));
  out(row(getSeq, rawSeq));
  out(row(getConc, rawConc));

  // One-shot client start-up.
  const n = Number(values.oneshot);
  const nodeE = timeCmd(['-e', '0'], n);
  const oneshot = timeCmd([CLI, '--nats', url, '--cluster', 'bench', '--no-session', 'get', 'k1'], n);
  out(`one-shot: node -e 0 median ${nodeE.toFixed(0)} ms; ckv get median ${oneshot.toFixed(0)} ms (${(oneshot / nodeE).toFixed(2)}x, +${(oneshot - nodeE).toFixed(0)} ms)`);

  if (values.jetstream) {
    const { Kvm } = await import('@nats-io/kv');
    const jsPorts = [port + 1, port + 2, port + 3];
    const routePorts = jsPorts.map((p) => p + 100);
    const replicas = NODES >= 3 ? 3 : 1;
    if (replicas === 3) {
      const routes = routePorts.map((p) => `nats://127.0.0.1:${p}`).join(',');
      await Promise.all(
        jsPorts.map((p, i) =>
          startNats(p, ['-js', '-sd', join(dir, `js-${i}`), '-n', `js${i}`, '--cluster_name', 'jsbench', '--cluster', `nats://127.0.0.1:${routePorts[i]}`, '--routes', routes]),
        ),
      );
    } else {
      await startNats(jsPorts[0]!, ['-js', '-sd', join(dir, 'js-0')]);
    }
    const jnc = await connect({ servers: `nats://127.0.0.1:${jsPorts[0]}` });
    const kvm = new Kvm(jnc);
    let kv!: Awaited<ReturnType<typeof kvm.create>>;
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        kv = await kvm.create('bench', { replicas });
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    await kv.put('warmup', 'x');
    const jsPutSeq = await measure(`JetStream KV R${replicas} put, sequential`, OPS, 1, async (i) => void (await kv.put(`k${i}`, value)));
    const jsPutConc = await measure(`JetStream KV R${replicas} put, ${CONCURRENCY} concurrent`, OPS * 4, CONCURRENCY, async (i) => void (await kv.put(`k${i}`, value)));
    const jsGetConc = await measure(`JetStream KV R${replicas} get, ${CONCURRENCY} concurrent`, OPS * 4, CONCURRENCY, async (i) => void (await kv.get(`k${i % OPS}`)));
    out(row(jsPutSeq));
    out(row(jsPutConc));
    out(row(jsGetConc));
    out(`ckv vs JetStream KV R${replicas}: 64-concurrent put ${(putConc.opsPerSec / jsPutConc.opsPerSec).toFixed(2)}x; sequential put p50 ${(putSeq.p50us / 1000).toFixed(2)} ms vs ${(jsPutSeq.p50us / 1000).toFixed(2)} ms; get ${(getConc.opsPerSec / jsGetConc.opsPerSec).toFixed(2)}x`);
    await jnc.close();
  }

  if (values.failover && NODES >= 3) {
    const st = await nc.request('ckv.bench.admin', JSON.stringify({ op: 'status' }), { timeout: 2000 });
    const coord = JSON.parse(new TextDecoder().decode(st.data)).status.coordinator as number;
    const victim = procs[1 + coord]!; // procs: nats, echo, then servers 1..N
    let i = 0;
    const killedAt = Date.now();
    victim.kill('SIGKILL');
    for (;;) {
      try {
        const r = await nc.request('ckv.bench.write', JSON.stringify({ op: 'put', key: 'failover', value: String(i), rid: `f${i++}`, timeout: 200 }), { timeout: 300 });
        if (JSON.parse(new TextDecoder().decode(r.data)).ok) break;
      } catch {
        // no responders or timeout: keep trying
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    out(`failover: writes resumed ${Date.now() - killedAt} ms after SIGKILL of coordinator ${coord}`);
  }
  await nc.close();
}

main()
  .catch((err: Error) => {
    process.stderr.write(`bench: ${err.stack}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const p of procs.reverse()) if (p.exitCode === null) p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
