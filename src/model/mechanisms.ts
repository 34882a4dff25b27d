/**
 * Signature mechanisms by the names callers use. The table is shared by the main thread
 * (validation before a call is queued) and the workers (what to ask the token for).
 */
export const KEY_TYPES = ['RSA', 'EC', 'EC_EDWARDS', 'AES', 'GENERIC_SECRET'] as const;
export type KeyType = (typeof KEY_TYPES)[number];
export type HashName = 'sha256' | 'sha384' | 'sha512';

export interface MechanismSpec {
  keyType: KeyType;
  /** The digest applied to the data; null for EdDSA, which signs the message itself. */
  hash: HashName | null;
  scheme: 'pkcs1' | 'pss' | 'ecdsa' | 'eddsa' | 'rsa-raw';
}

export const MECHANISMS = {
  'RSA-PKCS1-SHA256': { keyType: 'RSA', hash: 'sha256', scheme: 'pkcs1' },
  'RSA-PKCS1-SHA384': { keyType: 'RSA', hash: 'sha384', scheme: 'pkcs1' },
  'RSA-PKCS1-SHA512': { keyType: 'RSA', hash: 'sha512', scheme: 'pkcs1' },
  'RSA-PSS-SHA256': { keyType: 'RSA', hash: 'sha256', scheme: 'pss' },
  'RSA-PSS-SHA384': { keyType: 'RSA', hash: 'sha384', scheme: 'pss' },
  'RSA-PSS-SHA512': { keyType: 'RSA', hash: 'sha512', scheme: 'pss' },
  'ECDSA-SHA256': { keyType: 'EC', hash: 'sha256', scheme: 'ecdsa' },
  'ECDSA-SHA384': { keyType: 'EC', hash: 'sha384', scheme: 'ecdsa' },
  'ECDSA-SHA512': { keyType: 'EC', hash: 'sha512', scheme: 'ecdsa' },
  EdDSA: { keyType: 'EC_EDWARDS', hash: null, scheme: 'eddsa' },
  /** Raw PKCS#1 v1.5 over a caller-built DigestInfo (CKM_RSA_PKCS). */
  'RSA-PKCS1': { keyType: 'RSA', hash: null, scheme: 'rsa-raw' },
} as const satisfies Record<string, MechanismSpec>;

export type MechanismName = keyof typeof MECHANISMS;
export const MECHANISM_NAMES = Object.keys(MECHANISMS) as MechanismName[];

export function isMechanismName(name: unknown): name is MechanismName {
  return typeof name === 'string' && Object.hasOwn(MECHANISMS, name);
}

export const HASH_BYTES: Record<HashName, number> = { sha256: 32, sha384: 48, sha512: 64 };
