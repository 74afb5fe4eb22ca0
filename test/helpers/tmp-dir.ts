// A temporary directory for one test, removed when the test ends.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** The parts of a tap test the storage tests' helpers use. */
export interface TT {
  teardown(fn: () => unknown): void;
  same(found: unknown, wanted: unknown): boolean;
}

export function tmpDir(tt: TT): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'ckv-storage-'));
  tt.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}
