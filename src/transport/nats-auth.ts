// How ckv, ckv-server and ckvctl connect to a NATS that wants credentials or
// TLS: the flags and environment variables NATS users know, parsed and checked
// at the edge (a missing file is a usage error naming the file), secrets kept
// out of every message and log line. Pure parsing and file reading: the NATS
// library is not loaded here (the one-shot CLI loads it only to connect).

import { readFileSync } from 'node:fs';

/** Where a NATS connection's credentials come from, once resolved. */
export interface NatsAuth {
  user?: string;
  pass?: string;
  token?: string;
  /** Contents of an NKey seed file (SU...). */
  nkeySeed?: Uint8Array;
  /** Contents of a .creds file (user JWT and NKey seed). */
  creds?: Uint8Array;
  tls?: { ca?: string; cert?: string; key?: string };
}

/** The flags, for node:util parseArgs (every program takes the same ones). */
export const NATS_AUTH_OPTIONS = {
  'nats-user': { type: 'string' },
  'nats-password-file': { type: 'string' },
  'nats-token-file': { type: 'string' },
  'nats-nkey': { type: 'string' },
  'nats-creds': { type: 'string' },
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
} as const;

export const NATS_AUTH_HELP = `NATS credentials and TLS (each also from the environment; secrets are never printed):
  --nats-user NAME         user (env CKV_NATS_USER), with the password in
  --nats-password-file F   a file (env CKV_NATS_PASSWORD_FILE, or CKV_NATS_PASSWORD itself);
                           nats://USER:PASSWORD@HOST in --nats works too
  --nats-token-file F      token in a file (env CKV_NATS_TOKEN_FILE, or CKV_NATS_TOKEN)
  --nats-nkey F            NKey seed file (env CKV_NATS_NKEY)
  --nats-creds F           .creds file: user JWT and seed (env CKV_CREDS)
  --tls-ca F               CA certificate(s) to trust, PEM (env CKV_TLS_CA)
  --tls-cert F --tls-key F client certificate and key, PEM (env CKV_TLS_CERT, CKV_TLS_KEY)`;

/** A bad flag, variable or file: the programs report it as a usage error. */
export class NatsAuthUsageError extends Error {
  override readonly name = 'NatsAuthUsageError';
}

/** scheme://, the user information (up to the authority's last "@"), and the rest; null without user information. */
function userInfo(url: string): { scheme: string; info: string; rest: string } | null {
  const m = /^[a-z][a-z0-9+.-]*:\/\//i.exec(url);
  const start = m ? m[0].length : 0;
  const slash = url.indexOf('/', start);
  const authority = url.slice(start, slash < 0 ? url.length : slash);
  const at = authority.lastIndexOf('@');
  if (at < 0) return null;
  return { scheme: url.slice(0, start), info: authority.slice(0, at), rest: url.slice(start + at + 1) };
}

/** The URL with any user and password replaced by "***": for messages and logs. */
export function redactUrl(url: string): string {
  const u = userInfo(url);
  return u ? `${u.scheme}***@${u.rest}` : url;
}

/** URLs for the NATS library (without credentials), and the credentials some carried. */
export function splitUrlCredentials(urls: string[]): { servers: string[]; user?: string; pass?: string; token?: string } {
  let found: { user?: string; pass?: string; token?: string } | null = null;
  const servers = urls.map((u) => {
    const m = userInfo(u);
    if (!m) return u;
    const info = m.info;
    const colon = info.indexOf(':');
    let here: { user?: string; pass?: string; token?: string };
    try {
      here = colon < 0 ? { token: decodeURIComponent(info) } : { user: decodeURIComponent(info.slice(0, colon)), pass: decodeURIComponent(info.slice(colon + 1)) };
    } catch {
      throw new NatsAuthUsageError(`--nats: ${redactUrl(u)}: the user or password is not URL-encoded`);
    }
    if (found && JSON.stringify(found) !== JSON.stringify(here)) throw new NatsAuthUsageError('--nats: the URLs carry different credentials; NATS takes one set for all servers');
    found = here;
    return m.scheme + m.rest;
  });
  return { servers, ...(found ?? {}) };
}

