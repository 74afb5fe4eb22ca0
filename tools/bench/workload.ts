// Workloads for tools/bench: which operation comes next, on which key, with
// which value; and measuring a run (throughput, latency percentiles).
// Deterministic: a seeded generator, so two systems see the same sequence.

import { readFileSync } from 'node:fs';

export interface Op {
  op: 'get' | 'put';
  key: string;
  value?: string;
}

export interface WorkloadSpec {
  /** Share of gets, in percent (the rest are puts). */
  readPct: number;
  /** Operations in flight at once. */
  clients: number;
  valueBytes: number;
  keys: number;
  /** 'uniform', or 'zipf' with exponent zipfS (hot keys). */
  dist: 'uniform' | 'zipf';
  zipfS: number;
  ops: number;
  /** Replay these operations instead (a workload file). */
  file?: { path: string; ops: Op[] };
}

export function describe(w: WorkloadSpec): string {
  if (w.file) return `file ${w.file.path}, ${w.clients} in flight`;
  const kind = w.readPct === 100 ? 'get' : w.readPct === 0 ? 'put' : `${w.readPct}% get`;
  const dist = w.dist === 'zipf' ? `zipf ${w.zipfS}` : 'uniform';
  return `${kind}, ${w.clients} in flight, ${w.valueBytes} B, ${w.keys} keys ${dist}`;
}

/** mulberry32: small, fast, seeded. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function keyName(i: number): string {
  return `bench.k${i}`;
}

/** The operations of a run, generated up front (the generator costs nothing while timing). */
export function generate(w: WorkloadSpec, seed = 1): Op[] {
  if (w.file) return w.file.ops;
  const r = rng(seed);
  let pick: () => number;
  if (w.dist === 'zipf') {
    // CDF of P(k) ~ 1/(k+1)^s, sampled by binary search.
    const cdf = new Float64Array(w.keys);
    let sum = 0;
    for (let k = 0; k < w.keys; k++) cdf[k] = sum += 1 / Math.pow(k + 1, w.zipfS);
    pick = () => {
      const x = r() * sum;
      let lo = 0;
      let hi = w.keys - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (cdf[mid]! < x) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    };
  } else pick = () => Math.floor(r() * w.keys);
  const value = 'v'.repeat(w.valueBytes);
  const ops: Op[] = new Array(w.ops);
  for (let i = 0; i < w.ops; i++) {
    const key = keyName(pick());
    ops[i] = r() * 100 < w.readPct ? { op: 'get', key } : { op: 'put', key, value };
  }
  return ops;
}

/** A workload file: one operation per line, `get,KEY` or `put,KEY,VALUE` (VALUE may hold commas); # comments. */
export function readWorkloadFile(path: string): Op[] {
  const ops: Op[] = [];
  const lines = readFileSync(path, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    if (line.trim() === '' || line.startsWith('#')) continue;
    const c1 = line.indexOf(',');
    const op = c1 < 0 ? line : line.slice(0, c1);
    const rest = c1 < 0 ? '' : line.slice(c1 + 1);
    if (op === 'get' && rest !== '' && !rest.includes(',')) ops.push({ op: 'get', key: rest });
    else if (op === 'put' && rest.indexOf(',') > 0) ops.push({ op: 'put', key: rest.slice(0, rest.indexOf(',')), value: rest.slice(rest.indexOf(',') + 1) });
    else throw new Error(`${path}:${i + 1}: expected "get,KEY" or "put,KEY,VALUE", got ${JSON.stringify(line.slice(0, 80))}`);
  }
  if (ops.length === 0) throw new Error(`${path}: no operations`);
  return ops;
}

export interface Result {
  opsPerSec: number;
  p50us: number;
  p99us: number;
  errors: number;
  /** The errors by kind (the first words of their messages), so a reader can tell timeouts from refusals. */
  errorKinds: Record<string, number>;
  /** CPU time (user + system) of the system's processes per operation, µs; NaN when not measured. */
  cpuUsPerOp: number;
}

/** Run `ops` with `clients` in flight; latency per op in µs. An op that throws counts as an error. */
/** Clock ticks per second of /proc/PID/stat's times (USER_HZ: 100 on Linux everywhere it runs). */
const USER_HZ = 100;

/** CPU time (user + system) used so far by the live processes among `pids`, µs. */
export function cpuUs(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    } catch {
      continue; // gone (killed by a failover run)
    }
    // Fields after the command name (which may hold spaces) in parentheses: utime is the 14th field, stime the 15th.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks += Number(f[11]) + Number(f[12]);
  }
  return (ticks * 1e6) / USER_HZ;
}

export async function measure(ops: Op[], clients: number, run: (op: Op) => Promise<void>, progress?: (done: number) => void, pids: () => number[] = () => []): Promise<Result> {
  const cpu0 = cpuUs(pids());
  const lat = new Float64Array(ops.length);
  let next = 0;
  let done = 0;
  let errors = 0;
  const errorKinds: Record<string, number> = {};
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: Math.min(clients, ops.length) }, async () => {
      while (next < ops.length) {
        const i = next++;
        const s = process.hrtime.bigint();
        try {
          await run(ops[i]!);
        } catch (err) {
          errors++;
          const kind = String((err as Error)?.message ?? err).slice(0, 80);
          errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
        }
        lat[i] = Number(process.hrtime.bigint() - s) / 1000;
        if ((++done & 255) === 0) progress?.(done);
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpuUsPerOp = pids().length > 0 ? (cpuUs(pids()) - cpu0) / ops.length : NaN;
  lat.sort();
  return { opsPerSec: ops.length / secs, p50us: lat[Math.floor(lat.length / 2)]!, p99us: lat[Math.floor(lat.length * 0.99)]!, errors, errorKinds, cpuUsPerOp };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}
