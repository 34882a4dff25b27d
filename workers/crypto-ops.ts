/**
 * Encryption, key wrapping, MACs and key agreement on the session thread's session. Each
 * function is one call's PKCS#11 work: the key looked up as for signing, the mechanism asked
 * for only if the token listed it, every object made for the call (an ECDH session key, a
 * secret read out) destroyed before the call ends.
 */
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import type * as P11 from 'pkcs11js';
import { asBuffer, pkcs11js } from './pkcs11js.js';
import { ContextLoginNeeded, WorkerFailure } from './failure.js';
import { SESSION_LOST_CKRS } from '../src/model/ckr.js';
import { describe, publicKeyReport, type SessionAccess } from './object-ops.js';
import { refuseTakenName } from './key-creation.js';
import { keyName, type CachedKey } from './key-finder.js';
import { KEY_TYPE_VALUE } from './token-info.js';
import { CRYPTO_MECHANISMS, ECDH_SESSION_KEY_BYTES, GCM_IV_BYTES, GCM_TAG_BYTES, SECRET_KEY_ALGORITHMS, type CryptoMechanismName, type CryptoMechanismSpec, type CryptoOp, type OaepHash } from '../src/model/crypto-mechanisms.js';
import type { CipherInput, KeySelector, ObjectDescriptor, SecretKeySpec, WorkerTask } from '../src/model/protocol.js';

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
function mechanismFor(s: CryptoSession, name: CryptoMechanismName, input: Pick<CipherInput, 'iv' | 'aad' | 'oaepLabel'>): P11.Mechanism {
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

function keyFor(s: CryptoSession, sel: KeySelector, name: CryptoMechanismName, op: CryptoOp): CachedKey {
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
const NOT_UNWRAPPED = new Set([...NOT_DECRYPTED, 'CKR_WRAPPED_KEY_INVALID', 'CKR_WRAPPED_KEY_LEN_RANGE']);

/**
 * The peer's point must be on this key's curve. A token given a point on another curve, or none,
 * may answer CKR_GENERAL_ERROR (SoftHSM2 does), which reads as a broken module.
 */
function checkPeerPoint(point: Uint8Array, key: CachedKey): void {
  const curve = key.curve;
  if (!curve) return;
  const n = curve.fieldBytes;
  const fail = (why: string) => new WorkerFailure('BAD_INPUT', `publicKey is not a point on ${curve.name}, this key's curve: ${why}`);
  if (point.length !== 1 + 2 * n || point[0] !== 0x04) throw fail(`an uncompressed ${curve.name} point is ${1 + 2 * n} bytes starting 04, this one is ${point.length} bytes`);
  const b = Buffer.from(point.buffer, point.byteOffset, point.byteLength);
  try {
    createPublicKey({ key: { kty: 'EC', crv: curve.name, x: b.subarray(1, 1 + n).toString('base64url'), y: b.subarray(1 + n).toString('base64url') }, format: 'jwk' });
  } catch {
    throw fail('the coordinates are not on the curve');
  }
}

/**
 * An operation's C_*Init. A token that lists a mechanism may still refuse some of its
 * parameters (SoftHSM2 2.6 takes RSA-OAEP with SHA-1 only, answering CKR_ARGUMENTS_BAD for
 * SHA-256): that is the mechanism the caller named being unavailable, not bad input.
 */
function init(name: CryptoMechanismName, call: () => void): void {
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

function cipher(s: CryptoSession, op: 'encrypt' | 'decrypt', name: CryptoMechanismName, key: P11.Handle, input: CipherInput, use?: KeyUse): Uint8Array {
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

export function encrypt(s: CryptoSession, task: Extract<WorkerTask, { op: 'encrypt' }>): Uint8Array {
  return cipher(s, 'encrypt', task.mechanism, keyFor(s, task.key, task.mechanism, 'encrypt').handle, task);
}

export function decrypt(s: CryptoSession, task: Extract<WorkerTask, { op: 'decrypt' }>): Uint8Array {
  const key = keyFor(s, task.key, task.mechanism, 'decrypt');
  const pin = s.contextPinFor(key, task.key, task.contextPin);
  checkLabelHonoured(s, task, pin);
  return cipher(s, 'decrypt', task.mechanism, key.handle, task, { key, sel: task.key, pin });
}

/**
 * An RSA-OAEP label is refused where the token does not decrypt with one correctly: SoftHSM2 2.6
 * ignores it, so it would decrypt (or unwrap) what was made for another label, and wrap without it.
 */
function checkLabelHonoured(s: CryptoSession, task: { key: KeySelector; mechanism: CryptoMechanismName; oaepLabel?: Uint8Array | undefined }, contextPin?: string): void {
  if (!task.oaepLabel?.length || CRYPTO_MECHANISMS[task.mechanism].scheme !== 'rsa-oaep') return;
  if (oaepDecryptable(s, task.key, task.mechanism, true, contextPin) !== false) return;
  throw new WorkerFailure('MECHANISM_INVALID', `the token does not decrypt ${task.mechanism} with a label correctly (a ciphertext made with one does not come back), so it cannot take one`);
}

/**
 * Whether the token decrypts RSA-OAEP with these parameters and this key: a ciphertext made here
 * with the key's public half (random bytes, the mechanism's hash, a random label or none) must
 * come back from the token as it went in. A token may list CKM_RSA_PKCS_OAEP yet refuse a hash
 * (SoftHSM2 2.6 takes SHA-1 only) or ignore the label (SoftHSM2 2.6 again), and a ciphertext
 * made for parameters it cannot decrypt is lost. null: it cannot tell (no private or public half
 * here, a key not for decryption, whose unwrap is the caller's to try, or one that asks for the
 * PIN on every use when no `contextPin` came: its decryption shows only whether the token takes
 * the hash). Kept with the found key, so asked again at most when the key is looked up again;
 * an answer without the PIN such a key needs is asked again with it. `askPin`: a label's check
 * that needs that PIN sends the call back for it (ContextLoginNeeded) instead of answering null.
 */
export function oaepDecryptable(s: CryptoSession, sel: KeySelector, name: CryptoMechanismName, labelled: boolean, contextPin?: string, askPin = false): boolean | null {
  let key: CachedKey;
  try {
    key = keyFor(s, sel, name, 'decrypt');
  } catch (e) {
    if (e instanceof WorkerFailure && e.code === 'KEY_NOT_FOUND') return null;
    throw e;
  }
  let pin: string | undefined;
  let unpinned = false;
  try {
    pin = s.contextPinFor(key, sel, contextPin);
  } catch (e) {
    if (!(e instanceof ContextLoginNeeded)) throw e;
    unpinned = true;
  }
  const memo = `${name}\0${labelled}`;
  key.oaep ??= new Map();
  const known = key.oaep.get(memo) ?? (unpinned ? key.oaep.get(`${memo}\0unpinned`) : undefined);
  if (known !== undefined) return known;
  let answer: boolean | null;
  try {
    const pub = s.key(sel, pkcs11js.CKO_PUBLIC_KEY);
    const spki = publicKeyReport(s, pub.handle, pub.keyType, pub.curve?.fieldBytes ?? 0).spkiDer;
    const secret = randomBytes(16);
    const oaepLabel = labelled ? randomBytes(8) : undefined;
    const data = publicEncrypt({ key: createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: (CRYPTO_MECHANISMS[name] as CryptoMechanismSpec).hash!, ...(oaepLabel ? { oaepLabel } : {}) }, secret);
    answer = Buffer.from(cipher(s, 'decrypt', name, key.handle, { data, oaepLabel }, { key, sel, pin })).equals(secret);
  } catch (e) {
    const code = e instanceof WorkerFailure ? e.code : null;
    const ckr = e instanceof WorkerFailure ? e.ckr : (e as Error).message;
    // Refused parameters, or a ciphertext that did not come back: it cannot. A lost session is the
    // caller's to retry, as is a PIN the context login refused. Anything else (a key not for
    // decryption, one that wants a context login, no public half here) says nothing about the parameters.
    if (e instanceof ContextLoginNeeded) {
      // Learnt just now from the token: the key asks for the PIN on every use.
      unpinned = true;
      answer = null;
    } else if (code === 'MECHANISM_INVALID' || code === 'DECRYPTION_FAILED') answer = false;
    else if (ckr && SESSION_LOST_CKRS.has(ckr) && !(key.alwaysAuthenticate && ckr === 'CKR_USER_NOT_LOGGED_IN')) throw e;
    else if (pin !== undefined && (code === 'PIN_INCORRECT' || ckr?.startsWith('CKR_PIN_'))) throw e;
    else answer = null;
  }
  if (answer === null && unpinned && labelled && askPin) throw new ContextLoginNeeded(keyName(sel));
  key.oaep.set(answer === null && unpinned ? `${memo}\0unpinned` : memo, answer);
  return answer;
}

export function mac(s: CryptoSession, task: Extract<WorkerTask, { op: 'mac' }>): Uint8Array {
  const key = keyFor(s, task.key, task.mechanism, 'mac');
  s.p11('C_SignInit').C_SignInit(s.sessionHandle, mechanismFor(s, task.mechanism, {}), key.handle);
  return s.p11('C_Sign').C_Sign(s.sessionHandle, asBuffer(task.data), s.scratch(64));
}

export function verifyMac(s: CryptoSession, task: Extract<WorkerTask, { op: 'verifyMac' }>): boolean {
  const key = keyFor(s, task.key, task.mechanism, 'verifyMac');
  s.p11('C_VerifyInit').C_VerifyInit(s.sessionHandle, mechanismFor(s, task.mechanism, {}), key.handle);
  try {
    return s.p11('C_Verify').C_Verify(s.sessionHandle, Buffer.from(task.data), Buffer.from(task.mac));
  } catch (e) {
    const ckr = (e as Error).message;
    if (ckr === 'CKR_SIGNATURE_INVALID' || ckr === 'CKR_SIGNATURE_LEN_RANGE') return false;
    throw e;
  }
}

export function wrapKey(s: CryptoSession, task: Extract<WorkerTask, { op: 'wrapKey' }>): Uint8Array {
  checkLabelHonoured(s, task);
  const wrapping = keyFor(s, task.key, task.mechanism, 'wrapKey');
  const target = s.key(task.target, task.targetClass === 'privateKey' ? pkcs11js.CKO_PRIVATE_KEY : pkcs11js.CKO_SECRET_KEY);
  const mech = mechanismFor(s, task.mechanism, task);
  let wrapped: Uint8Array = Buffer.alloc(0);
  try {
    init(task.mechanism, () => (wrapped = s.p11('C_WrapKey').C_WrapKey(s.sessionHandle, mech, wrapping.handle, target.handle, Buffer.alloc(16 * 1024))));
  } catch (e) {
    const ckr = (e as Error).message;
    if (ckr !== 'CKR_KEY_UNEXTRACTABLE' && ckr !== 'CKR_KEY_NOT_WRAPPABLE') throw e;
    throw new WorkerFailure('MECHANISM_INVALID', `the key to wrap cannot leave the token (${ckr}): only a key made with CKA_EXTRACTABLE can be wrapped`, ckr);
  }
  return wrapped;
}

/** A new secret key's template: on the token, private and sensitive, for what its type is for. */
function secretKeyTemplate(spec: SecretKeySpec, withLength: boolean): P11.Template {
  const { keyType, bytes } = SECRET_KEY_ALGORITHMS[spec.algorithm];
  const aes = keyType === 'AES';
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: KEY_TYPE_VALUE[keyType] },
    ...(withLength ? [{ type: pkcs11js.CKA_VALUE_LEN, value: bytes }] : []),
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: spec.label },
    { type: pkcs11js.CKA_ID, value: Buffer.from(spec.id ?? randomBytes(8).toString('hex'), 'hex') },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: spec.extractable },
    // What the key is for, and not for: tokens default the rest differently (SoftHSM2 lets an AES key sign).
    { type: pkcs11js.CKA_ENCRYPT, value: aes },
    { type: pkcs11js.CKA_DECRYPT, value: aes },
    { type: pkcs11js.CKA_WRAP, value: aes },
    { type: pkcs11js.CKA_UNWRAP, value: aes },
    { type: pkcs11js.CKA_SIGN, value: !aes },
    { type: pkcs11js.CKA_VERIFY, value: !aes },
  ];
}

