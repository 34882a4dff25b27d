/** Messages of a module's slot-event thread (workers/slot-event-thread.ts). */

export interface SlotEventStart {
  /** The path the module is loaded by. */
  modulePath: string;
  /** [0] set to 1 by the main thread: the thread ends when its wait returns. */
  stop: Int32Array;
}

export type SlotEventMessage =
  /** C_WaitForSlotEvent returned a slot: a token was inserted or removed there. */
  | { kind: 'event'; slotId: string }
  /** The module has no blocking C_WaitForSlotEvent (CKR_FUNCTION_NOT_SUPPORTED). */
  | { kind: 'unsupported' }
  /** It failed again and again: the module's events are given up. */
  | { kind: 'failed'; ckr: string };

/**
 * How a slot notices a token inserted or removed: the module's events, the health probe's
 * polling, or neither (then only a failing call shows it).
 */
export const TOKEN_EVENTS = ['events', 'polling', 'none'] as const;
export type TokenEvents = (typeof TOKEN_EVENTS)[number];
