// Messages between servers. Every message carries its sender, its target
// (0 = everyone), the sender's epoch and Lamport clock.

import type { Entry, Role } from './wire.js';

export const BROADCAST = 0;

export interface Header {
  from: number;
  to: number;
  epoch: number;
  clock: number;
  /** The sender's cluster identity ('' before it knows one). */
  cid: string;
}

export type Body =
  /** Heartbeat: the ping daemon's table row, and the coordinator's commit index. */
  | {
      t: 'ping';
      role: Role;
      coordinator: number | null;
      last: number;
      lastEpoch: number;
      commit: number;
      commitTs: number;
      /** Highest index known to match the coordinator's log in this epoch. */
      matched: number;
      applied: number;
      checkpoint: number;
      voters: number[];
      uptimeTicks: number;
      /** Where the newest configuration entry in the sender's log is (absent or 0: below its log). */
      cfgIndex?: number;
      cfgEpoch?: number;
    }
  /** Replication: entries following (prevIndex, prevEpoch); commit is the coordinator's. */
  | { t: 'append'; prevIndex: number; prevEpoch: number; entries: Entry[]; commit: number; commitTs: number }
  /** The follower holds, durably, the coordinator's log up to match. */
  | { t: 'ack'; match: number }
  /** The follower could not append: resend from after its commit. */
  | { t: 'nack'; last: number; commit: number }
  /** Bully: sent to all; voters with a higher id answer `alive`. */
  | { t: 'election' }
  | { t: 'alive' }
  /** Claim of epoch `epoch`: asks every voter to promise it; with the claimant's log position. */
  | { t: 'claim'; last: number; lastEpoch: number; cfgIndex?: number; cfgEpoch?: number }
  | { t: 'promise'; ok: boolean; last: number; lastEpoch: number; commit: number }
  /** The claimant fetches what it lacks from the most up-to-date promiser. */
  | { t: 'fetch'; start: number }
  | { t: 'fetched'; start: number; entries: Entry[]; last: number; compacted: boolean }
  /** Strong reads: the coordinator confirms with a majority that it still leads. */
  | { t: 'confirm'; seq: number }
  | { t: 'confirmed'; seq: number }
  /** Token checks: is there a committed write with this ts? (asked of the coordinator) */
  | { t: 'tsq'; seq: number }
  | { t: 'tsr'; seq: number; commitTs: number };

export type Msg = Header & Body;
export type MsgType = Body['t'];
