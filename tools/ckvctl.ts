#!/usr/bin/env node
// ckvctl — the operator tool. Offline inspection of a server's data directory
// (log segments and checkpoint), and (in ckvctl-online.ts) online status.
//
// Offline commands only read the data directory, except `log repair`; the
// checkpoint is opened read-only, so they are safe next to a running server.
// Exit codes: 0 ok, 1 problem found / different / not found, 2 usage error.
// Imports only storage code and Node built-ins (no logger, no cron, no NATS).

import { VERSION } from '../src/core/version.js';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Entry } from '../src/core/wire.js';
import { CHECKPOINT_DIR_NAME, LmdbCheckpoint, compareKeys, verifyCheckpoint } from '../src/storage/checkpoint.js';
import type { CheckpointMeta, Rec } from '../src/core/records.js';
import { readLog, repairLog, scanLog, verifyLog } from '../src/storage/log-inspect.js';
import { LOG_DIR_NAME, LogCorruptError } from '../src/storage/segment-format.js';
import { quietOnClosedStdout, writeOut } from '../src/client/stdout.js';
import { newClusterKeyText } from '../src/transport/peer-auth.js';

const EXIT_OK = 0;
const EXIT_PROBLEM = 1;
const EXIT_USAGE = 2;

const USAGE = `usage: ckvctl <command> [options]

Offline (a server's data directory; only 'log repair' changes anything):
  log ls                      segment files: first and last index, entries, bytes
  log dump [--from I] [--to I]  entries in index order
  log verify                  check every segment and record; exit 1 on a problem
  log repair                  cut the log at its first bad record (the server
                              fetches the rest from its peers)
  checkpoint show             metadata, counts and digest
  checkpoint get KEY          one key's value, rev and ts (exit 1 if absent)
  checkpoint dump             every key in key order
  checkpoint verify           open read-only, decode every record, print the digest
  checkpoint diff DIR1 DIR2   compare two data directories' checkpoints: every key's
                              record and the meta (index, epoch, ts, voters), not the
                              cluster identity nor the request ids (exit 0 identical,
                              1 different)
Backup and restore:
  snapshot save FILE          a consistent copy of a running cluster (online; see
                              'ckvctl snapshot save --help')
  snapshot show FILE          check a snapshot file through and print what it holds
  snapshot restore FILE --data DIR --id N --voters 1,2,3 [--token T]
                              make a new cluster's data directory from it
Setting up:
  keygen FILE                 make a new cluster key (32 random bytes, hex, mode 0600; never
                              overwrites): give it to every server with --cluster-key FILE
Online:
  status [...]                cluster status (see 'ckvctl status --help')
  member add|remove ID [...]  change the voter set by one server (see 'ckvctl member --help')

Options:
  --data DIR   the data directory (default: $CKV_DATA)
  --json       machine-readable output (dumps print one JSON object per line)
  -h, --help   this text

--version prints the version.

Exit codes: 0 ok, 1 problem found / different / not found, 2 usage error.
`;

class UsageError extends Error {}

function out(s: string): void {
  writeOut(s + '\n');
}

function err(s: string): void {
  process.stderr.write(s + '\n');
}

function json(x: unknown): void {
  out(JSON.stringify(x, null, 2));
}

/** Columns padded to their widest cell; the last column is not padded. */
function table(headers: string[], rows: string[][]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  out(line(headers));
  for (const r of rows) out(line(r));
}

function nonNegativeInt(s: string | undefined, flag: string): number | undefined {
  if (s === undefined) return undefined;
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) throw new UsageError(`${flag} takes a non-negative integer, not ${JSON.stringify(s)}`);
  return Number(s);
}

interface Opts {
  data: string | undefined;
  json: boolean;
  from: number | undefined;
  to: number | undefined;
}

function dataDir(o: Opts): string {
  const d = o.data ?? process.env.CKV_DATA;
  if (d === undefined || d === '') throw new UsageError('no data directory: give --data DIR or set CKV_DATA');
  return d;
}

