// The shape of a log entry, checked wherever entries come from outside the
// process (the log on disk, a peer's replication message): anything that is
// not exactly an Entry is named and refused before the core sees it.

import { BATCH_OPS_MAX, CLUSTER_ID_PATTERN, KEEP_OUT_MAX, KEY_BYTES_MAX, RID_BYTES_MAX, TTL_MS_MAX, TTL_MS_MIN } from './limits.js';
import type { Entry, WriteOp } from './wire.js';
import { isBase64 } from './records.js';

const ENTRY_FIELDS: Record<Entry['kind'], readonly string[]> = {
  noop: ['index', 'epoch', 'ts', 'kind', 'cluster'],
  write: ['index', 'epoch', 'ts', 'kind', 'rid', 'ops'],
  config: ['index', 'epoch', 'ts', 'kind', 'voters', 'keepOut'],
};

const OP_FIELDS: Record<WriteOp['op'], readonly string[]> = {
  put: ['op', 'key', 'value', 'ttl', 'b64', 'lease'],
  del: ['op', 'key'],
  delprefix: ['op', 'prefix'],
  cas: ['op', 'key', 'expect', 'expectRev', 'value', 'ttl', 'b64', 'lease'],
  expire: ['op', 'key', 'rev'],
  grant: ['op', 'ttl'],
  keepalive: ['op', 'lease'],
  revoke: ['op', 'lease'],
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
  if (typeof op !== 'string' || !Object.hasOwn(OP_FIELDS, op)) return `ops[${i}].op is ${JSON.stringify(op)}`;
  const extra = unknownField(raw, OP_FIELDS[op as WriteOp['op']]);
  if (extra !== null) return `ops[${i}] has unknown field "${extra}"`;
  if (op === 'grant') return isNat(raw.ttl) && raw.ttl >= TTL_MS_MIN && raw.ttl <= TTL_MS_MAX ? null : `ops[${i}].ttl is not ${TTL_MS_MIN}..${TTL_MS_MAX} ms`;
  if (op === 'keepalive' || op === 'revoke') return isNat(raw.lease) && raw.lease >= 1 ? null : `ops[${i}].lease is not a positive integer`;
  if (raw.lease !== undefined) {
    if (!isNat(raw.lease) || raw.lease < 1) return `ops[${i}].lease is not a positive integer`;
    if (raw.ttl !== undefined) return `ops[${i}] has both a lease and a ttl`;
  }
  if (op === 'delprefix') {
    if (typeof raw.prefix !== 'string' || raw.prefix.length > KEY_BYTES_MAX) return `ops[${i}].prefix is not a string of at most KEY_BYTES_MAX (${KEY_BYTES_MAX})`;
    return null;
  }
  const kp = keyProblem(raw.key);
  if (kp !== null) return `ops[${i}]: ${kp}`;
  if (op === 'put' && typeof raw.value !== 'string') return `ops[${i}].value is not a string`;
  if (raw.b64 !== undefined) {
    if (raw.b64 !== true) return `ops[${i}].b64 is not true`;
    for (const f of ['value', 'expect'] as const) {
      const v = raw[f];
      if (typeof v === 'string' && !isBase64(v)) return `ops[${i}].${f} is not base64`;
    }
  }
  if (op === 'expire' && (!isNat(raw.rev) || raw.rev < 1)) return `ops[${i}].rev is not a positive integer`;
  if (raw.ttl !== undefined) {
    if (!isNat(raw.ttl) || raw.ttl < TTL_MS_MIN || raw.ttl > TTL_MS_MAX) return `ops[${i}].ttl is not ${TTL_MS_MIN}..${TTL_MS_MAX} ms`;
    if (raw.value === null) return `ops[${i}] deletes: it has no ttl`;
  }
  if (op === 'cas') {
    // Exactly one of expect (by value) and expectRev (by revision).
    if (('expect' in raw) === ('expectRev' in raw)) return `ops[${i}] (cas) has not exactly one of expect and expectRev`;
    if ('expect' in raw && raw.expect !== null && typeof raw.expect !== 'string') return `ops[${i}].expect is not a string or null`;
    if ('expectRev' in raw && !isNat(raw.expectRev)) return `ops[${i}].expectRev is not a non-negative integer`;
    if (!('value' in raw) || (raw.value !== null && typeof raw.value !== 'string')) return `ops[${i}].value is not a string or null`;
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
  if (kind === 'noop' && x.cluster !== undefined) {
    if (typeof x.cluster !== 'string' || !CLUSTER_ID_PATTERN.test(x.cluster)) return 'cluster is not a cluster identity';
    if (x.index !== 1) return 'only the first entry names the cluster';
  }
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
    // A lease's id is its grant's index: one grant per entry, alone.
    if (ops.length > 1 && ops.some((o: { op?: unknown }) => o.op === 'grant')) return 'a grant is not alone in its entry';
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
