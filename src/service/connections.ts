/**
 * The life of the API's connections: idle ones are closed, and a connection that closes takes
 * the calls of its request with it.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';

/**
 * A connection that sends nothing (or stops halfway through its request) for `ms` is closed;
 * one waiting for its answer is not, however long the token takes. Node's header and request
 * deadlines only start with a request's first byte.
 */
export function closeIdleSockets(server: Server | HttpsServer, ms: number): void {
  const busy = new WeakSet<Socket>();
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    busy.add(req.socket);
    res.once('close', () => busy.delete(req.socket));
  });
  server.setTimeout(ms, (socket: Socket) => {
    if (!busy.has(socket)) socket.destroy();
  });
}

const hangups = new WeakMap<Socket, AbortSignal>();
/**
 * A signal that aborts when the connection closes: the calls of a client that went away, and
 * only those still queued, never reach the token. One per connection (it carries one request at
 * a time), not one per request: a controller and its listener cost a request ~4 µs.
 */
export function untilHangup(socket: Socket): AbortSignal {
  let signal = hangups.get(socket);
  if (!signal) {
    const aborter = new AbortController();
    if (socket.destroyed) aborter.abort();
    else socket.once('close', () => aborter.abort());
    hangups.set(socket, (signal = aborter.signal));
  }
  return signal;
}
