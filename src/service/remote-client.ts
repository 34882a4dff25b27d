/**
 * `connect()`: the client API over the daemon's local socket or its mutual-TLS port, with
 * the interface the in-process client has (Pkcs11Client). Each method encodes its request with
 * the route's codec, POSTs it through a pooled undici connection and decodes the result, or
 * turns the problem document into the same Pkcs11SupervisorError the daemon raised. The
 * call's deadline travels in x-timeout-ms and is kept here too, against a daemon that stops
 * answering; aborting its signal closes the request, and the daemon then drops the call if it
 * has not reached the token.
 */
import { Pool, type Dispatcher } from 'undici';
import { z } from 'zod';
import type { AuditVerdict } from '../audit-record.js';
import type { Pkcs11Client } from '../client/pkcs11-client.js';
import type { PrincipalOptions } from '../client/requests.js';
import type { Methods, SupervisorStatus } from '../client/supervisor-client.js';
import { Pkcs11SupervisorError, schemaRefused } from '../model/errors.js';
import { badInput } from '../validate.js';
import { unwatchAbort, watchAbort } from '../abort-watch.js';
import { isBatchable } from './batch.js';
import { CallBatcher, type Answer } from './call-batcher.js';
import { errorOf } from './problem.js';
import { ROUTES, ROUTE_NAMES, TIMEOUT_HEADER, type RouteName } from './routes.js';
import { BEARER_TOKEN, checkConnectOptions, pem, type ConnectOptions } from './connect-options.js';


/** A token from connect's `bearer` function, or UNAUTHENTICATED before anything is sent (never quoting what it returned). */
async function fresh(bearer: () => string | Promise<string>): Promise<string> {
  let token: unknown;
  try {
    token = await bearer();
  } catch (e) {
    throw new Pkcs11SupervisorError('UNAUTHENTICATED', `connect's bearer function failed, so the call was not sent: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (typeof token === 'string' && BEARER_TOKEN.test(token)) return token;
  throw new Pkcs11SupervisorError('UNAUTHENTICATED', `connect's bearer function returned ${typeof token === 'string' ? 'a string that is not a bearer token (RFC 6750)' : typeof token}, so the call was not sent`);
}

/** A transport failure as the typed error a caller can act on. */
function transportError(e: unknown, where: string): Pkcs11SupervisorError {
  const err = e as Error & { code?: string };
  if (err.name === 'AbortError' || err.code === 'UND_ERR_ABORTED') return new Pkcs11SupervisorError('ABORTED', 'the call was aborted by its signal', { cause: e });
  if (err instanceof NoAnswer) {
    return new Pkcs11SupervisorError('TIMEOUT', `no answer from ${where} by the call's deadline and ${ANSWER_GRACE_MS} ms more: the daemon is stopped, overloaded or cut off; whether the call ran is unknown`);
  }
  if (err.code === 'UND_ERR_HEADERS_TIMEOUT') return new Pkcs11SupervisorError('TIMEOUT', `no answer from ${where} in time`, { cause: e });
  if (err.code?.startsWith('ERR_SSL') || err.code?.startsWith('ERR_TLS') || /certificate|alert/i.test(err.message)) {
    return new Pkcs11SupervisorError('UNAUTHENTICATED', `the TLS handshake with ${where} failed: ${err.message}`, { cause: e });
  }
  // In TLS 1.3 the server checks the client certificate after the client's side of the handshake is done: a refusal may reach us as a closed connection.
  const hint = where.startsWith('https:') ? ' (a TLS listener also closes the connection when it refuses the client certificate)' : '';
  return new Pkcs11SupervisorError('CLOSED', `cannot reach the daemon at ${where}: ${err.message}${hint}`, { cause: e });
}

/**
 * How long past a call's deadline the client still waits for the daemon's answer before it
 * gives up on its own: the daemon answers every call by its deadline (TIMEOUT if it is still
 * queued or running), and the answer has a trip to make through a daemon that may be busy.
 */
export const ANSWER_GRACE_MS = 2_000;

/** The client gave up on a daemon that did not answer by the deadline and its grace (frozen, overloaded or cut off). */
class NoAnswer extends Error {}

/**
 * One request through undici's dispatcher, its answer read into one buffer: `request()` wraps
 * each answer in a stream read back through promises, ~8 µs of the client's CPU a request here.
 * Aborting the signal, or `giveUpMs` passing with no answer, settles the call at once and aborts
 * the request, queued or on the wire (undici then closes its connection, which is how the daemon
 * learns that the caller went away). Neither waits for the daemon: one that has stopped
 * answering never holds a caller past its deadline.
 */
function exchange(pool: Pool, options: Dispatcher.DispatchOptions, signal: AbortSignal | undefined, giveUpMs: number | undefined): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const aborted = () => new DOMException('the call was aborted by its signal', 'AbortError');
    if (signal?.aborted) return reject(aborted());
    let controller: Dispatcher.DispatchController | undefined;
    let stopped: Error | undefined;
    const stop = (reason: Error) => {
      if (stopped) return;
      stopped = reason;
      done();
      reject(reason);
      controller?.abort(reason);
    };
    const onAbort = () => stop(aborted());
    // One listener per signal, however many calls share it (abort-watch.ts).
    if (signal) watchAbort(signal, onAbort);
    const timer = giveUpMs === undefined ? undefined : setTimeout(() => stop(new NoAnswer()), giveUpMs);
    const done = () => {
      if (signal) unwatchAbort(signal, onAbort);
      clearTimeout(timer);
    };
    let status = 0;
    const chunks: Buffer[] = [];
    pool.dispatch(options, {
      onRequestStart(c) {
        controller = c;
        if (stopped) c.abort(stopped);
      },
      onResponseStart(_c, statusCode) {
        status = statusCode;
      },
      onResponseData(_c, chunk) {
        chunks.push(chunk);
      },
      onResponseEnd() {
        if (stopped) return;
        done();
        resolve({ status, body: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks) });
      },
      onResponseError(_c, e) {
        if (stopped) return;
        done();
        reject(e);
      },
    });
  });
}

