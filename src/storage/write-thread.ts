// The checkpoint write thread, as the loop sees it: one worker thread per process
// (write-thread-worker.ts) that carries out packed writes (write-ops.ts), each in one LMDB
// transaction, and answers once it is flushed. The loop only packs the ops (a memory copy a
// slice at a time); the synchronous part of lmdb-js's batch() runs on that thread.
//
// The thread keeps the process alive only while a request is out. If it fails or exits,
// every request out is refused with the reason, and the next request starts a new thread
// (a checkpoint write that fails is fatal to a server anyway).

import { Worker } from 'node:worker_threads';

export type WriteThreadRequest =
  | { kind: 'write'; id: number; dir: string; names: readonly string[]; ops: ArrayBuffer }
  /** Close the thread's handle on dir's environment (before the loop closes its own). */
  | { kind: 'release'; id: number; dir: string };

export interface WriteThreadAnswer {
  id: number;
  /** Why it was not carried out (a write: nothing of it was). */
  error?: string;
}

interface Waiting {
  resolve: () => void;
  reject: (err: Error) => void;
}

/** Under tap's TypeScript loader this module is a .ts file, and so is the worker's. */
const WORKER_URL = new URL(`./write-thread-worker.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url);

class WriteThread {
  private readonly worker: Worker;
  private readonly waiting = new Map<number, Waiting>();
  private nextId = 1;
  /** Why this thread can take no more (then a new one is started). */
  failed: Error | null = null;

  constructor() {
    this.worker = new Worker(WORKER_URL);
    this.worker.unref();
    this.worker.on('message', (a: WriteThreadAnswer) => this.answered(a));
    this.worker.on('error', (err: Error) => this.fail(new Error(`checkpoint write thread failed: ${err.message}`)));
    this.worker.on('exit', (code: number) => this.fail(new Error(`checkpoint write thread exited (code ${code})`)));
  }

  write(dir: string, names: readonly string[], ops: ArrayBuffer): Promise<void> {
    return this.request({ kind: 'write', id: this.nextId++, dir, names, ops }, [ops]);
  }

  release(dir: string): Promise<void> {
    return this.request({ kind: 'release', id: this.nextId++, dir }, []);
  }

  private request(req: WriteThreadRequest, transfer: ArrayBuffer[]): Promise<void> {
    if (this.failed !== null) return Promise.reject(this.failed);
    return new Promise<void>((resolve, reject) => {
      this.waiting.set(req.id, { resolve, reject });
      if (this.waiting.size === 1) this.worker.ref();
      this.worker.postMessage(req, transfer);
    });
  }

  private answered(a: WriteThreadAnswer): void {
    const w = this.waiting.get(a.id);
    // An answer to nothing asked: the two sides disagree, and nothing after can be trusted.
    if (w === undefined) {
      this.fail(new Error(`checkpoint write thread answered request ${a.id}, which is not out`));
      void this.worker.terminate();
      return;
    }
    this.waiting.delete(a.id);
    if (this.waiting.size === 0) this.worker.unref();
    if (a.error === undefined) w.resolve();
    else w.reject(new Error(a.error));
  }

  private fail(err: Error): void {
    if (this.failed === null) this.failed = err;
    for (const w of this.waiting.values()) w.reject(this.failed);
    this.waiting.clear();
    if (shared === this) shared = null;
  }
}

let shared: WriteThread | null = null;

/** Let the write thread close its handle on dir's environment, if it runs (the loop closes its own after). */
export function releaseFromWriteThread(dir: string): Promise<void> {
  return shared === null ? Promise.resolve() : shared.release(dir);
}

/** The process's write thread (started on first use, or again after one failed). */
export function writeThread(): WriteThread {
  if (shared === null || shared.failed !== null) shared = new WriteThread();
  return shared;
}
