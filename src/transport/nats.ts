// The server's NATS adapter: peer messages, client request subjects, and
// publications (events, members). The driver sees only the ServerTransport port.

import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Msg } from '../core/messages.js';
import { peerMessageProblem } from './peer-validate.js';
import { subjects } from './subjects.js';

export type Respond = (reply: Uint8Array | string) => void;
export type RequestHandler = (data: Uint8Array, respond: Respond) => void;

export interface ServerTransport {
  sendPeer(m: Msg): void;
  onPeer(handler: (m: Msg) => void): void;
  publish(subject: string, data: Uint8Array | string): void;
  /** Serve a request subject; queue groups share the load. Returns a stop function. */
  serve(subject: string, queue: string | undefined, handler: RequestHandler): () => void;
  /** Subscribe to a plain subject (snapshot transfer). */
  subscribe(subject: string, handler: (data: Uint8Array, respond: Respond | null) => void): () => void;
  request(subject: string, data: Uint8Array | string, timeoutMs: number): Promise<Uint8Array>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

const decoder = new TextDecoder();
/** Time allowed to flush on close, in ms. */
export const CLOSE_DRAIN_MS_MAX = 2_000;

export class NatsTransport implements ServerTransport {
  private nc: NatsConnection;
  private subs: Subscription[] = [];
  private s: ReturnType<typeof subjects>;
  private id: number;
  private onBadPeerMessage: (err: unknown) => void;

  constructor(nc: NatsConnection, cluster: string, id: number, onBadPeerMessage: (err: unknown) => void) {
    this.nc = nc;
    this.s = subjects(cluster);
    this.id = id;
    this.onBadPeerMessage = onBadPeerMessage;
  }

  sendPeer(m: Msg): void {
    // A message NATS refuses (too large, connection closed) is lost like any other: the
    // protocol recovers from loss. It must never take the server down.
    try {
      this.nc.publish(this.s.peer(m), JSON.stringify(m));
    } catch (err) {
      this.onBadPeerMessage(err);
    }
  }

  onPeer(handler: (m: Msg) => void): void {
    for (const subject of this.s.peerListen(this.id)) {
      this.subs.push(
        this.nc.subscribe(subject, {
          callback: (err, msg) => {
            if (err) return;
            let m: Msg;
            try {
              const raw: unknown = JSON.parse(decoder.decode(msg.data));
              const problem = peerMessageProblem(raw);
              if (problem !== null) throw new Error(`not a peer message: ${problem}`);
              m = raw as Msg;
            } catch (e) {
              this.onBadPeerMessage(e);
              return;
            }
            try {
              handler(m);
            } catch (err) {
              // An exception escaping a NATS callback would stop the connection's reader.
              this.onBadPeerMessage(err);
            }
          },
        }),
      );
    }
  }

  publish(subject: string, data: Uint8Array | string): void {
    this.nc.publish(subject, data);
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
              this.onBadPeerMessage(e);
            }
          });
        } catch (e) {
          this.onBadPeerMessage(e);
        }
      },
    });
    this.subs.push(sub);
    return () => {
      sub.unsubscribe();
      this.subs = this.subs.filter((x) => x !== sub);
    };
  }

  subscribe(subject: string, handler: (data: Uint8Array, respond: Respond | null) => void): () => void {
    const sub = this.nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return;
        const respond = msg.reply
          ? (r: Uint8Array | string) => {
              try {
                msg.respond(r);
              } catch (e) {
                this.onBadPeerMessage(e);
              }
            }
          : null;
        try {
          handler(msg.data, respond);
        } catch (e) {
          this.onBadPeerMessage(e);
        }
      },
    });
    this.subs.push(sub);
    return () => sub.unsubscribe();
  }

  async request(subject: string, data: Uint8Array | string, timeoutMs: number): Promise<Uint8Array> {
    const r = await this.nc.request(subject, data, { timeout: timeoutMs });
    return r.data;
  }

  flush(): Promise<void> {
    return this.nc.flush();
  }

  async close(): Promise<void> {
    for (const s of this.subs) s.unsubscribe();
    this.subs = [];
    // Drain flushes what we published; bounded, and never an error on the way out.
    const timer = new Promise<void>((r) => setTimeout(r, CLOSE_DRAIN_MS_MAX).unref());
    await Promise.race([this.nc.drain().catch(() => this.nc.close().catch(() => undefined)), timer]);
  }
}
