// Wire types: client requests and replies (JSON over NATS request/reply),
// log entries and change events. Validation of untrusted input is in validate.ts.

import type { WireError } from './errors.js';
import type { CheckpointMeta } from './records.js';

/** A write operation, as it appears inside a request and inside a log entry. */
export type WriteOp =
  /** ttl (ms): the key is deleted once that long has passed since the coordinator applied this write (see Expiry). */
  /** lease: attach the key to that lease (it goes when the lease does); no ttl then. */
  | { op: 'put'; key: string; value: string; ttl?: number; b64?: true; lease?: number }
  | { op: 'del'; key: string }
  /** Every key that starts with prefix ('' = every key), deleted as one op of one entry. */
  | { op: 'delprefix'; prefix: string }
  /** expect null: the key must be absent. value null: delete on success. */
  | { op: 'cas'; key: string; expect: string | null; value: string | null; ttl?: number; b64?: true; lease?: number }
  /** By revision: the key's rev (the log index of its last change) must be expectRev; 0 = absent. (`create` is this with 0.) */
  | { op: 'cas'; key: string; expectRev: number; value: string | null; ttl?: number; b64?: true; lease?: number }
  /** A new lease: the record _lease.<index of this entry>, with this ttl. Alone in its entry. */
  | { op: 'grant'; ttl: number }
  /** The lease's countdown starts again (its record is rewritten); LEASE_NOT_FOUND if it is gone. */
  | { op: 'keepalive'; lease: number }
  /** The lease and every key attached to it are deleted (nothing, if it is gone). */
  | { op: 'revoke'; lease: number }
  /**
   * Written by the coordinator only (never accepted from a client): key's time to live, set
   * by the write at rev, has passed. Deletes the key if rev is still its revision.
   */
  | { op: 'expire'; key: string; rev: number };

/** What a client may ask for (not expire: only the coordinator writes those, into the log). */
export type ClientWriteOp = Exclude<WriteOp, { op: 'expire' }>;

export type Consistency = 'causal' | 'strong';

interface Common {
  /** Causal token: answer only from a state holding every write with ts <= after. */
  after?: number;
  /** How long the server may hold the request, in ms. */
  timeout?: number;
}

export type ReadRequest = Common &
  (
    /** rev: the key as of that revision (log index), while the history holds it */
    | { op: 'get'; key: string; consistency?: Consistency; rev?: number }
    | { op: 'mget'; keys: string[]; consistency?: Consistency }
    | { op: 'list'; prefix: string; start?: string; limit?: number; consistency?: Consistency }
    /** Change events from a log index, for observers that saw a gap; only one key's, or a prefix's, when given. */
    | { op: 'replay'; from: number; limit?: number; key?: string; prefix?: string }
    /** A key's recent changes (those this server still keeps), oldest first. */
    | { op: 'history'; key: string; limit?: number }
  );

export type WriteRequest = Common &
  (
    | (ClientWriteOp & { rid?: string })
    /** Put only if the key is absent: validated into a cas at revision 0 (it is logged as one). */
    | { op: 'create'; key: string; value: string; ttl?: number; b64?: true; lease?: number; rid?: string }
    | { op: 'batch'; ops: ClientWriteOp[]; rid?: string }
  );

/**
 * Backup (ckvctl snapshot save): one server's checkpoint, page by page. Sent on the admin
 * subject, which every server hears; only `server` answers. Without `phase` it begins: the
 * server waits for the request's token, checkpoints what it has applied, and answers the
 * checkpoint's meta and counts; then pages of `phase` follow each other by `cursor`.
 */
export type SnapshotRequest = Common & { op: 'snapshot'; server: number; phase?: 'kv' | 'rids'; cursor?: string };

export type AdminRequest = { op: 'status' } | SnapshotRequest;

/** Membership: add or remove one voter (on the write subject; the coordinator logs it). */
export type ConfigRequest = Common & { op: 'config'; add?: number; remove?: number };

export type Request = ReadRequest | WriteRequest | AdminRequest | ConfigRequest;

/**
 * Values are UTF-8 text, or arbitrary bytes: then `b64: true` goes with the value, which is
 * their standard base64 (padded) — in requests (put, create, cas: both expect and value),
 * records, replies and change events alike.
 */
