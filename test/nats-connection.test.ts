// How the programs connect to NATS. Against a nats-server that wants
// credentials: users with passwords (flags, files, environment, the URL), a
// token, an NKey, a .creds file (JWT), and TLS with a CA of our own; a refusal is AUTH (exit 5),
// fast, and no secret appears in any output. A server started before NATS
// waits for it, and says when it loses and regains its connection. --version.
// Across machines: a 3-node NATS cluster, one ckv-server on each node.

import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nkeys } from '@nats-io/transport-node';
import { newClusterKeyText } from '../src/transport/peer-auth.js';
import { Cluster } from './helpers/cluster.js';
import { newOperator } from './helpers/nats-jwt.js';
import { freePort, startNatsServer, stopProcess } from './helpers/nats-server.js';
import { CKVCTL_JS, CLI_JS, ROOT, SERVER_JS, runNode, start } from './helpers/run.js';

const dir = mkdtempSync(join(tmpdir(), 'ckv-auth-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, text: string): string => {
  const p = join(dir, name);
  writeFileSync(p, text, { mode: 0o600 });
  return p;
};

const SERVER_PASSWORD = 'srv-Secret-1';
const CLIENT_PASSWORD = 'cli-Secret-2';

t.test('users with passwords: servers and clients connect; a wrong password is AUTH, fast, never printed', async (t) => {
  const conf = file('users.conf', `authorization { users = [ { user: ckvserver, password: "${SERVER_PASSWORD}" }, { user: alice, password: "${CLIENT_PASSWORD}" } ] }\n`);
  const c = new Cluster(3, {
    cluster: 'auth1',
    natsArgs: ['-c', conf],
    serverEnv: { CKV_NATS_USER: 'ckvserver', CKV_NATS_PASSWORD: SERVER_PASSWORD },
    clientEnv: { CKV_NATS_USER: 'alice', CKV_NATS_PASSWORD: CLIENT_PASSWORD },
  });
  await c.start();
  t.teardown(() => c.stop());
  await c.waitForCoordinator();

  let r = await c.ckv(['--no-session', 'put', 'a.b', 'v1']);
  t.equal(r.code, 0, r.stderr);
  // The password from a file, with the user as a flag (and no environment).
  const pw = file('alice.pw', `${CLIENT_PASSWORD}\n`);
  r = await c.ckv(['--no-session', '--nats-user', 'alice', '--nats-password-file', pw, 'get', 'a.b'], { env: { CKV_NATS_USER: undefined, CKV_NATS_PASSWORD: undefined } });
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'v1');
  // In the URL.
  const port = new URL(c.nats.url).port;
  r = await runNode(CLI_JS, ['--nats', `nats://alice:${CLIENT_PASSWORD}@127.0.0.1:${port}`, '--cluster', 'auth1', '--no-session', 'get', 'a.b']);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'v1');

  // Wrong password, in the URL and in the environment: AUTH, exit 5, at once, no secret shown.
  for (const [what, args, env] of [
    ['URL', ['--nats', `nats://alice:wrong-Pass-9@127.0.0.1:${port}`], {}],
    ['environment', ['--nats', c.nats.url], { CKV_NATS_USER: 'alice', CKV_NATS_PASSWORD: 'wrong-Pass-9' }],
  ] as const) {
    r = await runNode(CLI_JS, [...args, '--cluster', 'auth1', '--no-session', '--timeout', '5000', 'get', 'a.b'], { env });
    t.equal(r.code, 5, `${what}: exit 5 (${r.stderr.trim()})`);
    t.match(r.stderr, /AUTH: NATS at .* refused the credentials: Authorization Violation\n/, `${what}: says so`);
    t.notMatch(r.stderr, /refused .*refused/, `${what}: once`);
    t.notMatch(r.stderr + r.stdout, /wrong-Pass-9/, `${what}: the password is not printed`);
    t.ok(r.ms < 3000, `${what}: not retried until the budget ends (${Math.round(r.ms)} ms)`);
  }
  // No credentials at all.
  r = await runNode(CLI_JS, ['--nats', c.nats.url, '--cluster', 'auth1', '--no-session', 'get', 'a.b'], { env: { CKV_NATS_USER: undefined, CKV_NATS_PASSWORD: undefined } });
  t.equal(r.code, 5, r.stderr);

  // Usage errors name the problem, not the secret.
  r = await runNode(CLI_JS, ['--nats', c.nats.url, '--nats-user', 'alice', '--no-session', 'get', 'a.b']);
  t.equal(r.code, 2);
  t.match(r.stderr, /needs a password/);
  r = await runNode(CLI_JS, ['--nats', c.nats.url, '--nats-creds', join(dir, 'none.creds'), '--no-session', 'get', 'a.b']);
  t.equal(r.code, 2);
  t.match(r.stderr, /cannot read .*none\.creds: ENOENT/);

  // ckvctl status with the same credentials; and with a wrong one, exit 5.
  r = await runNode(CKVCTL_JS, ['status', '--nats', c.nats.url, '--cluster', 'auth1', '--json'], { env: { CKV_NATS_USER: 'alice', CKV_NATS_PASSWORD: CLIENT_PASSWORD } });
  t.equal(r.code, 0, r.stderr);
  t.equal(JSON.parse(r.stdout).servers.length, 3);
  r = await runNode(CKVCTL_JS, ['status', '--nats', `nats://alice:wrong-Pass-9@127.0.0.1:${port}`, '--cluster', 'auth1']);
  t.equal(r.code, 5, r.stderr);
  t.notMatch(r.stderr, /wrong-Pass-9/);

  // A server with a wrong password exits 5 and says why, without the password; its log never shows one.
  const server = await runNode(
    SERVER_JS,
    ['--id', '9', '--data', join(dir, 'node-9'), '--nats', `nats://ckvserver:wrong-Pass-9@127.0.0.1:${port}`, '--cluster', 'auth1', '--voters', '1,2,3', '--cluster-key', c.keyFile],
    { timeoutMs: 15_000 },
  );
  t.equal(server.code, 5, server.stderr);
  t.match(server.stderr, /refused the credentials/);
  t.notMatch(server.stderr + server.stdout, /wrong-Pass-9/);
  for (const [id, log] of c.logs) t.notMatch(log, new RegExp(SERVER_PASSWORD), `server ${id}'s log holds no password`);
});

