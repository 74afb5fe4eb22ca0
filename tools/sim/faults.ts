// The faults the simulation injects: partitions (symmetric, one-way, isolation),
// loss, duplication and slow links, kill -9 of one server or of every server at
// once (also while a coordinator is ahead of its followers), crashes right after
// an fsync or a checkpoint, pauses, a server restarted with an empty data
// directory, bit flips in a log record or a checkpoint record, and membership
// changes made by an operator through the wire protocol. Each kind is a knob
// (params.ts); healing ends them all.

import type { Msg } from '../../src/core/messages.js';
import type { Entry, Reply, Request } from '../../src/core/wire.js';
import { PeerSeal } from '../../src/transport/peer-auth.js';
import { SimDisk } from './disk.js';
import type { SimNode } from './env.js';
import type { Sim } from './harness.js';
import type { FaultKind } from './params.js';
import type { Rng } from './prng.js';

function pickWeighted<K extends string>(r: Rng, w: Record<K, number>): K {
  const keys = Object.keys(w) as K[];
  let total = 0;
  for (const k of keys) total += w[k];
  let x = r.float() * total;
  for (const k of keys) {
    x -= w[k];
    if (x < 0) return k;
  }
  return keys[keys.length - 1]!;
}

export class Faults {
  /** Servers stopped for good, whose removal from the voters the operator keeps proposing until committed. */
  private toRemove = new Set<number>();

  constructor(private sim: Sim) {}

  private get r(): Rng {
    return this.sim.rng.fault;
  }

  /** One fault, of a kind drawn by the seed's weights. */
  strike(): void {
    const sim = this.sim;
    if (sim.healed) return;
    const r = this.r;
    const ids = sim.ids;
    const net = sim.net;
    const kind: FaultKind = pickWeighted(r, sim.p.faultWeights);
    switch (kind) {
      case 'partition': {
        const sh = r.shuffle([...ids]);
        const cut = r.range(1, ids.length - 1);
        const a = sh.slice(0, cut);
        const b = sh.slice(cut);
        for (const i of a) for (const j of b) net.blocked.add(`${i}>${j}`).add(`${j}>${i}`);
        return sim.note(0, `PARTITION {${a.join(',')}} | {${b.join(',')}}`);
      }
      case 'oneway': {
        if (r.chance(0.5)) {
          // A server deaf to some peers (it does not hear them, they hear it), or mute to some.
          const i = this.target(ids);
          const deaf = r.chance(0.5);
          const others = r.shuffle(ids.filter((j) => j !== i));
          const some = others.slice(0, r.range(1, others.length));
          for (const j of some) net.blocked.add(deaf ? `${j}>${i}` : `${i}>${j}`);
          return sim.note(i, `${deaf ? 'DEAF to' : 'MUTE to'} ${some.join(',')}`);
        }
        const cut: string[] = [];
        for (let k = r.range(1, ids.length); k > 0; k--) {
          const i = r.pick(ids);
          const j = r.pick(ids.filter((v) => v !== i));
          net.blocked.add(`${i}>${j}`);
          cut.push(`${i}>${j}`);
        }
        return sim.note(0, `ONE-WAY cut ${cut.join(' ')}`);
      }
      case 'isolate': {
        const i = this.target(ids);
        for (const j of ids) if (j !== i) net.blocked.add(`${i}>${j}`).add(`${j}>${i}`);
        return sim.note(0, `ISOLATE ${i}`);
      }
      case 'heal':
        net.blocked.clear();
        return sim.note(0, 'HEAL partitions');
      case 'crash': {
        const up = this.up();
        if (up.length) this.crash(this.target(up), 'kill -9');
        return;
      }
      case 'crashAll':
        return this.crashAll(r.chance(0.5) ? r.range(1, 20) : 0);
      case 'pause': {
        const up = this.up();
        if (!up.length) return;
        const i = this.target(up);
        const ms = r.range(50, 1500);
        sim.pausedUntil.set(i, sim.t + ms);
        return sim.note(i, `PAUSE for ${ms} ms`);
      }
      case 'loss':
        net.loss = r.chance(0.3) ? 0 : r.real(0, sim.p.lossMax);
        return sim.note(0, `loss ${(net.loss * 100).toFixed(1)}%`);
      case 'dup':
        net.dup = r.chance(0.3) ? 0 : r.real(0, sim.p.dupMax);
        return sim.note(0, `duplication ${(net.dup * 100).toFixed(1)}%`);
      case 'slow':
        net.slow = r.chance(0.3) ? 0 : r.real(0, sim.p.slowMax);
        return sim.note(0, `slow messages ${(net.slow * 100).toFixed(0)}%`);
      case 'join':
        if (!this.addLearner()) this.join();
        return;
      case 'remove':
        return this.removeVoter();
      case 'wipe': {
        if (!this.mayLoseData()) return;
        const i = this.target(ids.filter((x) => !sim.retired.has(x)));
        this.crash(i, 'kill -9, then its data directory is wiped', false);
        sim.disks.set(i, new SimDisk());
        sim.note(i, 'WIPED: restarts with an empty data directory');
        return this.restartLater(i);
      }
      case 'flipLog': {
        if (!this.mayLoseData()) return;
        const i = this.target(ids.filter((x) => !sim.retired.has(x)));
        const at = sim.disks.get(i)!.log.flip(r);
        if (at !== null) sim.note(i, `BIT FLIP in log record ${at}`);
        return;
      }
      case 'forge':
        return this.forge();
      case 'flipCheckpoint': {
        if (!this.mayLoseData()) return;
        const live = ids.filter((x) => !sim.retired.has(x));
        const receiving = sim.p.flipReceiving ? live.filter((x) => sim.servers.get(x)?.replica.receivingCheckpoint === true) : [];
        const i = this.target(receiving.length > 0 ? receiving : live);
        const key = sim.disks.get(i)!.ckpt.flip(r);
        if (key !== null) sim.note(i, `BIT FLIP in checkpoint record ${key}`);
        // A read of it then, as a client's without a token is answered at once: the damage is
        // found while the transfer is under way (else the swap would replace it unread).
        const n = sim.servers.get(i);
        if (key !== null && receiving.includes(i) && n) n.replica.request('read', JSON.stringify({ op: 'get', key }), () => undefined);
        return;
      }
    }
  }

