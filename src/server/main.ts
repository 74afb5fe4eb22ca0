#!/usr/bin/env node
// ckv-server: one replica. Opens its data directory (log, checkpoint, promise),
// connects to NATS, and runs the driver loop until SIGTERM/SIGINT.

import { existsSync, mkdirSync, openSync, fsyncSync, closeSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect, credsAuthenticator, nkeyAuthenticator } from '@nats-io/transport-node';
import { isNatsAuthError, NATS_AUTH_HELP, NATS_AUTH_OPTIONS, NatsAuthUsageError, natsConnectionOptions, redactUrl, resolveNatsAuth, splitUrlCredentials, type NatsAuth } from '../transport/nats-auth.js';
import { CronJob } from 'cron';
import pino from 'pino';
import { CHECKPOINT_CRON_DEFAULT, HISTORY_BYTES_DEFAULT, HISTORY_EVENTS_DEFAULT, PEER_DROPS_REPORT_MS, PING_INTERVAL_TICKS, TICK_MS, CLUSTER_DEFAULT, CLUSTER_NAME_PATTERN, CLUSTER_NAME_RULE, LOG_RETAIN_ENTRIES, NATS_URL_DEFAULT } from '../core/limits.js';
import { CheckpointDamagedError, LmdbCheckpoint } from '../storage/checkpoint.js';
import { repairLog, scanLog } from '../storage/log-inspect.js';
import { LogCorruptError } from '../storage/segment-format.js';
import { CorruptRecordError } from '../core/records.js';
import type { Entry } from '../core/wire.js';
import { SegmentLog } from '../storage/segment-log.js';
import { FileStateFile } from '../storage/state-file.js';
import { NatsTransport } from '../transport/nats.js';
import { PeerSeal, loadClusterKey, newIncarnation } from '../transport/peer-auth.js';
import { RepairNeeded } from './replica.js';
import { VERSION } from '../core/version.js';
import { ServerMetrics, serveMetrics } from './metrics.js';
import { Server, type CheckpointInstaller } from './server.js';
import type { CheckpointStore } from '../storage/ports.js';
import { parseByteSize, parseDurationMs } from '../core/duration.js';

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Checkpoint transfer on disk: fill <data>/checkpoint-incoming, then swap directories. */
function lmdbInstaller(data: string, history: HistoryRetention): CheckpointInstaller {
  const current = join(data, 'checkpoint');
  const incoming = join(data, 'checkpoint-incoming');
  const old = join(data, 'checkpoint-old');
  return {
    async begin() {
      rmSync(incoming, { recursive: true, force: true });
      return LmdbCheckpoint.open(incoming, history);
    },
    async swap(cur: CheckpointStore, inc: CheckpointStore) {
      await inc.close();
      await cur.close();
      rmSync(old, { recursive: true, force: true });
      renameSync(current, old);
      renameSync(incoming, current);
      fsyncDir(data);
      rmSync(old, { recursive: true, force: true });
      return LmdbCheckpoint.open(current, history);
    },
    async abort(inc: CheckpointStore) {
      await inc.close();
      rmSync(incoming, { recursive: true, force: true });
    },
  };
}

/** A crash in the middle of a swap leaves checkpoint-old: put it back (the transfer will be offered again). */
function recoverCheckpointDirs(data: string): void {
  const current = join(data, 'checkpoint');
  const old = join(data, 'checkpoint-old');
  if (!existsSync(current) && existsSync(old)) renameSync(old, current);
  rmSync(old, { recursive: true, force: true });
  rmSync(join(data, 'checkpoint-incoming'), { recursive: true, force: true });
}

