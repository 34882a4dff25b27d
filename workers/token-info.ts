/** What a token reports, as the values the supervisor works with. */
import { pkcs11js } from './pkcs11js.js';
import { CKK_EC_EDWARDS } from './pkcs11-constants.js';
import type { KeyType } from '../src/model/mechanisms.js';
import type { DeviceInfo, PinLength } from '../src/model/protocol.js';

/** Null when the token states no usable range (0/0, or a max below the min). */
export function pinLengthOf(min: number, max: number): PinLength | null {
  return max > 0 && max >= min && max < 0xffffffff ? { min, max } : null;
}

/** CK_EFFECTIVELY_INFINITE (0) and CK_UNAVAILABLE_INFORMATION (~0) mean no limit to respect. */
export function sessionLimit(n: number): number | null {
  return n > 0 && n < 0xffffffff ? n : null;
}

/** The key types the supervisor signs with, by CKK value. */
export function keyTypeOf(ckk: number): KeyType | null {
  if (ckk === pkcs11js.CKK_RSA) return 'RSA';
  if (ckk === pkcs11js.CKK_EC) return 'EC';
  if (ckk === CKK_EC_EDWARDS) return 'EC_EDWARDS';
  return null;
}

const SLOT_FLAGS: [number, string][] = [
  [0x1, 'tokenPresent'],
  [0x2, 'removableDevice'],
  [0x4, 'hardwareSlot'],
];

const TOKEN_FLAGS: [number, string][] = [
  [0x1, 'rng'],
  [0x2, 'writeProtected'],
  [0x4, 'loginRequired'],
  [0x8, 'userPinInitialized'],
  [0x20, 'restoreKeyNotNeeded'],
  [0x40, 'clockOnToken'],
  [0x100, 'protectedAuthenticationPath'],
  [0x200, 'dualCryptoOperations'],
  [0x400, 'tokenInitialized'],
  [0x10000, 'userPinCountLow'],
  [0x20000, 'userPinFinalTry'],
  [0x40000, 'userPinLocked'],
  [0x80000, 'userPinToBeChanged'],
  [0x100000, 'soPinCountLow'],
  [0x200000, 'soPinFinalTry'],
  [0x400000, 'soPinLocked'],
  [0x800000, 'soPinToBeChanged'],
];

const flagNames = (flags: number, table: [number, string][]) => table.filter(([bit]) => (flags & bit) !== 0).map(([, name]) => name);
const version = (v: { major: number; minor: number } | undefined) => (v ? `${v.major}.${v.minor}` : '');
const text = (s: string | undefined) => (s ?? '').replace(/[\s\0]+$/, '');

/** C_GetSlotInfo and C_GetTokenInfo as plain data: blank padding trimmed, versions as "major.minor", flags by name. */
export function deviceInfo(slot: P11SlotInfo, token: P11TokenInfo): DeviceInfo {
  return {
    slot: { description: text(slot.slotDescription), manufacturer: text(slot.manufacturerID), hardware: version(slot.hardwareVersion), firmware: version(slot.firmwareVersion), flags: flagNames(slot.flags, SLOT_FLAGS) },
    token: {
      label: text(token.label),
      manufacturer: text(token.manufacturerID),
      model: text(token.model),
      serial: text(token.serialNumber),
      hardware: version(token.hardwareVersion),
      firmware: version(token.firmwareVersion),
      flags: flagNames(token.flags, TOKEN_FLAGS),
    },
  };
}

type P11SlotInfo = { slotDescription: string; manufacturerID: string; flags: number; hardwareVersion?: { major: number; minor: number }; firmwareVersion?: { major: number; minor: number } };
type P11TokenInfo = { label: string; manufacturerID: string; model: string; serialNumber: string; flags: number; hardwareVersion?: { major: number; minor: number }; firmwareVersion?: { major: number; minor: number } };
