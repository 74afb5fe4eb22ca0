// Random bytes for the client: rids, inboxes (and, in the bundled CLI, the NATS
// client's inbox prefix; see tools/bundle-cli.ts). Read from /dev/urandom, the
// kernel's cryptographic source, where there is one: Web Crypto costs a one-shot
// command ~3 ms to load, more than the rest of its request. Elsewhere (or should
// the device fail) Web Crypto it is.

import { closeSync, openSync, readSync } from 'node:fs';

let urandom: number | null | undefined;

/** Fill `a` with cryptographically random bytes; returns it. */
export function randomFill<T extends Uint8Array>(a: T): T {
  if (urandom === undefined) {
    try {
      urandom = openSync('/dev/urandom', 'r');
    } catch {
      urandom = null;
    }
  }
  if (urandom !== null) {
    try {
      let got = 0;
      while (got < a.length) {
        const n = readSync(urandom, a, got, a.length - got, null);
        if (n <= 0) throw new Error('short read from /dev/urandom');
        got += n;
      }
      return a;
    } catch {
      try {
        closeSync(urandom);
      } catch {
        // (already unusable)
      }
      urandom = null;
    }
  }
  return globalThis.crypto.getRandomValues(a);
}
