// The cluster's status table, shared by `ckv status` and `ckvctl status`: one
// row per server that answered or that some server's ping daemon knows of.

import type { NodeStatus, PeerStatus } from '../core/wire.js';

export interface StatusRow {
  id: number;
  /** The role the server claims (its own answer, or its last heartbeat in the others' ping tables). */
  role: string;
  /** The coordinator, as the table sees it: see coordinatorOf. At most one row. */
  coordinator: boolean;
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

/**
 * The coordinator: of the servers that answered (so are alive now) and claim the role,
 * the one with the highest epoch (then the highest commit, then the lowest id). A server
 * known only from a ping table (maybe dead, maybe removed) is never it, and neither is one
 * still claiming an older epoch (a deposed coordinator that has not heard yet).
 */
export function coordinatorOf(answers: NodeStatus[]): NodeStatus | undefined {
  let best: NodeStatus | undefined;
  for (const s of answers) {
    if (s.role !== 'coordinator') continue;
    if (!best || s.epoch > best.epoch || (s.epoch === best.epoch && (s.commit > best.commit || (s.commit === best.commit && s.id < best.id)))) best = s;
  }
  return best;
}

export function statusRows(answers: NodeStatus[]): StatusRow[] {
  const coord = coordinatorOf(answers);
  // Whose ping table says who else there is, and how alive: the coordinator's, else the
  // answer of the highest epoch (the most recent view).
  const viewer = coord ?? answers.reduce<NodeStatus | undefined>((v, s) => (!v || s.epoch > v.epoch ? s : v), undefined);
  const byId = new Map<number, StatusRow>();
  const row = (s: NodeStatus, liveness: string, answered: boolean): StatusRow => ({
    id: s.id,
    role: s.role,
    coordinator: answered && s === coord,
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

/** Whether the table has a coordinator: `ckv status` and `ckvctl status` exit 0 only then. */
export function hasCoordinator(rows: StatusRow[]): boolean {
  return rows.some((r) => r.coordinator);
}

export function formatStatusTable(rows: StatusRow[]): string {
  const head = ['ID', 'ROLE', 'EPOCH', 'LIVENESS', 'LAST', 'COMMIT', 'APPLIED', 'CHECKPOINT', 'LAG', 'VOTERS', 'UPTIME', 'VERSION'];
  const body = rows.map((r) => [
    `${r.id}${r.coordinator ? '*' : ''}`,
    (r.role === 'coordinator' && !r.coordinator ? 'coordinator (stale)' : r.role) + (r.answered ? '' : ' (no answer)'),
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
