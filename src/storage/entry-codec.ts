// Log entry <-> bytes. The encoding is UTF-8 JSON with a fixed field order, so
// the same entry always encodes to the same bytes. Decoding runs on bytes read
// from disk (or from a peer), so it checks the shape strictly and throws on
// anything that is not exactly an Entry; encoding checks the same rules, so we
// never write what we could not read back.

import { entryProblem } from '../core/entry-shape.js';
import { ENTRY_BYTES_MAX } from '../core/limits.js';
import type { Entry, WriteOp } from '../core/wire.js';

/** Thrown when bytes are not a valid encoded entry. */
export class EntryDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EntryDecodeError';
  }
}

function opJson(op: WriteOp): string {
  switch (op.op) {
    case 'put':
      return `{"op":"put","key":${JSON.stringify(op.key)},"value":${JSON.stringify(op.value)}${ttlJson(op.ttl)}${extraJson(op)}}`;
    case 'grant':
      return `{"op":"grant","ttl":${op.ttl}}`;
    case 'keepalive':
    case 'revoke':
      return `{"op":"${op.op}","lease":${op.lease}}`;
    case 'expire':
      return `{"op":"expire","key":${JSON.stringify(op.key)},"rev":${op.rev}}`;
    case 'del':
      return `{"op":"del","key":${JSON.stringify(op.key)}}`;
    case 'delprefix':
      return `{"op":"delprefix","prefix":${JSON.stringify(op.prefix)}}`;
    case 'cas':
      return 'expectRev' in op
        ? `{"op":"cas","key":${JSON.stringify(op.key)},"expectRev":${op.expectRev},"value":${JSON.stringify(op.value)}${ttlJson(op.ttl)}${extraJson(op)}}`
        : `{"op":"cas","key":${JSON.stringify(op.key)},"expect":${JSON.stringify(op.expect)},"value":${JSON.stringify(op.value)}${ttlJson(op.ttl)}${extraJson(op)}}`;
  }
}

function ttlJson(ttl: number | undefined): string {
  return ttl === undefined ? '' : `,"ttl":${ttl}`;
}

/** A write's optional fields after its ttl: bytes, a lease. */
function extraJson(op: { b64?: true; lease?: number }): string {
  return `${op.b64 === true ? ',"b64":true' : ''}${op.lease !== undefined ? `,"lease":${op.lease}` : ''}`;
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
      return e.cluster === undefined ? head + '}' : `${head},"cluster":"${e.cluster}"}`;
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
