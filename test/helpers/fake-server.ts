// A scripted fake ckv server on a real nats-server: one handler per subject
// kind, swapped by each test, and a record of every request it saw. The real
// server is tested end to end elsewhere.

import { connect, type Msg, type NatsConnection } from '@nats-io/transport-node';
import type { ChangeEvent, NodeStatus } from '../../src/core/wire.js';

const dec = new TextDecoder();

export type Handler = (req: Record<string, unknown>, msg: Msg) => unknown;

export interface Fake {
  nc: NatsConnection;
  on: { read?: Handler; write?: Handler; admin?: Handler };
  /** Every request seen, by subject kind. */
  seen: { read: Record<string, unknown>[]; write: Record<string, unknown>[]; admin: Record<string, unknown>[] };
  reset(): void;
  publishEvent(cluster: string, e: ChangeEvent): void;
}

export async function fakeServer(url: string, cluster: string): Promise<Fake> {
  const nc = await connect({ servers: url });
  const fake: Fake = {
    nc,
    on: {},
    seen: { read: [], write: [], admin: [] },
    reset() {
      this.on = {};
      this.seen = { read: [], write: [], admin: [] };
    },
    publishEvent(c, e) {
      nc.publish(`ckv.${c}.ev.${e.key}`, JSON.stringify(e));
    },
  };
  for (const kind of ['read', 'write', 'admin'] as const) {
    nc.subscribe(`ckv.${cluster}.${kind}`, {
      ...(kind === 'admin' ? {} : { queue: kind }),
      callback: (_err, msg) => {
        const req = JSON.parse(dec.decode(msg.data)) as Record<string, unknown>;
        fake.seen[kind].push(req);
        const h = fake.on[kind];
        if (!h) return;
        const reply = h(req, msg);
        if (reply !== undefined) msg.respond(JSON.stringify(reply));
      },
    });
  }
  await nc.flush();
  return fake;
}

export const ok = (ts: number, body: Record<string, unknown> = {}) => ({ ok: true, ts, index: ts, ...body });
export const fail = (ts: number, code: string, extra: Record<string, unknown> = {}) => ({ ok: false, ts, error: { code, message: `fake ${code}` }, ...extra });

export function nodeStatus(id: number, voters: number[]): NodeStatus {
  return { id, cluster: 'lib', epoch: 1, role: id === 1 ? 'coordinator' : 'follower', coordinator: 1, clock: 9, last: 9, commit: 9, applied: 9, checkpoint: 0, voters, version: 'test', uptimeMs: 1 };
}