const USAGE = `usage: ckv-server --id N --cluster-key FILE [--data DIR] [--nats URL] [--cluster NAME] [--voters 1,2,3]
                  [--checkpoint-cron EXPR] [--retain-entries N] [--history N] [--history-age D] [--history-bytes SIZE]
                  [--remove-dead-after MS] [--log-level LEVEL]

  --id N                 this server's id, a positive integer (env CKV_ID)
  --data DIR             data directory (env CKV_DATA; default checkpoints/node-<id>)
  --nats URL[,URL]       NATS server(s) (env CKV_NATS; default ${NATS_URL_DEFAULT})
  --cluster NAME         cluster name (env CKV_CLUSTER; default ${CLUSTER_DEFAULT})
  --voters 1,2,3         the first set of voters (env CKV_VOTERS); needed until the data directory holds a
                         configuration (a new cluster, or a new server's first start); ignored after that
  --cluster-key FILE     the cluster's shared secret: every peer message is sealed (HMAC-SHA256) with it, and
                         messages without a valid seal are dropped (env CKV_CLUSTER_KEY; make one: ckvctl keygen FILE)
  --insecure-peer-messages  run without a cluster key: anyone who can publish on the NATS server can change
                         data and stop writes (env CKV_INSECURE_PEER_MESSAGES=1; for experiments only)
  --checkpoint-cron EXPR checkpoint schedule, cron with seconds (env CKV_CHECKPOINT_CRON; default "${CHECKPOINT_CRON_DEFAULT}")
  --remove-dead-after MS remove a voter dead this long, if the rest are a majority (env CKV_REMOVE_DEAD_AFTER; default 0: never)
  --retain-entries N     log entries kept below a checkpoint for lagging followers (env CKV_RETAIN_ENTRIES; default ${LOG_RETAIN_ENTRIES})
  --history N            change events kept as durable history for replay, history and get --rev
                         (env CKV_HISTORY; default ${HISTORY_EVENTS_DEFAULT}); older ones are let go at checkpoints
  --history-age D        also let go of events older than D, e.g. 24h or 7d (env CKV_HISTORY_AGE; default: no limit)
  --history-bytes SIZE   and keep them within SIZE bytes on disk, e.g. 512M or 4G (env CKV_HISTORY_BYTES; default 1G)
  --log-level LEVEL      pino level (env CKV_LOG_LEVEL; default info)
  --metrics HOST:PORT    serve /metrics (Prometheus), /healthz and /readyz[?verbose] over HTTP
                         (env CKV_METRICS; off by default; e.g. 127.0.0.1:9464)

${NATS_AUTH_HELP}

Exit status: 0 stopped by SIGTERM/SIGINT; 1 another process serves this id; 2 usage; 5 NATS refused the credentials.
`;

/** How often a server waiting for its first NATS connection says so, in ms. */
const NATS_WAIT_LOG_MS = 2_000;

/** Log losing and regaining the NATS connection (the client reconnects by itself). */
async function logNatsStatus(nc: { status(): AsyncIterable<{ type: string; server?: unknown }> }, logger: { warn(o: object, m: string): void; info(o: object, m: string): void }, quiet: () => boolean): Promise<void> {
  for await (const s of nc.status()) {
    if (quiet()) continue;
    const server = typeof s.server === 'string' ? redactUrl(s.server) : undefined;
    if (s.type === 'disconnect') logger.warn({ server }, 'lost the NATS connection; reconnecting (requests and peer messages wait meanwhile)');
    else if (s.type === 'reconnect') logger.info({ server }, 'reconnected to NATS');
  }
}

/** How long a starting server waits for a live process with its id to answer (a live one answers in a round trip). */
const STARTUP_PROBE_MS = 3 * PING_INTERVAL_TICKS * TICK_MS;

/** Dropped peer messages: the first of each kind logged at once, then a count now and then (never one line each). */
class DropReport {
  private counts = new Map<string, number>();
  private seen = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  constructor(private log: { warn(obj: object, msg: string): void }) {}
  once(kind: string, msg: string): void {
    if (this.seen.has(kind)) return;
    this.seen.add(kind);
    this.log.warn({ kind }, msg);
  }
  add(reason: string, detail: string): void {
    if (!this.seen.has(reason)) {
      this.seen.add(reason);
      this.log.warn({ reason, detail }, `dropped a peer message (${reason}); more like it are counted, not logged`);
      return;
    }
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
    this.timer ??= setTimeout(() => {
      this.timer = null;
      this.log.warn({ dropped: Object.fromEntries(this.counts) }, `dropped peer messages in the last ${PEER_DROPS_REPORT_MS / 1000} s`);
      this.counts.clear();
    }, PEER_DROPS_REPORT_MS).unref();
  }
}

