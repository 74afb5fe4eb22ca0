// The replicated state machine: applies committed log entries, in order, to
// an in-memory overlay above the last checkpoint. Pure and synchronous: the
// checkpoint is reached only through the synchronous CheckpointReader port.

import { assert } from './assert.js';
import { LEASE_KEY_PREFIX, LEASE_KEYS_MAX, PREFIX_DELETE_KEYS_MAX, RIDS_RETAINED_MAX } from './limits.js';
import type { ChangeEvent, Entry, KeyValue, WriteOp, WriteResult } from './wire.js';
import { CHECKPOINT_FORMAT, type CheckpointDelta, type CheckpointReader, type Rec, type RidRecord, type TimedRec } from './records.js';

/** Evicted ids at the front of the request id queue before it is cut. */
const RID_QUEUE_COMPACT_MIN = 4096;

/** Keys read per page when a prefix delete gathers its keys. */
const PREFIX_SCAN_PAGE_KEYS = 1024;

/** A value or a tombstone in the overlay (tombstones hide what the checkpoint holds). */
type Slot = { rec: Rec } | { rec: null; rev: number };

export interface Applied {
  /** Set for write entries. */
  result?: WriteResult;
  events: ChangeEvent[];
  /** True when the entry's rid had been applied before: its first result is returned. */
  duplicate: boolean;
}

export class KvState {
  private base: CheckpointReader;
  private overlay = new Map<string, Slot>();
  /** Exactly-once table. */
  private rids = new Map<string, RidRecord>();
  /**
   * Its ids in log order, oldest at ridHead: the eviction queue. (Evicting through the Map's
   * own order costs V8 a scan past every slot deleted before: ~10-80 µs per write once the
   * table is full, on every server, after RIDS_RETAINED_MAX writes.)
   */
  private ridOrder: string[] = [];
  private ridHead = 0;
  private ridsAdded = new Set<string>();
  private ridsDeleted = new Set<string>();
  /** Index and ts of the last applied entry. */
  applied: number;
  appliedTs: number;
  appliedEpoch: number;
  voters: number[];
  keepOut: number[];
  eventPrev: number;
  /** The cluster's identity: from the first entry ('' before it is applied). */
  cluster: string;
  private ridsMax: number;
  /** Keys attached to each lease (and some that were, since: filtered when read), for revoke and expiry without a scan. */
  private leased = new Map<number, Set<string>>();

  constructor(base: CheckpointReader, ridsMax = RIDS_RETAINED_MAX) {
    this.base = base;
    this.ridsMax = ridsMax;
    const m = base.meta();
    this.applied = m.index;
    this.appliedTs = m.ts;
    this.appliedEpoch = m.epoch;
    this.voters = [...m.voters];
    this.keepOut = [...(m.keepOut ?? [])];
    this.eventPrev = m.eventPrev;
    this.cluster = m.cluster ?? '';
    for (const [rid, rec] of base.rids()) {
      this.rids.set(rid, rec);
      this.ridOrder.push(rid);
    }
    for (const [key, r] of base.ttlKeys()) if (r.lease !== undefined) this.attach(key, r.lease);
  }

  private attach(key: string, lease: number): void {
    let s = this.leased.get(lease);
    if (s === undefined) this.leased.set(lease, (s = new Set()));
    s.add(key);
  }


  /** Records the next checkpoint would write: keys and request ids changed since the last one. */
  get dirtyCount(): number {
    return this.overlay.size + this.ridsAdded.size + this.ridsDeleted.size;
  }

  /** Entries applied since the last checkpoint that took effect (memory use). */
  get overlaySize(): number {
    return this.overlay.size;
  }

  get(key: string): Rec | undefined {
    const s = this.overlay.get(key);
    if (s !== undefined) return s.rec ?? undefined;
    return this.base.get(key);
  }

  ridResult(rid: string): RidRecord | undefined {
    return this.rids.get(rid);
  }

