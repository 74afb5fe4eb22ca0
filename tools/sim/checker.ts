// Causal consistency of client histories, by the bad patterns of Bouajjani,
// Enea, Guerraoui and Hamza, "On verifying causal consistency" (POPL 2017),
// for a key-value store (their read-write memory) with unique written values,
// so that read-from is determined by the value read:
//
//   PO   program order: the order of each session's operations
//   RF   read-from: the write of the value a read returned
//   CO   causal order = (PO ∪ RF ∪ TOKEN)+, where TOKEN orders an operation
//        before the next one of a session it passed its token to (ckv's
//        cross-process causality; with no token passing CO is the paper's)
//   CF   conflict: w1 CF w2 when both write x and w1 CO-precedes a read of x
//        that reads from w2
//
// A history is causally consistent (CC) when none of CyclicCO,
// WriteCOInitRead, ThinAirRead, WriteCORead occurs, and causally convergent
// (CCv) when CyclicCF does not occur either. ckv orders all writes in one log,
// so it must be CCv.

export interface HOp {
  /** Session that issued it. */
  session: number;
  kind: 'w' | 'r';
  key: string;
  /** Written value, or value read (null: the initial value, i.e. absent). */
  value: string | null;
  /** For messages. */
  label: string;
}

export interface History {
  ops: HOp[];
  /** Extra causal edges (token passing): ops[from] before ops[to]. */
  edges: Array<[from: number, to: number]>;
}

export interface Violation {
  pattern: 'CyclicCO' | 'WriteCOInitRead' | 'ThinAirRead' | 'WriteCORead' | 'CyclicCF';
  detail: string;
}

class BitSet {
  words: Uint32Array;
  constructor(n: number) {
    this.words = new Uint32Array((n + 31) >>> 5);
  }
  set(i: number): void {
    this.words[i >>> 5]! |= 1 << (i & 31);
  }
  has(i: number): boolean {
    return (this.words[i >>> 5]! & (1 << (i & 31))) !== 0;
  }
  or(o: BitSet): void {
    const a = this.words;
    const b = o.words;
    for (let i = 0; i < a.length; i++) a[i]! |= b[i]!;
  }
  /** Indices set in both this and o. */
  *and(o: BitSet): Generator<number> {
    const a = this.words;
    const b = o.words;
    for (let w = 0; w < a.length; w++) {
      let x = a[w]! & b[w]!;
      while (x !== 0) {
        const bit = x & -x;
        yield (w << 5) + (31 - Math.clz32(bit));
        x ^= bit;
      }
    }
  }
}

/** Topological order of a graph, or null if it has a cycle (then `cycle` holds one). */
function topo(n: number, succ: number[][]): { order: number[] } | { cycle: number[] } {
  const indeg = new Int32Array(n);
  for (const s of succ) for (const v of s) indeg[v]!++;
  const order: number[] = [];
  const stack: number[] = [];
  for (let i = n - 1; i >= 0; i--) if (indeg[i] === 0) stack.push(i);
  while (stack.length) {
    const u = stack.pop()!;
    order.push(u);
    for (const v of succ[u]!) if (--indeg[v]! === 0) stack.push(v);
  }
  if (order.length === n) return { order };
  // Find one cycle among the nodes left (each has an in-edge from another left node).
  const left = new Set<number>();
  for (let i = 0; i < n; i++) if (indeg[i]! > 0) left.add(i);
  const pred = new Map<number, number>();
  for (const u of left) for (const v of succ[u]!) if (left.has(v) && !pred.has(v)) pred.set(v, u);
  let x = left.values().next().value as number;
  const seen = new Map<number, number>();
  const path: number[] = [];
  while (!seen.has(x)) {
    seen.set(x, path.length);
    path.push(x);
    x = pred.get(x)!;
  }
  return { cycle: path.slice(seen.get(x)!).reverse() };
}

export function checkCausal(h: History, maxReports = 5): Violation[] {
  const ops = h.ops;
  const n = ops.length;
  const out: Violation[] = [];
  const report = (v: Violation): boolean => {
    out.push(v);
    return out.length >= maxReports;
  };
  const show = (i: number): string => `${ops[i]!.label}`;

  // Writes by value; writes per key.
  const writer = new Map<string, number>();
  const writesOf = new Map<string, BitSet>();
  for (let i = 0; i < n; i++) {
    const o = ops[i]!;
    if (o.kind !== 'w') continue;
    if (o.value === null) throw new Error('checker: writes must write a value');
    if (writer.has(o.value)) throw new Error(`checker: value ${o.value} written twice: values must be unique`);
    writer.set(o.value, i);
    let b = writesOf.get(o.key);
    if (!b) writesOf.set(o.key, (b = new BitSet(n)));
    b.set(i);
  }

  // CO edges: PO, RF, TOKEN.
  const succ: number[][] = Array.from({ length: n }, () => []);
  const preds: number[][] = Array.from({ length: n }, () => []);
  const edge = (u: number, v: number): void => {
    succ[u]!.push(v);
    preds[v]!.push(u);
  };
  const lastOf = new Map<number, number>();
  const rf = new Int32Array(n).fill(-1);
  for (let i = 0; i < n; i++) {
    const o = ops[i]!;
    const prev = lastOf.get(o.session);
    if (prev !== undefined) edge(prev, i);
    lastOf.set(o.session, i);
    if (o.kind === 'r' && o.value !== null) {
      const w = writer.get(o.value);
      if (w === undefined || ops[w]!.key !== o.key) {
        if (report({ pattern: 'ThinAirRead', detail: `${show(i)} returned ${o.value}, never written to ${o.key}` })) return out;
        continue;
      }
      rf[i] = w;
      edge(w, i);
    }
  }
  for (const [u, v] of h.edges) edge(u, v);

  const t = topo(n, succ);
  if ('cycle' in t) {
    report({ pattern: 'CyclicCO', detail: t.cycle.map(show).join(' -> ') });
    return out; // the other patterns assume an order
  }

  // pred[v] = strict CO-predecessors of v, computed in topological order.
  const pred: BitSet[] = new Array(n);
  for (const v of t.order) {
    const b = new BitSet(n);
    for (const u of preds[v]!) {
      b.or(pred[u]!);
      b.set(u);
    }
    pred[v] = b;
  }

  const cfSucc: number[][] = succ.map((s) => s.slice());
  let cfEdges = 0;
  for (let r = 0; r < n; r++) {
    const o = ops[r]!;
    if (o.kind !== 'r') continue;
    const ws = writesOf.get(o.key);
    if (o.value === null) {
      if (ws) {
        for (const w of pred[r]!.and(ws)) {
          if (report({ pattern: 'WriteCOInitRead', detail: `${show(r)} read the initial value though ${show(w)} precedes it` })) return out;
          break;
        }
      }
      continue;
    }
    const w1 = rf[r]!;
    if (w1 < 0 || !ws) continue;
    for (const w2 of pred[r]!.and(ws)) {
      if (w2 === w1) continue;
      if (pred[w2]!.has(w1)) {
        if (report({ pattern: 'WriteCORead', detail: `${show(r)} read from ${show(w1)} though ${show(w1)} -> ${show(w2)} -> read in CO` })) return out;
      }
      // w2 CF w1: w2 precedes a read that reads from w1.
      cfSucc[w2]!.push(w1);
      cfEdges++;
    }
  }
  if (cfEdges > 0) {
    const c = topo(n, cfSucc);
    if ('cycle' in c) report({ pattern: 'CyclicCF', detail: c.cycle.map(show).join(' -> ') });
  }
  return out;
}
