// The reference model: the committed log as the simulation has observed it,
// applied to a plain map by an implementation independent of KvState. It is
// the oracle for every replica's state and every reply.

import { LEASE_KEYS_MAX, PREFIX_DELETE_KEYS_MAX } from '../../src/core/limits.js';
import type { ChangeEvent, Entry, WriteOp, WriteResult } from '../../src/core/wire.js';
import type { Rec } from '../../src/core/records.js';

export interface ModelRid {
  index: number;
  ts: number;
  result: WriteResult;
}

interface KeyHistory {
  index: number[];
  rec: Array<Rec | null>;
}

export class Model {
  /** The committed log: log[i - 1] is entry i. */
  readonly log: Entry[] = [];
  /** The state after the committed log (read only outside). */
  readonly cur = new Map<string, Rec>();
  private hist = new Map<string, KeyHistory>();
  readonly rids = new Map<string, ModelRid>();
  /** Request ids in the order of their first application. */
  readonly ridOrder: string[] = [];
  /** Per index: the result a write entry had (the first application's, for a duplicate). */
  readonly results: Array<{ result?: WriteResult; duplicate: boolean; events: ChangeEvent[] }> = [];
  /** Index of the last entry that produced change events. */
  private eventPrev = 0;
  /** Configuration entries: (index, voters), in log order. */
  private configs: Array<{ index: number; voters: number[]; keepOut: number[] }> = [];
  constructor(private readonly initialVoters: number[]) {}

  /** The voters as of entry `index` (the newest configuration entry at or below it). */
  votersAt(index: number): number[] {
    return this.configAt(index).voters;
  }

  configAt(index: number): { voters: number[]; keepOut: number[] } {
    for (let k = this.configs.length - 1; k >= 0; k--) if (this.configs[k]!.index <= index) return this.configs[k]!;
    return { voters: this.initialVoters, keepOut: [] };
  }

  get last(): number {
    return this.log.length;
  }

  entry(index: number): Entry | undefined {
    return this.log[index - 1];
  }

  tsAt(index: number): number {
    return index === 0 ? 0 : this.log[index - 1]!.ts;
  }

  keys(): string[] {
    return [...this.hist.keys()];
  }

  /** Append the next committed entry and apply it. */
  push(e: Entry): void {
    if (e.index !== this.log.length + 1) throw new Error(`model: entry ${e.index} after ${this.log.length}`);
    this.log.push(e);
    if (e.kind === 'config') this.configs.push({ index: e.index, voters: [...e.voters].sort((a, b) => a - b), keepOut: e.keepOut ?? [] });
    if (e.kind !== 'write') {
      this.results.push({ duplicate: false, events: [] });
      return;
    }
    if (e.rid !== undefined) {
      const seen = this.rids.get(e.rid);
      if (seen) {
        this.results.push({ result: seen.result, duplicate: true, events: [] });
        return;
      }
    }
    const { result, changes } = this.evaluate(e);
    if (e.rid !== undefined) {
      this.rids.set(e.rid, { index: e.index, ts: e.ts, result });
      this.ridOrder.push(e.rid);
    }
    const events: ChangeEvent[] = [];
    for (const [key, rec] of changes) {
      events.push(rec === null ? { index: e.index, ts: e.ts, op: 'del', key, prev: this.eventPrev } : { index: e.index, ts: e.ts, op: 'put', key, value: rec.value, ...(rec.b64 ? { b64: true as const } : {}), prev: this.eventPrev });
    }
    if (events.length > 0) this.eventPrev = e.index;
    this.results.push({ result, duplicate: false, events });
  }

