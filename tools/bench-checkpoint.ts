// Checkpoint write cost, in one process, away from the network and the other servers:
// the state machine applies N single-put entries (each with a request id, as clients
// send them) and each checkpoint writes what they changed to a real LMDB checkpoint
// (records, request ids, durable history), fsync'd. The baseline, run in the same
// invocation: the same number of LMDB puts of the same sizes, in one lmdb-js batch
// per checkpoint, with nothing encoded or checked (the floor for this design). It also
// reports the longest the event loop held still during a write (a server's heartbeats
// and requests wait that long).
// Applying is timed too: past RIDS_RETAINED_MAX puts it shows whether the state
// machine's cost per write stays flat.
//
//   node dist/tools/bench-checkpoint.js [--ops N] [--keys K] [--per N] [--reps R] [--value BYTES]

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { open } from 'lmdb';
import { KvState } from '../src/core/state.js';
import type { ChangeEvent, Entry } from '../src/core/wire.js';
import { LmdbCheckpoint } from '../src/storage/checkpoint.js';

const { values: o } = parseArgs({
  options: {
    ops: { type: 'string', default: '40000' },
    keys: { type: 'string', default: '1000' },
    per: { type: 'string', default: '1024' },
    reps: { type: 'string', default: '3' },
    value: { type: 'string', default: '100' },
  },
});
const OPS = Number(o.ops);
const KEYS = Number(o.keys);
const PER = Number(o.per);
const REPS = Number(o.reps);
const VALUE = 'v'.repeat(Number(o.value));

/** How long the event loop held still at most while this ran (the gap between 5 ms ticks, less 5). */
function watchLoop(): () => number {
  let last = performance.now();
  let most = 0;
  const tick = setInterval(() => {
    const now = performance.now();
    most = Math.max(most, now - last - LOOP_TICK_MS);
    last = now;
  }, LOOP_TICK_MS);
  return () => {
    clearInterval(tick);
    return Math.max(most, performance.now() - last - LOOP_TICK_MS);
  };
}
const LOOP_TICK_MS = 5;

interface Run {
  /** µs of checkpoint writing per applied put. */
  usPerOp: number;
  /** The longest the loop held still during one checkpoint write, ms (a server's heartbeats wait that long). */
  stallMs: number;
  /** µs of applying per put (ckv only: the state machine, request-id table included), in the first and in the last checkpoint's span. */
  applyUs?: [number, number];
  /** Records written per put (kv, rids, events, the heads of the keys' event chains). */
  recordsPerOp: number;
}

/** ckv: apply, take the delta, write it (what a replica does on each checkpoint). */
async function ckvRun(dir: string): Promise<Run & { sizes: number[] }> {
  const cp = await LmdbCheckpoint.open(join(dir, 'checkpoint'));
  const st = new KvState(cp);
  st.apply({ index: 1, epoch: 1, ts: 1, kind: 'noop', cluster: 'bench-checkpoint-00000' });
  let index = 1;
  let writing = 0;
  let stall = 0;
  const applyRounds: number[] = [];
  let records = 0;
  let x = 12345;
  const sizes: number[] = [];
  for (let done = 0; done < OPS; ) {
    const events: ChangeEvent[] = [];
    const a0 = process.hrtime.bigint();
    for (let i = 0; i < PER && done < OPS; i++, done++) {
      x = (Math.imul(x, 1103515245) + 12345) & 0x7fffffff;
      const e: Entry = { index: ++index, epoch: 1, ts: index, kind: 'write', rid: `bench.${process.pid}.${index}`, ops: [{ op: 'put', key: `key-${String((x >>> 8) % KEYS).padStart(6, '0')}`, value: VALUE }] };
      events.push(...st.apply(e).events);
    }
    applyRounds.push(Number(process.hrtime.bigint() - a0) / 1000 / events.length);
    const delta = st.takeDelta();
    delta.events = events;
    records += delta.kv.length + delta.ridsSet.length + delta.ridsDel.length + events.length + new Set(events.map((ev) => ev.key)).size;
    sizes.push(delta.kv.length, delta.ridsSet.length, events.length);
    const t0 = process.hrtime.bigint();
    const stop = watchLoop();
    await cp.write(delta);
    stall = Math.max(stall, stop());
    writing += Number(process.hrtime.bigint() - t0) / 1000;
    st.release(delta);
  }
  await cp.close();
  return { usPerOp: writing / OPS, stallMs: stall, applyUs: [applyRounds[0]!, applyRounds[applyRounds.length - 1]!], recordsPerOp: records / OPS, sizes };
}

