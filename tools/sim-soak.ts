// Long soak of the deterministic simulation, and replay of one seed.
//
//   node dist/tools/sim-soak.js --seeds 10000 [--start N] [--nodes 3|5]
//   node dist/tools/sim-soak.js --seed N [--nodes 3|5] [--verbose]
//
// Without --nodes a soak alternates 3- and 5-node clusters (even seeds 3,
// odd seeds 5); the CI test (test/simulation.test.ts) runs seeds 1.. of each
// size. A failure prints its seed, the command that replays it, and the trace
// of the last events; --seed replays exactly that run (the cluster size is
// part of the run: keep --nodes). --verbose prints every event as it happens.
// --chaos MS shortens or lengthens the faulty phase (a run is the same up to
// the end of the shorter one, which helps to cut a failing seed down).
// Exit status 1 if any seed failed.

import { runSeed, type SimOptions, type SimResult } from './sim/harness.js';
import { FAULT_KINDS, FAULTS_OFF_BY_DEFAULT, type FaultKind } from './sim/params.js';

interface Args {
  seeds: number;
  start: number;
  seed: number | null;
  nodes: number | null;
  verbose: boolean;
  chaosMs: number | undefined;
  quietMs: number | undefined;
  strictTokens: boolean;
  trace: number;
  stopAfter: number;
  enable: FaultKind[];
  set: string[];
}

function usage(msg?: string): never {
  if (msg) console.error(msg);
  console.error(
    'usage: sim-soak --seeds N [--start N] [--nodes 3|5] [--stop-after K]\n' +
      '       sim-soak --seed N [--nodes 3|5] [--verbose] [--trace LINES]\n' +
      'options: --chaos MS --quiet MS (simulated durations);\n' +
      '  --lenient-tokens (count, do not fail on, TOKEN_AHEAD for tokens the cluster issued);\n' +
      `  --enable FAULT[,FAULT] (faults off by default: ${FAULTS_OFF_BY_DEFAULT.join(', ')});\n` +
      '  --set KNOB=VALUE (force a parameter, e.g. replEntriesMax=3 or faultWeights.crashAll=20; repeatable)',
  );
  process.exit(2);
}

function parse(argv: string[]): Args {
  const a: Args = { seeds: 100, start: 1, seed: null, nodes: null, verbose: false, chaosMs: undefined, quietMs: undefined, strictTokens: true, trace: 300, stopAfter: 10, enable: [], set: [] };
  const num = (i: number): number => {
    const v = Number(argv[i]);
    if (argv[i] === undefined || !Number.isInteger(v) || v < 0) usage(`${argv[i - 1]} needs a non-negative integer`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    switch (argv[i]) {
      case '--seeds':
        a.seeds = num(++i);
        break;
      case '--start':
        a.start = num(++i);
        break;
      case '--seed':
        a.seed = num(++i);
        break;
      case '--nodes':
        a.nodes = num(++i);
        if (a.nodes < 1 || a.nodes > 9) usage('--nodes must be between 1 and 9');
        break;
      case '--verbose':
      case '-v':
        a.verbose = true;
        break;
      case '--chaos':
        a.chaosMs = num(++i);
        break;
      case '--quiet':
        a.quietMs = num(++i);
        break;
      case '--lenient-tokens':
        a.strictTokens = false;
        break;
      case '--trace':
        a.trace = num(++i);
        break;
      case '--stop-after':
        a.stopAfter = num(++i);
        break;
      case '--enable':
        for (const f of (argv[++i] ?? '').split(',')) {
          if (!FAULT_KINDS.includes(f as FaultKind)) usage(`--enable: unknown fault ${JSON.stringify(f)} (one of ${FAULT_KINDS.join(', ')})`);
          a.enable.push(f as FaultKind);
        }
        break;
      case '--set':
        if (argv[i + 1] === undefined) usage('--set needs KNOB=VALUE');
        a.set.push(argv[++i]!);
        break;
      case '--help':
      case '-h':
        usage();
        break;
      default:
        usage(`unknown argument ${argv[i]}`);
    }
  }
  return a;
}

function nodesFor(seed: number, nodes: number | null): number {
  return nodes ?? (seed % 2 === 0 ? 3 : 5);
}

function options(a: Args, seed: number): SimOptions {
  return {
    seed,
    nodes: nodesFor(seed, a.nodes),
    verbose: a.verbose,
    strictTokens: a.strictTokens,
    traceSize: a.trace,
    enable: a.enable,
    set: a.set,
    ...(a.chaosMs !== undefined ? { chaosMs: a.chaosMs } : {}),
    ...(a.quietMs !== undefined ? { quietMs: a.quietMs } : {}),
  };
}

function report(r: SimResult): void {
  console.log(`\nFAILED ${r.error}`);
  console.log(`parameters: ${r.params}`);
  if (r.trace) {
    console.log(`last ${r.trace.length} events:`);
    for (const line of r.trace) console.log(line);
  }
  console.log(`\n${r.error!.split('\n').slice(-2).join('\n')}`);
}

function main(): void {
  const a = parse(process.argv.slice(2));
  if (a.seed !== null) {
    const t0 = performance.now();
    const r = runSeed(options(a, a.seed));
    const ms = performance.now() - t0;
    if (!r.ok) {
      report(r);
      process.exit(1);
    }
    console.log(`seed ${a.seed} (${r.nodes} nodes) ok in ${ms.toFixed(0)} ms: ${JSON.stringify(r.stats)}`);
    console.log(`parameters: ${r.params}`);
    return;
  }
  const t0 = performance.now();
  const failed: SimResult[] = [];
  const total = { events: 0, committed: 0, acked: 0, crashes: 0, snapshots: 0, repairs: 0, repairsReceiving: 0, holds: 0, configs: 0, pages: 0, resent: 0, bogusRejected: 0, spuriousTokenAhead: 0, historyOps: 0 };
  let done = 0;
  for (let seed = a.start; seed < a.start + a.seeds; seed++) {
    const r = runSeed({ ...options(a, seed), traceSize: failed.length < 1 ? a.trace : 0 });
    done++;
    for (const k of Object.keys(total) as Array<keyof typeof total>) total[k] += r.stats[k];
    if (!r.ok) {
      failed.push(r);
      if (failed.length === 1) report(r);
      else console.log(`FAILED ${r.error!.split('\n').slice(-2).join(' | ')}`);
      if (failed.length >= a.stopAfter) break;
    }
    if (done % 100 === 0) {
      const s = (performance.now() - t0) / 1000;
      console.log(`${done} seeds in ${s.toFixed(0)} s, ${failed.length} failed`);
    }
  }
  const s = (performance.now() - t0) / 1000;
  console.log(`\n${done} seeds (${a.start}..${a.start + done - 1}) in ${s.toFixed(1)} s: ${failed.length} failed; totals ${JSON.stringify(total)}`);
  if (failed.length > 0) {
    console.log('failed seeds (replay each with the command shown):');
    for (const r of failed) console.log(`  ${r.error!.split('\n').slice(-1)[0]}`);
    process.exit(1);
  }
}

main();
