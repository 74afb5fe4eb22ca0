#!/usr/bin/env node
// `ckv` as installed: runs the bundled CLI (ckv-bundle.cjs beside it, made by
// tools/bundle-cli.ts) with V8's code cache. A one-shot command spends most of
// its short life compiling JavaScript; with the cache (written next to the
// bundle after a run that had none, or whose cache V8 refused: a new Node or a
// new bundle) it compiles almost nothing. Plain CommonJS, so that Node's ESM
// loader is never started. A missing or unwritable cache only costs speed.

import fs = require('node:fs');
import path = require('node:path');
import vm = require('node:vm');
import nodeModule = require('node:module');

const bundle = path.join(__dirname, 'ckv-bundle.cjs');
// V8 refuses a cache made by another Node or under other V8 flags: one file per Node and
// flags, so that runs with different NODE_OPTIONS do not keep replacing each other's.
const cacheFile = path.join(__dirname, `ckv-bundle.${process.version}.${fnv1a(`${process.execArgv.join(' ')}|${process.env.NODE_OPTIONS ?? ''}`)}.cache`);

/** FNV-1a, 32 bits, in hex (node:crypto would cost more to load than the cache saves). */
function fnv1a(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16).padStart(8, '0');
}

let source = fs.readFileSync(bundle, 'utf8');
if (source.startsWith('#!')) source = `//${source}`;
let cachedData: Buffer | undefined;
try {
  cachedData = fs.readFileSync(cacheFile);
} catch {
  cachedData = undefined;
}
// A dynamic import() in the bundle (of a Node built-in) goes to Node's own loader.
const importModuleDynamically = (vm as unknown as { constants?: { USE_MAIN_CONTEXT_DEFAULT_LOADER?: symbol } }).constants?.USE_MAIN_CONTEXT_DEFAULT_LOADER;
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
  filename: bundle,
  ...(cachedData ? { cachedData } : {}),
  ...(importModuleDynamically ? { importModuleDynamically: importModuleDynamically as never } : {}),
});
if (cachedData === undefined || script.cachedDataRejected === true) {
  // After the run, when the functions it needed are compiled and can go in the cache too.
  process.once('exit', () => {
    try {
      fs.accessSync(__dirname, fs.constants.W_OK);
      const tmp = `${cacheFile}.${process.pid}`;
      fs.writeFileSync(tmp, script.createCachedData());
      fs.renameSync(tmp, cacheFile);
    } catch {
      // A read-only install: run without a cache.
    }
  });
}
const mod = { exports: {} };
(script.runInThisContext() as (...args: unknown[]) => void).call(mod.exports, mod.exports, nodeModule.createRequire(bundle), mod, bundle, __dirname);