export interface RemoteClient extends Methods {}

export class RemoteClient implements Pkcs11Client {
  private readonly pool: Pool;
  private readonly where: string;
  private readonly bearer: ConnectOptions['bearer'];
  /** The deadline of calls that give none (connect's `timeoutMs`); undefined: the daemon's, the slot's `callTimeoutMs`. */
  private readonly timeoutMs: number | undefined;
  /** Null with `batch: false`. */
  private readonly batches: CallBatcher | null;

  constructor(options: ConnectOptions) {
    const connections = options.connections ?? 16;
    this.bearer = options.bearer;
    this.timeoutMs = options.timeoutMs;
    if ('socket' in options) {
      this.where = options.socket;
      this.pool = new Pool('http://localhost', { socketPath: options.socket, connections, headersTimeout: 0, bodyTimeout: 0 });
    } else {
      this.where = options.url;
      const { cert, key, ca, servername } = options.tls;
      this.pool = new Pool(options.url, {
        connections,
        headersTimeout: 0,
        bodyTimeout: 0,
        connect: { cert: pem(cert, 'tls.cert'), key: pem(key, 'tls.key'), ca: pem(ca, 'tls.ca'), minVersion: 'TLSv1.3', ...(servername ? { servername } : {}) },
      });
    }
    this.batches = options.batch === false ? null : new CallBatcher((path, body, deadline) => this.post(path, body, deadline));
  }

