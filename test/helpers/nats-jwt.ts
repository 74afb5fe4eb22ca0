// NATS decentralized auth (operator mode) for tests, without nsc: an operator, an
// account and users as signed JWTs (nkeys ed25519, the claims nats-server 2.9 reads),
// a server config that trusts them (memory resolver), and .creds files.

import { createHash } from 'node:crypto';
import { nkeys } from '@nats-io/transport-node';

type KeyPair = ReturnType<typeof nkeys.createUser>;

const b64url = (x: string | Uint8Array): string => Buffer.from(x).toString('base64url');

function signJwt(claims: Record<string, unknown>, signer: KeyPair): string {
  const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'ed25519-nkey' }));
  const body: Record<string, unknown> = { ...claims, iat: Math.floor(Date.now() / 1000) };
  body.jti = createHash('sha256').update(JSON.stringify(body)).digest('base64url');
  const payload = b64url(JSON.stringify(body));
  return `${header}.${payload}.${b64url(signer.sign(new TextEncoder().encode(`${header}.${payload}`)))}`;
}

export interface Operator {
  /** nats-server configuration lines: trust the operator, preload the account. */
  config: string;
  /** A .creds file's text for a new user of the account (pub/sub: NATS permission lists; none = all). */
  userCreds(name: string, perms?: { pub?: string[]; sub?: string[] }): string;
}

export function newOperator(): Operator {
  const op = nkeys.createOperator();
  const acct = nkeys.createAccount();
  const opJwt = signJwt({ iss: op.getPublicKey(), sub: op.getPublicKey(), name: 'ckv-test-operator', nats: { type: 'operator', version: 2 } }, op);
  const limits = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 };
  const acctJwt = signJwt({ iss: op.getPublicKey(), sub: acct.getPublicKey(), name: 'ckv-test-account', nats: { type: 'account', version: 2, limits } }, op);
  return {
    config: `operator: ${opJwt}\nresolver: MEMORY\nresolver_preload: {\n  ${acct.getPublicKey()}: ${acctJwt}\n}\n`,
    userCreds(name, perms = {}) {
      const user = nkeys.createUser();
      const claims = {
        iss: acct.getPublicKey(),
        sub: user.getPublicKey(),
        name,
        nats: { type: 'user', version: 2, pub: perms.pub ? { allow: perms.pub } : {}, sub: perms.sub ? { allow: perms.sub } : {}, subs: -1, data: -1, payload: -1 },
      };
      const jwt = signJwt(claims, acct);
      const seed = new TextDecoder().decode(user.getSeed());
      return `-----BEGIN NATS USER JWT-----\n${jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n${seed}\n------END USER NKEY SEED------\n`;
    },
  };
}