t.test('a token, and an NKey', async (t) => {
  const user = nkeys.createUser();
  const seed = new TextDecoder().decode(user.getSeed());
  // nats-server takes one kind per config: the token for one server, the NKey for another.
  const tokenNats = await startNatsServer(['--auth', 'tok-Secret-3']);
  t.teardown(() => tokenNats.stop());
  const nkeyNats = await startNatsServer(['-c', file('nkey.conf', `authorization { users = [ { nkey: ${user.getPublicKey()} } ] }\n`)]);
  t.teardown(() => nkeyNats.stop());
  // No ckv server listens: a connection that got in gets UNAVAILABLE (exit 3), a refused one AUTH (5).
  const probe = (url: string, args: string[], env: Record<string, string | undefined> = {}) =>
    runNode(CLI_JS, ['--nats', url, '--no-session', '--timeout', '800', ...args, 'get', 'k'], { env });
  let r = await probe(tokenNats.url, ['--nats-token-file', file('tok', 'tok-Secret-3\n')]);
  t.equal(r.code, 3, `token file: connected (${r.stderr.trim()})`);
  r = await probe(tokenNats.url, [], { CKV_NATS_TOKEN: 'tok-Secret-3' });
  t.equal(r.code, 3, `token in the environment: connected (${r.stderr.trim()})`);
  r = await probe(`nats://tok-Secret-3@127.0.0.1:${tokenNats.port}`, []);
  t.equal(r.code, 3, `token in the URL: connected (${r.stderr.trim()})`);
  r = await probe(tokenNats.url, [], { CKV_NATS_TOKEN: 'not-it' });
  t.equal(r.code, 5, 'a wrong token: AUTH');
  t.notMatch(r.stderr, /not-it/);
  r = await probe(nkeyNats.url, ['--nats-nkey', file('user.nk', `${seed}\n`)]);
  t.equal(r.code, 3, `NKey seed: connected (${r.stderr.trim()})`);
  r = await probe(nkeyNats.url, ['--nats-nkey', file('other.nk', `${new TextDecoder().decode(nkeys.createUser().getSeed())}\n`)]);
  t.equal(r.code, 5, 'another NKey: AUTH');
  r = await probe(nkeyNats.url, ['--nats-nkey', file('junk.nk', 'not a seed\n')]);
  t.equal(r.code, 2, 'a file that holds no seed: usage error');
  t.notMatch(r.stderr, /not a seed/, 'its contents are not printed');
});

t.test('a .creds file (user JWT and seed) against a nats-server in operator mode', async (t) => {
  const op = newOperator();
  // The client's JWT carries NATS permissions of its own: the client subjects and inboxes only.
  const client = op.userCreds('ckv-client', { pub: ['ckv.jwt1.read', 'ckv.jwt1.write', 'ckv.jwt1.admin', '_INBOX.>'], sub: ['_INBOX.>', 'ckv.jwt1.ev.>', 'ckv.jwt1.members'] });
  const c = new Cluster(1, {
    cluster: 'jwt1',
    natsArgs: ['-c', file('operator.conf', op.config)],
    serverEnv: { CKV_CREDS: file('server.creds', op.userCreds('ckv-server')) },
    clientEnv: { CKV_CREDS: file('client.creds', client) },
  });
  await c.start();
  t.teardown(() => c.stop());
  await c.waitForCoordinator();
  let r = await c.ckv(['--no-session', 'put', 'j.k', 'via-jwt']);
  t.equal(r.code, 0, r.stderr);
  r = await c.ckv(['--no-session', '--nats-creds', join(dir, 'client.creds'), 'get', 'j.k'], { env: { CKV_CREDS: undefined } });
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'via-jwt');
  // A user of an account the server does not trust: AUTH, and the JWT is not printed.
  const stranger = newOperator().userCreds('stranger');
  r = await c.ckv(['--no-session', '--timeout', '3000', 'get', 'j.k'], { env: { CKV_CREDS: file('stranger.creds', stranger) } });
  t.equal(r.code, 5, r.stderr);
  t.notMatch(r.stderr, /BEGIN|eyJ/, 'no JWT or seed in the message');
  // No credentials: AUTH.
  r = await c.ckv(['--no-session', '--timeout', '3000', 'get', 'j.k'], { env: { CKV_CREDS: undefined } });
  t.equal(r.code, 5, r.stderr);
});

