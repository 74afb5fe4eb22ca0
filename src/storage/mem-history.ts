// The checkpoint's history in memory (for the in-memory checkpoints: tests and the
// simulation). Same retention rule as the LMDB one: at most `max` events, let go of oldest
// first and by whole entries, so that every event above the floor is kept.

import type { ChangeEvent } from '../core/wire.js';
import type { HistoryReader } from '../core/records.js';

export class MemHistory implements HistoryReader {
  private evs: ChangeEvent[] = [];
  private floor = 0;

  constructor(private readonly max: number) {}

  historyFloor(): number {
    return this.floor;
  }

  historyCount(): number {
    return this.evs.length;
  }

  /** Take a delta's events (undefined: start over at `index`). */
  add(events: readonly ChangeEvent[] | undefined, index: number): void {
    if (events === undefined) {
      this.evs = [];
      this.floor = index;
      return;
    }
    for (const ev of events) this.evs.push(ev);
    const [drop, floor] = pruneCount(this.evs, this.max);
    if (drop > 0) {
      this.evs = this.evs.slice(drop);
      this.floor = floor;
    }
  }

  *events(from: number, key?: string): Iterable<ChangeEvent> {
    for (let i = firstAtOrAfter(this.evs, from); i < this.evs.length; i++) {
      const ev = this.evs[i]!;
      if (key === undefined || ev.key === key) yield ev;
    }
  }

  *keyEventsBefore(key: string, below: number): Iterable<ChangeEvent> {
    for (let i = firstAtOrAfter(this.evs, below) - 1; i >= 0; i--) {
      const ev = this.evs[i]!;
      if (ev.key === key) yield ev;
    }
  }

  clone(): MemHistory {
    const c = new MemHistory(this.max);
    c.evs = this.evs.slice();
    c.floor = this.floor;
    return c;
  }
}

/** How many of the oldest events to let go so that at most `max` stay, by whole entries; and the new floor. */
export function pruneCount(evs: readonly ChangeEvent[], max: number): [drop: number, floor: number] {
  let drop = evs.length - max;
  if (drop <= 0) return [0, 0];
  while (drop < evs.length && evs[drop]!.index === evs[drop - 1]!.index) drop++;
  return [drop, evs[drop - 1]!.index];
}

/** Position of the first event at an index >= from (events are in index order). */
function firstAtOrAfter(evs: readonly ChangeEvent[], from: number): number {
  let lo = 0;
  let hi = evs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (evs[mid]!.index < from) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
