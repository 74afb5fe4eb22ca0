// The one-shot CLI (the compiled `ckv` binary, dist/: npm test builds first),
// against a real nats-server and a scripted fake ckv server.

import t from 'tap';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNatsServer, type NatsServer } from './helpers/nats-server.js';
import { fail, fakeServer, nodeStatus, ok } from './helpers/fake-server.js';
import { Cluster } from './helpers/cluster.js';
import { CKVCTL_JS, CLI_JS, ROOT, run, runNode, start, type RunOptions, type RunResult } from './helpers/run.js';

let ns: NatsServer;
t.before(async () => {
  ns = await startNatsServer();
});
t.teardown(() => ns?.stop());

t.test('cli', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ckv-cli-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const session = join(dir, 'session.json');
  // No NATS on this port: usage errors must be found before connecting.
  const deadEnv = { CKV_NATS: 'nats://127.0.0.1:1', CKV_SESSION: session, CKV_AFTER: undefined, CKV_CLUSTER: undefined };
  const cli = (args: string[], env: Record<string, string | undefined> = deadEnv, input?: string | Buffer) => runNode(CLI_JS, args, { env, ...(input !== undefined ? { input } : {}) });
  // Node as a user runs it, for timings: without tap's coverage hooks, which slow start-up and
  // exit. Through env -u: tap's process tracking adds its loader to NODE_OPTIONS of every child.
  const bare = (args: string[], opts: RunOptions = {}) => run('/usr/bin/env', ['-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', process.execPath, ...args], opts);
  /** How long after its --timeout ckv may still run, as its help states. */
  const margin = Number(/ckv exits at most (\d+) ms after it/.exec((await cli(['--help'])).stdout)?.[1]);

  t.test('usage errors exit 2 without touching the network', async (t) => {
    const cases: [string[], RegExp][] = [
      [[], /no command/],
      [['frobnicate'], /unknown command/],
      [['get'], /usage: ckv get \[--rev REV\] KEY/],
      [['get', 'a', 'b'], /usage/],
      [['get', '--rev', '0', 'k'], /rev must be a positive integer/],
      [['get', '--rev', 'x', 'k'], /--rev must be a non-negative integer/],
      [['get', '--rev', '5', '--strong', 'k'], /reads the past/],
      [['get', 'a..b'], /dot/],
      [['get', '.a'], /dot/],
      [['get', 'a b'], /letters, digits/],
      [['get', 'k'.repeat(513)], /KEY_BYTES_MAX/],
      [['put', 'k'], /usage/],
      [['put', 'k', '-5'], /--/],
      [['get', 'k', '--bogus'], /Unknown option/],
      [['get', 'k', '--limit', '3'], /--limit does not apply to get/],
      [['put', 'k', 'v', '--strong'], /--strong does not apply/],
      [['list', 'p', '--limit', 'x'], /--limit must be/],
      [['list', 'p', '--limit', '0'], /limit/],
      [['cas', 'k', 'v'], /usage: ckv cas/],
      [['cas', '--absent', 'k', 'old', 'new'], /usage/],
      [['cas', '--absent', '--delete', 'k', 'x'], /usage/],
      [['mget'], /usage/],
      [['batch', '{'], /not valid JSON/],
      [['batch', '{}'], /JSON array/],
      [['batch', '[{"op":"put","key":"a..b","value":"1"}]'], /dot/],
      [['batch', '[{"op":"put","key":"a","value":"\\ud800"}]'], /lone surrogate/],
      [['watch', 'a', 'b'], /usage/],
      [['watch', '--from', '-1'], /./],
      [['get', 'k', '--after', 'abc'], /--after must be/],
      [['get', 'k', '--timeout', '0'], /timeout/],
      [['get', 'k', '--cluster', 'a.b'], /cluster name/],
      [['get', 'k', '--no-session', '--session', 'x'], /contradict/],
    ];
    for (const [args, re] of cases) {
      const r = await cli(args);
      t.equal(r.code, 2, `ckv ${args.join(' ')}: ${r.stderr}`);
      t.match(r.stderr, re, `ckv ${args.join(' ')}`);
    }
    const r = await cli(['get', 'k'], { ...deadEnv, CKV_AFTER: 'x' });
    t.equal(r.code, 2);
    t.match(r.stderr, /CKV_AFTER/);
    const big = await cli(['put', 'k', '-'], deadEnv, Buffer.alloc(256 * 1024 + 1, 0x61));
    t.equal(big.code, 2);
    t.match(big.stderr, /VALUE_BYTES_MAX/);
    // Bytes that are not UTF-8 are a bytes value, not a usage error: it goes to the (absent) servers.
    const latin1 = await cli(['put', 'k', '-'], deadEnv, Buffer.from([0xff, 0xfe]));
    t.equal(latin1.code, 3, latin1.stderr);
    t.notMatch(latin1.stderr, /UTF-8|usage/);
    const bigBytes = await cli(['put', 'k', '-'], deadEnv, Buffer.alloc(200 * 1024, 0xff));
    t.equal(bigBytes.code, 2, 'bytes whose base64 exceeds VALUE_BYTES_MAX: a usage error before connecting');
    t.match(bigBytes.stderr, /VALUE_BYTES_MAX/);
    const twoStdin = await cli(['cas', 'k', '-', '-'], deadEnv, 'x');
    t.equal(twoStdin.code, 2);
  });

  t.test('the README states the exit statuses the help states', async (t) => {
    const block = (text: string, where: string) => {
      const m = /Exit status:\n(?:\n?```\n)?((?: {2}\S.*\n| {5}.*\n)+)/.exec(text);
      t.ok(m, `${where} has an exit status list`);
      return m?.[1] ?? '';
    };
    const help = block((await cli(['--help'])).stdout, 'ckv --help');
    t.match(help, /^ {2}4 /m, 'every status, 4 too');
    t.match(help, /del of a missing\s+key is not an error \(exit 0\)/);
    t.equal(block(await readFile(join(ROOT, 'README.md'), 'utf8'), 'README.md'), help);
  });

  t.test('help for ckv and for every command', async (t) => {
    for (const args of [['--help'], ['-h'], ['help']]) {
      const r = await cli(args);
      t.equal(r.code, 0);
      t.match(r.stdout, /Usage: ckv/);
      t.match(r.stdout, /Exit status/);
    }
    for (const cmd of ['get', 'put', 'del', 'cas', 'mget', 'list', 'batch', 'watch', 'status']) {
      const a = await cli([cmd, '--help']);
      const b = await cli(['help', cmd]);
      t.equal(a.code, 0, cmd);
      t.match(a.stdout, new RegExp(`Usage: ckv \\[flags\\] ${cmd}`));
      t.equal(a.stdout, b.stdout);
    }
  });

  t.test('NATS down: exit 3', async (t) => {
    const r = await cli(['get', 'k']);
    t.equal(r.code, 3);
    t.match(r.stderr, /UNAVAILABLE: cannot connect to NATS at nats:\/\/127\.0\.0\.1:1: connect ECONNREFUSED/);
    t.notMatch(r.stderr, /cannot connect to NATS.*cannot connect to NATS/, 'said once');
  });

  t.test('NATS paused or silent: exit 3 within --timeout and the stated margin, nothing left open', async (t) => {
    t.ok(margin > 0 && margin <= 500, `the help states the margin (${margin} ms)`);
    // A SIGSTOPped nats-server: the kernel accepts the connection, nothing answers.
    const paused = await startNatsServer();
    paused.proc.kill('SIGSTOP');
    t.teardown(async () => {
      paused.proc.kill('SIGCONT');
      await paused.stop();
    });
    // A plain TCP listener that accepts and never writes.
    const accepted = new Set<Socket>();
    const silent = createServer((sock) => accepted.add(sock));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    t.teardown(() => {
      for (const sock of accepted) sock.destroy();
      silent.close();
    });
    const silentUrl = `nats://127.0.0.1:${(silent.address() as AddressInfo).port}`;
    const cases: (readonly [string, number, readonly string[]])[] = [
      ['get, paused nats-server', 500, ['--nats', paused.url, 'get', 'k']],
      ['get, silent listener', 500, ['--nats', silentUrl, 'get', 'k']],
      ['put, both as a server list', 700, ['--nats', `${paused.url},${silentUrl}`, 'put', 'k', 'v']],
      ['status, silent listener', 500, ['--nats', silentUrl, 'status']],
      ['watch (connecting), paused nats-server', 500, ['--nats', paused.url, 'watch']],
      // A budget shorter than ckv's own start-up is spent before it connects: it exits at once.
      ['get, --timeout shorter than start-up', 1, ['--nats', paused.url, 'get', 'k']],
    ];
    // On a busy machine a process can be kept waiting for a CPU past any margin: a case passes
    // if one of three runs is within the bound (a process held open would miss it every time).
    const attempt = (args: string[]) => bare([CLI_JS, ...args], { env: deadEnv, timeoutMs: 10_000 }); // killed, and the test failed, at 10 s
    const timely = (r: RunResult, bound: number) => r.ms < bound && !/still running/.test(r.stderr);
    for (const [what, timeout, args] of cases) {
      // (Start-up takes about 0.1 s; a budget below that is bounded by start-up instead.)
      const bound = (timeout < 100 ? 800 : timeout) + margin;
      const runs: RunResult[] = [];
      do runs.push(await attempt(['--timeout', String(timeout), ...args]));
      while (runs.length < 3 && !timely(runs.at(-1)!, bound));
      const times = runs.map((r) => r.ms.toFixed(0)).join(', ');
      t.ok(
        runs.every((r) => r.code === 3 && /UNAVAILABLE: cannot connect to NATS/.test(r.stderr)),
        `${what}: exit 3, UNAVAILABLE: cannot connect to NATS`,
        { runs: runs.map((r) => ({ code: r.code, stderr: r.stderr })) },
      );
      t.ok(timely(runs.at(-1)!, bound), `${what}, --timeout ${timeout}: exited within ${bound} ms (${times} ms), the watchdog did not fire`);
    }
  });

  t.test('against a fake server', async (t) => {
    const fake = await fakeServer(ns.url, 'cli');
    t.teardown(() => fake.nc.close());
    const env = { CKV_NATS: ns.url, CKV_CLUSTER: 'cli', CKV_SESSION: session, CKV_AFTER: undefined };
    const store = new Map<string, string>();
    let ts = 100;
    const handle = (r: Record<string, unknown>) => {
      switch (r.op) {
        case 'put':
          store.set(r.key as string, r.value as string);
          return ok(++ts);
        case 'del': // as the real server: deleting an absent key is a write that changes nothing
          store.delete(r.key as string);
          return ok(++ts);
        case 'cas': {
          const cur = store.get(r.key as string) ?? null;
          if (cur !== r.expect) return fail(ts, 'CAS_MISMATCH', { current: cur, failed: 0 });
          if (r.value === null) store.delete(r.key as string);
          else store.set(r.key as string, r.value as string);
          return ok(++ts);
        }
        case 'get':
          return store.has(r.key as string) ? ok(ts, { value: store.get(r.key as string), rev: 1 }) : fail(ts, 'NOT_FOUND');
        case 'mget':
          return ok(ts, { values: (r.keys as string[]).map((k) => (store.has(k) ? { key: k, value: store.get(k), rev: 1 } : null)) });
        case 'list': {
          const keys = [...store.keys()].filter((k) => k.startsWith(r.prefix as string) && (!r.start || k >= (r.start as string))).sort();
          const page = keys.slice(0, r.limit as number);
          return ok(ts, { items: page.map((k) => ({ key: k, value: store.get(k), rev: 1 })), next: keys[r.limit as number] ?? null });
        }
        case 'batch':
          for (const op of r.ops as Record<string, string>[]) if (op.op === 'put') store.set(op.key!, op.value!);
          return ok(++ts);
        case 'status':
          return ok(ts, { status: nodeStatus(1, [1]) });
        default:
          return fail(ts, 'BAD_REQUEST');
      }
    };
    fake.on.read = handle;
    fake.on.write = handle;
    fake.on.admin = handle;

    let r = await cli(['put', 'cfg.a', 'hello'], env);
    t.equal(r.code, 0, r.stderr);
    t.equal(r.stdout, '');
    t.same(JSON.parse(await readFile(session, 'utf8')), { cli: 101 }, 'the session file keeps the token');

    r = await cli(['get', 'cfg.a'], env);
    t.equal(r.stdout, 'hello', 'exact bytes: no newline when stdout is not a terminal');
    t.equal(fake.seen.read.at(-1)!.after, 101, 'the next process reads after the token');

    r = await cli(['put', 'multi', '-'], env, 'a\nb\tc\\');
    t.equal(r.code, 0);
    t.equal((await cli(['get', 'multi'], env)).stdout, 'a\nb\tc\\');
    t.equal((await cli(['mget', 'cfg.a', 'multi', 'nope'], env)).stdout, 'cfg.a\thello\nmulti\ta\\nb\\tc\\\\\n');
    t.equal((await cli(['mget', 'cfg.a', 'nope'], env)).code, 1);

    r = await cli(['get', 'nope'], env);
    t.equal(r.code, 1);
    t.match(r.stderr, /nope: not found/);
    r = await cli(['get', 'nope', '--json'], env);
    t.equal(r.code, 1);
    t.same(JSON.parse(r.stdout), { key: 'nope', value: null, ts: 102 });

    r = await cli(['cas', 'cfg.a', 'wrong', 'x'], env);
    t.equal(r.code, 1);
    t.match(r.stderr, /cas mismatch.*"hello"/);
    t.equal((await cli(['cas', 'cfg.a', 'hello', 'x'], env)).code, 0);
    t.equal((await cli(['cas', '--absent', 'fresh', 'y'], env)).code, 0);
    t.equal((await cli(['cas', '--delete', 'fresh', 'y'], env)).code, 0);
    t.equal(fake.seen.write.at(-1)!.value, null);
    r = await cli(['del', 'fresh'], env);
    t.equal(r.code, 0, 'del of a missing key succeeds, as in etcdctl and consul');
    t.equal(r.stderr, '');

    r = await cli(['list', 'cfg.', '--json'], env);
    t.same(JSON.parse(r.stdout).items.map((i: { key: string }) => i.key), ['cfg.a']);
    for (const k of ['l.1', 'l.2', 'l.3']) await cli(['put', k, k], env);
    r = await cli(['list', 'l.', '--limit', '2', '--keys'], env);
    t.equal(r.stdout, 'l.1\nl.2\n');
    t.match(r.stderr, /--start l\.3/);
    r = await cli(['list', 'l.', '--limit', '2', '--all', '--keys'], env);
    t.equal(r.stdout, 'l.1\nl.2\nl.3\n');
    t.equal(r.stderr, '');

    // A busy session lock (another ckv writing) is waited for only within the exit margin.
    {
      const lockEnv = { ...env, CKV_SESSION: join(dir, 'locked.json') };
      const runs: RunResult[] = [];
      do {
        await writeFile(join(dir, 'locked.json.lock'), ''); // fresh: not stale for a second
        runs.push(await bare([CLI_JS, '--timeout', '600', 'put', 'locked', 'v'], { env: lockEnv }));
      } while (runs.length < 3 && runs.at(-1)!.ms >= 600 + margin);
      t.equal(runs.at(-1)!.code, 0, runs.at(-1)!.stderr);
      t.match(runs.at(-1)!.stderr, /lock .* is busy; writing without it/);
      t.ok(runs.at(-1)!.ms < 600 + margin, `exited within the budget and the margin (${runs.map((r) => r.ms.toFixed(0)).join(', ')} ms)`);
      t.equal(JSON.parse(await readFile(join(dir, 'locked.json'), 'utf8')).cli, ts, 'and the token was saved');
      await rm(join(dir, 'locked.json.lock'), { force: true });
    }

    // A reader that goes away (| head): no stack trace, the usual status.
    for (const [args, code] of [
      [['list', '', '--all', '--limit', '1'], 0],
      [['get', 'cfg.a'], 0],
      [['mget', 'cfg.a', 'nope'], 1],
      [['--help'], 0],
    ] as const) {
      const closed = await runNode(CLI_JS, [...args], { env, closeStdout: true });
      t.equal(closed.code, code, `ckv ${args.join(' ')} | head -0`);
      t.equal(closed.stderr.includes('EPIPE') || closed.stderr.includes('    at '), false, `ckv ${args.join(' ')}: no stack trace (${closed.stderr})`);
    }

    r = await cli(['batch', '-'], env, '[{"op":"put","key":"b1","value":"1"},{"op":"put","key":"b2","value":"2"}]');
    t.equal(r.code, 0, r.stderr);
    t.equal(store.get('b2'), '2');

    r = await cli(['status'], env);
    t.equal(r.code, 0);
    t.match(r.stdout, /^ID\s+ROLE/);
    t.match(r.stdout, /\n1\*\s+coordinator/);
    r = await cli(['status', '--json'], env);
    t.equal(JSON.parse(r.stdout).coordinator, 1, '--json names the coordinator');
    fake.on.admin = () => ok(ts, { status: { ...nodeStatus(2, [1, 2]), coordinator: null } });
    r = await cli(['status'], env);
    t.equal(r.code, 1, 'no coordinator: exit 1, as ckvctl status');
    t.match(r.stderr, /no coordinator answered/);
    t.notMatch(r.stdout, /\*/);
    r = await cli(['status', '--json'], env);
    t.equal(r.code, 1);
    t.equal(JSON.parse(r.stdout).coordinator, null);
    fake.on.admin = handle;

    // Token passing without a session file.
    const before = ts;
    r = await cli(['--no-session', '--print-token', 'put', 'tp', '1'], env);
    t.equal(r.stderr.trim(), String(before + 1), '--print-token prints the new token on stderr');
    r = await cli(['get', 'tp', '--no-session', '--after', '5'], env);
    t.equal(fake.seen.read.at(-1)!.after, 5);
    t.equal(r.stderr.trim(), String(ts), '--after implies printing the new token');
    await cli(['get', 'tp', '--no-session'], { ...env, CKV_AFTER: '7' });
    t.equal(fake.seen.read.at(-1)!.after, 7, 'CKV_AFTER');
    await cli(['get', 'tp', '--no-session'], env);
    t.equal(fake.seen.read.at(-1)!.after, undefined, '--no-session: no token');

    fake.on.read = () => fail(ts, 'TOKEN_AHEAD');
    r = await cli(['get', 'tp'], env);
    t.equal(r.code, 4);
    t.match(r.stderr, /session file/);
    fake.on.read = () => fail(ts, 'BAD_REQUEST');
    t.equal((await cli(['get', 'tp'], env)).code, 2, 'a request the server rejects is a usage error');

    // (The budget counts from ckv's start, which under tap's coverage hooks takes a few hundred ms.)
    r = await cli(['--timeout', '1000', '--cluster', 'nobody', 'get', 'k'], env);
    t.equal(r.code, 3);
    t.match(r.stderr, /UNAVAILABLE/);
  });

  t.test('watch prints events until SIGINT', async (t) => {
    const fake = await fakeServer(ns.url, 'cliw');
    t.teardown(() => fake.nc.close());
    const w = start(process.execPath, [CLI_JS, 'watch', 'j.', '--no-session'], { env: { CKV_NATS: ns.url, CKV_CLUSTER: 'cliw' } });
    t.teardown(() => void w.proc.kill('SIGKILL')); // a no-op once it has exited
    // Its subscription is in another process: publish the first event until it is printed
    // (a poll with a deadline; the watch drops the repeats).
    const publisher = setInterval(() => fake.publishEvent('cliw', { index: 1, ts: 11, op: 'put', key: 'j.a', value: 'x\ny', prev: 0 }), 50);
    try {
      await w.waitForStdout((out) => out.endsWith('\n'), 'the first event');
    } finally {
      clearInterval(publisher);
    }
    fake.publishEvent('cliw', { index: 2, ts: 12, op: 'del', key: 'j.a', prev: 1 });
    await w.waitForStdout((out) => out.split('\n').length === 3, 'the second event');
    w.proc.kill('SIGINT');
    const r = await w.done;
    t.equal(r.code, 0);
    t.equal(r.stdout, '1\t11\tput\tj.a\tx\\ny\n2\t12\tdel\tj.a\n');
  });

  t.test('startup time of a one-shot get', async (t) => {
    const fake = await fakeServer(ns.url, 'perf');
    t.teardown(() => fake.nc.close());
    fake.on.read = () => ok(1, { value: 'v', rev: 1 });
    // No coverage hooks and no extra CA file: the time a user sees.
    const env = { CKV_NATS: ns.url, CKV_CLUSTER: 'perf', CKV_SESSION: join(dir, 'perf.json') };
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const cliMs: number[] = [];
    const nodeMs: number[] = [];
    for (let i = 0; i < 7; i++) {
      const r = await bare([CLI_JS, 'get', 'k'], { env });
      t.equal(r.code, 0, r.stderr);
      cliMs.push(r.ms);
      nodeMs.push((await bare(['-e', '0'], { env })).ms);
    }
    const c = median(cliMs);
    const n = median(nodeMs);
    t.comment(`ckv get k: median ${c.toFixed(0)} ms; node -e 0: median ${n.toFixed(0)} ms; overhead ${(c - n).toFixed(0)} ms`);
    t.ok(c - n < 1000, 'a one-shot get costs well under a second over a bare node start');
  });
});

t.test('ckv status and ckvctl status against real servers: the same exit status, one coordinator', async (t) => {
  const c = new Cluster(3, { cluster: 'st' });
  t.teardown(() => c.stop());
  await c.start([1]); // one voter of three: no majority, so no coordinator
  const both = async () => {
    const [ckv, ctl] = await Promise.all([
      c.ckv(['status', '--no-session', '--timeout', '2000']),
      runNode(CKVCTL_JS, ['status', '--nats', c.nats.url, '--cluster', 'st', '--timeout', '2000']),
    ]);
    const stars = (out: string) => out.split('\n').filter((l) => /^\d+\*/.test(l)).map((l) => l.split(/\s+/)[0]);
    return { ckv, ctl, stars: { ckv: stars(ckv.stdout), ctl: stars(ctl.stdout) } };
  };
  await c.waitFor('server 1 to answer status', async () => ((await c.ckv(['status', '--json', '--no-session', '--timeout', '1000'])).stdout.includes('"id":1') ? true : undefined));
  let r = await both();
  t.equal(r.ckv.code, 1, `no coordinator: ckv status exits 1 (${r.ckv.stderr.trim()})`);
  t.equal(r.ctl.code, 1, `and so does ckvctl status (${r.ctl.stderr.trim()})`);
  t.same(r.stars, { ckv: [], ctl: [] }, 'no starred row');
  // A new cluster forms once every voter is up (an empty server cannot tell a new cluster from one whose data it lost).
  c.startNode(2);
  c.startNode(3);
  // The highest id leads once it is up and caught up (the bully order): wait for that to settle.
  const lead = await c.waitFor('server 3 to lead', async () => ((await c.waitForCoordinator()) === 3 ? 3 : undefined));
  r = await both();
  t.equal(r.ckv.code, 0, r.ckv.stderr);
  t.equal(r.ctl.code, 0, r.ctl.stderr);
  t.same(r.stars, { ckv: [`${lead}*`], ctl: [`${lead}*`] }, 'one starred row, the coordinator, in both');
});