function usage(msg: string): never {
  process.stderr.write(`ckv-server: ${msg}\n${USAGE}`);
  process.exit(2);
}

async function main(): Promise<void> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      options: {
        id: { type: 'string' },
        data: { type: 'string' },
        nats: { type: 'string' },
        cluster: { type: 'string' },
        voters: { type: 'string' },
        'checkpoint-cron': { type: 'string' },
        'log-level': { type: 'string' },
        'retain-entries': { type: 'string' },
        history: { type: 'string' },
        'history-age': { type: 'string' },
        'history-bytes': { type: 'string' },
        'remove-dead-after': { type: 'string' },
        'cluster-key': { type: 'string' },
        'insecure-peer-messages': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
        metrics: { type: 'string' },
        ...NATS_AUTH_OPTIONS,
      },
      strict: true,
    }));
  } catch (err) {
    usage((err as Error).message);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (values.version) {
    process.stdout.write(`ckv-server ${VERSION}\n`);
    return;
  }
  const env = process.env;
  const id = Number(values.id ?? env.CKV_ID);
  if (!Number.isSafeInteger(id) || id < 1) usage('--id must be a positive integer');
  const cluster = String(values.cluster ?? env.CKV_CLUSTER ?? CLUSTER_DEFAULT);
  if (!CLUSTER_NAME_PATTERN.test(cluster)) usage(`--cluster: ${CLUSTER_NAME_RULE}`);
  const natsList = String(values.nats ?? env.CKV_NATS ?? NATS_URL_DEFAULT).split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (natsList.length === 0) usage('--nats needs a URL');
  let natsServers: string[];
  let natsAuth: NatsAuth;
  try {
    const split = splitUrlCredentials(natsList);
    natsServers = split.servers;
    natsAuth = resolveNatsAuth(values, env, split);
  } catch (err) {
    if (err instanceof NatsAuthUsageError) usage(err.message);
    throw err;
  }
  // For logs and messages: never a password.
  const natsUrl = natsList.map(redactUrl).join(',');
  const data = String(values.data ?? env.CKV_DATA ?? join('checkpoints', `node-${id}`));
  const votersArg = values.voters ?? env.CKV_VOTERS;
  const voters = votersArg === undefined ? [] : String(votersArg).split(',').map((v) => Number(v.trim()));
  if ((votersArg !== undefined && voters.length === 0) || voters.some((v) => !Number.isSafeInteger(v) || v < 1) || new Set(voters).size !== voters.length) {
    usage('--voters must be distinct positive integers, comma-separated');
  }
  const cronExpr = String(values['checkpoint-cron'] ?? env.CKV_CHECKPOINT_CRON ?? CHECKPOINT_CRON_DEFAULT);
  const level = String(values['log-level'] ?? env.CKV_LOG_LEVEL ?? 'info');
  const retainArg = values['retain-entries'] ?? env.CKV_RETAIN_ENTRIES;
  const retain = retainArg === undefined ? undefined : Number(retainArg);
  if (retain !== undefined && (!Number.isSafeInteger(retain) || retain < 0)) usage('--retain-entries must be a non-negative integer');
  const historyArg = values.history ?? env.CKV_HISTORY;
  const historyEventsMax = historyArg === undefined ? HISTORY_EVENTS_DEFAULT : Number(historyArg);
  if (!Number.isSafeInteger(historyEventsMax) || historyEventsMax < 0) usage('--history must be a non-negative integer (events kept)');
  const ageArg = values['history-age'] ?? env.CKV_HISTORY_AGE;
  const historyAgeMs = ageArg === undefined ? 0 : parseDurationMs(String(ageArg));
  if (historyAgeMs === null) usage('--history-age takes a duration such as 24h or 7d');
  const bytesArg = values['history-bytes'] ?? env.CKV_HISTORY_BYTES;
  const historyBytesMax = bytesArg === undefined ? HISTORY_BYTES_DEFAULT : parseByteSize(String(bytesArg));
  if (historyBytesMax === null) usage('--history-bytes takes a size such as 512M or 4G (bytes, or K, M, G, T: powers of 1024)');
  const history = { historyEventsMax, historyAgeMs, historyBytesMax };
  const removeDeadAfterMs = Number(values['remove-dead-after'] ?? env.CKV_REMOVE_DEAD_AFTER ?? 0);
  if (!Number.isSafeInteger(removeDeadAfterMs) || removeDeadAfterMs < 0) usage('--remove-dead-after must be a non-negative number of ms');

  const keyPath = values['cluster-key'] ?? env.CKV_CLUSTER_KEY;
  const insecure = values['insecure-peer-messages'] === true || env.CKV_INSECURE_PEER_MESSAGES === '1';
  if (keyPath === undefined && !insecure) usage('a cluster key is required: --cluster-key FILE (make one with: ckvctl keygen FILE), or --insecure-peer-messages');
  let key: Buffer | null = null;
  if (keyPath !== undefined) {
    try {
      key = loadClusterKey(String(keyPath));
    } catch (err) {
      usage(`--cluster-key: ${(err as Error).message}`);
    }
  }

  const logger = pino({ level, base: { node: id } }, pino.destination(2));
  // One registry for the process (a repair runs the server again: counters go on).
  const metricsAddr = values.metrics ?? env.CKV_METRICS;
  const metrics = metricsAddr ? new ServerMetrics() : null;
  let metricsHttp: Awaited<ReturnType<typeof serveMetrics>> | null = null;
  if (metrics) {
    try {
      metricsHttp = await serveMetrics(String(metricsAddr), metrics);
    } catch (err) {
      usage(`--metrics: cannot serve on ${metricsAddr}: ${(err as Error).message}`);
    }
  }
  mkdirSync(data, { recursive: true });
  let stop: ((signal: string) => Promise<void>) | null = null;
  let signalled = false;
  const stopOn = (signal: string) => {
    signalled = true;
    return (stop ?? (async () => process.exit(0)))(signal).catch((err: Error) => {
      // A failed final checkpoint loses nothing (the log has it all) but must not look clean.
      logger.error({ err }, 'error while stopping');
      logger.flush();
      process.exit(1);
    });
  };
  process.on('SIGTERM', () => void stopOn('SIGTERM'));
  process.on('SIGINT', () => void stopOn('SIGINT'));

  // One run of the server; a damaged record found while running ends it with 'repair': the
  // data directory is repaired and the server runs again, as a catch-up member.
  const run = async (): Promise<'repair'> => {
    recoverCheckpointDirs(data);
    const { log, entries, checkpoint } = await openStores(data, logger, history);
    // Without a configuration of its own, a server must be told the first voters: defaulting to
    // itself alone would make several one-server clusters under one name.
    if (checkpoint.meta().voters.length === 0 && voters.length === 0) {
      usage('--voters is needed: this data directory holds no configuration yet (give the first voters, e.g. --voters 1,2,3, on every server)');
    }
    const stateFile = new FileStateFile(join(data, 'state'));
    let nc: Awaited<ReturnType<typeof connect>>;
    // No NATS yet (started first, or down): wait for it, saying so now and then.
    const waiting = setInterval(() => logger.warn({ nats: natsUrl }, 'waiting for NATS: no server answers yet; retrying'), NATS_WAIT_LOG_MS);
    try {
      nc = await connect({
        servers: natsServers,
        name: `ckv-server-${cluster}-${id}`,
        maxReconnectAttempts: -1,
        waitOnFirstConnect: true,
        // Nothing a server publishes is for itself: without echo NATS does not send our own
        // broadcasts (every append, to all followers) back to us to be opened and dropped.
        noEcho: true,
        ...natsConnectionOptions(natsAuth, { nkeyAuthenticator, credsAuthenticator }),
      });
    } catch (err) {
      if (isNatsAuthError(err)) {
        process.stderr.write(`ckv-server: NATS at ${natsUrl} refused the credentials: ${(err as Error).message}\n`);
        process.exit(5);
      }
      throw new Error(`cannot connect to NATS at ${natsUrl}: ${(err as Error).message}`);
    } finally {
      clearInterval(waiting);
    }
    // (Once told to stop, NATS going away too, as with Ctrl-C on a terminal, is no news.)
    void logNatsStatus(nc, logger, () => signalled);
    const incarnation = newIncarnation(Date.now());
    const tlog = logger.child({ component: 'transport' });
    const drops = new DropReport(tlog);
    const transport = new NatsTransport(nc, cluster, id, new PeerSeal(key, incarnation), {
      dropped: (r) => {
        // Frames of another incarnation with our id: a replay of an earlier run of ours, or a
        // duplicate that started while we did (a starting server asks first, below).
        if (r.reason === 'same-id') drops.once('same-id', `peer messages in the name of server ${id} from another incarnation (${r.detail}): a replay, or a second process with this id`);
        else drops.add(r.reason, r.detail);
        metrics?.peerDropped(r.reason);
      },
      sendFailed: (err) => drops.add('send failed', String((err as Error)?.message ?? err)),
      handlerFailed: (err) => tlog.error({ err }, 'a peer message handler failed'),
    });
    let current: { close(): Promise<void> } = checkpoint;
    const teardown = async (): Promise<void> => {
      await transport.close().catch(() => undefined);
      await log.close().catch(() => undefined);
      await current.close().catch(() => undefined);
    };
    // A live process already serving our id answers on our snapshot subject, sealed and bound
    // to this request (a replay cannot answer it): then we refuse to run.
    const other = await transport.requestSnapshot(id, JSON.stringify({ t: 'alive?' }), STARTUP_PROBE_MS).catch(() => null);
    if (other !== null) {
      logger.fatal({ incarnation }, `another live process already runs as server ${id} in cluster ${cluster}: refusing to run`);
      logger.flush();
      process.exit(1);
    }
    let server: Server;
    try {
      server = new Server({ id, cluster, voters, log, logEntries: entries, checkpoint, stateFile, transport, logger: logger.child({ component: 'server' }), installer: lmdbInstaller(data, history), removeDeadAfterMs, ...(retain !== undefined ? { retainEntries: retain } : {}), ...(metrics ? { observe: (e) => metrics.observe(e), onSync: (ms) => metrics.fsync(ms) } : {}) });
      metrics?.attach({ status: () => server.replica.status(), health: () => server.replica.health(), logBytes: () => log.bytesAfter(0), dataDir: data });
    } catch (err) {
      // A damaged record in what a start reads (the request-id table, the meta).
      if (!(err instanceof CorruptRecordError)) throw err;
      await teardown();
      repairDataDir(data, 'checkpoint', logger, err.message);
      return 'repair';
    }

    let job: CronJob;
    try {
      job = CronJob.from({ cronTime: cronExpr, onTick: () => void server.checkpoint(), start: true });
    } catch (err) {
      usage(`--checkpoint-cron: ${(err as Error).message}`);
    }
    let stopping = false;
    stop = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'stopping: finishing in-flight work and checkpointing');
      void job.stop();
      await server.close();
      // The metrics listener would keep the process alive (and answering /readyz) after it stopped.
      metricsHttp?.closeAllConnections();
      metricsHttp?.close();
      logger.info('stopped');
      logger.flush();
      process.exitCode = 0;
      // Nothing else should hold the loop now; if something does, exit anyway.
      setTimeout(() => process.exit(0), STOPPED_EXIT_MS_MAX).unref();
    };
    current = server.store();
    if (key === null) logger.warn('running without a cluster key: peer messages are not authenticated (--insecure-peer-messages)');
    return new Promise<'repair'>((resolve) => {
      server.start((err) => {
        if (err instanceof RepairNeeded) {
          logger.error({ err: err.damage.message }, 'a damaged record: stopping to repair this data directory, then starting again as a catch-up member');
          stop = null;
          void job.stop();
          server.abort();
          // (A transfer's incoming checkpoint is let go of first; a swap under way may change what is current.)
          void server.releaseTransfer().then(() => {
            current = server.store();
            return teardown();
          }).then(() => {
            repairDataDir(data, 'checkpoint', logger, err.damage.message);
            resolve('repair');
          });
          return;
        }
        logger.fatal({ err }, 'server stopped on a fatal error');
        logger.flush();
        process.exit(1);
      });
      logger.info({ id, cluster, voters, data, nats: natsUrl, checkpointCron: cronExpr, applied: server.state.applied }, 'ckv-server started');
    });
  };
  for (;;) await run();
}

