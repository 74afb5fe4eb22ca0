// ckvctl snapshot: backup and restore.
//
//   save FILE      online: one server's checkpoint, holding every write acknowledged
//                  before the command started, written to FILE (via FILE.part, fsync'd)
//   show FILE      offline: check a snapshot file through and print what it holds
//   restore FILE   offline: make a new server's data directory from it, for a new cluster
//
// The file is JSON lines: a header (format, source, the checkpoint's meta and counts),
// one line per key in key order, one per remembered request id, and an end line with the
// counts, the state digest (as `ckvctl checkpoint show` prints it) and the sha256 of every
// byte before it. A file that is cut short or changed in any byte is refused whole.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { parseArgs } from 'node:util';
import { CHECKPOINT_FORMAT, metaProblem, recProblem, ridRecordProblem, type CheckpointMeta, type Rec, type RidRecord } from '../src/core/records.js';
import { CLUSTER_DEFAULT, CLUSTER_ID_PATTERN, KEY_BYTES_MAX, RID_BYTES_MAX } from '../src/core/limits.js';
import { VERSION } from '../src/core/version.js';
import { writeOut } from '../src/client/stdout.js';
import { NATS_AUTH_HELP } from '../src/transport/nats-auth.js';
import { CHECKPOINT_DIR_NAME, LmdbCheckpoint, StateDigest, compareKeys } from '../src/storage/checkpoint.js';

/** Version of the snapshot file's layout (its header says). */
export const SNAPSHOT_FILE_FORMAT = 1;
/** A save starts again this often when the server's checkpoint moves under it. */
const SAVE_TRIES_MAX = 3;

const SAVE_HELP = `usage: ckvctl snapshot save FILE [--server ID] [--nats URL] [--cluster NAME] [--timeout MS]

Copies one server's checkpoint into FILE: the coordinator's unless --server names
another. It holds every write acknowledged before the command started (a strong
read first fixes the token the server must reach; the server then checkpoints and
holds that checkpoint still while it is read, page by page). FILE is written as
FILE.part, fsync'd and renamed. --timeout bounds each request (default 10000 ms).
Exit 0 saved, 1 failed, 2 usage error, 3 no server answered, 5 NATS refused the
credentials. The client identity of tools/nats-secure.conf may save (the admin subject).`;

const RESTORE_HELP = `usage: ckvctl snapshot restore FILE --data DIR --id N --voters 1,2,3 [--token TEXT]

Makes DIR (which must be absent or empty) the data directory of server N of a new
cluster, holding the snapshot's state: restore every voter's directory from the
same FILE with the same --voters (and --token), then start the servers. The new
cluster's identity is derived from the file, the voters and the token, so the
restored servers agree on it, and it differs from the original cluster's: tokens
of the old cluster are refused by the new one. Use a different --token for each
new cluster restored from one file. Exit 0 done, 1 failed, 2 usage error.`;

const SHOW_HELP = `usage: ckvctl snapshot show FILE [--json]

Reads FILE through, checks every line, the counts, the state digest and the
checksum, and prints its header. Exit 0 if it is whole, 1 if not.`;

interface Header {
  ckvSnapshot: number;
  version: string;
  savedAt: string;
  cluster: string;
  clusterId?: string;
  server: number;
  meta: CheckpointMeta;
  counts: { keys: number; rids: number };
}

interface EndLine {
  end: true;
  keys: number;
  rids: number;
  digest: string;
  sha256: string;
}

