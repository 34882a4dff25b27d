/**
 * The service front end: the client API for other processes, `POST /v1/<method>` on a local
 * socket and on a mutual-TLS port, both served by one Fastify app built from the route table.
 * A request passes, in order: the listener's limits (connections, header and body deadlines,
 * body size), authentication (socket principal, client certificate or JWT), the principal's
 * rate limit, the route's schema, and then the in-process client with the caller as its
 * principal, the x-timeout-ms deadline and an AbortSignal that fires if the client goes away.
 * Every answer is counted and audited; every error is a problem document.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import fastifySwagger from '@fastify/swagger';
import Fastify, { LogController, type FastifyError, type FastifyReply, type FastifyRequest } from 'fastify';
import { jsonSchemaTransform, validatorCompiler } from 'fastify-type-provider-zod';
import type { Logger } from 'pino';
import { z } from 'zod';
import { AUDITED } from '../client/gate.js';
import { gateOf, type Pkcs11Supervisor } from '../client/supervisor-client.js';
import type { Config } from '../config-schema.js';
import { Pkcs11SupervisorError, type ErrorCode } from '../model/errors.js';
import { certificatePrincipal, peerOf, rolesOf, type Caller } from './caller.js';
import { JwtVerifier } from './jwt.js';
import { PROBLEM_TYPE, ProblemSchema, problemOf } from './problem.js';
import { BATCH_PATH, BatchRequestWire, BatchResultWire, type BatchAnswer, type BatchableName } from './batch.js';
import { RateLimiter } from './rate-limit.js';
import { RefusalLog } from './refusal-log.js';
import { deadlineHeader, OPENAPI_PATH, ROUTES, ROUTE_NAMES, TIMEOUT_HEADER, type RouteName } from './routes.js';
import { listenTls, type TlsListener } from './tls-listener.js';
import { closeIdleSockets, untilHangup } from './connections.js';
import { asSupervisorError, routeMiss, schemaMismatch, timeoutHeader } from './request-errors.js';
import { listenUnix, type BoundSocket } from './unix-socket.js';
import { answerUnparsed } from './unparsed-request.js';
import { parseJsonBody } from './json-body.js';
import { limitConnections } from './connection-limit.js';
import { bodyBudget } from './body-budget.js';

declare module 'fastify' {
  interface FastifyRequest {
    caller: Caller | null;
    /** `ok`, or the code of the problem answered. */
    outcome: 'ok' | ErrorCode;
  }
}

export interface ApiServer {
  /** The local socket's path, if one is configured. */
  socketPath: string | null;
  /** `https://host:port` of the mutual-TLS listener, if one is configured. */
  tlsUrl: string | null;
  /** Stops taking connections; requests in flight are still answered. */
  stopAccepting(): void;
  /** Closes every connection and removes the socket file. */
  close(): Promise<void>;
  /** The level of the API's own log lines (a config reload changes the daemon's). */
  setLogLevel(level: string): void;
  /** Now instead of at the next check (SIGHUP): reads the TLS files if they changed, binds the socket again if its file was removed. */
  checkFiles(): Promise<void>;
}

/** Body size for a slot's largest input in base64, with room for the rest of the request. */
function bodyLimit(config: Config): number {
  const largest = Math.max(...Object.values(config.slots).map((s) => s.maxDataBytes));
  return Math.ceil((largest * 4) / 3) + 64 * 1024;
}

/** The wire side of a codec (what the OpenAPI document shows a response as). */
function wireSide(schema: z.ZodType): z.ZodType {
  return schema instanceof z.ZodPipe ? (schema.in as z.ZodType) : schema;
}

/** Routes whose successful call the gate already audits (signJws is its sign). */
const GATE_AUDITED = new Set<string>([...AUDITED, 'signJws']);