  /**
   * Forged peer messages, as anyone on the NATS server can publish them: an append in the
   * coordinator's name that would replace committed entries, not sealed with the cluster's key
   * (dropped by the seal); or a claim and a heartbeat sealed as a peer's but with an epoch and
   * a clock far ahead (dropped by the core's step bound): neither may change data or wedge elections.
   */
  private forge(): void {
    const sim = this.sim;
    const r = this.r;
    const coord = this.up().map((i) => sim.servers.get(i)!).find((n) => n.replica.node.role === 'coordinator');
    const up = this.up();
    if (up.length === 0) return;
    const from = coord ?? sim.servers.get(r.pick(up))!;
    const s = from.replica.node;
    if (r.chance(0.5) && sim.p.wire && coord) {
      const at = Math.max(1, s.commit);
      const m: Msg = { t: 'append', from: from.id, to: 0, cid: s.cid, epoch: s.epoch, clock: s.clock + 1, prevIndex: at - 1, prevEpoch: s.entry(at - 1)?.epoch ?? 0, entries: [{ index: at, epoch: s.epoch, ts: s.clock + 1, kind: 'write', ops: [{ op: 'put', key: 'k.0', value: 'forged' }] }], commit: at, commitTs: s.clock + 1 };
      sim.note(0, `FORGE an unsealed append in ${from.id}'s name at ${at}`);
      const subject = sim.subjects.peer(m);
      const frame = new PeerSeal(Buffer.alloc(32, 1), from.seal.incarnation).seal(subject, JSON.stringify(m));
      for (const n of this.up().map((i) => sim.servers.get(i)!)) {
        const got = n.inbox.receive(subject, frame);
        if (got.ok) throw new Error(`node ${n.id} took a forged append not sealed with the cluster's key`);
      }
      return;
    }
    // Beyond the core's step bounds (EPOCH_STEP_MAX, CLOCK_STEP_MAX), by a little or by a lot.
    const jump = r.chance(0.5) ? 2 ** 50 : 2 ** 41 + 1;
    const claim: Msg = { t: 'claim', last: s.lastIndex(), lastEpoch: s.lastEpoch(), from: from.id, to: 0, cid: s.cid, epoch: Math.max(s.promised, s.epoch) + jump, clock: 0 };
    const ping: Msg = { ...({ t: 'ping', role: 'coordinator', coordinator: from.id, last: s.lastIndex(), lastEpoch: s.lastEpoch(), commit: s.commit, commitTs: s.commitTs, matched: s.lastIndex(), applied: s.commit, checkpoint: 0, voters: s.voters, uptimeTicks: 0 } as const), from: from.id, to: 0, cid: s.cid, epoch: s.epoch, clock: s.clock + jump };
    sim.note(0, `FORGE a claim of epoch +${jump} and a heartbeat of clock +${jump} in ${from.id}'s name`);
    for (const m of [claim, ping]) sim.net.send(from, m);
  }

