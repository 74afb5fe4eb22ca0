// tools/bench output: a terminal table, JSON, and a report directory holding
// the table as Markdown and the throughput and latency curves (by clients in
// flight, one line per system) as SVG charts.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Result, WorkloadSpec } from './workload.js';

export interface Row {
  workload: string;
  spec: WorkloadSpec;
  system: string;
  /** Medians over reps. */
  result: Result;
  reps: number;
}

const ms = (us: number): string => (us / 1000).toFixed(2);
const cpu = (us: number): string => (Number.isFinite(us) ? us.toFixed(0) : '-');

/** Each ckv row's ratio to every baseline row of the same workload: throughput, and p50 (lower is better for ckv). */
export function ratios(rows: Row[]): Array<{ workload: string; ckv: string; baseline: string; throughput: number; p50: number; cpu: number }> {
  const out = [];
  for (const r of rows) {
    if (!r.system.startsWith('ckv')) continue;
    for (const b of rows) {
      if (b.workload !== r.workload || b.system.startsWith('ckv')) continue;
      out.push({ workload: r.workload, ckv: r.system, baseline: b.system, throughput: r.result.opsPerSec / b.result.opsPerSec, p50: r.result.p50us / b.result.p50us, cpu: r.result.cpuUsPerOp / b.result.cpuUsPerOp });
    }
  }
  return out;
}

export function table(rows: Row[]): string {
  const head = ['workload', 'system', 'ops/s', 'p50 ms', 'p99 ms', 'cpu us/op', 'errors'];
  const body = rows.map((r) => [r.workload, r.system, r.result.opsPerSec.toFixed(0), ms(r.result.p50us), ms(r.result.p99us), cpu(r.result.cpuUsPerOp), String(r.result.errors)]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i >= 2 ? c.padStart(w[i]!) : c.padEnd(w[i]!))).join('  ');
  const lines = [line(head), ...body.map(line)];
  const rs = ratios(rows);
  if (rs.length > 0) {
    lines.push('', 'ckv / baseline (same workload, same run): throughput ratio (higher is better), p50 and CPU-per-op ratios (lower is better)');
    for (const r of rs) lines.push(`  ${r.workload} | ${r.ckv} vs ${r.baseline}: ${r.throughput.toFixed(2)}x ops/s, ${r.p50.toFixed(2)}x p50, ${r.cpu.toFixed(2)}x cpu/op`);
  }
  return lines.join('\n');
}

