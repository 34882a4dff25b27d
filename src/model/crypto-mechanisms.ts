/**
 * Mechanisms beyond signing, by the names callers use: encryption, key wrapping, MACs and key
 * agreement. Shared by the main thread (validation and policy before a call is queued) and the
 * workers (what to ask the token for), like the signature table in mechanisms.ts.
 */
import type { KeyType, MechanismName } from './mechanisms.js';

export type CryptoOp = 'encrypt' | 'decrypt' | 'wrapKey' | 'unwrapKey' | 'mac' | 'verifyMac' | 'deriveKey';
export type OaepHash = 'sha1' | 'sha256' | 'sha384' | 'sha512';

export interface CryptoMechanismSpec {
  keyType: KeyType;
  ops: readonly CryptoOp[];
  scheme: 'aes-gcm' | 'aes-cbc-pad' | 'rsa-oaep' | 'rsa-pkcs1' | 'aes-kw' | 'aes-kwp' | 'hmac' | 'ecdh' | 'ecdh-secret';
  hash?: OaepHash;
  /**
   * Refused unless a config allow-list names it: RSA PKCS#1 v1.5 decryption answers padding
   * oracles (Bleichenbacher), and a raw ECDH secret leaves the token.
   */
  explicit?: true;
}

const AES_CIPHER: readonly CryptoOp[] = ['encrypt', 'decrypt'];
const RSA_OAEP: readonly CryptoOp[] = ['encrypt', 'decrypt', 'wrapKey', 'unwrapKey'];
const WRAP: readonly CryptoOp[] = ['wrapKey', 'unwrapKey'];
const MAC: readonly CryptoOp[] = ['mac', 'verifyMac'];

export const CRYPTO_MECHANISMS = {
  'AES-GCM': { keyType: 'AES', ops: AES_CIPHER, scheme: 'aes-gcm' },
  'AES-CBC-PAD': { keyType: 'AES', ops: AES_CIPHER, scheme: 'aes-cbc-pad' },
  'RSA-OAEP-SHA1': { keyType: 'RSA', ops: RSA_OAEP, scheme: 'rsa-oaep', hash: 'sha1' },
  'RSA-OAEP-SHA256': { keyType: 'RSA', ops: RSA_OAEP, scheme: 'rsa-oaep', hash: 'sha256' },
  'RSA-OAEP-SHA384': { keyType: 'RSA', ops: RSA_OAEP, scheme: 'rsa-oaep', hash: 'sha384' },
  'RSA-OAEP-SHA512': { keyType: 'RSA', ops: RSA_OAEP, scheme: 'rsa-oaep', hash: 'sha512' },
  'RSA-PKCS1-V1_5': { keyType: 'RSA', ops: ['decrypt'], scheme: 'rsa-pkcs1', explicit: true },
  'AES-KEY-WRAP': { keyType: 'AES', ops: WRAP, scheme: 'aes-kw' },
  'AES-KEY-WRAP-PAD': { keyType: 'AES', ops: WRAP, scheme: 'aes-kwp' },
  'HMAC-SHA256': { keyType: 'GENERIC_SECRET', ops: MAC, scheme: 'hmac', hash: 'sha256' },
  'HMAC-SHA384': { keyType: 'GENERIC_SECRET', ops: MAC, scheme: 'hmac', hash: 'sha384' },
  'HMAC-SHA512': { keyType: 'GENERIC_SECRET', ops: MAC, scheme: 'hmac', hash: 'sha512' },
  /** ECDH into a one-call AES-256 session key: the secret never leaves the token. */
  ECDH: { keyType: 'EC', ops: ['deriveKey'], scheme: 'ecdh' },
  /** ECDH whose raw shared secret is returned to the caller. */
  'ECDH-SECRET': { keyType: 'EC', ops: ['deriveKey'], scheme: 'ecdh-secret', explicit: true },
} as const satisfies Record<string, CryptoMechanismSpec>;

export type CryptoMechanismName = keyof typeof CRYPTO_MECHANISMS;
/** A mechanism of either table: what allow-lists and the token's capabilities name. */
export type AnyMechanismName = MechanismName | CryptoMechanismName;
export const CRYPTO_MECHANISM_NAMES = Object.keys(CRYPTO_MECHANISMS) as CryptoMechanismName[];

export function isCryptoMechanismName(name: unknown): name is CryptoMechanismName {
  return typeof name === 'string' && Object.hasOwn(CRYPTO_MECHANISMS, name);
}

/** Secret keys the token can generate, by name: AES of a size, or a generic secret for HMAC. */
export const SECRET_KEY_ALGORITHMS = {
  'AES-128': { keyType: 'AES', bytes: 16 },
  'AES-192': { keyType: 'AES', bytes: 24 },
  'AES-256': { keyType: 'AES', bytes: 32 },
  'HMAC-256': { keyType: 'GENERIC_SECRET', bytes: 32 },
  'HMAC-384': { keyType: 'GENERIC_SECRET', bytes: 48 },
  'HMAC-512': { keyType: 'GENERIC_SECRET', bytes: 64 },
} as const satisfies Record<string, { keyType: KeyType; bytes: number }>;

export type SecretKeyAlgorithm = keyof typeof SECRET_KEY_ALGORITHMS;
export const SECRET_KEY_ALGORITHM_NAMES = Object.keys(SECRET_KEY_ALGORITHMS) as SecretKeyAlgorithm[];

/** AES-GCM: a 96-bit IV (NIST SP 800-38D) and a 128-bit tag. */
export const GCM_IV_BYTES = 12;
export const GCM_TAG_BYTES = 16;
export const AES_BLOCK_BYTES = 16;
/** The session key ECDH derives for the call that follows it: AES-256. */
export const ECDH_SESSION_KEY_BYTES = 32;