/** A snapshot file that is not whole: where and why. */
class SnapshotFileError extends Error {}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function isNat(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function headerProblem(h: unknown): string | null {
  if (!isObject(h) || h.ckvSnapshot === undefined) return 'the first line is not a ckv snapshot header';
  if (h.ckvSnapshot !== SNAPSHOT_FILE_FORMAT) return `snapshot format ${JSON.stringify(h.ckvSnapshot)} is not ${SNAPSHOT_FILE_FORMAT} (made by a newer ckvctl?)`;
  const mp = metaProblem(h.meta);
  if (mp !== null) return `header: ${mp}`;
  if (!isObject(h.counts) || !isNat(h.counts.keys) || !isNat(h.counts.rids)) return 'header: counts are not two non-negative integers';
  if (!isNat(h.server) || typeof h.cluster !== 'string') return 'header: server or cluster missing';
  return null;
}

export interface SnapshotContents {
  header: Header;
  kv: Array<[string, Rec]>;
  rids: Array<[string, RidRecord]>;
  digest: string;
  sha256: string;
}

/** Read and check a whole snapshot file; throws SnapshotFileError naming the line. */
export async function readSnapshotFile(file: string): Promise<SnapshotContents> {
  const hash = createHash('sha256');
  const lines = readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity });
  let n = 0;
  let header: Header | null = null;
  let end: EndLine | null = null;
  let digest: StateDigest | null = null;
  let sha256 = '';
  const kv: Array<[string, Rec]> = [];
  const rids: Array<[string, RidRecord]> = [];
  const seenRids = new Set<string>();
  const fail = (why: string): never => {
    throw new SnapshotFileError(`${file}: line ${n}: ${why}`);
  };
  for await (const line of lines) {
    n++;
    if (end !== null) {
      if (line === '') continue;
      fail('text after the end line');
    }
    let x: unknown;
    try {
      x = JSON.parse(line);
    } catch {
      fail('not JSON (the file is damaged)');
    }
    if (header === null) {
      const p = headerProblem(x);
      if (p !== null) fail(p);
      header = x as Header;
      digest = new StateDigest(header.meta.index);
      hash.update(line + '\n');
      continue;
    }
    if (!isObject(x)) fail('not an object');
    const o = x as Record<string, unknown>;
    if (o.end === true) {
      sha256 = hash.digest('hex');
      end = o as unknown as EndLine;
      continue;
    }
    hash.update(line + '\n');
    if (typeof o.k === 'string') {
      if (rids.length > 0) fail('a key after the request ids');
      if (o.k === '' || Buffer.byteLength(o.k) > KEY_BYTES_MAX) fail(`key ${JSON.stringify(o.k)} is empty or longer than ${KEY_BYTES_MAX} bytes`);
      const rp = recProblem(o.r);
      if (rp !== null) fail(`key ${JSON.stringify(o.k)}: ${rp}`);
      const rec = o.r as Rec;
      if (rec.rev > header.meta.index) fail(`key ${JSON.stringify(o.k)}: rev ${rec.rev} is beyond the snapshot's index ${header.meta.index}`);
      const prev = kv[kv.length - 1];
      if (prev !== undefined && compareKeys(prev[0], o.k) >= 0) fail(`key ${JSON.stringify(o.k)} is out of order`);
      kv.push([o.k, rec]);
      digest!.add(o.k, rec);
    } else if (typeof o.i === 'string') {
      if (o.i === '' || o.i.length > RID_BYTES_MAX) fail('a request id is empty or too long');
      const rp = ridRecordProblem(o.r);
      if (rp !== null) fail(`request id ${JSON.stringify(o.i)}: ${rp}`);
      if (seenRids.has(o.i)) fail(`request id ${JSON.stringify(o.i)} appears twice`);
      if ((o.r as RidRecord).index > header.meta.index) fail(`request id ${JSON.stringify(o.i)} is beyond the snapshot's index ${header.meta.index}`);
      seenRids.add(o.i);
      rids.push([o.i, o.r as RidRecord]);
    } else {
      fail('neither a key, a request id nor the end line');
    }
  }
  if (header === null) throw new SnapshotFileError(`${file}: empty: not a snapshot`);
  if (end === null) throw new SnapshotFileError(`${file}: no end line: the file is cut short (an unfinished save?)`);
  const got = { digest: digest!.hex(), sha256 };
  if (end.sha256 !== got.sha256) throw new SnapshotFileError(`${file}: checksum mismatch: the file is damaged`);
  if (end.keys !== kv.length || end.rids !== rids.length || header.counts.keys !== kv.length || header.counts.rids !== rids.length) {
    throw new SnapshotFileError(`${file}: holds ${kv.length} keys and ${rids.length} request ids, its counts say ${end.keys} and ${end.rids}`);
  }
  if (end.digest !== got.digest) throw new SnapshotFileError(`${file}: state digest mismatch`);
  return { header, kv, rids, ...got };
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------
// save (online)