  /** One call of the route: sent alone, or with the other calls of this turn as a batch; its decoded result, or the daemon's error as a Pkcs11SupervisorError. */
  async call(name: RouteName, request: Record<string, unknown>): Promise<unknown> {
    if (!request || typeof request !== 'object') throw badInput('a request object is required');
    const { signal, timeoutMs = this.timeoutMs, principal, ...fields } = request;
    if (principal !== undefined) throw badInput('a remote client acts as the identity it authenticated with (its certificate, token or socket); principal cannot be set per call');
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw badInput('signal must be an AbortSignal');
    const sendable = typeof timeoutMs === 'number' && Number.isFinite(timeoutMs) && timeoutMs >= 1 && timeoutMs <= 2 ** 31 - 1;
    const deadline = sendable ? String(Math.ceil(timeoutMs)) : undefined;
    if (!sendable && timeoutMs !== undefined) fields.timeoutMs = timeoutMs; // the daemon refuses it, as the in-process client does
    let body: string;
    try {
      body = JSON.stringify(z.encode(ROUTES[name].request as z.ZodType, fields as never));
    } catch (e) {
      // Bytes too many for one string (V8's 512 MiB) fail here too, with a RangeError.
      if (!Array.isArray((e as z.ZodError).issues)) throw badInput(`the request cannot be sent as JSON (${(e as Error).message}): hash large documents and sign the digest with prehashed: true`);
      throw schemaRefused('BAD_INPUT', `the request does not match ${name}'s schema`, (e as z.ZodError).issues, '(request)');
    }
    // A call with its own signal goes alone: aborting it closes its request, and only its request.
    if (signal === undefined && this.batches && isBatchable(name)) return this.answer(name, await this.batches.add(name, fields.slot, body, deadline));
    return this.answer(name, await this.post(`/v1/${name}`, body, deadline, signal as AbortSignal | undefined));
  }

  /** A POST to the daemon: its status and JSON body (undefined if it sent none). */
  private async post(path: string, body: string, deadline: string | undefined, signal?: AbortSignal): Promise<Answer> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (deadline !== undefined) headers[TIMEOUT_HEADER] = deadline;
    if (this.bearer !== undefined) headers.authorization = `Bearer ${typeof this.bearer === 'string' ? this.bearer : await fresh(this.bearer)}`;
    const giveUpMs = deadline === undefined ? undefined : Number(deadline) + ANSWER_GRACE_MS;
    const bytes = await exchange(this.pool, { method: 'POST', path, headers, body }, signal, giveUpMs).catch((e: unknown) => {
      throw transportError(e, this.where);
    });
    try {
      return { status: bytes.status, json: JSON.parse(bytes.body.toString()) as unknown };
    } catch {
      return { status: bytes.status, json: undefined };
    }
  }

  /** The route's result from the daemon's answer, or the error it stands for. */
  private answer(name: RouteName, { status, json }: Answer): unknown {
    if (status !== 200) throw errorOf(status, json);
    try {
      return z.decode(ROUTES[name].result as z.ZodType, json as never);
    } catch {
      throw new Pkcs11SupervisorError('INTERNAL', `${this.where} answered ${name} with a document that is not the API's`);
    }
  }

  status(options: PrincipalOptions = {}): Promise<SupervisorStatus> {
    return this.call('status', options as Record<string, unknown>) as Promise<SupervisorStatus>;
  }

  async reset(slot: string, options: PrincipalOptions = {}): Promise<void> {
    await this.call('reset', { ...options, slot });
  }

  verifyAudit(options: PrincipalOptions = {}): Promise<AuditVerdict> {
    return this.call('verifyAudit', options as Record<string, unknown>) as Promise<AuditVerdict>;
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}

/** The methods whose request is not one object: login and logout also take a slot name. */
const SHORTHAND: Partial<Record<RouteName, (...args: unknown[]) => Record<string, unknown>>> = {
  login: (request, pin, options) => (typeof request === 'string' ? { ...(options as object), slot: request, pin } : (request as Record<string, unknown>)),
  logout: (request) => (typeof request === 'string' ? { slot: request } : (request as Record<string, unknown>)),
};

for (const name of ROUTE_NAMES) {
  if (name === 'status' || name === 'reset' || name === 'verifyAudit') continue;
  const shape = SHORTHAND[name];
  Object.defineProperty(RemoteClient.prototype, name, {
    value(this: RemoteClient, ...args: unknown[]) {
      return this.call(name, shape ? shape(...args) : (args[0] as Record<string, unknown>));
    },
    writable: true,
    configurable: true,
  });
}

/** A client of a running daemon, over its local socket or its mutual-TLS port. */
export function connect(options: ConnectOptions): Pkcs11Client {
  return new RemoteClient(checkConnectOptions(options));
}