  /** Keys with `prefix`, in byte order, after `start`, at most `limit`, merged from overlay and checkpoint. */
  range(prefix: string, start: string | undefined, limit: number): KeyValue[] {
    const fromOverlay: string[] = [];
    for (const k of this.overlay.keys()) {
      if (k.startsWith(prefix) && (start === undefined || k > start)) fromOverlay.push(k);
    }
    fromOverlay.sort();
    const out: KeyValue[] = [];
    let cursor = start;
    let oi = 0;
    // Merge pages of the checkpoint with the overlay; the overlay wins on equal keys.
    // The cursor strictly increases, so this ends even when tombstones hide whole pages.
    for (;;) {
      const want = limit - out.length + 1;
      const page = this.base.range(prefix, cursor, want);
      const pageFull = page.length === want;
      let pi = 0;
      for (;;) {
        if (out.length >= limit) return out;
        const pk = pi < page.length ? page[pi]![0] : undefined;
        if (pk === undefined && pageFull) break; // more of the checkpoint to read
        const ok = oi < fromOverlay.length ? fromOverlay[oi]! : undefined;
        if (pk === undefined && ok === undefined) return out;
        let key: string;
        let rec: Rec | null;
        if (ok !== undefined && (pk === undefined || ok <= pk)) {
          key = ok;
          rec = this.overlay.get(ok)!.rec;
          oi++;
          if (pk === ok) pi++;
        } else {
          key = pk!;
          rec = page[pi]![1];
          pi++;
        }
        cursor = key;
        if (rec !== null) out.push(keyValue(key, rec));
      }
    }
  }

  /** Apply the next committed entry. Entries must come in index order without gaps. */
  apply(e: Entry): Applied {
    if (e.index !== this.applied + 1) throw new Error(`apply out of order: entry ${e.index} after ${this.applied}`);
    if (e.ts <= this.appliedTs && e.index > 1) throw new Error(`entry ${e.index} ts ${e.ts} not above ${this.appliedTs}`);
    this.applied = e.index;
    this.appliedTs = e.ts;
    this.appliedEpoch = e.epoch;
    if (e.kind === 'noop') {
      if (e.cluster !== undefined) this.cluster = e.cluster;
      return { events: [], duplicate: false };
    }
    if (e.kind === 'config') {
      this.voters = [...e.voters];
      this.keepOut = [...(e.keepOut ?? [])];
      return { events: [], duplicate: false };
    }
    if (e.rid !== undefined) {
      const seen = this.rids.get(e.rid);
      if (seen !== undefined) return { result: seen.result, events: [], duplicate: true };
    }
    const { result, changes } = this.evaluate(e.ops, e.index, e.ts);
    const events: ChangeEvent[] = [];
    if (result.ok) {
      for (const [key, slot] of changes) {
        // (A key that leaves its lease stays in the lease's set, which leaseKeys filters: no
        // read of the old record on every write. The set goes with the lease.)
        if (slot.rec !== null && slot.rec.lease !== undefined) this.attach(key, slot.rec.lease);
        else if (slot.rec === null) {
          const id = leaseIdOf(key);
          if (id !== null) this.leased.delete(id);
        }
        this.overlay.set(key, slot);
        events.push(
          slot.rec === null
            ? { index: e.index, ts: e.ts, op: 'del', key, prev: this.eventPrev }
            : { index: e.index, ts: e.ts, op: 'put', key, value: slot.rec.value, ...(slot.rec.b64 ? { b64: true as const } : {}), ...(slot.rec.lease !== undefined ? { lease: slot.rec.lease } : {}), prev: this.eventPrev },
        );
      }
      if (events.length > 0) this.eventPrev = e.index;
    }
    if (e.rid !== undefined) this.remember(e.rid, { index: e.index, ts: e.ts, result });
    return { result, events, duplicate: false };
  }

