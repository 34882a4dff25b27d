/**
 * The service API's mutual-TLS listener: TLS 1.3, a client certificate verified against the
 * client CA (and its CRLs), its files re-read when they change. A refused handshake never reaches
 * HTTP; it is counted and audited, per client address, with the reason.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer, type ServerOptions } from 'node:https';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import type { SecureContextOptions, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { AuditEntry } from '../audit-record.js';
import type { ApiConfig } from '../config-schema.js';
import { peerOf } from './caller.js';
import { limitConnections } from './connection-limit.js';
import { RefusalLog } from './refusal-log.js';
import { ExpiryWatch, tlsExpiry, type TlsExpiry } from './tls-expiry.js';
import { readTlsFiles, watchTlsFiles } from './tls-files.js';

export interface TlsListenerOptions {
  tls: NonNullable<ApiConfig['tls']>;
  /** Node's HTTP deadlines, shared with the local socket. */
  timeouts: ServerOptions;
  handshakeTimeoutMs: number;
  maxConnections: number;
  /** The connections the listeners serve (connection-limit.ts). */
  served: WeakSet<Socket>;
  handler: (req: IncomingMessage, res: ServerResponse) => void;
  /** For requests Node's HTTP parser refuses (unparsed-request.ts). */
  unparsed: (err: Error & { code?: string }, socket: Duplex) => void;
  /** Told of every refused handshake (the metrics count them). */
  refused: () => void;
  /** Told when the files' expiry dates are read: at start and after each rotation. */
  loaded: (expiry: TlsExpiry) => void;
  audit: ((entry: AuditEntry) => void) | null;
  log: Logger;
}

export interface TlsListener {
  server: HttpsServer;
  /** `https://host:port`, as bound. */
  url: string;
  /** Reads the TLS files now if they changed (SIGHUP). */
  check(): void;
  /** Stops watching the files and writes the pending refusal summaries. */
  stop(): void;
}

export async function listenTls(o: TlsListenerOptions): Promise<TlsListener> {
  const { tls } = o;
  // The client certificate is checked below, not by Node's rejectUnauthorized: Node checks it
  // after the handshake too, but closes the connection without a word, and the refusal reached
  // the audit trail as ECONNRESET instead of why (revoked, expired, another CA, none).
  const expiryWatch = new ExpiryWatch(o.log);
  const loaded = (files: SecureContextOptions) => {
    const expiry = tlsExpiry(files);
    expiryWatch.loaded(expiry);
    o.loaded(expiry);
    return files;
  };
  const server = createHttpsServer({ ...o.timeouts, ...loaded(readTlsFiles(tls)), requestCert: true, rejectUnauthorized: false, handshakeTimeout: o.handshakeTimeoutMs }, o.handler);
  const refusals = o.audit ? new RefusalLog(o.audit, { result: 'UNAUTHENTICATED', what: 'TLS handshake' }) : null;
  // First of the listeners, so an unverified connection is closed before HTTP is attached to it
  // (and a request on one would still be refused: the caller needs an authorized socket).
  server.prependListener('secureConnection', (socket: TLSSocket) => {
    if (socket.authorized) return;
    o.refused();
    // Node names a missing certificate UNABLE_TO_GET_ISSUER_CERT, as if it were one from an unknown CA.
    const none = Object.keys(socket.getPeerCertificate()).length === 0;
    refusals?.refused(peerOf(socket), none ? 'NO_CLIENT_CERTIFICATE' : String(socket.authorizationError ?? 'UNVERIFIED'));
    socket.destroy();
  });
  limitConnections(server, o.maxConnections, o.served);
  server.on('clientError', o.unparsed);
  // A failed handshake's socket is already closed when it is reported: note its peer on arrival.
  const peers = new WeakMap<Socket, string>();
  server.on('connection', (raw: Socket) => peers.set(raw, peerOf(raw)));
  server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket & { _parent?: Socket }) => {
    o.refused();
    const peer = peers.get(socket._parent ?? socket) ?? peers.get(socket) ?? 'unknown';
    refusals?.refused(peer, err.code ?? err.message);
  });
  const files = watchTlsFiles(tls, o.log, (options) => server.setSecureContext(loaded(options)));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(tls.port, tls.host, () => (server.off('error', reject), resolve()));
  });
  const address = server.address() as { address: string; port: number; family: string };
  return {
    server,
    url: `https://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`,
    check: files.check,
    stop() {
      files.stop();
      expiryWatch.stop();
      refusals?.flush(); // while the audit trail is still open
    },
  };
}
