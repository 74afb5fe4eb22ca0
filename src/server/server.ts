// The NATS/Node shell around the replica (replica.ts, where everything is
// decided): it gives the replica real time and timers, the segment log, the
// LMDB checkpoint and the promise file behind callback ports, and NATS for
// peers, client subjects and publications; it runs the ticker and encodes
// replies within NATS's payload limit. Nothing here decides anything.

import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { changeEventJson } from '../core/entry-text.js';
import { ErrorCode } from '../core/errors.js';
import { jsonString } from '../core/json-string.js';
import { REPLY_BYTES_MAX, SNAPSHOT_PAGE_TIMEOUT_MS, TICK_MS } from '../core/limits.js';
import type { KvState } from '../core/state.js';
import type { Entry, Reply } from '../core/wire.js';
import type { CheckpointStore, LogStore, StateFile } from '../storage/ports.js';
import type { ServerTransport } from '../transport/nats.js';
import { localReadSubject, subjects } from '../transport/subjects.js';
import { CheckpointPort, Replica, type CheckpointTransfer, type ClientSubject, type ReplicaEnv, type ReplicaEvent, type ReplicaOptions } from './replica.js';

export { VERSION } from './replica.js';

export interface ServerOptions extends Omit<ReplicaOptions, 'logEntries' | 'state' | 'newClusterId'> {
  log: LogStore;
  logEntries: Entry[];
  checkpoint: CheckpointStore;
  stateFile: StateFile;
  transport: ServerTransport;
  logger: Logger;
  /** Checkpoint transfer: swap in a checkpoint received from a peer (absent: this server cannot receive one). */
  installer?: CheckpointInstaller;
  /** Metrics: what the replica does, and each log sync's duration in ms. */
  observe?: (e: ReplicaEvent) => void;
  onSync?: (ms: number) => void;
}

/** Builds a checkpoint from a peer's pages, then swaps it in place of the current one. */
export interface CheckpointInstaller {
  /** A fresh, empty checkpoint store to fill. */
  begin(): Promise<CheckpointStore>;
  /** Close `incoming` and `current`, make incoming the checkpoint durably, and open it. */
  swap(current: CheckpointStore, incoming: CheckpointStore): Promise<CheckpointStore>;
  abort(incoming: CheckpointStore): Promise<void>;
}

/** Values at least this long are quoted on their own (jsonString), not by JSON.stringify with the reply. */
const REPLY_VALUE_QUOTE_CHARS_MIN = 64;

/** A reply as it goes on the wire: JSON, or TOO_LARGE when it would not fit in a NATS message. */
export function encodeReply(reply: Reply): string {
  let data: string;
  if (reply.ok && typeof reply.value === 'string' && reply.value.length >= REPLY_VALUE_QUOTE_CHARS_MIN) {
    const { value, ...rest } = reply;
    const head = JSON.stringify(rest);
    data = `${head.slice(0, -1)},"value":${jsonString(value)}}`;
  } else data = JSON.stringify(reply);
  // Length in UTF-16 units bounds the UTF-8 bytes from below; measure only when it may matter.
  if (data.length * 3 > REPLY_BYTES_MAX && Buffer.byteLength(data) > REPLY_BYTES_MAX) {
    const error = { code: ErrorCode.TOO_LARGE, message: `the reply would be more than REPLY_BYTES_MAX (${REPLY_BYTES_MAX}) bytes: ask for fewer keys` };
    return JSON.stringify({ ok: false, ts: reply.ts, error });
  }
  return data;
}

/** An LMDB (or in-memory) checkpoint store behind the replica's callback port. */
type StoreCheckpoint = CheckpointPort<CheckpointStore>;

export class Server {
  readonly replica: Replica;
  private t: ServerTransport;
  private log: LogStore;
  private logger: Logger;
  private ckpt: StoreCheckpoint;
  private ticker: NodeJS.Timeout | null = null;
  private stops: Partial<Record<ClientSubject, () => void>> = {};
  private fatal: ((err: Error) => void) | null = null;
  private listening = false;
  private started = false;

