// Authenticated peer messages. Anyone who can publish on the NATS server can
// publish on the peer subjects; a server acts only on messages sealed under the
// cluster's key: every peer message is framed as
//
//   ckv1 <incarnation> <seq> <mac>\n<json>
//
// where mac = HMAC-SHA256(key, subject \n incarnation \n seq \n json), base64url.
// Binding the subject stops a message from being replayed onto another subject;
// the sender's incarnation (a process's start time and a random part) and a
// sequence number per process let the receiver drop replays and duplicates
// (ReplayGuard), and show a second live process using the same server id.
// Without a key (an explicit, insecure choice) the mac is "-" and not checked.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { encodeEntryJson } from '../core/entry-text.js';
import type { Msg } from '../core/messages.js';
import { peerMessageProblem } from './peer-validate.js';

export const PEER_FRAME_TAG = 'ckv1';
/** Fewest bytes of a cluster key. */
export const CLUSTER_KEY_BYTES_MIN = 32;
/** Messages of one incarnation that may arrive out of order before older ones are dropped. */
export const REPLAY_WINDOW = 64;

export type DropReason = 'malformed' | 'unauthenticated' | 'bad-mac' | 'replay' | 'stale-incarnation';

export type Opened = { ok: true; body: string; incarnation: string; seq: number } | { ok: false; reason: DropReason };

/** A process's incarnation: its start time (ms, base 36) and 8 random bytes (hex). */
export function newIncarnation(startMs: number, random: Buffer = randomBytes(8)): string {
  return `${Math.floor(startMs).toString(36)}.${random.toString('hex')}`;
}

/** Orders incarnations: by start time, then by the random part (a tie-break). */
export function compareIncarnations(a: string, b: string): number {
  const [ta, ra] = a.split('.');
  const [tb, rb] = b.split('.');
  const d = parseInt(ta!, 36) - parseInt(tb!, 36);
  if (d !== 0) return d;
  return ra! < rb! ? -1 : ra! > rb! ? 1 : 0;
}

const INCARNATION = /^[0-9a-z]{1,11}\.[0-9a-f]{16}$/;
const MAC_CHARS = /^[-_a-zA-Z0-9]{43}$/;

/** Read a cluster key file: hex (at least 64 digits), or raw bytes (at least 32). */
export function loadClusterKey(path: string): Buffer {
  const raw = readFileSync(path);
  const text = raw.toString('utf8').trim();
  const key = /^[0-9a-fA-F]+$/.test(text) && text.length % 2 === 0 ? Buffer.from(text, 'hex') : raw;
  if (key.length < CLUSTER_KEY_BYTES_MIN) throw new Error(`${path}: a cluster key needs at least ${CLUSTER_KEY_BYTES_MIN} bytes (make one with: ckvctl keygen FILE)`);
  return key;
}

/** A new cluster key, as the text of a key file. */
export function newClusterKeyText(): string {
  return `${randomBytes(CLUSTER_KEY_BYTES_MIN).toString('hex')}\n`;
}

export class PeerSeal {
  private seq = 0;

  constructor(
    private readonly key: Buffer | null,
    readonly incarnation: string,
  ) {}

  private mac(subject: string, incarnation: string, seq: number, body: string): string {
    return createHmac('sha256', this.key!).update(`${subject}\n${incarnation}\n${seq}\n`).update(body).digest('base64url');
  }

  seal(subject: string, body: string): string {
    const seq = ++this.seq;
    const mac = this.key ? this.mac(subject, this.incarnation, seq, body) : '-';
    return `${PEER_FRAME_TAG} ${this.incarnation} ${seq} ${mac}\n${body}`;
  }

