// What the simulation checks, after every event and at the end. It watches the
// replicas through their event hook (ReplicaEnv.observe) and reads their state;
// it never changes it. A broken invariant throws SimFailure.
//
// After every event: at most one coordinator per epoch (and so at most one
// committing in it); a committed entry never changes anywhere and is durable on
// a majority from the moment anyone counts it committed; every applied entry is
// the committed one with the model's result and change events; timestamps
// strictly increase along the log; each log on disk mirrors the log in memory; a
// durable truncation never removes a committed entry; no server applies beyond
// its commit. Every reply agrees with the model: reads (get, mget, list pages,
// history, replay) see exactly the committed state at their index, never a value
// no write produced, tokens are honoured, strong reads see every earlier
// acknowledged write, a write's reply (and any resend of its rid) is its rid's
// first result. After each crash: every committed entry is durable on a
// majority. At the end, after healing and quiet: writes commit again within a
// bounded time (liveness), every request got its answer, all replicas hold the
// same log and state as the model, and the client histories are causally
// consistent (the bad patterns of Bouajjani et al.).

import type { Msg } from '../../src/core/messages.js';
import { REPLAY_SCAN_EVENTS_MAX, TICK_MS } from '../../src/core/limits.js';
import type { Entry, ChangeEvent, Reply, Request } from '../../src/core/wire.js';
import type { ReplicaEvent } from '../../src/server/replica.js';
import { restartPlan } from '../../src/server/replica.js';
import type { Applied } from '../../src/core/state.js';
import { CorruptRecordError } from '../../src/core/records.js';
import { checkCausal } from './checker.js';
import { BOGUS_TS, describeOp, historyOf, opsOf, resultOf, valueRead, type Session, type SessionOp } from './client.js';
import { byteOrder, SIM_HISTORY_EVENTS_MAX } from './disk.js';
import type { SimNode } from './env.js';
import type { Sim } from './harness.js';
import { Model, sameEntry, sameRec, sameResult, showEntry } from './model.js';
import { fmtNotice } from './trace.js';

export class SimFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SimFailure';
  }
}

export function fail(msg: string): never {
  throw new SimFailure(msg);
}

/** After healing, a write must commit within this much simulated time. */
export const LIVENESS_AFTER_HEAL_MS = 6_000;
/** After healing, a key with a ttl may outlive it by this much (an election or two, each starting countdowns anew, and the commit). */
const EXPIRY_LATE_MS_MAX = 3_000;

export class Invariants {
  readonly model: Model;
  private leaderOf = new Map<number, number>();
  private seenCommit = new Map<number, number>();
  /** Values some client write carried (a read may return only these). */
  readonly issued = new Set<string>();
  ackedMax = 0;
  readonly acked = new Set<string>();
  ackedAfterHeal = 0;
  /** Servers an operator asked to add (back): only these may leave a keepOut list. */
  readonly operatorAdds = new Set<number>();
  /** When each committed index was first seen committed (sim time). */
  private committedAt: number[] = [];
  /** When a coordinator's tick left the countdowns standing (writes refused): the expiry check allows for them. */
  private ttlPausedAt: number[] = [];
  /** When the first entry committed after healing was seen (liveness). */
  firstCommitAfterHeal: number | null = null;
  private lastAtHeal = -1;

  constructor(private sim: Sim) {
    this.model = new Model(sim.initialVoters);
  }

  // ---- the replicas' event hook ----

  observe(n: SimNode, e: ReplicaEvent): void {
    switch (e.t) {
      case 'ready':
        return this.onReady(n, e.ready);
      case 'applied':
        // Before checking what was applied, take in what the node counts committed.
        this.onCommit(n);
        if (n.replica.node.role !== 'coordinator') this.sim.stats.followerBehindMax = Math.max(this.sim.stats.followerBehindMax, n.replica.recordsBehind);
        return this.onApplied(n, e.entry, e.result);
      case 'ttlPaused':
        this.ttlPausedAt.push(this.sim.t);
        return;
      case 'holding':
        this.sim.stats.holds++;
        this.sim.trace.add(this.sim.t, n.id, () => `checkpoint ${e.records} records behind: taking no new entries`);
        return;
      case 'checkpointed':
        this.sim.trace.add(this.sim.t, n.id, () => `checkpoint at ${e.index}, log from ${n.replica.node.firstIndex()}`);
        this.checkState(n, 'after a checkpoint', false);
        this.checkCheckpointHistory(n.id, 'after a checkpoint');
        this.checkLogUnderCheckpoint(n.id, 'after a checkpoint');
        return this.sim.faults.afterCheckpoint(n);
      case 'installed':
        this.sim.stats.snapshots++;
        this.sim.trace.add(this.sim.t, n.id, () => `installed a checkpoint at ${e.index}: ${n.describe()}`);
        this.seenCommit.set(n.id, Math.max(this.seenCommit.get(n.id) ?? 0, n.replica.node.commit));
        this.checkCheckpointHistory(n.id, 'after a checkpoint install');
        return this.checkState(n, 'after a checkpoint install');
      case 'notice':
        if (e.notice.type === 'coordinator' && e.notice.id === n.id) {
          this.sim.stats.epochs++;
          this.checkLeader(n);
        }
        return;
    }
  }

