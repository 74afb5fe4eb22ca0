// ckv-server --metrics ADDR: Prometheus text at /metrics (prom-client), and
// /healthz (the process and its loop answer) and /readyz (it can serve: it
// hears a coordinator, it has applied what is committed, give or take
// READY_APPLIED_LAG_MAX entries, it is not catching up, its storage has not
// failed), 503 with the reasons otherwise; ?verbose lists every check, as
// etcd's /readyz does. Off by default. Reads the replica, never changes it.

import { createServer, type Server as HttpServer } from 'node:http';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { NodeStatus } from '../core/wire.js';
import type { ReplicaEvent } from './replica.js';

/** Entries a server may trail the commit it knows and still be ready. */
export const READY_APPLIED_LAG_MAX = 1000;

const LATENCY_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** What the metrics read on every scrape. */
export interface MetricsSource {
  status(): NodeStatus;
  health(): { liveCoordinator: boolean; stopped: boolean };
  /** Bytes of log on disk. */
  logBytes(): number;
  /** The data directory (for the checkpoint's size). */
  dataDir: string;
}

export class ServerMetrics {
  readonly registry = new Registry();
  private coordinatorChanges: Counter;
  private requests: Counter;
  private requestSeconds: Histogram;
  private fsyncSeconds: Histogram;
  private checkpointSeconds: Histogram;
  private dropped: Counter;
  private holds: Counter;
  private source: MetricsSource | null = null;

  constructor() {
    const r = [this.registry];
    // Read on every scrape from the source attached.
    const gauge = (name: string, help: string, read: (s: NodeStatus, src: MetricsSource) => number): void => {
      const g: Gauge = new Gauge({
        name,
        help,
        registers: r,
        collect: () => {
          if (this.source) g.set(read(this.source.status(), this.source));
        },
      });
    };
    gauge('ckv_server_is_coordinator', '1 if this server is the coordinator', (s) => (s.role === 'coordinator' ? 1 : 0));
    gauge('ckv_server_has_coordinator', '1 if this server leads or hears a coordinator of its epoch', (_s, src) => (src.health().liveCoordinator ? 1 : 0));
    gauge('ckv_epoch', 'the epoch this server is in', (s) => s.epoch);
    gauge('ckv_log_last_index', 'index of the last entry in the log', (s) => s.last);
    gauge('ckv_commit_index', 'highest index this server knows committed', (s) => s.commit);
    gauge('ckv_applied_index', 'highest index applied to the state', (s) => s.applied);
    gauge('ckv_checkpoint_index', 'index the checkpoint holds', (s) => s.checkpoint);
    gauge('ckv_follower_lag_entries', 'on the coordinator, entries the slowest voter lacks; on a follower, entries it has not applied of the coordinator\'s commit', (s) => lag(s));
    gauge('ckv_log_bytes', 'bytes of log on disk', (_s, src) => src.logBytes());
    gauge('ckv_checkpoint_bytes', 'bytes of the checkpoint (LMDB data file)', (_s, src) => fileSize(join(src.dataDir, 'checkpoint', 'data.mdb')));
    this.coordinatorChanges = new Counter({ name: 'ckv_coordinator_changes_total', help: 'coordinators this server has seen take over', registers: r });
    this.requests = new Counter({ name: 'ckv_requests_total', help: 'client requests answered, by op and reply code', labelNames: ['op', 'code'], registers: r });
    this.requestSeconds = new Histogram({ name: 'ckv_request_duration_seconds', help: 'from a request\'s arrival to its reply', labelNames: ['op'], buckets: LATENCY_BUCKETS_S, registers: r });
    this.fsyncSeconds = new Histogram({ name: 'ckv_log_fsync_duration_seconds', help: 'one sync of the log', buckets: LATENCY_BUCKETS_S, registers: r });
    this.checkpointSeconds = new Histogram({ name: 'ckv_checkpoint_duration_seconds', help: 'one checkpoint, from taking its records to durable', buckets: LATENCY_BUCKETS_S, registers: r });
    this.holds = new Counter({ name: 'ckv_checkpoint_behind_holds_total', help: 'times this server, a follower, took no new entries because its checkpoint was DIRTY_RECORDS_MAX records behind', registers: r });
    this.dropped = new Counter({ name: 'ckv_peer_messages_dropped_total', help: 'peer messages dropped, by reason', labelNames: ['reason'], registers: r });
  }