  /** Evaluate ops in order against the state; all-or-nothing: a failed cas discards every change. */
  private evaluate(ops: WriteOp[], index: number, ts: number): { result: WriteResult; changes: Map<string, Slot> } {
    const changes = new Map<string, Slot>();
    const current = (key: string): Rec | undefined => {
      const c = changes.get(key);
      if (c !== undefined) return c.rec ?? undefined;
      return this.get(key);
    };
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!;
      if (op.op === 'delprefix') {
        // The first PREFIX_DELETE_KEYS_MAX keys under the prefix as of this op (earlier ops of
        // the batch included), in key order: one entry's events must fit a replay page.
        for (const key of this.keysWithPrefix(op.prefix, changes, current)) changes.set(key, { rec: null, rev: index });
        continue;
      }
      if (op.op === 'expire') {
        // Only the record the expiry was armed for: a write since (a refresh) wins. A lease
        // that expires takes its keys along.
        const cur = current(op.key);
        if (cur !== undefined && cur.rev === op.rev && cur.ttl !== undefined) {
          changes.set(op.key, { rec: null, rev: index });
          const id = leaseIdOf(op.key);
          if (id !== null) for (const k of this.leaseKeys(id, changes, current)) changes.set(k, { rec: null, rev: index });
        }
        continue;
      }
      if (op.op === 'grant') {
        // The lease's id is this entry's index: a grant is alone in its entry (validation).
        changes.set(leaseKey(index), { rec: { value: '', rev: index, ts, ttl: op.ttl } });
        continue;
      }
      if (op.op === 'keepalive' || op.op === 'revoke') {
        const lk = leaseKey(op.lease);
        const cur = current(lk);
        if (cur === undefined) {
          if (op.op === 'revoke') continue; // gone already: as a del of an absent key
          return { result: { ok: false, code: 'LEASE_NOT_FOUND', failed: i, lease: op.lease }, changes: new Map() };
        }
        if (op.op === 'keepalive') {
          // Rewritten with its ttl: the countdown (armed per revision) starts again.
          changes.set(lk, { rec: { value: cur.value, rev: index, ts, ttl: cur.ttl! } });
          continue;
        }
        changes.set(lk, { rec: null, rev: index });
        for (const k of this.leaseKeys(op.lease, changes, current)) changes.set(k, { rec: null, rev: index });
        continue;
      }
      let value: string | null;
      if (op.op === 'put') value = op.value;
      else if (op.op === 'del') value = null;
      else {
        const cur = current(op.key);
        const curValue = cur === undefined ? null : cur.value;
        // By value: the same text, or the same bytes (b64 on both sides).
        const matches = 'expectRev' in op ? (cur === undefined ? 0 : cur.rev) === op.expectRev : curValue === op.expect && (op.expect === null || (cur!.b64 === true) === (op.b64 === true));
        if (!matches) {
          return { result: { ok: false, code: 'CAS_MISMATCH', failed: i, current: curValue }, changes: new Map() };
        }
        value = op.value;
      }
      if (value === null) {
        // Deleting an absent key changes nothing and produces no event.
        if (current(op.key) === undefined) continue;
        changes.set(op.key, { rec: null, rev: index });
      } else {
        const ttl = op.op === 'del' ? undefined : op.ttl;
        const b64 = op.op !== 'del' && op.b64 === true;
        const lease = op.op === 'del' ? undefined : op.lease;
        const rec: Rec = ttl !== undefined ? { value, rev: index, ts, ttl } : { value, rev: index, ts };
        if (b64) rec.b64 = true;
        if (lease !== undefined) {
          if (current(leaseKey(lease)) === undefined) return { result: { ok: false, code: 'LEASE_NOT_FOUND', failed: i, lease }, changes: new Map() };
          // A lease's keys go in one entry when it does: as many as one replay page holds.
          if (current(op.key)?.lease !== lease && this.leaseKeys(lease, changes, current).length >= LEASE_KEYS_MAX) {
            return { result: { ok: false, code: 'LEASE_FULL', failed: i, lease }, changes: new Map() };
          }
          rec.lease = lease;
        }
        changes.set(op.key, { rec });
      }
    }
    return { result: { ok: true }, changes };
  }

  /** Every key with a time to live or a lease, with its record's rev, ttl and lease (the coordinator arms expiries from these). */
  ttlKeys(): Array<[string, TimedRec]> {
    const out: Array<[string, TimedRec]> = [];
    for (const [k, r] of this.base.ttlKeys()) if (!this.overlay.has(k)) out.push([k, r]);
    for (const [k, s] of this.overlay) if (s.rec !== null && (s.rec.ttl !== undefined || s.rec.lease !== undefined)) out.push([k, timedOf(s.rec)]);
    return out;
  }

  /** The keys attached to lease `id` as of `changes` (earlier ops of the batch included), in key order. */
  private leaseKeys(id: number, changes: Map<string, Slot>, current: (key: string) => Rec | undefined): string[] {
    const keys = new Set(this.leased.get(id) ?? []);
    for (const k of changes.keys()) keys.add(k);
    return [...keys].filter((k) => current(k)?.lease === id).sort();
  }

  /** The first PREFIX_DELETE_KEYS_MAX keys starting with `prefix` that exist as of `changes`, in key order. */
  private keysWithPrefix(prefix: string, changes: Map<string, Slot>, current: (key: string) => Rec | undefined): string[] {
    // Keys are ASCII (their pattern): UTF-16 order is byte order.
    const changed = [...changes.keys()].filter((k) => k.startsWith(prefix)).sort();
    const out: string[] = [];
    let page = this.range(prefix, undefined, PREFIX_SCAN_PAGE_KEYS);
    let pi = 0;
    let ci = 0;
    while (out.length < PREFIX_DELETE_KEYS_MAX) {
      if (pi === page.length && page.length === PREFIX_SCAN_PAGE_KEYS) {
        page = this.range(prefix, page[page.length - 1]!.key, PREFIX_SCAN_PAGE_KEYS);
        pi = 0;
      }
      const pk = pi < page.length ? page[pi]!.key : undefined;
      const ck = ci < changed.length ? changed[ci]! : undefined;
      if (pk === undefined && ck === undefined) break;
      let key: string;
      if (ck === undefined || (pk !== undefined && pk < ck)) {
        key = pk!;
        pi++;
      } else {
        key = ck;
        ci++;
        if (pk === ck) pi++;
      }
      // (Lease records go only by revoke or expiry: with their keys.)
      if (current(key) !== undefined && !key.startsWith(LEASE_KEY_PREFIX)) out.push(key);
    }
    return out;
  }

  private remember(rid: string, rec: RidRecord): void {
    // (An id applied before returned its first result: each id comes here once, so the queue holds it once.)
    assert(!this.rids.has(rid), `request id ${rid} remembered twice`);
    this.rids.set(rid, rec);
    this.ridOrder.push(rid);
    this.ridsAdded.add(rid);
    this.ridsDeleted.delete(rid);
    while (this.rids.size > this.ridsMax) {
      const oldest = this.ridOrder[this.ridHead++]!;
      this.rids.delete(oldest);
      if (!this.ridsAdded.delete(oldest)) this.ridsDeleted.add(oldest);
    }
    // Drop the evicted front now and then (amortized O(1) per write).
    if (this.ridHead >= RID_QUEUE_COMPACT_MIN && this.ridHead * 2 >= this.ridOrder.length) {
      this.ridOrder = this.ridOrder.slice(this.ridHead);
      this.ridHead = 0;
    }
    assert(this.ridOrder.length - this.ridHead === this.rids.size, 'the request id queue holds every remembered id once');
  }

  /**
   * What a checkpoint must write to hold the state as of `applied`.
   * Call release(delta) once it is durable to drop the overlay it covers.
   */
  takeDelta(): CheckpointDelta {
    const kv: Array<[string, Rec | null]> = [];
    for (const [k, s] of this.overlay) kv.push([k, s.rec]);
    kv.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const ridsSet: Array<[string, RidRecord]> = [];
    for (const r of this.ridsAdded) ridsSet.push([r, this.rids.get(r)!]);
    const ridsDel = [...this.ridsDeleted];
    this.ridsAdded = new Set();
    this.ridsDeleted = new Set();
    return {
      kv,
      ridsSet,
      ridsDel,
      meta: {
        format: CHECKPOINT_FORMAT,
        index: this.applied,
        epoch: this.appliedEpoch,
        ts: this.appliedTs,
        voters: [...this.voters],
        ...(this.keepOut.length > 0 ? { keepOut: [...this.keepOut] } : {}),
        eventPrev: this.eventPrev,
        ...(this.cluster !== '' ? { cluster: this.cluster } : {}),
      },
    };
  }

  /** The checkpoint holding `delta` is durable: drop overlay slots it covers that were not overwritten since. */
  release(delta: CheckpointDelta): void {
    for (const [k] of delta.kv) {
      const s = this.overlay.get(k);
      if (s === undefined) continue;
      const rev = s.rec === null ? s.rev : s.rec.rev;
      if (rev <= delta.meta.index) this.overlay.delete(k);
    }
  }
}

/** A record as a read returns it. */
export function keyValue(key: string, rec: Rec): KeyValue {
  const kv: KeyValue = { key, value: rec.value, rev: rec.rev };
  if (rec.ttl !== undefined) kv.ttl = rec.ttl;
  if (rec.b64) kv.b64 = true;
  if (rec.lease !== undefined) kv.lease = rec.lease;
  return kv;
}

/** The record of lease `id`. */
export function leaseKey(id: number): string {
  return `${LEASE_KEY_PREFIX}${id}`;
}

/** The lease id a key names, if it is a lease's record. */
export function leaseIdOf(key: string): number | null {
  if (!key.startsWith(LEASE_KEY_PREFIX)) return null;
  const id = Number(key.slice(LEASE_KEY_PREFIX.length));
  return Number.isSafeInteger(id) && id > 0 ? id : null;
}

export function timedOf(r: Rec): TimedRec {
  const t: TimedRec = { rev: r.rev };
  if (r.ttl !== undefined) t.ttl = r.ttl;
  if (r.lease !== undefined) t.lease = r.lease;
  return t;
}
