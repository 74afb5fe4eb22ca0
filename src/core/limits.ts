// Named limits, units last. Checked at the edge (src/core/validate.ts) with a
// clear error; asserted again inside where a violation would be a bug.

/** Longest key, in UTF-8 bytes (keys are ASCII, so also characters). */
export const KEY_BYTES_MAX = 512;
/** Largest value, in UTF-8 bytes. Well below NATS's default 1 MiB payload. */
export const VALUE_BYTES_MAX = 256 * 1024;
/** Most operations in one batch (one log entry). */
export const BATCH_OPS_MAX = 128;
/** Largest encoded log entry, in bytes: must fit one NATS message with its envelope. */
export const ENTRY_BYTES_MAX = 768 * 1024;
/** Most keys in one mget. */
export const MGET_KEYS_MAX = 1024;
/** Most servers a configuration keeps out of the voters (operator removals remembered). */
export const KEEP_OUT_MAX = 64;
/** Default and largest page of a list. */
export const LIST_LIMIT_DEFAULT = 100;
export const LIST_LIMIT_MAX = 1000;
/** Longest request id, in bytes. */
export const RID_BYTES_MAX = 64;
/** Largest request payload a server accepts, in bytes (NATS default max_payload). */
export const REQUEST_BYTES_MAX = 1024 * 1024;
/** Default and largest time a server may hold a request (waiting for a token, a commit). */
export const REQUEST_TIMEOUT_MS_DEFAULT = 5_000;
export const REQUEST_TIMEOUT_MS_MAX = 60_000;
/** Request ids remembered for exactly-once retries (oldest forgotten first, in log order). */
export const RIDS_RETAINED_MAX = 100_000;
/** Largest reply a server sends, in bytes: NATS's default max_payload less room for headers. */
export const REPLY_BYTES_MAX = 1024 * 1024 - 4 * 1024;
/** A list page stops early once its values reach this many bytes (the next page has the rest). */
export const LIST_PAGE_BYTES_MAX = 512 * 1024;
/** A replay page stops at the next entry once its events reach this many bytes: with one
 * whole entry (≤ ENTRY_BYTES_MAX) on top it still fits in REPLY_BYTES_MAX. */
export const REPLAY_PAGE_BYTES_MAX = 128 * 1024;
/** Default and largest number of changes one history request returns. */
export const HISTORY_LIMIT_DEFAULT = 64;
export const HISTORY_LIMIT_MAX = 1000;
/** Most events returned by one replay request. */
export const REPLAY_EVENTS_MAX = 1000;

/** A server logs a warning once no coordinator has been heard for this long, in ms. */
export const NO_COORDINATOR_WARN_MS = 5_000;
/** Log segment rotation size, in bytes. */
export const SEGMENT_BYTES_MAX = 16 * 1024 * 1024;
/** Log bytes since the last checkpoint that trigger one before the cron does. */
export const CHECKPOINT_LOG_BYTES_TRIGGER = 64 * 1024 * 1024;
/**
 * A checkpoint also starts once this many records (keys, request ids) changed since the last
 * one: a checkpoint's cost follows its records, and small ones keep request latency flat while
 * they run (a 10 s cron under heavy writes made checkpoints of 100,000 keys, and put p99 100x
 * higher meanwhile).
 */
export const CHECKPOINT_DIRTY_RECORDS_TRIGGER = 2048;
/**
 * Records changed since the last checkpoint (keys, request ids) past which the coordinator
 * takes no new writes (UNAVAILABLE, which clients retry with the same rid) until a checkpoint
 * lands, and a follower no new entries (Node.holdAppends). Memory follows these records:
 * without a bound it grows as long as checkpoints fall behind (a slow disk, a transfer holding
 * the checkpoint still). Large: a guard, not a limit a healthy cluster meets (its checkpoints
 * hold a few thousand).
 */
export const DIRTY_RECORDS_MAX = 1_048_576;
/** Entries kept in the log below the checkpoint for lagging followers. */
export const LOG_RETAIN_ENTRIES = 10_000;
/**
 * Bytes (encoded) of the entries kept below a checkpoint, at most: counted in entries alone, a
 * log of large batches kept the whole data set in memory (10,000 batches of 100 puts).
 */
