// The ckv client library: requests with the causal token, retries with the same
// request id, and change-event watches with replay. The NATS connection is an
// injected Transport, so tests can run it against anything and the one-shot CLI
// loads the NATS library only when it really connects.

import type { NatsConnection } from '@nats-io/transport-node';
// (The CLI's bundle loads os on first use: tools/bundle-cli.ts.)
import { hostname } from 'node:os';
import { acquire, LOCK_TTL_MS_DEFAULT, LOCK_TTL_MS_MIN, type Lock, type LockOptions } from './lock.js';
import { keepLease, type Lease, type LeaseInfo } from './lease.js';
import { randomFill } from './random.js';
import { leaseIdOf } from '../core/state.js';
import { CkvError, ErrorCode, ERROR_CODES, type WireError } from '../core/errors.js';
import { isNatsAuthError, natsConnectionOptions, redactUrl, splitUrlCredentials, type NatsAuth } from '../transport/nats-auth.js';
import { localReadSubject } from '../transport/subjects.js';

export { CkvError };
import {
  CLUSTER_DEFAULT,
  CLUSTER_NAME_PATTERN,
  CLUSTER_NAME_RULE,
  LOCAL_READ_OFF_MS,
  LIST_LIMIT_DEFAULT,
  LEASE_KEY_PREFIX,
  LIST_LIMIT_MAX,
  NATS_URL_DEFAULT,
  REPLAY_EVENTS_MAX,
  REQUEST_TIMEOUT_MS_DEFAULT,
  REQUEST_TIMEOUT_MS_MAX,
} from '../core/limits.js';
import { isWrite, validateRequest } from '../core/validate.js';
import type { CheckpointMeta } from '../core/records.js';
import type { ChangeEvent, Consistency, KeyValue, NodeStatus, Reply, ReplyBody, Request, SnapshotPage, ClientWriteOp } from '../core/wire.js';

// ---------------------------------------------------------------------------
// Errors

/** A cas (alone or inside a batch) found another value: nothing was written. */
export class CasMismatchError extends CkvError {
  /** The value the key holds now (null: absent), when the server says. */
  readonly current: string | null | undefined;
  /** Index in the batch of the op that failed (0 for a lone cas). */
  readonly failed: number;
  constructor(message: string, current: string | null | undefined, failed: number) {
    super(ErrorCode.CAS_MISMATCH, message);
    this.current = current;
    this.failed = failed;
    this.name = 'CasMismatchError';
  }
}

/** What was asked for is older than the history the server keeps (`oldest`: its oldest index, when it says). */
export class CompactedError extends CkvError {
  readonly oldest: number | undefined;
  constructor(message: string, oldest: number | undefined) {
    super(ErrorCode.COMPACTED, message);
    this.oldest = oldest;
    this.name = 'CompactedError';
  }
}

/** Worth another try (same rid) while the caller's budget lasts. */
const RETRYABLE: ReadonlySet<ErrorCode> = new Set([ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT]);

// ---------------------------------------------------------------------------
// Transport

export interface Subscription {
  unsubscribe(): void;
}

/**
 * What the client needs from NATS. Implementations reject with CkvError:
 * UNAVAILABLE when nobody listens (NATS no-responders) or the connection is
 * down, TIMEOUT when no reply came in time.
 */
export interface Transport {
  request(subject: string, data: Uint8Array, opts: { timeout: number }): Promise<Uint8Array>;
  /**
   * Publish one request and hand every reply to onReply until the returned
   * subscription is unsubscribed. err is set (and data null) on no-responders.
   */
  requestMany(subject: string, data: Uint8Array, onReply: (err: CkvError | null, data: Uint8Array | null) => void): Subscription;
  subscribe(subject: string, onMsg: (data: Uint8Array) => void): Subscription;
  /** Resolves once the NATS server has processed everything sent so far (subscriptions included). */
  flush(): Promise<void>;
  close(): Promise<void>;
  /** The id of the NATS server this connection is on (its INFO's server_id), if known: reads go to a ckv server on it first. */
  natsServerId?(): string | undefined;
}

function randomToken(bytes: number): string {
  return Buffer.from(randomFill(new Uint8Array(bytes))).toString('base64url');
}

function transportError(err: unknown, subject: string, timeoutMs: number): CkvError {
  if (err instanceof CkvError) return err;
  const e = err as { name?: string; message?: string; isNoResponders?: () => boolean };
  // Matched by name so that this file needs no runtime import of the NATS library.
  if (e?.name === 'TimeoutError') return new CkvError(ErrorCode.TIMEOUT, `no reply on ${subject} within ${timeoutMs} ms`, { cause: err });
  if (e?.name === 'NoResponders' || (typeof e?.isNoResponders === 'function' && e.isNoResponders())) {
    return new CkvError(ErrorCode.UNAVAILABLE, `no server is listening on ${subject}`, { cause: err });
  }
  // (The library's publish refuses it before sending: another try would be refused too.)
  if (/max_payload size exceeded/.test(e?.message ?? '')) return new CkvError(ErrorCode.TOO_LARGE, `a request on ${subject} is larger than the NATS server takes (its max_payload)`, { cause: err });
  return new CkvError(ErrorCode.UNAVAILABLE, `NATS request on ${subject} failed: ${e?.message ?? String(err)}`, { cause: err });
}

/** Adapts a connection from @nats-io/transport-node. The caller keeps owning nc unless told otherwise. */
export function natsTransport(nc: NatsConnection, opts: { closeConnection?: boolean } = {}): Transport {
  return {
    async request(subject, data, { timeout }) {
      try {
        return (await nc.request(subject, data, { timeout })).data;
      } catch (err) {
        throw transportError(err, subject, timeout);
      }
    },
    requestMany(subject, data, onReply) {
      // Our own inbox, so that stopping is one unsubscribe and leaves no timer behind.
      const inbox = `_INBOX.${randomToken(16)}`;
      const sub = nc.subscribe(inbox, {
        callback: (err, msg) => {
          if (err) return onReply(transportError(err, subject, 0), null);
          if (msg.data.length === 0 && msg.headers?.code === 503) {
            return onReply(new CkvError(ErrorCode.UNAVAILABLE, `no server is listening on ${subject}`), null);
          }
          onReply(null, msg.data);
        },
      });
      nc.publish(subject, data, { reply: inbox });
      return sub;
    },
    subscribe(subject, onMsg) {
      return nc.subscribe(subject, { callback: (err, msg) => void (err ? undefined : onMsg(msg.data)) });
    },
    flush: () => nc.flush(),
    natsServerId: () => nc.info?.server_id,
    async close() {
      if (opts.closeConnection) await nc.close();
    },
  };
}

// ---------------------------------------------------------------------------
// Client