  private onReady(n: SimNode, r: Extract<ReplicaEvent, { t: 'ready' }>['ready']): void {
    const s = n.replica.node;
    if (r.append.length > 0 || r.truncateFrom !== null || r.state !== null || r.notices.length > 0) {
      this.sim.trace.add(this.sim.t, n.id, () => `ready: ${r.truncateFrom !== null ? `truncate from ${r.truncateFrom}, ` : ''}${r.append.length ? `append ${r.append[0]!.index}..${r.append[r.append.length - 1]!.index}, ` : ''}${r.state !== null ? `state ${JSON.stringify(r.state)}, ` : ''}commit ${r.commit}, send ${r.sendNow.length}+${r.send.length}${r.notices.length ? `, ${r.notices.map(fmtNotice).join('; ')}` : ''}`);
    }
    // The log on disk (with what is pending) must be the log in memory.
    const view = n.disk.log.view;
    const last = s.lastIndex();
    if (last >= s.firstIndex()) {
      const d = view.at(last);
      if (!d || view.last !== last || !sameEntry(d, s.entry(last)!)) {
        fail(`node ${n.id}: its log ends at ${showEntry(s.entry(last))} in memory but at ${showEntry(view.at(view.last))} on disk after carrying out a Ready`);
      }
      if (view.first > s.firstIndex()) fail(`node ${n.id}: log starts at ${view.first} on disk but ${s.firstIndex()} in memory`);
    } else if (view.last > last) {
      fail(`node ${n.id}: empty log in memory after ${last} but the disk holds up to ${view.last}`);
    }
    if (r.state !== null && s.promised < r.state.promised) fail(`node ${n.id}: promise ${r.state.promised} above the node's ${s.promised}`);
    // Committed entries handed out must be the committed ones, in order, from where applying stands.
    if (r.committed.length > 0 && r.committed[0]!.index !== n.replica.state.applied + 1) {
      fail(`node ${n.id}: a Ready hands out entries from ${r.committed[0]!.index} but the state is at ${n.replica.state.applied}`);
    }
  }

  /** The checkpoint's durable history is exactly the committed log's events above its floor, within the retention. */
  checkCheckpointHistory(id: number, when: string): void {
    const c = this.sim.disks.get(id)!.ckpt;
    const index = c.meta().index;
    const floor = c.historyFloor();
    if (floor > index) fail(`node ${id}: history floor ${floor} above the checkpoint's index ${index} ${when}`);
    const want: ChangeEvent[] = [];
    for (let i = floor + 1; i <= index; i++) want.push(...(this.model.results[i - 1]?.events ?? []));
    const got = [...c.events(0)];
    if (!sameEvents(got, want)) fail(`node ${id}: the checkpoint's history (${floor + 1}..${index}) ${when} is ${JSON.stringify(got.slice(0, 5))}… (${got.length}), the committed log ${JSON.stringify(want.slice(0, 5))}… (${want.length})`);
    if (c.historyCount() !== got.length || got.length > SIM_HISTORY_EVENTS_MAX) fail(`node ${id}: history counts ${c.historyCount()}, holds ${got.length} events (most ${SIM_HISTORY_EVENTS_MAX}) ${when}`);
  }

