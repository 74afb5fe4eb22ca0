// The systems tools/bench compares, each started as real processes in the same
// run: a raw NATS request/reply responder (the floor), NATS JetStream KV (R3 on
// a 3-node nats-server cluster), etcd (3 members, when installed) and ckv in
// either NATS topology. Each is driven as a foreign client would drive it:
// ckv over its wire protocol (JSON on NATS subjects), etcd over its HTTP/JSON
// gateway, JetStream KV with the official client.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { newClusterKeyText } from '../../src/transport/peer-auth.js';
import { localReadSubject } from '../../src/transport/subjects.js';
import { LOCAL_READ_OFF_MS } from '../../src/core/limits.js';
import type { Op } from './workload.js';

const REQUEST_TIMEOUT_MS = 10_000;
const START_TIMEOUT_MS = 20_000;

export interface Target {
  name: string;
  run(op: Op): Promise<void>;
  /** The processes doing this system's work (its servers and the NATS servers they use): their CPU per op is reported. */
  pids(): number[];
  close(): Promise<void>;
}

/** Processes started by this run; all are killed at exit. */
export class Procs {
  readonly all: ChildProcess[] = [];
  /** nats-server process ids by client URL. */
  readonly natsPids = new Map<string, number>();
  private nextPort: number;
  constructor(
    readonly dir: string,
    readonly env: NodeJS.ProcessEnv,
  ) {
    this.nextPort = 15000 + Math.floor(Math.random() * 2000) * 10;
  }

  port(): number {
    return this.nextPort++;
  }

  start(cmd: string, args: string[], readyText: string | null, name: string): Promise<ChildProcess> {
    return new Promise((res, rej) => {
      const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: this.env });
      this.all.push(p);
      let buf = '';
      const timer = setTimeout(() => rej(new Error(`${name} did not start: ${buf.slice(-400)}`)), START_TIMEOUT_MS);
      const on = (d: Buffer): void => {
        buf = (buf + d.toString()).slice(-4000);
        if (readyText === null || buf.includes(readyText)) {
          clearTimeout(timer);
          res(p);
        }
      };
      p.stdout!.on('data', on);
      p.stderr!.on('data', on);
      p.once('error', rej);
      p.once('exit', (c) => rej(new Error(`${name} exited ${c}: ${buf.slice(-400)}`)));
      if (readyText === null) on(Buffer.alloc(0));
    });
  }

  async nats(extra: string[] = []): Promise<string> {
    const port = this.port();
    const p = await this.start('nats-server', ['-a', '127.0.0.1', '-p', String(port), ...extra], 'Server is ready', `nats-server:${port}`);
    this.natsPids.set(`nats://127.0.0.1:${port}`, p.pid!);
    return `nats://127.0.0.1:${port}`;
  }

  /** A 3-node nats-server cluster (JetStream on when js); the client URL of each node. */
  async natsCluster(name: string, js: boolean): Promise<string[]> {
    const ports = [this.port(), this.port(), this.port()];
    const routePorts = [this.port(), this.port(), this.port()];
    const routes = routePorts.map((p) => `nats://127.0.0.1:${p}`).join(',');
    const started = await Promise.all(
      ports.map((p, i) =>
        this.start(
          'nats-server',
          ['-a', '127.0.0.1', '-p', String(p), '-n', `${name}${i}`, '--cluster_name', name, '--cluster', `nats://127.0.0.1:${routePorts[i]}`, '--routes', routes, ...(js ? ['-js', '-sd', join(this.dir, `${name}-${i}`)] : [])],
          'Server is ready',
          `nats-server ${name}${i}`,
        ),
      ),
    );
    ports.forEach((p, i) => this.natsPids.set(`nats://127.0.0.1:${p}`, started[i]!.pid!));
    return ports.map((p) => `nats://127.0.0.1:${p}`);
  }

  killAll(): void {
    for (const p of [...this.all].reverse()) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
}

async function retrying<T>(what: string, f: () => Promise<T>, ms = START_TIMEOUT_MS): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

const dec = new TextDecoder();

/** The raw floor: one echo process answering every request on one subject. */
export async function startRaw(procs: Procs, url: string, echoJs: string): Promise<Target> {
  const echo = await procs.start(process.execPath, [echoJs, url, 'bench.echo'], 'ready', 'echo');
  const nc = await connect({ servers: url });
  return {
    name: 'raw NATS req/reply',
    run: async (op) => void (await nc.request('bench.echo', JSON.stringify(op), { timeout: REQUEST_TIMEOUT_MS })),
    pids: () => [echo.pid!, procs.natsPids.get(url)!],
    close: () => nc.close(),
  };
}

