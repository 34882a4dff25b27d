/** /metrics for Prometheus, /healthz (the process answers) and /readyz (every eager slot can take calls). */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Pkcs11Supervisor } from './client/supervisor-client.js';

const READY = new Set(['open', 'logged_in', 'so_logged_in', 'logging_in', 'logging_out']);

export function readiness(sup: Pkcs11Supervisor): { ready: boolean; slots: Record<string, string>; audit?: string } {
  const slots: Record<string, string> = {};
  const snapshot = sup.snapshot();
  let ready = !snapshot.closed;
  for (const [name, s] of Object.entries(snapshot.slots)) {
    slots[name] = s.state;
    // A lazy slot that has not been used yet is not a reason to take the replica out of service.
    const lazyIdle = sup.config.slots[name]!.lazy && s.state === 'uninitialized';
    if (!READY.has(s.state) && !lazyIdle) ready = false;
  }
  if (!snapshot.audit) return { ready, slots };
  // A trail that cannot be written: audited calls are refused or unrecorded here, so send them elsewhere.
  if (!snapshot.audit.healthy) ready = false;
  return { ready, slots, audit: snapshot.audit.healthy ? 'ok' : `failing: ${snapshot.audit.error}` };
}

export interface ListenerLimits {
  maxConnections: number;
  idleTimeoutMs: number;
}

const DEFAULT_LIMITS: ListenerLimits = { maxConnections: 64, idleTimeoutMs: 10_000 };

export async function startHttpServer(sup: Pkcs11Supervisor, register: Registry, host: string, port: number, limits: ListenerLimits = DEFAULT_LIMITS): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const json = (code: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(code, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(body));
    };
    // HEAD is GET without the body (Node leaves it out): uptime checkers and load balancers use it.
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(405, { error: 'GET or HEAD only' }, { allow: 'GET, HEAD' });
    if (path === '/healthz') return json(200, { status: 'ok' });
    if (path === '/readyz') {
      const r = readiness(sup);
      return json(r.ready ? 200 : 503, r);
    }
    if (path === '/metrics') {
      register.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': register.contentType });
          res.end(text);
        },
        (e: Error) => json(500, { error: e.message }),
      );
      return;
    }
    json(404, { error: 'not found', paths: ['/metrics', '/healthz', '/readyz'] });
  });
  limit(server, limits);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

export function addressOf(server: Server): string {
  const a = server.address() as AddressInfo;
  return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
}

/**
 * Bounds what clients can hold: at most maxConnections sockets (more are closed at once), and
 * none idle, slow to send its headers or slow to finish its request for longer than
 * idleTimeoutMs. Idle connections left open by the thousand would take the file descriptors
 * the tokens' modules and the session threads need.
 */
export function limit(server: Server, { maxConnections, idleTimeoutMs }: ListenerLimits): void {
  server.maxConnections = maxConnections;
  server.keepAliveTimeout = Math.min(5_000, idleTimeoutMs);
  server.headersTimeout = idleTimeoutMs;
  server.requestTimeout = idleTimeoutMs;
  server.setTimeout(idleTimeoutMs, (socket) => socket.destroy());
}
