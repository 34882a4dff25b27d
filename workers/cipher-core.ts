/**
 * What every cipher operation on the session thread shares: the session it runs on, the
 * mechanism as the token is asked for it (refused here if the token did not list it), the key
 * an operation needs, and one encryption or decryption with the token's answers for data that
 * does not decrypt.
 */
import type * as P11 from 'pkcs11js';
import { asBuffer, pkcs11js } from './pkcs11js.js';
import { WorkerFailure } from './failure.js';
import type { SessionAccess } from './object-ops.js';
import type { CachedKey } from './key-finder.js';
import { CRYPTO_MECHANISMS, GCM_IV_BYTES, GCM_TAG_BYTES, type CryptoMechanismName, type CryptoOp, type OaepHash } from '../src/model/crypto-mechanisms.js';
import type { CipherInput, KeySelector } from '../src/model/protocol.js';

export interface CryptoSession extends SessionAccess {
  key(sel: KeySelector, cls: number): CachedKey;
  /** The token listed this CKM_* value in C_GetMechanismList. */
  supports(ckm: number): boolean;
  /** A buffer of at least `bytes` the session reuses: an answer written there is valid until the session's next call. */
  scratch(bytes: number): Buffer;
  /**
   * The PIN of the C_Login(CKU_CONTEXT_SPECIFIC) a use of `key` needs after its C_*Init, or
   * undefined for a key that needs none. Asked before the init, so no operation is left open
   * for want of a PIN: a key with CKA_ALWAYS_AUTHENTICATE and no PIN throws ContextLoginNeeded.
   */
  contextPinFor(key: CachedKey, sel: KeySelector, contextPin: string | undefined): string | undefined;
  /**
   * C_Login(CKU_CONTEXT_SPECIFIC) for the operation just begun. A refused PIN leaves that
   * operation active: `end` ends it (the token refuses it; its answer is thrown away) so the
   * session can take the next call.
   */
  contextLogin(pin: string, end: () => void): void;
  /**
   * Rethrows a failed use of `key`, unless it was CKR_USER_NOT_LOGGED_IN on a logged-in session:
   * a key that asks for the PIN on every use without saying so in CKA_ALWAYS_AUTHENTICATE (or
   * before C_GetAttributeValue can read it). That is learnt and the use sent back for a PIN, not
   * taken for a lost session.
   */
  usedWithoutPin(e: unknown, key: CachedKey, sel: KeySelector): never;
}

const OAEP: Record<OaepHash, { hashAlg: number; mgf: number }> = {
  sha1: { hashAlg: pkcs11js.CKM_SHA_1, mgf: pkcs11js.CKG_MGF1_SHA1 },
  sha256: { hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256 },
  sha384: { hashAlg: pkcs11js.CKM_SHA384, mgf: pkcs11js.CKG_MGF1_SHA384 },
  sha512: { hashAlg: pkcs11js.CKM_SHA512, mgf: pkcs11js.CKG_MGF1_SHA512 },
};
const HMAC: Record<string, number> = { sha256: pkcs11js.CKM_SHA256_HMAC, sha384: pkcs11js.CKM_SHA384_HMAC, sha512: pkcs11js.CKM_SHA512_HMAC };
const CKZ_DATA_SPECIFIED = 1;

/** The CKM_* value each mechanism name needs from the token. */
export function ckmOf(name: CryptoMechanismName): number {
  const spec = CRYPTO_MECHANISMS[name];
  switch (spec.scheme) {
    case 'aes-gcm':
      return pkcs11js.CKM_AES_GCM;
    case 'aes-cbc-pad':
      return pkcs11js.CKM_AES_CBC_PAD;
    case 'rsa-oaep':
      return pkcs11js.CKM_RSA_PKCS_OAEP;
    case 'rsa-pkcs1':
      return pkcs11js.CKM_RSA_PKCS;
    case 'aes-kw':
      return pkcs11js.CKM_AES_KEY_WRAP;
    case 'aes-kwp':
      return pkcs11js.CKM_AES_KEY_WRAP_PAD;
    case 'hmac':
      return HMAC[spec.hash!]!;
    case 'ecdh':
    case 'ecdh-secret':
      return pkcs11js.CKM_ECDH1_DERIVE;
  }
}

/** The mechanism as the token is asked for it, with its parameters; refused here if the token did not list it. */
export function mechanismFor(s: CryptoSession, name: CryptoMechanismName, input: Pick<CipherInput, 'iv' | 'aad' | 'oaepLabel'>): P11.Mechanism {
  const spec = CRYPTO_MECHANISMS[name];
  const mechanism = ckmOf(name);
  if (!s.supports(mechanism)) throw new WorkerFailure('MECHANISM_INVALID', `the token cannot do ${name} (not in its C_GetMechanismList)`);
  switch (spec.scheme) {
    case 'aes-gcm':
      return { mechanism, parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv: asBuffer(input.iv!), ivBits: GCM_IV_BYTES * 8, aad: input.aad && asBuffer(input.aad), tagBits: GCM_TAG_BYTES * 8 } as P11.GcmParams };
    case 'aes-cbc-pad':
      return { mechanism, parameter: asBuffer(input.iv!) };
    case 'rsa-oaep': {
      const { hashAlg, mgf } = OAEP[spec.hash!];
      const label = input.oaepLabel && asBuffer(input.oaepLabel);
      return { mechanism, parameter: { type: pkcs11js.CK_PARAMS_RSA_OAEP, hashAlg, mgf, source: CKZ_DATA_SPECIFIED, sourceData: label && label.length > 0 ? label : null } as P11.RsaOAEP };
    }
    default:
      return { mechanism };
  }
}

