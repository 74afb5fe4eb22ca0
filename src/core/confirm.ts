// The questions a server cannot answer from its own state alone, as pure
// bookkeeping the Node drives:
//
// - ConfirmRounds (at the coordinator): strong reads, and token checks it may
//   answer "ahead" only once a majority confirms it still leads (a deposed
//   coordinator's commit may lag the cluster's). Everything that waits joins the
//   next round; one round runs at a time; a round that times out fails its reads
//   and hands its token checks to the next one.
// - TokenQueries (at a follower): tokens beyond what it has heard committed,
//   asked of the coordinator in batches (tsq), answered by its tsr.

export interface TokenCheck {
  id: number;
  after: number;
}

export interface Round {
  seq: number;
  /** Strong reads, answered at `index` once confirmed. */
  ids: number[];
  tokens: TokenCheck[];
  /** Followers' token queries: a tsr goes to each once confirmed. */
  tsqs: Array<{ to: number; seq: number }>;
  index: number;
  acks: Set<number>;
  until: number;
}

export class ConfirmRounds {
  private seq = 0;
  private reads: number[] = [];
  private tokens: TokenCheck[] = [];
  private tsqs: Array<{ to: number; seq: number }> = [];
  private round: Round | null = null;

  addRead(id: number): void {
    this.reads.push(id);
  }
  addToken(q: TokenCheck): void {
    this.tokens.push(q);
  }
  addTsq(to: number, seq: number): void {
    this.tsqs.push({ to, seq });
  }

  /** A round to start, if something waits and none runs: it carries everything waiting. */
  start(self: number, index: number, until: number): Round | null {
    if (this.round || (this.reads.length === 0 && this.tokens.length === 0 && this.tsqs.length === 0)) return null;
    this.round = { seq: ++this.seq, ids: this.reads, tokens: this.tokens, tsqs: this.tsqs, index, acks: new Set([self]), until };
    this.reads = [];
    this.tokens = [];
    this.tsqs = [];
    return this.round;
  }

  /** A voter confirmed round `seq`; returns the round when it now has `majority` acks (it is finished). */
  confirmed(seq: number, from: number, majority: number): Round | null {
    const r = this.round;
    if (!r || r.seq !== seq) return null;
    r.acks.add(from);
    return r.acks.size >= majority ? this.finish() : null;
  }

  /** The running round has enough acks already (a single voter). */
  finishIfDone(majority: number): Round | null {
    return this.round && this.round.acks.size >= majority ? this.finish() : null;
  }

  private finish(): Round {
    const r = this.round!;
    this.round = null;
    return r;
  }

  /** The running round timed out at `now`: its reads fail (returned); its token checks wait for the next round. */
  expire(now: number): number[] | null {
    const r = this.round;
    if (!r || now <= r.until) return null;
    this.tokens.unshift(...r.tokens);
    this.tsqs.unshift(...r.tsqs);
    this.round = null;
    return r.ids;
  }

  /** We no longer lead: every read fails; our own token checks are returned, to go to whoever leads next. */
  stepDown(): { failed: number[]; tokens: TokenCheck[] } {
    const failed = [...(this.round?.ids ?? []), ...this.reads];
    const tokens = [...(this.round?.tokens ?? []), ...this.tokens];
    this.round = null;
    this.reads = [];
    this.tokens = [];
    this.tsqs = [];
    return { failed, tokens };
  }

  cancel(id: number): void {
    this.tokens = this.tokens.filter((q) => q.id !== id);
    if (this.round) this.round.tokens = this.round.tokens.filter((q) => q.id !== id);
  }
}

export class TokenQueries {
  private seq = 0;
  /** seq 0: not asked yet. */
  private queue: Array<TokenCheck & { seq: number }> = [];

  add(q: TokenCheck): void {
    this.queue.push({ ...q, seq: 0 });
  }

  /** The tsq to send now for the checks not asked yet (null: none). */
  ask(): number | null {
    const fresh = this.queue.filter((q) => q.seq === 0);
    if (fresh.length === 0) return null;
    const seq = ++this.seq;
    for (const q of fresh) q.seq = seq;
    return seq;
  }

  /** The coordinator answered every query up to `seq` with its commitTs: those checks are decided. */
  answered(seq: number, commitTs: number): Array<{ id: number; ahead: boolean }> {
    return this.take((q) => q.seq !== 0 && q.seq <= seq, (q) => q.after > commitTs);
  }

  /** We heard of commits up to `knownCommitTs`: the checks at or below it are not ahead. */
  known(knownCommitTs: number): Array<{ id: number; ahead: boolean }> {
    if (this.queue.length === 0) return [];
    return this.take((q) => q.after <= knownCommitTs, () => false);
  }

  cancel(id: number): void {
    this.queue = this.queue.filter((q) => q.id !== id);
  }

  private take(done: (q: TokenCheck & { seq: number }) => boolean, ahead: (q: TokenCheck) => boolean): Array<{ id: number; ahead: boolean }> {
    const out: Array<{ id: number; ahead: boolean }> = [];
    const rest: typeof this.queue = [];
    for (const q of this.queue) {
      if (done(q)) out.push({ id: q.id, ahead: ahead(q) });
      else rest.push(q);
    }
    this.queue = rest;
    return out;
  }
}