function expectArgs(args: string[], n: number, what: string): void {
  if (args.length !== n) throw new UsageError(`${what} takes ${n === 0 ? 'no arguments' : `${n} argument${n > 1 ? 's' : ''}`}`);
}

// ---------------------------------------------------------------------------
// log

function logDir(o: Opts): string {
  const dir = path.join(dataDir(o), LOG_DIR_NAME);
  if (!fs.existsSync(dir)) throw new NotFound(`no log at ${dir}`);
  return dir;
}

/** A missing directory or key: exit 1 with a message. */
class NotFound extends Error {}

function entryLine(e: Entry): string[] {
  let detail = '';
  switch (e.kind) {
    case 'noop':
      break;
    case 'config':
      detail = `voters=${e.voters.join(',')}${e.keepOut ? ` keepOut=${e.keepOut.join(',')}` : ''}`;
      break;
    case 'write': {
      const ops = e.ops.map((op) => {
        switch (op.op) {
          case 'put':
            return `put ${op.key}=${JSON.stringify(op.value)}${op.ttl !== undefined ? ` ttl=${op.ttl}ms` : ''}`;
          case 'del':
            return `del ${op.key}`;
          case 'delprefix':
            return `delprefix ${JSON.stringify(op.prefix)}`;
          case 'expire':
            return `expire ${op.key} rev=${op.rev}`;
          case 'cas':
            return `cas ${op.key} ${'expectRev' in op ? `expectRev=${op.expectRev}` : `expect=${JSON.stringify(op.expect)}`} value=${JSON.stringify(op.value)}`;
        }
      });
      detail = (e.rid !== undefined ? `rid=${e.rid} ` : '') + ops.join('; ');
      break;
    }
  }
  return [String(e.index), String(e.epoch), String(e.ts), e.kind, detail];
}

function logLs(o: Opts): number {
  const segs = scanLog(logDir(o));
  if (o.json) json(segs);
  else {
    table(
      ['FILE', 'FIRST', 'LAST', 'ENTRIES', 'BYTES', 'PROBLEM'],
      segs.map((s) => [path.basename(s.file), String(s.firstIndex), String(s.lastIndex), String(s.count), String(s.bytes), s.problem ?? '']),
    );
  }
  return segs.some((s) => s.problem !== null) ? EXIT_PROBLEM : EXIT_OK;
}

function logDump(o: Opts): number {
  const dir = logDir(o);
  const from = o.from ?? 1;
  const to = o.to ?? Number.MAX_SAFE_INTEGER;
  if (from > to) throw new UsageError('--from is beyond --to');
  // Rows are printed as they come; the table's widths are fixed for that.
  const widths = [8, 5, 8, 6];
  if (!o.json) out(['INDEX', 'EPOCH', 'TS', 'KIND', 'DETAIL'].map((h, i) => (i < 4 ? h.padEnd(widths[i]!) : h)).join('  '));
  try {
    for (const e of readLog(dir, from, to)) {
      if (o.json) out(JSON.stringify(e));
      else out(entryLine(e).map((c, i) => (i < 4 ? c.padEnd(widths[i]!) : c)).join('  ').trimEnd());
    }
  } catch (e) {
    if (e instanceof LogCorruptError) {
      err(`ckvctl: stopped: ${e.message}`);
      return EXIT_PROBLEM;
    }
    throw e;
  }
  return EXIT_OK;
}

function logVerify(o: Opts): number {
  const dir = logDir(o);
  const segs = scanLog(dir);
  const problems = verifyLog(dir);
  const entries = segs.reduce((n, s) => n + s.count, 0);
  const first = segs.length > 0 ? segs[0]!.firstIndex : 0;
  const last = segs.length > 0 ? segs[segs.length - 1]!.lastIndex : 0;
  if (o.json) json({ ok: problems.length === 0, dir, segments: segs.length, entries, first, last, problems });
  else if (problems.length === 0) out(`ok: ${segs.length} segments, ${entries} entries${entries > 0 ? `, ${first}..${last}` : ''}`);
  else {
    for (const p of problems) {
      out(`${p.file}: byte ${p.offset}: ${p.reason}${p.torn ? ' (torn tail: the server cuts it on open)' : ''}`);
    }
    out(`${problems.length} problem${problems.length === 1 ? '' : 's'}; 'ckvctl log repair' cuts the log at the first one`);
  }
  return problems.length === 0 ? EXIT_OK : EXIT_PROBLEM;
}