export function unwrapKey(s: CryptoSession, task: Extract<WorkerTask, { op: 'unwrapKey' }>): ObjectDescriptor {
  checkLabelHonoured(s, task);
  const unwrapping = keyFor(s, task.key, task.mechanism, 'unwrapKey');
  const mech = mechanismFor(s, task.mechanism, task);
  refuseTakenName(s, ['secretKey'], task.spec.label, task.spec.id);
  let handle: P11.Handle;
  try {
    handle = s.p11('C_UnwrapKey').C_UnwrapKey(s.sessionHandle, mech, unwrapping.handle, Buffer.from(task.wrapped), secretKeyTemplate(task.spec, false));
  } catch (e) {
    const ckr = (e as Error).message;
    if (!NOT_UNWRAPPED.has(ckr)) throw e;
    throw new WorkerFailure('DECRYPTION_FAILED', `${task.mechanism}: the wrapped key does not unwrap under this key (a wrong key, or changed or cut bytes); the token said ${ckr}`, ckr === 'CKR_GENERAL_ERROR' ? undefined : ckr);
  }
  return describe(s, handle);
}

export function generateSecretKey(s: CryptoSession, spec: SecretKeySpec): ObjectDescriptor {
  const aes = SECRET_KEY_ALGORITHMS[spec.algorithm].keyType === 'AES';
  const mechanism = aes ? pkcs11js.CKM_AES_KEY_GEN : pkcs11js.CKM_GENERIC_SECRET_KEY_GEN;
  if (!s.supports(mechanism)) throw new WorkerFailure('MECHANISM_INVALID', `the token cannot generate ${spec.algorithm} keys (no ${aes ? 'CKM_AES_KEY_GEN' : 'CKM_GENERIC_SECRET_KEY_GEN'} in its C_GetMechanismList)`);
  refuseTakenName(s, ['secretKey'], spec.label, spec.id);
  const handle = s.p11('C_GenerateKey').C_GenerateKey(s.sessionHandle, { mechanism }, secretKeyTemplate(spec, true));
  return describe(s, handle);
}

