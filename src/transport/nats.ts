// The server's NATS adapter: peer messages (sealed and opened by peer-auth.ts),
// the snapshot subjects of checkpoint transfer (sealed too), client request
// subjects, and publications (events, members). The driver sees only the
// ServerTransport port.

import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Msg } from '../core/messages.js';
import { PeerInbox, encodePeerMessage, type PeerSeal, type Received } from './peer-auth.js';
import { subjects } from './subjects.js';

export type Respond = (reply: Uint8Array | string) => void;
export type RequestHandler = (data: Uint8Array, respond: Respond) => void;

export interface ServerTransport {
  sendPeer(m: Msg): void;
  onPeer(handler: (m: Msg) => void): void;
  /** A sealed message on server `to`'s snapshot subject (an offer). */
  sendSnapshot(to: number, body: string): void;
  /** Our snapshot subject: offers (respond null) and page requests, their bodies once opened. */
  onSnapshot(handler: (body: string, respond: ((reply: string) => void) | null) => void): void;
  /** A sealed request on server `to`'s snapshot subject; resolves with the opened reply. */
  requestSnapshot(to: number, body: string, timeoutMs: number): Promise<string>;
  publish(subject: string, data: Uint8Array | string): void;
  /** Serve a request subject; queue groups share the load. Returns a stop function. */
  serve(subject: string, queue: string | undefined, handler: RequestHandler): () => void;
  flush(): Promise<void>;
  /** The id of the NATS server we are connected to (its INFO's server_id), if known. */
  natsServerId?(): string | undefined;
  /** Call fn after each reconnect to NATS (possibly another server, or one restarted with a new id); returns a stop. */
  onReconnect?(fn: () => void): () => void;
  close(): Promise<void>;
}

/** Why a peer message was dropped, and what a failure to send was. */
export interface TransportEvents {
  /** A peer message not taken: unsealed, forged, replayed, malformed, or from another process with our id. */
  dropped(r: Extract<Received, { ok: false }>): void;
  /** Publishing failed (too large, connection closed): lost, like any message. */
  sendFailed(err: unknown): void;
  /** A handler threw: a bug, reported, never a crash. */
  handlerFailed(err: unknown): void;
}

/** Time allowed to flush on close, in ms. */
export const CLOSE_DRAIN_MS_MAX = 2_000;

/** The subject a reply to a sealed request is bound to: the request's subject, incarnation and number. */
function replyBinding(subject: string, incarnation: string, seq: number): string {
  return `${subject}#reply#${incarnation}#${seq}`;
}

export class NatsTransport implements ServerTransport {
  private subs: Subscription[] = [];
  private s: ReturnType<typeof subjects>;
  private inbox: PeerInbox;

  constructor(
    private nc: NatsConnection,
    cluster: string,
    private id: number,
    private seal: PeerSeal,
    private events: TransportEvents,
  ) {
    this.s = subjects(cluster);
    this.inbox = new PeerInbox(seal, id);
  }

  private publishSafely(subject: string, data: string, reply?: string): void {
    // A message NATS refuses (too large, connection closed) is lost like any other: the
    // protocol recovers from loss. It must never take the server down.
    try {
      this.nc.publish(subject, data, reply ? { reply } : undefined);
    } catch (err) {
      this.events.sendFailed(err);
    }
  }

  sendPeer(m: Msg): void {
    const subject = this.s.peer(m);
    this.publishSafely(subject, this.seal.seal(subject, encodePeerMessage(m)));
  }

  onPeer(handler: (m: Msg) => void): void {
    for (const subject of this.s.peerListen(this.id)) {
      this.subs.push(
        this.nc.subscribe(subject, {
          callback: (err, msg) => {
            if (err) return;
            const r = this.inbox.receive(msg.subject, msg.data);
            if (!r.ok) return r.reason === 'own' ? undefined : this.events.dropped(r);
            try {
              handler(r.m);
            } catch (e) {
              // An exception escaping a NATS callback would stop the connection's reader.
              this.events.handlerFailed(e);
            }
          },
        }),
      );
    }
  }

  sendSnapshot(to: number, body: string): void {
    const subject = this.s.snapshot(to);
    this.publishSafely(subject, this.seal.seal(subject, body));
  }

  onSnapshot(handler: (body: string, respond: ((reply: string) => void) | null) => void): void {
    const subject = this.s.snapshot(this.id);
    const sub = this.nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return;
        const o = this.seal.open(subject, msg.data);
        if (!o.ok) return this.events.dropped({ ok: false, reason: o.reason, detail: subject });
        const reply = msg.reply;
        const respond = reply ? (r: string) => this.publishSafely(reply, this.seal.seal(replyBinding(subject, o.incarnation, o.seq), r)) : null;
        try {
          handler(o.body, respond);
        } catch (e) {
          this.events.handlerFailed(e);
        }
      },
    });
    this.subs.push(sub);
  }

  async requestSnapshot(to: number, body: string, timeoutMs: number): Promise<string> {
    const subject = this.s.snapshot(to);
    const frame = this.seal.seal(subject, body);
    const r = await this.nc.request(subject, frame, { timeout: timeoutMs });
    const o = this.seal.open(replyBinding(subject, this.seal.incarnation, seqOf(frame)), r.data);
    if (!o.ok) {
      this.events.dropped({ ok: false, reason: o.reason, detail: `reply on ${subject}` });
      throw new Error(`reply from server ${to}: ${o.reason}`);
    }
    return o.body;
  }

  publish(subject: string, data: Uint8Array | string): void {
    try {
      this.nc.publish(subject, data);
    } catch (err) {
      this.events.sendFailed(err);
    }
  }

  serve(subject: string, queue: string | undefined, handler: RequestHandler): () => void {
    const sub = this.nc.subscribe(subject, {
      ...(queue ? { queue } : {}),
      callback: (err, msg) => {
        if (err || !msg.reply) return;
        try {
          handler(msg.data, (reply) => {
            try {
              msg.respond(reply);
            } catch (e) {
              this.events.sendFailed(e);
            }
          });
        } catch (e) {
          this.events.handlerFailed(e);
        }
      },
    });
    this.subs.push(sub);
    return () => {
      sub.unsubscribe();
      this.subs = this.subs.filter((x) => x !== sub);
    };
  }

  flush(): Promise<void> {
    return this.nc.flush();
  }

  natsServerId(): string | undefined {
    return this.nc.info?.server_id;
  }

  private reconnectHooks = new Set<() => void>();
  private watchingStatus = false;

  onReconnect(fn: () => void): () => void {
    this.reconnectHooks.add(fn);
    if (!this.watchingStatus) {
      this.watchingStatus = true;
      void (async () => {
        for await (const st of this.nc.status()) {
          if (st.type !== 'reconnect') continue;
          for (const f of [...this.reconnectHooks]) {
            try {
              f();
            } catch (e) {
              this.events.handlerFailed(e);
            }
          }
        }
      })().catch((e) => this.events.handlerFailed(e));
    }
    return () => void this.reconnectHooks.delete(fn);
  }

  async close(): Promise<void> {
    for (const s of this.subs) s.unsubscribe();
    this.subs = [];
    // Drain flushes what we published; bounded, and never an error on the way out.
    const timer = new Promise<void>((r) => setTimeout(r, CLOSE_DRAIN_MS_MAX).unref());
    await Promise.race([this.nc.drain().catch(() => this.nc.close().catch(() => undefined)), timer]);
  }
}

/** The sequence number in a sealed frame's head. */
function seqOf(frame: string): number {
  return Number(frame.slice(0, frame.indexOf('\n')).split(' ')[2]);
}
