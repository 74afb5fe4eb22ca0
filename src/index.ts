// The public library: the client, its options and errors, and the wire types.
// Nothing server-side is exported from here.

export {
  Client,
  CkvError,
  CasMismatchError,
  CompactedError,
  valueBytes,
  natsTransport,
  CLUSTER_DEFAULT,
  NATS_URL_DEFAULT,
  type ClientOptions,
  type ConnectOptions,
  type ReadOptions,
  type GetOptions,
  type ListOptions,
  type ListPage,
  type History,
  type HistoryOptions,
  type WriteAck,
  type WriteOptions,
  type Watch,
  type WatchOptions,
  type Snapshot,
  type SnapshotOptions,
  type Transport,
  type Subscription,
} from './client/client.js';
export { LockHeldError, LOCK_TTL_MS_DEFAULT, type Lock, type LockOptions } from './client/lock.js';
export type { Lease, LeaseInfo } from './client/lease.js';
export { defaultSessionPath, readToken, saveToken } from './client/session.js';
export { resolveNatsAuth, NatsAuthUsageError, type NatsAuth } from './transport/nats-auth.js';
export { ErrorCode, ERROR_CODES, type WireError } from './core/errors.js';
export {
  KEY_BYTES_MAX,
  VALUE_BYTES_MAX,
  BATCH_OPS_MAX,
  MGET_KEYS_MAX,
  LIST_LIMIT_DEFAULT,
  LIST_LIMIT_MAX,
  REPLAY_EVENTS_MAX,
  HISTORY_LIMIT_DEFAULT,
  HISTORY_LIMIT_MAX,
  REQUEST_TIMEOUT_MS_DEFAULT,
  REQUEST_TIMEOUT_MS_MAX,
  TTL_MS_MIN,
  TTL_MS_MAX,
} from './core/limits.js';
export type * from './core/wire.js';
