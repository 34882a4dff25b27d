/**
 * The one error class callers see. `code` is the stable contract; messages may improve.
 * `ckr` is the PKCS#11 return value name when a token said it.
 */
export const ERROR_CODES = [
  'SLOT_NOT_FOUND',
  'KEY_NOT_FOUND',
  'KEY_AMBIGUOUS',
  'KEY_IN_USE',
  'TOKEN_NOT_FOUND',
  'PIN_REQUIRED',
  'PIN_INCORRECT',
  'PIN_LOCKED',
  'QUEUE_FULL',
  'TIMEOUT',
  'ABORTED',
  'SLOT_FAILED',
  'MECHANISM_INVALID',
  'BAD_INPUT',
  'CONFIG_INVALID',
  'MODULE_LOAD_FAILED',
  'MODULE_REJECTED',
  'MECHANISM_NOT_ALLOWED',
  'WORKER_CRASHED',
  'FORBIDDEN',
  'READ_ONLY',
  'SO_SESSION_ACTIVE',
  'SO_LOGIN_REQUIRED',
  'PKCS11_ERROR',
  /** A ciphertext that does not decrypt: a GCM tag that does not match, bad padding. Nothing decrypted is returned. */
  'DECRYPTION_FAILED',
  'CLOSED',
  'AUDIT_UNAVAILABLE',
  // The service API's own: a request without a valid identity, over its rate, to no route, or with another method than its route's.
  'UNAUTHENTICATED',
  'RATE_LIMITED',
  'ROUTE_NOT_FOUND',
  'METHOD_NOT_ALLOWED',
  /** A fault of the daemon itself, not of the request or the token; logged with its stack, never sent. */
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export interface ErrorDetails {
  ckr?: string;
  slot?: string;
  /** For CONFIG_INVALID: every offending field, as a dotted path. */
  issues?: { path: string; message: string }[];
  cause?: unknown;
}

export class Pkcs11SupervisorError extends Error {
  override readonly name = 'Pkcs11SupervisorError';
  readonly code: ErrorCode;
  readonly ckr: string | undefined;
  readonly slot: string | undefined;
  readonly issues: { path: string; message: string }[] | undefined;

  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    this.ckr = details.ckr;
    this.slot = details.slot;
    this.issues = details.issues;
  }

  toJSON(): Record<string, unknown> {
    return { name: this.name, code: this.code, message: this.message, ckr: this.ckr, slot: this.slot, issues: this.issues };
  }
}

export function isSupervisorError(e: unknown, code?: ErrorCode): e is Pkcs11SupervisorError {
  return e instanceof Pkcs11SupervisorError && (code === undefined || e.code === code);
}

/** A config field that cannot be used: CONFIG_INVALID naming it, its message prefixed with the field. */
export function fieldRefused(field: string, message: string, slot?: string): Pkcs11SupervisorError {
  return new Pkcs11SupervisorError('CONFIG_INVALID', `${field}: ${message}`, { slot, issues: [{ path: field, message }] });
}

/**
 * Input that fails its schema (a zod error's issues, read structurally so the model needs no
 * zod): one error naming every field, each path dotted, `whole` for the input itself.
 */
export function schemaRefused(code: ErrorCode, what: string, schemaIssues: readonly { path: readonly PropertyKey[]; message: string }[], whole = '(options)'): Pkcs11SupervisorError {
  const issues = schemaIssues.map((i) => ({ path: i.path.map(String).join('.') || whole, message: i.message }));
  return new Pkcs11SupervisorError(code, `${what}: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, { issues });
}