/**
 * Open the log and the checkpoint. What is damaged is repaired first (and the server is then a
 * catch-up member): a log with a bad record inside is cut there; a checkpoint that is not an
 * LMDB environment, or whose meta is damaged, is set aside (the server fetches one from its peers).
 */
/** How much durable history a checkpoint keeps. */
interface HistoryRetention {
  historyEventsMax: number;
  historyAgeMs: number;
  historyBytesMax: number;
}

async function openStores(data: string, logger: pino.Logger, history: HistoryRetention): Promise<{ log: SegmentLog; entries: Entry[]; checkpoint: LmdbCheckpoint }> {
  const llog = logger.child({ component: 'log' });
  let opened: Awaited<ReturnType<typeof SegmentLog.open>>;
  try {
    opened = await SegmentLog.open(join(data, 'log'), { warn: (m: string) => llog.warn(m) });
  } catch (err) {
    if (!(err instanceof LogCorruptError)) throw err;
    repairDataDir(data, 'log', logger, err.message);
    opened = await SegmentLog.open(join(data, 'log'), { warn: (m: string) => llog.warn(m) });
  }
  for (const w of opened.warnings) llog.warn(w);
  if (opened.maybeLost) markCatchingUp(data, logger, 'the last log record failed its checksum and was cut');
  let checkpoint: LmdbCheckpoint;
  try {
    checkpoint = await LmdbCheckpoint.open(join(data, 'checkpoint'), history);
  } catch (err) {
    if (!(err instanceof CheckpointDamagedError)) throw err;
    await opened.log.close();
    repairDataDir(data, 'checkpoint', logger, err.message);
    return openStores(data, logger, history);
  }
  return { log: opened.log, entries: opened.entries, checkpoint };
}

