// A small NATS client for one-shot commands: one plain TCP connection and the
// NATS text protocol (INFO, CONNECT, PING/PONG, SUB, UNSUB, PUB, MSG, HMSG, +OK,
// -ERR), enough for requests with no-responders, subscriptions and flush. No
// TLS, NKeys or JWTs, and the only reconnect is a request's on a dropped
// connection: Client.connect uses it only for a short-lived client (`oneShot`)
// whose connection needs none of these, and falls back to
// @nats-io/transport-node when the server asks for TLS. Why: loading and starting
// that library was most of what a one-shot `ckv get` spent beyond Node's own
// start (tools/bench.ts, one-shot row).
//
// Whatever the peer sends (garbage, a cut connection, a frame split anywhere, a
// huge length) ends in a CkvError for the calls waiting, never in a throw from an
// event handler.

import { createConnection, type Socket } from 'node:net';
import { CkvError, ErrorCode } from '../core/errors.js';
import { VERSION } from '../core/version.js';
import { randomFill } from './random.js';
import type { Subscription, Transport } from './client.js';

/** A control line (INFO can be long: a big cluster's connect_urls) longer than this ends the connection. */
const CONTROL_LINE_BYTES_MAX = 64 * 1024;
/** Payloads up to the server's max_payload are taken; its INFO may not say more than this. */
const PAYLOAD_BYTES_MAX = 64 * 1024 * 1024;
const NATS_PORT_DEFAULT = 4222;
const CRLF = Buffer.from('\r\n', 'latin1');
const EMPTY = Buffer.alloc(0);

/** What connectWire needs: server URLs without credentials, and the user/password or token to present. */
export interface WireOptions {
  servers: string[];
  user?: string;
  pass?: string;
  token?: string;
  name?: string;
  /** Every server tried within this many ms, in all. */
  budgetMs: number;
}

