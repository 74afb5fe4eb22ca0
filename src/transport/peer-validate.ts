// Shape checks for peer messages arriving over NATS. Anyone on the NATS server
// can publish on the peer subjects: a message the core was not built for is
// dropped here, so that a malformed one never reaches an assertion in the core.

import type { Msg } from '../core/messages.js';
import { entryProblem } from '../core/entry-shape.js';
import { CLUSTER_ID_PATTERN, PEER_NUMBER_MAX } from '../core/limits.js';


const nat = (x: unknown): boolean => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0 && x <= PEER_NUMBER_MAX;
const ROLES = new Set(['follower', 'candidate', 'coordinator', 'learner', 'catchup']);

/** Numeric fields each message type carries (beyond the header). */
const NUMS: Record<string, string[]> = {
  ping: ['last', 'lastEpoch', 'commit', 'commitTs', 'matched', 'applied', 'checkpoint', 'uptimeTicks'],
  append: ['prevIndex', 'prevEpoch', 'commit', 'commitTs'],
  ack: ['match'],
  nack: ['last', 'commit'],
  election: [],
  alive: [],
  claim: ['last', 'lastEpoch'],
  promise: ['last', 'lastEpoch', 'commit'],
  fetch: ['start'],
  fetched: ['start', 'last'],
  confirm: ['seq'],
  confirmed: ['seq'],
  tsq: ['seq'],
  tsr: ['seq', 'commitTs'],
};

/** Numeric fields a message type may carry (absent in older servers' messages). */
const OPTIONAL_NUMS: Record<string, string[]> = {
  ping: ['cfgIndex', 'cfgEpoch'],
  claim: ['cfgIndex', 'cfgEpoch'],
};

/** Why `x` is not a well-formed peer message, or null when it is. */
export function peerMessageProblem(x: unknown): string | null {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) return 'not an object';
  const m = x as Record<string, unknown>;
  if (typeof m.t !== 'string' || !(m.t in NUMS)) return `unknown type ${JSON.stringify(m.t)}`;
  for (const f of ['from', 'to', 'epoch', 'clock', ...NUMS[m.t]!]) if (!nat(m[f])) return `${m.t}: ${f} is not a non-negative integer`;
  for (const f of OPTIONAL_NUMS[m.t] ?? []) if (m[f] !== undefined && !nat(m[f])) return `${m.t}: ${f} is not a non-negative integer`;
  if ((m.from as number) < 1) return 'from must be a server id';
  if (typeof m.cid !== 'string' || (m.cid !== '' && !CLUSTER_ID_PATTERN.test(m.cid))) return `${m.t}: cid is not a cluster identity`;
  if (typeof m.commitTs === 'number' && m.commitTs > (m.clock as number)) return `${m.t}: commitTs is beyond the sender's clock`;
  switch (m.t) {
    case 'ping':
      if (!ROLES.has(m.role as string)) return 'ping: bad role';
      if (m.coordinator !== null && !nat(m.coordinator)) return 'ping: bad coordinator';
      if (!Array.isArray(m.voters) || !m.voters.every((v) => nat(v) && v > 0)) return 'ping: bad voters';
      return null;
    case 'promise':
      return typeof m.ok === 'boolean' ? null : 'promise: ok is not a boolean';
    case 'append':
    case 'fetched': {
      if (m.t === 'fetched' && typeof m.compacted !== 'boolean') return 'fetched: compacted is not a boolean';
      if (!Array.isArray(m.entries)) return `${m.t}: entries is not an array`;
      const first = m.t === 'append' ? (m.prevIndex as number) + 1 : (m.start as number);
      for (let i = 0; i < m.entries.length; i++) {
        const p = entryProblem(m.entries[i]);
        if (p !== null) return `${m.t}: entry ${i}: ${p}`;
        const e = m.entries[i] as { index: number; ts: number; epoch: number };
        if (e.index !== first + i) return `${m.t}: entries are not contiguous`;
        if (!nat(e.ts) || !nat(e.epoch)) return `${m.t}: entry ${i}: ts or epoch out of range`;
        if (i > 0 && e.ts <= (m.entries[i - 1] as { ts: number }).ts) return `${m.t}: entry timestamps do not increase`;
        // The sender's clock is at least every timestamp it has issued or seen.
        if (e.ts > (m.clock as number)) return `${m.t}: entry ${i}'s ts is beyond the sender's clock`;
        if (e.epoch > (m.epoch as number)) return `${m.t}: entry ${i}'s epoch is beyond the sender's`;
      }
      return null;
    }
    default:
      return null;
  }
}

export function asPeerMessage(x: unknown): Msg | null {
  return peerMessageProblem(x) === null ? (x as Msg) : null;
}
