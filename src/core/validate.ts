// Validation at the edge: turns untrusted JSON into typed requests, or a
// CkvError with a stable code. Nothing past this point re-checks shapes.
// Values are Unicode text: a payload that is not UTF-8, or a string with a lone
// surrogate (which JSON's \uD800 escapes can make), is refused, not mangled.

/// <reference lib="es2024.string" />

import { ErrorCode, CkvError } from './errors.js';
import {
  BATCH_OPS_MAX,
  HISTORY_LIMIT_DEFAULT,
  HISTORY_LIMIT_MAX,
  KEY_BYTES_MAX,
  LIST_LIMIT_DEFAULT,
  LIST_LIMIT_MAX,
  MGET_KEYS_MAX,
  REPLAY_EVENTS_MAX,
  REQUEST_BYTES_MAX,
  REQUEST_TIMEOUT_MS_DEFAULT,
  REQUEST_TIMEOUT_MS_MAX,
  RID_BYTES_MAX,
  VALUE_BYTES_MAX, TTL_MS_MAX, TTL_MS_MIN, LEASE_KEY_PREFIX } from './limits.js';
import type { Consistency, Request, WriteOp, ClientWriteOp } from './wire.js';
import { isBase64 } from './records.js';

const KEY_CHARS = /^[-/_=.a-zA-Z0-9]+$/;
const PREFIX_CHARS = /^[-/_=.a-zA-Z0-9]*$/;
const RID_CHARS = /^[-_.:a-zA-Z0-9]+$/;
/** Throws on bytes that are not UTF-8 (the default decoder silently puts U+FFFD in their place). */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function bad(message: string): never {
  throw new CkvError(ErrorCode.BAD_REQUEST, message);
}

/** Why a key is invalid, or null if it is valid. Keys are NATS subject tokens joined by dots. */
export function keyProblem(key: unknown): string | null {
  if (typeof key !== 'string') return 'key must be a string';
  if (key.length === 0) return 'key must not be empty';
  if (key.length > KEY_BYTES_MAX) return `key is longer than KEY_BYTES_MAX (${KEY_BYTES_MAX} bytes)`;
  if (!KEY_CHARS.test(key)) return 'key may contain only letters, digits and - / _ = .';
  if (key.startsWith('.') || key.endsWith('.') || key.includes('..')) {
    return 'key must not start or end with a dot, nor contain two dots in a row';
  }
  return null;
}

function checkKey(key: unknown, what = 'key'): string {
  const p = keyProblem(key);
  if (p !== null) {
    if (typeof key === 'string' && key.length > KEY_BYTES_MAX) throw new CkvError(ErrorCode.TOO_LARGE, p);
    bad(what === 'key' ? p : `${what}: ${p}`);
  }
  return key as string;
}

function checkPrefix(prefix: unknown): string {
  if (prefix === undefined) return '';
  if (typeof prefix !== 'string') bad('prefix must be a string');
  if (prefix.length > KEY_BYTES_MAX) throw new CkvError(ErrorCode.TOO_LARGE, 'prefix is longer than KEY_BYTES_MAX');
  if (!PREFIX_CHARS.test(prefix)) bad('prefix may contain only letters, digits and - / _ = .');
  if (prefix.startsWith('.') || prefix.includes('..')) bad('prefix must not start with a dot nor contain two dots in a row');
  return prefix;
}

function checkValue(value: unknown, what = 'value', b64 = false): string {
  if (typeof value !== 'string') bad(`${what} must be a string`);
  if (b64 && !isBase64(value)) bad(`${what} must be standard base64 with padding (b64 is true)`);
  // Keys, prefixes and rids are ASCII by their patterns; values are the free-form strings.
  if (!value.isWellFormed()) bad(`${what} is not valid Unicode text: it has a lone surrogate (half of a UTF-16 pair, as from a \\uD800 escape)`);
  // Cheap bound first: UTF-8 takes at most 3 bytes per UTF-16 unit.
  if (value.length * 3 > VALUE_BYTES_MAX && Buffer.byteLength(value, 'utf8') > VALUE_BYTES_MAX) {
    throw new CkvError(ErrorCode.TOO_LARGE, `${what} is larger than VALUE_BYTES_MAX (${VALUE_BYTES_MAX} bytes)`);
  }
  return value;
}

function checkNullableValue(value: unknown, what: string, b64 = false): string | null {
  if (value === null) return null;
  return checkValue(value, what, b64);
}

