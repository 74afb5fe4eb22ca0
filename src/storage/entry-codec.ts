// Log entry <-> bytes. The encoding is the entry's canonical JSON (core/entry-text.ts:
// a fixed field order, so the same entry always encodes to the same bytes), in UTF-8.
// Decoding runs on bytes read from disk (or from a peer), so it checks the shape
// strictly and throws on anything that is not exactly an Entry; encoding checks the
// same rules, so we never write what we could not read back.

import { entryProblem } from '../core/entry-shape.js';
import { encodeEntryJson } from '../core/entry-text.js';
import { ENTRY_BYTES_MAX } from '../core/limits.js';
import type { Entry } from '../core/wire.js';

/** Thrown when bytes are not a valid encoded entry. */
export class EntryDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EntryDecodeError';
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