/**
 * ECDH with the token's EC private key. ECDH-SECRET returns the raw shared secret (read from a
 * session object made extractable for that, then destroyed). ECDH derives an AES-256 session
 * key (CKD_NULL: the secret's leftmost 32 bytes) that the call's `then` uses once; the key is
 * sensitive, never leaves the token, and is destroyed when the call ends.
 */
export function deriveKey(s: CryptoSession, task: Extract<WorkerTask, { op: 'deriveKey' }>): Uint8Array {
  const key = keyFor(s, task.key, task.mechanism, 'deriveKey');
  checkPeerPoint(task.publicPoint, key);
  const secret = task.mechanism === 'ECDH-SECRET';
  const mech: P11.Mechanism = { mechanism: ckmOf(task.mechanism), parameter: { type: pkcs11js.CK_PARAMS_EC_DH, kdf: pkcs11js.CKD_NULL, publicData: Buffer.from(task.publicPoint) } as P11.ECDH1 };
  if (!s.supports(mech.mechanism)) throw new WorkerFailure('MECHANISM_INVALID', `the token cannot do ${task.mechanism} (no CKM_ECDH1_DERIVE in its C_GetMechanismList)`);
  const template: P11.Template = [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: secret ? pkcs11js.CKK_GENERIC_SECRET : pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE_LEN, value: secret ? (key.curve?.fieldBytes ?? 0) : ECDH_SESSION_KEY_BYTES },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_SENSITIVE, value: !secret },
    { type: pkcs11js.CKA_EXTRACTABLE, value: secret },
    ...(secret
      ? []
      : [
          { type: pkcs11js.CKA_ENCRYPT, value: true },
          { type: pkcs11js.CKA_DECRYPT, value: true },
        ]),
  ];
  const derived = s.p11('C_DeriveKey').C_DeriveKey(s.sessionHandle, mech, key.handle, template);
  try {
    if (secret) return s.p11('C_GetAttributeValue').C_GetAttributeValue(s.sessionHandle, derived, [{ type: pkcs11js.CKA_VALUE }])[0]!.value as Buffer;
    const then = task.then!;
    return cipher(s, then.op, then.mechanism, derived, then);
  } finally {
    try {
      s.p11('C_DestroyObject').C_DestroyObject(s.sessionHandle, derived);
    } catch {
      // A session object: it ends with the session at the latest.
    }
  }
}
