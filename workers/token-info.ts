/** What a token reports, as the values the supervisor works with. */
import { pkcs11js } from './pkcs11js.js';
import { CKK_EC_EDWARDS } from './pkcs11-constants.js';
import type { KeyType } from '../src/model/mechanisms.js';
import type { PinLength } from '../src/model/protocol.js';

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
