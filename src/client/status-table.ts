// The cluster's status table, shared by `ckv status` and `ckvctl status`: one
// row per server that answered or that some server's ping daemon knows of.

import type { NodeStatus, PeerStatus } from '../core/wire.js';

export interface StatusRow {
  id: number;
  role: string;
  epoch: number;
  /** alive/suspect/dead as the coordinator's ping daemon sees it (else the first answer's). */
  liveness: string;
  last: number;
  commit: number;
  applied: number;
  checkpoint: number;
  /** Entries behind the coordinator's commit (null without a coordinator). */
  lag: number | null;
  voters: number[];
  uptimeMs: number;
  version: string;
  /** False for a server known only from the others' ping tables. */
  answered: boolean;
}

export function statusRows(answers: NodeStatus[]): StatusRow[] {
  const coord = answers.find((s) => s.role === 'coordinator');
  const viewer = coord ?? answers[0];
  const byId = new Map<number, StatusRow>();
  const row = (s: NodeStatus, liveness: string, answered: boolean): StatusRow => ({
    id: s.id,
    role: s.role,
    epoch: s.epoch,
    liveness,
    last: s.last,
    commit: s.commit,
    applied: s.applied,
    checkpoint: s.checkpoint,
    lag: null,
    voters: s.voters ?? [],
    uptimeMs: s.uptimeMs ?? 0,
    version: s.version ?? '',
    answered,
  });
  for (const s of answers) byId.set(s.id, row(s, 'alive', true));
  for (const p of (viewer?.peers ?? []) as PeerStatus[]) {
    const known = byId.get(p.id);
    if (known) known.liveness = p.liveness;
    else byId.set(p.id, row(p, p.liveness, false));
  }
  const rows = [...byId.values()].sort((a, b) => a.id - b.id);
  for (const r of rows) r.lag = coord === undefined ? null : Math.max(0, coord.commit - r.applied);
  return rows;
}

export function formatStatusTable(rows: StatusRow[]): string {
  const head = ['ID', 'ROLE', 'EPOCH', 'LIVENESS', 'LAST', 'COMMIT', 'APPLIED', 'CHECKPOINT', 'LAG', 'VOTERS', 'UPTIME', 'VERSION'];
  const body = rows.map((r) => [
    `${r.id}${r.role === 'coordinator' ? '*' : ''}`,
    r.role + (r.answered ? '' : ' (no answer)'),
    String(r.epoch),
    r.liveness,
    String(r.last),
    String(r.commit),
    String(r.applied),
    String(r.checkpoint),
    r.lag === null ? '-' : String(r.lag),
    r.voters.join(','),
    r.answered ? `${Math.round(r.uptimeMs / 1000)}s` : '-',
    r.version,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  return [head, ...body].map((line) => `${line.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()}\n`).join('');
}