  attach(source: MetricsSource): void {
    this.source = source;
  }

  /** The replica's observe hook. */
  observe(e: ReplicaEvent): void {
    if (e.t === 'answered') {
      this.requests.inc({ op: e.op, code: e.code });
      this.requestSeconds.observe({ op: e.op }, e.ms / 1000);
    } else if (e.t === 'checkpointed') this.checkpointSeconds.observe(e.ms / 1000);
    else if (e.t === 'holding') this.holds.inc();
    else if (e.t === 'notice' && e.notice.type === 'coordinator') this.coordinatorChanges.inc();
  }

  fsync(ms: number): void {
    this.fsyncSeconds.observe(ms / 1000);
  }

  peerDropped(reason: string): void {
    this.dropped.inc({ reason });
  }

  /** Readiness: every check, and whether all pass. */
  readiness(): { ready: boolean; checks: Array<{ name: string; ok: boolean; why?: string }> } {
    const src = this.source;
    if (!src) return { ready: false, checks: [{ name: 'started', ok: false, why: 'the server is starting' }] };
    const s = src.status();
    const h = src.health();
    const known = Math.max(s.commit, ...(s.peers ?? []).filter((p) => p.id === s.coordinator).map((p) => p.commit));
    const checks = [
      { name: 'storage', ok: !h.stopped, why: 'the server stopped on a storage or invariant failure' },
      { name: 'coordinator', ok: h.liveCoordinator, why: 'no coordinator heard lately (no majority, or an election going on)' },
      { name: 'caught-up', ok: s.role !== 'catchup', why: 'catching up after lost data: not voting yet' },
      { name: 'applied', ok: known - s.applied <= READY_APPLIED_LAG_MAX, why: `applied ${s.applied}, committed ${known}: more than ${READY_APPLIED_LAG_MAX} behind` },
    ];
    return { ready: checks.every((c) => c.ok), checks: checks.map((c) => (c.ok ? { name: c.name, ok: true } : c)) };
  }
}

function lag(s: NodeStatus): number {
  if (s.role === 'coordinator') {
    let worst = 0;
    for (const p of s.peers ?? []) if (s.voters.includes(p.id)) worst = Math.max(worst, s.commit - p.last);
    return Math.max(0, worst);
  }
  const c = (s.peers ?? []).find((p) => p.id === s.coordinator);
  return c ? Math.max(0, c.commit - s.applied) : 0;
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/** Serve /metrics, /healthz and /readyz on host:port. Resolves with the listening server. */
export function serveMetrics(addr: string, metrics: ServerMetrics): Promise<HttpServer> {
  const m = /^(.*):(\d+)$/.exec(addr);
  if (!m) return Promise.reject(new Error(`--metrics: HOST:PORT, got ${JSON.stringify(addr)}`));
  const host = m[1]!.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1';
  const port = Number(m[2]);
  const http = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const send = (code: number, type: string, body: string): void => {
      res.writeHead(code, { 'content-type': type });
      res.end(body);
    };
    if (req.method !== 'GET') return send(405, 'text/plain', 'GET only\n');
    if (url.pathname === '/metrics') {
      metrics.registry.metrics().then(
        (text) => send(200, metrics.registry.contentType, text),
        (err: Error) => send(500, 'text/plain', `${err.message}\n`),
      );
      return;
    }
    // Answering at all means the process and its event loop are alive.
    if (url.pathname === '/healthz' || url.pathname === '/livez') return send(200, 'text/plain', 'ok\n');
    if (url.pathname === '/readyz') {
      const r = metrics.readiness();
      const verbose = url.searchParams.has('verbose');
      const lines = r.checks.filter((c) => verbose || !c.ok).map((c) => (c.ok ? `[+]${c.name} ok` : `[-]${c.name} failed: ${c.why}`));
      return send(r.ready ? 200 : 503, 'text/plain', `${lines.join('\n')}${lines.length ? '\n' : ''}${r.ready ? 'ok' : 'not ready'}\n`);
    }
    send(404, 'text/plain', 'not found: /metrics, /healthz, /readyz\n');
  });
  return new Promise((resolve, reject) => {
    http.once('error', reject);
    http.listen(port, host, () => {
      http.off('error', reject);
      resolve(http);
    });
  });
}
