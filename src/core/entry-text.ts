// The canonical text of a log entry (and of a change event): UTF-8 JSON with a fixed
// field order, so the same entry always encodes to the same bytes. An entry's text is
// computed once and kept beside it (entries are never changed once made) until it is
// logged and sent: the log writes it, the replication message carries it, and its size
// is counted from it (the size is kept for good), without encoding the entry again for
// each. Pure: no I/O.

import { entryProblem } from './entry-shape.js';
import { jsonString } from './json-string.js';
import type { ChangeEvent, Entry, WriteOp } from './wire.js';

function opJson(op: WriteOp): string {
  switch (op.op) {
    case 'put':
      return `{"op":"put","key":${jsonString(op.key)},"value":${jsonString(op.value)}${ttlJson(op.ttl)}${extraJson(op)}}`;
    case 'grant':
      return `{"op":"grant","ttl":${op.ttl}}`;
    case 'keepalive':
    case 'revoke':
      return `{"op":"${op.op}","lease":${op.lease}}`;
    case 'expire':
      return `{"op":"expire","key":${jsonString(op.key)},"rev":${op.rev}}`;
    case 'del':
      return `{"op":"del","key":${jsonString(op.key)}}`;
    case 'delprefix':
      return `{"op":"delprefix","prefix":${jsonString(op.prefix)}}`;
    case 'cas':
      return 'expectRev' in op
        ? `{"op":"cas","key":${jsonString(op.key)},"expectRev":${op.expectRev},"value":${jsonString(op.value)}${ttlJson(op.ttl)}${extraJson(op)}}`
        : `{"op":"cas","key":${jsonString(op.key)},"expect":${jsonString(op.expect)},"value":${jsonString(op.value)}${ttlJson(op.ttl)}${extraJson(op)}}`;
  }
}

function ttlJson(ttl: number | undefined): string {
  return ttl === undefined ? '' : `,"ttl":${ttl}`;
}

/** A write's optional fields after its ttl: bytes, a lease. */
function extraJson(op: { b64?: true; lease?: number }): string {
  return `${op.b64 === true ? ',"b64":true' : ''}${op.lease !== undefined ? `,"lease":${op.lease}` : ''}`;
}

/** The canonical JSON text, computed (checked first: never write what cannot be read back). */
function encode(e: Entry): string {
  const p = entryProblem(e);
  if (p !== null) throw new Error(`encodeEntry: invalid entry at index ${String(e?.index)}: ${p}`);
  const head = `{"index":${e.index},"epoch":${e.epoch},"ts":${e.ts},"kind":"${e.kind}"`;
  switch (e.kind) {
    case 'noop':
      return e.cluster === undefined ? head + '}' : `${head},"cluster":"${e.cluster}"}`;
    case 'config':
      return `${head},"voters":[${e.voters.join(',')}]${e.keepOut !== undefined ? `,"keepOut":[${e.keepOut.join(',')}]` : ''}}`;
    case 'write': {
      const rid = e.rid === undefined ? '' : `,"rid":${jsonString(e.rid)}`;
      let ops = '';
      for (let i = 0; i < e.ops.length; i++) ops += (i === 0 ? '' : ',') + opJson(e.ops[i]!);
      return `${head}${rid},"ops":[${ops}]}`;
    }
  }
}

/** Each entry's text (while kept: see releaseEntryText) and its size in bytes (for as long as the entry lives). */
const encoded = new WeakMap<Entry, { text: string | null; bytes: number }>();

function encoded1(e: Entry): { text: string; bytes: number } {
  const x = encoded.get(e);
  if (x !== undefined && x.text !== null) return x as { text: string; bytes: number };
  const text = encode(e);
  const y = { text, bytes: x?.bytes ?? Buffer.byteLength(text, 'utf8') };
  encoded.set(e, y);
  return y;
}

/**
 * The canonical JSON text of an entry (fixed field order, no extra fields).
 * Throws if the entry is not valid: a bug in the caller, never input.
 */
export function encodeEntryJson(e: Entry): string {
  return encoded1(e).text;
}

/** The entry's encoded size in bytes (UTF-8 of its canonical JSON, as it is logged and sent). */
export function entryBytes(e: Entry): number {
  return encoded.get(e)?.bytes ?? encoded1(e).bytes;
}

/**
 * The entry is logged and sent: keep its size, let its text go (the log kept in memory would
 * otherwise hold every entry twice). A later use (a resend to a follower behind) encodes it again.
 */
export function releaseEntryText(e: Entry): void {
  const x = encoded.get(e);
  if (x !== undefined) x.text = null;
}

/** A change event's JSON, fields in a fixed order: as the change feed publishes it and the checkpoint's history keeps it. */
export function changeEventJson(ev: ChangeEvent): string {
  const value = ev.op === 'put' ? `,"value":${jsonString(ev.value!)}${ev.b64 ? ',"b64":true' : ''}${ev.lease !== undefined ? `,"lease":${ev.lease}` : ''}` : '';
  return `{"index":${ev.index},"ts":${ev.ts},"op":"${ev.op}","key":${jsonString(ev.key)}${value},"prev":${ev.prev}${ev.initial ? ',"initial":true' : ''}}`;
}
