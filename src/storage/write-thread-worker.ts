// The checkpoint write thread's own code (a worker thread; write-thread.ts starts it). It
// carries out each packed write (write-ops.ts) in one LMDB transaction, through lmdb-js's
// batch() as the loop did before, and answers once the commit is flushed. A batch's callback
// is synchronous: at a million keys one took 260-440 ms, so on the server's loop it held
// still long enough for followers to miss heartbeats. Here it holds only this thread.
//
// It touches nothing but the environments it is asked to write (opened by path; lmdb-js
// shares one environment between the threads of a process).

import { parentPort } from 'node:worker_threads';
import { open, type Database, type RootDatabase } from 'lmdb';
import { unpackOps } from './write-ops.js';
import type { WriteThreadAnswer, WriteThreadRequest } from './write-thread.js';

type Bytes = Buffer;
interface Env {
  root: RootDatabase<Bytes, Bytes>;
  dbs: Array<Database<Bytes, Bytes>>;
  names: string;
}

const port = parentPort;
if (port === null) throw new Error('write-thread-worker runs as a worker thread');
const envs = new Map<string, Env>();

function envOf(dir: string, names: readonly string[]): Env {
  const have = envs.get(dir);
  if (have !== undefined) {
    if (have.names !== names.join('\0')) throw new Error(`write thread: ${dir} opened with other databases`);
    return have;
  }
  const enc = { keyEncoding: 'binary', encoding: 'binary' } as const;
  const root = open<Bytes, Bytes>({ path: dir, maxDbs: names.length + 1, ...enc });
  const dbs = names.map((name) => root.openDB<Bytes, Bytes>({ name, ...enc }) as Database<Bytes, Bytes>);
  const env = { root, dbs, names: names.join('\0') };
  envs.set(dir, env);
  return env;
}

/** A Buffer over the same bytes (no copy). */
const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.length);

async function carryOut(req: WriteThreadRequest): Promise<void> {
  if (req.kind === 'release') {
    const env = envs.get(req.dir);
    envs.delete(req.dir);
    if (env !== undefined) await env.root.close();
    return;
  }
  const ops = unpackOps(req.ops, req.names.length);
  if (typeof ops === 'string') throw new Error(`write thread: a bad write for ${req.dir}: ${ops}`);
  const env = envOf(req.dir, req.names);
  // Every op checked above: nothing in here throws halfway (a batch would commit what it queued).
  await env.root.batch(() => {
    for (const op of ops) {
      const db = env.dbs[op.db]!;
      const key = asBuffer(op.key);
      if (op.value === null) void db.remove(key);
      else void db.put(key, asBuffer(op.value));
    }
  });
  await env.root.flushed;
}

// One at a time, in the order sent (the main side also sends them one at a time).
let chain: Promise<void> = Promise.resolve();
port.on('message', (req: WriteThreadRequest) => {
  chain = chain.then(async () => {
    let answer: WriteThreadAnswer;
    try {
      await carryOut(req);
      answer = { id: req.id };
    } catch (err) {
      answer = { id: req.id, error: (err as Error).message ?? String(err) };
    }
    port.postMessage(answer);
  });
});
