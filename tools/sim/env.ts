// One simulated server: the production replica (src/server/replica.ts) under
// a simulated environment. Time is the simulation's; a timer is an event in its
// queue; an fsync or a checkpoint write completes after a simulated delay; a
// send goes into the simulated network. Everything scheduled for a server dies
// with its incarnation (a crash), and waits while it is paused (SIGSTOP). This
// file only implements the environment: every decision is the replica's.

import type { Msg } from '../../src/core/messages.js';
import { CheckpointPort, RepairNeeded, Replica, type Cancel, type CheckpointTransfer, type ClientSubject, type ReplicaEnv, type ReplicaLog, type ReplicaLogger } from '../../src/server/replica.js';
import type { ChangeEvent } from '../../src/core/wire.js';
import type { DurableState, Notice } from '../../src/core/node.js';
import { PeerInbox, PeerSeal, newIncarnation } from '../../src/transport/peer-auth.js';
import { SimCheckpoint, type SimDisk } from './disk.js';

/** The simulated cluster's key. */
const SIM_CLUSTER_KEY = Buffer.alloc(32, 7);
import type { Sim } from './harness.js';

/** A simulated checkpoint behind the replica's port: reads at once, writes after a simulated delay. */
export type SimCheckpointPort = CheckpointPort<SimCheckpoint>;

/** One incarnation of a server: its replica and the environment it runs in. */
export class SimNode implements ReplicaEnv {
  alive = true;
  readonly replica: Replica;
  readonly log: ReplicaLog;
  readonly checkpoint: SimCheckpointPort;
  readonly transfer: CheckpointTransfer;
  readonly logger: ReplicaLogger;
  readonly serving = new Set<ClientSubject>();
  /** Checkpoint transfers' incoming stores made and not yet swapped in or let go of (none may be left when the server repairs). */
  readonly incoming = new Set<SimCheckpointPort>();
  /** Peer messages are sealed and opened as the NATS transport does (in wire mode). */
  readonly seal: PeerSeal;
  readonly inbox: PeerInbox;

  constructor(
    readonly sim: Sim,
    readonly id: number,
    readonly disk: SimDisk,
  ) {
    this.log = {
      get last() {
        return disk.log.view.last;
      },
      append: (entries) => disk.log.append(entries),
      truncateFrom: (from) => disk.log.truncateFrom(from),
      sync: (done) => {
        sim.at(this, sim.t + sim.fsyncDelay(), () => {
          const truncated = disk.log.sync();
          sim.inv.onSynced(this, truncated);
          // Persisted, but nothing (else) sent: between a follower's fsync and its ack.
          if (sim.faults.crashAfterSync(this)) return;
          done();
        });
      },
      removeBelow: (index) => disk.log.removeBelow(index),
      // The size trigger stays off: checkpoints come on the simulated cron.
      bytesAfter: () => 0,
    };
    this.checkpoint = this.port(disk.ckpt);
    this.transfer = {
      requestPage: (from, request, done) => sim.net.requestPage(this, from, request, done),
      begin: (done) =>
        sim.at(this, sim.t, () => {
          const incoming = this.port(new SimCheckpoint());
          this.incoming.add(incoming);
          done(incoming);
        }),
      // The swap is one atomic rename, durable at once.
      swap: (_current, incoming, done) =>
        sim.at(this, sim.t + sim.checkpointDelay(), () => {
          this.incoming.delete(incoming as SimCheckpointPort);
          disk.ckpt = (incoming as SimCheckpointPort).store;
          done(incoming);
        }),
      abort: (incoming, done) =>
        sim.at(this, sim.t, () => {
          this.incoming.delete(incoming as SimCheckpointPort);
          done();
        }),
    };
    this.seal = new PeerSeal(SIM_CLUSTER_KEY, newIncarnation(sim.t, Buffer.from(sim.rng.time.int(2 ** 32).toString(16).padStart(16, '0'), 'hex')));
    this.inbox = new PeerInbox(this.seal, id);
    const note = (obj: object, msg?: string): void => sim.trace.add(sim.t, id, () => `${msg ?? ''} ${JSON.stringify(obj, (_k, v: unknown) => (v instanceof Error ? v.message : v))}`);
    this.logger = { debug: () => undefined, info: note, warn: note, error: note };
    // As the server's shell: a cut record that may have been acknowledged makes it catch up.
    const opened = disk.log.open();
    if (opened.maybeLost) disk.state.durable = { ...disk.state.durable, catchUp: true };
    this.replica = new Replica(
      {
        id,
        cluster: 'sim',
        voters: sim.initialVoters,
        logEntries: opened.entries,
        state: { ...disk.state.durable },
        newClusterId: Buffer.from(Array.from({ length: 16 }, () => sim.rng.time.int(256))).toString('base64url'),
        retainEntries: sim.p.retain,
        retainBytes: sim.p.retainBytes,
        dirtyRecordsMax: sim.p.dirtyMax,
        removeDeadAfterMs: sim.p.removeDeadAfterTicks * sim.tickMs,
        snapshotPageItems: sim.p.snapshotPageItems,
        replEntriesMax: sim.p.replEntriesMax,
      },
      this,
    );
  }

