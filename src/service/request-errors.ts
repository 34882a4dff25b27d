/** A request's header and schema refusals, and any error, as the typed error the API answers with. */
import type { FastifyError } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import type { Logger } from 'pino';
import { z } from 'zod';
import { Pkcs11SupervisorError } from '../model/errors.js';
import { TIMEOUT_HEADER } from './routes.js';

export function timeoutHeader(value: string | string[] | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = typeof value === 'string' && /^\d{1,10}$/.test(value) ? Number(value) : NaN;
  if (!(n > 0 && n <= 2 ** 31 - 1)) throw new Pkcs11SupervisorError('BAD_INPUT', `${TIMEOUT_HEADER} must be a positive whole number of milliseconds`);
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

/** A body over the limit: what the limit is and what to do instead (Fastify says only "Request body is too large"). */
export function tooLarge(bodyBytes: number): Pkcs11SupervisorError {
  return new Pkcs11SupervisorError('BAD_INPUT', `the request body is over ${bodyBytes} bytes, the most this daemon takes (its largest maxDataBytes, in base64): hash large documents and sign the digest with prehashed: true`);
}

/** Any error as the typed error it is, or stands for; a fault of ours is logged with its stack and sent as INTERNAL. */
export function asSupervisorError(err: unknown, log: Logger): Pkcs11SupervisorError {
  if (err instanceof Pkcs11SupervisorError) return err;
  const e = err as FastifyError;
  if (hasZodFastifySchemaValidationErrors(e)) return schemaMismatch(e.validation.map((v) => ({ path: v.instancePath.replace(/^\//, '').replaceAll('/', '.'), message: v.message ?? 'invalid' })));
  if (e instanceof z.ZodError) {
    log.error({ err: e.message }, 'a result does not match its wire schema');
    return new Pkcs11SupervisorError('INTERNAL', 'the daemon could not encode its answer');
  }
  if (e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new Pkcs11SupervisorError('BAD_INPUT', 'the request body must be JSON, sent as content-type: application/json');
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    // Fastify's own refusals: an oversized body, a body not whole in time.
    return new Pkcs11SupervisorError('BAD_INPUT', e.message);
  }
  log.error({ err: e }, 'service API: unexpected error');
  return new Pkcs11SupervisorError('INTERNAL', 'an internal error; the daemon log has the details');
}