export function markdown(rows: Row[], notes: string[]): string {
  const lines = ['# ckv benchmark', '', ...notes.map((n) => `- ${n}`), '', '| workload | system | ops/s | p50 ms | p99 ms | CPU µs/op | errors |', '|---|---|---:|---:|---:|---:|---:|'];
  for (const r of rows) lines.push(`| ${r.workload} | ${r.system} | ${r.result.opsPerSec.toFixed(0)} | ${ms(r.result.p50us)} | ${ms(r.result.p99us)} | ${cpu(r.result.cpuUsPerOp)} | ${r.result.errors} |`);
  const rs = ratios(rows);
  if (rs.length > 0) {
    lines.push('', '## ckv against each baseline', '', '| workload | ckv | baseline | ops/s ratio | p50 ratio | CPU/op ratio |', '|---|---|---|---:|---:|---:|');
    for (const r of rs) lines.push(`| ${r.workload} | ${r.ckv} | ${r.baseline} | ${r.throughput.toFixed(2)}x | ${r.p50.toFixed(2)}x | ${r.cpu.toFixed(2)}x |`);
  }
  return lines.join('\n') + '\n';
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2'];
const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** One chart: x = clients in flight (log scale), y = metric, a line per system. */
function chart(title: string, yLabel: string, series: Map<string, Array<[number, number]>>): string {
  const W = 640;
  const H = 360;
  const L = 70;
  const R = 200;
  const T = 40;
  const B = 50;
  const xs = [...new Set([...series.values()].flatMap((s) => s.map((p) => p[0])))].sort((a, b) => a - b);
  const yMax = Math.max(1, ...[...series.values()].flatMap((s) => s.map((p) => p[1]))) * 1.1;
  const xAt = (x: number): number => (xs.length === 1 ? L + (W - L - R) / 2 : L + ((Math.log(x) - Math.log(xs[0]!)) / (Math.log(xs[xs.length - 1]!) - Math.log(xs[0]!))) * (W - L - R));
  const yAt = (y: number): number => H - B - (y / yMax) * (H - T - B);
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`, `<rect width="${W}" height="${H}" fill="white"/>`];
  out.push(`<text x="${L}" y="22" font-size="14" font-weight="bold">${esc(title)}</text>`);
  out.push(`<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`);
  for (let i = 0; i <= 4; i++) {
    const y = (yMax / 4) * i;
    out.push(`<line x1="${L - 4}" y1="${yAt(y)}" x2="${W - R}" y2="${yAt(y)}" stroke="#ddd"/><text x="${L - 8}" y="${yAt(y) + 4}" text-anchor="end">${y >= 100 ? y.toFixed(0) : y.toFixed(2)}</text>`);
  }
  for (const x of xs) out.push(`<text x="${xAt(x)}" y="${H - B + 18}" text-anchor="middle">${x}</text>`);
  out.push(`<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">clients in flight</text>`);
  out.push(`<text x="16" y="${(T + H - B) / 2}" transform="rotate(-90 16 ${(T + H - B) / 2})" text-anchor="middle">${esc(yLabel)}</text>`);
  let i = 0;
  for (const [name, pts] of series) {
    const c = COLORS[i % COLORS.length]!;
    const sorted = [...pts].sort((a, b) => a[0] - b[0]);
    out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${sorted.map(([x, y]) => `${xAt(x).toFixed(1)},${yAt(y).toFixed(1)}`).join(' ')}"/>`);
    for (const [x, y] of sorted) out.push(`<circle cx="${xAt(x).toFixed(1)}" cy="${yAt(y).toFixed(1)}" r="3" fill="${c}"/>`);
    out.push(`<rect x="${W - R + 12}" y="${T + i * 20}" width="12" height="12" fill="${c}"/><text x="${W - R + 30}" y="${T + i * 20 + 10}">${esc(name)}</text>`);
    i++;
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/** Charts per workload family (same read share, value size, key distribution), by clients. */
export function charts(rows: Row[]): Array<{ file: string; svg: string }> {
  const families = new Map<string, Row[]>();
  for (const r of rows) {
    if (r.spec.file) continue;
    const k = `${r.spec.readPct}pct-${r.spec.valueBytes}B-${r.spec.dist === 'zipf' ? `zipf${r.spec.zipfS}` : 'uniform'}`;
    families.set(k, [...(families.get(k) ?? []), r]);
  }
  const out = [];
  for (const [k, rs] of families) {
    const name = `${rs[0]!.spec.readPct}% get, ${rs[0]!.spec.valueBytes} B values, ${rs[0]!.spec.dist}`;
    for (const [metric, label, f] of [
      ['throughput', 'ops/s', (r: Row) => r.result.opsPerSec],
      ['p99', 'p99 latency, ms', (r: Row) => r.result.p99us / 1000],
    ] as const) {
      const series = new Map<string, Array<[number, number]>>();
      for (const r of rs) series.set(r.system, [...(series.get(r.system) ?? []), [r.spec.clients, f(r)]]);
      out.push({ file: `${metric}-${k}.svg`, svg: chart(`${name}: ${metric}`, label, series) });
    }
  }
  return out;
}

export function writeReport(dir: string, rows: Row[], notes: string[]): string[] {
  mkdirSync(dir, { recursive: true });
  const files = charts(rows);
  for (const f of files) writeFileSync(join(dir, f.file), f.svg);
  const md = markdown(rows, notes) + (files.length > 0 ? `\n## Charts\n\n${files.map((f) => `![${f.file}](${f.file})`).join('\n\n')}\n` : '');
  writeFileSync(join(dir, 'report.md'), md);
  return ['report.md', ...files.map((f) => f.file)];
}