/** The class of the key an operation needs: the secret key, or the RSA/EC key's private or public half. */
function keyClass(name: CryptoMechanismName, op: CryptoOp): number {
  const { keyType } = CRYPTO_MECHANISMS[name];
  if (keyType === 'AES' || keyType === 'GENERIC_SECRET') return pkcs11js.CKO_SECRET_KEY;
  return op === 'encrypt' || op === 'wrapKey' ? pkcs11js.CKO_PUBLIC_KEY : pkcs11js.CKO_PRIVATE_KEY;
}

export function keyFor(s: CryptoSession, sel: KeySelector, name: CryptoMechanismName, op: CryptoOp): CachedKey {
  const key = s.key(sel, keyClass(name, op));
  const needs = CRYPTO_MECHANISMS[name].keyType;
  if (key.keyType !== needs) throw new WorkerFailure('MECHANISM_INVALID', `${name} needs a key of type ${needs}; this key is ${key.keyType}`);
  return key;
}

/**
 * Answers a token may give for a ciphertext that does not decrypt: a tag that does not match
 * (wrong key, IV, AAD or a changed ciphertext), bad padding, a wrong length. SoftHSM2 says
 * CKR_GENERAL_ERROR for a GCM tag mismatch; taken as a broken module it would reset the
 * module at every bad ciphertext a client sends, so it is reported without its CKR.
 */
const NOT_DECRYPTED = new Set(['CKR_ENCRYPTED_DATA_INVALID', 'CKR_ENCRYPTED_DATA_LEN_RANGE', 'CKR_GENERAL_ERROR', 'CKR_DATA_INVALID', 'CKR_DATA_LEN_RANGE', 'CKR_FUNCTION_FAILED']);

/** Answers for wrapped bytes that do not unwrap (SoftHSM2: CKR_GENERAL_ERROR for a failed key-wrap integrity check). */
export const NOT_UNWRAPPED = new Set([...NOT_DECRYPTED, 'CKR_WRAPPED_KEY_INVALID', 'CKR_WRAPPED_KEY_LEN_RANGE']);

/**
 * An operation's C_*Init. A token that lists a mechanism may still refuse some of its
 * parameters (SoftHSM2 2.6 takes RSA-OAEP with SHA-1 only, answering CKR_ARGUMENTS_BAD for
 * SHA-256): that is the mechanism the caller named being unavailable, not bad input.
 */
export function init(name: CryptoMechanismName, call: () => void): void {
  try {
    call();
  } catch (e) {
    const ckr = (e as Error).message;
    if (ckr !== 'CKR_ARGUMENTS_BAD' && ckr !== 'CKR_MECHANISM_PARAM_INVALID') throw e;
    throw new WorkerFailure('MECHANISM_INVALID', `the token refuses ${name}'s parameters (it said ${ckr}): it has the mechanism, but not with this hash, IV or label`, ckr);
  }
}

/** A found key's use: a decrypt with a key that asks for the PIN on every use logs in with `pin` after C_DecryptInit. */
interface KeyUse {
  key: CachedKey;
  sel: KeySelector;
  pin?: string | undefined;
}

export function cipher(s: CryptoSession, op: 'encrypt' | 'decrypt', name: CryptoMechanismName, key: P11.Handle, input: CipherInput, use?: KeyUse): Uint8Array {
  const mech = mechanismFor(s, name, input);
  const data = asBuffer(input.data);
  // Room for a GCM tag or a padding block; RSA output is never longer than its input here.
  const out = s.scratch(data.length + 2 * GCM_TAG_BYTES + 512);
  if (op === 'encrypt') {
    init(name, () => s.p11('C_EncryptInit').C_EncryptInit(s.sessionHandle, mech, key));
    return s.p11('C_Encrypt').C_Encrypt(s.sessionHandle, data, out);
  }
  init(name, () => s.p11('C_DecryptInit').C_DecryptInit(s.sessionHandle, mech, key));
  if (use?.pin !== undefined) s.contextLogin(use.pin, () => s.p11('C_Decrypt').C_Decrypt(s.sessionHandle, data, out));
  try {
    return s.p11('C_Decrypt').C_Decrypt(s.sessionHandle, data, out);
  } catch (e) {
    const ckr = (e as Error).message;
    if (!NOT_DECRYPTED.has(ckr)) throw use ? s.usedWithoutPin(e, use.key, use.sel) : e;
    const why = CRYPTO_MECHANISMS[name].scheme === 'aes-gcm' ? 'the tag does not match: a wrong key, IV or AAD, or a changed ciphertext' : 'the ciphertext does not decrypt under this key (padding or length)';
    throw new WorkerFailure('DECRYPTION_FAILED', `${name}: ${why}; the token said ${ckr}`, ckr === 'CKR_GENERAL_ERROR' ? undefined : ckr);
  }
}

