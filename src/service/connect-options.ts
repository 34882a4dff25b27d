/**
 * What `connect()` takes, checked at the edge like every other input: a socket path, or an
 * https URL with the client's certificate, key and the CA that signed the daemon's. A wrong
 * option is BAD_INPUT naming it, when `connect()` is called, not a TypeError at the first call.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { schemaRefused } from '../model/errors.js';
import { badInput } from '../validate.js';
import { fitsSocketPath, SOCKET_PATH_MESSAGE } from '../model/socket-path.js';

/** PEM text or bytes, or the path of a file that holds them. */
export type PemSource = string | Uint8Array;

export type ConnectOptions = (
  | { socket: string }
  | {
      /** `https://host:port` of the daemon's mutual-TLS listener. */
      url: string;
      tls: { cert: PemSource; key: PemSource; ca: PemSource; servername?: string };
    }
) & {
  /** A JWT sent as `Authorization: Bearer`, or a function that returns a fresh one. */
  bearer?: string | (() => string | Promise<string>);
  /** Connections kept to the daemon (default 16). */
  connections?: number;
  /**
   * Send the data-plane calls made in the same turn of the event loop as one `POST /v1/batch`
   * (default true): each call keeps its own answer or error. A call with a `signal` always goes alone.
   */
  batch?: boolean;
  /**
   * The deadline of every call that gives no `timeoutMs` of its own, as if it gave this one.
   * Without it such a call has the slot's `callTimeoutMs`, which the daemon keeps: a client waits
   * for a daemon that has stopped answering only up to a deadline it knows.
   */
  timeoutMs?: number;
};

const pemSource = z.union([z.string().min(1), z.custom<Uint8Array>((v) => v instanceof Uint8Array)], { error: 'must be PEM text, bytes or a file path' });

/** A bearer token as RFC 6750 (2.1) spells one (a JWT is one): nothing that could end the header. */
export const BEARER_TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

const common = {
  bearer: z.union([z.string().regex(BEARER_TOKEN, { error: 'must be a bearer token (RFC 6750: letters, digits and -._~+/, then = padding)' }), z.custom<() => string>((v) => typeof v === 'function', { message: 'must be a token or a function that returns one' })]).optional(),
  connections: z.number().int().min(1).max(1024).optional(),
  batch: z.boolean().optional(),
  timeoutMs: z.number().int().min(1).max(2 ** 31 - 1).optional(),
};

const httpsUrl = z
  .url({ protocol: /^https$/, error: 'must be an https:// URL: the daemon\'s network port is mutual TLS only', abort: true })
  // The routes are the daemon's own (/v1/...): a path would be dropped, and credentials in a URL are
  // never sent (the client authenticates with its certificate or bearer) but would show in every error.
  .refine((url) => isOrigin(new URL(url)), { error: 'must be the daemon\'s origin, https://host:port, with no credentials, path, query or fragment' });

function isOrigin(url: URL): boolean {
  return url.username === '' && url.password === '' && url.pathname === '/' && url.search === '' && url.hash === '' && !/[?#]/.test(url.href.slice(url.origin.length));
}

const OPTIONS = z.union([
  z.strictObject({ socket: z.string().min(1).refine(fitsSocketPath, SOCKET_PATH_MESSAGE), ...common }),
  z.strictObject({
    url: httpsUrl,
    tls: z.strictObject({ cert: pemSource, key: pemSource, ca: pemSource, servername: z.string().min(1).optional() }, { error: 'must be { cert, key, ca }: the client certificate, its key and the CA of the daemon\'s certificate' }),
    ...common,
  }),
]);

/** The options, checked; the union's branch is chosen by `socket` or `url` so the issues named are that branch's. */
export function checkConnectOptions(options: unknown): ConnectOptions {
  if (!options || typeof options !== 'object' || 'socket' in options === 'url' in options) throw badInput('connect needs { socket } or { url, tls }');
  const branch = OPTIONS.options['socket' in options ? 0 : 1];
  const parsed = branch.safeParse(options);
  if (parsed.success) return parsed.data as ConnectOptions;
  throw schemaRefused('BAD_INPUT', 'connect options', parsed.error.issues);
}

/** PEM bytes from text, bytes or a file; a file that cannot be read is BAD_INPUT naming the option. */
export function pem(source: PemSource, field: string): Buffer {
  if (typeof source !== 'string') return Buffer.from(source);
  if (source.includes('-----BEGIN')) return Buffer.from(source);
  try {
    return readFileSync(source);
  } catch (e) {
    throw schemaRefused('BAD_INPUT', 'connect options', [{ path: field.split('.'), message: `cannot read ${source}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` }]);
  }
}
