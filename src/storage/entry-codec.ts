// Log entry <-> bytes. The encoding is UTF-8 JSON with a fixed field order, so
// the same entry always encodes to the same bytes. Decoding runs on bytes read
// from disk (or from a peer), so it checks the shape strictly and throws on
// anything that is not exactly an Entry; encoding checks the same rules, so we
// never write what we could not read back.

import { BATCH_OPS_MAX, ENTRY_BYTES_MAX, KEEP_OUT_MAX, KEY_BYTES_MAX, RID_BYTES_MAX } from '../core/limits.js';
import type { Entry, WriteOp } from '../core/wire.js';

/** Thrown when bytes are not a valid encoded entry. */
export class EntryDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EntryDecodeError';
  }
}

const ENTRY_FIELDS: Record<Entry['kind'], readonly string[]> = {
  noop: ['index', 'epoch', 'ts', 'kind'],
  write: ['index', 'epoch', 'ts', 'kind', 'rid', 'ops'],
  config: ['index', 'epoch', 'ts', 'kind', 'voters', 'keepOut'],
};

const OP_FIELDS: Record<WriteOp['op'], readonly string[]> = {
  put: ['op', 'key', 'value'],
  del: ['op', 'key'],
  cas: ['op', 'key', 'expect', 'value'],
};

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function isNat(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function unknownField(o: Record<string, unknown>, allowed: readonly string[]): string | null {
  for (const k in o) {
    if (!allowed.includes(k)) return k;
  }
  return null;
}

function keyProblem(key: unknown): string | null {
  if (typeof key !== 'string') return 'key is not a string';
  if (key.length === 0) return 'key is empty';
  if (key.length > KEY_BYTES_MAX) return `key is longer than KEY_BYTES_MAX (${KEY_BYTES_MAX})`;
  return null;
}

function opProblem(raw: unknown, i: number): string | null {
  if (!isObject(raw)) return `ops[${i}] is not an object`;
  const op = raw.op;
  if (op !== 'put' && op !== 'del' && op !== 'cas') return `ops[${i}].op is ${JSON.stringify(op)}`;
  const extra = unknownField(raw, OP_FIELDS[op]);
  if (extra !== null) return `ops[${i}] has unknown field "${extra}"`;
  const kp = keyProblem(raw.key);
  if (kp !== null) return `ops[${i}]: ${kp}`;
  if (op === 'put' && typeof raw.value !== 'string') return `ops[${i}].value is not a string`;
  if (op === 'cas') {
    if (raw.expect !== null && typeof raw.expect !== 'string') return `ops[${i}].expect is not a string or null`;
    if (raw.value !== null && typeof raw.value !== 'string') return `ops[${i}].value is not a string or null`;
  }
  return null;
}

/** Why `x` is not a valid Entry, or null if it is one. */
export function entryProblem(x: unknown): string | null {
  if (!isObject(x)) return 'entry is not an object';
  const kind = x.kind;
  if (kind !== 'noop' && kind !== 'write' && kind !== 'config') return `unknown entry kind ${JSON.stringify(kind)}`;
  const extra = unknownField(x, ENTRY_FIELDS[kind]);
  if (extra !== null) return `${kind} entry has unknown field "${extra}"`;
  if (!isNat(x.index) || x.index < 1) return 'index is not a positive integer';
  if (!isNat(x.epoch)) return 'epoch is not a non-negative integer';
  if (!isNat(x.ts)) return 'ts is not a non-negative integer';
  if (kind === 'write') {
    if (x.rid !== undefined) {
      if (typeof x.rid !== 'string' || x.rid.length === 0) return 'rid is not a non-empty string';
      if (x.rid.length > RID_BYTES_MAX) return `rid is longer than RID_BYTES_MAX (${RID_BYTES_MAX})`;
    }
    const ops = x.ops;
    if (!Array.isArray(ops)) return 'ops is not an array';
    if (ops.length > BATCH_OPS_MAX) return `more than BATCH_OPS_MAX (${BATCH_OPS_MAX}) ops`;
    for (let i = 0; i < ops.length; i++) {
      const p = opProblem(ops[i], i);
      if (p !== null) return p;
    }
  } else if (kind === 'config') {
    const voters = x.voters;
    if (!Array.isArray(voters) || voters.length === 0) return 'voters is not a non-empty array';
    for (let i = 0; i < voters.length; i++) {
      const v: unknown = voters[i];
      if (!isNat(v) || v < 1) return `voters[${i}] is not a positive integer`;
      if (voters.indexOf(v) !== i) return `voters[${i}] (${v}) is repeated`;
    }
    if (x.keepOut !== undefined) {
      const keepOut = x.keepOut;
      if (!Array.isArray(keepOut) || keepOut.length === 0 || keepOut.length > KEEP_OUT_MAX) return `keepOut is not an array of 1..${KEEP_OUT_MAX} ids`;
      for (let i = 0; i < keepOut.length; i++) {
        const v: unknown = keepOut[i];
        if (!isNat(v) || v < 1) return `keepOut[${i}] is not a positive integer`;
        if (i > 0 && v <= (keepOut[i - 1] as number)) return 'keepOut is not sorted and distinct';
        if (voters.includes(v)) return `keepOut[${i}] (${v}) is a voter`;
      }
    }
  }
  return null;
}

function opJson(op: WriteOp): string {
  const key = JSON.stringify(op.key);
  switch (op.op) {
    case 'put':
      return `{"op":"put","key":${key},"value":${JSON.stringify(op.value)}}`;
    case 'del':
      return `{"op":"del","key":${key}}`;
    case 'cas':
      return `{"op":"cas","key":${key},"expect":${JSON.stringify(op.expect)},"value":${JSON.stringify(op.value)}}`;
  }
}

/**
 * The canonical JSON text of an entry (fixed field order, no extra fields).
 * Throws if the entry is not valid: a bug in the caller, never input.
 */
export function encodeEntryJson(e: Entry): string {
  const p = entryProblem(e);
  if (p !== null) throw new Error(`encodeEntry: invalid entry at index ${String(e?.index)}: ${p}`);
  const head = `{"index":${e.index},"epoch":${e.epoch},"ts":${e.ts},"kind":"${e.kind}"`;
  switch (e.kind) {
    case 'noop':
      return head + '}';
    case 'config':
      return `${head},"voters":[${e.voters.join(',')}]${e.keepOut !== undefined ? `,"keepOut":[${e.keepOut.join(',')}]` : ''}}`;
    case 'write': {
      const rid = e.rid === undefined ? '' : `,"rid":${JSON.stringify(e.rid)}`;
      let ops = '';
      for (let i = 0; i < e.ops.length; i++) ops += (i === 0 ? '' : ',') + opJson(e.ops[i]!);
      return `${head}${rid},"ops":[${ops}]}`;
    }
  }
}

/** Encode an entry to UTF-8 bytes; throws if invalid or larger than ENTRY_BYTES_MAX. */
export function encodeEntry(e: Entry): Buffer {
  const bytes = Buffer.from(encodeEntryJson(e), 'utf8');
  if (bytes.length > ENTRY_BYTES_MAX) {
    throw new Error(`encodeEntry: entry ${e.index} is ${bytes.length} bytes, more than ENTRY_BYTES_MAX (${ENTRY_BYTES_MAX})`);
  }
  return bytes;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Decode bytes[start, end) into an Entry; throws EntryDecodeError on anything else. */
export function decodeEntry(bytes: Uint8Array, start = 0, end = bytes.length): Entry {
  if (end - start > ENTRY_BYTES_MAX) {
    throw new EntryDecodeError(`entry is ${end - start} bytes, more than ENTRY_BYTES_MAX (${ENTRY_BYTES_MAX})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(utf8.decode(bytes.subarray(start, end)));
  } catch (err) {
    throw new EntryDecodeError(`entry is not UTF-8 JSON: ${(err as Error).message}`);
  }
  const p = entryProblem(raw);
  if (p !== null) throw new EntryDecodeError(`not a valid entry: ${p}`);
  return raw as Entry;
}
