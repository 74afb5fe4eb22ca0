// NATS subjects of one cluster (DESIGN §5). Pure string building.

import type { Msg } from '../core/messages.js';

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