export async function startApiServer(sup: Pkcs11Supervisor, config: Config, log: Logger): Promise<ApiServer> {
  const api = config.api!;
  const { audit, sup: { events } } = gateOf(sup);
  // The policy in force: a config reload (SIGHUP) may change roles and limits, never the listeners.
  const limiter = new RateLimiter(() => sup.config.policy?.rateLimits ?? {});
  const jwt = api.jwt ? new JwtVerifier(api.jwt) : null;
  const timeouts = { requestTimeout: api.requestTimeoutMs, headersTimeout: api.requestTimeoutMs, keepAliveTimeout: Math.min(5_000, api.requestTimeoutMs), connectionsCheckingInterval: 1_000 };

  const apiLog = log.child({ component: 'api' });
  /** Who a connection is, from the connection alone: the socket's principal, or the client certificate's. */
  const connectionPrincipal = (socket: Socket): string => ((socket as TLSSocket).encrypted ? certificatePrincipal(socket as TLSSocket, api.tls!.principalFrom) : api.unix!.principal);
  // Counted as requests for no known route (there is no method to count them under), and
  // audited per client address as refused handshakes are: a garbage flood costs a record a minute.
  const unparsedRefusals = audit ? new RefusalLog((entry) => audit.append(entry), { result: 'BAD_INPUT', what: 'request the HTTP parser refused' }) : null;
  const unparsed = answerUnparsed((status, reason, socket) => {
    events.emit('apiRequest', { route: 'unknown', code: 'BAD_INPUT', status, seconds: 0 });
    let principal: string | undefined;
    try {
      principal = connectionPrincipal(socket as Socket);
    } catch {
      // a connection that names no principal is refused at its first request anyway
    }
    unparsedRefusals?.refused(peerOf(socket as Socket), reason, Date.now(), principal);
  });
  let handler!: (req: IncomingMessage, res: ServerResponse) => void;
  const app = Fastify({
    serverFactory: (h) => {
      handler = h;
      return createHttpServer(timeouts, h);
    },
    loggerInstance: apiLog,
    // The API's logger itself, not a child with a request id for every request: requests are not logged.
    childLoggerFactory: (logger) => logger,
    // Requests are counted and audited instead; a log line each would be the daemon's hottest path.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: bodyLimit(config),
    clientErrorHandler: unparsed,
  });
  // JSON only: Fastify's default text/plain parser would hand a string to every schema.
  app.removeContentTypeParser('text/plain');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, parseJsonBody);
  app.setValidatorCompiler(validatorCompiler);
  // Results are encoded by their codec before they are sent: stringify is all that is left.
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  app.decorateRequest('caller', null);
  app.decorateRequest('outcome', 'ok');

  let callers = new WeakMap<Socket, Caller>();
  events.on('configReloaded', (e) => {
    if (!e.ok) return;
    callers = new WeakMap();
    limiter.forget();
  });
  /** The caller: at once from its connection (remembered per socket), or, for a bearer token, once jose has verified it. */
  function authenticate(request: FastifyRequest): Caller | Promise<Caller> {
    const socket = request.raw.socket;
    const bearer = request.headers.authorization;
    if (bearer !== undefined) {
      if (!jwt) throw new Pkcs11SupervisorError('UNAUTHENTICATED', 'bearer tokens are not accepted here (api.jwt is not configured)');
      const token = /^Bearer ([A-Za-z0-9._~+/=-]{1,8192})$/.exec(bearer)?.[1];
      if (!token) throw new Pkcs11SupervisorError('UNAUTHENTICATED', 'the Authorization header must be "Bearer <JWT>"');
      return jwt.verify(token).then((verified) => ({ ...verified, peer: peerOf(socket) }));
    }
    const known = callers.get(socket);
    if (known) return known;
    const id = connectionPrincipal(socket);
    const caller = { id, roles: rolesOf(sup.config.policy, id), peer: peerOf(socket) };
    callers.set(socket, caller);
    return caller;
  }

  const admitBody = bodyBudget(api.maxBodyBytesInFlight, bodyLimit(config));
  const admit = (request: FastifyRequest, reply: FastifyReply, caller: Caller): Pkcs11SupervisorError | undefined => {
    request.caller = caller;
    // A batch takes a token for each of its calls, once they are known.
    if (request.routeOptions.url === BATCH_PATH) return admitBody(request, reply);
    const waitMs = limiter.take(caller.id, caller.roles);
    if (waitMs === 0) return admitBody(request, reply);
    reply.header('retry-after', String(Math.ceil(waitMs / 1000)));
    return new Pkcs11SupervisorError('RATE_LIMITED', `principal "${caller.id}" is over its rate limit; retry in ${waitMs} ms`);
  };
  // Callback hooks, not async ones: a caller known from its connection (most requests) costs no promise.
  /** The connections the listeners serve; one past api.maxConnections is answered QUEUE_FULL (connection-limit.ts). */
  const served = new WeakSet<Socket>();
  app.addHook('onRequest', (request, reply, done) => {
    if (!served.has(request.raw.socket)) {
      reply.header('connection', 'close');
      return done(new Pkcs11SupervisorError('QUEUE_FULL', `the daemon serves ${api.maxConnections} connections at once (api.maxConnections) and this connection is over that: the call did not run; retry, or hold fewer connections (connect({ connections }))`));
    }
    let caller: Caller | Promise<Caller>;
    try {
      caller = authenticate(request);
    } catch (e) {
      return done(e as Error);
    }
    if (!(caller instanceof Promise)) return done(admit(request, reply, caller));
    caller.then(
      (c) => done(admit(request, reply, c)),
      (e: Error) => done(e),
    );
  });

  // A POST without a body (curl -X POST …/status) is the empty request.
  app.addHook('preValidation', (request, _reply, done) => {
    if (request.body === undefined || request.body === null) request.body = {};
    done();
  });

  app.setErrorHandler((err: FastifyError | Pkcs11SupervisorError, request, reply) => {
    const e = asSupervisorError(err, log, request.routeOptions.bodyLimit);
    const problem = problemOf(e);
    // The status of the body-size and media-type refusals says more than BAD_INPUT's 400.
    if (e.code === 'BAD_INPUT' && (err as FastifyError).statusCode && (err as FastifyError).statusCode! >= 400 && (err as FastifyError).statusCode! < 500) problem.status = (err as FastifyError).statusCode!;
    if (e.code === 'QUEUE_FULL') reply.header('retry-after', '1');
    if (problem.status === 415) reply.header('accept-encoding', 'identity');
    request.outcome = e.code;
    return reply.code(problem.status).type(PROBLEM_TYPE).send(problem);
  });

  app.setNotFoundHandler((request, reply) => {
    const { error, allow } = routeMiss(request.method, request.url);
    // A route asked with another method is there, just not that way (RFC 9110: 405 names the methods in Allow).
    if (allow) reply.header('allow', allow);
    request.outcome = error.code;
    const problem = problemOf(error);
    return reply.code(problem.status).type(PROBLEM_TYPE).send(problem);
  });

  /** What an answered call leaves: its count and duration in the metrics and, unless the gate has recorded it, an audit record. */
  function settle(route: string, code: 'ok' | ErrorCode, status: number, seconds: number, body: unknown, caller: Caller | null, socket: Socket): void {
    if (events.listenerCount('apiRequest') > 0) events.emit('apiRequest', { route, code, status, seconds });
    // The gate has recorded what it let through and what the policy refused (its `denied` record); a batch's calls are recorded each.
    if (!audit || code === 'FORBIDDEN' || (code === 'ok' && (GATE_AUDITED.has(route) || route === 'batch'))) return;
    const slot = (body as { slot?: unknown } | undefined)?.slot;
    audit.append({
      event: code === 'UNAUTHENTICATED' || code === 'RATE_LIMITED' ? 'denied' : 'request',
      slot: typeof slot === 'string' ? slot : '',
      result: code,
      principal: caller?.id,
      peer: caller?.peer ?? peerOf(socket),
      detail: route,
    });
  }

  app.addHook('onResponse', (request, reply, done) => {
    const url = request.routeOptions.url;
    const route = url === undefined ? 'unknown' : url === '/v1/openapi.json' ? 'openapi' : url.slice(4);
    settle(route, request.outcome, reply.statusCode, reply.elapsedTime / 1000, request.body, request.caller, request.raw.socket);
    done();
  });

  /** One call of a batch: checked against its route's schema, made, and settled on its own; never a rejection. */
  async function batchCall(name: BatchableName, raw: Record<string, unknown>, caller: Caller, signal: AbortSignal, deadline: number | undefined, socket: Socket): Promise<BatchAnswer> {
    const startedAt = performance.now();
    let answer: BatchAnswer;
    let code: 'ok' | ErrorCode = 'ok';
    try {
      const parsed = ROUTES[name].request.safeParse(raw);
      if (!parsed.success) throw schemaMismatch(parsed.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })));
      answer = { result: await callMethod(sup, name, parsed.data as Record<string, unknown>, caller, signal, deadline) };
    } catch (e) {
      const err = asSupervisorError(e, log);
      code = err.code;
      answer = { problem: problemOf(err) };
    }
    settle(name, code, 'problem' in answer ? answer.problem.status : 200, (performance.now() - startedAt) / 1000, raw, caller, socket);
    return answer;
  }

  async function invokeBatch(request: FastifyRequest): Promise<{ results: BatchAnswer[] }> {
    const { calls } = request.body as z.output<typeof BatchRequestWire>;
    const caller = request.caller!;
    const deadline = timeoutHeader(request.headers[TIMEOUT_HEADER]);
    const { granted, waitMs } = limiter.takeUpTo(caller.id, caller.roles, calls.length);
    // Counted and audited as the call's own route would be: a refused sign is a refused sign.
    const overLimit = (c: (typeof calls)[number]): BatchAnswer => {
      const problem = problemOf(new Pkcs11SupervisorError('RATE_LIMITED', `principal "${caller.id}" is over its rate limit; retry in ${waitMs} ms`));
      settle(c.method, 'RATE_LIMITED', problem.status, 0, c.request, caller, request.raw.socket);
      return { problem };
    };
    const signal = untilHangup(request.raw.socket);
    const results = await Promise.all(calls.map((c, i) => (i < granted ? batchCall(c.method, c.request, caller, signal, deadline, request.raw.socket) : overLimit(c))));
    return { results };
  }

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'pkcs11-supervisor', version: '1', description: 'The client API of pkcs11-supervisor: every method is POST /v1/<method> with its request as JSON; binary fields are base64.' },
    },
    transform: jsonSchemaTransform,
  });

  const problemResponse = { description: 'An error, as RFC 9457 problem details with the stable code', content: { [PROBLEM_TYPE]: { schema: ProblemSchema } } };
  for (const name of ROUTE_NAMES) {
    const route = ROUTES[name];
    app.route({
      method: 'POST',
      url: `/v1/${name}`,
      schema: {
        operationId: name,
        summary: route.summary,
        headers: deadlineHeader('the call deadline in milliseconds'),
        body: route.request,
        response: { 200: wireSide(route.result), '4XX': problemResponse, '5XX': problemResponse },
      },
      handler: (request) => invoke(sup, name, request),
    });
  }
  app.route({
    method: 'POST',
    url: BATCH_PATH,
    schema: {
      operationId: 'batch',
      summary: 'Several calls of the data-plane methods in one request, each answered as its own route would answer it',
      headers: deadlineHeader("each call's deadline in milliseconds"),
      body: BatchRequestWire,
      response: { 200: BatchResultWire, '4XX': problemResponse, '5XX': problemResponse },
    },
    handler: invokeBatch,
  });
  app.get(OPENAPI_PATH, { schema: { hide: true } }, async () => app.swagger());
  await app.ready();

  const servers: (Server | HttpsServer)[] = [];
  let unix: BoundSocket | null = null;
  if (api.unix) {
    const server = app.server;
    limitConnections(server, api.maxConnections, served);
    unix = await listenUnix(server, api.unix.path, api.unix.mode, apiLog);
    servers.push(server);
  }
  let tlsListener: TlsListener | null = null;
  if (api.tls) {
    tlsListener = await listenTls({
      tls: api.tls,
      timeouts,
      handshakeTimeoutMs: api.requestTimeoutMs,
      maxConnections: api.maxConnections,
      served,
      handler,
      unparsed,
      refused: () => events.emit('apiRequest', { route: 'tls-handshake', code: 'UNAUTHENTICATED', status: 0, seconds: 0 }),
      loaded: (expiry) => events.emit('tlsFilesLoaded', expiry),
      audit: audit ? (entry) => audit.append(entry) : null,
      log,
    });
    servers.push(tlsListener.server);
  }

  for (const server of servers) closeIdleSockets(server, api.requestTimeoutMs);
  let accepting = true;
  const stopAccepting = () => {
    if (!accepting) return;
    accepting = false;
    tlsListener?.stop();
    unix?.stop();
    unparsedRefusals?.flush(); // while the audit trail is still open
    for (const s of servers) {
      s.close();
      s.closeIdleConnections();
    }
  };
  return {
    socketPath: api.unix?.path ?? null,
    tlsUrl: tlsListener?.url ?? null,
    stopAccepting,
    setLogLevel(level) {
      apiLog.level = level;
    },
    async checkFiles() {
      tlsListener?.check();
      await unix?.check();
    },
    async close() {
      stopAccepting();
      for (const s of servers) s.closeAllConnections();
      await unix?.close();
      await app.close();
    },
  };
}