export interface ClientOptions {
  /** Cluster name: the second token of every subject. Default "ckv". */
  cluster?: string;
  /** Budget of one call, retries included, in ms. Default 5000. */
  timeout?: number;
  /** Initial causal token (e.g. from another program). Default 0. */
  after?: number;
  /**
   * No call runs past this moment (ms since the epoch, as Date.now()), whatever its own
   * budget: a one-shot program's budget for its whole run. Default: none.
   */
  deadline?: number;
}

export interface ConnectOptions extends ClientOptions {
  /** NATS server URL(s). Default nats://127.0.0.1:4222. nats://USER:PASSWORD@HOST is understood. */
  servers?: string | string[];
  /** Credentials and TLS for NATS (see resolveNatsAuth); URL credentials count when this names none. */
  auth?: NatsAuth;
  /** Connection name shown by NATS monitoring. */
  name?: string;
  /**
   * The connection must be made by this moment (ms since the epoch); default: within
   * timeout, and by the deadline if there is one.
   */
  connectBy?: number;
  /**
   * A short-lived client (one command, then close): where the connection needs no TLS, NKey or
   * .creds, it is made with ckv's own small NATS client (src/client/nats-wire.ts), which starts
   * in a few ms and reconnects only for a request that finds its connection dropped. The NATS
   * library is used otherwise, and when the server asks for TLS.
   */
  oneShot?: boolean;
}

export interface ReadOptions {
  /** "causal" (default): any server, once it holds the token. "strong": linearizable, via the coordinator. */
  consistency?: Consistency;
}

export interface GetOptions extends ReadOptions {
  /** The key as of this revision (a log index), while the history holds it; CompactedError if not. */
  rev?: number;
}

export interface ListOptions extends ReadOptions {
  /** First key of the page (inclusive), usually the previous page's `next`. */
  start?: string;
  /** Keys per page: 1..LIST_LIMIT_MAX, default LIST_LIMIT_DEFAULT. */
  limit?: number;
}

export interface HistoryOptions {
  /** Most changes to return (the newest), 1..HISTORY_LIMIT_MAX, default HISTORY_LIMIT_DEFAULT. */
  limit?: number;
}

export interface History {
  /** The key's changes, oldest first. */
  events: ChangeEvent[];
  /** Every change to the key at a log index >= since is in `events` (older ones are not kept). */
  since: number;
  /** The log index the answer was read at. */
  index: number;
}

export interface ListPage {
  items: KeyValue[];
  /** Pass as `start` for the next page; null when this was the last. */
  next: string | null;
}

export interface WriteOptions {
  /**
   * Time to live in ms: the coordinator deletes the key once this long has passed since it
   * applied the write (a write to the key since counts anew), never sooner; a coordinator
   * that takes over starts the countdown again. TTL_MS_MIN..TTL_MS_MAX.
   */
  ttl?: number;
  /** Attach the key to this lease (a lease's id): it is deleted when the lease is revoked or expires. No ttl then. */
  lease?: number;
}

function ttlOf(opts: WriteOptions): { ttl?: number; lease?: number } {
  return { ...(opts.ttl !== undefined ? { ttl: opts.ttl } : {}), ...(opts.lease !== undefined ? { lease: opts.lease } : {}) };
}

/** Where a write landed: its log index and Lamport timestamp. */
export interface WriteAck {
  index: number;
  ts: number;
}

export interface WatchOptions {
  /** Replay events from this log index first, then go live with no gap and no duplicate. */
  from?: number;
  /**
   * First every current value under the target, as events marked `initial: true` (index =
   * the key's rev), then the changes that follow, with no gap (as NATS KV watchers do). Not
   * with from.
   */
  initial?: boolean;
  /**
   * Called in order with the events, once the initial values and the changes read meanwhile
   * are out, with the index they reach: every later event is at an index above it.
   */
  onInitial?: (index: number) => void;
  /**
   * If the events the watch needs are gone at every server (COMPACTED), start again from the
   * current values (as with initial, onInitial called again) instead of failing.
   */
  resync?: boolean;
}

/** An async iterator of change events; stop() (or breaking out of for-await) ends it. */
export interface Watch extends AsyncIterableIterator<ChangeEvent> {
  stop(): void;
}

export interface SnapshotOptions {
  /** The server whose checkpoint is read; default: the coordinator. */
  server?: number;
}

/** One server's checkpoint, as a backup reads it: its meta and counts first, then its pages. */
export interface Snapshot {
  server: number;
  meta: CheckpointMeta;
  counts: { keys: number; rids: number };
  /**
   * Every key (phase "kv", in key order), then every remembered request id (phase "rids").
   * Throws CkvError UNAVAILABLE if the server's checkpoint changed meanwhile (start again).
   */
  pages(): AsyncIterableIterator<{ phase: 'kv' | 'rids'; items: Array<[string, unknown]> }>;
}

export { CLUSTER_DEFAULT, NATS_URL_DEFAULT };
/** Same rule as the server's cluster names (src/transport/subjects.ts). */

/** Longest single attempt. A request sent to a server that dies gets no reply at all: this
 * bounds how long a client waits on it before retrying elsewhere (failover takes ~0.5 s). */
const ATTEMPT_MS_MAX = 800;
/** A read's attempt on the local subject (at most half its budget). */
const LOCAL_ATTEMPT_MS_MAX = 250;
/** What a read on the local subject can get that another server may answer better. */
const LOCAL_READ_FALLBACK: ReadonlySet<ErrorCode> = new Set([ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.COMPACTED, ErrorCode.AUTH]);

/** The server's hold time is the attempt's minus this share, so its TIMEOUT reply beats ours. */
const SERVER_TIMEOUT_MARGIN_MS_MAX = 100;
/** Backoff between attempts: doubles from MIN up to MAX, with jitter. */
const RETRY_BACKOFF_MS_MIN = 20;
const RETRY_BACKOFF_MS_MAX = 250;
/** delPrefix gives up after this many entries (a billion keys), should writers keep adding under the prefix. */
const PREFIX_DELETE_ROUNDS_MAX = 1_000_000;
/** A strong read of this key (absent or not) fixes the token a snapshot must reach. */
const SNAPSHOT_TOKEN_KEY = 'ckv-snapshot';
/** status: gather replies for this long (servers answer independently). */
export const STATUS_WINDOW_MS = 300;
/** status: after a late first reply, wait this much longer for the others. */
const STATUS_GRACE_MS = 50;
/** A watch stops taking live events while this many wait for the consumer (replay fills the gap later). */
const WATCH_BUFFER_EVENTS_MAX = 10_000;
/** A replay refused as COMPACTED is asked again (the read queue group picks a server at random) this often. */
const WATCH_COMPACTED_TRIES_MAX = 6;
/** Resyncs in a row (the current values read, then their follow-up compacted again) before a watch gives up. */
const WATCH_RESYNC_TRIES_MAX = 3;
/** Random bytes in a request id: 128 bits, 22 base64url characters (within RID_BYTES_MAX). */
const RID_RANDOM_BYTES = 16;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