  /** Every live server holds its data: none empty, catching up, or with damage not found yet. */
  private everyoneHasData(): boolean {
    const sim = this.sim;
    return sim.ids.every((x) => sim.retired.has(x) || !(sim.inv.withoutData(x) || sim.disks.get(x)!.hasDamage()));
  }

  /**
   * A server may lose data (a wipe, a flipped bit) only when every other has its data and no
   * decommissioned server is still a voter: a majority that lost its data has lost writes.
   */
  private mayLoseData(): boolean {
    return this.toRemove.size === 0 && this.everyoneHasData();
  }

  private up(): number[] {
    return this.sim.ids.filter((i) => this.sim.servers.get(i));
  }

  /** A server to hit: half the time a coordinator, if any among `from`. */
  private target(from: number[]): number {
    const coords = from.filter((i) => this.sim.servers.get(i)?.replica.node.role === 'coordinator');
    return coords.length > 0 && this.r.chance(0.5) ? this.r.pick(coords) : this.r.pick(from);
  }

  /**
   * kill -9 of every process. With `waitAhead` > 0, wait (up to that many short steps) for a
   * moment when the coordinator's log is ahead of every follower's, as after a burst of writes.
   */
  private crashAll(waitAhead: number): void {
    const sim = this.sim;
    if (waitAhead > 0) {
      const coord = this.up().map((i) => sim.servers.get(i)!).find((n) => n.replica.node.role === 'coordinator');
      const ahead = coord && this.up().every((i) => i === coord.id || sim.disks.get(i)!.log.view.last < coord.replica.node.lastIndex());
      if (!ahead) {
        sim.q.push(sim.t + this.r.real(0.2, 5), () => {
          if (!sim.healed) this.crashAll(waitAhead - 1);
        });
        return;
      }
      sim.note(0, `the coordinator ${coord.id} is ahead of its followers (last ${coord.replica.node.lastIndex()})`);
    }
    for (const i of sim.ids) this.crash(i, 'kill -9 of every process');
  }

  /** kill -9: the disk keeps what was synced (and maybe a prefix of the rest); the server comes back later. */
  crash(id: number, why: string, restart = true): void {
    const sim = this.sim;
    const n = sim.servers.get(id);
    if (!n) return;
    n.alive = false;
    sim.servers.set(id, null);
    sim.pausedUntil.delete(id);
    const d = sim.disks.get(id)!;
    d.log.crash(sim.rng.disk);
    d.state.crash(sim.rng.disk);
    sim.stats.crashes++;
    sim.note(id, `CRASH (${why}): disk log ${d.log.durable.first}..${d.log.durable.last}, promise ${d.state.durable.promised}${d.state.durable.catchUp ? ' (catching up)' : ''}, checkpoint ${d.ckpt.meta().index}`);
    sim.inv.checkDurable(`after server ${id} crashed`);
    if (restart) this.restartLater(id);
  }

  private restartLater(id: number): void {
    const sim = this.sim;
    if (sim.healed) return;
    sim.q.push(sim.t + this.r.range(...sim.p.downMs), () => {
      if (sim.servers.get(id) === null && !sim.retired.has(id)) sim.start(id);
    });
  }

  /** Possibly crash right after an fsync, before anything is sent. */
  crashAfterSync(n: SimNode): boolean {
    if (this.sim.healed || !this.r.chance(this.sim.p.crashAfterSync)) return false;
    this.crash(n.id, 'right after an fsync, before sending');
    return true;
  }

  /** Possibly crash right after a send: whatever the server had not made durable yet is lost. */
  afterSend(n: SimNode, m: { t: string }): void {
    if (this.sim.healed || !this.r.chance(this.sim.p.crashAfterSend)) return;
    this.sim.q.push(this.sim.t, () => {
      if (n.alive) this.crash(n.id, `right after sending ${m.t}`);
    });
  }

