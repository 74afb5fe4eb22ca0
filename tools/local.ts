#!/usr/bin/env node
// npm start: a local cluster on loopback — a nats-server child process and
// ckv-server processes with their data under checkpoints/ — shown working with
// one put and get through the ckv CLI, stopped cleanly by Ctrl-C.
// `npm start -- --secure`: nats-server runs tools/nats-secure.conf, the servers
// and the CLI connect with their own identities (passwords kept under the data
// directory), and clients are kept off the peer subjects.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CLUSTER_DEFAULT } from '../src/core/limits.js';
import { newClusterKeyText } from '../src/transport/peer-auth.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SERVER = join(ROOT, 'dist', 'src', 'server', 'main.js');
const CLI = join(ROOT, 'dist', 'src', 'client', 'launch.cjs');
/** How long the cluster may take to elect a coordinator and answer. */
const READY_TIMEOUT_MS = 20_000;

const USAGE = `usage: npm start -- [--nodes N] [--port PORT] [--cluster NAME] [--data DIR] [--secure] [--metrics PORT]
(or: node dist/tools/local.js ..., which does not build first)

  --nodes N        ckv-server processes (default 3)
  --port PORT      the nats-server's client port on 127.0.0.1 (default 4222)
  --cluster NAME   cluster name (default ${CLUSTER_DEFAULT})
  --data DIR       data directories, cluster key and passwords (default checkpoints/)
  --secure         nats-server runs tools/nats-secure.conf: a server and a client identity,
                   clients kept off the peer subjects (passwords kept under DIR)
  --metrics PORT   server N serves /metrics, /healthz, /readyz on 127.0.0.1:PORT+N-1`;

let parsed;
try {
  parsed = parseArgs({
    options: {
      nodes: { type: 'string', default: '3' },
      port: { type: 'string', default: '4222' },
      cluster: { type: 'string', default: CLUSTER_DEFAULT },
      data: { type: 'string', default: join(ROOT, 'checkpoints') },
      secure: { type: 'boolean', default: false },
      metrics: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
} catch (err) {
  process.stderr.write(`local: ${(err as Error).message}\n${USAGE}\n`);
  process.exit(2);
}
const { values } = parsed;
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const nodes = Number(values.nodes);
const port = Number(values.port);
const metricsBase = values.metrics === undefined ? null : Number(values.metrics);
for (const [name, n] of [['--nodes', nodes], ['--port', port], ['--metrics', metricsBase ?? 1]] as const) {
  if (!Number.isSafeInteger(n) || n < 1 || n > 65535) {
    process.stderr.write(`local: ${name} takes a positive integer\n${USAGE}\n`);
    process.exit(2);
  }
}
const cluster = values.cluster!;
const natsUrl = `nats://127.0.0.1:${port}`;
const children: ChildProcess[] = [];
let stopping = false;

function log(msg: string): void {
  process.stdout.write(`local: ${msg}\n`);
}

/** A password kept in a file under the data directory (made once); returns the file. */
function passwordFile(name: string): string {
  const path = join(values.data!, name);
  if (!existsSync(path)) {
    mkdirSync(values.data!, { recursive: true });
    writeFileSync(path, `${randomBytes(18).toString('base64url')}\n`, { flag: 'wx', mode: 0o600 });
  }
  return path;
}

/** With --secure: the identities' password files, and the environment each side needs. */
const secure = values.secure
  ? (() => {
      const server = passwordFile('nats-server.password');
      const client = passwordFile('nats-client.password');
      const read = (f: string): string => readFileSync(f, 'utf8').trim();
      return {
        server,
        client,
        natsEnv: { CKV_SERVER_PASSWORD: read(server), CKV_CLIENT_PASSWORD: read(client) },
        serverEnv: { CKV_NATS_USER: 'ckv-server', CKV_NATS_PASSWORD_FILE: server },
        clientEnv: { CKV_NATS_USER: 'ckv-client', CKV_NATS_PASSWORD_FILE: client },
      };
    })()
  : null;

function startNats(): Promise<ChildProcess> {
  return new Promise((resolveStart, reject) => {
    const args = ['-a', '127.0.0.1', '-p', String(port), ...(secure ? ['-c', join(ROOT, 'tools', 'nats-secure.conf')] : [])];
    const p = spawn('nats-server', args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...secure?.natsEnv } });
    let buf = '';
    p.once('error', (err) => reject(new Error(`cannot start nats-server (run tools/setup.sh): ${err.message}`)));
    const onExit = (code: number | null) => reject(new Error(`nats-server exited (${code}): ${buf.slice(-500)}`));
    p.once('exit', onExit);
    p.stderr!.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('Server is ready')) {
        p.off('exit', onExit);
        resolveStart(p);
      }
    });
  });
}

/** The cluster's key, made once with the cluster (kept with its data). */
function clusterKey(): string {
  const path = join(values.data!, 'cluster.key');
  if (!existsSync(path)) {
    mkdirSync(values.data!, { recursive: true });
    writeFileSync(path, newClusterKeyText(), { flag: 'wx', mode: 0o600 });
    log(`made a cluster key: ${path}`);
  }
  return path;
}