export interface CkvCluster {
  target: Target;
  /** The connection the target uses (for status and failover). */
  nc: NatsConnection;
  cluster: string;
  /** Server processes by id. */
  servers: Map<number, ChildProcess>;
  /** Stop every server with `signal`, start them again on the same data: ms until `key` reads again. */
  restart(signal: 'SIGTERM' | 'SIGKILL', key: string): Promise<number>;
  /** Each server's log lines (pino JSON, on its stderr), as they come. */
  onLog(f: (id: number, line: Record<string, unknown>) => void): void;
}

/**
 * ckv with `nodes` servers; topology 'single': all on the NATS server at `url`; 'cluster':
 * spread over a 3-node NATS cluster of their own (the client on its first node).
 */
export async function startCkv(procs: Procs, serverJs: string, nodes: number, topology: 'single' | 'cluster', url: string, nodeArgs: string[] = [], logLevel = 'warn'): Promise<CkvCluster> {
  const urls = topology === 'single' ? [url] : await procs.natsCluster(`ckvnats${procs.port()}`, false);
  const cluster = `bench${procs.port()}`;
  const voters = Array.from({ length: nodes }, (_, i) => i + 1);
  const key = join(procs.dir, `${cluster}.key`);
  writeFileSync(key, newClusterKeyText(), { mode: 0o600 });
  const servers = new Map<number, ChildProcess>();
  const logHooks: Array<(id: number, line: Record<string, unknown>) => void> = [];
  const spawnServer = async (id: number): Promise<void> => {
    const nats = urls[(id - 1) % urls.length]!;
    const args = [...nodeArgs, serverJs, '--id', String(id), '--data', join(procs.dir, `${cluster}-${id}`), '--nats', nats, '--cluster', cluster, '--voters', voters.join(','), '--cluster-key', key, '--log-level', logLevel];
    const p = await procs.start(process.execPath, args, null, `ckv-server ${id}`);
    let rest = '';
    p.stderr!.on('data', (d: Buffer) => {
      const lines = (rest + d.toString()).split('\n');
      rest = lines.pop()!;
      for (const l of lines) {
        if (!l.startsWith('{')) continue;
        try {
          const line = JSON.parse(l) as Record<string, unknown>;
          for (const f of logHooks) f(id, line);
        } catch {
          // not a log line
        }
      }
    });
    servers.set(id, p);
  };
  for (const id of voters) await spawnServer(id);
  const nc = await connect({ servers: urls[0]! });
  const request = async (subject: string, body: object): Promise<void> => {
    const deadline = Date.now() + REQUEST_TIMEOUT_MS;
    for (;;) {
      if (Date.now() > deadline) throw new Error(`${subject}: no answer within ${REQUEST_TIMEOUT_MS} ms`);
      let reply: { ok: boolean; error?: { code: string; message: string } };
      try {
        reply = JSON.parse(dec.decode((await nc.request(subject, JSON.stringify(body), { timeout: REQUEST_TIMEOUT_MS })).data));
      } catch (err) {
        // No ckv server on our NATS server: the cluster's read subject for a while (as the client).
        if ((err as Error).message.includes('no responders') && subject === local) {
          subject = localOff();
          continue;
        }
        // No coordinator yet (no responders): wait for one.
        if ((err as Error).message.includes('no responders')) {
          await new Promise((r) => setTimeout(r, 20));
          continue;
        }
        throw err;
      }
      if (reply.ok || reply.error?.code === 'NOT_FOUND') return;
      if (reply.error?.code === 'UNAVAILABLE' && subject === local) {
        subject = localOff();
        continue;
      }
      if (reply.error?.code === 'UNAVAILABLE') continue;
      throw new Error(`${subject}: ${reply.error?.code}: ${reply.error?.message}`);
    }
  };
  let rid = 0;
  const prefix = `b${process.pid}.${cluster}`;
  const local = localReadSubject(cluster, nc.info?.server_id);
  let localOffUntil = 0;
  const readSubject = (): string => (local !== null && Date.now() >= localOffUntil ? local : `ckv.${cluster}.read`);
  /** The local subject failed: the cluster's for a while, as the client does. */
  const localOff = (): string => {
    localOffUntil = Date.now() + LOCAL_READ_OFF_MS;
    return readSubject();
  };
  const target: Target = {
    name: `ckv ${nodes}, ${topology === 'single' ? '1 nats-server' : '3-node NATS'}`,
    // Reads as ckv's client makes them: on the read subject of the servers on its own NATS
    // server first (src/transport/subjects.ts), the cluster's when none is there.
    run: (op) =>
      op.op === 'get'
        ? request(readSubject(), { op: 'get', key: op.key })
        : request(`ckv.${cluster}.write`, { op: 'put', key: op.key, value: op.value, rid: `${prefix}.${++rid}` }),
    pids: () => [...[...servers.values()].map((p) => p.pid!), ...urls.map((u) => procs.natsPids.get(u)!)],
    close: () => nc.close(),
  };
  await retrying('ckv: first write', () => target.run({ op: 'put', key: 'bench.warmup', value: 'x' }));
  const restart = async (signal: 'SIGTERM' | 'SIGKILL', probeKey: string): Promise<number> => {
    await Promise.all(
      [...servers.values()].map((p) => new Promise((res) => (p.exitCode !== null || p.signalCode !== null ? res(null) : (p.once('exit', res), p.kill(signal))))),
    );
    const t0 = Date.now();
    await Promise.all(voters.map((id) => spawnServer(id)));
    // Serving: a read of a key written before the stop is answered.
    for (;;) {
      try {
        const r = JSON.parse(dec.decode((await nc.request(`ckv.${cluster}.read`, JSON.stringify({ op: 'get', key: probeKey }), { timeout: 1000 })).data));
        if (r.ok) return Date.now() - t0;
      } catch {
        // not up yet
      }
      if (Date.now() - t0 > 120_000) throw new Error('restart: not serving within 120 s');
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  return { target, nc, cluster, servers, restart, onLog: (f) => void logHooks.push(f) };
}

export async function startJetStream(procs: Procs): Promise<Target> {
  const { Kvm } = await import('@nats-io/kv');
  const urls = await procs.natsCluster(`js${procs.port()}`, true);
  const nc = await connect({ servers: urls[0]! });
  const kvm = new Kvm(nc);
  const kv = await retrying('JetStream KV create', () => kvm.create('bench', { replicas: 3 }), 30_000);
  await retrying('JetStream KV first put', () => kv.put('bench.warmup', 'x'));
  return {
    name: 'JetStream KV R3',
    run: async (op) => {
      if (op.op === 'get') await kv.get(op.key);
      else await kv.put(op.key, op.value!);
    },
    pids: () => urls.map((u) => procs.natsPids.get(u)!),
    close: () => nc.close(),
  };
}

/** etcd's binary, if installed (Debian: apt-get install etcd-server). */
export function etcdBinary(): string | null {
  const r = spawnSync('sh', ['-c', 'command -v etcd'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** A 3-member etcd cluster, driven over its HTTP/JSON gateway (keep-alive fetch). */
export async function startEtcd(procs: Procs, bin: string): Promise<Target> {
  const members = [1, 2, 3].map((i) => ({ name: `e${i}`, client: procs.port(), peer: procs.port() }));
  const initial = members.map((m) => `${m.name}=http://127.0.0.1:${m.peer}`).join(',');
  const started = await Promise.all(
    members.map((m) =>
      procs.start(
        bin,
        [
          '--name', m.name,
          '--data-dir', join(procs.dir, `etcd-${m.name}`),
          '--listen-client-urls', `http://127.0.0.1:${m.client}`,
          '--advertise-client-urls', `http://127.0.0.1:${m.client}`,
          '--listen-peer-urls', `http://127.0.0.1:${m.peer}`,
          '--initial-advertise-peer-urls', `http://127.0.0.1:${m.peer}`,
          '--initial-cluster', initial,
          '--initial-cluster-state', 'new',
        ],
        'ready to serve client requests',
        `etcd ${m.name}`,
      ),
    ),
  );
  const base = `http://127.0.0.1:${members[0]!.client}`;
  const b64 = (s: string): string => Buffer.from(s).toString('base64');
  const post = async (path: string, body: object): Promise<void> => {
    const r = await fetch(`${base}${path}`, { method: 'POST', body: JSON.stringify(body), signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
    if (!r.ok) throw new Error(`etcd ${path}: HTTP ${r.status}`);
    await r.arrayBuffer();
  };
  const target: Target = {
    name: 'etcd 3 members',
    // Serializable would be a local read; the default (linearizable) is what etcdctl get does.
    run: (op) => (op.op === 'get' ? post('/v3/kv/range', { key: b64(op.key) }) : post('/v3/kv/put', { key: b64(op.key), value: b64(op.value!) })),
    pids: () => started.map((p) => p.pid!),
    close: async () => undefined,
  };
  await retrying('etcd first put', () => target.run({ op: 'put', key: 'bench.warmup', value: 'x' }), 30_000);
  return target;
}