export interface KeyValue {
  key: string;
  value: string;
  /** The value is the base64 of bytes. */
  b64?: true;
  /** The lease the key is attached to (it goes when the lease does). */
  lease?: number;
  /** Log index of the write that set this value. */
  rev: number;
  /** Its time to live in ms, if it was written with one (counted from that write). */
  ttl?: number;
}

/** Replies always carry ts (the causal token) and, when ok, the applied index. */
export type Reply = (
  | ({ ok: true; ts: number; index: number } & ReplyBody)
  /** COMPACTED carries `oldest`, the oldest index whose events are still kept there. */
  | { ok: false; ts: number; index?: number; error: WireError; current?: string | null; failed?: number; oldest?: number }
) & {
  /** The answering server's cluster identity (once it knows it): a token belongs to one identity. */
  cluster?: string;
};

export interface ReplyBody {
  /** get */
  value?: string;
  b64?: true;
  lease?: number;
  rev?: number;
  /** get: the key's time to live in ms, if it has one (counted from the write at rev) */
  ttl?: number;
  /** mget: one per key, null where absent */
  values?: (KeyValue | null)[];
  /** list */
  items?: KeyValue[];
  next?: string | null;
  /** replay; history (the key's changes at indexes >= since, up to index) */
  events?: ChangeEvent[];
  since?: number;
  /** replay: every asked-for event at an index <= through is in this page (or before `from`) */
  through?: number;
  /** status */
  status?: NodeStatus;
  /** snapshot */
  snapshot?: SnapshotPage;
}

/** A snapshot reply: the checkpoint's meta always (it must not change between pages); counts when beginning; items otherwise. */
export interface SnapshotPage {
  meta: CheckpointMeta;
  counts?: { keys: number; rids: number };
  phase?: 'kv' | 'rids';
  /** kv: [key, {value, rev, ts}]; rids: [rid, {index, ts, result}]. */
  items?: Array<[string, unknown]>;
  /** The cursor of the next page of this phase; null after its last. */
  next?: string | null;
}

/** A log entry. index and epoch place it; ts is its Lamport timestamp. */
export type Entry =
  /** The first entry of a cluster's log carries the cluster's identity (its first coordinator made it). */
  | { index: number; epoch: number; ts: number; kind: 'noop'; cluster?: string }
  | { index: number; epoch: number; ts: number; kind: 'write'; rid?: string; ops: WriteOp[] }
  | { index: number; epoch: number; ts: number; kind: 'config'; voters: number[]; keepOut?: number[] };

/** The result of applying one write entry (deterministic: same log, same results). */
export type WriteResult =
  | { ok: true }
  | { ok: false; code: 'CAS_MISMATCH'; failed: number; current: string | null }
  /** Op `failed` names lease `lease`, which does not exist, or already has LEASE_KEYS_MAX keys (LEASE_FULL). */
  | { ok: false; code: 'LEASE_NOT_FOUND' | 'LEASE_FULL'; failed: number; lease: number };

/** Published on ckv.<c>.ev.<key>, one per applied write op, in log order. */
export interface ChangeEvent {
  index: number;
  ts: number;
  op: 'put' | 'del';
  key: string;
  value?: string;
  /** (put) The value is the base64 of bytes. */
  b64?: true;
  /** (put) The lease the key is attached to. */
  lease?: number;
  /** Index of the previous entry that produced events (0 if none): lets an observer see a gap. */
  prev: number;
  /** Only in a client's watch with `initial`: a current value (index is its rev), not a change. */
  initial?: true;
}

/** catchup: a server that lost data it may have acknowledged; it neither votes nor leads until it holds what the cluster had committed when it came back. */
export type Role = 'follower' | 'candidate' | 'coordinator' | 'learner' | 'catchup';
export type Liveness = 'alive' | 'suspect' | 'dead';

/** What a heartbeat carries and what status shows. */
export interface NodeStatus {
  id: number;
  cluster: string;
  /** The cluster's identity ('' until the first entry is committed). */
  clusterId?: string;
  epoch: number;
  role: Role;
  coordinator: number | null;
  clock: number;
  last: number;
  commit: number;
  applied: number;
  checkpoint: number;
  voters: number[];
  version: string;
  uptimeMs: number;
  peers?: PeerStatus[];
}

export interface PeerStatus extends NodeStatus {
  liveness: Liveness;
  /** How long since we heard it, in ms. */
  silentMs: number;
}
