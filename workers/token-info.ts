/** What a token reports, as the values the supervisor works with. */
import type * as P11 from 'pkcs11js';
import { pkcs11js } from './pkcs11js.js';
import { trimPadded } from '../src/model/token-match.js';
import { CKK_EC_EDWARDS } from './pkcs11-constants.js';
import type { KeyType } from '../src/model/mechanisms.js';
import type { DeviceInfo, PinLength } from '../src/model/protocol.js';
import { moduleNameOf, type DeviceFacts } from '../src/model/device-match.js';

/** Null when the token states no usable range (0/0, or a max below the min). */
export function pinLengthOf(min: number, max: number): PinLength | null {
  return max > 0 && max >= min && max < 0xffffffff ? { min, max } : null;
}

/** CK_EFFECTIVELY_INFINITE (0) and CK_UNAVAILABLE_INFORMATION (~0) mean no limit to respect. */
export function sessionLimit(n: number): number | null {
  return n > 0 && n < 0xffffffff ? n : null;
}

/** Each key type's CKK value, as a template names it. */
export const KEY_TYPE_VALUE: Record<KeyType, number> = {
  RSA: pkcs11js.CKK_RSA,
  EC: pkcs11js.CKK_EC,
  EC_EDWARDS: CKK_EC_EDWARDS,
  AES: pkcs11js.CKK_AES,
  GENERIC_SECRET: pkcs11js.CKK_GENERIC_SECRET,
};

const KEY_TYPE_NAME = new Map<number, KeyType>([
  ...Object.entries(KEY_TYPE_VALUE).map(([k, v]) => [v, k as KeyType] as const),
  // HMAC keys some tokens type by their hash: all are generic secrets to an HMAC mechanism.
  ...[pkcs11js.CKK_SHA256_HMAC, pkcs11js.CKK_SHA384_HMAC, pkcs11js.CKK_SHA512_HMAC].map((v) => [v, 'GENERIC_SECRET'] as const),
]);

/** The key types the supervisor uses, by CKK value. */
export function keyTypeOf(ckk: number): KeyType | null {
  return KEY_TYPE_NAME.get(ckk) ?? null;
}

/** CKF_TOKEN_PRESENT, CKF_REMOVABLE_DEVICE, CKF_HW_SLOT: pkcs11js exports them but does not declare them. */
const SLOT_FLAGS: [number, string][] = [
  [0x1, 'tokenPresent'],
  [0x2, 'removableDevice'],
  [0x4, 'hardwareSlot'],
];

const TOKEN_FLAGS: [number, string][] = [
  [pkcs11js.CKF_RNG, 'rng'],
  [pkcs11js.CKF_WRITE_PROTECTED, 'writeProtected'],
  [pkcs11js.CKF_LOGIN_REQUIRED, 'loginRequired'],
  [pkcs11js.CKF_USER_PIN_INITIALIZED, 'userPinInitialized'],
  [pkcs11js.CKF_RESTORE_KEY_NOT_NEEDED, 'restoreKeyNotNeeded'],
  [pkcs11js.CKF_CLOCK_ON_TOKEN, 'clockOnToken'],
  [pkcs11js.CKF_PROTECTED_AUTHENTICATION_PATH, 'protectedAuthenticationPath'],
  [pkcs11js.CKF_DUAL_CRYPTO_OPERATIONS, 'dualCryptoOperations'],
  [pkcs11js.CKF_TOKEN_INITIALIZED, 'tokenInitialized'],
  [pkcs11js.CKF_USER_PIN_COUNT_LOW, 'userPinCountLow'],
  [pkcs11js.CKF_USER_PIN_FINAL_TRY, 'userPinFinalTry'],
  [pkcs11js.CKF_USER_PIN_LOCKED, 'userPinLocked'],
  [pkcs11js.CKF_USER_PIN_TO_BE_CHANGED, 'userPinToBeChanged'],
  [pkcs11js.CKF_SO_PIN_COUNT_LOW, 'soPinCountLow'],
  [pkcs11js.CKF_SO_PIN_FINAL_TRY, 'soPinFinalTry'],
  [pkcs11js.CKF_SO_PIN_LOCKED, 'soPinLocked'],
  [pkcs11js.CKF_SO_PIN_TO_BE_CHANGED, 'soPinToBeChanged'],
];

const flagNames = (flags: number, table: [number, string][]) => table.filter(([bit]) => (flags & bit) !== 0).map(([, name]) => name);
const version = (v: P11.Version) => `${v.major}.${v.minor}`;

/** C_GetSlotInfo and C_GetTokenInfo as plain data: padding trimmed, versions as "major.minor", flags by name. */
export function deviceInfo(slot: P11.SlotInfo, token: P11.TokenInfo): DeviceInfo {
  return {
    slot: { description: trimPadded(slot.slotDescription), manufacturer: trimPadded(slot.manufacturerID), hardware: version(slot.hardwareVersion), firmware: version(slot.firmwareVersion), flags: flagNames(slot.flags, SLOT_FLAGS) },
    token: {
      label: trimPadded(token.label),
      manufacturer: trimPadded(token.manufacturerID),
      model: trimPadded(token.model),
      serial: trimPadded(token.serialNumber),
      hardware: version(token.hardwareVersion),
      firmware: version(token.firmwareVersion),
      flags: flagNames(token.flags, TOKEN_FLAGS),
    },
  };
}

/** What RFC 7512's attributes name (device-match.ts), as a session on this token, slot and library finds them. */
export function deviceFacts(modulePath: string, slotId: number, library: P11.ModuleInfo, slot: P11.SlotInfo, token: P11.TokenInfo): DeviceFacts {
  return {
    token: trimPadded(token.label),
    manufacturer: trimPadded(token.manufacturerID),
    serial: trimPadded(token.serialNumber),
    model: trimPadded(token.model),
    'slot-description': trimPadded(slot.slotDescription),
    'slot-manufacturer': trimPadded(slot.manufacturerID),
    'slot-id': String(slotId),
    'library-manufacturer': trimPadded(library.manufacturerID),
    'library-description': trimPadded(library.libraryDescription),
    'library-version': version(library.libraryVersion),
    'module-name': moduleNameOf(modulePath),
    'module-path': modulePath,
  };
}
