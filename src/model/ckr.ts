import type { ErrorCode } from './errors.js';

/** Return values after which the session (or its login) is gone: re-open, re-login, retry once. */
export const SESSION_LOST_CKRS: ReadonlySet<string> = new Set([
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_USER_NOT_LOGGED_IN',
  'CKR_DEVICE_REMOVED',
  'CKR_TOKEN_NOT_PRESENT',
  'CKR_DEVICE_ERROR',
  // The module was reset under the call (between C_Finalize and C_Initialize).
  'CKR_CRYPTOKI_NOT_INITIALIZED',
  // A key handle that outlived its session: look the key up again on a fresh session.
  'CKR_KEY_HANDLE_INVALID',
  'CKR_OBJECT_HANDLE_INVALID',
  // An operation left active on the session (a module that did not end a failed one): a new session has none.
  'CKR_OPERATION_ACTIVE',
]);

/** Return values worth one more try on the same session: the token could not say more than "failed". */
export const TRANSIENT_CKRS: ReadonlySet<string> = new Set(['CKR_FUNCTION_FAILED']);

/**
 * A crash with this CKR means the module, not the session, is broken: reset the module. A
 * token deleted and created again under a module that lists its tokens once (SoftHSM2) answers
 * CKR_GENERAL_ERROR until the module is initialized again; so do modules out of descriptors.
 */
export const MODULE_BROKEN_CKRS: ReadonlySet<string> = new Set(['CKR_DEVICE_ERROR', 'CKR_CRYPTOKI_NOT_INITIALIZED', 'CKR_GENERAL_ERROR']);

/** Functions that allocate a handle, by the kind of handle. */
const ALLOCATES: Record<string, HandleKind> = {
  C_OpenSession: 'session',
  C_CreateObject: 'object',
  C_CopyObject: 'object',
  C_GenerateKey: 'object',
  C_GenerateKeyPair: 'object',
  C_UnwrapKey: 'object',
  C_DeriveKey: 'object',
};
const OUT_OF_MEMORY_CKRS: ReadonlySet<string> = new Set(['CKR_HOST_MEMORY', 'CKR_DEVICE_MEMORY']);

export type HandleKind = 'session' | 'object';

/** The handle a failed call could not get: a session over the token's count, or no memory for a new session or object. */
export function handleAllocationFailure(error: { ckr?: string | undefined; fn?: string | undefined }): HandleKind | null {
  if (error.ckr === 'CKR_SESSION_COUNT') return 'session';
  if (error.ckr && OUT_OF_MEMORY_CKRS.has(error.ckr) && error.fn) return ALLOCATES[error.fn] ?? null;
  return null;
}

const CODE_BY_CKR: Record<string, ErrorCode> = {
  CKR_PIN_INCORRECT: 'PIN_INCORRECT',
  CKR_PIN_INVALID: 'PIN_INCORRECT',
  CKR_PIN_LEN_RANGE: 'PIN_INCORRECT',
  CKR_PIN_LOCKED: 'PIN_LOCKED',
  CKR_PIN_EXPIRED: 'PIN_LOCKED',
  CKR_USER_PIN_NOT_INITIALIZED: 'PIN_REQUIRED',
  CKR_USER_NOT_LOGGED_IN: 'PIN_REQUIRED',
  CKR_MECHANISM_INVALID: 'MECHANISM_INVALID',
  CKR_MECHANISM_PARAM_INVALID: 'MECHANISM_INVALID',
  CKR_KEY_TYPE_INCONSISTENT: 'MECHANISM_INVALID',
  CKR_KEY_FUNCTION_NOT_PERMITTED: 'MECHANISM_INVALID',
  CKR_KEY_SIZE_RANGE: 'MECHANISM_INVALID',
  // What the key's attributes forbid (CKA_EXTRACTABLE false, a key its token will not wrap): as CKA_DECRYPT false is.
  CKR_KEY_UNEXTRACTABLE: 'MECHANISM_INVALID',
  CKR_KEY_NOT_WRAPPABLE: 'MECHANISM_INVALID',
  CKR_WRAPPING_KEY_TYPE_INCONSISTENT: 'MECHANISM_INVALID',
  CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT: 'MECHANISM_INVALID',
  CKR_WRAPPED_KEY_INVALID: 'DECRYPTION_FAILED',
  CKR_WRAPPED_KEY_LEN_RANGE: 'DECRYPTION_FAILED',
  CKR_DATA_LEN_RANGE: 'BAD_INPUT',
  CKR_ENCRYPTED_DATA_INVALID: 'DECRYPTION_FAILED',
  CKR_ENCRYPTED_DATA_LEN_RANGE: 'DECRYPTION_FAILED',
  CKR_DATA_INVALID: 'BAD_INPUT',
  CKR_ARGUMENTS_BAD: 'BAD_INPUT',
  CKR_TOKEN_NOT_PRESENT: 'TOKEN_NOT_FOUND',
  CKR_DEVICE_REMOVED: 'TOKEN_NOT_FOUND',
  CKR_KEY_HANDLE_INVALID: 'KEY_NOT_FOUND',
  CKR_OBJECT_HANDLE_INVALID: 'KEY_NOT_FOUND',
};

export function codeForCkr(ckr: string): ErrorCode {
  return CODE_BY_CKR[ckr] ?? 'PKCS11_ERROR';
}
