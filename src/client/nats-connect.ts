// Connecting to NATS within a budget, leaving no socket or timer behind when
// it fails.
//
// @nats-io/transport-node 3.4 gives up on a connection attempt after its
// `timeout`, but it never closes a socket that connected at the TCP level and
// has not received the server's INFO yet (nats-io/nats.js#64): against a
// paused nats-server, or anything that accepts and never answers, that socket
// stays open and keeps the process alive. And each server in the list gets
// its own full `timeout`. Here every attempt uses a transport that closes what
// it opened, each server gets a share of the budget, and when the budget is
// spent the connection is closed, which ends an attempt still in progress.
//
// This is a transport shim: it uses the library's internal API (the one its
// own Node, Deno and WebSocket transports are built on) and extends its Node
// transport; it is loaded only when a client connects.

import { createConnection, type Socket } from 'node:net';
import { credsAuthenticator, NatsConnectionImpl, nkeyAuthenticator, ProtocolHandler, setTransportFactory, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';

/** The library's authenticator makers, for natsConnectionOptions (nats-auth.ts). */
export const authenticators = { nkeyAuthenticator, credsAuthenticator };
import { NodeTransport, nodeResolveHost } from '@nats-io/transport-node/lib/node_transport.js';

/** NodeTransport that closes its socket also when it gives up before the connection is established. */
class ClosingTransport extends NodeTransport {
  /** The socket of a TCP connect in progress (NodeTransport keeps it out of reach until it connects). */
  private dialing: Socket | undefined;

  // As NodeTransport.dial, but the socket is ours to destroy while it connects.
  override dial(hp: { hostname: string; port: number }): Promise<Socket> {
    return new Promise((resolve, reject) => {
      let error: Error | undefined;
      const socket = createConnection(hp.port, hp.hostname, () => {
        this.dialing = undefined;
        socket.removeAllListeners();
        resolve(socket);
      });
      this.dialing = socket;
      socket.on('error', (err) => (error = err));
      socket.on('close', () => {
        this.dialing = undefined;
        socket.removeAllListeners();
        reject(error ?? new Error('connection closed'));
      });
      socket.setNoDelay(true);
    });
  }

  override close(err?: Error): Promise<void> {
    if (this.connected) return super.close(err);
    // NodeTransport.close does nothing before the server's INFO: drop the socket.
    this.dialing?.destroy();
    this.discard();
    return Promise.resolve();
  }
}

/** NatsConnectionImpl's constructor is private in its typings; connect() below does what its static connect does. */
const Connection = NatsConnectionImpl as unknown as new (opts: ConnectionOptions) => NatsConnectionImpl;

/** Thrown when the budget ends before any server said hello. */
export class ConnectTimeoutError extends Error {
  override readonly name = 'ConnectTimeoutError';
}

/**
 * Connect to one of opts.servers within budgetMs, or reject (ConnectTimeoutError,
 * or the library's error) having closed every socket and cleared every timer.
 */
export async function connectWithin(opts: ConnectionOptions, budgetMs: number): Promise<NatsConnection> {
  const servers = Array.isArray(opts.servers) ? opts.servers.length : 1;
  // Set on every connect: transport-node's own connect() sets its plain factory again.
  setTransportFactory({ factory: () => new ClosingTransport(), dnsResolveFn: nodeResolveHost });
  const nc = new Connection({ ...opts, timeout: Math.max(1, Math.floor(budgetMs / Math.max(1, servers))) });
  const protocol = new ProtocolHandler(nc.options, nc);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ConnectTimeoutError(`no NATS server answered within ${budgetMs} ms`)), budgetMs);
  });
  try {
    await Promise.race([protocol.dialLoop(), expired]);
  } catch (err) {
    // Ends an attempt in progress (its socket and timers) and any further reconnecting.
    await protocol.close();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  nc.protocol = protocol;
  return nc;
}
