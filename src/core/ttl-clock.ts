// The coordinator's countdown of keys' times to live. Pure: time enters only as ticks.
//
// Expiry is decided here and carried out through the log: a due key becomes an `expire`
// op the coordinator proposes, applied by every replica like any write (so the change
// feed and every server see the same deletion). Never early: a countdown starts when the
// coordinator applies the write, or, for a new coordinator, when it takes the role — it
// cannot know how much of a countdown its predecessor had spent, so it starts each anew.

import { TICK_MS } from './limits.js';

export class TtlClock {
  private now = 0;
  /** Each armed key: the revision its countdown is for, and the tick it is due at. */
  private armed = new Map<string, { rev: number; at: number }>();
  /** Keys by the tick they are due at (entries whose key was re-armed or disarmed since are stale). */
  private buckets = new Map<number, string[]>();

  get size(): number {
    return this.armed.size;
  }

  /** Start (or start again) the countdown of key's record at rev. */
  arm(key: string, rev: number, ttlMs: number): void {
    // A whole tick more than the ttl: the tick now under way may be nearly over.
    const at = this.now + Math.ceil(ttlMs / TICK_MS) + 1;
    this.armed.set(key, { rev, at });
    const b = this.buckets.get(at);
    if (b) b.push(key);
    else this.buckets.set(at, [key]);
  }

  disarm(key: string): void {
    this.armed.delete(key);
  }

  clear(): void {
    this.armed.clear();
    this.buckets.clear();
  }

  /** One tick: the keys whose time has come (no longer armed). */
  tick(): Array<{ key: string; rev: number }> {
    this.now++;
    const keys = this.buckets.get(this.now);
    if (keys === undefined) return [];
    this.buckets.delete(this.now);
    const due: Array<{ key: string; rev: number }> = [];
    for (const key of keys) {
      const a = this.armed.get(key);
      if (a === undefined || a.at !== this.now) continue;
      this.armed.delete(key);
      due.push({ key, rev: a.rev });
    }
    return due;
  }
}