function logRepair(o: Opts): number {
  const r = repairLog(logDir(o));
  if (o.json) json(r === null ? { repaired: false } : { repaired: true, ...r });
  else if (r === null) out('nothing to repair: the log has no problem');
  else {
    out(`cut ${r.file} at byte ${r.offset}: ${r.reason}`);
    out(`dropped ${r.bytesDropped} bytes, ${r.entriesDropped} readable entries after the cut`);
    for (const f of r.segmentsDeleted) out(`deleted ${f}`);
  }
  return EXIT_OK;
}

// ---------------------------------------------------------------------------
// checkpoint

/** A data directory holds the checkpoint in checkpoint/; a checkpoint directory itself is accepted too. */
function checkpointDirOf(dir: string): string {
  const sub = path.join(dir, CHECKPOINT_DIR_NAME);
  if (fs.existsSync(path.join(sub, 'data.mdb'))) return sub;
  if (fs.existsSync(path.join(dir, 'data.mdb'))) return dir;
  throw new NotFound(`no checkpoint at ${sub}`);
}

async function withCheckpoint<T>(dir: string, f: (cp: LmdbCheckpoint) => T): Promise<T> {
  const cp = await LmdbCheckpoint.open(checkpointDirOf(dir), { readOnly: true });
  try {
    return f(cp);
  } finally {
    await cp.close();
  }
}

function metaRows(m: CheckpointMeta): string[][] {
  return [
    ['format', String(m.format)],
    ['index', String(m.index)],
    ['epoch', String(m.epoch)],
    ['ts', String(m.ts)],
    ['voters', m.voters.join(',')],
    ['keepOut', (m.keepOut ?? []).join(',') || '-'],
    ['eventPrev', String(m.eventPrev)],
  ];
}

function kv(rows: string[][]): void {
  const w = Math.max(...rows.map((r) => r[0]!.length));
  for (const [k, v] of rows) out(`${k!.padEnd(w)}  ${v}`);
}

async function checkpointShow(o: Opts): Promise<number> {
  const dir = dataDir(o);
  return withCheckpoint(dir, (cp) => {
    const meta = cp.meta();
    const counts = cp.counts();
    const digest = cp.digest();
    if (o.json) json({ dir: cp.dir, meta, keys: counts.keys, rids: counts.rids, digest });
    else kv([['dir', cp.dir], ...metaRows(meta), ['keys', String(counts.keys)], ['rids', String(counts.rids)], ['digest', digest]]);
    return EXIT_OK;
  });
}

async function checkpointGet(o: Opts, key: string): Promise<number> {
  return withCheckpoint(dataDir(o), (cp) => {
    const rec = cp.get(key);
    if (rec === undefined) {
      if (o.json) json(null);
      err(`ckvctl: ${JSON.stringify(key)} is not in the checkpoint (index ${cp.meta().index})`);
      return EXIT_PROBLEM;
    }
    if (o.json) json({ key, ...rec });
    else kv([['key', key], ['value', JSON.stringify(rec.value)], ['rev', String(rec.rev)], ['ts', String(rec.ts)]]);
    return EXIT_OK;
  });
}

async function checkpointDump(o: Opts): Promise<number> {
  return withCheckpoint(dataDir(o), (cp) => {
    if (o.json) {
      for (const [key, rec] of cp.entries()) out(JSON.stringify({ key, ...rec }));
      return EXIT_OK;
    }
    const rows: string[][] = [];
    for (const [key, rec] of cp.entries()) rows.push([key, String(rec.rev), String(rec.ts), JSON.stringify(rec.value)]);
    table(['KEY', 'REV', 'TS', 'VALUE'], rows);
    return EXIT_OK;
  });
}

