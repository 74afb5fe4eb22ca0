// Long work on the event loop (a checkpoint write's checks, encoding and packing) lets the
// loop run between slices of a few ms of work. By time, not by count: under load each turn
// of the loop serves many requests, so the number of turns a write takes sets how long it
// takes. Slices of 1,024 records made a checkpoint at a million keys take several times its
// CPU time; more keys were dirty by the next one, which took longer still.

/** Work a slice does before the loop runs again (the longest a request then waits on it, about). */
export const CHECKPOINT_SLICE_MS = 8;
/** Items between two looks at the clock (a look costs ~50 ns; an item, ~1 µs). */
const CLOCK_EVERY_ITEMS = 64;

export class Slices {
  private started = performance.now();
  private items = 0;

  /** ms: a slice's length (0: let the loop run at every look at the clock, as tests want). */
  constructor(private readonly ms = CHECKPOINT_SLICE_MS) {}

  /** After `items` more items of work: true once this slice has had its time. */
  due(items = 1): boolean {
    this.items += items;
    if (this.items < CLOCK_EVERY_ITEMS) return false;
    this.items = 0;
    return performance.now() - this.started >= this.ms;
  }

  /** Let the loop run (requests, timers), then start the next slice. */
  async yield(): Promise<void> {
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.started = performance.now();
  }
}