async function invoke(sup: Pkcs11Supervisor, name: RouteName, request: FastifyRequest): Promise<unknown> {
  // The caller is the principal: the same { id, roles, peer } the in-process client takes.
  const principal = request.caller!;
  const body = request.body as Record<string, unknown>;
  if (name === 'status') return wireResult(name, sup.status({ principal }));
  if (name === 'verifyAudit') return wireResult(name, await sup.verifyAudit({ principal }));
  if (name === 'reset') return wireResult(name, sup.reset(body.slot as string, { principal }));
  const deadline = timeoutHeader(request.headers[TIMEOUT_HEADER]);
  return callMethod(sup, name, body, principal, untilHangup(request.raw.socket), deadline);
}

/** A method of the client, called for a caller; its result as the route's wire form. The deadline header wins over the request's timeoutMs. */
async function callMethod(sup: Pkcs11Supervisor, name: RouteName, body: Record<string, unknown>, principal: Caller, signal: AbortSignal, deadline: number | undefined): Promise<unknown> {
  const value = await (sup[name] as (req: unknown) => Promise<unknown>)({ ...body, principal, signal, timeoutMs: deadline ?? body.timeoutMs });
  return wireResult(name, value);
}

const wireResult = (name: RouteName, value: unknown): unknown => z.encode(ROUTES[name].result as z.ZodType, value as never);