function readSecret(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new NatsAuthUsageError(`${what}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** A secret file's text, without the line end an editor leaves. */
const secretText = (path: string, what: string): string => readSecret(path, what).toString('utf8').replace(/\r?\n$/, '');

/**
 * Resolve flags (parseArgs values) and environment into credentials; URL credentials from
 * `fromUrl` count when nothing else names a user or token. Throws NatsAuthUsageError.
 */
export function resolveNatsAuth(flags: Record<string, unknown>, env: NodeJS.ProcessEnv, fromUrl: { user?: string; pass?: string; token?: string } = {}): NatsAuth {
  const str = (flag: string, name: string): string | undefined => {
    const v = flags[flag];
    if (typeof v === 'string') return v;
    const e = env[name];
    return e !== undefined && e !== '' ? e : undefined;
  };
  const auth: NatsAuth = {};
  const user = str('nats-user', 'CKV_NATS_USER');
  const passFile = str('nats-password-file', 'CKV_NATS_PASSWORD_FILE');
  const pass = passFile !== undefined ? secretText(passFile, '--nats-password-file') : env.CKV_NATS_PASSWORD || undefined;
  const tokenFile = str('nats-token-file', 'CKV_NATS_TOKEN_FILE');
  const token = tokenFile !== undefined ? secretText(tokenFile, '--nats-token-file') : env.CKV_NATS_TOKEN || undefined;
  const nkey = str('nats-nkey', 'CKV_NATS_NKEY');
  const creds = str('nats-creds', 'CKV_CREDS');
  if (user !== undefined) {
    if (pass === undefined) throw new NatsAuthUsageError('--nats-user needs a password: --nats-password-file, CKV_NATS_PASSWORD_FILE or CKV_NATS_PASSWORD');
    auth.user = user;
    auth.pass = pass;
  } else if (pass !== undefined) throw new NatsAuthUsageError('a NATS password without a user: give --nats-user (or CKV_NATS_USER)');
  if (token !== undefined) auth.token = token;
  if (nkey !== undefined) {
    const seed = secretText(nkey, '--nats-nkey');
    if (!/^SU[A-Z2-7]{50,}$/.test(seed)) throw new NatsAuthUsageError(`--nats-nkey: ${nkey} does not hold a user NKey seed (SU...)`);
    auth.nkeySeed = new TextEncoder().encode(seed);
  }
  if (creds !== undefined) {
    const bytes = readSecret(creds, '--nats-creds');
    if (!bytes.toString('utf8').includes('BEGIN NATS USER JWT')) throw new NatsAuthUsageError(`--nats-creds: ${creds} is not a NATS .creds file`);
    auth.creds = new Uint8Array(bytes);
  }
  const kinds = [auth.user !== undefined, auth.token !== undefined, auth.nkeySeed !== undefined, auth.creds !== undefined].filter(Boolean).length;
  if (kinds > 1) throw new NatsAuthUsageError('give one kind of NATS credentials: a user and password, a token, an NKey seed or a .creds file');
  if (kinds === 0 && (fromUrl.user !== undefined || fromUrl.token !== undefined)) {
    if (fromUrl.user !== undefined) {
      auth.user = fromUrl.user;
      auth.pass = fromUrl.pass ?? '';
    } else auth.token = fromUrl.token!;
  }
  const ca = str('tls-ca', 'CKV_TLS_CA');
  const cert = str('tls-cert', 'CKV_TLS_CERT');
  const key = str('tls-key', 'CKV_TLS_KEY');
  if ((cert === undefined) !== (key === undefined)) throw new NatsAuthUsageError('--tls-cert and --tls-key go together');
  if (ca !== undefined || cert !== undefined) {
    auth.tls = {
      ...(ca !== undefined ? { ca: readSecret(ca, '--tls-ca').toString('utf8') } : {}),
      ...(cert !== undefined ? { cert: readSecret(cert, '--tls-cert').toString('utf8'), key: readSecret(key!, '--tls-key').toString('utf8') } : {}),
    };
  }
  return auth;
}

/** What the NATS library's authenticator makers are (passed in, so that this file does not load it). */
export interface NatsAuthenticators {
  nkeyAuthenticator(seed: Uint8Array): unknown;
  credsAuthenticator(creds: Uint8Array): unknown;
}

/** Connection options for @nats-io/transport-node's connect(). */
export function natsConnectionOptions(auth: NatsAuth, lib: NatsAuthenticators): Record<string, unknown> {
  return {
    ...(auth.user !== undefined ? { user: auth.user, pass: auth.pass } : {}),
    ...(auth.token !== undefined ? { token: auth.token } : {}),
    ...(auth.nkeySeed !== undefined ? { authenticator: lib.nkeyAuthenticator(auth.nkeySeed) } : {}),
    ...(auth.creds !== undefined ? { authenticator: lib.credsAuthenticator(auth.creds) } : {}),
    ...(auth.tls !== undefined ? { tls: auth.tls } : {}),
  };
}

/** The NATS library's error for refused credentials or permissions, told apart by name and text. */
export function isNatsAuthError(err: unknown): boolean {
  const e = err as { name?: string; message?: string } | null;
  if (!e) return false;
  if (e.name === 'AuthorizationError' || e.name === 'PermissionViolationError' || e.name === 'UserAuthenticationExpiredError') return true;
  return /authorization violation|authentication (timeout|expired|revoked)|permissions violation/i.test(e.message ?? '');
}
