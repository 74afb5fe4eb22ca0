#!/usr/bin/env node
// ckv: the one-shot client. Parse, validate, connect, one request, print, exit.
// It loads no server code; the NATS library is loaded only once the arguments
// are known to be good (see Client.connect).

// (The bundle loads child_process and os on first use: one-shot commands do not pay for them.)
import { spawn } from 'node:child_process';
import { readFile, statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { parseArgs } from 'node:util';
import { ErrorCode } from '../core/errors.js';
import {
  BATCH_OPS_MAX,
  CLUSTER_DEFAULT,
  CLUSTER_NAME_PATTERN,
  CLUSTER_NAME_RULE,
  HISTORY_LIMIT_DEFAULT,
  HISTORY_EVENTS_DEFAULT,
  HISTORY_LIMIT_MAX,
  KEY_BYTES_MAX,
  LIST_LIMIT_MAX,
  NATS_URL_DEFAULT,
  REQUEST_BYTES_MAX,
  REQUEST_TIMEOUT_MS_DEFAULT,
  VALUE_BYTES_MAX,
} from '../core/limits.js';
import { validateRequest } from '../core/validate.js';
import { VERSION } from '../core/version.js';
import { NATS_AUTH_HELP, NATS_AUTH_OPTIONS, NatsAuthUsageError, resolveNatsAuth, type NatsAuth } from '../transport/nats-auth.js';
import type { ChangeEvent, KeyValue, Request, ClientWriteOp } from '../core/wire.js';
import { CasMismatchError, CkvError, Client, valueBytes, wireValues, type WriteAck } from './client.js';
import { LOCK_TTL_MS_DEFAULT, LOCK_TTL_MS_MIN, LockHeldError, type Lock } from './lock.js';
import { defaultSessionPath, readSessionEntry, saveToken } from './session.js';
import { coordinatorOf, formatStatusTable, hasCoordinator, statusRows } from './status-table.js';
import { quietOnClosedStdout, stdoutClosed, writeOut } from './stdout.js';
import { parseDurationMs } from '../core/duration.js';

/** Exit statuses (documented in --help). */
const EXIT_OK = 0;
const EXIT_NOT_FOUND = 1; // also a cas mismatch (del of a missing key is a success, as in etcdctl and consul)
const EXIT_USAGE = 2; // also a request the server rejects as malformed or too large
const EXIT_UNAVAILABLE = 3; // no server could answer in time
const EXIT_ERROR = 4; // any other server error (TOKEN_AHEAD, COMPACTED, INTERNAL)
const EXIT_AUTH = 5; // NATS refused the credentials or permissions: retrying will not help

/** Commands that run until done or interrupted: --timeout bounds each of their requests, not them. */
const LONG_RUNNING = new Set(['watch', 'lock', 'elect', 'run']);
/** After a lock is lost, CMD gets SIGTERM, then SIGKILL this much later (well within the 1/6 of a ttl left). */
const LOST_KILL_GRACE_MS = 1_000;

/** How long after its --timeout budget ckv may still be running (closing, saving the token, exiting). */
const EXIT_MARGIN_MS = 200;

const FLAGS_HELP = `Flags (before or after the command):
  --nats URL[,URL]   NATS server(s) (env CKV_NATS, default ${NATS_URL_DEFAULT})
  --cluster NAME     cluster name (env CKV_CLUSTER, default ${CLUSTER_DEFAULT})
  --timeout MS       budget for the whole command, counted from when ckv starts:
                     connecting, retries and pages included (default ${REQUEST_TIMEOUT_MS_DEFAULT});
                     ckv exits at most ${EXIT_MARGIN_MS} ms after it, whether NATS is down, paused
                     or silent (watch: bounds connecting and each replay)
  --json             print JSON (one object; watch: one object per line)
  --strong           linearizable read via the coordinator (get, mget, list)
  --session FILE     token file (env CKV_SESSION, default
                     \${XDG_STATE_HOME:-$HOME/.local/state}/ckv/session.json)
  --no-session       neither read nor write the token file
  --after TS         causal token to start from (env CKV_AFTER); implies --print-token
  --print-token      on exit 0 or 1, print the new token on stderr as the last
                     line (a decimal number)
  -h, --help         help (also: ckv help COMMAND, ckv COMMAND --help)
  --version          print the version
  --                 ends flags: "ckv put k -- -1" stores "-1"`;

const EXIT_HELP = `Exit status:
  0  ok
  1  not found (get; mget: any key), cas mismatch (cas, batch), a lease that
     is gone (LEASE_NOT_FOUND), or no coordinator (status); del of a missing
     key is not an error (exit 0)
  2  usage error, or the server rejected the request (BAD_REQUEST, TOO_LARGE)
  3  unavailable: no server answered in time (UNAVAILABLE, TIMEOUT, NATS down)
  4  other server error (TOKEN_AHEAD, COMPACTED, INTERNAL)
  5  NATS refused the credentials or their permissions (AUTH)`;

const KEYS_HELP = `Keys: 1..${KEY_BYTES_MAX} characters of [-/_=.a-zA-Z0-9], dots separate tokens (no
leading, trailing or doubled dot). Values: UTF-8 text up to ${VALUE_BYTES_MAX} bytes, or bytes (sent as base64 with "b64":true,
which must fit the same bound: up to ${(VALUE_BYTES_MAX / 4) * 3} bytes).`;

const TOKEN_HELP = `Causal token: every reply carries a timestamp; ckv keeps the largest in the
session file (per cluster) so the next ckv reads at least what this one saw,
from any server. Without a shared file, pass it on explicitly:
  t=$(ckv --no-session --print-token put cfg/a 1 2>&1 >/dev/null)
  ckv --no-session --after "$t" get cfg/a     # elsewhere: sees the put`;

interface CommandSpec {
  usage: string;
  help: string;
  /** Command-specific flags it accepts. */
  flags: string[];
}

const COMMANDS: Record<string, CommandSpec> = {
  get: {
    usage: 'get [--rev REV] KEY',
    help: `Print the value of KEY: its exact bytes, plus a newline only when stdout is a
terminal. A missing key prints "not found" on stderr and exits 1.
  --rev REV  KEY as it was at revision REV (a log index, e.g. an earlier write's
             "index"), while the servers' history holds it: else COMPACTED (exit 4)
--json: {"key","value","rev","ts"} (value null if missing; also "b64", "ttl", "lease"
when the value is bytes, has a time to live, is attached to a lease).`,
    flags: ['strong', 'rev'],
  },
  put: {
    usage: 'put KEY VALUE [--ttl DURATION] | put KEY --file PATH',
    help: `Set KEY to VALUE. VALUE "-" reads the value from stdin, and --file PATH from a
file, as exact bytes: UTF-8 text is stored as text, anything else as bytes (base64
on the wire, with "b64":true; get prints the bytes back).
  --ttl DURATION  delete KEY once DURATION has passed since this write (500ms,
                  30s, 5m, 2h; a bare number is seconds): decided by the coordinator
                  and written to the log, never early, late by at most about a tick
                  (or, across a change of coordinator, by up to the whole DURATION:
                  the new one starts the countdown again). A later write to KEY
                  without --ttl keeps it.
Prints nothing; --json: {"index","ts"}.`,
    flags: ['ttl', 'file', 'lease'],
  },
  del: {
    usage: 'del KEY | del --prefix PREFIX',
    help: `Delete KEY. Deleting a key that is absent changes nothing and is not an
error (exit 0), as with etcdctl del and consul kv delete.
  --prefix   delete every key that starts with PREFIX ("" means every key and must
             be given as such): up to 1000 keys per log entry, each entry all or
             none, entries sent until none is left
Prints nothing; --json: {"index","ts"}.`,
    flags: ['prefix'],
  },
  create: {
    usage: 'create KEY VALUE [--ttl DURATION] | create KEY --file PATH',
    help: `Put KEY only if it is absent. VALUE "-" reads stdin, --file a file. If KEY exists nothing is
written, stderr says what it holds, and the exit status is 1 (a lock file's
"mkdir": exactly one of several racing scripts succeeds).
--ttl as for put.
Prints nothing; --json: {"index","ts"} (index is the key's revision).`,
    flags: ['ttl', 'file', 'lease'],
  },
  cas: {
    usage: 'cas KEY EXPECTED NEW | cas --rev REV KEY NEW | cas --absent KEY NEW | cas --delete KEY EXPECTED',
    help: `Compare-and-set: set KEY to NEW only if it holds EXPECTED.
  --rev REV  compare revisions instead of values: KEY's revision (the "rev" that
             get --json prints; 0 = absent) must be REV, so a value changed and
             changed back (ABA) does not match; EXPECTED is not given
  --absent   expect KEY to be absent (create-if-absent); EXPECTED is not given
  --delete   delete KEY on a match instead of setting it; NEW is not given
(--absent --delete KEY succeeds only if KEY is absent, and changes nothing.)
One of EXPECTED or NEW may be "-" (stdin). On a mismatch nothing is written,
stderr says what KEY holds now, and the exit status is 1.
Prints nothing; --json: {"index","ts"} (index is the key's new revision), or on a
mismatch {"error":{"code","message"},"current","ts"}.`,
    flags: ['absent', 'delete', 'rev', 'ttl'],
  },
  mget: {
    usage: 'mget KEY...',
    help: `Print several values, one line per key found: KEY<TAB>VALUE, with VALUE
escaped (\\\\, \\n, \\t, \\r, other control characters as \\xHH). Missing keys are
named on stderr and make the exit status 1.
--json: {"values":[{"key","value","rev"} or null, ...],"ts"}.`,
    flags: ['strong'],
  },
  list: {
    usage: 'list PREFIX [--limit N] [--start KEY] [--all] [--keys]',
    help: `List keys that start with PREFIX ("" for all), in key order: KEY<TAB>VALUE
per line (VALUE escaped as for mget).
  --limit N    keys per page, 1..${LIST_LIMIT_MAX} (default 100)
  --start KEY  begin at KEY (the "next" of a previous page)
  --all        fetch every page
  --keys       print only the keys
When more keys remain, stderr says how to continue (--start NEXT).
--json: {"items":[{"key","value","rev"}...],"next","ts"}.`,
    flags: ['limit', 'start', 'all', 'keys', 'strong'],
  },
  export: {
    usage: 'export [PREFIX]',
    help: `Print every key that starts with PREFIX (default: every key) as JSON lines,
{"key":K,"value":V}, in key order: what "ckv import" reads back. Pages are read one
after another, each at least at the token of the one before: under concurrent writes
the whole is not one snapshot.`,
    flags: ['strong'],
  },
  import: {
    usage: 'import [FILE]',
    help: `Put every {"key":K,"value":V} line of FILE (default or "-": stdin), as "ckv
export" writes them. Every line is checked before anything is written (a bad one is a
usage error naming its line, and nothing changes); then batches of up to ${BATCH_OPS_MAX}
keys, each exactly once. Should one fail, the batches before it stay written (importing
again puts the same values). Stderr: how many keys. --json: {"imported","index","ts"}.`,
    flags: [],
  },
  batch: {
    usage: 'batch JSON | batch -',
    help: `Apply several writes atomically, as one log entry. The argument (or stdin,
for "-") is a JSON array of ops:
  [{"op":"put","key":"a","value":"1"}, {"op":"del","key":"b"},
   {"op":"cas","key":"c","expect":null,"value":"x"}, {"op":"create","key":"d","value":"y"},
   {"op":"cas","key":"e","expectRev":41,"value":"z"}, {"op":"delprefix","prefix":"tmp."}]
(cas: expect null = must be absent, value null = delete; expectRev compares the
revision, 0 = absent). If a cas or create does not match, nothing is applied and
the exit status is 1.
Prints nothing; --json: {"index","ts"}.`,
    flags: [],
  },
  history: {
    usage: 'history KEY [--limit N]',
    help: `Print KEY's recent changes, oldest first, one line per change (as watch does):
  INDEX<TAB>TS<TAB>put<TAB>KEY<TAB>VALUE
  INDEX<TAB>TS<TAB>del<TAB>KEY
Servers keep change events as durable history (the same at every server, across
restarts; a server's --history sets how many, default ${HISTORY_EVENTS_DEFAULT}); stderr
says from which log index the history is complete.
  --limit N    the newest N changes, 1..${HISTORY_LIMIT_MAX} (default ${HISTORY_LIMIT_DEFAULT})
--json: {"events":[...],"since","index","ts"}.`,
    flags: ['limit'],
  },
  watch: {
    usage: 'watch [TARGET] [--from INDEX | --initial] [--resync]',
    help: `Print change events until interrupted (Ctrl-C), one line per event:
  INDEX<TAB>TS<TAB>put<TAB>KEY<TAB>VALUE     (VALUE escaped as for mget)
  INDEX<TAB>TS<TAB>del<TAB>KEY
TARGET "" or absent: every key; ending in ".": every key under it ("users."
matches users.a and users.a.b); otherwise exactly that key.
  --from INDEX  first replay the events from log index INDEX, then go live
  --initial     first print every current value under TARGET (as put lines whose
                INDEX is the key's revision), then a line on stderr where they
                end, then the changes that follow (no gap, as NATS KV watchers)
  --resync      if the events needed are gone at every server (COMPACTED: older
                than the servers' history keeps), print the current values
                again (as --initial) and go on, instead of exiting 4
A server lacking the events asked for is not the end: others are asked.
--json: one event object per line (initial values carry "initial":true; the end
of them is {"initialEnd":INDEX}).`,
    flags: ['from', 'initial', 'resync'],
  },
  lease: {
    usage: 'lease grant TTL | lease keepalive ID | lease revoke ID | lease list',
    help: `Leases, as etcd's: keys attached to a lease (put/create --lease ID) are deleted when it
is revoked, or when it expires because nobody kept it alive for its ttl.
  grant TTL      a new lease (TTL: 500ms, 30s, 5m, 2h); prints its ID
  keepalive ID   start its countdown again (a script keeping one alive loops on this
                 more often than its ttl); exit 1 if it is gone
  revoke ID      delete it and every key attached to it (exit 0 also if it is gone)
  list           ID<TAB>TTL of every lease
--json: {"id","index","ts"} for grant; {"leases":[{"id","ttl","rev"}...]} for list.`,
    flags: [],
  },
  run: {
    usage: 'run FILE',
    help: `Run one request per line of FILE ("-" or absent: stdin), in order, in one process,
each carrying the token of the one before (a file of operations replays in causal
order), and print one JSON reply per line ({"ok":true,...} or {"ok":false,"error":...}).
A line is either the simple format of load-test drivers:
  get,KEY      put,KEY,VALUE (VALUE: the rest of the line)      del,KEY
or a JSON request of the wire protocol, e.g. {"op":"cas","key":"a","expectRev":4,"value":"x"}.
Empty lines and lines starting with # are skipped. Every line is checked first: a bad
one is a usage error naming it, and nothing runs. A not-found or a cas mismatch is a
result (the run goes on; exit 1 at the end); no server answering stops it (exit 3).
--timeout bounds each request.`,
    flags: [],
  },
  lock: {
    usage: 'lock NAME [--ttl DURATION] [--wait DURATION | --no-wait] -- CMD [ARGS...]',
    help: `Run CMD while holding the lock NAME, and exit with CMD's status: a script that
must not run twice at once (ckv lock deploy -- ./deploy.sh). The lock is the key
locks.NAME, created only if absent, with a time to live (--ttl, default 10s) that
ckv refreshes every third of it while CMD runs, and deletes when CMD exits. If ckv
is killed, the lock expires after its ttl (never sooner). CMD gets CKV_FENCE, the
fencing token: the revision that acquired the lock, larger than every earlier
holder's (pass it to what the lock protects, so that a late holder is refused),
and CKV_LOCK_KEY. Held by another, ckv waits (--wait DURATION at most; --no-wait:
not at all) and exits 1 if it stays held. Should the lock be lost while CMD runs
(not refreshed for 5/6 of its ttl, or deleted), CMD is sent SIGTERM, SIGKILL a
second later, and ckv exits 4. SIGINT, SIGTERM and SIGHUP to ckv are passed on to
CMD. If ckv itself is killed with SIGKILL, CMD is not: run both in one process
group and kill the group (a terminal's Ctrl-C, systemd and timeout(1) do). The
--ttl is at least 1s. A cluster restored from a backup goes on from the backup's
index: fencing tokens issued since the backup was made are not seen again in order.`,
    flags: ['ttl', 'wait', 'no-wait'],
  },
  elect: {
    usage: 'elect NAME VALUE [--ttl DURATION] -- CMD [ARGS...] | elect --observe NAME',
    help: `Campaign to lead NAME, then run CMD as the leader, with VALUE (say, this host's
address) in the key elections.NAME for others to see; exits with CMD's status. The
same mechanism as lock (ttl, refresh, CKV_FENCE, SIGTERM if leadership is lost),
waiting as long as it takes.
  --observe   print the leader's VALUE now and each time a new one takes over,
              until interrupted (an empty line while nobody leads)`,
    flags: ['ttl', 'observe'],
  },
  status: {
    usage: 'status',
    help: `Show every server that answers within ~300 ms: a table with one line per
server, and the servers they know of that did not answer. The coordinator (marked *)
is the server that answered claiming the highest epoch; another still claiming the
role shows as "coordinator (stale)". Exit 0 if a coordinator answered, 1 if servers
answered but none is coordinator (as ckvctl status), 3 if none answered.
--json: {"servers":[...],"coordinator":ID or null,"ts"}.`,
    flags: [],
  },
};

const OPTIONS = {
  nats: { type: 'string' },
  cluster: { type: 'string' },
  timeout: { type: 'string' },
  json: { type: 'boolean' },
  strong: { type: 'boolean' },
  session: { type: 'string' },
  'no-session': { type: 'boolean' },
  after: { type: 'string' },
  'print-token': { type: 'boolean' },
  file: { type: 'string' },
  lease: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  limit: { type: 'string' },
  start: { type: 'string' },
  all: { type: 'boolean' },
  keys: { type: 'boolean' },
  from: { type: 'string' },
  absent: { type: 'boolean' },
  delete: { type: 'boolean' },
  rev: { type: 'string' },
  ttl: { type: 'string' },
  prefix: { type: 'boolean' },
  initial: { type: 'boolean' },
  resync: { type: 'boolean' },
  wait: { type: 'string' },
  'no-wait': { type: 'boolean' },
  observe: { type: 'boolean' },
  ...NATS_AUTH_OPTIONS,
  version: { type: 'boolean' },
} as const;

const COMMAND_FLAGS = new Set(Object.values(COMMANDS).flatMap((c) => c.flags));

function mainHelp(): string {
  const lines = Object.values(COMMANDS).map((c) => `  ckv ${c.usage}`);
  return `Usage: ckv [flags] COMMAND [ARGS]

Commands:
${lines.join('\n')}

${KEYS_HELP}

${FLAGS_HELP}

${NATS_AUTH_HELP}

${EXIT_HELP}

${TOKEN_HELP}
`;
}

function commandHelp(name: string): string {
  const c = COMMANDS[name]!;
  return `Usage: ckv [flags] ${c.usage}

${c.help}

${FLAGS_HELP}

${EXIT_HELP}
`;
}

/** A bad command line: exit 2 with the message and a pointer to help. */
class UsageError extends Error {}

function usage(message: string): never {
  throw new UsageError(message);
}

/** A duration: 500ms, 30s, 5m, 2h, 7d, or a bare number of seconds; in ms. */
function parseDuration(s: string, what: string): number {
  const ms = parseDurationMs(s);
  if (ms === null) usage(`${what} takes a duration such as 500ms, 30s, 5m or 2h, got "${s}"`);
  return ms;
}

function parseNat(s: string, what: string): number {
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) usage(`${what} must be a non-negative integer, got "${s}"`);
  return Number(s);
}