/** host and port of a nats:// URL (or of host[:port]); null for any other scheme (tls://, ws://). */
function plainNatsAddress(url: string): { host: string; port: number } | null {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(url) ? url : `nats://${url}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    return null;
  }
  if (u.protocol !== 'nats:' || u.hostname === '') return null;
  const port = u.port === '' ? NATS_PORT_DEFAULT : Number(u.port);
  // (URL keeps an IPv6 address in brackets; net wants it bare.)
  return { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port };
}

/** Why an attempt at one server failed: `auth` when the server refused the credentials. */
class AttemptError extends Error {
  constructor(
    message: string,
    readonly auth = false,
  ) {
    super(message);
  }
}

interface Pending {
  subject: string;
  resolve(data: Uint8Array): void;
  reject(err: CkvError): void;
  timer: ReturnType<typeof setTimeout>;
}

type OnMsg = (data: Uint8Array, status: number) => void;

interface Sub {
  onMsg: OnMsg;
  /** Told why when the connection ends (requestMany's handler waits for replies that will not come). */
  onClosed?: (why: string) => void;
}

/**
 * Connect to one of o.servers (in random order, as the NATS library does) within the budget.
 * Resolves null for a URL other than nats:// or a server that asks for TLS (the caller then
 * uses the NATS library instead); rejects with
 * CkvError AUTH when a server refuses the credentials, UNAVAILABLE when none could be reached
 * (messages name the cause, not "cannot connect": the caller says that, and where).
 */
export async function connectWire(o: WireOptions): Promise<Transport | null> {
  const conn = await dial(o, o.budgetMs);
  return conn === null ? null : new Redialing(conn, o);
}

/**
 * What connectWire returns: a request that finds the connection dropped (a NATS restart, a
 * NATS node gone) connects again first, within its own timeout. Why: Client.call retries an
 * UNAVAILABLE with the same rid, which helps only on a live connection (the NATS library
 * reconnects by itself). Nothing else reconnects: subscriptions are not carried over, and
 * requestMany, subscribe and flush on a dropped connection fail UNAVAILABLE.
 */
class Redialing implements Transport {
  private closing = false;
  /** A reconnect under way, shared by the requests that wait for it. */
  private redial: Promise<void> | null = null;

  constructor(
    private conn: WireConnection,
    private readonly o: WireOptions,
  ) {}

  async request(subject: string, data: Uint8Array, opts: { timeout: number }): Promise<Uint8Array> {
    let timeout = opts.timeout;
    if (this.conn.isClosed && !this.closing) {
      const start = Date.now();
      await this.reconnect(timeout);
      timeout = Math.max(1, timeout - (Date.now() - start));
    }
    return this.conn.request(subject, data, { timeout });
  }

  requestMany(subject: string, data: Uint8Array, onReply: (err: CkvError | null, data: Uint8Array | null) => void): Subscription {
    return this.conn.requestMany(subject, data, onReply);
  }

  subscribe(subject: string, onMsg: (data: Uint8Array) => void): Subscription {
    return this.conn.subscribe(subject, onMsg);
  }

  flush(): Promise<void> {
    return this.conn.flush();
  }

  natsServerId(): string | undefined {
    return this.conn.natsServerId();
  }

  close(): Promise<void> {
    this.closing = true;
    return this.conn.close();
  }

  private reconnect(ms: number): Promise<void> {
    this.redial ??= dial(this.o, ms)
      .then(
        (conn) => {
          if (conn === null) throw new CkvError(ErrorCode.UNAVAILABLE, 'cannot reconnect to NATS: the server asks for TLS now');
          // (Closed meanwhile: the new connection is not wanted; the request fails on the old one.)
          if (this.closing) void conn.close();
          else this.conn = conn;
        },
        (err: CkvError) => {
          throw new CkvError(err.code, `cannot reconnect to NATS: ${err.message}`, { cause: err });
        },
      )
      .finally(() => (this.redial = null));
    return this.redial;
  }
}

/** connectWire's connection: a WireConnection, null where the NATS library must do it. */
async function dial(o: WireOptions, budgetMs: number): Promise<WireConnection | null> {
  const addresses = o.servers.map((s) => plainNatsAddress(s));
  if (addresses.some((a) => a === null)) return null;
  const order = (addresses as Array<{ host: string; port: number }>).map((a) => ({ a, r: Math.random() })).sort((x, y) => x.r - y.r).map((x) => x.a);
  const deadline = Date.now() + budgetMs;
  let last: AttemptError | null = null;
  for (let i = 0; i < order.length; i++) {
    const left = deadline - Date.now();
    if (left <= 0) break;
    // Each server still to try gets its share of what is left.
    const share = Math.max(1, Math.floor(left / (order.length - i)));
    const conn = new WireConnection(order[i]!, o);
    try {
      if (!(await conn.open(share))) return null;
      return conn;
    } catch (err) {
      last = err as AttemptError;
      if (last.auth) throw new CkvError(ErrorCode.AUTH, last.message);
    }
  }
  throw new CkvError(ErrorCode.UNAVAILABLE, last?.message ?? `no NATS server answered within ${budgetMs} ms`);
}

class WireConnection implements Transport {
  private socket: Socket | null = null;
  private buf: Buffer = EMPTY;
  private closed = false;
  private closedWhy = 'the NATS connection is closed';
  private maxPayload = 1024 * 1024;
  private serverId: string | undefined;
  private nextSid = 1;
  private readonly subs = new Map<number, Sub>();
  private readonly pongs: Array<(err: CkvError | null) => void> = [];
  /** Requests share one wildcard inbox subscription; each waits on its own token under it. */
  private readonly inbox = `_INBOX.${Buffer.from(randomFill(new Uint8Array(16))).toString('base64url')}.`;
  private inboxSid = 0;
  private nextToken = 1;
  private readonly requests = new Map<string, Pending>();
  /** While connecting: how the handshake ends (INFO seen, then PONG or -ERR). */
  private handshake: { info: boolean; done(err: AttemptError | null, tls?: boolean): void } | null = null;

  constructor(
    private readonly addr: { host: string; port: number },
    private readonly o: WireOptions,
  ) {}

  /** The NATS server's id, from its INFO. */
  natsServerId(): string | undefined {
    return this.serverId;
  }

  /** Ended (by either side): Redialing connects again. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Connect and shake hands within ms: true once the server answered our PING, false if it wants TLS. */
  open(ms: number): Promise<boolean> {
    const where = `${this.addr.host}:${this.addr.port}`;
    return new Promise<boolean>((resolve, reject) => {
      const socket = createConnection(this.addr.port, this.addr.host);
      this.socket = socket;
      socket.setNoDelay(true);
      const timer = setTimeout(() => finish(new AttemptError(`no answer from ${where} within ${ms} ms`)), ms);
      const finish = (err: AttemptError | null, tls = false): void => {
        if (this.handshake === null) return;
        this.handshake = null;
        clearTimeout(timer);
        if (err !== null || tls) {
          this.shut(err?.message ?? 'the server wants TLS');
          if (err !== null) reject(err);
          else resolve(false);
        } else resolve(true);
      };
      this.handshake = { info: false, done: finish };
      socket.on('data', (chunk: Buffer) => this.onData(chunk));
      // (Node's message names the address: "connect ECONNREFUSED 127.0.0.1:4222".)
      socket.on('error', (err) => {
        if (this.handshake !== null) finish(new AttemptError(err.message));
        else this.shut(err.message);
      });
      socket.on('close', () => {
        if (this.handshake !== null) finish(new AttemptError(`${where} closed the connection`));
        else this.shut('the NATS connection was closed');
      });
    });
  }

  // ---- Transport ----

  request(subject: string, data: Uint8Array, opts: { timeout: number }): Promise<Uint8Array> {
    return new Promise<Uint8Array>((resolve, reject) => {
      if (this.closed) return reject(new CkvError(ErrorCode.UNAVAILABLE, `NATS request on ${subject} failed: ${this.closedWhy}`));
      // (Replies to it are routed by their token in onMessage.)
      if (this.inboxSid === 0) this.inboxSid = this.sub(`${this.inbox}*`, () => undefined);
      const token = String(this.nextToken++);
      const timer = setTimeout(() => {
        this.requests.delete(token);
        reject(new CkvError(ErrorCode.TIMEOUT, `no reply on ${subject} within ${opts.timeout} ms`));
      }, opts.timeout);
      this.requests.set(token, { subject, resolve, reject, timer });
      const err = this.pub(subject, `${this.inbox}${token}`, data);
      if (err !== null) {
        clearTimeout(timer);
        this.requests.delete(token);
        reject(err);
      }
    });
  }

  requestMany(subject: string, data: Uint8Array, onReply: (err: CkvError | null, data: Uint8Array | null) => void): Subscription {
    const inbox = `_INBOX.${Buffer.from(randomFill(new Uint8Array(16))).toString('base64url')}`;
    const sid = this.sub(
      inbox,
      (reply, status) => {
        if (status === 503) onReply(new CkvError(ErrorCode.UNAVAILABLE, `no server is listening on ${subject}`), null);
        else onReply(null, reply);
      },
      (why) => onReply(new CkvError(ErrorCode.UNAVAILABLE, `NATS request on ${subject} failed: ${why}`), null),
    );
    const err = this.pub(subject, inbox, data);
    if (err !== null) queueMicrotask(() => onReply(err, null));
    return { unsubscribe: () => this.unsub(sid) };
  }

  subscribe(subject: string, onMsg: (data: Uint8Array) => void): Subscription {
    const sid = this.sub(subject, (data, status) => {
      if (status === 0) onMsg(data);
    });
    return { unsubscribe: () => this.unsub(sid) };
  }

  flush(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.closed) return reject(new CkvError(ErrorCode.UNAVAILABLE, `NATS flush failed: ${this.closedWhy}`));
      this.pongs.push((err) => (err === null ? resolve() : reject(err)));
      this.write('PING\r\n');
    });
  }

  close(): Promise<void> {
    // (Every call has had its answer or fails now: nothing written is still needed.)
    this.shut('the NATS connection was closed');
    return Promise.resolve();
  }

  // ---- protocol ----

  private sub(subject: string, onMsg: OnMsg, onClosed?: (why: string) => void): number {
    const sid = this.nextSid++;
    this.subs.set(sid, onClosed === undefined ? { onMsg } : { onMsg, onClosed });
    this.write(`SUB ${subject} ${sid}\r\n`);
    return sid;
  }

  private unsub(sid: number): void {
    if (!this.subs.delete(sid)) return;
    this.write(`UNSUB ${sid}\r\n`);
  }

  /** Publish; a CkvError instead when it cannot go. */
  private pub(subject: string, reply: string, data: Uint8Array): CkvError | null {
    if (this.closed) return new CkvError(ErrorCode.UNAVAILABLE, `NATS request on ${subject} failed: ${this.closedWhy}`);
    if (data.length > this.maxPayload) return new CkvError(ErrorCode.TOO_LARGE, `a request of ${data.length} bytes is larger than the NATS server takes (max_payload ${this.maxPayload})`);
    const head = Buffer.from(`PUB ${subject} ${reply} ${data.length}\r\n`, 'utf8');
    const frame = Buffer.allocUnsafe(head.length + data.length + 2);
    head.copy(frame, 0);
    frame.set(data, head.length);
    CRLF.copy(frame, head.length + data.length);
    this.socket!.write(frame);
    return null;
  }

  /** UTF-8, as the NATS library writes: CONNECT's user, pass and auth_token may be any text. */
  private write(s: string): void {
    if (!this.closed && this.socket !== null) this.socket.write(s, 'utf8');
  }

  /** End the connection: every call waiting fails with why. */
  private shut(why: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closedWhy = why;
    for (const [, p] of this.requests) {
      clearTimeout(p.timer);
      p.reject(new CkvError(ErrorCode.UNAVAILABLE, `NATS request on ${p.subject} failed: ${why}`));
    }
    this.requests.clear();
    for (const f of this.pongs.splice(0)) f(new CkvError(ErrorCode.UNAVAILABLE, `NATS flush failed: ${why}`));
    const subs = [...this.subs.values()];
    this.subs.clear();
    const hs = this.handshake;
    if (hs !== null) hs.done(new AttemptError(why));
    this.socket?.destroy();
    // Last: these are the caller's handlers (one that unsubscribes finds nothing left to write).
    for (const s of subs) s.onClosed?.(why);
  }

  /** Bytes from the server: every whole frame is handled, the rest kept for the next chunk. */
  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let b = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    let pos = 0;
    try {
      for (;;) {
        const eol = b.indexOf(CRLF, pos);
        if (eol < 0) {
          if (b.length - pos > CONTROL_LINE_BYTES_MAX) throw new Error('a protocol line is too long');
          break;
        }
        if (eol - pos > CONTROL_LINE_BYTES_MAX) throw new Error('a protocol line is too long');
        const line = b.toString('latin1', pos, eol);
        const op = /^\S*/.exec(line)![0].toUpperCase();
        if (op === 'MSG' || op === 'HMSG') {
          const m = this.msgArgs(op, line);
          const start = eol + 2;
          if (b.length < start + m.total + 2) break; // the rest of it is still on its way
          if (b[start + m.total] !== 0x0d || b[start + m.total + 1] !== 0x0a) throw new Error(`a ${op} is not followed by CRLF`);
          // A copy: the reply outlives this chunk.
          const status = m.hdr > 0 ? headerStatus(b.toString('latin1', start, start + m.hdr)) : 0;
          const data = new Uint8Array(b.subarray(start + m.hdr, start + m.total));
          pos = start + m.total + 2;
          this.onMessage(m.subject, m.sid, data, status);
        } else {
          pos = eol + 2;
          this.onControl(op, line);
        }
        if (this.closed) return;
      }
    } catch (err) {
      this.shut(`the NATS server sent what is not the NATS protocol: ${(err as Error).message}`);
      return;
    }
    this.buf = pos >= b.length ? EMPTY : b.subarray(pos);
  }

  private msgArgs(op: string, line: string): { subject: string; sid: number; hdr: number; total: number } {
    // MSG subject sid [reply] bytes; HMSG subject sid [reply] header-bytes total-bytes
    const a = line.split(/[ \t]+/);
    const fixed = op === 'MSG' ? 4 : 5;
    if (this.handshake !== null || a.length < fixed || a.length > fixed + 1) throw new Error(`a malformed ${op}`);
    const total = nat(a[a.length - 1]!);
    const hdr = op === 'MSG' ? 0 : nat(a[a.length - 2]!);
    const sid = nat(a[2]!);
    if (!Number.isSafeInteger(total) || !Number.isSafeInteger(hdr) || !Number.isSafeInteger(sid) || hdr > total || total > PAYLOAD_BYTES_MAX) throw new Error(`a malformed ${op}`);
    return { subject: a[1]!, sid, hdr, total };
  }

  private onMessage(subject: string, sid: number, data: Uint8Array, status: number): void {
    if (sid === this.inboxSid && subject.startsWith(this.inbox)) {
      const token = subject.slice(this.inbox.length);
      const p = this.requests.get(token);
      if (p === undefined) return; // timed out already
      this.requests.delete(token);
      clearTimeout(p.timer);
      if (status === 503) p.reject(new CkvError(ErrorCode.UNAVAILABLE, `no server is listening on ${p.subject}`));
      else p.resolve(data);
      return;
    }
    this.subs.get(sid)?.onMsg(data, status);
  }

  private onControl(op: string, line: string): void {
    const hs = this.handshake;
    switch (op) {
      case 'INFO': {
        const info = JSON.parse(line.slice(4)) as unknown;
        if (typeof info !== 'object' || info === null) throw new Error('INFO is not an object');
        const i = info as { tls_required?: unknown; max_payload?: unknown; server_id?: unknown };
        if (typeof i.max_payload === 'number' && Number.isSafeInteger(i.max_payload) && i.max_payload > 0) this.maxPayload = Math.min(i.max_payload, PAYLOAD_BYTES_MAX);
        if (typeof i.server_id === 'string') this.serverId = i.server_id;
        if (hs === null || hs.info) return; // (a later INFO: cluster changes; nothing to do)
        hs.info = true;
        if (i.tls_required === true) return hs.done(null, true);
        this.write(`CONNECT ${this.connectJson()}\r\nPING\r\n`);
        return;
      }
      case 'PING':
        return this.write('PONG\r\n');
      case 'PONG':
        if (hs !== null) return hs.info ? hs.done(null) : undefined;
        return this.pongs.shift()?.(null);
      case '+OK':
        return;
      case '-ERR': {
        const msg = line.slice(4).trim().replace(/^'(.*)'$/, '$1');
        const auth = /authorization violation|authentication (timeout|expired|revoked)/i.test(msg);
        if (hs !== null) return hs.done(new AttemptError(msg, auth));
        if (/permissions violation/i.test(msg)) return this.permissionRefused(msg);
        // Any other error ends the connection (the server closes it too).
        return this.shut(`NATS error: ${msg}`);
      }
      default:
        if (hs !== null && !hs.info) throw new Error('no INFO first');
        throw new Error(`unknown operation ${JSON.stringify(op.slice(0, 16))}`);
    }
  }

  /** The server refused one publish or subscription (the connection stays): fail what it names. */
  private permissionRefused(msg: string): void {
    const m = /for (publish|subscription) to "?([^"\s]+)"?/i.exec(msg);
    for (const [token, p] of this.requests) {
      if (m !== null && m[1]!.toLowerCase() === 'publish' && m[2] !== p.subject) continue;
      this.requests.delete(token);
      clearTimeout(p.timer);
      p.reject(new CkvError(ErrorCode.AUTH, `NATS refused: ${msg}`));
    }
  }

  private connectJson(): string {
    const o = this.o;
    return JSON.stringify({
      verbose: false,
      pedantic: false,
      protocol: 1,
      headers: true,
      no_responders: true,
      lang: 'ckv',
      version: VERSION,
      ...(o.name !== undefined ? { name: o.name } : {}),
      ...(o.user !== undefined ? { user: o.user, pass: o.pass ?? '' } : {}),
      ...(o.token !== undefined ? { auth_token: o.token } : {}),
    });
  }
}

/** A size or sid: digits only (Number() would take "0x2", "+2", "2.0"); NaN otherwise. */
function nat(s: string): number {
  return /^\d+$/.test(s) ? Number(s) : NaN;
}

/** The status code of a header block ("NATS/1.0 503 ..."), 0 when there is none (three digits, then a space or the line's end). */
function headerStatus(block: string): number {
  const m = /^NATS\/1\.0[ \t]+(\d{3})(?=[ \t\r\n]|$)/.exec(block);
  return m === null ? 0 : Number(m[1]);
}
