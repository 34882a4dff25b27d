/** A request's header and schema refusals, and any error, as the typed error the API answers with. */
import type { FastifyError } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import type { Logger } from 'pino';
import { z } from 'zod';
import { Pkcs11SupervisorError } from '../model/errors.js';
import { OPENAPI_PATH, ROUTE_NAMES, TIMEOUT_HEADER } from './routes.js';
import { BATCH_PATH } from './batch.js';

export function timeoutHeader(value: string | string[] | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = typeof value === 'string' && /^\d{1,10}$/.test(value) ? Number(value) : NaN;
  if (!(n > 0 && n <= 2 ** 31 - 1)) throw new Pkcs11SupervisorError('BAD_INPUT', `${TIMEOUT_HEADER} must be a whole number of milliseconds from 1 to 2147483647`);
  return n;
}

/** How much of a refused request its answer repeats: zod names every unknown key, and a request can bring 200,000. */
const MAX_ISSUES = 10;
const MAX_ISSUE_CHARS = 200;
const clip = (text: string) => (text.length > MAX_ISSUE_CHARS ? `${text.slice(0, MAX_ISSUE_CHARS)}…` : text);

export function schemaMismatch(issues: { path: string; message: string }[]): Pkcs11SupervisorError {
  const named = issues.slice(0, MAX_ISSUES).map((i) => ({ path: clip(i.path || '(body)'), message: clip(i.message) }));
  const more = issues.length > MAX_ISSUES ? `; and ${issues.length - MAX_ISSUES} more` : '';
  return new Pkcs11SupervisorError('BAD_INPUT', `the request does not match the method's schema: ${named.map((i) => `${i.path}: ${i.message}`).join('; ')}${more}`, { issues: named });
}

/**
 * Any error as the typed error it is, or stands for; a fault of ours is logged with its stack and
 * sent as INTERNAL. `bodyLimit`: the request's, for the words of a refused body.
 */
export function asSupervisorError(err: unknown, log: Logger, bodyLimit?: number): Pkcs11SupervisorError {
  if (err instanceof Pkcs11SupervisorError) return err;
  const e = err as FastifyError;
  if (hasZodFastifySchemaValidationErrors(e)) return schemaMismatch(e.validation.map((v) => ({ path: v.instancePath.replace(/^\//, '').replaceAll('/', '.'), message: v.message ?? 'invalid' })));
  if (e instanceof z.ZodError) {
    log.error({ err: e.message }, 'a result does not match its wire schema');
    return new Pkcs11SupervisorError('INTERNAL', 'the daemon could not encode its answer');
  }
  // Fastify's own refusals say what is wrong ("Unsupported Media Type", "Request body is too large"); these say what to send instead.
  if (e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new Pkcs11SupervisorError('BAD_INPUT', 'the request body must be JSON, sent as content-type: application/json');
  if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE' && bodyLimit !== undefined) {
    return new Pkcs11SupervisorError('BAD_INPUT', `the request body is over ${bodyLimit} bytes, the most this daemon takes (its largest maxDataBytes, in base64): hash large documents and sign the digest with prehashed: true`);
  }
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    // Fastify's other refusals: a body not whole in time.
    return new Pkcs11SupervisorError('BAD_INPUT', e.message);
  }
  log.error({ err: e }, 'service API: unexpected error');
  return new Pkcs11SupervisorError('INTERNAL', 'an internal error; the daemon log has the details');
}

/** A path the API does not serve (404), or serves with another method (405, and the methods for Allow). */
export function routeMiss(method: string, url: string): { error: Pkcs11SupervisorError; allow?: string } {
  const path = url.split('?')[0]!;
  const allow = ALLOWED_METHODS.get(path);
  if (allow) return { error: new Pkcs11SupervisorError('METHOD_NOT_ALLOWED', `${path} takes ${allow.split(',')[0]}, not ${method}`), allow };
  return { error: new Pkcs11SupervisorError('ROUTE_NOT_FOUND', `no route ${method} ${path}: the API is POST /v1/<method> (${ROUTE_NAMES.join(', ')}), POST ${BATCH_PATH} and GET ${OPENAPI_PATH}`) };
}

/** Each path the API serves and the methods it answers there. */
const ALLOWED_METHODS = new Map<string, string>([...ROUTE_NAMES.map((n) => [`/v1/${n}`, 'POST'] as const), [BATCH_PATH, 'POST'], [OPENAPI_PATH, 'GET, HEAD']]);