/** The server's own validation, run before connecting: a bad request is a usage error. */
function check(req: Request): void {
  try {
    validateRequest(req);
  } catch (err) {
    usage((err as Error).message);
  }
}

/** Bytes `ckv import` reads at most (it holds them all to check every line first). */
const IMPORT_BYTES_MAX = 256 * 1024 * 1024;

async function readTextFile(path: string, what: string): Promise<string> {
  let bytes: Buffer;
  try {
    if (statSync(path).size > IMPORT_BYTES_MAX) usage(`${what}: ${path} is larger than ${IMPORT_BYTES_MAX} bytes`);
    bytes = await new Promise<Buffer>((resolve, reject) => readFile(path, (err, b) => (err ? reject(err) : resolve(b))));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    usage(`${what}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    usage(`${what}: ${path} is not UTF-8 text`);
  }
}

async function readStdinBytes(what: string, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) usage(`${what} on stdin is larger than ${max} bytes${max === VALUE_BYTES_MAX ? ' (VALUE_BYTES_MAX)' : ''}`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

async function readStdin(what: string, max = REQUEST_BYTES_MAX): Promise<string> {
  const bytes = await readStdinBytes(what, max);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    usage(`${what} on stdin is not UTF-8 text`);
  }
}

async function readFileBytes(path: string, what: string, max: number): Promise<Buffer> {
  try {
    if (statSync(path).size > max) usage(`${what}: ${path} is larger than ${max} bytes`);
    return await new Promise<Buffer>((resolve, reject) => readFile(path, (err, b) => (err ? reject(err) : resolve(b))));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    usage(`${what}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** Exact bytes as a value: UTF-8 text stays text, anything else is bytes. */
function textOrBytes(b: Buffer): string | Uint8Array {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(b);
  } catch {
    return new Uint8Array(b);
  }
}

/** A value for one-line output: bytes as b64:BASE64, text escaped. */
function lineValue(kv: { value: string; b64?: true }): string {
  return kv.b64 ? `b64:${kv.value}` : escapeValue(kv.value);
}

/** Escapes a value for one-line output: backslash, newline, tab, CR, other control characters. */
function escapeValue(v: string): string {
  return v.replace(/[\\\x00-\x1f\x7f]/g, (c) => {
    switch (c) {
      case '\\':
        return '\\\\';
      case '\n':
        return '\\n';
      case '\t':
        return '\\t';
      case '\r':
        return '\\r';
      default:
        return `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
    }
  });
}

const out = writeOut;

function json(v: unknown): void {
  out(JSON.stringify(v) + '\n');
}

function warn(s: string): void {
  process.stderr.write(`ckv: ${s}\n`);
}

interface Settings {
  command: string;
  args: string[];
  flags: Record<string, string | boolean | undefined>;
  servers: string[];
  auth: NatsAuth;
  cluster: string;
  timeout: number;
  json: boolean;
  sessionPath: string | null;
  after: number;
  afterSource: string | null;
  printToken: boolean;
}

function parse(argv: string[], env: NodeJS.ProcessEnv): Settings | { help: string } {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    usage((err as Error).message);
  }
  const flags = parsed.values as Record<string, string | boolean | undefined>;
  const [command, ...args] = parsed.positionals;
  if (command === 'help') {
    if (args.length === 0) return { help: mainHelp() };
    if (!COMMANDS[args[0]!]) usage(`unknown command "${args[0]}"`);
    return { help: commandHelp(args[0]!) };
  }
  if (flags.help) return { help: command && COMMANDS[command] ? commandHelp(command) : mainHelp() };
  if (flags.version) return { help: `ckv ${VERSION}\n` };
  if (!command) usage('no command given');
  const spec = COMMANDS[command];
  if (!spec) usage(`unknown command "${command}"`);
  for (const f of COMMAND_FLAGS) {
    if (flags[f] !== undefined && !spec.flags.includes(f)) usage(`--${f} does not apply to ${command}`);
  }

  const servers = (typeof flags.nats === 'string' ? flags.nats : env.CKV_NATS || NATS_URL_DEFAULT)
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s);
  if (servers.length === 0) usage('--nats needs a URL');
  let auth: NatsAuth;
  try {
    // (Credentials in the URLs are Client.connect's to take.)
    auth = resolveNatsAuth(flags, env);
  } catch (err) {
    if (err instanceof NatsAuthUsageError) usage(err.message);
    throw err;
  }
  const cluster = typeof flags.cluster === 'string' ? flags.cluster : env.CKV_CLUSTER || CLUSTER_DEFAULT;
  if (!CLUSTER_NAME_PATTERN.test(cluster)) usage(CLUSTER_NAME_RULE);
  const timeout = typeof flags.timeout === 'string' ? parseNat(flags.timeout, '--timeout') : REQUEST_TIMEOUT_MS_DEFAULT;
  if (timeout <= 0) usage('--timeout must be at least 1 ms');

  let after = 0;
  let afterSource: string | null = null;
  if (typeof flags.after === 'string') {
    after = parseNat(flags.after, '--after');
    afterSource = '--after';
  } else if (env.CKV_AFTER !== undefined && env.CKV_AFTER !== '') {
    after = parseNat(env.CKV_AFTER, 'CKV_AFTER');
    afterSource = 'CKV_AFTER';
  }
  const sessionPath = flags['no-session'] ? null : typeof flags.session === 'string' ? flags.session : env.CKV_SESSION || defaultSessionPath(env);
  if (flags['no-session'] && typeof flags.session === 'string') usage('--session and --no-session contradict each other');

  return {
    command,
    args,
    flags,
    servers,
    auth,
    cluster,
    timeout,
    json: flags.json === true,
    sessionPath,
    after,
    afterSource,
    printToken: flags['print-token'] === true || afterSource !== null,
  };
}

function ttlFlag(s: Settings): { ttl?: number } {
  return typeof s.flags.ttl === 'string' ? { ttl: parseDuration(s.flags.ttl, '--ttl') } : {};
}

function leaseFlag(s: Settings): { lease?: number } {
  return typeof s.flags.lease === 'string' ? { lease: parseNat(s.flags.lease, '--lease') } : {};
}

function arity(s: Settings, min: number, max: number): void {
  if (s.args.length < min || s.args.length > max) usage(`usage: ckv ${COMMANDS[s.command]!.usage}`);
}

/** One prepared command: validated arguments and what to do once connected. */
type Action = (c: Client) => Promise<number>;

async function prepare(s: Settings): Promise<Action> {
  const strong = s.flags.strong ? ({ consistency: 'strong' } as const) : {};
  let stdinUsed = false;
  const arg = async (v: string, what: string): Promise<string | Uint8Array> => {
    if (v !== '-') return v;
    if (stdinUsed) usage('only one argument can be "-" (stdin)');
    stdinUsed = true;
    return textOrBytes(await readStdinBytes(what, VALUE_BYTES_MAX));
  };
  /** put/create: KEY VALUE, or KEY --file PATH (the key checked first: a clear error before reading). */
  const valueArg = async (s: Settings, cmd: string): Promise<string | Uint8Array> => {
    const file = typeof s.flags.file === 'string' ? s.flags.file : undefined;
    arity(s, file !== undefined ? 1 : 2, file !== undefined ? 1 : 2);
    check({ op: 'del', key: s.args[0]! });
    if (file === undefined) return arg(s.args[1]!, 'value');
    return textOrBytes(await readFileBytes(file, `${cmd} --file`, VALUE_BYTES_MAX));
  };

  switch (s.command) {
    case 'get': {
      arity(s, 1, 1);
      const key = s.args[0]!;
      const rev = typeof s.flags.rev === 'string' ? parseNat(s.flags.rev, '--rev') : undefined;
      check({ op: 'get', key, ...(rev !== undefined ? { rev } : {}), ...(strong.consistency ? { consistency: strong.consistency } : {}) });
      return async (c) => {
        const kv = await c.get(key, { ...strong, ...(rev !== undefined ? { rev } : {}) });
        if (s.json) json({ key, value: kv?.value ?? null, ...(kv?.b64 ? { b64: true } : {}), ...(kv ? { rev: kv.rev } : {}), ...(kv?.ttl !== undefined ? { ttl: kv.ttl } : {}), ...(kv?.lease !== undefined ? { lease: kv.lease } : {}), ts: c.token });
        else if (kv?.b64) out(valueBytes(kv));
        else if (kv) out(process.stdout.isTTY ? kv.value + '\n' : kv.value);
        if (!kv && !s.json) warn(`${key}: not found`);
        return kv ? EXIT_OK : EXIT_NOT_FOUND;
      };
    }
    case 'put': {
      const value = await valueArg(s, 'put');
      const key = s.args[0]!;
      const opts = { ...ttlFlag(s), ...leaseFlag(s) };
      check({ op: 'put', key, ...wireValues(value), ...opts } as Request);
      return async (c) => printAck(s, await c.put(key, value, opts));
    }
    case 'del': {
      arity(s, 1, 1);
      if (s.flags.prefix === true) {
        const prefix = s.args[0]!;
        check({ op: 'delprefix', prefix });
        return async (c) => printAck(s, await c.delPrefix(prefix));
      }
      const key = s.args[0]!;
      check({ op: 'del', key });
      return async (c) => printAck(s, await c.del(key));
    }
    case 'create': {
      const value = await valueArg(s, 'create');
      const key = s.args[0]!;
      const opts = { ...ttlFlag(s), ...leaseFlag(s) };
      check({ op: 'create', key, ...wireValues(value), ...opts } as Request);
      return async (c) => printAck(s, await c.create(key, value, opts));
    }
    case 'cas': {
      const rev = typeof s.flags.rev === 'string' ? parseNat(s.flags.rev, '--rev') : undefined;
      const absent = s.flags.absent === true;
      if (rev !== undefined && absent) usage('--rev and --absent contradict each other (--rev 0 means absent)');
      const del = s.flags.delete === true;
      const byValue = !absent && rev === undefined;
      const n = 1 + (byValue ? 1 : 0) + (del ? 0 : 1);
      arity(s, n, n);
      const key = s.args[0]!;
      check({ op: 'del', key });
      let i = 1;
      const expect = byValue ? await arg(s.args[i++]!, 'expected value') : null;
      const value = del ? null : await arg(s.args[i++]!, 'new value');
      const opts = ttlFlag(s);
      if (rev !== undefined) {
        check({ op: 'cas', key, expectRev: rev, ...wireValues(value), ...opts } as Request);
        return async (c) => printAck(s, await c.casRev(key, rev, value, opts));
      }
      if ((expect instanceof Uint8Array) !== (value instanceof Uint8Array) && expect !== null && value !== null) usage('the expected and the new value must both be text or both be bytes');
      const enc = wireValues(value, expect);
      check({ op: 'cas', key, ...enc, expect: enc.expect ?? null, ...opts } as Request);
      return async (c) => printAck(s, await c.cas(key, expect, value, opts));
    }
    case 'mget': {
      if (s.args.length === 0) usage(`usage: ckv ${COMMANDS.mget!.usage}`);
      const keys = s.args;
      check({ op: 'mget', keys });
      return async (c) => {
        const values = await c.mget(keys, strong);
        const missing = keys.filter((_, i) => !values[i]);
        if (s.json) json({ values, ts: c.token });
        else {
          out(values.filter((v): v is KeyValue => v !== null).map((v) => `${v.key}\t${lineValue(v)}\n`).join(''));
          for (const k of missing) warn(`${k}: not found`);
        }
        return missing.length > 0 ? EXIT_NOT_FOUND : EXIT_OK;
      };
    }
    case 'list': {
      arity(s, 1, 1);
      const prefix = s.args[0]!;
      const limit = typeof s.flags.limit === 'string' ? parseNat(s.flags.limit, '--limit') : undefined;
      const start = typeof s.flags.start === 'string' ? s.flags.start : undefined;
      check({ op: 'list', prefix, ...(start !== undefined ? { start } : {}), ...(limit !== undefined ? { limit } : {}) });
      const all = s.flags.all === true;
      return async (c) => {
        const items: KeyValue[] = [];
        let next: string | null = start ?? null;
        do {
          const page = await c.list(prefix, { ...strong, ...(next !== null ? { start: next } : {}), ...(limit !== undefined ? { limit } : {}) });
          if (!s.json) out(page.items.map((kv) => (s.flags.keys ? `${kv.key}\n` : `${kv.key}\t${lineValue(kv)}\n`)).join(''));
          else items.push(...page.items);
          next = page.next;
        } while (all && next !== null && !stdoutClosed());
        if (s.json) json({ items, next, ts: c.token });
        else if (next !== null && !stdoutClosed()) warn(`more keys: continue with --start ${next} (or use --all)`);
        return EXIT_OK;
      };
    }
    case 'export': {
      arity(s, 0, 1);
      const prefix = s.args[0] ?? '';
      check({ op: 'list', prefix });
      return async (c) => {
        let next: string | null = null;
        do {
          const page = await c.list(prefix, { ...strong, limit: LIST_LIMIT_MAX, ...(next !== null ? { start: next } : {}) });
          out(page.items.map((kv) => `${JSON.stringify({ key: kv.key, value: kv.value })}\n`).join(''));
          next = page.next;
        } while (next !== null && !stdoutClosed());
        return EXIT_OK;
      };
    }
    case 'import': {
      arity(s, 0, 1);
      const path = s.args[0] ?? '-';
      const text = path === '-' ? await readStdin('import', IMPORT_BYTES_MAX) : await readTextFile(path, 'import');
      const puts: ClientWriteOp[] = [];
      const lines = text.split('\n');
      for (let i = 0; i < lines.length; i++) {
        const line = lines[i]!.replace(/\r$/, '');
        if (line.trim() === '') continue;
        let x: unknown;
        try {
          x = JSON.parse(line);
        } catch (err) {
          usage(`import line ${i + 1}: not JSON: ${(err as Error).message}`);
        }
        const kv = x as { key?: unknown; value?: unknown };
        if (typeof x !== 'object' || x === null || Array.isArray(x) || typeof kv.key !== 'string' || typeof kv.value !== 'string' || Object.keys(x).some((k) => k !== 'key' && k !== 'value')) {
          usage(`import line ${i + 1}: expected {"key":K,"value":V} (strings)`);
        }
        try {
          validateRequest({ op: 'put', key: kv.key, value: kv.value });
        } catch (err) {
          usage(`import line ${i + 1}: ${(err as Error).message}`);
        }
        puts.push({ op: 'put', key: kv.key, value: kv.value });
      }
      // Batches by count and by size (a request has a size limit too).
      const batches: ClientWriteOp[][] = [];
      let cur: ClientWriteOp[] = [];
      let bytes = 0;
      for (const op of puts) {
        const size = Buffer.byteLength(JSON.stringify(op));
        if (cur.length > 0 && (cur.length === BATCH_OPS_MAX || bytes + size > REQUEST_BYTES_MAX / 2)) {
          batches.push(cur);
          cur = [];
          bytes = 0;
        }
        cur.push(op);
        bytes += size;
      }
      if (cur.length > 0) batches.push(cur);
      return async (c) => {
        let imported = 0;
        let last: WriteAck | null = null;
        for (const b of batches) {
          last = await c.batch(b);
          imported += b.length;
        }
        if (s.json) json({ imported, index: last?.index ?? null, ts: c.token });
        else warn(`imported ${imported} key${imported === 1 ? '' : 's'}`);
        return EXIT_OK;
      };
    }
    case 'batch': {
      arity(s, 1, 1);
      const text = s.args[0] === '-' ? await readStdin('batch') : s.args[0]!;
      let ops: ClientWriteOp[];
      try {
        ops = JSON.parse(text) as ClientWriteOp[];
      } catch (err) {
        usage(`batch is not valid JSON: ${(err as Error).message}`);
      }
      if (!Array.isArray(ops)) usage('batch must be a JSON array of ops');
      check({ op: 'batch', ops });
      return async (c) => printAck(s, await c.batch(ops));
    }
    case 'history': {
      arity(s, 1, 1);
      const key = s.args[0]!;
      const limit = typeof s.flags.limit === 'string' ? parseNat(s.flags.limit, '--limit') : undefined;
      check({ op: 'history', key, ...(limit !== undefined ? { limit } : {}) });
      return async (c) => {
        const h = await c.history(key, limit !== undefined ? { limit } : {});
        if (s.json) json({ ...h, ts: c.token });
        else {
          out(h.events.map(eventLine).join(''));
          warn(`history complete from log index ${h.since} (read at ${h.index})`);
        }
        return EXIT_OK;
      };
    }
    case 'watch': {
      arity(s, 0, 1);
      const target = s.args[0] ?? '';
      if (target !== '') check({ op: 'get', key: target.endsWith('.') ? target.slice(0, -1) : target });
      const from = typeof s.flags.from === 'string' ? parseNat(s.flags.from, '--from') : undefined;
      if (from !== undefined && s.flags.initial === true) usage('--from and --initial contradict each other');
      return (c) => watch(s, c, target, from);
    }
    case 'lease': {
      const sub = s.args[0];
      if (sub === 'list') {
        arity(s, 1, 1);
        return async (c) => {
          const leases = await c.leases(strong);
          if (s.json) json({ leases, ts: c.token });
          else out(leases.map((l) => `${l.id}\t${l.ttl}\n`).join(''));
          return EXIT_OK;
        };
      }
      arity(s, 2, 2);
      if (sub === 'grant') {
        const ttl = parseDuration(s.args[1]!, 'lease grant TTL');
        check({ op: 'grant', ttl });
        return async (c) => {
          const ack = await c.request({ op: 'grant', ttl });
          if (s.json) json({ id: ack.index, index: ack.index, ts: ack.ts });
          else out(`${ack.index}\n`);
          return EXIT_OK;
        };
      }
      if (sub !== 'keepalive' && sub !== 'revoke') usage(`usage: ckv ${COMMANDS.lease!.usage}`);
      const id = parseNat(s.args[1]!, `lease ${sub} ID`);
      check({ op: sub, lease: id });
      return async (c) => printAck(s, sub === 'keepalive' ? await c.keepAlive(id) : await c.revoke(id));
    }
    case 'run': {
      arity(s, 0, 1);
      const path = s.args[0] ?? '-';
      const text = path === '-' ? await readStdin('run', IMPORT_BYTES_MAX) : await readTextFile(path, 'run');
      const reqs = parseScript(text);
      return (c) => runScript(c, reqs);
    }
    case 'lock':
    case 'elect': {
      const observe = s.command === 'elect' && s.flags.observe === true;
      if (observe) {
        arity(s, 1, 1);
        const key = `elections.${s.args[0]!}`;
        check({ op: 'get', key });
        return (c) => observeLeader(s, c, key);
      }
      const fixed = s.command === 'lock' ? 1 : 2;
      if (s.args.length < fixed + 1) usage(`usage: ckv ${COMMANDS[s.command]!.usage}`);
      const name = s.args[0]!;
      const key = `${s.command === 'lock' ? 'locks' : 'elections'}.${name}`;
      check({ op: 'get', key });
      const ttl = typeof s.flags.ttl === 'string' ? parseDuration(s.flags.ttl, '--ttl') : LOCK_TTL_MS_DEFAULT;
      if (ttl < LOCK_TTL_MS_MIN) usage(`a lock's --ttl is at least ${LOCK_TTL_MS_MIN / 1000}s`);
      if (s.flags.wait !== undefined && s.flags['no-wait'] === true) usage('--wait and --no-wait contradict each other');
      const wait = s.flags['no-wait'] === true ? 0 : typeof s.flags.wait === 'string' ? parseDuration(s.flags.wait, '--wait') : undefined;
      const value = s.command === 'elect' ? s.args[1]! : undefined;
      check({ op: 'create', key, value: value ?? 'x', ttl }); // (a lock's value is host:pid, valid as any)
      const cmd = s.args.slice(fixed);
      return (c) => runWhileHeld(c, cmd, () => (s.command === 'lock' ? c.lock(name, { ttl, ...(wait !== undefined ? { wait } : {}) }) : c.elect(name, value!, { ttl })));
    }
    case 'status': {
      arity(s, 0, 0);
      return async (c) => {
        const servers = await c.status();
        const rows = statusRows(servers);
        if (s.json) json({ servers, coordinator: coordinatorOf(servers)?.id ?? null, ts: c.token });
        else out(formatStatusTable(rows));
        if (!hasCoordinator(rows)) warn('no coordinator answered');
        return hasCoordinator(rows) ? EXIT_OK : EXIT_NOT_FOUND;
      };
    }
    default:
      usage(`unknown command "${s.command}"`);
  }
}

function printAck(s: Settings, ack: { index: number; ts: number }): number {
  if (s.json) json(ack);
  return EXIT_OK;
}

async function watch(s: Settings, c: Client, target: string, from: number | undefined): Promise<number> {
  const onInitial = (index: number): void => {
    if (s.json) json({ initialEnd: index });
    else warn(`(current values end here; changes after index ${index} follow)`);
  };
  const w = c.watch(target, { ...(from !== undefined ? { from } : {}), ...(s.flags.initial === true ? { initial: true } : {}), ...(s.flags.resync === true ? { resync: true } : {}), onInitial });
  const stop = () => w.stop();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  // A closed pipe (ckv watch | head -1) ends the watch quietly.
  process.stdout.on('error', stop);
  try {
    for await (const e of w) {
      if (s.json) json(e);
      else out(eventLine(e));
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
  return EXIT_OK;
}

/** The requests of a `ckv run` file, every line checked (a usage error names the first bad one). */
function parseScript(text: string): Array<Record<string, unknown>> {
  const reqs: Array<Record<string, unknown>> = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    if (line.trim() === '' || line.startsWith('#')) continue;
    let req: Record<string, unknown>;
    if (line.startsWith('{')) {
      try {
        req = JSON.parse(line) as Record<string, unknown>;
      } catch (err) {
        usage(`run line ${i + 1}: not JSON: ${(err as Error).message}`);
      }
    } else {
      const [op, key, ...rest] = line.split(',');
      if (op === 'get' && key !== undefined && rest.length === 0) req = { op: 'get', key };
      else if (op === 'del' && key !== undefined && rest.length === 0) req = { op: 'del', key };
      else if (op === 'put' && key !== undefined && rest.length > 0) req = { op: 'put', key, value: rest.join(',') };
      else usage(`run line ${i + 1}: expected get,KEY  put,KEY,VALUE  del,KEY  or a JSON request`);
    }
    try {
      const v = validateRequest(req);
      if (v.op === 'status' || v.op === 'snapshot') usage(`run line ${i + 1}: ${v.op} is not for run`);
    } catch (err) {
      if (err instanceof UsageError) throw err;
      usage(`run line ${i + 1}: ${(err as Error).message}`);
    }
    reqs.push(req);
  }
  return reqs;
}

/** ckv run: each request in turn, one reply per line. */
async function runScript(c: Client, reqs: Array<Record<string, unknown>>): Promise<number> {
  let code = EXIT_OK;
  for (const req of reqs) {
    try {
      const { cluster: _cluster, ...reply } = await c.request(req);
      out(JSON.stringify(reply) + '\n');
    } catch (err) {
      if (!(err instanceof CkvError)) throw err;
      const mismatch = err instanceof CasMismatchError ? { ...(err.current !== undefined ? { current: err.current } : {}), failed: err.failed } : {};
      out(JSON.stringify({ ok: false, error: { code: err.code, message: err.message }, ...mismatch, ts: c.token }) + '\n');
      if (err.code === ErrorCode.NOT_FOUND || err.code === ErrorCode.CAS_MISMATCH || err.code === ErrorCode.LEASE_NOT_FOUND) code = EXIT_NOT_FOUND;
      else return exitFor(err);
    }
  }
  return code;
}

/** Hold the lock while CMD runs; CMD's exit status (128+N for signal N, 127 if it cannot start). */
async function runWhileHeld(c: Client, cmd: string[], take: () => Promise<Lock>): Promise<number> {
  let lock: Lock;
  try {
    lock = await take();
  } catch (err) {
    if (!(err instanceof LockHeldError)) throw err;
    warn(err.message);
    return EXIT_NOT_FOUND;
  }
  let lost = false;
  const child = spawn(cmd[0]!, cmd.slice(1), { stdio: 'inherit', env: { ...process.env, CKV_FENCE: String(lock.fence), CKV_LOCK_KEY: lock.key } });
  const forward = (sig: NodeJS.Signals) => () => void child.kill(sig);
  const onSignal = { SIGINT: forward('SIGINT'), SIGTERM: forward('SIGTERM'), SIGHUP: forward('SIGHUP') };
  for (const [sig, fn] of Object.entries(onSignal)) process.on(sig, fn);
  const code = await new Promise<number>((resolve) => {
    child.once('error', (err) => {
      warn(`cannot run ${cmd[0]}: ${err.message}`);
      resolve(127);
    });
    child.once('exit', (status, signal) => resolve(status ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0)));
    void lock.lost.then((e) => {
      lost = true;
      warn(`lost ${lock.key}: ${e.message}; stopping ${cmd[0]} (SIGTERM, then SIGKILL after ${LOST_KILL_GRACE_MS} ms)`);
      child.kill('SIGTERM');
      // Another may take the lock once its ttl runs out: CMD must not outlive it for long.
      setTimeout(() => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL'), LOST_KILL_GRACE_MS).unref();
    });
  });
  for (const [sig, fn] of Object.entries(onSignal)) process.off(sig, fn);
  await lock.release().catch((err: Error) => warn(`could not release ${lock.key} (it expires after its ttl): ${err.message}`));
  // (A lost lock is never a success, whatever CMD made of its SIGTERM.)
  return lost ? EXIT_ERROR : code;
}

/** elect --observe: the leader's value now and at every change, until interrupted. */
async function observeLeader(s: Settings, c: Client, key: string): Promise<number> {
  let shown: string | null | undefined;
  const show = (v: string | null): void => {
    if (v === shown) return;
    shown = v;
    if (s.json) json({ leader: v });
    else out(`${v ?? ''}\n`);
  };
  let initialEnd = false;
  const w = c.watch(key, {
    initial: true,
    onInitial: () => {
      initialEnd = true;
      if (shown === undefined) show(null);
    },
  });
  const stop = () => w.stop();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  process.stdout.on('error', stop);
  try {
    for await (const e of w) {
      if (e.op === 'put') show(e.value ?? '');
      else if (initialEnd) show(null);
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
  return EXIT_OK;
}

function eventLine(e: ChangeEvent): string {
  return e.op === 'put' ? `${e.index}\t${e.ts}\tput\t${e.key}\t${lineValue({ value: e.value ?? '', ...(e.b64 ? { b64: true as const } : {}) })}\n` : `${e.index}\t${e.ts}\tdel\t${e.key}\n`;
}

function exitFor(err: CkvError): number {
  switch (err.code) {
    case ErrorCode.NOT_FOUND:
    case ErrorCode.CAS_MISMATCH:
    case ErrorCode.LEASE_NOT_FOUND:
      return EXIT_NOT_FOUND;
    case ErrorCode.BAD_REQUEST:
    case ErrorCode.TOO_LARGE:
      return EXIT_USAGE;
    case ErrorCode.UNAVAILABLE:
    case ErrorCode.TIMEOUT:
      return EXIT_UNAVAILABLE;
    case ErrorCode.AUTH:
      return EXIT_AUTH;
    default:
      return EXIT_ERROR;
  }
}

function report(s: Settings, err: CkvError, c: Client | null, sessionToken: number): number {
  if (err instanceof CasMismatchError) {
    if (s.json) {
      json({ error: { code: err.code, message: err.message }, ...(err.current !== undefined ? { current: err.current } : {}), failed: err.failed, ts: c?.token ?? 0 });
    } else {
      const now = err.current === undefined ? '' : err.current === null ? ' (it is absent)' : ` (it holds ${JSON.stringify(err.current.length > 200 ? err.current.slice(0, 200) + '…' : err.current)})`;
      if (s.command === 'create') warn(`${s.args[0] ?? ''}: already exists${now}`);
      else warn(`cas mismatch${s.command === 'batch' ? ` at ops[${err.failed}]` : ''}: ${err.message}${now}`);
    }
  } else if (err.code === ErrorCode.NOT_FOUND) {
    if (s.json) json({ error: { code: err.code, message: err.message }, ts: c?.token ?? 0 });
    else warn(`${s.args[0] ?? ''}: not found`);
  } else {
    warn(`${err.code}: ${err.message}`);
    if (err.code === ErrorCode.TOKEN_AHEAD) {
      const from = s.afterSource ?? (sessionToken > 0 && s.sessionPath ? `the session file ${s.sessionPath}` : 'the token');
      warn(`the causal token (from ${from}) is ahead of every write in cluster "${s.cluster}"; if the cluster was recreated, remove the file or use --no-session`);
    }
  }
  return exitFor(err);
}

async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  let s: Settings;
  let action: Action;
  try {
    const p = parse(argv, env);
    if ('help' in p) {
      out(p.help);
      return EXIT_OK;
    }
    s = p;
    action = await prepare(s);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    warn(`${err.message}\nTry "ckv --help"${argv.length > 0 && COMMANDS[argv.find((a) => !a.startsWith('-')) ?? ''] ? ` or "ckv help ${argv.find((a) => !a.startsWith('-'))}"` : ''}.`);
    return EXIT_USAGE;
  }

  // The budget counts from the start of this process, so that `ckv --timeout MS` is done
  // within MS (plus EXIT_MARGIN_MS) of being started, module loading included.
  // (Date.now() less the uptime, not performance.timeOrigin: perf_hooks costs milliseconds to load.)
  // (Whole ms: a budget below ATTEMPT_MS_MAX became a request's timeout, which must be an integer.)
  const deadline = Math.floor(Date.now() - process.uptime() * 1000 + s.timeout);
  // Should anything still hold the process open past the margin, exit anyway (and say so).
  // (A budget already spent by start-up still leaves the margin to say so and exit.)
  const watchdog = setTimeout(() => {
    warn(`still running ${EXIT_MARGIN_MS} ms after the --timeout budget: exiting`);
    process.exit(process.exitCode ?? EXIT_UNAVAILABLE);
  }, Math.max(deadline - Date.now(), 0) + EXIT_MARGIN_MS);
  watchdog.unref();
  // A watch (or a lock held while a command runs) runs until done: the budget bounds its
  // connecting and, from there, each request.
  const longRunning = LONG_RUNNING.has(s.command) || (s.command === 'elect' && s.flags.observe === true);
  const budget = { timeout: s.timeout, connectBy: deadline, ...(longRunning ? {} : { deadline }) };
  const connect = () => Client.connect({ servers: s.servers, auth: s.auth, cluster: s.cluster, ...budget, after: s.after, name: 'ckv-cli', oneShot: !longRunning }).catch((err: unknown) => err as CkvError);
  const [session, connected] = await Promise.all([s.sessionPath ? readSessionEntry(s.sessionPath, s.cluster) : Promise.resolve({ ts: 0, id: '' }), connect()]);
  let sessionToken = session.ts;
  if (longRunning) clearTimeout(watchdog);
  if (connected instanceof Error) return report(s, connected instanceof CkvError ? connected : new CkvError(ErrorCode.UNAVAILABLE, String(connected)), null, sessionToken);
  let c = connected;
  c.observe(sessionToken);
  let code: number;
  let dropped = false;
  try {
    code = await action(c);
  } catch (err) {
    if (!(err instanceof CkvError)) throw err;
    // A session token from another incarnation of the cluster (same name, another identity):
    // dropped with a warning, and the command runs again without it.
    if (err.code === ErrorCode.TOKEN_AHEAD && sessionToken > 0 && c.clusterId !== '' && c.clusterId !== session.id) {
      warn(`the session token ${sessionToken} for cluster "${s.cluster}" is from another incarnation of it (identity ${session.id || 'unknown'}, now ${c.clusterId}): dropping it`);
      await c.close();
      const again = await connect();
      if (again instanceof Error) return report(s, again instanceof CkvError ? again : new CkvError(ErrorCode.UNAVAILABLE, String(again)), null, 0);
      c = again;
      sessionToken = 0;
      dropped = true;
      try {
        code = await action(c);
      } catch (err2) {
        if (!(err2 instanceof CkvError)) throw err2;
        code = report(s, err2, c, 0);
      }
    } else code = report(s, err, c, sessionToken);
  } finally {
    await c.close();
  }
  // A busy session lock is waited for only within the exit margin (then the write goes ahead unlocked).
  const lockWait = longRunning ? {} : { lockWaitMs: deadline - Date.now() + EXIT_MARGIN_MS / 2 };
  const newIdentity = c.clusterId !== '' && c.clusterId !== session.id;
  if (s.sessionPath && (c.token > sessionToken || newIdentity)) await saveToken(s.sessionPath, s.cluster, c.token, undefined, { ...lockWait, id: c.clusterId, replace: dropped });
  if (s.printToken && (code === EXIT_OK || code === EXIT_NOT_FOUND)) process.stderr.write(`${c.token}\n`);
  return code;
}

quietOnClosedStdout();
main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`ckv: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exitCode = EXIT_ERROR;
  },
);
