// ckvctl's online commands: the cluster's status table, as the servers' ping
// daemons see it, and membership changes. Loaded only for `ckvctl status` and
// `ckvctl member`, so offline commands never load NATS.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { Client, type CkvError } from '../src/client/client.js';
import { CLUSTER_DEFAULT, NATS_URL_DEFAULT } from '../src/core/limits.js';
import { formatStatusTable, hasCoordinator, statusRows } from '../src/client/status-table.js';
import { writeOut } from '../src/client/stdout.js';
import { NATS_AUTH_HELP, NATS_AUTH_OPTIONS, NatsAuthUsageError, resolveNatsAuth, type NatsAuth } from '../src/transport/nats-auth.js';

const HELP = `usage: ckvctl status [--nats URL] [--cluster NAME] [--json] [--timeout MS]

Asks every server for its status and prints one row per server known to any of
them: id, role, epoch, liveness (alive/suspect/dead, as the coordinator's ping
daemon sees it), last/commit/applied/checkpoint index, and lag (entries behind
the coordinator's commit). The coordinator (marked *) is the server that answered
claiming the highest epoch; another still claiming the role shows as "coordinator
(stale)". Exit 0 if a coordinator answered, 1 if servers answered but none is
coordinator, 2 on usage errors, 3 if no server answered (as ckv status), 5 if NATS
refused the credentials.

${NATS_AUTH_HELP}`;

export interface OnlineArgs {
  values: { nats?: string; cluster?: string; json?: boolean; timeout?: string; help?: boolean; [extra: string]: unknown };
  positionals: string[];
  timeout: number;
  auth: NatsAuth;
}

/** The flags both online commands take; an exit code instead when there is nothing to run. */
export function parseOnline(argv: string[], cmd: string, help: string, defaultTimeoutMs: number, spec: { json?: boolean; positionals?: boolean; options?: ParseArgsConfig['options'] }): OnlineArgs | number {
  let parsed: Pick<OnlineArgs, 'values' | 'positionals'>;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: spec.positionals === true,
      options: { nats: { type: 'string' }, cluster: { type: 'string' }, timeout: { type: 'string' }, help: { type: 'boolean', short: 'h' }, ...NATS_AUTH_OPTIONS, ...(spec.json ? { json: { type: 'boolean' as const } } : {}), ...spec.options },
      strict: true,
    }) as Pick<OnlineArgs, 'values' | 'positionals'>;
  } catch (err) {
    process.stderr.write(`ckvctl ${cmd}: ${(err as Error).message}\n${help}\n`);
    return 2;
  }
  if (parsed.values.help) {
    writeOut(`${help}\n`);
    return 0;
  }
  const timeout = Number(parsed.values.timeout ?? defaultTimeoutMs);
  if (!Number.isSafeInteger(timeout) || timeout < 1) {
    process.stderr.write(`ckvctl ${cmd}: --timeout must be a positive integer\n`);
    return 2;
  }
  let auth: NatsAuth;
  try {
    // (Credentials in the URLs are Client.connect's to take.)
    auth = resolveNatsAuth(parsed.values as Record<string, unknown>, process.env);
  } catch (err) {
    if (!(err instanceof NatsAuthUsageError)) throw err;
    process.stderr.write(`ckvctl ${cmd}: ${err.message}\n`);
    return 2;
  }
  return { ...parsed, timeout, auth };
}

export async function connectOnline(cmd: string, a: OnlineArgs): Promise<Client | number> {
  try {
    return await Client.connect({
      servers: (a.values.nats ?? process.env.CKV_NATS ?? NATS_URL_DEFAULT).split(','),
      auth: a.auth,
      cluster: a.values.cluster ?? process.env.CKV_CLUSTER ?? CLUSTER_DEFAULT,
      timeout: a.timeout,
    });
  } catch (err) {
    process.stderr.write(`ckvctl ${cmd}: ${(err as Error).message}\n`);
    return (err as CkvError).code === 'AUTH' ? 5 : (err as CkvError).code === 'BAD_REQUEST' ? 2 : 3;
  }
}

export async function runStatus(argv: string[]): Promise<number> {
  const a = parseOnline(argv, 'status', HELP, 2000, { json: true });
  if (typeof a === 'number') return a;
  const client = await connectOnline('status', a);
  if (typeof client === 'number') return client;
  try {
    const answers = await client.status();
    const rows = statusRows(answers);
    if (a.values.json) writeOut(`${JSON.stringify({ servers: rows, answers })}\n`);
    else writeOut(formatStatusTable(rows));
    return hasCoordinator(rows) ? 0 : 1;
  } catch (err) {
    process.stderr.write(`ckvctl status: ${(err as Error).message}\n`);
    return 3;
  } finally {
    await client.close();
  }
}

const MEMBER_HELP = `usage: ckvctl member add|remove ID [--nats URL] [--cluster NAME] [--timeout MS]

Adds or removes one voter with a configuration entry in the log (one change at
a time). A new server normally joins by itself: start it with a new --id and the
coordinator adds it once it has caught up as a learner. Removing the coordinator
is refused: stop it first. Exit 0 once the change is committed, 1 if refused,
2 on usage errors, 3 if no coordinator answered in time.`;

/** Run `ckvctl member add|remove ID`; resolves to the exit code. */
export async function runMember(argv: string[]): Promise<number> {
  const a = parseOnline(argv, 'member', MEMBER_HELP, 10_000, { positionals: true });
  if (typeof a === 'number') return a;
  const [verb, idText] = a.positionals;
  const id = Number(idText);
  if ((verb !== 'add' && verb !== 'remove') || !Number.isSafeInteger(id) || id < 1 || a.positionals.length !== 2) {
    process.stderr.write(`${MEMBER_HELP}\n`);
    return 2;
  }
  const client = await connectOnline('member', a);
  if (typeof client === 'number') return client;
  try {
    // The client retries while there is no coordinator, or it is busy, until the timeout.
    const ack = await client.member(verb === 'add' ? { add: id } : { remove: id });
    writeOut(`${verb === 'add' ? 'added' : 'removed'} voter ${id} (log index ${ack.index})\n`);
    return 0;
  } catch (err) {
    const e = err as CkvError;
    if (e.code === 'UNAVAILABLE' || e.code === 'TIMEOUT') {
      process.stderr.write(`ckvctl member: no coordinator took the change in time (${e.message})\n`);
      return 3;
    }
    process.stderr.write(`ckvctl member: ${e.code}: ${e.message}\n`);
    return 1;
  } finally {
    await client.close();
  }
}