/**
 * Repair a data directory (the stores are closed): a damaged checkpoint is moved aside (to
 * checkpoint-damaged, for a post-mortem; an older one there is removed), with the log unless it
 * reaches back to entry 1; a damaged log is cut at its first bad record. Either way the state
 * file marks the server as catching up: it may have lost what it acknowledged.
 */
function repairDataDir(data: string, what: 'checkpoint' | 'log', logger: pino.Logger, why: string): void {
  const logDir = join(data, 'log');
  // The flag first: a crash during the repair must not leave a shorter log without it.
  markCatchingUp(data, logger, why);
  if (what === 'checkpoint') {
    // The log first (it cannot stand without the checkpoint unless it reaches back to entry 1),
    // then the checkpoint: a crash in between leaves a checkpoint with no log, which starts.
    const first = scanLog(logDir)[0]?.firstIndex;
    if (first !== undefined && first !== 1) {
      rmSync(join(data, 'log-damaged'), { recursive: true, force: true });
      renameSync(logDir, join(data, 'log-damaged'));
      fsyncDir(data);
    }
    const aside = join(data, 'checkpoint-damaged');
    rmSync(aside, { recursive: true, force: true });
    if (existsSync(join(data, 'checkpoint'))) renameSync(join(data, 'checkpoint'), aside);
  } else {
    repairLog(logDir);
  }
  fsyncDir(data);
  logger.warn({ what, why }, `repaired the ${what} of this data directory: catching up from the peers before voting again`);
}

/** The state file says: catching up (this server may have lost what it acknowledged). */
function markCatchingUp(data: string, logger: pino.Logger, why: string): void {
  const stateFile = join(data, 'state');
  const st = new FileStateFile(stateFile).read();
  if (st.catchUp) return;
  writeStateSync(stateFile, { promised: st.promised, catchUp: true });
  logger.warn({ why }, 'catching up from the peers before voting again');
}

/** The state file, written durably and at once (the server is not running). */
function writeStateSync(file: string, state: { promised: number; catchUp: boolean }): void {
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, JSON.stringify(state) + '\n');
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  fsyncDir(dirname(file));
}

/** After a clean stop, the process exits by itself at once; should a handle linger, this long at most. */
const STOPPED_EXIT_MS_MAX = 2_000;

main().catch((err: Error) => {
  process.stderr.write(`ckv-server: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
