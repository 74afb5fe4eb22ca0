// ckvctl's online command: the cluster's status table, as the servers' ping
// daemons see it. Loaded only for `ckvctl status`, so offline commands never load NATS.

import { parseArgs } from 'node:util';
import { Client } from '../src/client/client.js';
import { formatStatusTable, statusRows } from '../src/client/status-table.js';

const HELP = `usage: ckvctl status [--nats URL] [--cluster NAME] [--json] [--timeout MS]

Asks every server for its status and prints one row per server known to any of
them: id, role, epoch, liveness (alive/suspect/dead, as the coordinator's ping
daemon sees it), last/commit/applied/checkpoint index, and lag (entries behind
the coordinator's commit). Exit 0 if a coordinator answered, 1 if none did,
2 on usage errors, 3 if no server answered.`;

export async function runStatus(argv: string[]): Promise<number> {
  let values: { nats?: string; cluster?: string; json?: boolean; timeout?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { nats: { type: 'string' }, cluster: { type: 'string' }, json: { type: 'boolean' }, timeout: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`ckvctl status: ${(err as Error).message}\n${HELP}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  const timeout = Number(values.timeout ?? 2000);
  if (!Number.isSafeInteger(timeout) || timeout < 1) {
    process.stderr.write('ckvctl status: --timeout must be a positive integer\n');
    return 2;
  }
  let client: Client;
  try {
    client = await Client.connect({
      servers: values.nats ?? process.env.CKV_NATS ?? 'nats://127.0.0.1:4222',
      cluster: values.cluster ?? process.env.CKV_CLUSTER ?? 'ckv',
      timeout,
    });
  } catch (err) {
    process.stderr.write(`ckvctl status: cannot connect to NATS: ${(err as Error).message}\n`);
    return 3;
  }
  try {
    const answers = await client.status();
    const rows = statusRows(answers);
    if (values.json) process.stdout.write(`${JSON.stringify({ servers: rows, answers })}\n`);
    else process.stdout.write(formatStatusTable(rows));
    return rows.some((r) => r.role === 'coordinator' && r.answered) ? 0 : 1;
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
  let values: { nats?: string; cluster?: string; timeout?: string; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { nats: { type: 'string' }, cluster: { type: 'string' }, timeout: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`ckvctl member: ${(err as Error).message}\n${MEMBER_HELP}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${MEMBER_HELP}\n`);
    return 0;
  }
  const [verb, idText] = positionals;
  const id = Number(idText);
  if ((verb !== 'add' && verb !== 'remove') || !Number.isSafeInteger(id) || id < 1 || positionals.length !== 2) {
    process.stderr.write(`${MEMBER_HELP}\n`);
    return 2;
  }
  const timeout = Number(values.timeout ?? 10_000);
  const cluster = values.cluster ?? process.env.CKV_CLUSTER ?? 'ckv';
  const { connect } = await import('@nats-io/transport-node');
  let nc;
  try {
    nc = await connect({ servers: values.nats ?? process.env.CKV_NATS ?? 'nats://127.0.0.1:4222' });
  } catch (err) {
    process.stderr.write(`ckvctl member: cannot connect to NATS: ${(err as Error).message}\n`);
    return 3;
  }
  const deadline = Date.now() + timeout;
  try {
    const body = JSON.stringify({ op: 'config', [verb]: id, timeout: Math.min(timeout, 5000) });
    for (;;) {
      try {
        const r = await nc.request(`ckv.${cluster}.write`, body, { timeout: Math.min(timeout, 6000) });
        const reply = JSON.parse(new TextDecoder().decode(r.data)) as { ok: boolean; index?: number; error?: { code: string; message: string } };
        if (reply.ok) {
          process.stdout.write(`${verb === 'add' ? 'added' : 'removed'} voter ${id} (log index ${reply.index})\n`);
          return 0;
        }
        if (reply.error!.code !== 'UNAVAILABLE' && reply.error!.code !== 'TIMEOUT') {
          process.stderr.write(`ckvctl member: ${reply.error!.code}: ${reply.error!.message}\n`);
          return 1;
        }
      } catch {
        // no coordinator right now: retry until the deadline
      }
      if (Date.now() > deadline) {
        process.stderr.write('ckvctl member: no coordinator took the change in time\n');
        return 3;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await nc.close();
  }
}