  open(subject: string, data: Uint8Array | string): Opened {
    const text = typeof data === 'string' ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8');
    const nl = text.indexOf('\n');
    if (nl < 0 || nl > 120) return { ok: false, reason: 'malformed' };
    const head = text.slice(0, nl).split(' ');
    if (head.length !== 4 || head[0] !== PEER_FRAME_TAG || !INCARNATION.test(head[1]!)) return { ok: false, reason: 'malformed' };
    const seq = Number(head[2]);
    if (!Number.isSafeInteger(seq) || seq < 1) return { ok: false, reason: 'malformed' };
    const body = text.slice(nl + 1);
    const mac = head[3]!;
    if (this.key) {
      if (mac === '-') return { ok: false, reason: 'unauthenticated' };
      if (!MAC_CHARS.test(mac)) return { ok: false, reason: 'malformed' };
      const want = Buffer.from(this.mac(subject, head[1]!, seq, body), 'utf8');
      if (!timingSafeEqual(want, Buffer.from(mac, 'utf8'))) return { ok: false, reason: 'bad-mac' };
    }
    return { ok: true, body, incarnation: head[1]!, seq };
  }
}

/** Drops a message seen before (or too far behind), and messages of an older incarnation of the sender. */
export class ReplayGuard {
  private senders = new Map<number, { incarnation: string; top: number; window: bigint }>();

  accept(from: number, incarnation: string, seq: number): 'ok' | 'replay' | 'stale-incarnation' {
    const s = this.senders.get(from);
    if (!s || s.incarnation !== incarnation) {
      // A newer incarnation is a restart of the sender; an older one is a replay.
      if (s && compareIncarnations(incarnation, s.incarnation) < 0) return 'stale-incarnation';
      this.senders.set(from, { incarnation, top: seq, window: 1n });
      return 'ok';
    }
    if (seq > s.top) {
      const shift = seq - s.top;
      s.window = shift >= REPLAY_WINDOW ? 1n : ((s.window << BigInt(shift)) | 1n) & ((1n << BigInt(REPLAY_WINDOW)) - 1n);
      s.top = seq;
      return 'ok';
    }
    const back = s.top - seq;
    if (back >= REPLAY_WINDOW) return 'replay';
    const bit = 1n << BigInt(back);
    if (s.window & bit) return 'replay';
    s.window |= bit;
    return 'ok';
  }
}

/** 'own': our own message, back on a broadcast subject (not a fault: nothing to report). */
export type Received = { ok: true; m: Msg } | { ok: false; reason: DropReason | 'invalid' | 'same-id' | 'own'; detail: string };

/**
 * A peer message's JSON. The entries of an append or a fetched reply go in as their
 * canonical text, which the log has computed (or will use) anyway: under load these
 * messages are mostly entries, and this way each entry is encoded once per process.
 */
export function encodePeerMessage(m: Msg): string {
  if (m.t !== 'append' && m.t !== 'fetched') return JSON.stringify(m);
  const { entries, ...rest } = m;
  let list = '';
  for (let i = 0; i < entries.length; i++) list += (i === 0 ? '' : ',') + encodeEntryJson(entries[i]!);
  const head = JSON.stringify(rest);
  return `${head.slice(0, -1)},"entries":[${list}]}`;
}

/**
 * Everything a server does with the bytes of a peer message before the replica sees it:
 * check the seal, parse, check the shape, notice another process using our id, drop replays.
 * The NATS transport and the simulation both use it.
 */
export class PeerInbox {
  private guard = new ReplayGuard();

  constructor(
    private readonly seal: PeerSeal,
    private readonly self: number,
  ) {}

  receive(subject: string, data: Uint8Array | string): Received {
    const o = this.seal.open(subject, data);
    if (!o.ok) return { ok: false, reason: o.reason, detail: subject };
    let raw: unknown;
    try {
      raw = JSON.parse(o.body);
    } catch {
      return { ok: false, reason: 'invalid', detail: 'not JSON' };
    }
    const problem = peerMessageProblem(raw);
    if (problem !== null) return { ok: false, reason: 'invalid', detail: problem };
    const m = raw as Msg;
    if (m.from === this.self) {
      // Our own messages come back on broadcast subjects; another incarnation's mean a second process with our id.
      if (o.incarnation !== this.seal.incarnation) return { ok: false, reason: 'same-id', detail: o.incarnation };
      return { ok: false, reason: 'own', detail: 'our own message' };
    }
    const g = this.guard.accept(m.from, o.incarnation, o.seq);
    if (g !== 'ok') return { ok: false, reason: g, detail: `from ${m.from}` };
    return { ok: true, m };
  }
}