function startServer(id: number, voters: number[], key: string): ChildProcess {
  const data = join(values.data!, `node-${id}`);
  mkdirSync(data, { recursive: true });
  const metrics = metricsBase === null ? [] : ['--metrics', `127.0.0.1:${metricsBase + id - 1}`];
  // (CKV_METRICS from our environment would make every server listen on the same port.)
  const env: NodeJS.ProcessEnv = { ...process.env, ...secure?.serverEnv };
  delete env.CKV_METRICS;
  const p = spawn(process.execPath, [SERVER, '--id', String(id), '--data', data, '--nats', natsUrl, '--cluster', cluster, '--voters', voters.join(','), '--cluster-key', key, ...metrics], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env,
  });
  // Server logs are JSON lines (pino); show only warnings and errors here.
  p.stderr!.on('data', (d: Buffer) => {
    for (const line of d.toString().split('\n')) {
      if (/"level":(40|50|60)/.test(line) || (line && !line.startsWith('{'))) process.stderr.write(`node-${id}: ${line}\n`);
    }
  });
  p.on('exit', (code, sig) => {
    if (!stopping) log(`node-${id} exited (${code ?? sig})`);
  });
  return p;
}

function ckv(args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [CLI, '--nats', natsUrl, '--cluster', cluster, '--no-session', ...args], { encoding: 'utf8', env: { ...process.env, ...secure?.clientEnv } });
  return { status: r.status, out: (r.stdout + r.stderr).trim() };
}

function stopAll(): Promise<void> {
  stopping = true;
  const servers = children.slice(1);
  const wait = (p: ChildProcess) =>
    new Promise<void>((r) => {
      if (p.exitCode !== null || p.signalCode !== null) return r();
      p.once('exit', () => r());
    });
  for (const p of servers) p.kill('SIGTERM');
  return Promise.all(servers.map(wait)).then(() => {
    children[0]?.kill('SIGTERM');
    return children[0] ? wait(children[0]) : undefined;
  });
}

async function main(): Promise<void> {
  log(`starting nats-server on ${natsUrl}${secure ? ' with tools/nats-secure.conf (clients kept off the peer subjects)' : ''}`);
  children.push(await startNats());
  const voters = Array.from({ length: nodes }, (_, i) => i + 1);
  const key = clusterKey();
  for (const id of voters) children.push(startServer(id, voters, key));
  log(`started ${nodes} ckv-server processes (voters ${voters.join(',')}), data under ${values.data}`);
  process.on('SIGINT', () => {
    // (A terminal's Ctrl-C reaches every process of the group; a second one changes nothing.)
    if (stopping) return;
    log('stopping (servers checkpoint and exit)');
    void stopAll().then(() => log('stopped'));
  });
  process.on('SIGTERM', () => void stopAll());

  const deadline = Date.now() + READY_TIMEOUT_MS;
  let put = ckv(['put', 'hello', 'world', '--timeout', '2000']);
  while (put.status !== 0 && Date.now() < deadline && !stopping) {
    put = ckv(['put', 'hello', 'world', '--timeout', '2000']);
  }
  if (put.status !== 0) {
    log(`the cluster did not take a write: ${put.out}`);
    await stopAll();
    process.exitCode = 1;
    return;
  }
  const get = ckv(['get', 'hello']);
  const status = ckv(['status']);
  log(`ckv put hello world -> ${put.out || 'ok'}`);
  log(`ckv get hello       -> ${get.out}`);
  process.stdout.write(`${status.out}\n`);
  const metricsLines = metricsBase === null ? '' : `\nMetrics: ${voters.map((id) => `http://127.0.0.1:${metricsBase + id - 1}/metrics`).join(' ')} (and /healthz, /readyz?verbose)`;
  const secureLines = secure
    ? `\nNATS identities (tools/nats-secure.conf): clients ckv-client, password in ${secure.client};
servers ckv-server, password in ${secure.server}. To run nats-server yourself with this config:
  CKV_SERVER_PASSWORD=$(cat ${secure.server}) CKV_CLIENT_PASSWORD=$(cat ${secure.client}) nats-server -c ${join(ROOT, 'tools', 'nats-secure.conf')}`
    : '';
  process.stdout.write(`
The cluster is up (cluster key: ${key}).${metricsLines}${secureLines}
In another shell:
  export CKV_NATS=${natsUrl} CKV_CLUSTER=${cluster}${secure ? `\n  export CKV_NATS_USER=ckv-client CKV_NATS_PASSWORD_FILE=${secure.client}` : ''}
  node ${CLI} put greeting hi      # or, in the repository: npx ckv put greeting hi
  node ${CLI} get greeting
  node ${CLI} watch ''             # change events
  node ${CLI} status
  node ${join(ROOT, 'dist', 'tools', 'ckvctl.js')} log ls --data ${join(values.data!, 'node-1')}
Ctrl-C stops everything.
`);
}

main().catch(async (err: Error) => {
  process.stderr.write(`local: ${err.message}\n`);
  await stopAll();
  process.exitCode = 1;
});