  /** A restart now would not take a stale entry for committed. */
  checkLogUnderCheckpoint(id: number, when: string): void {
    const d = this.sim.disks.get(id)!;
    const meta = d.ckpt.meta();
    let plan;
    try {
      plan = restartPlan(meta, d.log.durable.list);
    } catch (err) {
      fail(`node ${id}: a restart ${when} would fail: ${(err as Error).message}`);
    }
    const check = (e: { index: number; epoch: number; ts: number }): void => {
      if (e.index === 0 || e.index > meta.index) return;
      const c = this.model.entry(e.index);
      if (!c || c.epoch !== e.epoch || c.ts !== e.ts) {
        fail(`node ${id}: a restart ${when} would keep ${'kind' in e ? showEntry(e as Entry) : `#${e.index}/e${e.epoch}`} under its checkpoint at ${meta.index}, but the committed entry is ${showEntry(c)}`);
      }
    };
    check(plan.base);
    for (const e of plan.rest) {
      if (e.index > meta.index) break;
      check(e);
    }
  }

  onSynced(n: SimNode, truncated: Entry[]): void {
    this.checkLogUnderCheckpoint(n.id, 'after an fsync');
    const covered = n.disk.ckpt.meta().index;
    for (const e of truncated) {
      if (e.index <= covered) continue; // the checkpoint holds it
      const c = this.model.entry(e.index);
      if (c && sameEntry(c, e)) {
        const now = n.disk.log.durable.at(e.index);
        if (!now || !sameEntry(now, c)) fail(`node ${n.id}: a durable truncation removed committed entry ${showEntry(c)}`);
      }
    }
  }

  onCommit(n: SimNode): void {
    const s = n.replica.node;
    let seen = this.seenCommit.get(n.id) ?? 0;
    if (s.commit <= seen) return;
    if (s.role === 'coordinator') this.checkLeader(n);
    for (let i = seen + 1; i <= s.commit; i++) {
      const e = s.entry(i);
      const c = this.model.entry(i);
      if (!e) {
        if (!c && i > this.model.last) fail(`node ${n.id}: commit ${s.commit} covers entry ${i}, which it does not hold and nobody reported committed`);
        continue;
      }
      if (c) {
        if (!sameEntry(c, e)) fail(`node ${n.id}: committed entry ${i} is ${showEntry(e)} here but ${showEntry(c)} was committed before`);
        continue;
      }
      if (i !== this.model.last + 1) fail(`node ${n.id}: commit ${s.commit} but the committed log is known only to ${this.model.last}`);
      const prev = this.model.entry(i - 1);
      if (prev && e.ts <= prev.ts) fail(`timestamps do not increase along the committed log: ${showEntry(prev)} then ${showEntry(e)}`);
      if (e.kind === 'write') this.checkExpiries(e);
      this.committedAt[i] = this.sim.t;
      this.model.push(e);
      if (this.sim.healed && this.firstCommitAfterHeal === null && i > this.lastAtHeal) this.firstCommitAfterHeal = this.sim.t;
      this.sim.trace.add(this.sim.t, n.id, () => `committed ${showEntry(e)}`);
      if (e.ts >= BOGUS_TS) fail(`node ${n.id}: ${showEntry(e)} committed with a ts from a bogus token: a token beyond every write moved a clock`);
      if (e.kind === 'write' && e.ops.some((op) => op.op === 'put' && op.value.startsWith('bogus.'))) fail(`node ${n.id}: ${showEntry(e)}, a write carrying a bogus token, was committed`);
      // Committed means fsync'd on a majority (of the coordinator's voters), from the moment
      // anyone counts it committed: the voters with data that lack it are not a majority. (A
      // voter whose data was lost since it acknowledged votes only for a log that covers the
      // best it hears: see withoutData.)
      const holders = this.durableHolders(i, true);
      const voters = s.role === 'coordinator' ? s.voters : this.model.votersAt(i);
      const need = s.role === 'coordinator' ? Math.floor(voters.length / 2) + 1 : Math.ceil(voters.length / 2);
      const lacking = voters.filter((id) => !holders.includes(id) && !this.withoutData(id));
      if (lacking.length > voters.length - need) fail(`node ${n.id}: entry ${showEntry(e)} counted committed while durable only on [${holders.filter((id) => voters.includes(id)).join(',')}] of the voters [${voters.join(',')}]`);
      if (e.kind === 'config') {
        this.sim.stats.configs++;
        this.sim.faults.onConfigCommitted(e);
        // An operator's removal sticks, across coordinators: only an operator adds it back.
        const before = this.model.configAt(i - 1);
        for (const v of e.voters) {
          if (!before.voters.includes(v) && before.keepOut.includes(v) && !this.operatorAdds.has(v)) {
            fail(`node ${n.id}: ${showEntry(e)} adds server ${v}, which an operator removed, without an operator asking`);
          }
        }
      }
    }
    seen = s.commit;
    this.seenCommit.set(n.id, seen);
  }

  /** The committed log's end when healing begins: liveness counts commits after it. */
  onHeal(): void {
    this.lastAtHeal = this.model.last;
  }

  private onApplied(n: SimNode, e: Entry, res: Applied): void {
    const c = this.model.entry(e.index);
    if (!c || !sameEntry(c, e)) fail(`node ${n.id}: applied ${showEntry(e)}, but the committed entry ${e.index} is ${showEntry(c)}`);
    if (e.index > n.replica.node.commit) fail(`node ${n.id}: applied ${showEntry(e)} beyond its commit ${n.replica.node.commit}`);
    const want = this.model.results[e.index - 1]!;
    if (!sameResult(want.result, res.result) || want.duplicate !== res.duplicate) {
      fail(`node ${n.id}: applying ${showEntry(e)} gave ${JSON.stringify(res.result)}${res.duplicate ? ' (duplicate)' : ''}, the model ${JSON.stringify(want.result)}${want.duplicate ? ' (duplicate)' : ''}`);
    }
    // Change events (what observers see), in order, with the gap-detecting prev index.
    if (!sameEvents(res.events, want.events)) fail(`node ${n.id}: applying ${showEntry(e)} produced events ${JSON.stringify(res.events)}, the model ${JSON.stringify(want.events)}`);
  }

  /** Nothing leaves a server that claims durability it does not have: a promise, an ack. */
  onSend(n: SimNode, m: Msg): void {
    if (m.t === 'promise' && m.ok && n.disk.state.durable.promised < m.epoch) fail(`node ${n.id}: promised epoch ${m.epoch} to ${m.to} before the promise was durable (durable: ${n.disk.state.durable.promised})`);
    if (m.t === 'ack') {
      const d = n.disk;
      // (The log in memory may have moved on since the ack was made; the disk must hold what it says.)
      const durable = d.ckpt.meta().index >= m.match || d.log.durable.last >= m.match;
      if (!durable) fail(`node ${n.id}: acked ${m.match} to ${m.to} with its log durable only to ${d.log.durable.last}`);
    }
  }

  /** A change event published on ckv.<c>.ev.<key>: one the committed log produced. */
  onEvent(n: SimNode, ev: ChangeEvent): void {
    const want = this.model.results[ev.index - 1];
    if (!want || !want.events.some((w) => sameEvents([w], [ev]))) fail(`node ${n.id}: published event ${JSON.stringify(ev)}, which the committed log did not produce`);
  }

  private checkLeader(n: SimNode): void {
    const s = n.replica.node;
    if (s.role !== 'coordinator') return;
    const l = this.leaderOf.get(s.epoch);
    if (l === undefined) this.leaderOf.set(s.epoch, n.id);
    else if (l !== n.id) fail(`two coordinators in epoch ${s.epoch}: ${l} and ${n.id}`);
  }

  /** After every event. */
  afterEvent(): void {
    for (const n of this.sim.servers.values()) {
      if (!n) continue;
      const s = n.replica.node;
      if (s.role === 'coordinator') this.checkLeader(n);
      if (s.commit > (this.seenCommit.get(n.id) ?? 0)) this.onCommit(n);
      const st = n.replica.state;
      if (st.applied > s.commit && st.applied > s.checkpointIndex) fail(`node ${n.id}: applied ${st.applied} beyond its commit ${s.commit}`);
    }
  }

  /** A server (re)started: its state is the model's at its checkpoint. */
  onStart(n: SimNode): void {
    this.seenCommit.set(n.id, 0);
    this.checkState(n, 'after a restart');
    this.onCommit(n);
  }

  /** A server's state machine holds exactly the model's state at its applied index (a damaged record aside: it is never served). */
  checkState(n: SimNode, when: string, allRids = true): void {
    try {
      this.checkStateNow(n, when, allRids);
    } catch (err) {
      if (!(err instanceof CorruptRecordError)) throw err;
    }
  }

  private checkStateNow(n: SimNode, when: string, allRids: boolean): void {
    const st = n.replica.state;
    const at = st.applied;
    if (at > this.model.last) fail(`node ${n.id}: state at ${at} ${when}, beyond the committed log (${this.model.last})`);
    if (st.appliedTs !== this.model.tsAt(at)) fail(`node ${n.id}: state ts ${st.appliedTs} at ${at} ${when}, the log says ${this.model.tsAt(at)}`);
    const voters = this.model.votersAt(at);
    if (st.voters.length > 0 && [...st.voters].sort((x, y) => x - y).join() !== voters.join()) {
      fail(`node ${n.id}: state voters [${st.voters.join(',')}] at ${at} ${when}, the log says [${voters.join(',')}]`);
    }
    const keys = new Set([...this.model.keys(), ...this.sim.mainKeys, ...this.sim.noiseKeys]);
    const want: string[] = [];
    for (const k of keys) {
      const m = this.model.valueAt(k, at);
      const got = st.get(k) ?? null;
      if (!sameRec(m, got)) fail(`node ${n.id}: key ${k} is ${JSON.stringify(got)} at ${at} ${when}, the model says ${JSON.stringify(m)}`);
      if (m) want.push(k);
    }
    want.sort(byteOrder);
    const listed = st.range('', undefined, 1000).map((kv) => kv.key);
    if (listed.join() !== want.join()) fail(`node ${n.id}: list shows [${listed.join()}] at ${at} ${when}, the model [${want.join()}]`);
    // The exactly-once table: all of it, or (after a checkpoint) the newest requests.
    const rids = this.model.ridOrder;
    let hi = rids.length;
    while (hi > 0 && this.model.rids.get(rids[hi - 1]!)!.index > at) hi--;
    for (let k = allRids ? 0 : Math.max(0, hi - 20); k < hi; k++) {
      const rid = rids[k]!;
      const r = this.model.rids.get(rid)!;
      const got = st.ridResult(rid);
      if (!got || got.index !== r.index || !sameResult(got.result, r.result)) {
        fail(`node ${n.id}: rid ${rid} is ${JSON.stringify(got)} at ${at} ${when}, the model ${JSON.stringify(r)}`);
      }
    }
  }

  withoutData(id: number): boolean {
    const d = this.sim.disks.get(id)!;
    return d.state.durable.catchUp || (d.log.durable.list.length === 0 && d.ckpt.meta().index === 0);
  }

  /** Servers holding committed entry i durably: in the log on disk, or under the checkpoint. */
  private durableHolders(i: number, withRetired = false): number[] {
    const c = this.model.entry(i)!;
    const have: number[] = [];
    for (const id of this.sim.ids) {
      if (this.sim.retired.has(id) && !withRetired) continue;
      const d = this.sim.disks.get(id)!;
      if (d.ckpt.meta().index >= i) have.push(id);
      else {
        const e = d.log.durable.at(i);
        if (e && sameEntry(e, c)) have.push(id);
      }
    }
    return have;
  }

  /**
   * Every committed entry is durable on servers that meet every majority of the latest
   * committed configuration that can still form (retired servers never come back). With one
   * change at a time this holds even while a newer configuration is pending; with a fixed
   * set of voters and none retired it is "on a majority".
   */
  checkDurable(when: string): void {
    const voters = this.model.votersAt(this.model.last);
    const majority = Math.floor(voters.length / 2) + 1;
    // Servers without data (empty, or catching up) vote only for a log that covers the best
    // they hear (mayVote in the core): they cannot make up a majority without the entry.
    const available = voters.filter((v) => !this.sim.retired.has(v) && !this.withoutData(v)).length;
    for (let i = 1; i <= this.model.last; i++) {
      const have = this.durableHolders(i).filter((id) => voters.includes(id) && !this.withoutData(id));
      if (available - have.length >= majority) {
        fail(`committed entry ${showEntry(this.model.entry(i))} is durable only on [${have.join(',')}]: a majority of the voters [${voters.join(',')}] without it can form ${when}`);
      }
    }
  }

  // ---- replies ----

  checkReply(s: Session, op: SessionOp, req: Request, reply: Reply, by: number, ackedAtSend: number): void {
    const after = ('after' in req ? req.after : undefined) ?? 0;
    const what = `reply from ${by} to c${s.id} ${describeOp(op)} (after=${after})`;
    // A token no write has may only be refused (or not answered in time), never served.
    if (op.t === 'bogus' && (reply.ok || !['TOKEN_AHEAD', 'UNAVAILABLE', 'TIMEOUT'].includes(reply.error.code))) {
      fail(`${what}: answered ${reply.ok ? 'ok' : reply.error.code} at ts ${reply.ts}, not TOKEN_AHEAD`);
    }
    if (!reply.ok && ['BAD_REQUEST', 'TOO_LARGE', 'INTERNAL'].includes(reply.error.code)) fail(`${what}: ${reply.error.code}: ${reply.error.message}`);
    const rid = 'rid' in req ? req.rid : undefined;
    const write = rid !== undefined;
    const final = reply.ok || (write && resultOf(reply) !== undefined) || (!write && ['NOT_FOUND', 'COMPACTED'].includes(reply.error.code));
    if (!final) {
      if (!reply.ok && reply.error.code === 'TOKEN_AHEAD' && after <= this.model.tsAt(this.model.last)) {
        this.sim.stats.spuriousTokenAhead++;
        this.sim.trace.add(this.sim.t, by, `TOKEN_AHEAD for token ${after}, which the cluster issued (committed ts ${this.model.tsAt(this.model.last)})`);
        if (this.sim.o.strictTokens) fail(`${what}: TOKEN_AHEAD though a write with ts ${after} exists`);
      }
      return;
    }
    const index = reply.index!;
    if (index === undefined) fail(`${what}: a final reply without an index`);
    if (index > this.model.last) fail(`${what}: index ${index} beyond the committed log (${this.model.last})`);
    if (write) {
      const e = this.model.entry(index);
      if (!e || e.kind !== 'write' || e.rid !== rid) fail(`${what}: acknowledged at ${index}, which is ${showEntry(e)}`);
      // The log holds what the client asked for, field for field (a dropped ttl or b64 is a changed write).
      const asked = canonicalOps(opsOf(req));
      if (canonicalOps(e.ops) !== asked) fail(`${what}: the log holds ${canonicalOps(e.ops)} at ${index}, the request asked for ${asked}`);
      const first = this.model.rids.get(rid)!;
      const result = resultOf(reply);
      if (!sameResult(first.result, result)) fail(`${what}: result ${JSON.stringify(result)}, but its first application gave ${JSON.stringify(first.result)}`);
      if (reply.ts < first.ts) fail(`${what}: ts ${reply.ts} below the write's own ${first.ts}`);
      if (reply.ts < after) fail(`${what}: ts ${reply.ts} below the token ${after}`);
      return;
    }
    if (reply.ts !== this.model.tsAt(index)) fail(`${what}: ts ${reply.ts} but the entry at ${index} has ts ${this.model.tsAt(index)}`);
    if (reply.ts < after) fail(`${what}: answered from ts ${reply.ts}, below the token ${after}`);
    const strong = 'consistency' in req && req.consistency === 'strong';
    if (strong && index < ackedAtSend) fail(`${what}: a strong read answered at index ${index}, but a write at ${ackedAtSend} was acknowledged before it was sent`);
    switch (op.t) {
      case 'get':
        op.keys.forEach((k, i) => {
          const want = this.model.valueAt(k, index);
          const got = valueRead(reply, i);
          this.checkValue(what, got);
          const rev = reply.ok ? (reply.values ? reply.values[i]?.rev : reply.rev) : undefined;
          if ((want?.value ?? null) !== got || (got !== null && rev !== want!.rev)) fail(`${what}: ${k} = ${JSON.stringify(got)} (rev ${rev}) at index ${index}, the committed log says ${JSON.stringify(want)}`);
        });
        return;
      case 'list':
        return this.checkList(what, op, reply, index);
      case 'history':
        return this.checkHistory(what, op, reply, index);
      case 'replay':
        return this.checkReplay(what, op, reply, index);
      case 'getRev': {
        if (!reply.ok && reply.error.code === 'COMPACTED') {
          const oldest = reply.oldest;
          if (oldest === undefined || oldest < 1) fail(`${what}: COMPACTED without the oldest index kept`);
          // The history decides it when it starts at the beginning, or holds a change of the key at or below rev.
          if (oldest === 1) fail(`${what}: COMPACTED, though the history is kept from index 1`);
          for (let i = oldest; i <= op.rev; i++) if (this.model.results[i - 1]?.events.some((ev) => ev.key === op.key)) fail(`${what}: COMPACTED, though the change at ${i} (history from ${oldest}) decides it`);
          if (this.model.valueAt(op.key, index)?.rev !== undefined && this.model.valueAt(op.key, index)!.rev <= op.rev) fail(`${what}: COMPACTED, though the key is unchanged since revision ${op.rev}`);
          return;
        }
        if (op.rev > index) fail(`${what}: answered at index ${index}, before revision ${op.rev} was applied`);
        const want = this.model.valueAt(op.key, op.rev);
        const got = reply.ok ? (reply.value ?? null) : null;
        this.checkValue(what, got);
        if ((want?.value ?? null) !== got || (got !== null && reply.ok && reply.rev !== want!.rev)) fail(`${what}: ${op.key} = ${JSON.stringify(got)} (rev ${reply.ok ? reply.rev : '-'}) as of ${op.rev}, the committed log says ${JSON.stringify(want)}`);
        return;
      }
      default:
        fail(`${what}: unexpected op for a read`);
    }
  }

  /** No value is read that no client wrote. */
  private checkValue(what: string, v: string | null | undefined): void {
    if (v !== null && v !== undefined && !this.issued.has(v)) fail(`${what}: value ${JSON.stringify(v)}, which no write carried`);
  }

  private checkList(what: string, op: Extract<SessionOp, { t: 'list' }>, reply: Reply, index: number): void {
    if (!reply.ok) return;
    const keys = [...new Set([...this.model.keys(), ...this.sim.mainKeys, ...this.sim.noiseKeys])]
      .filter((k) => k.startsWith(op.prefix) && (op.start === undefined || byteOrder(k, op.start) >= 0) && this.model.valueAt(k, index) !== null)
      .sort(byteOrder);
    const items = reply.items ?? [];
    const want = keys.slice(0, op.limit);
    const next = keys.length > op.limit ? keys[op.limit]! : null;
    if (items.map((i) => i.key).join() !== want.join() || (reply.next ?? null) !== next) {
      fail(`${what}: page [${items.map((i) => i.key).join()}] next ${reply.next} at ${index}, the committed log gives [${want.join()}] next ${next}`);
    }
    for (const it of items) {
      this.checkValue(what, it.value);
      const m = this.model.valueAt(it.key, index)!;
      if (m.value !== it.value || m.rev !== it.rev) fail(`${what}: ${it.key} = ${JSON.stringify(it)} at ${index}, the model ${JSON.stringify(m)}`);
    }
  }

  private checkHistory(what: string, op: Extract<SessionOp, { t: 'history' }>, reply: Reply, index: number): void {
    if (!reply.ok) return;
    const since = reply.since!;
    const events = reply.events ?? [];
    if (events.length > op.limit) fail(`${what}: ${events.length} changes, more than the limit`);
    const want: ChangeEvent[] = [];
    for (let i = Math.max(since, 1); i <= index; i++) for (const ev of this.model.results[i - 1]!.events) if (ev.key === op.key) want.push(ev);
    if (!sameEvents(events, want)) fail(`${what}: history since ${since} is ${JSON.stringify(events)} at ${index}, the committed log ${JSON.stringify(want)}`);
    for (const ev of events) this.checkValue(what, ev.value);
  }

  private checkReplay(what: string, op: Extract<SessionOp, { t: 'replay' }>, reply: Reply, index: number): void {
    if (!reply.ok) {
      if (reply.error.code === 'COMPACTED' && (reply.oldest === undefined || reply.oldest <= Math.max(op.from, 1))) fail(`${what}: COMPACTED, but the oldest kept (${reply.oldest}) is not above ${op.from}`);
      return;
    }
    const events = reply.events ?? [];
    const through = reply.through;
    if (through === undefined || through > index) fail(`${what}: through ${through} (index ${index})`);
    const all: ChangeEvent[] = [];
    for (let i = Math.max(op.from, 1); i <= through; i++) {
      for (const ev of this.model.results[i - 1]!.events) {
        if ((op.key === undefined || ev.key === op.key) && (op.prefix === undefined || ev.key.startsWith(op.prefix))) all.push(ev);
      }
    }
    // Exactly the asked-for events from `from` through `through`: none missing, none extra.
    if (!sameEvents(events, all)) fail(`${what}: replay ${JSON.stringify(events)} through ${through} at ${index}, the committed log from ${op.from}: ${JSON.stringify(all)}`);
    if (through < index && events.length < op.limit) {
      // Stopped early with room to spare: only once it looked at enough events.
      let looked = 0;
      for (let i = Math.max(op.from, 1); i <= through + 1; i++) looked += this.model.results[i - 1]!.events.length;
      if (looked <= REPLAY_SCAN_EVENTS_MAX) fail(`${what}: replay stopped at ${through}, below ${index}, with ${events.length} of ${op.limit} events after looking at ${looked}`);
    }
    for (const ev of events) this.checkValue(what, ev.value);
  }

  // ---- the end ----

  /** Every live server holds the whole committed log and follows the one coordinator. */
  settled(): boolean {
    const sim = this.sim;
    const live = sim.ids.filter((id) => !sim.retired.has(id)).map((id) => sim.servers.get(id));
    const coords = live.filter((n) => n?.replica.node.role === 'coordinator');
    if (coords.length !== 1) return false;
    const c = coords[0]!.replica.node;
    return live.every((n) => {
      if (!n) return false;
      const s = n.replica.node;
      return s.coordinator === c.id && s.epoch === c.epoch && s.lastIndex() === c.lastIndex() && s.commit === c.lastIndex() && n.replica.state.applied === c.lastIndex();
    });
  }

  /**
   * Never early: an expiry that deletes a record commits no sooner than its ttl after the
   * record's write committed, counted in ticks of the coordinator (which may run fast by the
   * drift, and each tick may be 2 ms short: the contract is in the coordinator's ticks).
   */
  private checkExpiries(e: Extract<Entry, { kind: 'write' }>): void {
    for (const op of e.ops) {
      if (op.op !== 'expire') continue;
      const rec = this.model.cur.get(op.key);
      if (!rec || rec.rev !== op.rev || rec.ttl === undefined) continue; // a no-op: refreshed or deleted since
      const since = this.sim.t - this.committedAt[op.rev]!;
      // (Armed for one tick more than the ttl, in the middle of a tick: at least the ttl in whole ticks.)
      const min = Math.ceil(rec.ttl / TICK_MS) * (TICK_MS * (1 - this.sim.p.drift) - 2);
      if (since < min) fail(`${showEntry(e)} expires ${op.key} (written at ${op.rev} with ttl ${rec.ttl} ms) ${Math.round(since)} ms after that write committed: early (at least ${Math.round(min)} ms)`);
    }
  }

  /** Bounded late: once healed and quiet, a key whose time passed (with room for a new coordinator's fresh countdown) is gone. */
  private checkExpiredAtEnd(): void {
    const sim = this.sim;
    for (const [key, rec] of this.model.cur) {
      if (rec.ttl === undefined) continue;
      const from = Math.max(this.committedAt[rec.rev]!, sim.healAt);
      // (Countdowns stand still while a coordinator refuses writes: its ticks since do not count.)
      const paused = this.ttlPausedAt.filter((at) => at >= from).length * sim.tickMs;
      const late = sim.t - from - rec.ttl * (1 + sim.p.drift) - paused;
      if (late > EXPIRY_LATE_MS_MAX) fail(`liveness: ${key} (written at ${rec.rev} with ttl ${rec.ttl} ms) has not expired ${Math.round(sim.t - from)} ms after ${from === sim.healAt ? 'healing' : 'its write committed'}; servers: ${sim.describeServers()}`);
    }
  }

  finalChecks(sessions: Session[]): void {
    const sim = this.sim;
    this.checkExpiredAtEnd();
    // Liveness: after healing, writes commit again within a bound.
    const writesAfterHeal = sessions.some((s) => s.stats.writes > 0);
    if (writesAfterHeal && sim.stopAt > sim.healAt + LIVENESS_AFTER_HEAL_MS) {
      if (this.firstCommitAfterHeal === null || this.firstCommitAfterHeal > sim.healAt + LIVENESS_AFTER_HEAL_MS) {
        fail(`liveness: nothing committed within ${LIVENESS_AFTER_HEAL_MS} ms of healing (first at ${this.firstCommitAfterHeal ?? 'never'}); servers: ${sim.describeServers()}`);
      }
    }
    // Every request got its final answer.
    for (const s of sessions) {
      if (s.busy) fail(`liveness: client ${s.id} still waiting for ${describeOp(s.busy.op)} after ${sim.o.quietMs} ms healed (${s.busy.tries} tries); servers: ${sim.describeServers()}`);
    }
    if (writesAfterHeal && this.ackedAfterHeal === 0 && sim.stopAt > sim.healAt + 2000) {
      fail(`liveness: no write acknowledged after healing; servers: ${sim.describeServers()}`);
    }
    // Convergence.
    const last = this.model.last;
    let coord: number | null = null;
    const live = sim.ids.filter((id) => !sim.retired.has(id));
    for (const id of live) {
      const n = sim.servers.get(id);
      if (!n) fail(`server ${id} is down at the end`);
      const s = n.replica.node;
      if (s.role === 'coordinator') {
        if (coord !== null) fail(`two coordinators at the end: ${coord} and ${id}`);
        coord = id;
      }
      if (s.commit !== last || n.replica.state.applied !== last || s.lastIndex() !== last) {
        fail(`no convergence after healing and quiet: server ${id} has last ${s.lastIndex()}, commit ${s.commit}, applied ${n.replica.state.applied}; the committed log ends at ${last}; servers: ${sim.describeServers()}`);
      }
      this.checkState(n, 'at the end');
    }
    if (coord === null) fail(`no coordinator at the end; servers: ${sim.describeServers()}`);
    for (const id of live) {
      const s = sim.servers.get(id)!.replica.node;
      if (s.coordinator !== coord) fail(`server ${id} follows ${s.coordinator}, not the coordinator ${coord}; servers: ${sim.describeServers()}`);
    }
    this.checkDurable('at the end');
    for (const rid of this.acked) if (!this.model.rids.has(rid)) fail(`acknowledged write ${rid} is not in the committed log`);
    for (const id of live) {
      const s = sim.servers.get(id)!.replica.node;
      if (s.clock >= BOGUS_TS || s.knownCommitTs >= BOGUS_TS) fail(`server ${id}: clock ${s.clock}, knownCommitTs ${s.knownCommitTs}: a bogus token moved a clock`);
    }
    // Causal consistency of the client histories.
    const h = historyOf(sessions);
    sim.stats.historyOps = h.ops.length;
    const bad = checkCausal(h);
    if (bad.length > 0) fail(`causal consistency: ${bad.map((v) => `${v.pattern}: ${v.detail}`).join('; ')}`);
  }
}

/** Ops as JSON with their fields in one order. */
function canonicalOps(ops: readonly object[]): string {
  return JSON.stringify(ops.map((o) => Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1)))));
}

function sameEvents(a: ChangeEvent[], b: ChangeEvent[]): boolean {
  return (
    a.length === b.length &&
    a.every((x, i) => {
      const y = b[i]!;
      return x.index === y.index && x.ts === y.ts && x.op === y.op && x.key === y.key && (x.value ?? null) === (y.value ?? null) && (x.b64 === true) === (y.b64 === true) && x.prev === y.prev;
    })
  );
}