async function checkpointVerify(o: Opts): Promise<number> {
  const dir = checkpointDirOf(dataDir(o));
  const r = await verifyCheckpoint(dir);
  const ok = r.problems.length === 0;
  if (o.json) json({ ok, dir, ...r });
  else {
    for (const p of r.problems) out(`problem: ${p}`);
    if (r.meta !== null) out(`index ${r.meta.index}, ${r.keys} keys, ${r.rids} rids, ${r.events} events of history (all above index ${r.historyFloor ?? '-'}), digest ${r.digest ?? '-'}`);
    out(ok ? 'ok' : `${r.problems.length} problem${r.problems.length === 1 ? '' : 's'}`);
  }
  return ok ? EXIT_OK : EXIT_PROBLEM;
}

interface KeyDiff {
  key: string;
  left: Rec | null;
  right: Rec | null;
}

function sameRec(a: Rec, b: Rec): boolean {
  return a.value === b.value && a.rev === b.rev && a.ts === b.ts && a.ttl === b.ttl;
}

function sameMeta(a: CheckpointMeta, b: CheckpointMeta): Array<keyof CheckpointMeta> {
  const fields: Array<keyof CheckpointMeta> = [];
  for (const f of ['format', 'index', 'epoch', 'ts', 'eventPrev'] as const) if (a[f] !== b[f]) fields.push(f);
  if (a.voters.join(',') !== b.voters.join(',')) fields.push('voters');
  if ((a.keepOut ?? []).join(',') !== (b.keepOut ?? []).join(',')) fields.push('keepOut');
  return fields;
}

async function checkpointDiff(o: Opts, dir1: string, dir2: string): Promise<number> {
  const a = await LmdbCheckpoint.open(checkpointDirOf(dir1), { readOnly: true });
  try {
    const b = await LmdbCheckpoint.open(checkpointDirOf(dir2), { readOnly: true });
    try {
      const ma = a.meta();
      const mb = b.meta();
      const metaDiff = sameMeta(ma, mb);
      const keys: KeyDiff[] = [];
      // Merge the two key-ordered streams.
      const ia = a.entries()[Symbol.iterator]();
      const ib = b.entries()[Symbol.iterator]();
      let ea = ia.next();
      let eb = ib.next();
      while (!ea.done || !eb.done) {
        const c = ea.done ? 1 : eb.done ? -1 : compareKeys(ea.value[0], eb.value[0]);
        if (c < 0) {
          keys.push({ key: ea.value![0], left: ea.value![1], right: null });
          ea = ia.next();
        } else if (c > 0) {
          keys.push({ key: eb.value![0], left: null, right: eb.value![1] });
          eb = ib.next();
        } else {
          if (!sameRec(ea.value![1], eb.value![1])) keys.push({ key: ea.value![0], left: ea.value![1], right: eb.value![1] });
          ea = ia.next();
          eb = ib.next();
        }
      }
      const identical = metaDiff.length === 0 && keys.length === 0;
      if (o.json) {
        json({ identical, left: { dir: a.dir, meta: ma }, right: { dir: b.dir, meta: mb }, metaDiffers: metaDiff, keys });
      } else {
        // (The cluster identity and the exactly-once table are shown, not compared: a restored
        // cluster holds the same state under a new identity.)
        const side = (c: LmdbCheckpoint, m: CheckpointMeta): string => `${c.dir} (index ${m.index}, identity ${m.cluster ?? '-'}, ${c.counts().rids} request ids)`;
        out(`left:  ${side(a, ma)}`);
        out(`right: ${side(b, mb)}`);
        for (const f of metaDiff) {
          out(`meta.${f} differs: ${JSON.stringify(ma[f])} vs ${JSON.stringify(mb[f])}`);
        }
        if (keys.length > 0) {
          const show = (r: Rec | null): string => (r === null ? '(absent)' : `${JSON.stringify(r.value)} rev ${r.rev} ts ${r.ts}`);
          table(
            ['KEY', 'LEFT', 'RIGHT'],
            keys.map((k) => [k.key, show(k.left), show(k.right)]),
          );
        }
        out(identical ? 'identical' : `different: ${keys.length} key${keys.length === 1 ? '' : 's'}${metaDiff.length > 0 ? ' and meta' : ''}`);
      }
      return identical ? EXIT_OK : EXIT_PROBLEM;
    } finally {
      await b.close();
    }
  } finally {
    await a.close();
  }
}

