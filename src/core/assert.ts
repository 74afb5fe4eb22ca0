/** An invariant that stays checked in production: a broken one is a bug, never input. */
export function assert(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(`invariant: ${msg}`);
}
