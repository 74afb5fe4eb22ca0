// The durable promise of a voter, `<data>/state`: one JSON object
// {"promised": N} (with "catchUp": true while it is a catch-up member). Replaced atomically: write a temporary file, fsync it,
// rename it over the old one, fsync the directory, and only then resolve, so
// a crash leaves either the old promise or the new one, never a torn file.

import fs from 'node:fs';
import path from 'node:path';
import type { PromiseState, StateFile } from './ports.js';

export const STATE_FILE_NAME = 'state';

/** Why `x` is not a valid PromiseState, or null if it is one. */
function stateProblem(x: unknown): string | null {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) return 'not a JSON object';
  const o = x as Record<string, unknown>;
  for (const k in o) if (k !== 'promised' && k !== 'catchUp') return `unknown field "${k}"`;
  const p = o.promised;
  if (typeof p !== 'number' || !Number.isSafeInteger(p) || p < 0) return '"promised" is not a non-negative integer';
  if (o.catchUp !== undefined && typeof o.catchUp !== 'boolean') return '"catchUp" is not a boolean';
  return null;
}

export class FileStateFile implements StateFile {
  readonly file: string;
  private readonly tmp: string;
  /** Writes run one at a time (they share the temporary file) and in call order. */
  private chain: Promise<void> = Promise.resolve();

  /** `file` is the state file's path, `<data>/state` in a server's data directory. */
  constructor(file: string) {
    this.file = file;
    this.tmp = file + '.tmp';
  }

  /** The promise on disk: {promised: 0} if there is no file; throws if it is corrupt. */
  read(): PromiseState {
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { promised: 0 };
      throw err;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new Error(`state file ${this.file} is corrupt: not JSON (${(err as Error).message})`);
    }
    const p = stateProblem(raw);
    if (p !== null) throw new Error(`state file ${this.file} is corrupt: ${p}`);
    return { promised: (raw as PromiseState).promised, ...((raw as PromiseState).catchUp ? { catchUp: true } : {}) };
  }

  write(state: PromiseState): Promise<void> {
    const p = stateProblem(state);
    if (p !== null) return Promise.reject(new Error(`state file write: invalid state: ${p}`));
    // {"promised": N}, and "catchUp": true while set (the file keeps its bytes otherwise).
    const text = JSON.stringify({ promised: state.promised, ...(state.catchUp ? { catchUp: true } : {}) }) + '\n';
    const run = (): Promise<void> => this.writeNow(text);
    const next = this.chain.then(run, run);
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async writeNow(text: string): Promise<void> {
    const dir = path.dirname(this.file);
    await fs.promises.mkdir(dir, { recursive: true });
    const fh = await fs.promises.open(this.tmp, 'w');
    try {
      await fh.writeFile(text, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.promises.rename(this.tmp, this.file);
    const dh = await fs.promises.open(dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }
}

/** The in-memory twin: a write is durable when its promise resolves (here: at once). */
export class MemStateFile implements StateFile {
  private state: PromiseState;
  writes = 0;

  constructor(initial: PromiseState = { promised: 0 }) {
    this.state = { ...initial };
  }

  read(): PromiseState {
    return { ...this.state };
  }

  write(state: PromiseState): Promise<void> {
    const p = stateProblem(state);
    if (p !== null) return Promise.reject(new Error(`state file write: invalid state: ${p}`));
    this.state = { promised: state.promised, ...(state.catchUp ? { catchUp: true } : {}) };
    this.writes++;
    return Promise.resolve();
  }
}
