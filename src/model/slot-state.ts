import type { ErrorCode } from './errors.js';

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

export interface SlotError {
  code: ErrorCode;
  message: string;
  ckr?: string | undefined;
}