/** The floor: as many LMDB puts of about the same sizes, one batch per checkpoint, fsync'd. */
async function rawRun(dir: string): Promise<Run> {
  const enc = { keyEncoding: 'binary', encoding: 'binary' } as const;
  const root = open<Buffer, Buffer>({ path: join(dir, 'raw'), maxDbs: 8, ...enc });
  const kv = root.openDB<Buffer, Buffer>({ name: 'kv', ...enc });
  const rids = root.openDB<Buffer, Buffer>({ name: 'rids', ...enc });
  const events = root.openDB<Buffer, Buffer>({ name: 'events', ...enc });
  const heads = root.openDB<Buffer, Buffer>({ name: 'heads', ...enc });
  const rec = Buffer.alloc(VALUE.length + 60, 0x61);
  const ridRec = Buffer.alloc(40, 0x61);
  const ev = Buffer.alloc(VALUE.length + 80, 0x61);
  const head = Buffer.alloc(24, 0x61);
  let index = 1;
  let writing = 0;
  let stall = 0;
  let records = 0;
  let x = 12345;
  for (let done = 0; done < OPS; ) {
    const keys = new Map<string, Buffer>();
    const batch: Array<[Buffer, Buffer]> = [];
    for (let i = 0; i < PER && done < OPS; i++, done++) {
      x = (Math.imul(x, 1103515245) + 12345) & 0x7fffffff;
      const k = `key-${String((x >>> 8) % KEYS).padStart(6, '0')}`;
      keys.set(k, Buffer.from(k));
      const evKey = Buffer.alloc(8);
      evKey.writeUInt32BE(++index, 4);
      batch.push([Buffer.from(`bench.${process.pid}.${index}`), evKey]);
    }
    const t0 = process.hrtime.bigint();
    const stop = watchLoop();
    await root.batch(() => {
      for (const k of keys.values()) {
        void kv.put(k, rec);
        void heads.put(k, head);
      }
      for (const [rid, evKey] of batch) {
        void rids.put(rid, ridRec);
        void events.put(evKey, ev);
      }
    });
    await root.flushed;
    stall = Math.max(stall, stop());
    writing += Number(process.hrtime.bigint() - t0) / 1000;
    records += 2 * keys.size + 2 * batch.length;
  }
  await root.close();
  return { usPerOp: writing / OPS, stallMs: stall, recordsPerOp: records / OPS };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const ckv: number[] = [];
  const raw: number[] = [];
  const applyFirst: number[] = [];
  const applyLast: number[] = [];
  const stallCkv: number[] = [];
  const stallRaw: number[] = [];
  let recCkv = 0;
  let recRaw = 0;
  let shape = '';
  // Alternated, so that drift in machine load hits both alike.
  for (let r = 0; r < REPS; r++) {
    const dir = mkdtempSync(join(tmpdir(), 'ckv-bench-ckpt-'));
    try {
      const a = await rawRun(dir);
      const b = await ckvRun(dir);
      raw.push(a.usPerOp);
      ckv.push(b.usPerOp);
      stallRaw.push(a.stallMs);
      stallCkv.push(b.stallMs);
      applyFirst.push(b.applyUs![0]);
      applyLast.push(b.applyUs![1]);
      recRaw = a.recordsPerOp;
      recCkv = b.recordsPerOp;
      shape = `${b.sizes[0]} keys, ${b.sizes[1]} request ids, ${b.sizes[2]} events`;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    process.stderr.write(`rep ${r + 1}/${REPS}: raw LMDB ${raw[r]!.toFixed(2)} us/put, ckv checkpoint ${ckv[r]!.toFixed(2)} us/put\n`);
  }
  const [c, w] = [median(ckv), median(raw)];
  process.stdout.write(
    `checkpoint write, ${OPS} puts over ${KEYS} keys of ${VALUE.length} B, a checkpoint every ${PER} puts (first: ${shape}); median of ${REPS}\n` +
      `  raw LMDB batch (same puts, nothing encoded): ${w.toFixed(2)} us per put (${recRaw.toFixed(2)} records)\n` +
      `  ckv checkpoint:                              ${c.toFixed(2)} us per put (${recCkv.toFixed(2)} records)  ${(c / w).toFixed(2)}x raw\n` +
      `  the loop held still at most: raw batch ${median(stallRaw).toFixed(0)} ms, ckv checkpoint ${median(stallCkv).toFixed(0)} ms (the longest in a run; median of runs)\n` +
      `  applying the puts (before writing): ${median(applyFirst).toFixed(2)} us per put in the first checkpoint's span, ${median(applyLast).toFixed(2)} in the last\n`,
  );
}

void main();
