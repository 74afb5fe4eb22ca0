// Starts a real nats-server on a random loopback port for one test file.
// Resolves once it listens; stop() kills it and waits for the exit.

import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';

export interface NatsServer {
  url: string;
  port: number;
  proc: ChildProcess;
  stop(): Promise<void>;
}

export const NATS_START_TIMEOUT_MS = 10_000;

export async function startNatsServer(extraArgs: string[] = []): Promise<NatsServer> {
  const proc = spawn('nats-server', ['-a', '127.0.0.1', '-p', '-1', ...extraArgs], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`nats-server did not start: ${buf}`)), NATS_START_TIMEOUT_MS);
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`nats-server exited ${code}: ${buf}`));
    };
    proc.once('exit', onExit);
    proc.stderr!.on('data', (chunk: Buffer) => {
      buf += chunk.toString();
      const m = /Listening for client connections on [^\s]*:(\d+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        proc.off('exit', onExit);
        resolve(Number(m[1]));
      }
    });
  });
  proc.stderr!.resume();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    proc,
    stop: () => stopProcess(proc),
  };
}

/** SIGTERM, then SIGKILL after a grace period; resolves when the process has exited. */
export function stopProcess(proc: ChildProcess, graceMs = 5_000): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
    proc.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    proc.kill('SIGTERM');
  });
}

/** A loopback port free a moment ago (for a server to be started on it later). */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as { port: number }).port;
      srv.close(() => resolve(p));
    });
  });
}