export async function runSnapshotSave(argv: string[]): Promise<number> {
  const online = await import('./ckvctl-online.js');
  const a = online.parseOnline(argv, 'snapshot save', `${SAVE_HELP}\n\n${NATS_AUTH_HELP}`, 10_000, { positionals: true, options: { server: { type: 'string' } } });
  if (typeof a === 'number') return a;
  if (a.positionals.length !== 1) {
    process.stderr.write(`ckvctl snapshot save: give one FILE\n${SAVE_HELP}\n`);
    return 2;
  }
  const file = a.positionals[0]!;
  let server: number | undefined;
  if (a.values.server !== undefined) {
    server = Number(a.values.server);
    if (!/^[0-9]+$/.test(String(a.values.server)) || !Number.isSafeInteger(server) || server < 1) {
      process.stderr.write('ckvctl snapshot save: --server takes a server id (a positive integer)\n');
      return 2;
    }
  }
  const client = await online.connectOnline('snapshot save', a);
  if (typeof client === 'number') return client;
  const part = `${file}.part`;
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        const h = await saveOnce(client, part, server, String(a.values.cluster ?? process.env.CKV_CLUSTER ?? CLUSTER_DEFAULT));
        fs.renameSync(part, file);
        fsyncDir(path.dirname(path.resolve(file)));
        writeOut(`saved ${h.counts.keys} keys and ${h.counts.rids} request ids at index ${h.meta.index} (ts ${h.meta.ts}) from server ${h.server} to ${file}\n`);
        return 0;
      } catch (err) {
        const e = err as { code?: unknown; message: string };
        fs.rmSync(part, { force: true });
        if (e.code === 'UNAVAILABLE' && / during the snapshot|held by a transfer/.test(e.message) && attempt < SAVE_TRIES_MAX) {
          process.stderr.write(`ckvctl snapshot save: ${e.message}\n`);
          continue;
        }
        process.stderr.write(`ckvctl snapshot save: ${e.message}\n`);
        return e.code === 'AUTH' ? 5 : e.code === 'UNAVAILABLE' || e.code === 'TIMEOUT' ? 3 : 1;
      }
    }
  } finally {
    await client.close();
  }
}