export const LOG_RETAIN_BYTES_MAX = 16 * 1024 * 1024;
/** Default checkpoint schedule (cron with seconds). */
export const CHECKPOINT_CRON_DEFAULT = '*/10 * * * * *';

/**
 * Change events a checkpoint keeps as durable history (replay, history, get at a revision),
 * by default: a day of writes at 10 a second, ~200 MB of LMDB at 100 B values.
 */
export const HISTORY_EVENTS_DEFAULT = 1_000_000;
/**
 * Bytes the durable history's stored events may take, by default: with large values the event
 * count alone would let it grow to tens of GB (a million 64 KiB events). Here 1 GiB: ~5M events
 * of 100 B (the count bound comes first), ~250k of 4 KiB, ~16k of 64 KiB.
 */
export const HISTORY_BYTES_DEFAULT = 1024 * 1024 * 1024;
/** Most events one replay request looks at (a rare prefix's page ends there, with `through`). */
export const REPLAY_SCAN_EVENTS_MAX = 20_000;
/** Most old events one checkpoint write lets go of beyond those it adds (retention catches up over writes). */
export const HISTORY_PRUNE_EVENTS_MAX = 20_000;
/** Time allowed on shutdown for in-flight work before the final checkpoint. */
export const SHUTDOWN_DRAIN_MS_MAX = 5_000;

/** Least time between two warnings that a follower's checkpoint is behind (it takes no new entries meanwhile), in ms. */
export const HOLD_LOG_MS = 10_000;

/** Longest a stopped replica waits for a checkpoint transfer to let go of its incoming store (see Replica.releaseTransfer), in ms. */
export const TRANSFER_RELEASE_MS_MAX = 10_000;
/** Pages of a checkpoint transfer, in keys (or request ids), and in bytes of keys and values
 * (a single larger value goes alone). */
export const SNAPSHOT_PAGE_ITEMS_MAX = 2_000;
export const SNAPSHOT_PAGE_BYTES_MAX = 512 * 1024;
/** Time one page request may take; also the least time between two offers to one follower. */
export const SNAPSHOT_PAGE_TIMEOUT_MS = 5_000;
/** Answers to one page request that may be missing or refused before a transfer is given up. */
export const SNAPSHOT_PAGE_TRIES_MAX = 3;
/** A server serving a transfer holds its checkpoint still this long after each page, and at
 * most this long in all (a transfer caught by the move starts over). */
export const SNAPSHOT_HOLD_MS = 10_000;
export const SNAPSHOT_HOLD_TOTAL_MS_MAX = 60_000;

/**
 * Most a peer message may move this server's epoch, and its Lamport clock, beyond what it
 * knows: one forged or corrupt message cannot push either where the protocol cannot move
 * past (PEER_NUMBER_MAX is 2^20 such steps away for epochs, 2^12 for clocks).
 */
export const EPOCH_STEP_MAX = 2 ** 32;
export const CLOCK_STEP_MAX = 2 ** 40;
/** Largest number a peer message may carry: far below 2^53, so that incrementing stays exact. */
export const PEER_NUMBER_MAX = 2 ** 52;

/** Dropped peer messages are reported at most this often, in ms (with the first of each kind at once). */
export const PEER_DROPS_REPORT_MS = 60_000;

/** One protocol tick, in milliseconds. All protocol timing is counted in ticks. */
export const TICK_MS = 50;
/**
 * Keys one prefix delete removes, at most (the first ones, in key order): the events of one
 * entry must fit a replay page. A client deletes the rest with more entries.
 */
export const PREFIX_DELETE_KEYS_MAX = 1000;
/** A key's time to live, in ms: at least one tick, at most a week. */
export const TTL_MS_MIN = 50;
/**
 * A lease is the record `_lease.<id>` (id: the log index of its grant), with the lease's
 * ttl: it expires as any record does, and takes the keys attached to it along. Clients
 * cannot write under this prefix except through the lease ops.
 */