// ---------------------------------------------------------------------------

async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'snapshot') {
    // ---- backup and restore: ckvctl-snapshot.ts (save loads NATS, show and restore do not) ----
    return (await import('./ckvctl-snapshot.js')).runSnapshot(argv.slice(1));
  }
  if (argv[0] === 'status' || argv[0] === 'member') {
    // ---- online commands: implemented in ckvctl-online.ts (loaded only when used) ----
    const online = await import('./ckvctl-online.js');
    return argv[0] === 'status' ? online.runStatus(argv.slice(1)) : online.runMember(argv.slice(1));
  }
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      data: { type: 'string' },
      json: { type: 'boolean', default: false },
      from: { type: 'string' },
      to: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
      version: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    out(USAGE.trimEnd());
    return EXIT_OK;
  }
  if (values.version) {
    out(`ckvctl ${VERSION}`);
    return EXIT_OK;
  }
  const o: Opts = {
    data: values.data,
    json: values.json === true,
    from: nonNegativeInt(values.from, '--from'),
    to: nonNegativeInt(values.to, '--to'),
  };
  const [group, cmd, ...args] = positionals;
  if (group === undefined) throw new UsageError('no command');
  if ((o.from !== undefined || o.to !== undefined) && !(group === 'log' && cmd === 'dump')) {
    throw new UsageError('--from and --to go with log dump');
  }
  if (group === 'keygen') {
    expectArgs(cmd === undefined ? [] : [cmd, ...args], 1, 'keygen');
    fs.writeFileSync(cmd!, newClusterKeyText(), { flag: 'wx', mode: 0o600 });
    out(`wrote a new cluster key to ${cmd}`);
    return EXIT_OK;
  }
  if (group === 'log') {
    switch (cmd) {
      case 'ls':
        expectArgs(args, 0, 'log ls');
        return logLs(o);
      case 'dump':
        expectArgs(args, 0, 'log dump');
        return logDump(o);
      case 'verify':
        expectArgs(args, 0, 'log verify');
        return logVerify(o);
      case 'repair':
        expectArgs(args, 0, 'log repair');
        return logRepair(o);
    }
    throw new UsageError(`unknown log command ${JSON.stringify(cmd ?? '')}`);
  }
  if (group === 'checkpoint') {
    switch (cmd) {
      case 'show':
        expectArgs(args, 0, 'checkpoint show');
        return checkpointShow(o);
      case 'get':
        expectArgs(args, 1, 'checkpoint get');
        return checkpointGet(o, args[0]!);
      case 'dump':
        expectArgs(args, 0, 'checkpoint dump');
        return checkpointDump(o);
      case 'verify':
        expectArgs(args, 0, 'checkpoint verify');
        return checkpointVerify(o);
      case 'diff':
        expectArgs(args, 2, 'checkpoint diff');
        return checkpointDiff(o, args[0]!, args[1]!);
    }
    throw new UsageError(`unknown checkpoint command ${JSON.stringify(cmd ?? '')}`);
  }
  throw new UsageError(`unknown command ${JSON.stringify(group)}`);
}

quietOnClosedStdout();
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    // (Not every error's code is a string: LMDB's are numbers.)
    const code = (e as { code?: unknown }).code;
    const usage = e instanceof UsageError || (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'));
    if (usage) {
      err(`ckvctl: ${(e as Error).message}`);
      err(`run 'ckvctl --help' for usage`);
      process.exitCode = EXIT_USAGE;
    } else {
      err(`ckvctl: ${(e as Error).message}`);
      process.exitCode = EXIT_PROBLEM;
    }
  },
);
