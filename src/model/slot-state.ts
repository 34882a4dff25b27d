import { Pkcs11SupervisorError, type ErrorCode } from './errors.js';

/**
 * Every state of a slot worker (actors/slot-machine.ts draws how they connect), best first:
 * a slot reports the best state any of its workers is in, since one healthy worker serves.
 */
export const SLOT_STATES = [
  'so_logged_in',
  'logged_in',
  'open',
  'logging_in',
  'logging_out',
  'opening',
  'restarting',
  'crashed',
  'uninitialized',
  'failed',
  'closing',
  'closed',
] as const;

export type SlotState = (typeof SLOT_STATES)[number];

/** Why a login ended: a user's or the Security Officer's idle timeout, a call, or the token (seen logged out). */
export type LogoutCause = 'idle' | 'so-idle' | 'request' | 'token';

export interface SlotError {
  code: ErrorCode;
  message: string;
  ckr?: string | undefined;
}

/** A slot (or the worker a call waited for) has failed: it needs an operator's reset or the token back. */
export function slotFailed(slot: string, last: SlotError | null): Pkcs11SupervisorError {
  return new Pkcs11SupervisorError('SLOT_FAILED', `slot "${slot}" has failed${last ? `: ${last.message}` : ''}; it needs an operator (reset) or the token back`, { slot, ckr: last?.ckr });
}
