/**
 * Errors on the wire: an `application/problem+json` document (RFC 9457) with the error's
 * stable `code`, and `ckr` and `slot` where known, under the HTTP status its code maps to.
 * The remote client turns the document back into the same Pkcs11SupervisorError.
 */
import { z } from 'zod';
import { ERROR_CODES, Pkcs11SupervisorError, type ErrorCode } from '../model/errors.js';

export const PROBLEM_TYPE = 'application/problem+json';

/** Every code's HTTP status. A request the caller can fix is 4xx; the token or daemon being unable to serve is 5xx. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  BAD_INPUT: 400,
  CONFIG_INVALID: 400,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  READ_ONLY: 403,
  SLOT_NOT_FOUND: 404,
  KEY_NOT_FOUND: 404,
  ROUTE_NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  KEY_AMBIGUOUS: 409,
  KEY_IN_USE: 409,
  SO_SESSION_ACTIVE: 409,
  SO_LOGIN_REQUIRED: 409,
  PIN_REQUIRED: 409,
  MECHANISM_INVALID: 422,
  MECHANISM_NOT_ALLOWED: 422,
  DECRYPTION_FAILED: 422,
  PIN_INCORRECT: 422,
  PIN_LOCKED: 423,
  QUEUE_FULL: 429,
  RATE_LIMITED: 429,
  INTERNAL: 500,
  PKCS11_ERROR: 502,
  SLOT_FAILED: 503,
  TOKEN_NOT_FOUND: 503,
  CLOSED: 503,
  ABORTED: 503,
  WORKER_CRASHED: 503,
  MODULE_LOAD_FAILED: 503,
  MODULE_REJECTED: 503,
  AUDIT_UNAVAILABLE: 503,
  TIMEOUT: 504,
};

export const ProblemSchema = z.object({
  type: z.string().describe('urn:pkcs11-supervisor:error:<code>'),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  code: z.enum(ERROR_CODES),
  ckr: z.string().optional().describe('the PKCS#11 return value, where a token said it'),
  slot: z.string().optional(),
  issues: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
});

export type Problem = z.infer<typeof ProblemSchema>;

export function problemOf(e: Pkcs11SupervisorError): Problem {
  const p: Problem = { type: `urn:pkcs11-supervisor:error:${e.code}`, title: e.code, status: HTTP_STATUS[e.code], detail: e.message, code: e.code };
  if (e.ckr !== undefined) p.ckr = e.ckr;
  if (e.slot !== undefined) p.slot = e.slot;
  if (e.issues !== undefined) p.issues = e.issues;
  return p;
}

/** The error a problem document stands for; a body that is not one becomes an error with its status's most likely code. */
export function errorOf(status: number, body: unknown): Pkcs11SupervisorError {
  const parsed = ProblemSchema.safeParse(body);
  if (parsed.success) {
    const p = parsed.data;
    return new Pkcs11SupervisorError(p.code, p.detail, { ckr: p.ckr, slot: p.slot, issues: p.issues });
  }
  const code: ErrorCode = status === 401 ? 'UNAUTHENTICATED' : status === 403 ? 'FORBIDDEN' : status === 404 ? 'ROUTE_NOT_FOUND' : status === 405 ? 'METHOD_NOT_ALLOWED' : status === 429 ? 'RATE_LIMITED' : status === 504 ? 'TIMEOUT' : status >= 500 ? 'INTERNAL' : 'BAD_INPUT';
  return new Pkcs11SupervisorError(code, `the service answered HTTP ${status} without a problem document of this API (one with a code this client knows)`);
}