/** A lease id, when given: a positive integer (the grant's index). */
function checkLease(lease: unknown): number | undefined {
  if (lease === undefined) return undefined;
  if (typeof lease !== 'number' || !Number.isSafeInteger(lease) || lease < 1) bad('lease must be a lease id (the index its grant returned)');
  return lease;
}

/** A write's lease: a key with one has no ttl of its own (it goes when the lease does). */
function leaseField(o: Record<string, unknown>): { lease?: number } {
  const lease = checkLease(o.lease);
  if (lease === undefined) return {};
  if (o.ttl !== undefined) bad('a key takes a lease or a ttl, not both (the lease has the ttl)');
  return { lease };
}

/** b64: absent, or true (the values are base64 of bytes). */
function checkB64(b64: unknown): true | undefined {
  if (b64 === undefined || b64 === false) return undefined;
  if (b64 !== true) bad('b64 must be true (the value is base64 of bytes) or absent');
  return true;
}

/** A time to live in ms, when given (a delete has none). */
function checkTtl(ttl: unknown, deletes: boolean): { ttl?: number } {
  if (ttl === undefined) return {};
  if (deletes) bad('a delete takes no ttl');
  if (typeof ttl !== 'number' || !Number.isSafeInteger(ttl) || ttl < TTL_MS_MIN || ttl > TTL_MS_MAX) bad(`ttl must be ${TTL_MS_MIN}..${TTL_MS_MAX} ms`);
  return { ttl };
}

function checkNat(n: unknown, what: string): number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) bad(`${what} must be a non-negative integer`);
  return n;
}

function checkConsistency(c: unknown): Consistency | undefined {
  if (c === undefined || c === 'causal' || c === 'strong') return c;
  bad('consistency must be "causal" or "strong"');
}

const COMMON_FIELDS = ['op', 'after', 'timeout'];

function checkFields(o: Record<string, unknown>, allowed: string[]): void {
  for (const k of Object.keys(o)) {
    if (!COMMON_FIELDS.includes(k) && !allowed.includes(k)) bad(`unknown field "${k}" for op "${String(o.op)}"`);
  }
}

function checkWriteOp(raw: unknown, where: string): ClientWriteOp {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad(`${where} must be an object`);
  const o = raw as Record<string, unknown>;
  // A lease's record changes only by the lease ops (a put there would forge or extend one).
  if (typeof o.key === 'string' && o.key.startsWith(LEASE_KEY_PREFIX)) bad(`keys under ${LEASE_KEY_PREFIX} are leases: grant, keepalive and revoke change them`);
  switch (o.op) {
    case 'grant':
      checkFields(o, ['ttl', 'rid']);
      if (o.ttl === undefined) bad('grant needs "ttl" (ms)');
      return { op: 'grant', ...(checkTtl(o.ttl, false) as { ttl: number }) };
    case 'keepalive':
    case 'revoke':
      checkFields(o, ['lease', 'rid']);
      return { op: o.op, lease: checkLease(o.lease)! };
    case 'put': {
      checkFields(o, ['key', 'value', 'ttl', 'b64', 'lease', 'rid']);
      const b64 = checkB64(o.b64);
      return { op: 'put', key: checkKey(o.key), value: checkValue(o.value, 'value', b64), ...checkTtl(o.ttl, false), ...(b64 ? { b64 } : {}), ...leaseField(o) };
    }
    case 'del':
      checkFields(o, ['key', 'rid']);
      return { op: 'del', key: checkKey(o.key) };
    case 'delprefix':
      checkFields(o, ['prefix', 'rid']);
      // '' deletes every key: it must be said, not left out.
      if (typeof o.prefix !== 'string') bad('delprefix needs "prefix", a string ("" for every key)');
      return { op: 'delprefix', prefix: checkPrefix(o.prefix) };
    case 'create':
      // Stored as what it is: a cas that wants the key absent (revision 0).
      checkFields(o, ['key', 'value', 'ttl', 'b64', 'lease', 'rid']);
      const b64 = checkB64(o.b64);
      return { op: 'cas', key: checkKey(o.key), expectRev: 0, value: checkValue(o.value, 'value', b64), ...checkTtl(o.ttl, false), ...(b64 ? { b64 } : {}), ...leaseField(o) };
    case 'cas': {
      checkFields(o, ['key', 'expect', 'expectRev', 'value', 'ttl', 'b64', 'lease', 'rid']);
      if (('expect' in o) === ('expectRev' in o)) bad('cas needs exactly one of "expect" (a value, or null for "must be absent") and "expectRev" (a revision, 0 for "must be absent")');
      if (!('value' in o)) bad('cas needs "value" (a string, or null to delete)');
      const key = checkKey(o.key);
      // b64: the new value, and an expected value, are base64 of bytes.
      const b64 = checkB64(o.b64);
      const value = checkNullableValue(o.value, 'value', b64);
      if (value === null && o.lease !== undefined) bad('a delete takes no lease');
      const flag = { ...(b64 ? { b64 } : {}), ...leaseField(o) };
      const ttl = checkTtl(o.ttl, value === null);
      if ('expectRev' in o) return { op: 'cas', key, expectRev: checkNat(o.expectRev, 'expectRev'), value, ...ttl, ...flag };
      return { op: 'cas', key, expect: checkNullableValue(o.expect, 'expect', b64), value, ...ttl, ...flag };
    }
    default:
      bad(`${where}: unknown write op ${JSON.stringify(o.op)}`);
  }
}

