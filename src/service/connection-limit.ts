/**
 * The API's connection limit, `api.maxConnections`. Node's own limit resets a connection over
 * it at once, so a client holding more connections than the daemon serves saw "connection
 * reset" from a daemon that is up, and could not tell whether its call ran. Here the first
 * `max` connections are served; up to REFUSABLE more are accepted only to answer their first
 * request 429 QUEUE_FULL and close (the call did not run: retry, or hold fewer connections);
 * past that Node resets them, as a flood deserves.
 */
import type { Server } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import { Server as TlsServer } from 'node:tls';

/** Connections past the limit that are answered before they are closed: a few clients' worth. */
const REFUSABLE = 64;

/** Installs the limit on `server`: the connections it serves go into `served`, which the listeners share. */
export function limitConnections(server: Server | HttpsServer, max: number, served: WeakSet<Socket>): void {
  server.maxConnections = max + REFUSABLE;
  let open = 0;
  // A TLS connection counts once its handshake is done: the socket a request arrives on is that one.
  server.on(server instanceof TlsServer ? 'secureConnection' : 'connection', (socket: Socket) => {
    if (open >= max || socket.destroyed) return; // destroyed: a client certificate refused
    open++;
    served.add(socket);
    socket.once('close', () => open--);
  });
}