export const LEASE_KEY_PREFIX = '_lease.';
/** Most keys attached to one lease: its expiry's events must fit one replay page, as a prefix delete's. */
export const LEASE_KEYS_MAX = 1000;
export const TTL_MS_MAX = 7 * 24 * 3600 * 1000;
/** Heartbeat period, in ticks. */
export const PING_INTERVAL_TICKS = 2;
/** Silence after which a peer is suspected, then dead, in ticks. */
export const SUSPECT_AFTER_TICKS = 4;
export const DEAD_AFTER_TICKS = 8;
/** Entries in one replication message, at most, and bytes. */
export const REPL_ENTRIES_MAX = 512;
export const REPL_BYTES_MAX = 768 * 1024;

/** Ticks to wait for an `alive` after ELECTION, then for an announcement after `alive`. */
export const ALIVE_WAIT_TICKS = 3;
export const ANNOUNCE_WAIT_TICKS = 12;
/** Ticks a claim waits for promises (and fetches) before it starts over. */
export const CLAIM_WAIT_TICKS = 10;
/**
 * Ticks a claimant waits for the checkpoint of the promiser with the best log when that
 * promiser no longer holds the entries the claimant lacks (then it stands back, and a
 * transfer still under way installs anyway).
 */
export const CLAIM_CHECKPOINT_WAIT_TICKS = 4 * CLAIM_WAIT_TICKS;
/** Ticks a strong-read confirmation round may take. */
export const CONFIRM_WAIT_TICKS = 10;
/** A server bullies a live lower-id coordinator only after this long up and caught up. */
export const TAKEOVER_UPTIME_TICKS = 2 * DEAD_AFTER_TICKS;
/**
 * How long a server whose claim failed because its peers compacted the entries it lacks
 * stands back from elections (unless a coordinator brings it up to date first).
 */
export const STAND_BACK_TICKS = 10 * DEAD_AFTER_TICKS;
/** Minimum ticks between two resends to one follower, and two nacks from one follower. */
export const RESEND_GAP_TICKS = 2;
/** Fewest voters automatic removal leaves (an operator may go lower). */
export const AUTO_REMOVE_VOTERS_MIN = 3;
/** Most servers in the ping table (voters and learners). */
export const PEERS_MAX = 64;

// Defaults every program shares.

/** Cluster name when none is given, and what a name may be (it is a NATS subject token). */
export const CLUSTER_DEFAULT = 'ckv';
export const CLUSTER_NAME_PATTERN = /^[-_a-zA-Z0-9]{1,64}$/;
/** A cluster's identity, made by its first coordinator: 16 random bytes, base64url. */
export const CLUSTER_ID_PATTERN = /^[-_a-zA-Z0-9]{22}$/;
/** After a read found no (good) ckv server on the client's NATS server: how long its reads skip looking there, ms. */
export const LOCAL_READ_OFF_MS = 5_000;
/** A NATS server_id taken as a subject token (local read subjects; nats-server's are 56 characters of base32). */
export const NATS_SERVER_ID_PATTERN = /^[A-Za-z0-9]{1,64}$/;
export const CLUSTER_NAME_RULE = 'cluster name must be 1..64 characters of [-_a-zA-Z0-9]';
/** NATS server when none is given. */
export const NATS_URL_DEFAULT = 'nats://127.0.0.1:4222';

// The limits must fit each other; checked when the module loads, so a bad edit fails at once.
// A replay page is REPLAY_PAGE_BYTES_MAX plus one whole entry (its events carry a little more
// than its ops: 64 KiB of room for 128 events' fields); a list page is at most
// LIST_PAGE_BYTES_MAX, or one item, itself bounded by ENTRY_BYTES_MAX.
if (REPLAY_PAGE_BYTES_MAX + ENTRY_BYTES_MAX + 64 * 1024 > REPLY_BYTES_MAX || LIST_PAGE_BYTES_MAX > REPLY_BYTES_MAX || ENTRY_BYTES_MAX + 64 * 1024 > REPLY_BYTES_MAX) {
  throw new Error('limits.ts: page and entry limits do not fit in REPLY_BYTES_MAX');
}
