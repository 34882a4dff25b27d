/** The config's allow-lists (global, slot, key ref), checked before a call is queued. */
import type { AnyMechanismName } from '../model/crypto-mechanisms.js';
import { Pkcs11SupervisorError } from '../model/errors.js';
import { mayNameSameObject } from '../model/protocol.js';
import * as check from '../validate.js';
import type { Slot } from '../slot.js';
import type { Gate } from './gate.js';

type KeyList = { ref: string; list: readonly AnyMechanismName[] };

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
  const perKey = keyLists(slot, key);
  for (const { ref, list } of perKey) {
    if (list.includes(mechanism)) continue;
    const why = typeof key === 'string' && key === ref ? '' : '; a key named otherwise than by its ref is held to the list of every ref that could name it';
    throw refuse(`slots.${slot.name}.keys.${ref}.allowedMechanisms`, list, why);
  }
  if (explicit && !global?.includes(mechanism) && !perSlot?.includes(mechanism) && perKey.length === 0) {
    throw new Pkcs11SupervisorError(
      'MECHANISM_NOT_ALLOWED',
      `${mechanism} is allowed only where an allowedMechanisms list names it (global, slots.${slot.name} or the key ref): see docs/api.md, "Encryption, MACs, key agreement"`,
      { slot: slot.name },
    );
  }
}

/**
 * The key refs' lists that apply: the ref's own, or, for a key named by label, id or URI, those
 * of every ref that could name the same object (mayNameSameObject), so naming a key another way
 * does not escape its list.
 */
function keyLists(slot: Slot, key: unknown): KeyList[] {
  const refs = slot.config.keys;
  if (typeof key === 'string' && Object.hasOwn(refs, key)) {
    // On the sign path: no lists built per call.
    const list = refs[key]!.allowedMechanisms;
    return list ? [{ ref: key, list }] : [];
  }
  const guarded = Object.entries(refs).filter(([, r]) => r.allowedMechanisms);
  if (guarded.length === 0) return [];
  const sel = check.keySelector(slot, key);
  return guarded.filter(([, r]) => mayNameSameObject(sel, check.refSelector(r))).map(([ref, r]) => ({ ref, list: r.allowedMechanisms! }));
}
