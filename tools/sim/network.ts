// The simulated network: peer messages (delay, loss, duplication, reordering
// by random delay, symmetric and one-way partitions), offers and page requests
// on the snapshot subjects (pages duplicated or answered by a stale one), and
// client requests to the servers that serve a subject. A message addressed to a
// server reaches whichever incarnation is up when it arrives; a paused server
// takes it when it resumes.

import { BROADCAST, type Msg } from '../../src/core/messages.js';
import { SNAPSHOT_PAGE_TIMEOUT_MS } from '../../src/core/limits.js';
import type { Reply, Request } from '../../src/core/wire.js';
import { encodeReply } from '../../src/server/server.js';
import type { ClientSubject } from '../../src/server/replica.js';
import type { SimNode } from './env.js';
import type { Sim } from './harness.js';
import { fmtMsg } from './trace.js';
import { encodePeerMessage } from '../../src/transport/peer-auth.js';
import { isWrite } from '../../src/core/validate.js';

export class Network {
  /** Cut links, as "from>to". */
  readonly blocked = new Set<string>();
  loss = 0;
  dup = 0;
  slow = 0;
  messages = 0;
  /** The last page answer each server gave, for stale answers. */
  private lastPage = new Map<number, string>();

  constructor(private sim: Sim) {}

  private delay(): number {
    const r = this.sim.rng.net;
    let d = r.real(0.1, 2);
    if (r.chance(this.slow)) d += r.real(0, 80);
    if (r.chance(0.01)) d += r.real(100, 500);
    return d;
  }

  isBlocked(from: number, to: number): boolean {
    return this.blocked.size > 0 && this.blocked.has(`${from}>${to}`);
  }

  /** Deliver fn to server `to` at time `at`, if up and reachable from `from` then (waiting out a pause). */
  private deliver(from: number, to: number, at: number, fn: (n: SimNode) => void): void {
    const arrive = (): void => {
      const n = this.sim.servers.get(to);
      if (!n || this.isBlocked(from, to)) return;
      const until = this.sim.pausedUntil.get(to) ?? 0;
      if (until > this.sim.t) {
        this.sim.q.push(until, arrive);
        return;
      }
      fn(n);
    };
    this.sim.q.push(at, arrive);
  }

  /**
   * A peer message from `from`: in wire mode sealed and opened as the NATS transport does it
   * (peer-auth.ts: MAC, shape check, replay guard), else as a frozen object.
   */
  send(from: SimNode, m: Msg): void {
    const sim = this.sim;
    const subject = sim.subjects.peer(m);
    const frame = sim.p.wire ? from.seal.seal(subject, encodePeerMessage(m)) : null;
    if (!frame) deepFreeze(m);
    const targets = m.to === BROADCAST ? sim.ids.filter((i) => i !== m.from && !sim.retired.has(i)) : [m.to];
    for (const to of targets) {
      if (this.isBlocked(m.from, to) || sim.rng.net.chance(this.loss)) continue;
      const copies = sim.rng.net.chance(this.dup) ? 2 : 1;
      for (let c = 0; c < copies; c++) {
        this.deliver(m.from, to, sim.t + this.delay(), (n) => {
          let got = m;
          if (frame) {
            const r = n.inbox.receive(subject, frame);
            if (!r.ok) {
              // Duplicates and a restarted sender's old messages are dropped; anything else is a bug.
              if (r.reason !== 'replay' && r.reason !== 'stale-incarnation' && r.reason !== 'own') throw new Error(`the transport refuses a message the core sent (${r.reason}: ${r.detail}): ${frame}`);
              return;
            }
            got = r.m;
          }
          this.messages++;
          sim.trace.add(sim.t, to, () => `<- ${fmtMsg(got)}`);
          n.replica.onPeer(got);
        });
      }
    }
  }

  /** A checkpoint offer, published on the follower's snapshot subject. */
  offer(from: number, to: number, data: string): void {
    if (this.isBlocked(from, to) || this.sim.rng.net.chance(this.loss)) return;
    this.sim.trace.add(this.sim.t, from, `offer checkpoint -> ${to}`);
    this.deliver(from, to, this.sim.t + this.delay(), (n) => n.replica.onSnapshot(data, null));
  }

  /** A page request from `node` to server `to`: answered, lost (timeout), duplicated, or answered by a stale page. */
  requestPage(node: SimNode, to: number, request: string, done: (reply: Uint8Array | string | null) => void): void {
    const sim = this.sim;
    const r = sim.rng.net;
    const from = node.id;
    sim.at(node, sim.t + SNAPSHOT_PAGE_TIMEOUT_MS, () => done(null));
    if (this.isBlocked(from, to) || r.chance(this.loss)) return;
    this.deliver(from, to, sim.t + this.delay(), (server) => {
      server.replica.onSnapshot(request, (answer) => {
        const stale = this.lastPage.get(to);
        this.lastPage.set(to, answer);
        if (this.isBlocked(to, from) || r.chance(this.loss)) return;
        const reply = stale !== undefined && r.chance(sim.p.pageStale) ? stale : answer;
        const copies = r.chance(sim.p.pageDup) ? 2 : 1;
        for (let c = 0; c < copies; c++) sim.at(node, sim.t + this.delay(), () => done(reply));
      });
    });
  }

  /**
   * A client request to one of the servers serving its subject (a NATS queue group), as JSON;
   * the reply comes back as the JSON the server encodes. False if no server serves it.
   */
  clientRequest(req: Request, onReply: (reply: Reply, by: number) => void, loss: number): boolean {
    const sim = this.sim;
    const r = sim.rng.client;
    const subject: ClientSubject = isWriteSubject(req) ? 'write' : 'read';
    const up = sim.ids.map((i) => sim.servers.get(i)).filter((x): x is SimNode => !!x && x.serving.has(subject));
    if (up.length === 0) return false;
    const target = r.pick(up);
    if (r.chance(loss)) return true;
    const data = JSON.stringify(req);
    sim.at(target, sim.t + r.real(0.1, 2), () =>
      target.replica.request(subject, data, (reply) => {
        if (r.chance(loss)) return;
        const wire = JSON.parse(encodeReply(reply)) as Reply;
        sim.q.push(sim.t + r.real(0.1, 2), () => onReply(wire, target.id));
      }),
    );
    return true;
  }
}

/** Writes, config and strong reads go on the write subject (to the coordinator). */
export function isWriteSubject(req: Request): boolean {
  if (isWrite(req) || req.op === 'config') return true;
  return 'consistency' in req && req.consistency === 'strong';
}

export function deepFreeze<T>(o: T): T {
  if (o === null || typeof o !== 'object' || Object.isFrozen(o)) return o;
  Object.freeze(o);
  for (const v of Object.values(o as object)) deepFreeze(v);
  return o;
}
