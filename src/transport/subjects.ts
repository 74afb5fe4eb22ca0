// NATS subjects of one cluster (DESIGN §5). Pure string building.

import { NATS_SERVER_ID_PATTERN } from '../core/limits.js';
import type { Msg } from '../core/messages.js';

/**
 * The read subject of the ckv servers on one NATS server (natsServerId: its INFO's server_id).
 * A NATS cluster (2.9) spreads a queue group's requests over all its nodes, so a client reads
 * here first, then on the cluster's read subject. "~" is in no cluster name: no cluster's own
 * subjects can be this; and it still matches `ckv.*.read` in NATS permissions. null: no id, or
 * one that is no subject token.
 */
export function localReadSubject(cluster: string, natsServerId: string | undefined): string | null {
  return natsServerId !== undefined && NATS_SERVER_ID_PATTERN.test(natsServerId) ? `ckv.${cluster}~${natsServerId}.read` : null;
}

export function subjects(cluster: string) {
  const p = `ckv.${cluster}`;
  return {
    read: `${p}.read`,
    write: `${p}.write`,
    admin: `${p}.admin`,
    members: `${p}.members`,
    ping: `${p}.ping`,
    event: (key: string) => `${p}.ev.${key}`,
    events: `${p}.ev.>`,
    /** Peer subjects for a message: heartbeats, election, replication, catch-up. */
    peer(m: Msg): string {
      const to = m.to === 0 ? 'all' : String(m.to);
      switch (m.t) {
        case 'ping':
          return `${p}.ping`;
        case 'election':
        case 'alive':
        case 'claim':
        case 'promise':
          return `${p}.elect.${to}`;
        case 'append':
        case 'ack':
        case 'nack':
        case 'confirm':
        case 'confirmed':
          return `${p}.repl.${to}`;
        default:
          return `${p}.sync.${to}`;
      }
    },
    /** What one server subscribes to, to hear every peer message for it. */
    peerListen(id: number): string[] {
      return [`${p}.ping`, ...['elect', 'repl', 'sync'].flatMap((k) => [`${p}.${k}.all`, `${p}.${k}.${id}`])];
    },
    snapshot: (id: number) => `${p}.snap.${id}`,
  };
}