async function saveOnce(client: import('../src/client/client.js').Client, part: string, server: number | undefined, cluster: string): Promise<Header> {
  const snap = await client.snapshot(server !== undefined ? { server } : {});
  const header: Header = {
    ckvSnapshot: SNAPSHOT_FILE_FORMAT,
    version: VERSION,
    savedAt: new Date().toISOString(),
    cluster,
    ...(snap.meta.cluster !== undefined ? { clusterId: snap.meta.cluster } : {}),
    server: snap.server,
    meta: snap.meta,
    counts: snap.counts,
  };
  const hash = createHash('sha256');
  const digest = new StateDigest(snap.meta.index);
  const fd = fs.openSync(part, 'w', 0o600);
  const total = snap.counts.keys + snap.counts.rids;
  const tty = process.stderr.isTTY === true;
  let done = 0;
  let keys = 0;
  let rids = 0;
  try {
    const write = (text: string): void => {
      hash.update(text);
      fs.writeSync(fd, text);
    };
    write(JSON.stringify(header) + '\n');
    for await (const page of snap.pages()) {
      let text = '';
      for (const [name, rec] of page.items) {
        if (page.phase === 'kv') {
          // Checked here as restore will check it: a save never writes a file restore refuses.
          if (recProblem(rec) !== null) throw new Error(`server ${snap.server} sent a malformed record for key ${JSON.stringify(name)}`);
          digest.add(name, rec as Rec);
          keys++;
          text += JSON.stringify({ k: name, r: rec }) + '\n';
        } else {
          if (ridRecordProblem(rec) !== null) throw new Error(`server ${snap.server} sent a malformed request id record`);
          rids++;
          text += JSON.stringify({ i: name, r: rec }) + '\n';
        }
      }
      write(text);
      done += page.items.length;
      if (tty) process.stderr.write(`\rsaving: ${done}/${total} records (${total === 0 ? 100 : Math.floor((done * 100) / total)}%)`);
    }
    if (tty) process.stderr.write('\n');
    if (keys !== snap.counts.keys || rids !== snap.counts.rids) throw new Error(`server ${snap.server} said ${snap.counts.keys} keys and ${snap.counts.rids} request ids but sent ${keys} and ${rids}`);
    const end: EndLine = { end: true, keys, rids, digest: digest.hex(), sha256: hash.digest('hex') };
    fs.writeSync(fd, JSON.stringify(end) + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return header;
}

// ---------------------------------------------------------------------------
// show, restore (offline)

class Usage extends Error {}

export async function runSnapshotShow(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, strict: true, options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) return writeOut(`${SHOW_HELP}\n`), 0;
  if (positionals.length !== 1) throw new Usage('snapshot show takes one FILE');
  const s = await readSnapshotFile(positionals[0]!);
  const { header: h } = s;
  if (values.json) writeOut(JSON.stringify({ ...h, digest: s.digest, sha256: s.sha256 }) + '\n');
  else {
    writeOut(
      [
        `file:      ${positionals[0]}`,
        `saved:     ${h.savedAt} by ckvctl ${h.version}, from server ${h.server} of cluster ${h.cluster}${h.clusterId ? ` (identity ${h.clusterId})` : ''}`,
        `index:     ${h.meta.index} (epoch ${h.meta.epoch}, ts ${h.meta.ts})`,
        `voters:    ${h.meta.voters.length > 0 ? h.meta.voters.join(',') : '(as the servers were started)'}`,
        `keys:      ${h.counts.keys}`,
        `rids:      ${h.counts.rids}`,
        `digest:    ${s.digest}`,
        `sha256:    ${s.sha256}`,
        'whole:     yes',
      ].join('\n') + '\n',
    );
  }
  return 0;
}

function parseVoters(text: string | undefined): number[] {
  if (text === undefined) throw new Usage('restore needs --voters (the new cluster\'s voters, e.g. 1,2,3)');
  const ids = text.split(',').map((t) => (/^[0-9]+$/.test(t.trim()) ? Number(t.trim()) : NaN));
  if (ids.length === 0 || ids.some((v) => !Number.isSafeInteger(v) || v < 1)) throw new Usage(`--voters takes server ids separated by commas, not ${JSON.stringify(text)}`);
  if (new Set(ids).size !== ids.length) throw new Usage('--voters names a server twice');
  return [...ids].sort((x, y) => x - y);
}

/** The new cluster's identity: the same for every voter restored from one file with the same voters and token. */
export function restoredClusterId(sha256: string, voters: number[], token: string): string {
  const id = createHash('sha256').update(`ckv-restore-v1\n${sha256}\n${voters.join(',')}\n${token}`).digest('base64url').slice(0, 22);
  if (!CLUSTER_ID_PATTERN.test(id)) throw new Error('restore: derived cluster identity does not match its pattern'); // (base64url always does)
  return id;
}

export async function runSnapshotRestore(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: { data: { type: 'string' }, id: { type: 'string' }, voters: { type: 'string' }, token: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) return writeOut(`${RESTORE_HELP}\n`), 0;
  if (positionals.length !== 1) throw new Usage('snapshot restore takes one FILE');
  const data = values.data ?? process.env.CKV_DATA;
  if (data === undefined || data === '') throw new Usage('restore needs --data DIR (the new server\'s data directory)');
  const voters = parseVoters(values.voters);
  const id = Number(values.id);
  if (values.id === undefined || !/^[0-9]+$/.test(values.id) || !Number.isSafeInteger(id) || id < 1) throw new Usage('restore needs --id N (the server the directory is for)');
  if (!voters.includes(id)) throw new Usage(`--id ${id} is not one of --voters ${voters.join(',')}`);
  if (fs.existsSync(data) && fs.readdirSync(data).length > 0) {
    throw new Error(`${data} is not empty: restore makes a new data directory (move the old one away first)`);
  }
  // Everything is checked before anything is written.
  const s = await readSnapshotFile(positionals[0]!);
  const cluster = restoredClusterId(s.sha256, voters, values.token ?? '');
  const meta: CheckpointMeta = {
    format: CHECKPOINT_FORMAT,
    index: s.header.meta.index,
    epoch: s.header.meta.epoch,
    ts: s.header.meta.ts,
    voters,
    eventPrev: s.header.meta.eventPrev,
    cluster,
  };
  fs.mkdirSync(data, { recursive: true });
  // Built aside and renamed into place: a restore cut short leaves no checkpoint a server would start from.
  const building = path.join(data, `${CHECKPOINT_DIR_NAME}-restoring`);
  const ckpt = await LmdbCheckpoint.open(building);
  try {
    await ckpt.write({ kv: s.kv, ridsSet: s.rids, ridsDel: [], meta });
    if (ckpt.digest() !== s.digest) throw new Error('restore: the written checkpoint\'s digest differs from the snapshot\'s');
  } finally {
    await ckpt.close();
  }
  fs.renameSync(building, path.join(data, CHECKPOINT_DIR_NAME));
  fsyncDir(data);
  if (values.json) writeOut(JSON.stringify({ data, id, voters, cluster, index: meta.index, ts: meta.ts, keys: s.kv.length, rids: s.rids.length, digest: s.digest }) + '\n');
  else {
    writeOut(
      `restored ${s.kv.length} keys and ${s.rids.length} request ids at index ${meta.index} into ${data}\n` +
        `new cluster identity ${cluster} (the same for every voter restored from this file with --voters ${voters.join(',')}${values.token ? ' and this --token' : ''})\n` +
        `start it with: ckv-server --id ${id} --voters ${voters.join(',')} --data ${data} --cluster-key KEYFILE [--cluster NAME] [--nats URL]\n` +
        `(KEYFILE: the new cluster's key, from ckvctl keygen, the same for all its servers; the old cluster's works too)\n`,
    );
  }
  return 0;
}

const SNAPSHOT_HELP = `usage: ckvctl snapshot save|show|restore ... (each takes --help)

  save FILE       a consistent copy of a running cluster, holding every write
                  acknowledged before it started
  show FILE       check a snapshot file through and print what it holds
  restore FILE --data DIR --id N --voters 1,2,3 [--token T]
                  make a new cluster's data directory from it`;

/** `ckvctl snapshot …`: resolves to the exit code; usage errors exit 2. */
export async function runSnapshot(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === '--help' || verb === '-h' || verb === 'help') return writeOut(`${SNAPSHOT_HELP}\n`), 0;
  try {
    switch (verb) {
      case 'save':
        return await runSnapshotSave(rest);
      case 'show':
        return await runSnapshotShow(rest);
      case 'restore':
        return await runSnapshotRestore(rest);
      default:
        throw new Usage(`unknown snapshot command ${JSON.stringify(verb ?? '')} (save, show, restore)`);
    }
  } catch (err) {
    const e = err as { code?: unknown; message: string };
    const usage = err instanceof Usage || (typeof e.code === 'string' && e.code.startsWith('ERR_PARSE_ARGS'));
    process.stderr.write(`ckvctl snapshot ${verb ?? ''}: ${e.message}\n`);
    return usage ? 2 : 1;
  }
}
