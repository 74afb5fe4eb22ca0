// Real processes for integration tests: a nats-server, ckv-server processes
// (from the compiled dist/), and one-shot `ckv` invocations.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNatsServer, stopProcess, type NatsServer } from './nats-server.js';
import { newClusterKeyText } from '../../src/transport/peer-auth.js';
import { CLI_JS, SERVER_JS, runNode, type RunOptions, type RunResult } from './run.js';
import { duplicateKeys } from './json-keys.js';

export class Cluster {
  nats!: NatsServer;
  readonly dir: string;
  readonly cluster: string;
  readonly voters: number[];
  readonly procs = new Map<number, ChildProcess>();
  readonly logs = new Map<number, string>();
  private extraArgs: string[];
  private natsArgs: string[];
  private serverEnv: Record<string, string>;
  private clientEnv: Record<string, string>;
  /** The cluster's key (every server gets it unless a test says otherwise). */
  readonly keyFile: string;

  /**
   * natsArgs: extra nats-server arguments (a config with users, say); serverEnv and clientEnv:
   * environment for the servers and for ckv() (their NATS credentials).
   */
  constructor(nodes: number, opts: { cluster?: string; extraArgs?: string[]; natsArgs?: string[]; serverEnv?: Record<string, string>; clientEnv?: Record<string, string> } = {}) {
    this.natsArgs = opts.natsArgs ?? [];
    this.serverEnv = opts.serverEnv ?? {};
    this.clientEnv = opts.clientEnv ?? {};
    this.dir = mkdtempSync(join(tmpdir(), 'ckv-it-'));
    this.cluster = opts.cluster ?? 'it';
    this.voters = Array.from({ length: nodes }, (_, i) => i + 1);
    this.extraArgs = opts.extraArgs ?? [];
    this.keyFile = join(this.dir, 'cluster.key');
    writeFileSync(this.keyFile, newClusterKeyText(), { mode: 0o600 });
  }

  /** Start the nats-server and the given servers (default: every voter). */
  async start(ids: number[] = this.voters): Promise<void> {
    this.nats = await startNatsServer(this.natsArgs);
    for (const id of ids) this.startNode(id);
  }

  dataDir(id: number): string {
    return join(this.dir, `node-${id}`);
  }

  startNode(id: number, extra: string[] = []): ChildProcess {
    const env = { ...process.env, CKV_LOG_LEVEL: 'info', ...this.serverEnv };
    delete env.NODE_EXTRA_CA_CERTS;
    const p = spawn(
      process.execPath,
      [SERVER_JS, '--id', String(id), '--data', this.dataDir(id), '--nats', this.nats.url, '--cluster', this.cluster, '--voters', this.voters.join(','), '--cluster-key', this.keyFile, ...this.extraArgs, ...extra],
      { stdio: ['ignore', 'ignore', 'pipe'], env },
    );
    this.logs.set(id, '');
    p.stderr!.on('data', (d: Buffer) => this.logs.set(id, (this.logs.get(id) ?? '') + d.toString()));
    this.procs.set(id, p);
    return p;
  }

  kill(id: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.procs.get(id)!;
    if (signal === 'SIGSTOP' || signal === 'SIGCONT') {
      p.kill(signal);
      return Promise.resolve();
    }
    return new Promise((r) => {
      if (p.exitCode !== null || p.signalCode !== null) return r();
      p.once('exit', () => r());
      p.kill(signal);
    });
  }

  /** The ckv CLI against this cluster. */
  ckv(args: string[], opts: RunOptions = {}): Promise<RunResult> {
    return runNode(CLI_JS, ['--nats', this.nats.url, '--cluster', this.cluster, ...args], { ...opts, env: { ...this.clientEnv, ...opts.env } });
  }

  /** Poll `ckv status --json` until `pred` holds, bounded by a deadline. */
  async waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    while (Date.now() < deadline) {
      try {
        const v = await probe();
        if (v !== undefined) return v;
      } catch (err) {
        last = err;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
  }

  /** Wait until some server is coordinator and a write goes through; returns its id. */
  async waitForCoordinator(timeoutMs = 20_000): Promise<number> {
    return this.waitFor(
      'a coordinator',
      async () => {
        const r = await this.ckv(['status', '--json', '--no-session', '--timeout', '1000']);
        if (r.code !== 0) return undefined;
        const id: unknown = JSON.parse(r.stdout).coordinator;
        return typeof id === 'number' ? id : undefined;
      },
      timeoutMs,
    );
  }

  /** Write every server's log to a directory that outlives the cluster; returns its path. */
  saveLogs(): string {
    const dir = mkdtempSync(join(tmpdir(), 'ckv-it-logs-'));
    for (const [id, text] of this.logs) writeFileSync(join(dir, `server-${id}.log`), text);
    return dir;
  }

  /** Log lines (JSON) that name a key twice in one object: pino would print both, readers keep one. */
  duplicateLogKeys(): string[] {
    const bad: string[] = [];
    for (const [id, text] of this.logs) {
      for (const line of text.split('\n')) {
        if (line.startsWith('{') && duplicateKeys(line).length > 0) bad.push(`server ${id}: ${line}`);
      }
    }
    return bad;
  }

  /** Stop everything and remove the directory; throws (failing the test) if a server's log line repeated a key. */
  async stop(): Promise<void> {
    for (const p of this.procs.values()) {
      if (p.signalCode === null && p.exitCode === null) p.kill('SIGCONT');
    }
    await Promise.all([...this.procs.values()].map((p) => stopProcess(p, 3000)));
    await this.nats?.stop();
    rmSync(this.dir, { recursive: true, force: true });
    const dup = this.duplicateLogKeys();
    if (dup.length > 0) throw new Error(`server log lines with a duplicate key:\n${dup.slice(0, 5).join('\n')}`);
  }
}

export interface StatusRow {
  id: number;
  role: string;
  epoch: number;
  applied: number;
  commit: number;
  last: number;
  checkpoint: number;
  voters: number[];
}

/** `ckv status --json` prints {servers: [...], ts}: the servers that answered. */
export function parseStatus(stdout: string): StatusRow[] {
  const text = stdout.trim();
  if (!text) return [];
  const parsed: any = JSON.parse(text);
  const arr: unknown[] = Array.isArray(parsed) ? parsed : Array.isArray(parsed.servers) ? parsed.servers : [parsed];
  return arr.map((x: any) => (x.status ?? x) as StatusRow);
}
