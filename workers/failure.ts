/** Failures in the session thread, as the values that cross back to the main thread. */
import { codeForCkr } from '../src/model/ckr.js';
import type { ErrorCode } from '../src/model/errors.js';
import type { WorkerError } from '../src/model/protocol.js';

/** A failure with a code decided here (not a CKR from the token). */
export class WorkerFailure extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly ckr?: string,
  ) {
    super(message);
  }
}

/** The key asks for the PIN on every use: the call was not run, and is sent again with one. */
export class ContextLoginNeeded extends WorkerFailure {
  constructor(what: string) {
    super('PIN_REQUIRED', `the ${what} asks for the PIN on every use (CKA_ALWAYS_AUTHENTICATE) and the call came without one`);
  }
}

/** The module has no context-specific login (CKR_USER_TYPE_INVALID): the call was not run, and is sent again without a PIN. */
export class ContextLoginUnsupported extends WorkerFailure {
  constructor() {
    super('PKCS11_ERROR', 'the module does not support C_Login(CKU_CONTEXT_SPECIFIC) (CKR_USER_TYPE_INVALID), so it does not enforce CKA_ALWAYS_AUTHENTICATE', 'CKR_USER_TYPE_INVALID');
  }
}

export function toFailure(e: unknown): WorkerError {
  if (e instanceof ContextLoginNeeded) return { code: e.code, message: e.message, contextLogin: 'needed' };
  if (e instanceof ContextLoginUnsupported) return { code: e.code, message: e.message, ckr: e.ckr!, contextLogin: 'unsupported' };
  if (e instanceof WorkerFailure) return { code: e.code, message: e.message, ...(e.ckr ? { ckr: e.ckr } : {}) };
  const err = e as { message?: string; method?: string };
  const message = String(err.message ?? e);
  if (/^CKR_\w+$/.test(message)) {
    const fn = err.method || undefined;
    return { code: codeForCkr(message), message: `${fn ?? 'PKCS#11'} returned ${message}`, ckr: message, ...(fn ? { fn } : {}) };
  }
  return { code: 'PKCS11_ERROR', message };
}
