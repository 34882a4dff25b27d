/** The config's allow-lists (global, slot, key ref), checked before a call is queued. */
import type { AnyMechanismName } from '../model/crypto-mechanisms.js';
import { Pkcs11SupervisorError } from '../model/errors.js';
import type { Slot } from '../slot.js';
import type { Gate } from './gate.js';

/**
 * Refuses a mechanism outside any allow-list that applies to the call. An `explicit` mechanism
 * (RSA PKCS#1 v1.5 decryption, a raw ECDH secret) is refused unless one of them names it.
 */
export function checkAllowed(gate: Gate, slot: Slot, key: unknown, mechanism: AnyMechanismName, explicit = false): void {
  // On the sign path: no lists built per call, a message only when refusing.
  const keyRef = typeof key === 'string' && Object.hasOwn(slot.config.keys, key) ? slot.config.keys[key] : undefined;
  const refuse = (where: string, list: readonly AnyMechanismName[]) =>
    new Pkcs11SupervisorError('MECHANISM_NOT_ALLOWED', `${mechanism} is not in ${where} (${list.join(', ')})`, { slot: slot.name });
  const global = gate.sup.config.allowedMechanisms;
  if (global && !global.includes(mechanism)) throw refuse('allowedMechanisms', global);
  const perSlot = slot.config.allowedMechanisms;
  if (perSlot && !perSlot.includes(mechanism)) throw refuse(`slots.${slot.name}.allowedMechanisms`, perSlot);
  const perKey = keyRef?.allowedMechanisms;
  if (perKey && !perKey.includes(mechanism)) throw refuse(`slots.${slot.name}.keys.${String(key)}.allowedMechanisms`, perKey);
  if (explicit && !global?.includes(mechanism) && !perSlot?.includes(mechanism) && !perKey?.includes(mechanism)) {
    throw new Pkcs11SupervisorError(
      'MECHANISM_NOT_ALLOWED',
      `${mechanism} is allowed only where an allowedMechanisms list names it (global, slots.${slot.name} or the key ref): see docs/api.md, "Encryption, MACs, key agreement"`,
      { slot: slot.name },
    );
  }
}
