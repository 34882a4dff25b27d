/**
 * Verification in Node with the token's public key: a public-key operation needs no secret,
 * so it need not wait in a slot's mailbox behind signatures on a slow token. The parameters
 * match what the workers ask the token for (PSS: MGF1 with the same hash, salt = hash length).
 */
import { constants, verify, type KeyObject } from 'node:crypto';
import { HASH_BYTES, MECHANISMS, type MechanismName } from './model/mechanisms.js';
import type { SignatureFormat } from './model/protocol.js';

/** Whether Node can check this call itself; pre-hashed input and raw RSA over a DigestInfo go to the token. */
export function verifiableInSoftware(mechanism: MechanismName, prehashed: boolean): boolean {
  return !prehashed && MECHANISMS[mechanism].scheme !== 'rsa-raw';
}

export function verifyInSoftware(mechanism: MechanismName, key: KeyObject, data: Uint8Array, signature: Uint8Array, format: SignatureFormat): boolean {
  const spec = MECHANISMS[mechanism];
  if (spec.scheme === 'rsa-raw') throw new Error(`${mechanism} is not verified in software`);
  // RFC 8017 8.1.2, 8.2.2: an RSA signature is exactly k bytes. OpenSSL's PSS verify also takes one
  // whose leading zero byte was dropped, which the token refuses (CKR_SIGNATURE_LEN_RANGE).
  if ((spec.scheme === 'pkcs1' || spec.scheme === 'pss') && signature.length !== modulusBytes(key)) return false;
  try {
    switch (spec.scheme) {
      case 'pkcs1':
        return verify(spec.hash, data, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
      case 'pss':
        return verify(spec.hash, data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: HASH_BYTES[spec.hash] }, signature);
      case 'ecdsa':
        return verify(spec.hash, data, { key, dsaEncoding: format === 'raw' ? 'ieee-p1363' : 'der' }, signature);
      case 'eddsa':
        return verify(null, data, key, signature);
    }
  } catch {
    // A malformed signature is an invalid one, as the token answers CKR_SIGNATURE_INVALID/LEN_RANGE.
    return false;
  }
}

function modulusBytes(key: KeyObject): number {
  return Math.ceil((key.asymmetricKeyDetails?.modulusLength ?? 0) / 8);
}