  constructor(o: ServerOptions) {
    this.t = o.transport;
    this.log = o.log;
    this.logger = o.logger;
    const s = subjects(o.cluster);
    const die = (err: Error): void => this.die(err);
    const port = (store: CheckpointStore): StoreCheckpoint => new CheckpointPort(store, (st, delta, done) => void st.write(delta).then(done, die));
    this.ckpt = port(o.checkpoint);
    const t = o.transport;
    const log = o.log;
    const installer = o.installer;
    const transfer: CheckpointTransfer | undefined = installer && {
      requestPage: (from, request, done) => {
        t.requestSnapshot(from, request, SNAPSHOT_PAGE_TIMEOUT_MS).then(done, () => done(null));
      },
      begin: (done) => {
        installer.begin().then(
          (store) => done(port(store)),
          (err: Error) => {
            this.logger.warn({ err }, 'cannot make a place for a received checkpoint');
            done(null);
          },
        );
      },
      swap: (current, incoming, done) => {
        installer.swap((current as StoreCheckpoint).store, (incoming as StoreCheckpoint).store).then((store) => {
          this.ckpt = port(store);
          done(this.ckpt);
        }, die);
      },
      abort: (incoming, done) => {
        installer.abort((incoming as StoreCheckpoint).store).then(done, (err: Error) => {
          this.logger.warn({ err }, 'could not remove an unfinished checkpoint transfer');
          done();
        });
      },
    };
    const env: ReplicaEnv = {
      now: () => performance.now(),
      timer: (ms, fn) => {
        const h = setTimeout(fn, ms);
        return () => clearTimeout(h);
      },
      defer: (fn) => void setImmediate(fn),
      sendPeer: (m) => t.sendPeer(m),
      sendSnapshot: (to, data) => t.sendSnapshot(to, data),
      publishEvent: (ev) => t.publish(s.event(ev.key), changeEventJson(ev)),
      publishMembers: (n) => t.publish(s.members, JSON.stringify(n)),
      serve: (subject, on) => {
        this.stops[subject]?.();
        delete this.stops[subject];
        if (!on) return;
        const queue = subject === 'admin' ? undefined : `ckv-${subject}`;
        const handler = (data: Uint8Array, respond: (reply: string) => void): void => this.replica.request(subject, data, (reply) => respond(encodeReply(reply)));
        const stop = t.serve(s[subject], queue, handler);
        if (subject !== 'read') {
          this.stops[subject] = stop;
          return;
        }
        // Reads also on our NATS server's own read subject: clients there try it first (a NATS
        // cluster would send 2 in 3 of them a route away). Again after each reconnect: it may
        // be to another NATS server, and a restarted one has a new id.
        let local: { id: string; stop: () => void } | null = null;
        const serveLocal = (): void => {
          const id = t.natsServerId?.();
          if (local !== null && local.id === id) return;
          local?.stop();
          const subject = localReadSubject(o.cluster, id);
          local = subject !== null ? { id: id!, stop: t.serve(subject, queue, handler) } : null;
          if (local !== null) this.logger.info({ natsServerId: id }, 'serving reads for clients on this NATS server too');
        };
        serveLocal();
        const unhook = t.onReconnect?.(serveLocal);
        this.stops[subject] = () => {
          stop();
          unhook?.();
          local?.stop();
        };
      },
      log: {
        get last() {
          return log.last;
        },
        append: (entries) => log.append(entries),
        truncateFrom: (from) => log.truncateFrom(from),
        sync: (done) => {
          const onSync = o.onSync;
          if (!onSync) return void log.sync().then(done, die);
          const startedAt = performance.now();
          void log.sync().then(() => {
            onSync(performance.now() - startedAt);
            done();
          }, die);
        },
        removeBelow: (index) => void log.removeBelow(index).catch(die),
        bytesAfter: (index) => log.bytesAfter(index),
      },
      writeState: (state, done) => void o.stateFile.write(state).then(done, die),
      checkpoint: this.ckpt,
      ...(transfer ? { transfer } : {}),
      logger: o.logger,
      fatal: die,
      ...(o.observe ? { observe: o.observe } : {}),
    };
    const st = o.stateFile.read();
    this.replica = new Replica({ ...o, state: { promised: st.promised, catchUp: st.catchUp === true }, newClusterId: randomBytes(16).toString('base64url') }, env);
  }

  get state(): KvState {
    return this.replica.state;
  }

  /**
   * Subscribe to the peer subjects, taking nothing in yet: what arrives is checked (a second
   * process with our id shows here) and then dropped until start().
   */
  listen(): void {
    if (this.listening) return;
    this.listening = true;
    this.t.onPeer((m) => {
      if (this.started) this.replica.onPeer(m);
    });
    this.t.onSnapshot((body, respond) => {
      if (this.started) this.replica.onSnapshot(body, respond);
    });
  }

  /** Start serving: peer messages, ticks, client subjects. `onFatal` is called if the server must stop. */
  start(onFatal: (err: Error) => void): void {
    this.fatal = onFatal;
    this.listen();
    this.started = true;
    this.ticker = setInterval(() => this.replica.tick(), TICK_MS);
    this.replica.start();
  }

  /** Checkpoint now (the cron calls this). */
  checkpoint(): Promise<void> {
    return new Promise((resolve) => this.replica.checkpoint(resolve));
  }

  private die(err: Error): void {
    this.logger.fatal({ err }, 'fatal error: stopping');
    if (this.fatal) this.fatal(err);
    else throw err;
  }

  /** The checkpoint store in use now (a transfer may have swapped in another). */
  store(): CheckpointStore {
    return this.ckpt.store;
  }

  /** Stop at once (the replica stopped on a fatal error): no more ticks, no more requests. */
  abort(): void {
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = null;
    for (const stop of Object.values(this.stops)) stop();
    this.stops = {};
    this.started = false;
  }

  /** After abort(): resolves once no checkpoint transfer holds an incoming store (see Replica.releaseTransfer). */
  releaseTransfer(): Promise<void> {
    return new Promise<void>((resolve) => this.replica.releaseTransfer(resolve));
  }

  /** Stop taking requests, finish in-flight work, checkpoint, close. */
  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.replica.close(resolve));
    if (this.ticker) clearInterval(this.ticker);
    for (const stop of Object.values(this.stops)) stop();
    await this.t.close();
    await this.log.close();
    await this.ckpt.store.close();
  }
}