type OkReply = Extract<Reply, { ok: true }>;

function isNat(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function decodeReply(data: Uint8Array, subject: string): Reply {
  let r: unknown;
  try {
    r = JSON.parse(decoder.decode(data));
  } catch {
    throw new CkvError(ErrorCode.INTERNAL, `reply on ${subject} is not JSON`);
  }
  const o = r as Record<string, unknown>;
  if (typeof o !== 'object' || o === null || typeof o.ok !== 'boolean' || !isNat(o.ts)) {
    throw new CkvError(ErrorCode.INTERNAL, `reply on ${subject} is not a ckv reply`);
  }
  return r as Reply;
}

/** A read's value as bytes: base64-decoded when it is bytes (b64), else its UTF-8. */
export function valueBytes(kv: { value: string; b64?: true }): Uint8Array {
  return kv.b64 === true ? new Uint8Array(Buffer.from(kv.value, 'base64')) : new TextEncoder().encode(kv.value);
}

/** value (and expect) as the wire carries them: text as it is, bytes as base64 with b64. */
export function wireValues(value: string | Uint8Array | null, expect?: string | Uint8Array | null): { value: string | null; expect?: string | null; b64?: true } {
  const bytes = value instanceof Uint8Array || expect instanceof Uint8Array;
  const enc = (v: string | Uint8Array | null): string | null => (v === null ? null : typeof v === 'string' ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64'));
  if (bytes && (typeof value === 'string' || typeof expect === 'string')) throw new CkvError(ErrorCode.BAD_REQUEST, 'expect and value must both be text or both be bytes (Uint8Array)');
  return { value: enc(value), ...(expect !== undefined ? { expect: enc(expect) } : {}), ...(bytes ? { b64: true as const } : {}) };
}

function replyError(reply: Extract<Reply, { ok: false }>): CkvError {
  const e: Partial<WireError> = reply.error ?? {};
  const code = ERROR_CODES.includes(e.code as ErrorCode) ? (e.code as ErrorCode) : ErrorCode.INTERNAL;
  const message = typeof e.message === 'string' && e.message ? e.message : `server error ${String(e.code)}`;
  if (code === ErrorCode.CAS_MISMATCH) return new CasMismatchError(message, reply.current, reply.failed ?? 0);
  if (code === ErrorCode.COMPACTED) return new CompactedError(message, isNat(reply.oldest) ? reply.oldest : undefined);
  return new CkvError(code, message);
}

export class Client {
  readonly cluster: string;
  private cid: string;
  /** Until when reads skip the local read subject (ms since the epoch). */
  private localReadOffUntil = 0;
  readonly timeout: number;
  /** See ClientOptions.deadline (Infinity: none). */
  readonly deadline: number;
  private readonly transport: Transport;
  private readonly subject: { read: string; write: string; admin: string; ev: string };
  private ts: number;
  private closed = false;
  private ownsTransport = false;
  private readonly watches = new Set<WatchImpl>();

  /** Connect to NATS and return a client that owns (and on close() closes) the connection. */
  static async connect(opts: ConnectOptions = {}): Promise<Client> {
    const list = opts.servers ?? NATS_URL_DEFAULT;
    let split: ReturnType<typeof splitUrlCredentials>;
    try {
      split = splitUrlCredentials(Array.isArray(list) ? list : list.split(','));
    } catch (err) {
      throw new CkvError(ErrorCode.BAD_REQUEST, (err as Error).message);
    }
    const { servers, ...fromUrl } = split;
    const named = opts.auth !== undefined && (opts.auth.user !== undefined || opts.auth.token !== undefined || opts.auth.nkeySeed !== undefined || opts.auth.creds !== undefined);
    const auth: NatsAuth = { ...(named ? {} : fromUrl.user !== undefined ? { user: fromUrl.user, pass: fromUrl.pass ?? '' } : fromUrl.token !== undefined ? { token: fromUrl.token } : {}), ...opts.auth };
    const where = servers.map(redactUrl).join(',');
    const by = Math.min(opts.connectBy ?? Infinity, opts.deadline ?? Infinity);
    const budgetMs = (): number => Math.max(1, Math.floor(Math.min(opts.timeout ?? REQUEST_TIMEOUT_MS_DEFAULT, by - Date.now())));
    if (opts.oneShot === true && auth.nkeySeed === undefined && auth.creds === undefined && auth.tls === undefined) {
      const { connectWire } = await import('./nats-wire.js');
      let t: Transport | null;
      try {
        t = await connectWire({ servers, ...auth, ...(opts.name ? { name: opts.name } : {}), budgetMs: budgetMs() });
      } catch (err) {
        const e = err as CkvError;
        throw e.code === ErrorCode.AUTH ? new CkvError(ErrorCode.AUTH, `NATS at ${where} refused the credentials: ${e.message}`, { cause: err }) : new CkvError(ErrorCode.UNAVAILABLE, `cannot connect to NATS at ${where}: ${e.message}`, { cause: err });
      }
      // (null: a tls:// URL, or the server wants TLS: the library does that.)
      if (t !== null) {
        const client = new Client(t, opts);
        client.ownsTransport = true;
        return client;
      }
    }
    // Loaded here, not at the top: the CLI's usage errors and --help never pay for the NATS library.
    const { connectWithin, authenticators } = await import('./nats-connect.js');
    const budget = budgetMs();
    let nc: NatsConnection;
    try {
      // Reconnect forever: a long-lived client rides out NATS restarts (calls fail UNAVAILABLE meanwhile).
      nc = await connectWithin({ servers, noAsyncTraces: true, maxReconnectAttempts: -1, ...(opts.name ? { name: opts.name } : {}), ...natsConnectionOptions(auth, authenticators) }, budget);
    } catch (err) {
      // (The library's messages name no secret; the URLs are redacted.)
      if (isNatsAuthError(err)) throw new CkvError(ErrorCode.AUTH, `NATS at ${where} refused the credentials: ${(err as Error).message}`, { cause: err });
      throw new CkvError(ErrorCode.UNAVAILABLE, `cannot connect to NATS at ${where}: ${(err as Error).message}`, { cause: err });
    }
    const client = new Client(natsTransport(nc, { closeConnection: true }), opts);
    client.ownsTransport = true;
    return client;
  }

  /** A client over a transport the caller owns: close() leaves the transport open. */
  constructor(transport: Transport, opts: ClientOptions = {}) {
    const cluster = opts.cluster ?? CLUSTER_DEFAULT;
    if (!CLUSTER_NAME_PATTERN.test(cluster)) throw new CkvError(ErrorCode.BAD_REQUEST, CLUSTER_NAME_RULE);
    const timeout = opts.timeout ?? REQUEST_TIMEOUT_MS_DEFAULT;
    if (!Number.isFinite(timeout) || timeout <= 0) throw new CkvError(ErrorCode.BAD_REQUEST, 'timeout must be a positive number of ms');
    const after = opts.after ?? 0;
    if (!isNat(after)) throw new CkvError(ErrorCode.BAD_REQUEST, 'after must be a non-negative integer');
    const deadline = opts.deadline ?? Infinity;
    if (Number.isNaN(deadline)) throw new CkvError(ErrorCode.BAD_REQUEST, 'deadline must be a time in ms since the epoch');
    this.transport = transport;
    this.deadline = deadline;
    this.cluster = cluster;
    this.timeout = timeout;
    this.ts = after;
    this.cid = '';
    const p = `ckv.${cluster}`;
    this.subject = { read: `${p}.read`, write: `${p}.write`, admin: `${p}.admin`, ev: `${p}.ev` };
  }

  /**
   * Where a read goes first: the read subject of the ckv servers on our own NATS server (a
   * NATS cluster spreads a queue group's requests over every node, 2 in 3 of them a route
   * away), or null (none known, or none there lately, or none answering).
   */
  private localReadSubject(): string | null {
    if (Date.now() < this.localReadOffUntil) return null;
    return localReadSubject(this.cluster, this.transport.natsServerId?.());
  }

  /** The causal token: the largest ts this client has seen. Never decreases. */
  get token(): number {
    return this.ts;
  }

  /** The cluster's identity, as the last server that answered told it ('' until one does). */
  get clusterId(): string {
    return this.cid;
  }

  /** Take in a token from elsewhere (another program's reply): later calls see at least its effects. */
  observe(ts: number): void {
    if (isNat(ts) && ts > this.ts) this.ts = ts;
  }

  /** The value of key, or null if it is absent (absence is an answer, not an error). */
  async get(key: string, opts: GetOptions = {}): Promise<KeyValue | null> {
    try {
      const r = await this.read({ op: 'get', key, ...consistency(opts), ...(opts.rev !== undefined ? { rev: opts.rev } : {}) }, opts);
      if (typeof r.value !== 'string') return null;
      return { key, value: r.value, rev: r.rev ?? 0, ...(r.ttl !== undefined ? { ttl: r.ttl } : {}), ...(r.b64 === true ? { b64: true as const } : {}), ...(isNat(r.lease) ? { lease: r.lease } : {}) };
    } catch (err) {
      if (err instanceof CkvError && err.code === ErrorCode.NOT_FOUND) return null;
      throw err;
    }
  }

  /** The value of key as bytes (a text value as its UTF-8), or null if it is absent. */
  async getBytes(key: string, opts: GetOptions = {}): Promise<Uint8Array | null> {
    const kv = await this.get(key, opts);
    return kv === null ? null : valueBytes(kv);
  }

  /** One entry per key, in order; null where absent. */
  async mget(keys: string[], opts: ReadOptions = {}): Promise<(KeyValue | null)[]> {
    const r = await this.read({ op: 'mget', keys, ...consistency(opts) }, opts);
    const values = r.values ?? [];
    return keys.map((_, i) => values[i] ?? null);
  }

  /** One page of the keys starting with prefix, in key order. */
  async list(prefix: string, opts: ListOptions = {}): Promise<ListPage> {
    const r = await this.read(
      {
        op: 'list',
        prefix,
        ...(opts.start !== undefined ? { start: opts.start } : {}),
        limit: opts.limit ?? LIST_LIMIT_DEFAULT,
        ...consistency(opts),
      },
      opts,
    );
    return { items: r.items ?? [], next: r.next ?? null };
  }

  /** The key's recent changes, as far back as the answering server still keeps events. */
  async history(key: string, opts: HistoryOptions = {}): Promise<History> {
    const r = await this.read({ op: 'history', key, ...(opts.limit !== undefined ? { limit: opts.limit } : {}) }, {});
    return { events: r.events ?? [], since: r.since ?? 1, index: r.index };
  }

  /**
   * Membership, for operators: add or remove one voter (a configuration entry, through the
   * coordinator, retried while it is busy or the server is still catching up). Idempotent.
   */
  async member(change: { add: number } | { remove: number }): Promise<WriteAck> {
    const r = await this.call(this.subject.write, { op: 'config', ...change });
    return { index: r.index, ts: r.ts };
  }

  /** Set key. With ttl (ms) the key is deleted once that long has passed since the write (never sooner). */
  put(key: string, value: string | Uint8Array, opts: WriteOptions = {}): Promise<WriteAck> {
    return this.write({ op: 'put', key, ...wireValues(value), ...ttlOf(opts) } as ClientWriteOp);
  }

  del(key: string): Promise<WriteAck> {
    return this.write({ op: 'del', key });
  }

  /**
   * Set key to value if it holds expect. expect null: the key must be absent;
   * value null: delete it. Throws CasMismatchError otherwise.
   */
  cas(key: string, expect: string | Uint8Array | null, value: string | Uint8Array | null, opts: WriteOptions = {}): Promise<WriteAck> {
    return this.write({ op: 'cas', key, ...wireValues(value, expect), ...ttlOf(opts) } as ClientWriteOp);
  }

  /** Several writes as one log entry: all applied, or none (a failing cas fails them all). */
  /**
   * Compare-and-set by revision: only if `key`'s revision (the log index of its last change,
   * `rev` of a read) is `rev`; 0 means absent. value null deletes. Unlike a compare of values
   * it sees a change that was changed back (ABA). CasMismatchError otherwise.
   */
  casRev(key: string, rev: number, value: string | Uint8Array | null, opts: WriteOptions = {}): Promise<WriteAck> {
    return this.write({ op: 'cas', key, expectRev: rev, ...wireValues(value), ...ttlOf(opts) } as ClientWriteOp);
  }

  /** Put only if `key` is absent (CasMismatchError if it exists). The ack's index is the key's revision. */
  create(key: string, value: string | Uint8Array, opts: WriteOptions = {}): Promise<WriteAck> {
    return this.write({ op: 'cas', key, expectRev: 0, ...wireValues(value), ...ttlOf(opts) } as ClientWriteOp);
  }

  /**
   * Hold the lock NAME (the key locks.NAME, with a ttl, refreshed while held): resolves once
   * acquired, with its fencing token; LockHeldError if it is held and opts.wait ran out.
   */
  async lock(name: string, opts: LockOptions = {}): Promise<Lock> {
    return this.holdKey(`locks.${name}`, opts.value ?? `${hostname()}:${process.pid}`, opts);
  }

  /** Grant a lease of ttl ms and keep it alive (every ttl/3) until revoked or stopped. */
  async lease(ttl: number): Promise<Lease> {
    const sentAt = Date.now();
    const id = await this.grant(ttl);
    return keepLease(this, id, ttl, sentAt);
  }

  /** Grant a lease of ttl ms (not kept alive: see lease()); resolves with its id. */
  async grant(ttl: number): Promise<number> {
    return (await this.write({ op: 'grant', ttl })).index;
  }

  /** Start lease id's countdown again. CkvError LEASE_NOT_FOUND if it is gone. */
  async keepAlive(id: number): Promise<WriteAck> {
    return this.write({ op: 'keepalive', lease: id });
  }

  /** Delete lease id and every key attached to it (nothing if it is gone). */
  async revoke(id: number): Promise<WriteAck> {
    return this.write({ op: 'revoke', lease: id });
  }

  /** The leases that exist, by id. */
  async leases(opts: ReadOptions = {}): Promise<LeaseInfo[]> {
    const out: LeaseInfo[] = [];
    for (let start: string | undefined; ; ) {
      const page = await this.list(LEASE_KEY_PREFIX, { ...opts, limit: LIST_LIMIT_MAX, ...(start !== undefined ? { start } : {}) });
      for (const kv of page.items) {
        const id = leaseIdOf(kv.key);
        if (id !== null && kv.ttl !== undefined) out.push({ id, ttl: kv.ttl, rev: kv.rev });
      }
      if (page.next === null) break;
      start = page.next;
    }
    return out.sort((a, b) => a.id - b.id);
  }

  /** Campaign to lead NAME (the key elections.NAME holds the leader's value): resolves once we lead. */
  elect(name: string, value: string, opts: Omit<LockOptions, 'value'> = {}): Promise<Lock> {
    return this.holdKey(`elections.${name}`, value, opts);
  }

  private holdKey(key: string, value: string, opts: LockOptions): Promise<Lock> {
    this.checkOpen();
    const ttl = opts.ttl ?? LOCK_TTL_MS_DEFAULT;
    if (!Number.isSafeInteger(ttl) || ttl < LOCK_TTL_MS_MIN) throw new CkvError(ErrorCode.BAD_REQUEST, `a lock's ttl is at least ${LOCK_TTL_MS_MIN} ms`);
    check({ op: 'create', key, value, ttl });
    if (opts.wait !== undefined && (!Number.isSafeInteger(opts.wait) || opts.wait < 0)) throw new CkvError(ErrorCode.BAD_REQUEST, 'wait must be a non-negative number of ms');
    return acquire(this, key, value, opts);
  }

  /**
   * Any read or write of the wire protocol (README), checked here as the server checks it,
   * sent on its subject (writes and strong reads to the coordinator) and retried like the
   * methods above (a write keeps one rid across retries; its own, if it carries one).
   * Resolves with the ok reply; a failed one throws its CkvError (CasMismatchError for a cas).
   */
  async request(req: Record<string, unknown>): Promise<OkReply & ReplyBody> {
    let r: Request;
    try {
      r = validateRequest(req);
    } catch (err) {
      const e = err as { code?: ErrorCode; message: string };
      throw new CkvError(e.code ?? ErrorCode.BAD_REQUEST, e.message);
    }
    if (r.op === 'status' || r.op === 'snapshot') throw new CkvError(ErrorCode.BAD_REQUEST, `${r.op} has its own method (status(), snapshot())`);
    const write = isWrite(r) || r.op === 'config';
    const strong = 'consistency' in r && r.consistency === 'strong';
    const body = write && !('rid' in req) ? { ...req, rid: randomToken(RID_RANDOM_BYTES) } : req;
    return this.call(write || strong ? this.subject.write : this.subject.read, body as Request);
  }

  /**
   * Delete every key that starts with `prefix` ("" = every key). One entry deletes up to
   * PREFIX_DELETE_KEYS_MAX of them, atomically; more take further entries, sent until a read
   * (at the token of the last) finds none left. Resolves with the last entry's ack.
   */
  async delPrefix(prefix: string): Promise<WriteAck> {
    for (let round = 1; ; round++) {
      const ack = await this.write({ op: 'delprefix', prefix });
      const left = await this.list(prefix, { limit: 1 });
      if (left.items.length === 0 || round >= PREFIX_DELETE_ROUNDS_MAX) return ack;
    }
  }

  batch(ops: ClientWriteOp[]): Promise<WriteAck> {
    return this.write({ op: 'batch', ops });
  }

  /**
   * Every server's status, from the replies that arrive within STATUS_WINDOW_MS
   * (or sooner once every voter has answered), sorted by id.
   */
  async status(): Promise<NodeStatus[]> {
    const data = encoder.encode(JSON.stringify({ op: 'status' }));
    const deadline = this.callDeadline();
    for (let attempt = 0; ; attempt++) {
      this.checkOpen();
      try {
        return await this.gatherStatus(data, deadline);
      } catch (err) {
        const e = err instanceof CkvError ? err : transportError(err, this.subject.admin, this.timeout);
        if (!RETRYABLE.has(e.code) || !(await this.backoff(attempt, deadline))) throw e;
      }
    }
  }

  /**
   * A consistent copy of one server's state for a backup (ckvctl snapshot save): it holds
   * every write acknowledged before the call (a strong read fixes the token the server must
   * reach first), as the server's checkpoint at some index at or beyond it.
   */
  async snapshot(opts: SnapshotOptions = {}): Promise<Snapshot> {
    let server = opts.server;
    if (server !== undefined && (!Number.isSafeInteger(server) || server < 1)) throw new CkvError(ErrorCode.BAD_REQUEST, 'server ids are positive integers');
    if (server === undefined) {
      const coordinators = (await this.status()).filter((s) => s.role === 'coordinator').sort((a, b) => b.epoch - a.epoch);
      if (coordinators.length === 0) throw new CkvError(ErrorCode.UNAVAILABLE, 'no server is coordinator now: name one with server');
      server = coordinators[0]!.id;
    }
    await this.get(SNAPSHOT_TOKEN_KEY, { consistency: 'strong' });
    const begun = await this.call(this.subject.admin, { op: 'snapshot', server });
    const meta = begun.snapshot?.meta;
    const counts = begun.snapshot?.counts;
    if (!meta || !counts) throw new CkvError(ErrorCode.INTERNAL, `server ${server} began a snapshot without its meta`);
    const from = server;
    const call = (phase: 'kv' | 'rids', cursor: string | undefined): Promise<SnapshotPage> =>
      this.call(this.subject.admin, { op: 'snapshot', server: from, phase, ...(cursor !== undefined ? { cursor } : {}) }).then((r) => {
        const p = r.snapshot;
        if (!p || !Array.isArray(p.items) || (p.next !== null && typeof p.next !== 'string')) throw new CkvError(ErrorCode.INTERNAL, `server ${from} sent a malformed snapshot page`);
        if (p.meta.index !== meta.index || p.meta.epoch !== meta.epoch) throw new CkvError(ErrorCode.UNAVAILABLE, `server ${from}'s checkpoint moved from index ${meta.index} to ${p.meta.index} during the snapshot; start again`);
        return p;
      });
    async function* pages(): AsyncGenerator<{ phase: 'kv' | 'rids'; items: Array<[string, unknown]> }> {
      for (const phase of ['kv', 'rids'] as const) {
        let cursor: string | undefined;
        for (;;) {
          const p = await call(phase, cursor);
          yield { phase, items: p.items! };
          if (p.next === null || p.next === undefined) break;
          cursor = p.next;
        }
      }
    }
    return { server, meta, counts, pages };
  }

  /**
   * Change events for a key or a prefix, in log order, each once.
   *
   * target "" watches everything; a target ending in "." watches every key
   * under it ("users." → users.a, users.a.b); any other target is one exact key.
   * With from, events from that log index are replayed first. A gap in the live
   * stream (seen from an event's prev) is filled by replay. The iterator throws
   * a CkvError if it cannot go on (e.g. COMPACTED: from is below the servers'
   * log); resume with watch(target, { from: lastSeen.index }).
   */
  watch(target: string, opts: WatchOptions = {}): Watch {
    this.checkOpen();
    if (target !== '') {
      const key = target.endsWith('.') ? target.slice(0, -1) : target;
      check({ op: 'get', key }); // the same rules as keys
    }
    if (opts.from !== undefined && !isNat(opts.from)) throw new CkvError(ErrorCode.BAD_REQUEST, 'from must be a non-negative integer');
    if (opts.initial && opts.from !== undefined) throw new CkvError(ErrorCode.BAD_REQUEST, 'a watch starts from current values (initial) or from an index (from), not both');
    const subject = target === '' ? `${this.subject.ev}.>` : target.endsWith('.') ? `${this.subject.ev}.${target}>` : `${this.subject.ev}.${target}`;
    const only: WatchFilter = target === '' ? {} : target.endsWith('.') ? { prefix: target } : { key: target };
    const w = new WatchImpl(this.watchPort(), subject, only, opts, () => this.watches.delete(w));
    this.watches.add(w);
    return w;
  }

  /** Stop every watch; close the connection if connect() made it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const w of [...this.watches]) w.stop();
    if (this.ownsTransport) await this.transport.close();
  }

  // -------------------------------------------------------------------------
  // Internals

  /** What a watch needs from its client, without widening the public API. */
  private watchPort(): WatchPort {
    return {
      subscribe: (subject, onMsg) => this.transport.subscribe(subject, onMsg),
      flush: () => this.transport.flush(),
      replay: async (from, after, only) => {
        // A server that restarted since keeps events only from then on: another may have them.
        for (let tries = 1; ; tries++) {
          try {
            const r = await this.call(this.subject.read, { op: 'replay', from, limit: REPLAY_EVENTS_MAX, ...only }, after);
            return { events: r.events ?? [], index: r.index, ...(isNat(r.through) ? { through: Math.min(r.through, r.index) } : {}) };
          } catch (err) {
            if (!(err instanceof CkvError) || err.code !== ErrorCode.COMPACTED || tries >= WATCH_COMPACTED_TRIES_MAX) throw err;
          }
        }
      },
      current: async (only, start) => {
        if (only.key !== undefined) {
          // (mget, not get: an absent key is an ok reply, with the index it was read at.)
          const r = await this.call(this.subject.read, { op: 'mget', keys: [only.key] });
          const kv = r.values?.[0] ?? null;
          return { items: kv ? [kv] : [], next: null, index: r.index, ts: r.ts };
        }
        const r = await this.call(this.subject.read, { op: 'list', prefix: only.prefix ?? '', ...(start !== undefined ? { start } : {}), limit: LIST_LIMIT_MAX });
        return { items: r.items ?? [], next: r.next ?? null, index: r.index, ts: r.ts };
      },
      observe: (ts) => this.observe(ts),
    };
  }

  private read(req: Request, opts: ReadOptions): Promise<OkReply & ReplyBody> {
    return this.call(opts.consistency === 'strong' ? this.subject.write : this.subject.read, req);
  }

  private write(op: ClientWriteOp | { op: 'batch'; ops: ClientWriteOp[] }): Promise<WriteAck> {
    // One rid per logical write, reused by every retry: the server applies it at most once.
    const req = { ...op, rid: randomToken(RID_RANDOM_BYTES) } as Request;
    return this.call(this.subject.write, req).then((r) => ({ index: r.index, ts: r.ts }));
  }

  /** Validate, then send with retries until the budget runs out. */
  private async call(subject: string, req: Request, after?: number): Promise<OkReply & ReplyBody> {
    this.checkOpen();
    check(req); // the server's own rules: fail here, before any network
    const deadline = this.callDeadline();
    let prior: CkvError | null = null;
    const shared = subject;
    let local = subject === this.subject.read ? this.localReadSubject() : null;
    for (let attempt = 0; ; attempt++) {
      this.checkOpen();
      subject = local ?? shared;
      // (Whole ms: a deadline given as a fraction must not make the server's timeout one.)
      const remaining = Math.floor(deadline - Date.now());
      // The local attempt is short, and leaves at least half the budget for the others: a
      // stopped or lagging local server must not cost the read.
      const attemptMs = Math.max(1, local !== null ? Math.min(Math.floor(remaining / 2), LOCAL_ATTEMPT_MS_MAX) : Math.min(remaining, ATTEMPT_MS_MAX));
      const serverMs = Math.min(REQUEST_TIMEOUT_MS_MAX, Math.max(1, attemptMs - Math.min(SERVER_TIMEOUT_MARGIN_MS_MAX, Math.floor(attemptMs / 10))));
      const token = Math.max(this.ts, after ?? 0);
      const body = { ...req, ...(token > 0 ? { after: token } : {}), timeout: serverMs };
      let err: CkvError;
      try {
        const reply = decodeReply(await this.transport.request(subject, encoder.encode(JSON.stringify(body)), { timeout: attemptMs }), subject);
        this.observe(reply.ts);
        if (typeof reply.cluster === 'string' && reply.cluster !== '') this.cid = reply.cluster;
        if (reply.ok) return reply;
        err = replyError(reply);
      } catch (e) {
        err = transportError(e, subject, attemptMs);
        // A read's last attempt cut short by the budget says little: report what the full ones
        // found. (A write's TIMEOUT stays: it may have been applied.)
        if (err.code === ErrorCode.TIMEOUT && attemptMs < ATTEMPT_MS_MAX && prior && !('rid' in req)) err = prior;
      }
      // (The local attempt's error is not kept as `prior`: it says nothing of the other servers.)
      // Nobody there, or no good answer: every server of the cluster, at once (a stopped or
      // lagging local server must not hold this client's reads; one that installed a
      // checkpoint lately keeps less history than others may). NATS permissions that allow
      // only the cluster's own read subject: never the local one again.
      if (local !== null && LOCAL_READ_FALLBACK.has(err.code) && Date.now() < deadline) {
        local = null;
        this.localReadOffUntil = err.code === ErrorCode.AUTH ? Infinity : Date.now() + LOCAL_READ_OFF_MS;
        attempt--;
        continue;
      }
      prior = err;
      if (!RETRYABLE.has(err.code) || !(await this.backoff(attempt, deadline))) throw err;
    }
  }

  /** When a call starting now must end: its own budget, within the client's deadline (if that has passed, nothing is sent). */
  private callDeadline(): number {
    if (Date.now() >= this.deadline) throw new CkvError(ErrorCode.UNAVAILABLE, 'the client\'s deadline passed before the request was sent');
    return Math.min(Date.now() + this.timeout, this.deadline);
  }

  /** Sleep before the next attempt; false if the budget is spent. */
  private async backoff(attempt: number, deadline: number): Promise<boolean> {
    const base = Math.min(RETRY_BACKOFF_MS_MAX, RETRY_BACKOFF_MS_MIN * 2 ** Math.min(attempt, 8));
    const wait = Math.min(base / 2 + Math.random() * (base / 2), deadline - Date.now());
    if (wait <= 0) return false;
    await sleep(wait);
    return Date.now() < deadline && !this.closed;
  }

  private gatherStatus(data: Uint8Array, deadline: number): Promise<NodeStatus[]> {
    return new Promise((resolve, reject) => {
      const byId = new Map<number, NodeStatus>();
      const start = Date.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      let sub: Subscription | undefined;
      let done = false;
      const finish = (err: CkvError | null) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        sub?.unsubscribe();
        if (err) reject(err);
        else resolve([...byId.values()].sort((a, b) => a.id - b.id));
      };
      const arm = (at: number) => {
        clearTimeout(timer);
        timer = setTimeout(() => finish(byId.size > 0 ? null : new CkvError(ErrorCode.TIMEOUT, `no server answered on ${this.subject.admin}`)), Math.max(0, Math.min(at, deadline) - Date.now()));
      };
      sub = this.transport.requestMany(this.subject.admin, data, (err, msg) => {
        if (done) return;
        if (err) return byId.size > 0 ? undefined : finish(err);
        let st: NodeStatus | undefined;
        try {
          const r = decodeReply(msg!, this.subject.admin);
          this.observe(r.ts);
          if (r.ok && r.status && isNat(r.status.id)) st = r.status;
        } catch {
          // one bad reply must not hide the other servers
        }
        if (!st) return;
        const first = byId.size === 0;
        byId.set(st.id, st);
        // Everyone we know of (voters, and peers not dead) has answered: no need to wait.
        const expected = new Set<number>();
        for (const s of byId.values()) {
          for (const v of s.voters ?? []) expected.add(v);
          for (const p of s.peers ?? []) if (p.liveness !== 'dead') expected.add(p.id);
        }
        if (expected.size > 0 && [...expected].every((id) => byId.has(id))) return finish(null);
        if (first) arm(Math.max(start + STATUS_WINDOW_MS, Date.now() + STATUS_GRACE_MS));
      });
      if (done) sub.unsubscribe();
      else if (byId.size === 0) arm(deadline);
    });
  }

  private checkOpen(): void {
    if (this.closed) throw new CkvError(ErrorCode.UNAVAILABLE, 'client is closed');
  }
}

/** Validate a request with the server's rules (core/validate.ts), as a CkvError. */
function check(req: Request): void {
  try {
    validateRequest(req);
  } catch (err) {
    const e = err as { code?: ErrorCode; message: string };
    throw new CkvError(e.code ?? ErrorCode.BAD_REQUEST, e.message);
  }
}

function consistency(opts: ReadOptions): { consistency?: Consistency } {
  return opts.consistency ? { consistency: opts.consistency } : {};
}

// ---------------------------------------------------------------------------
// Watch

/** What a watch follows: one key, a prefix, or (neither) every key. */
type WatchFilter = { key?: string; prefix?: string };

interface WatchPort {
  subscribe(subject: string, onMsg: (data: Uint8Array) => void): Subscription;
  flush(): Promise<void>;
  /** One page of events from index from (of the key or prefix only), from a server that holds token after. */
  /** through: every asked-for event at an index <= through is in the page (or below from); older servers do not say. */
  replay(from: number, after: number, only: WatchFilter): Promise<{ events: ChangeEvent[]; index: number; through?: number }>;
  /** One page of current values (from start, inclusive), and the index it was read at. */
  current(only: WatchFilter, start: string | undefined): Promise<{ items: KeyValue[]; next: string | null; index: number; ts: number }>;
  observe(ts: number): void;
}

/** Marks, in the stream, where a watch's initial values end (see WatchOptions.onInitial). */
interface InitialEnd {
  initialEnd: number;
}

/**
 * Live events from a subscription, merged with replayed ones. Emitted events
 * are in log order, each (index, key) once. The subscription starts before any
 * replay or read of current values, so nothing falls between them.
 */
class WatchImpl implements Watch {
  private readonly client: WatchPort;
  private readonly only: WatchFilter;
  private readonly opts: WatchOptions;
  private readonly sub: Subscription;
  private readonly onStop: () => void;
  /** Live events not yet looked at. */
  private incoming: ChangeEvent[] = [];
  /** Events (and initial-end marks) ready for the consumer. */
  private ready: Array<ChangeEvent | InitialEnd> = [];
  /** Every index <= settled is done: its events for us were emitted. -1: unknown yet. */
  private settled: number;
  /** The index being emitted (a batch has several events) and its keys emitted so far. */
  private atIndex = -1;
  private keysAtIndex = new Set<string>();
  /**
   * After current values were read (page by page, at indexes up to `through`): each key's
   * rev as read. An event at or below it is already in the value given.
   */
  private listed: { revs: Map<string, number>; through: number } | null = null;
  private failure: CkvError | null = null;
  private stopped = false;
  private wakePump: (() => void) | null = null;
  private wakeConsumer: (() => void) | null = null;

  constructor(client: WatchPort, subject: string, only: WatchFilter, opts: WatchOptions, onStop: () => void) {
    this.client = client;
    this.only = only;
    this.opts = opts;
    this.onStop = onStop;
    this.settled = opts.from === undefined ? -1 : Math.max(0, opts.from - 1);
    this.sub = client.subscribe(subject, (data) => {
      if (this.stopped) return;
      // A full buffer drops the event; the next one's prev shows the gap and replay fills it.
      if (this.incoming.length + this.ready.length >= WATCH_BUFFER_EVENTS_MAX) return;
      const e = parseEvent(data);
      if (!e) return;
      this.incoming.push(e);
      this.wake('pump');
    });
    void this.pump();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<ChangeEvent>> {
    for (;;) {
      const e = this.ready.shift();
      if (e) {
        this.wake('pump'); // there is room again
        if ('initialEnd' in e) {
          this.opts.onInitial?.(e.initialEnd);
          continue;
        }
        return { value: e, done: false };
      }
      if (this.failure) {
        const f = this.failure;
        this.failure = null;
        this.stop();
        throw f;
      }
      if (this.stopped) return { value: undefined, done: true };
      await new Promise<void>((resolve) => (this.wakeConsumer = resolve));
    }
  }

  async return(): Promise<IteratorResult<ChangeEvent>> {
    this.stop();
    return { value: undefined, done: true };
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.sub.unsubscribe();
    this.onStop();
    this.wake('pump');
    this.wake('consumer');
  }

  private wake(who: 'pump' | 'consumer'): void {
    const f = who === 'pump' ? this.wakePump : this.wakeConsumer;
    if (who === 'pump') this.wakePump = null;
    else this.wakeConsumer = null;
    f?.();
  }

  private waitPump(): Promise<void> {
    return new Promise((resolve) => (this.wakePump = resolve));
  }

  private matches(key: string): boolean {
    return this.only.key !== undefined ? key === this.only.key : this.only.prefix !== undefined ? key.startsWith(this.only.prefix) : true;
  }

  private async pump(): Promise<void> {
    try {
      await this.client.flush(); // the server has our subscription: live events from here on reach us
      if (this.opts.initial) {
        await this.loadCurrent();
        // Only the coordinator publishes events: one it applied after the first page was read
        // may have gone out before we subscribed. Replay catches up; if those events are gone
        // the current values are read again (the caller asked for them anyway).
        await this.fill(Infinity, 0, true);
      } else if (this.opts.from !== undefined) await this.fill(Infinity, 0);
      while (!this.stopped) {
        if (this.incoming.length === 0 || this.ready.length >= WATCH_BUFFER_EVENTS_MAX) {
          await this.waitPump();
          continue;
        }
        const e = this.incoming.shift()!;
        if (!this.matches(e.key) || this.seen(e)) continue;
        // Entries after the last we know of produced events we did not get (in a
        // key or prefix watch, maybe for other keys only): replay tells.
        const high = Math.max(this.settled, this.atIndex);
        if (high >= 0 && e.index > high && e.prev > high) await this.fill(e.index - 1, e.ts);
        if (!this.stopped && !this.seen(e)) this.emit(e);
      }
    } catch (err) {
      if (this.stopped) return;
      this.failure = err instanceof CkvError ? err : new CkvError(ErrorCode.INTERNAL, String(err));
      this.wake('consumer');
    }
  }

  /**
   * Every current value under the watch, page by page (each page at least at the token of
   * the one before), as initial events; then the changes since the first page follow.
   */
  private async loadCurrent(): Promise<void> {
    const revs = new Map<string, number>();
    let first = -1;
    let through = -1;
    for (let start: string | undefined; !this.stopped; ) {
      while (this.ready.length >= WATCH_BUFFER_EVENTS_MAX && !this.stopped) await this.waitPump();
      const page = await this.client.current(this.only, start);
      if (first < 0) first = page.index;
      through = Math.max(through, page.index);
      this.client.observe(page.ts);
      for (const kv of page.items) {
        if (!this.matches(kv.key) || revs.has(kv.key)) continue;
        revs.set(kv.key, kv.rev);
        this.ready.push({ index: kv.rev, ts: page.ts, op: 'put', key: kv.key, value: kv.value, prev: 0, initial: true });
      }
      this.wake('consumer');
      if (page.next === null) break;
      start = page.next;
    }
    this.settled = Math.max(this.settled, first);
    this.atIndex = -1;
    this.keysAtIndex.clear();
    // The mark goes out once the stream has caught up with the last page (settle): from it
    // on, every change at an index at or below the mark is in what came before it.
    this.listed = { revs, through };
  }

  /**
   * Replay from settled + 1 through index through (Infinity: until caught up),
   * from a server that holds token after.
   */
  private async fill(through: number, after: number, resync = this.opts.resync === true): Promise<void> {
    let from = this.settled + 1;
    let resyncs = 0;
    while (!this.stopped) {
      while (this.ready.length >= WATCH_BUFFER_EVENTS_MAX && !this.stopped) await this.waitPump();
      let page: { events: ChangeEvent[]; index: number; through?: number };
      try {
        page = await this.client.replay(from, after, this.only);
      } catch (err) {
        // Gone at every server that answered: start again from the current values, if asked to.
        if (!(err instanceof CkvError) || err.code !== ErrorCode.COMPACTED || !resync || ++resyncs > WATCH_RESYNC_TRIES_MAX) throw err;
        await this.loadCurrent();
        if (this.settled >= through) return;
        from = this.settled + 1;
        continue;
      }
      const { events, index } = page;
      let last = -1;
      for (const e of events) {
        if (!isEvent(e) || e.index < from) continue;
        if (e.index > through) return this.settle(through);
        last = e.index;
        if (this.matches(e.key) && !this.seen(e)) this.emit(e);
      }
      const complete = page.through;
      if (last >= through || (complete !== undefined && complete >= through)) return this.settle(through);
      if (last < 0) {
        // Nothing more at that server: all it has applied is settled.
        if (complete === undefined || complete >= index) return this.settle(Math.min(through, index));
        // It looked this far and found none of ours (a rare prefix): go on from there.
        this.settle(complete);
        from = complete + 1;
        continue;
      }
      // The page is complete through `complete`; a server that does not say may have cut the
      // last entry's events (servers may page below our limit): read that entry again,
      // deduped, unless it is all this page held.
      from = complete !== undefined && complete >= last ? complete + 1 : last > from ? last : last + 1;
      this.settle(from - 1);
    }
  }

  private settle(index: number): void {
    if (index > this.settled) this.settled = index;
    if (this.listed && this.settled >= this.listed.through) {
      this.listed = null;
      this.ready.push({ initialEnd: this.settled });
      this.wake('consumer');
    }
  }

  private seen(e: ChangeEvent): boolean {
    if (this.listed && e.index <= this.listed.through && e.index <= (this.listed.revs.get(e.key) ?? -1)) return true;
    return e.index <= this.settled || (e.index === this.atIndex && this.keysAtIndex.has(e.key));
  }

  private emit(e: ChangeEvent): void {
    this.settle(e.index - 1); // emitted in log order: everything before e is done
    if (e.index !== this.atIndex) {
      this.atIndex = e.index;
      this.keysAtIndex.clear();
    }
    this.keysAtIndex.add(e.key);
    this.client.observe(e.ts);
    this.ready.push(e);
    this.wake('consumer');
  }
}

function isEvent(e: unknown): e is ChangeEvent {
  const o = e as ChangeEvent;
  return typeof o === 'object' && o !== null && isNat(o.index) && isNat(o.ts) && isNat(o.prev) && typeof o.key === 'string' && (o.op === 'put' || o.op === 'del');
}

function parseEvent(data: Uint8Array): ChangeEvent | null {
  try {
    const e: unknown = JSON.parse(decoder.decode(data));
    return isEvent(e) ? e : null;
  } catch {
    return null;
  }
}