  /** Possibly crash as soon as a checkpoint is durable, while the log may still have writes in flight. */
  afterCheckpoint(n: SimNode): void {
    if (!this.sim.healed && this.r.chance(this.sim.p.crashAfterCheckpoint)) this.sim.q.push(this.sim.t, () => this.crash(n.id, 'right after a checkpoint'));
  }

  heal(): void {
    const sim = this.sim;
    sim.healed = true;
    sim.net.blocked.clear();
    sim.net.loss = 0;
    sim.net.dup = 0;
    sim.net.slow = 0;
    sim.pausedUntil.clear();
    sim.note(0, 'HEAL everything; quiet from now on');
    for (const id of sim.ids) if (!sim.servers.get(id) && !sim.retired.has(id)) sim.start(id);
  }

  // ---- membership, as an operator does it: config requests on the write subject ----

  private coordinator(): SimNode | undefined {
    return this.sim.ids.map((i) => this.sim.servers.get(i)).find((n): n is SimNode => !!n && n.serving.has('write'));
  }

  private operator(c: SimNode, req: Request, what: string): void {
    const sim = this.sim;
    sim.at(c, sim.t + 1, () =>
      c.replica.request('write', JSON.stringify(req), (reply: Reply) => {
        sim.note(c.id, `${what}: ${reply.ok ? `ok at ${reply.index}` : `${reply.error.code}: ${reply.error.message}`}`);
      }),
    );
  }

  /** A committed configuration: a decommissioned server is out for good. */
  onConfigCommitted(e: Extract<Entry, { kind: 'config' }>): void {
    for (const id of this.toRemove) if (!e.voters.includes(id)) this.toRemove.delete(id);
  }

  /** Decommission a server (removed from the voters by a committed configuration): it never comes back. */
  private retire(id: number): void {
    if (this.sim.retired.has(id)) return;
    this.crash(id, 'decommissioned', false);
    this.sim.retired.add(id);
    this.sim.note(id, 'RETIRED');
  }

  /** A new server joins: it starts as a learner, and the coordinator promotes it once caught up. */
  private join(): void {
    const sim = this.sim;
    if (sim.ids.length >= sim.o.nodes + 2) return;
    const id = Math.max(...sim.ids) + 1;
    sim.ids.push(id);
    sim.disks.set(id, new SimDisk());
    sim.drift.set(id, sim.rng.time.real(1 - sim.p.drift, 1 + sim.p.drift));
    sim.note(id, `JOIN: server ${id} starts`);
    sim.start(id);
  }

  /** The operator adds back a running server that was removed (a learner now). False if there is none to add. */
  private addLearner(): boolean {
    const c = this.coordinator();
    if (!c) return false;
    const learners = this.sim.ids.filter((i) => this.sim.servers.get(i) && !this.sim.retired.has(i) && !c.replica.node.voters.includes(i));
    if (learners.length === 0 || !this.r.chance(0.7)) return false;
    const v = this.r.pick(learners);
    this.sim.inv.operatorAdds.add(v);
    this.operator(c, { op: 'config', add: v }, `ADD learner ${v}`);
    return true;
  }

  /**
   * The operator removes a voter. Either the server keeps running (it becomes a learner, not
   * added back until the operator adds it), or it is decommissioned: stopped for good first,
   * then removed (asked again until committed; one per run, so that the voters that remain
   * can always form a majority).
   */
  private removeVoter(): void {
    const c = this.coordinator();
    if (!c) return;
    const voters = c.replica.node.voters;
    let v = [...this.toRemove].find((x) => voters.includes(x));
    if (v === undefined) {
      const candidates = voters.filter((x) => x !== c.id);
      if (candidates.length < 2) return;
      v = this.r.pick(candidates);
      // (Only with no configuration change pending: one from two voters to three still needs
      // both of the two, and an operator who lost one of them for good has lost the quorum.
      // Seed 2040092 with dirtyMax=1 and membership did that at 2bdf23a.)
      if (this.sim.retired.size === 0 && voters.length >= 3 && !c.replica.node.configPending() && this.everyoneHasData() && this.r.chance(0.5)) {
        this.retire(v);
        this.toRemove.add(v);
      }
    }
    this.operator(c, { op: 'config', remove: v }, `REMOVE voter ${v}${this.sim.retired.has(v) ? ' (decommissioned)' : ''}`);
  }
}
