// The simulation's trace: a ring of the last events, printed when a seed fails
// (or every line as it happens, with --verbose), and how messages look in it.

import { BROADCAST, type Msg } from '../../src/core/messages.js';
import type { Notice } from '../../src/core/node.js';

type TraceItem = { t: number; n: number; x: string | (() => string) };

export class Trace {
  private ring: TraceItem[] = [];
  private at = 0;
  constructor(
    private readonly size: number,
    private readonly verbose: ((line: string) => void) | null,
  ) {}

  /** Node 0 is the simulation itself. A function is formatted only if the line is printed. */
  add(time: number, node: number, x: string | (() => string)): void {
    const item: TraceItem = { t: time, n: node, x };
    if (this.verbose) this.verbose(fmt(item));
    if (this.size === 0) return;
    if (this.ring.length < this.size) this.ring.push(item);
    else {
      this.ring[this.at] = item;
      this.at = (this.at + 1) % this.size;
    }
  }

  lines(): string[] {
    const items = this.ring.length < this.size ? this.ring : [...this.ring.slice(this.at), ...this.ring.slice(0, this.at)];
    return items.map(fmt);
  }
}

function fmt(i: TraceItem): string {
  const text = typeof i.x === 'string' ? i.x : i.x();
  return `${i.t.toFixed(2).padStart(10)} ${i.n === 0 ? '  ' : `n${i.n}`} ${text}`;
}

export function fmtNotice(n: Notice): string {
  switch (n.type) {
    case 'coordinator':
      return `coordinator ${n.id} epoch ${n.epoch}`;
    case 'stepdown':
      return `stepdown epoch ${n.epoch}: ${n.reason}`;
    case 'election':
      return `election ${n.phase} epoch ${n.epoch}`;
    case 'config':
      return `config voters ${n.voters.join(',')}`;
    case 'foreign':
      return `refused cluster ${n.cid} (from ${n.from})`;
    case 'catchup':
      return n.on ? `CATCHING UP${n.target !== undefined ? ` to ${n.target}` : ''}` : 'caught up';
    default:
      return `${n.type} ${n.id}`;
  }
}

export function fmtMsg(m: Msg): string {
  const head = `${m.t} ${m.from}->${m.to === BROADCAST ? '*' : m.to} e${m.epoch} clk${m.clock}`;
  switch (m.t) {
    case 'ping':
      return `${head} ${m.role} c${m.coordinator ?? '-'} last${m.last}/${m.lastEpoch} commit${m.commit} matched${m.matched}`;
    case 'append':
      return `${head} prev${m.prevIndex}/${m.prevEpoch} [${m.entries.map((e) => `${e.index}/${e.epoch}`).join(' ')}] commit${m.commit}`;
    case 'ack':
      return `${head} match${m.match}`;
    case 'nack':
      return `${head} last${m.last} commit${m.commit}`;
    case 'promise':
      return `${head} ${m.ok ? 'ok' : 'NO'} last${m.last}/${m.lastEpoch} commit${m.commit}`;
    case 'fetch':
      return `${head} from${m.start}`;
    case 'fetched':
      return `${head} start${m.start} [${m.entries.map((e) => `${e.index}/${e.epoch}`).join(' ')}] last${m.last}${m.compacted ? ' compacted' : ''}`;
    case 'confirm':
    case 'confirmed':
    case 'tsq':
      return `${head} seq${m.seq}`;
    case 'tsr':
      return `${head} seq${m.seq} commitTs${m.commitTs}`;
    default:
      return head;
  }
}