/** Parse and validate a request payload. Throws CkvError (BAD_REQUEST, TOO_LARGE). */
export function parseRequest(data: Uint8Array | string): Request {
  const size = typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength;
  if (size > REQUEST_BYTES_MAX) throw new CkvError(ErrorCode.TOO_LARGE, `request is larger than ${REQUEST_BYTES_MAX} bytes`);
  let text: string;
  try {
    text = typeof data === 'string' ? data : UTF8.decode(data);
  } catch {
    bad('request is not valid UTF-8');
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    bad('request is not valid JSON');
  }
  return validateRequest(raw);
}

export function validateRequest(raw: unknown): Request {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('request must be a JSON object');
  const o = raw as Record<string, unknown>;
  if (typeof o.op !== 'string') bad('request needs "op"');
  const after = o.after === undefined ? undefined : checkNat(o.after, 'after');
  let timeout: number | undefined;
  if (o.timeout !== undefined) {
    timeout = checkNat(o.timeout, 'timeout');
    if (timeout > REQUEST_TIMEOUT_MS_MAX) bad(`timeout must be at most ${REQUEST_TIMEOUT_MS_MAX} ms`);
  }
  const common = { ...(after !== undefined ? { after } : {}), ...(timeout !== undefined ? { timeout } : {}) };
  const rid = (): { rid?: string } => {
    if (o.rid === undefined) return {};
    if (typeof o.rid !== 'string' || o.rid.length === 0 || o.rid.length > RID_BYTES_MAX || !RID_CHARS.test(o.rid)) {
      bad(`rid must be 1..${RID_BYTES_MAX} characters of [-_.:a-zA-Z0-9]`);
    }
    return { rid: o.rid };
  };
  switch (o.op) {
    case 'get': {
      checkFields(o, ['key', 'consistency', 'rev']);
      const consistency = checkConsistency(o.consistency);
      let rev: { rev?: number } = {};
      if (o.rev !== undefined) {
        const n = checkNat(o.rev, 'rev');
        if (n < 1) bad('rev must be a positive integer (a log index)');
        if (consistency === 'strong') bad('a read as of a revision reads the past: it takes no consistency "strong"');
        rev = { rev: n };
      }
      return { op: 'get', key: checkKey(o.key), ...(consistency ? { consistency } : {}), ...rev, ...common };
    }
    case 'mget': {
      checkFields(o, ['keys', 'consistency']);
      if (!Array.isArray(o.keys) || o.keys.length === 0) bad('mget needs "keys", a non-empty array');
      if (o.keys.length > MGET_KEYS_MAX) throw new CkvError(ErrorCode.TOO_LARGE, `mget takes at most MGET_KEYS_MAX (${MGET_KEYS_MAX}) keys`);
      const keys = o.keys.map((k) => checkKey(k));
      const consistency = checkConsistency(o.consistency);
      return { op: 'mget', keys, ...(consistency ? { consistency } : {}), ...common };
    }
    case 'list': {
      checkFields(o, ['prefix', 'start', 'limit', 'consistency']);
      const prefix = checkPrefix(o.prefix);
      const start = o.start === undefined || o.start === null ? undefined : checkKey(o.start, 'start');
      const limit = o.limit === undefined ? LIST_LIMIT_DEFAULT : checkNat(o.limit, 'limit');
      if (limit < 1 || limit > LIST_LIMIT_MAX) bad(`limit must be 1..${LIST_LIMIT_MAX}`);
      const consistency = checkConsistency(o.consistency);
      return { op: 'list', prefix, ...(start ? { start } : {}), limit, ...(consistency ? { consistency } : {}), ...common };
    }
    case 'replay': {
      checkFields(o, ['from', 'limit', 'key', 'prefix']);
      const from = checkNat(o.from, 'from');
      const limit = o.limit === undefined ? REPLAY_EVENTS_MAX : checkNat(o.limit, 'limit');
      if (limit < 1 || limit > REPLAY_EVENTS_MAX) bad(`limit must be 1..${REPLAY_EVENTS_MAX}`);
      if (o.key !== undefined && o.prefix !== undefined) bad('replay takes a key or a prefix, not both');
      const only = o.key !== undefined ? { key: checkKey(o.key) } : o.prefix !== undefined ? { prefix: checkPrefix(o.prefix) } : {};
      return { op: 'replay', from, limit, ...only, ...common };
    }
    case 'history': {
      checkFields(o, ['key', 'limit']);
      const limit = o.limit === undefined ? HISTORY_LIMIT_DEFAULT : checkNat(o.limit, 'limit');
      if (limit < 1 || limit > HISTORY_LIMIT_MAX) bad(`limit must be 1..${HISTORY_LIMIT_MAX}`);
      return { op: 'history', key: checkKey(o.key), limit, ...common };
    }
    case 'put':
    case 'del':
    case 'delprefix':
    case 'create':
    case 'cas':
    case 'grant':
    case 'keepalive':
    case 'revoke':
      return { ...checkWriteOp(o, 'request'), ...rid(), ...common };
    case 'batch': {
      checkFields(o, ['ops', 'rid']);
      if (!Array.isArray(o.ops) || o.ops.length === 0) bad('batch needs "ops", a non-empty array');
      if (o.ops.length > BATCH_OPS_MAX) throw new CkvError(ErrorCode.TOO_LARGE, `batch takes at most BATCH_OPS_MAX (${BATCH_OPS_MAX}) ops`);
      const ops = o.ops.map((op, i) => {
        const w = checkWriteOp(op, `ops[${i}]`);
        if ((op as Record<string, unknown>).rid !== undefined) bad(`ops[${i}]: rid belongs on the batch, not on its ops`);
        if (w.op === 'grant') bad(`ops[${i}]: a grant goes alone (the lease's id is its entry's index)`);
        return w;
      });
      return { op: 'batch', ops, ...rid(), ...common };
    }
    case 'status':
      checkFields(o, []);
      return { op: 'status' };
    case 'snapshot': {
      checkFields(o, ['server', 'phase', 'cursor']);
      const server = checkNat(o.server, 'server');
      if (server < 1) bad('server ids are positive integers');
      if (o.phase === undefined) {
        if (o.cursor !== undefined) bad('a snapshot cursor belongs to a phase ("kv" or "rids")');
        return { op: 'snapshot', server, ...common };
      }
      if (o.phase !== 'kv' && o.phase !== 'rids') bad('phase must be "kv" or "rids"');
      if (o.cursor === undefined) return { op: 'snapshot', server, phase: o.phase, ...common };
      // kv pages go on after a key; rids pages at a position in the table.
      const cursor = o.phase === 'kv' ? checkKey(o.cursor, 'cursor') : typeof o.cursor === 'string' && /^[0-9]{1,15}$/.test(o.cursor) ? o.cursor : bad('a rids cursor is a decimal position');
      return { op: 'snapshot', server, phase: o.phase, cursor, ...common };
    }
    case 'config': {
      checkFields(o, ['add', 'remove']);
      const add = o.add === undefined ? undefined : checkNat(o.add, 'add');
      const remove = o.remove === undefined ? undefined : checkNat(o.remove, 'remove');
      if ((add === undefined) === (remove === undefined)) bad('config takes exactly one of "add" or "remove" (a server id)');
      if ((add ?? remove)! < 1) bad('server ids are positive integers');
      return { op: 'config', ...(add !== undefined ? { add } : { remove: remove! }), ...common };
    }
    default:
      bad(`unknown op ${JSON.stringify(o.op)}`);
  }
}

export function isWrite(r: Request): r is Extract<Request, { op: 'put' | 'del' | 'delprefix' | 'cas' | 'create' | 'grant' | 'keepalive' | 'revoke' | 'batch' }> {
  return r.op === 'put' || r.op === 'del' || r.op === 'delprefix' || r.op === 'cas' || r.op === 'create' || r.op === 'grant' || r.op === 'keepalive' || r.op === 'revoke' || r.op === 'batch';
}

export function requestTimeoutMs(r: Request): number {
  return 'timeout' in r && r.timeout !== undefined ? r.timeout : REQUEST_TIMEOUT_MS_DEFAULT;
}