  private evaluate(e: Extract<Entry, { kind: 'write' }>): { result: WriteResult; changes: Map<string, Rec | null> } {
    const changes = new Map<string, Rec | null>();
    const value = (k: string): string | null => {
      if (changes.has(k)) return changes.get(k)?.value ?? null;
      return this.cur.get(k)?.value ?? null;
    };
    const rev = (k: string): number => (changes.has(k) ? (changes.get(k)?.rev ?? 0) : (this.cur.get(k)?.rev ?? 0));
    const bytes = (k: string): boolean => (changes.has(k) ? changes.get(k)?.b64 === true : this.cur.get(k)?.b64 === true);
    const now = (k: string): Rec | null => (changes.has(k) ? (changes.get(k) ?? null) : (this.cur.get(k) ?? null));
    // The model's own reading of leases: a scan of every key, no index.
    const attached = (id: number): string[] => [...new Set([...this.cur.keys(), ...changes.keys()])].filter((k) => now(k)?.lease === id).sort();
    const fail = (code: 'LEASE_NOT_FOUND' | 'LEASE_FULL', i: number, lease: number) => ({ result: { ok: false as const, code, failed: i, lease }, changes: new Map<string, Rec | null>() });
    for (let i = 0; i < e.ops.length; i++) {
      const op: WriteOp = e.ops[i]!;
      if (op.op === 'grant') {
        changes.set(`_lease.${e.index}`, { value: '', rev: e.index, ts: e.ts, ttl: op.ttl });
        continue;
      }
      if (op.op === 'keepalive' || op.op === 'revoke') {
        const l = now(`_lease.${op.lease}`);
        if (l === null) {
          if (op.op === 'keepalive') return fail('LEASE_NOT_FOUND', i, op.lease);
          continue;
        }
        if (op.op === 'keepalive') changes.set(`_lease.${op.lease}`, { value: l.value, rev: e.index, ts: e.ts, ttl: l.ttl! });
        else for (const k of [`_lease.${op.lease}`, ...attached(op.lease)]) changes.set(k, null);
        continue;
      }
      if (op.op === 'delprefix') {
        const keys = [...new Set([...this.cur.keys(), ...changes.keys()])].filter((k) => k.startsWith(op.prefix) && !k.startsWith('_lease.') && value(k) !== null).sort();
        for (const k of keys.slice(0, PREFIX_DELETE_KEYS_MAX)) changes.set(k, null);
        continue;
      }
      if (op.op === 'expire') {
        const r = now(op.key);
        if (r && r.rev === op.rev && r.ttl !== undefined) {
          changes.set(op.key, null);
          if (op.key.startsWith('_lease.')) for (const k of attached(Number(op.key.slice(7)))) changes.set(k, null);
        }
        continue;
      }
      let next: string | null;
      if (op.op === 'put') next = op.value;
      else if (op.op === 'del') next = null;
      else {
        const cv = value(op.key);
        if ('expectRev' in op ? rev(op.key) !== op.expectRev : cv !== op.expect || (cv !== null && bytes(op.key) !== (op.b64 === true))) return { result: { ok: false, code: 'CAS_MISMATCH', failed: i, current: cv }, changes: new Map() };
        next = op.value;
      }
      if (next === null) {
        if (value(op.key) !== null) changes.set(op.key, null);
      } else {
        const ttl = op.op === 'del' ? undefined : op.ttl;
        const b64 = op.op !== 'del' && op.b64 === true ? { b64: true as const } : {};
        const lease = op.op === 'del' ? undefined : op.lease;
        if (lease !== undefined) {
          if (now(`_lease.${lease}`) === null) return fail('LEASE_NOT_FOUND', i, lease);
          if (now(op.key)?.lease !== lease && attached(lease).length >= LEASE_KEYS_MAX) return fail('LEASE_FULL', i, lease);
        }
        const rec: Rec = ttl === undefined ? { value: next, rev: e.index, ts: e.ts, ...b64 } : { value: next, rev: e.index, ts: e.ts, ttl, ...b64 };
        if (lease !== undefined) rec.lease = lease;
        changes.set(op.key, rec);
      }
    }
    for (const [k, rec] of changes) {
      if (rec === null) this.cur.delete(k);
      else this.cur.set(k, rec);
      let h = this.hist.get(k);
      if (!h) this.hist.set(k, (h = { index: [], rec: [] }));
      h.index.push(e.index);
      h.rec.push(rec);
    }
    return { result: { ok: true }, changes };
  }

  /** The record of `key` in the state after applying entries 1..index. */
  valueAt(key: string, index: number): Rec | null {
    const h = this.hist.get(key);
    if (!h) return null;
    // Last change at or below index.
    let lo = 0;
    let hi = h.index.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (h.index[mid]! <= index) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found < 0 ? null : h.rec[found]!;
  }
}

/** Entries are never changed once made: each one's JSON is worked out once. */
const entryJson = new WeakMap<Entry, string>();
function jsonOf(e: Entry): string {
  let j = entryJson.get(e);
  if (j === undefined) entryJson.set(e, (j = JSON.stringify(e)));
  return j;
}

export function sameEntry(a: Entry, b: Entry): boolean {
  if (a === b) return true;
  return a.index === b.index && a.epoch === b.epoch && a.ts === b.ts && jsonOf(a) === jsonOf(b);
}

export function sameRec(a: Rec | null | undefined, b: Rec | null | undefined): boolean {
  if (!a || !b) return !a && !b;
  return a.value === b.value && a.rev === b.rev && a.ts === b.ts && a.ttl === b.ttl && (a.b64 === true) === (b.b64 === true);
}

export function sameResult(a: WriteResult | undefined, b: WriteResult | undefined): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export function showEntry(e: Entry | undefined): string {
  if (!e) return '-';
  const head = `#${e.index}/e${e.epoch}/ts${e.ts}`;
  if (e.kind === 'noop') return `${head} noop`;
  if (e.kind === 'config') return `${head} config ${e.voters.join(',')}`;
  const ops = e.ops.map((o) =>
    o.op === 'put'
      ? `put ${o.key}=${o.value}${o.ttl !== undefined ? ` ttl${o.ttl}` : ''}`
      : o.op === 'del'
        ? `del ${o.key}`
        : o.op === 'delprefix'
          ? `delprefix ${o.prefix}`
          : o.op === 'expire'
            ? `expire ${o.key}@${o.rev}`
            : o.op === 'grant'
              ? `grant ttl${o.ttl}`
              : o.op === 'keepalive' || o.op === 'revoke'
                ? `${o.op} ${o.lease}`
                : `cas ${o.key} ${'expectRev' in o ? `rev${o.expectRev}` : o.expect}->${o.value}${o.ttl !== undefined ? ` ttl${o.ttl}` : ''}`,
  );
  return `${head} ${e.rid ?? ''} [${ops.join('; ')}]`;
}
