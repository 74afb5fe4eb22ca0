#!/usr/bin/env node
// Bundles the one-shot CLI (dist/src/client/cli.js and the NATS client it
// loads) into one minified CommonJS file, dist/src/client/ckv-bundle.cjs, which
// dist/src/client/launch.cjs (package.json "bin") runs with V8's code cache.
// Node built-ins that a plain nats:// request never uses (tls, dns, and the
// crypto module tweetnacl asks for, needed only for nkeys; os and child_process,
// for lock and elect) are loaded on first use instead of at start, and the NATS
// client's random inbox prefix comes from /dev/urandom (src/client/random.ts). Run by `npm run build`; `npm run bench` times the
// result (one-shot row) against `node -e 0` and against the unbundled CLI.

import { build, type Plugin } from 'esbuild';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * A module standing for built-in `name`, which it requires on first use of any property.
 * Its names are known without loading it (taken from the built-in here, at build time), so
 * that esbuild's ES-module interop, which copies every name at start, loads nothing: a
 * getter per name. (A name this Node lacks but a later one has still reads through.)
 */
function lazyBuiltin(name: string): string {
  const names = Object.keys(createRequire(import.meta.url)(`node:${name}`) as object);
  return `let real = null;
const load = () => (real ??= require('node:${name}'));
// No TLS socket exists before tls is loaded (every TLS connection goes through here).
const notYet = { [Symbol.hasInstance]: (x) => real !== null && x instanceof real.TLSSocket };
const lazy = {};
for (const k of ${JSON.stringify(names)}) {
  Object.defineProperty(lazy, k, { enumerable: true, configurable: true, get: () => (k === 'TLSSocket' && real === null ? notYet : load()[k]) });
}
module.exports = new Proxy(lazy, { get: (t, k) => (k in t || k === '__esModule' ? t[k] : load()[k]) });`;
}

/**
 * The NATS client's inbox prefix comes from Web Crypto, which costs a one-shot command ~3 ms
 * to load: in the bundle it comes from src/client/random.ts (/dev/urandom) instead. The
 * build fails, rather than silently keeping the slow path, if that code has changed.
 */
const NUID_RANDOM = 'if (globalThis?.crypto?.getRandomValues) {\n        globalThis.crypto.getRandomValues(a);\n    }';
const nuidRandom: Plugin = {
  name: 'nuid-random',
  setup(b) {
    b.onLoad({ filter: /[\\/]@nats-io[\\/]nuid[\\/]lib[\\/]nuid\.js$/ }, (a) => {
      const src = readFileSync(a.path, 'utf8');
      if (!src.includes(NUID_RANDOM)) throw new Error(`${a.path}: its random source changed; update tools/bundle-cli.ts`);
      const random = JSON.stringify(join(ROOT, 'dist', 'src', 'client', 'random.js'));
      return { contents: src.replace(NUID_RANDOM, `if (true) {\n        require(${random}).randomFill(a);\n    }`), loader: "js" };
    });
  },
};

const lazyBuiltins: Plugin = {
  name: 'lazy-builtins',
  setup(b) {
    b.onResolve({ filter: /^(node:)?(tls|dns|crypto|os|child_process)$/ }, (a) => {
      const name = a.path.replace(/^node:/, '');
      if (a.namespace === 'lazy') return { path: `node:${name}`, external: true };
      // Only tweetnacl's require('crypto') (its random source, for nkeys) is put off.
      if (name === 'crypto' && !a.importer.includes(`${'/'}tweetnacl${'/'}`)) return undefined;
      return { path: name, namespace: 'lazy' };
    });
    b.onLoad({ filter: /.*/, namespace: 'lazy' }, (a) =>
      a.path === 'crypto'
        ? { contents: "module.exports = { randomBytes: (n) => require('node:crypto').randomBytes(n) };", loader: 'js' }
        : { contents: lazyBuiltin(a.path), loader: 'js' },
    );
  },
};

// The caches of an older bundle would only be refused: start without them.
const CLIENT_DIR = join(ROOT, 'dist', 'src', 'client');
for (const f of readdirSync(CLIENT_DIR)) if (/^ckv-bundle\..*\.cache$/.test(f)) rmSync(join(CLIENT_DIR, f), { force: true });

await build({
  entryPoints: [join(ROOT, 'dist', 'src', 'client', 'cli.js')],
  outfile: join(ROOT, 'dist', 'src', 'client', 'ckv-bundle.cjs'),
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  minify: true,
  // Errors are told apart by name (client.ts matches the NATS client's by name).
  keepNames: true,
  plugins: [lazyBuiltins, nuidRandom],
  logLevel: 'warning',
});