  /** A simulated checkpoint whose writes complete after a simulated delay. */
  private port(store: SimCheckpoint): SimCheckpointPort {
    return new CheckpointPort(store, (st, delta, done) =>
      this.sim.at(this, this.sim.t + this.sim.checkpointDelay(), () => {
        st.write(delta);
        done();
      }),
    );
  }

  now(): number {
    return this.sim.t;
  }
  timer(ms: number, fn: () => void): Cancel {
    let live = true;
    this.sim.at(this, this.sim.t + ms, () => {
      if (live) fn();
    });
    return () => {
      live = false;
    };
  }
  defer(fn: () => void): void {
    // After everything else due now, as setImmediate is.
    this.sim.at(this, this.sim.t, fn);
  }
  sendPeer(m: Msg): void {
    this.sim.inv.onSend(this, m);
    this.sim.net.send(this, m);
    this.sim.faults.afterSend(this, m);
  }
  sendSnapshot(to: number, data: string): void {
    this.sim.net.offer(this.id, to, data);
  }
  publishEvent(ev: ChangeEvent): void {
    this.sim.inv.onEvent(this, ev);
  }
  publishMembers(n: Notice & { by: number }): void {
    void n;
  }
  serve(subject: ClientSubject, on: boolean): void {
    if (on) this.serving.add(subject);
    else this.serving.delete(subject);
  }
  writeState(state: DurableState, done: () => void): void {
    this.disk.state.write(state);
    this.sim.at(this, this.sim.t + this.sim.fsyncDelay(), () => {
      this.disk.state.sync();
      done();
    });
  }
  observe(e: Parameters<NonNullable<ReplicaEnv['observe']>>[0]): void {
    this.sim.inv.observe(this, e);
  }
  fatal(err: Error): void {
    // A damaged record: the shell repairs the disk and starts the server again (catching up).
    // The real shell repairs and runs again in the same process: a transfer's incoming store is
    // let go of first, or it would stay open there.
    if (err instanceof RepairNeeded) {
      this.sim.note(this.id, `REPAIR: ${err.damage.message}`);
      if (this.replica.receivingCheckpoint) this.sim.stats.repairsReceiving++;
      this.replica.releaseTransfer(() => {
        if (this.incoming.size > 0) throw new Error(`server ${this.id} stopped to repair with ${this.incoming.size} checkpoint transfer store(s) still open`);
        this.sim.faults.crash(this.id, 'stopping to repair', false);
        this.disk.repair(true);
        this.sim.stats.repairs++;
        this.sim.q.push(this.sim.t + 1, () => {
          if (this.sim.servers.get(this.id) === null) this.sim.start(this.id);
        });
      });
      return;
    }
    // A replica that stops on its own otherwise is a failure of the run (the error says why).
    throw err;
  }

  /** Role and positions, for the trace. */
  describe(): string {
    const n = this.replica.node;
    return `${n.role}${n.role === 'coordinator' ? '' : `(c${n.coordinator ?? '-'})`} e${n.epoch} p${n.promised}${n.catchUp ? ' CATCHUP' : ''} last${n.lastIndex()} commit${n.commit} applied${this.replica.state.applied} ckpt${n.checkpointIndex}`;
  }
}