t.test('TLS with a CA of our own', async (t) => {
  // A CA and a server certificate for 127.0.0.1, made with openssl.
  const ca = join(dir, 'ca.pem');
  const caKey = join(dir, 'ca.key');
  const cert = join(dir, 'server.pem');
  const key = join(dir, 'server.key');
  const csr = join(dir, 'server.csr');
  // (DNS:localhost too: the NATS client checks 127.0.0.1 as the name "localhost".)
  const ext = file('ext.cnf', 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', caKey, '-out', ca, '-days', '2', '-subj', '/CN=ckv test CA');
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr, '-subj', '/CN=127.0.0.1');
  ssl('x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext);
  const c = new Cluster(1, {
    cluster: 'tls1',
    natsArgs: ['--tls', '--tlscert', cert, '--tlskey', key],
    serverEnv: { CKV_TLS_CA: ca },
    clientEnv: { CKV_TLS_CA: ca },
  });
  await c.start();
  t.teardown(() => c.stop());
  await c.waitForCoordinator();
  let r = await c.ckv(['--no-session', 'put', 't.k', 'over-tls']);
  t.equal(r.code, 0, r.stderr);
  r = await c.ckv(['--no-session', '--tls-ca', ca, 'get', 't.k'], { env: { CKV_TLS_CA: undefined } });
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'over-tls');
  // Without the CA the server's certificate is not trusted: no connection (and no hang).
  r = await c.ckv(['--no-session', '--timeout', '2000', 'get', 't.k'], { env: { CKV_TLS_CA: undefined } });
  t.not(r.code, 0, 'an untrusted certificate: refused');
  t.ok(r.ms < 5000, `bounded by the budget (${Math.round(r.ms)} ms)`);
  r = await c.ckv(['--no-session', '--tls-cert', cert, 'get', 't.k']);
  t.equal(r.code, 2, '--tls-cert without --tls-key: usage error');

  // Mutual TLS: a nats-server that verifies client certificates (signed by the same CA).
  const clientCert = join(dir, 'client.pem');
  const clientKey = join(dir, 'client.key');
  const clientCsr = join(dir, 'client.csr');
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', clientKey, '-out', clientCsr, '-subj', '/CN=ckv client');
  ssl('x509', '-req', '-in', clientCsr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-out', clientCert, '-days', '2');
  const m = new Cluster(1, {
    cluster: 'tls2',
    natsArgs: ['--tlsverify', '--tlscert', cert, '--tlskey', key, '--tlscacert', ca],
    serverEnv: { CKV_TLS_CA: ca, CKV_TLS_CERT: clientCert, CKV_TLS_KEY: clientKey },
    clientEnv: { CKV_TLS_CA: ca },
  });
  await m.start();
  t.teardown(() => m.stop());
  r = await m.ckv(['--no-session', '--tls-cert', clientCert, '--tls-key', clientKey, '--timeout', '10000', 'put', 'm.k', 'mutual']);
  t.equal(r.code, 0, `a client certificate: in (${r.stderr.trim()})`);
  r = await m.ckv(['--no-session', '--timeout', '2000', 'get', 'm.k']);
  t.not(r.code, 0, 'no client certificate: refused');
  t.ok(r.ms < 5000, `bounded (${Math.round(r.ms)} ms)`);
});

t.test('--version: every program says package.json\'s version', async (t) => {
  const version = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version as string;
  for (const [name, js] of [['ckv', CLI_JS], ['ckv-server', SERVER_JS], ['ckvctl', CKVCTL_JS]] as const) {
    const r = await runNode(js, ['--version']);
    t.equal(r.code, 0);
    t.equal(r.stdout, `${name} ${version}\n`);
  }
});

t.test('a server started before NATS waits for it; it says when it loses and regains NATS', async (t) => {
  // A free port for the nats-server to come.
  const port = await freePort();
  const url = `nats://127.0.0.1:${port}`;
  const server = start(process.execPath, [SERVER_JS, '--id', '1', '--voters', '1', '--data', join(dir, 'early'), '--nats', url, '--cluster', 'early', '--insecure-peer-messages'], { timeoutMs: 60_000 });
  t.teardown(() => stopProcess(server.proc));
  const logged = async (re: RegExp, what: string): Promise<void> => {
    const deadline = Date.now() + 20_000;
    while (!re.test(server.stderr())) {
      if (Date.now() > deadline) throw new Error(`no log line: ${what}; stderr: ${server.stderr().slice(-500)}`);
      if (server.proc.exitCode !== null) throw new Error(`the server exited ${server.proc.exitCode}: ${server.stderr().slice(-500)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await logged(/waiting for NATS/, 'waiting for NATS');
  t.equal(server.proc.exitCode, null, 'still running without NATS');
  let nats = await startNatsServer(['-p', String(port)]);
  t.teardown(() => nats.stop());
  const put = async (value: string): Promise<void> => {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const r = await runNode(CLI_JS, ['--nats', url, '--cluster', 'early', '--no-session', '--timeout', '2000', 'put', 'k', value]);
      if (r.code === 0) return;
      if (Date.now() > deadline) throw new Error(`put ${value}: ${r.stderr}`);
    }
  };
  await put('first');
  t.pass('serving once NATS is up');
  await nats.stop();
  await logged(/lost the NATS connection/, 'lost NATS');
  nats = await startNatsServer(['-p', String(port)]);
  await logged(/reconnected to NATS/, 'reconnected');
  await put('second');
  const r = await runNode(CLI_JS, ['--nats', url, '--cluster', 'early', '--no-session', 'get', 'k']);
  t.equal(r.stdout, 'second', 'and serving again');
});

t.test('tools/nats-secure.conf: a client identity reads, writes and watches; NATS refuses it the peer subjects', async (t) => {
  // nats-server takes the two passwords from its environment (it inherits ours).
  process.env.CKV_SERVER_PASSWORD = 'srv-Fence-5';
  process.env.CKV_CLIENT_PASSWORD = 'cli-Fence-6';
  t.teardown(() => {
    delete process.env.CKV_SERVER_PASSWORD;
    delete process.env.CKV_CLIENT_PASSWORD;
  });
  const c = new Cluster(3, {
    cluster: 'fence',
    natsArgs: ['-c', join(ROOT, 'tools', 'nats-secure.conf')],
    serverEnv: { CKV_NATS_USER: 'ckv-server', CKV_NATS_PASSWORD: 'srv-Fence-5' },
    clientEnv: { CKV_NATS_USER: 'ckv-client', CKV_NATS_PASSWORD: 'cli-Fence-6' },
  });
  await c.start();
  t.teardown(() => c.stop());
  await c.waitForCoordinator();

  // The client identity: write, read, status, watch.
  let r = await c.ckv(['--no-session', 'put', 'f.a', 'one']);
  t.equal(r.code, 0, r.stderr);
  r = await c.ckv(['--no-session', 'get', 'f.a']);
  t.equal(r.stdout, 'one', r.stderr);
  const watch = start(process.execPath, [CLI_JS, '--nats', c.nats.url, '--cluster', 'fence', '--no-session', 'watch', 'f.', '--from', '1', '--json'], {
    env: { CKV_NATS_USER: 'ckv-client', CKV_NATS_PASSWORD: 'cli-Fence-6' },
  });
  t.teardown(() => stopProcess(watch.proc));
  await watch.waitForStdout((o) => o.includes('"key":"f.a"'), 'the watch replays f.a');
  r = await c.ckv(['--no-session', 'put', 'f.b', 'two']);
  t.equal(r.code, 0, r.stderr);
  await watch.waitForStdout((o) => o.includes('"key":"f.b"'), 'and follows with f.b');
  t.pass('the client identity watches');

  // The same identity on the peer subjects: NATS refuses every publish (and the subscription).
  const { connect } = await import('@nats-io/transport-node');
  const nc = await connect({ servers: c.nats.url, user: 'ckv-client', pass: 'cli-Fence-6' });
  t.teardown(() => nc.close().catch(() => undefined));
  const refused: string[] = [];
  void (async () => {
    for await (const s of nc.status()) if (s.type === 'error') refused.push(String((s as { error?: Error }).error?.message ?? ''));
  })();
  const before = JSON.parse((await c.ckv(['--no-session', 'status', '--json'])).stdout);
  const forged = JSON.stringify({ t: 'claim', from: 9, to: 0, epoch: 1e9, clock: 1e9, cid: '', last: 1e9, lastEpoch: 1e9 });
  for (const subject of ['ping', 'elect.all', 'repl.all', 'sync.1', 'snap.1']) nc.publish(`ckv.fence.${subject}`, forged);
  nc.subscribe('ckv.fence.repl.all');
  await nc.flush();
  const deadline = Date.now() + 5000;
  while (refused.length < 6 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.equal(refused.filter((m) => /permissions violation/i.test(m)).length, 6, `every publish and the subscription refused: ${JSON.stringify(refused)}`);
  const after = JSON.parse((await c.ckv(['--no-session', 'status', '--json'])).stdout);
  t.equal(after.coordinator, before.coordinator, 'the same coordinator');
  const epochs = (s: { servers: Array<{ epoch: number }> }) => s.servers.map((x) => x.epoch);
  t.same(epochs(after), epochs(before), 'no epoch moved');
  r = await c.ckv(['--no-session', 'get', 'f.a']);
  t.equal(r.stdout, 'one', 'the data unchanged');
});

t.test('across machines: a 3-node NATS cluster, one ckv-server per node; a NATS node dies and comes back', async (t) => {
  const client = [await freePort(), await freePort(), await freePort()];
  const route = [await freePort(), await freePort(), await freePort()];
  const routes = route.map((p) => `nats://127.0.0.1:${p}`).join(',');
  const natsNode = (i: number) => startNatsServer(['-p', String(client[i]), '-n', `n${i}`, '--cluster_name', 'ckvnats', '--cluster', `nats://127.0.0.1:${route[i]}`, '--routes', routes]);
  const nats = [await natsNode(0), await natsNode(1), await natsNode(2)];
  t.teardown(() => Promise.all(nats.map((n) => n.stop())));
  const key = file('machines.key', newClusterKeyText());
  const servers = [1, 2, 3].map((id) =>
    // Each server on its own NATS node only, as on its own machine.
    start(process.execPath, [SERVER_JS, '--id', String(id), '--voters', '1,2,3', '--data', join(dir, `m-${id}`), '--nats', `nats://127.0.0.1:${client[id - 1]}`, '--cluster', 'mach', '--cluster-key', key], { timeoutMs: 120_000 }),
  );
  t.teardown(() => Promise.all(servers.map((s) => stopProcess(s.proc))));
  // The client knows every node (CKV_NATS with three URLs).
  const all = client.map((p) => `nats://127.0.0.1:${p}`).join(',');
  const ckv = (args: string[]) => runNode(CLI_JS, ['--nats', all, '--cluster', 'mach', '--no-session', '--timeout', '3000', ...args]);
  const until = async (what: string, f: () => Promise<boolean>): Promise<void> => {
    const deadline = Date.now() + 30_000;
    while (!(await f())) {
      if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  await until('a first write', async () => (await ckv(['put', 'm.a', '1'])).code === 0);
  const status = async () => JSON.parse((await ckv(['status', '--json'])).stdout || '{"servers":[]}');
  await until('three servers in status', async () => (await status()).servers?.length === 3);
  // Reads go to the ckv server on the client's own NATS node (NATS 2.9 would spread them over
  // all three): with the other two stopped, every read on node 0 within one attempt (700 ms,
  // no retry) is answered. Spread over all three, each would have had 1 chance in 3.
  const onNode = (i: number, args: string[], timeoutMs: number) => runNode(CLI_JS, ['--nats', `nats://127.0.0.1:${client[i]}`, '--cluster', 'mach', '--no-session', '--timeout', String(timeoutMs), ...args]);
  const onNode0 = (args: string[], timeoutMs: number) => onNode(0, args, timeoutMs);
  /** Reads on node i, each one attempt of 700 ms, with every server but i+1 stopped: how many answered. */
  const localReads = async (i: number): Promise<{ answered: number; errors: string[] }> => {
    const others = servers.filter((_, k) => k !== i);
    for (const s of others) s.proc.kill('SIGSTOP');
    try {
      const errors: string[] = [];
      let answered = 0;
      for (let n = 0; n < 8; n++) {
        const r = await onNode(i, ['get', 'm.a'], 700);
        if (r.stdout === '1') answered++;
        else errors.push(r.stderr);
      }
      return { answered, errors };
    } finally {
      for (const s of others) s.proc.kill('SIGCONT');
    }
  };
  t.equal((await onNode0(['get', 'm.a'], 3000)).stdout, '1');
  t.same(await localReads(0), { answered: 8, errors: [] }, 'every read answered by the server on the same NATS node');
  // The local server stopped: reads go on, through the cluster's read subject.
  servers[0]!.proc.kill('SIGSTOP');
  try {
    const r = await onNode0(['get', 'm.a'], 8000);
    t.equal(r.stdout, '1', `a read while the local server is stopped: ${r.stderr}`);
  } finally {
    servers[0]!.proc.kill('SIGCONT');
  }
  // The NATS node of one server dies: the other two are a majority and go on.
  const st = await status();
  const victim = (st.coordinator as number) === 3 ? 2 : 3;
  await nats[victim - 1]!.stop();
  await until('writes after a NATS node died', async () => (await ckv(['put', 'm.b', '2'])).code === 0);
  // (Strong: without a token a causal read may come from a follower that has not applied it yet.)
  t.equal((await ckv(['get', '--strong', 'm.b'])).stdout, '2');
  // It comes back (same port): its server reconnects and catches up.
  nats[victim - 1] = await natsNode(victim - 1);
  await until(`server ${victim} reconnected`, async () => /reconnected to NATS/.test(servers[victim - 1]!.stderr()));
  await until(`server ${victim} caught up`, async () => {
    const s = await status();
    const me = s.servers?.find((x: { id: number }) => x.id === victim);
    const lead = s.servers?.find((x: { id: number }) => x.id === s.coordinator);
    return !!me && !!lead && me.applied >= lead.commit && me.commit > 0;
  });
  t.pass(`server ${victim} reconnected through its NATS node and caught up`);
  // It reconnected to another NATS server (the library learns them all from the first): it
  // serves the local reads of that one now, not of the one that went away.
  const servedFor = [...servers[victim - 1]!.stderr().matchAll(/"natsServerId":"([A-Z0-9]+)"/g)].map((m) => m[1]);
  t.ok(new Set(servedFor).size >= 2 && servedFor[servedFor.length - 1] !== servedFor[0], `server ${victim} served local reads under another NATS server id after it: ${servedFor.join(', ')}`);
});

t.test('URL credentials: split off and redacted, a raw "@" in a password too', async (t) => {
  const { isNatsAuthError, redactUrl, splitUrlCredentials } = await import('../src/transport/nats-auth.js');
  // (What the NATS library's errors say, by message: a revoked user is refused credentials, not an outage.)
  for (const m of ['Authorization Violation', 'User Authentication Expired', 'User Authentication Revoked', 'Permissions Violation for Publish to "x"']) t.ok(isNatsAuthError(new Error(m)), m);
  t.notOk(isNatsAuthError(new Error('CONNECTION_REFUSED')));
  t.equal(redactUrl('nats://a:p@ss@h:4222'), 'nats://***@h:4222');
  t.same(splitUrlCredentials(['nats://a:p@ss@h:4222']), { servers: ['nats://h:4222'], user: 'a', pass: 'p@ss' });
  t.same(splitUrlCredentials(['nats://a:p%3Ass@h']), { servers: ['nats://h'], user: 'a', pass: 'p:ss' });
  t.same(splitUrlCredentials(['nats://tok@h', 'nats://tok@g']), { servers: ['nats://h', 'nats://g'], token: 'tok' });
  t.equal(redactUrl('a:b@h:4222'), '***@h:4222', 'without a scheme too');
  t.equal(redactUrl('nats://h:4222'), 'nats://h:4222');
  t.throws(() => splitUrlCredentials(['nats://a:b@h', 'nats://a:c@g']), /different credentials/);
});

// The one-shot CLI's own NATS client (src/client/nats-wire.ts): against a real nats-server,
// and against scripted fake servers that send what a NATS server would not.
t.test('the one-shot NATS client: requests, no responders, timeouts, limits, refusals', async (t) => {
  const { connectWire } = await import('../src/client/nats-wire.js');
  const conf = file('wire.conf', `max_payload: 4096\nauthorization { users = [ { user: wired, password: "wire-Secret-7", permissions: { publish: { allow: ["echo", "quiet", "_INBOX.>"] }, subscribe: { allow: ["_INBOX.>", "feed"] } } }, { user: peer, password: "peer-Secret-8" }, { user: "ünï", password: "pässwörd€" } ] }\n`);
  const nats = await startNatsServer(['-c', conf]);
  t.teardown(() => nats.stop());
  const { connect } = await import('@nats-io/transport-node');
  const peer = await connect({ servers: nats.url, user: 'peer', pass: 'peer-Secret-8' });
  t.teardown(() => peer.close().catch(() => undefined));
  peer.subscribe('echo', { callback: (e, m) => void (e === null ? m.respond(m.data) : undefined) });
  // (It takes "quiet" and never answers.)
  peer.subscribe('quiet', { callback: () => undefined });
  await peer.flush();

  const w = await connectWire({ servers: [nats.url], user: 'wired', pass: 'wire-Secret-7', budgetMs: 2000 });
  t.ok(w, 'connected');
  t.teardown(() => w!.close());
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  t.equal(dec.decode(await w!.request('echo', enc.encode('hello'), { timeout: 2000 })), 'hello', 'a reply');
  // Binary-safe, CRLF inside, and many at once (each reply to its own request).
  const bytes = Uint8Array.from({ length: 3000 }, (_, i) => (i * 7) % 256);
  t.same([...(await w!.request('echo', bytes, { timeout: 2000 }))], [...bytes], 'bytes, CRLF included');
  const many = await Promise.all(Array.from({ length: 50 }, (_, i) => w!.request('echo', enc.encode(`n${i}`), { timeout: 2000 })));
  t.same(many.map((d) => dec.decode(d)), Array.from({ length: 50 }, (_, i) => `n${i}`), '50 in flight, each its own answer');
  await t.rejects(w!.request('nobody.home', enc.encode('x'), { timeout: 2000 }), { code: 'AUTH' }, 'a subject the user may not publish to: AUTH, not a timeout');
  await t.rejects(w!.request('quiet', enc.encode('x'), { timeout: 200 }), { code: 'TIMEOUT' }, 'no answer: TIMEOUT');
  await t.rejects(w!.request('echo', new Uint8Array(5000), { timeout: 2000 }), { code: 'TOO_LARGE' }, "larger than the server's max_payload");
  // Subscribe and flush; requestMany's no-responders.
  const got: string[] = [];
  w!.subscribe('feed', (d) => got.push(dec.decode(d)));
  await w!.flush();
  peer.publish('feed', 'e1');
  await peer.flush();
  await w!.flush();
  const until = Date.now() + 2000;
  while (got.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
  t.same(got, ['e1'], 'a subscription gets what is published');
  t.equal(dec.decode(await w!.request('echo', enc.encode('still'), { timeout: 2000 })), 'still', 'the connection is still good');
  await w!.close();
  await t.rejects(w!.request('echo', enc.encode('x'), { timeout: 500 }), { code: 'UNAVAILABLE' }, 'closed: UNAVAILABLE');
  // Credentials that are not ASCII go as UTF-8, as the NATS library sends them.
  const u = await connectWire({ servers: [nats.url], user: 'ünï', pass: 'pässwörd€', budgetMs: 2000 });
  t.teardown(() => u!.close());
  t.equal(dec.decode(await u!.request('echo', enc.encode('ü'), { timeout: 2000 })), 'ü', 'a user and password that are not ASCII');
  // A payload past max_payload through the NATS library: TOO_LARGE too, and not retried.
  const { Client, natsTransport } = await import('../src/client/client.js');
  const viaLibrary = new Client(natsTransport(peer), { cluster: 'big', timeout: 3000 });
  const big0 = Date.now();
  await t.rejects(viaLibrary.put('k', 'x'.repeat(5000)), { code: 'TOO_LARGE' }, 'the NATS library\'s max_payload error: TOO_LARGE');
  t.ok(Date.now() - big0 < 1000, `not retried until the budget ends (${Date.now() - big0} ms)`);

  // No responders, without credentials on a server that wants them: AUTH, fast.
  const t0 = Date.now();
  await t.rejects(connectWire({ servers: [nats.url], budgetMs: 5000 }), { code: 'AUTH' }, 'no credentials: AUTH');
  await t.rejects(connectWire({ servers: [nats.url], user: 'wired', pass: 'wrong-Pass-8', budgetMs: 5000 }), { code: 'AUTH' }, 'a wrong password: AUTH');
  t.ok(Date.now() - t0 < 3000, 'refused at once, not at the budget');
  const open = await startNatsServer([]);
  t.teardown(() => open.stop());
  const w2 = await connectWire({ servers: [open.url], budgetMs: 2000 });
  t.teardown(() => w2!.close());
  await t.rejects(w2!.request('nobody.home', enc.encode('x'), { timeout: 2000 }), { code: 'UNAVAILABLE', message: /no server is listening/ }, 'no responders: UNAVAILABLE at once');
  const one = await new Promise<{ err: unknown; data: unknown }>((resolve) => {
    const s = w2!.requestMany('nobody.home', enc.encode('x'), (err, data) => {
      s.unsubscribe();
      resolve({ err, data });
    });
  });
  t.match(one, { err: { code: 'UNAVAILABLE' }, data: null }, 'requestMany: no responders');
  // The first of two servers is down: the other one answers.
  const dead = await freePort();
  const w3 = await connectWire({ servers: [`nats://127.0.0.1:${dead}`, open.url], budgetMs: 2000 });
  t.ok(w3, 'a server down in the list: the other one');
  await w3!.close();
  // Messages: connectWire says the cause, Client.connect says where, once.
  await t.rejects(connectWire({ servers: [`nats://127.0.0.1:${dead}`], budgetMs: 1000 }), { code: 'UNAVAILABLE', message: /^connect ECONNREFUSED / }, 'connectWire: the bare cause');
  await t.rejects(
    Client.connect({ servers: `nats://127.0.0.1:${dead}`, oneShot: true, timeout: 1000 }),
    { code: 'UNAVAILABLE', message: new RegExp(`^cannot connect to NATS at nats://127\\.0\\.0\\.1:${dead}: connect ECONNREFUSED [^:]*:${dead}$`) },
    'Client.connect: where, once',
  );
  await t.rejects(
    Client.connect({ servers: nats.url, auth: { user: 'wired', pass: 'wrong-Pass-8' }, oneShot: true, timeout: 1000 }),
    { code: 'AUTH', message: `NATS at ${nats.url} refused the credentials: Authorization Violation` },
    'AUTH: where, once',
  );
  t.equal(await connectWire({ servers: ['tls://127.0.0.1:1'], budgetMs: 100 }), null, 'tls://: left to the NATS library');
});

t.test('the one-shot NATS client: what a server should never send ends in an error, never a crash or a hang', async (t) => {
  const { createServer } = await import('node:net');
  const { connectWire } = await import('../src/client/nats-wire.js');
  const INFO = 'INFO {"server_id":"fake","version":"2.9.0","max_payload":1048576,"headers":true}\r\n';
  /** A fake server: `script` answers each chunk the client sends (after the INFO it sends on accept). */
  const fake = async (first: string | null, script: (sent: string, sock: import('node:net').Socket) => void) => {
    const srv = createServer((sock) => {
      if (first !== null) sock.write(first);
      let sent = '';
      sock.on('data', (d) => {
        sent += d.toString('latin1');
        script(sent, sock);
      });
      sock.on('error', () => undefined);
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    t.teardown(() => new Promise<void>((r) => srv.close(() => r())));
    return `nats://127.0.0.1:${(srv.address() as { port: number }).port}`;
  };
  /** Answers the handshake's PING, and each request (its reply subject) with `answer(reply)`. */
  const answering = (answer: (reply: string) => string | Buffer[]) => (sent: string, sock: import('node:net').Socket) => {
    if (/PING\r\n/.test(sent) && !(sock as { ponged?: boolean }).ponged) {
      (sock as { ponged?: boolean }).ponged = true;
      sock.write('PONG\r\n');
    }
    const m = /PUB \S+ (\S+) \d+\r\n[^\r]*\r\n$/.exec(sent);
    if (m) {
      const a = answer(m[1]!);
      if (typeof a === 'string') sock.write(a);
      else for (const piece of a) sock.write(piece);
    }
  };
  const enc = new TextEncoder();
  const req = async (url: string, budgetMs = 1000) => {
    const w = await connectWire({ servers: [url], budgetMs });
    t.teardown(() => w?.close());
    return w!.request('s', enc.encode('q'), { timeout: 1000 });
  };

  // Split anywhere: a reply written one byte at a time (with a server PING in between) arrives whole.
  const body = '{"ok":true,"v":"a\\r\\nb"}';
  const split = await fake(INFO, answering((reply) => [...Buffer.from(`PING\r\nMSG ${reply} 1 ${body.length}\r\n${body}\r\n`, 'latin1')].map((b) => Buffer.from([b]))));
  t.equal(new TextDecoder().decode(await req(split)), body, 'a reply split into single bytes');
  // A status header 503 (no responders), sent as HMSG.
  const hmsg = await fake(INFO, answering((reply) => `HMSG ${reply} 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n`));
  await t.rejects(req(hmsg), { code: 'UNAVAILABLE', message: /no server is listening/ }, 'HMSG 503: no responders');
  const described = await fake(INFO, answering((reply) => `HMSG ${reply} 1 30 30\r\nNATS/1.0 503 No Responders\r\n\r\n\r\n`));
  await t.rejects(req(described), { code: 'UNAVAILABLE', message: /no server is listening/ }, 'HMSG 503 with a description: no responders');
  // A status of four digits is no 503: the (empty) message is the reply.
  const fourDigits = await fake(INFO, answering((reply) => `HMSG ${reply} 1 17 17\r\nNATS/1.0 5030\r\n\r\n\r\n`));
  t.equal((await req(fourDigits)).length, 0, 'HMSG status 5030: not a 503');

  type Script = (sent: string, sock: import('node:net').Socket) => void;
  const quiet: Script = () => undefined;
  const cases: Array<[string, string, Script]> = [
    ['garbage instead of INFO', 'HELLO THERE\r\n', quiet],
    ['INFO that is not JSON', 'INFO {not json\r\n', quiet],
    ['a MSG whose length runs past its CRLF', INFO, answering((reply) => `MSG ${reply} 1 2\r\nabcdef\r\n`)],
    ['a MSG with a negative length', INFO, answering((reply) => `MSG ${reply} 1 -5\r\nab\r\n`)],
    ['a MSG with too few fields', INFO, answering(() => 'MSG 1\r\n')],
    ['an HMSG whose header is longer than the message', INFO, answering((reply) => `HMSG ${reply} 1 10 4\r\nabcd\r\n`)],
    ['a MSG size in hex', INFO, answering((reply) => `MSG ${reply} 1 0x2\r\nok\r\n`)],
    ['a MSG size with a sign', INFO, answering((reply) => `MSG ${reply} 1 +2\r\nok\r\n`)],
    ['a MSG size with a fraction', INFO, answering((reply) => `MSG ${reply} 1 2.0\r\nok\r\n`)],
    ['an HMSG header size with a sign', INFO, answering((reply) => `HMSG ${reply} 1 +0 2\r\nok\r\n`)],
    ['a MSG sid with a fraction', INFO, answering((reply) => `MSG ${reply} 1.0 2\r\nok\r\n`)],
    ['an unknown operation', INFO, answering(() => 'BOGUS 1 2 3\r\n')],
    ['-ERR after the handshake', INFO, answering(() => "-ERR 'Stale Connection'\r\n")],
    [
      'the connection cut mid-reply',
      INFO,
      (sent, sock) => {
        answering((reply) => `MSG ${reply} 1 100\r\nabc`)(sent, sock);
        if (/PUB /.test(sent)) sock.end();
      },
    ],
  ];
  for (const [what, first, script] of cases) {
    const url = await fake(first, script);
    const t0 = Date.now();
    const err = await req(url, 800).then(
      () => null,
      (e: unknown) => e,
    );
    t.match(err, { code: 'UNAVAILABLE' }, `${what}: UNAVAILABLE`);
    t.ok(Date.now() - t0 < 900, `${what}: not left to time out (${Date.now() - t0} ms)`);
  }

  // A server that accepts and says nothing: the budget ends it, and nothing is left open.
  const silent = await fake(null, () => undefined);
  const t0 = Date.now();
  await t.rejects(connectWire({ servers: [silent], budgetMs: 300 }), { code: 'UNAVAILABLE', message: /within/ }, 'silent server: UNAVAILABLE');
  t.ok(Date.now() - t0 < 1000, 'within the budget');
  // A line without end: refused once past the bound, not buffered forever.
  const endless = await fake(`INFO {"x":"${'a'.repeat(70 * 1024)}`, () => undefined);
  await t.rejects(connectWire({ servers: [endless], budgetMs: 2000 }), { code: 'UNAVAILABLE', message: /too long/ }, 'a line past CONTROL_LINE_BYTES_MAX');
  // A server that wants TLS: left to the NATS library.
  const tls = await fake('INFO {"server_id":"fake","tls_required":true}\r\n', () => undefined);
  t.equal(await connectWire({ servers: [tls], budgetMs: 1000 }), null, 'tls_required: null');
  // -ERR Authorization Violation during the handshake: AUTH.
  const authErr = await fake(INFO, (sent, sock) => {
    if (/PING\r\n/.test(sent)) sock.end("-ERR 'Authorization Violation'\r\n");
  });
  await t.rejects(connectWire({ servers: [authErr], user: 'u', pass: 'p', budgetMs: 1000 }), { code: 'AUTH', message: 'Authorization Violation' }, 'Authorization Violation: AUTH');
  const revoked = await fake(INFO, (sent, sock) => {
    if (/PING\r\n/.test(sent)) sock.end("-ERR 'User Authentication Revoked'\r\n");
  });
  await t.rejects(connectWire({ servers: [revoked], user: 'u', pass: 'p', budgetMs: 1000 }), { code: 'AUTH' }, 'User Authentication Revoked: AUTH');

  const { Client } = await import('../src/client/client.js');
  // The connection drops at the first request (a NATS restart): the retry connects again, and
  // goes through (the same rid: a write still applies once).
  let conns = 0;
  const kv = JSON.stringify({ ok: true, ts: 5, index: 5, value: 'v', rev: 3 });
  const flaky = await fake(INFO, (sent, sock) => {
    const s = sock as { n?: number };
    s.n ??= ++conns;
    if (s.n === 1 && /PUB /.test(sent)) return void sock.destroy();
    answering((reply) => `MSG ${reply} 1 ${kv.length}\r\n${kv}\r\n`)(sent, sock);
  });
  const c = await Client.connect({ servers: flaky, oneShot: true, timeout: 2000 });
  t.teardown(() => c.close());
  const r0 = Date.now();
  t.same(await c.get('k'), { key: 'k', value: 'v', rev: 3 }, 'a dropped connection: made again, and the request answered');
  t.equal(conns, 2, 'two connections');
  t.ok(Date.now() - r0 < 1000, `at once, not at the budget (${Date.now() - r0} ms)`);

  // The connection cut while requestMany waits (ckv status): its handler hears UNAVAILABLE.
  const cutter = await fake(INFO, (sent, sock) => {
    answering(() => '')(sent, sock);
    if (/PUB /.test(sent)) sock.destroy();
  });
  const w = await connectWire({ servers: [cutter], budgetMs: 1000 });
  t.teardown(() => w?.close());
  const heard = await new Promise<unknown>((resolve) => {
    const timer = setTimeout(() => resolve('nothing within 2000 ms'), 2000);
    const sub = w!.requestMany('s', enc.encode('q'), (err, data) => {
      clearTimeout(timer);
      sub.unsubscribe();
      resolve({ err, data });
    });
  });
  t.match(heard, { err: { code: 'UNAVAILABLE', message: /closed/ }, data: null }, 'requestMany: UNAVAILABLE when the connection is cut');
  const cs = await Client.connect({ servers: cutter, oneShot: true, timeout: 800 });
  t.teardown(() => cs.close());
  await t.rejects(cs.status(), { code: 'UNAVAILABLE' }, 'status: UNAVAILABLE, not TIMEOUT');
});
