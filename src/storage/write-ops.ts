// The puts and removes of one checkpoint write, packed into one buffer that is handed to the
// write thread (transferred, not copied or cloned op by op). Per op:
//   [db u8][kind u8][key bytes u16 LE][value bytes u32 LE] key value
// The databases are numbered by their place in the list both sides open. Both ends are
// here so that the format has one definition; the reader checks everything before any op
// is carried out (a batch must not stop halfway).

export const OP_PUT = 0;
export const OP_REMOVE = 1;
const OP_HEADER_BYTES = 8;
/** LMDB's own bound on a key (lmdb-js builds it with a larger one; ours are ≤ 512 B). */
const OP_KEY_BYTES_MAX = 0xffff;
/** Ops packed between two turns of the event loop. */
const PACK_SLICE_OPS = 2048;

/** Puts (value) and removes (null) of one database, in order. */
export type OpList = ReadonlyArray<readonly [Uint8Array, Uint8Array | null]>;

/**
 * A write's ops, taken as the lists the caller already has (no copy of each op), then packed
 * in one pass with the loop let run between slices. Lists are carried out in the order added.
 */
export class WriteOps {
  private readonly lists: Array<{ db: number; ops: OpList }> = [];

  add(db: number, ops: OpList): void {
    // Asserted where the caller is: the reader would only refuse the whole write later.
    if (!Number.isInteger(db) || db < 0 || db > 0xff) throw new Error(`write ops: db ${db} is not 0..255`);
    this.lists.push({ db, ops });
  }

  /** The packed ops in a buffer of their own (to be transferred), sliced so that the loop runs between. */
  async pack(yieldToLoop: () => Promise<void>): Promise<ArrayBuffer> {
    let bytes = 0;
    let counted = 0;
    for (const { ops } of this.lists) {
      for (let i = 0; i < ops.length; i++) {
        if (++counted % (4 * PACK_SLICE_OPS) === 0) await yieldToLoop();
        const [key, value] = ops[i]!;
        if (key.length === 0 || key.length > OP_KEY_BYTES_MAX) throw new Error(`write ops: a key of ${key.length} bytes`);
        bytes += OP_HEADER_BYTES + key.length + (value?.length ?? 0);
      }
    }
    // (Not zero-filled: every byte is written below, which the length check at the end asserts.)
    const out = Buffer.allocUnsafeSlow(bytes);
    let o = 0;
    let done = 0;
    for (const { db, ops } of this.lists) {
      for (const [key, value] of ops) {
        if (++done % PACK_SLICE_OPS === 0) await yieldToLoop();
        out[o] = db;
        out[o + 1] = value === null ? OP_REMOVE : OP_PUT;
        out.writeUInt16LE(key.length, o + 2);
        out.writeUInt32LE(value === null ? 0 : value.length, o + 4);
        o += OP_HEADER_BYTES;
        out.set(key, o);
        o += key.length;
        if (value !== null) {
          out.set(value, o);
          o += value.length;
        }
      }
    }
    if (o !== bytes) throw new Error(`write ops: packed ${o} bytes of ${bytes}`);
    // allocUnsafeSlow gives a buffer of its own (not a slice of the pool): it can be transferred.
    if (out.byteOffset !== 0 || out.buffer.byteLength !== bytes) throw new Error('write ops: the packed buffer is not its own');
    return out.buffer as ArrayBuffer;
  }
}

export interface WriteOp {
  db: number;
  key: Uint8Array;
  /** null: remove. */
  value: Uint8Array | null;
}

/** The ops of a packed buffer (views into it), or why it is not one; nothing is carried out here. */
export function unpackOps(ab: ArrayBuffer, dbCount: number): WriteOp[] | string {
  const buf = new Uint8Array(ab);
  const view = new DataView(ab);
  const ops: WriteOp[] = [];
  let o = 0;
  while (o < buf.length) {
    if (buf.length - o < OP_HEADER_BYTES) return `op at byte ${o}: header cut short`;
    const db = buf[o]!;
    const kind = buf[o + 1]!;
    const keyBytes = view.getUint16(o + 2, true);
    const valueBytes = view.getUint32(o + 4, true);
    if (db >= dbCount) return `op at byte ${o}: db ${db} of ${dbCount}`;
    if (kind !== OP_PUT && kind !== OP_REMOVE) return `op at byte ${o}: kind ${kind}`;
    if (keyBytes === 0) return `op at byte ${o}: empty key`;
    if (kind === OP_REMOVE && valueBytes !== 0) return `op at byte ${o}: a remove with a value`;
    const start = o + OP_HEADER_BYTES;
    if (buf.length - start < keyBytes + valueBytes) return `op at byte ${o}: cut short`;
    ops.push({ db, key: buf.subarray(start, start + keyBytes), value: kind === OP_PUT ? buf.subarray(start + keyBytes, start + keyBytes + valueBytes) : null });
    o = start + keyBytes + valueBytes;
  }
  return ops;
}
