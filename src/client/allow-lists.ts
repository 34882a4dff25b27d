/** The config's allow-lists (global, slot, key ref), checked before a call is queued. */
import type { AnyMechanismName } from '../model/crypto-mechanisms.js';
import { Pkcs11SupervisorError } from '../model/errors.js';
import { mayNameSameObject } from '../model/protocol.js';
import * as check from '../validate.js';
import type { Slot } from '../slot.js';
import type { Gate } from './gate.js';

/**
 * Refuses a mechanism outside any allow-list that applies to the call. An `explicit` mechanism
 * (RSA PKCS#1 v1.5 decryption, a raw ECDH secret) is refused unless one of them names it.
 */
export function checkAllowed(gate: Gate, slot: Slot, key: unknown, mechanism: AnyMechanismName, explicit = false): void {
  const refuse = (where: string, list: readonly AnyMechanismName[], why = '') =>
    new Pkcs11SupervisorError('MECHANISM_NOT_ALLOWED', `${mechanism} is not in ${where} (${list.join(', ')})${why}`, { slot: slot.name });
  const global = gate.sup.config.allowedMechanisms;
  if (global && !global.includes(mechanism)) throw refuse('allowedMechanisms', global);
  const perSlot = slot.config.allowedMechanisms;
  if (perSlot && !perSlot.includes(mechanism)) throw refuse(`slots.${slot.name}.allowedMechanisms`, perSlot);
  const refs = slot.config.keys;
  let keyListed = false;
  if (typeof key === 'string' && Object.hasOwn(refs, key)) {
    // On the sign path: no lists built per call, a message only when refusing.
    const list = refs[key]!.allowedMechanisms;
    if (list && !list.includes(mechanism)) throw refuse(`slots.${slot.name}.keys.${key}.allowedMechanisms`, list);
    keyListed = list !== undefined;
  } else {
    for (const [ref, list] of listsOfRefsThatCouldBe(slot, key)) {
      if (!list.includes(mechanism)) throw refuse(`slots.${slot.name}.keys.${ref}.allowedMechanisms`, list, '; a key named otherwise than by its ref is held to the list of every ref that could name it');
      keyListed = true;
    }
  }
  if (explicit && !global?.includes(mechanism) && !perSlot?.includes(mechanism) && !keyListed) {
    throw new Pkcs11SupervisorError(
      'MECHANISM_NOT_ALLOWED',
      `${mechanism} is allowed only where an allowedMechanisms list names it (global, slots.${slot.name} or the key ref): see docs/api.md, "Encryption, MACs, key agreement"`,
      { slot: slot.name },
    );
  }
}

/**
 * For a key named by label, id or URI: the allow-lists of every ref that could name the same
 * object (mayNameSameObject), so naming a key another way does not escape its list.
 */
function listsOfRefsThatCouldBe(slot: Slot, key: unknown): [string, readonly AnyMechanismName[]][] {
  const guarded = Object.entries(slot.config.keys).filter(([, r]) => r.allowedMechanisms);
  if (guarded.length === 0) return [];
  const sel = check.keySelector(slot, key);
  return guarded.filter(([, r]) => mayNameSameObject(sel, check.refSelector(r))).map(([ref, r]) => [ref, r.allowedMechanisms!]);
}
