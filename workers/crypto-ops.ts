/**
 * Encryption, key wrapping, MACs and key agreement on the session thread's session. Each
 * function is one call's PKCS#11 work: the key looked up as for signing, the mechanism asked
 * for only if the token listed it, every object made for the call (an ECDH session key, a
 * secret read out) destroyed before the call ends.
 */
import { createPublicKey, randomBytes } from 'node:crypto';
import type * as P11 from 'pkcs11js';
import { asBuffer, pkcs11js } from './pkcs11js.js';
import { WorkerFailure } from './failure.js';
import { describe } from './object-ops.js';
import { refuseTakenName } from './key-creation.js';
import type { CachedKey } from './key-finder.js';
import { KEY_TYPE_VALUE } from './token-info.js';
import { cipher, ckmOf, init, keyFor, mechanismFor, NOT_UNWRAPPED, type CryptoSession } from './cipher-core.js';
import { checkLabelHonoured } from './oaep-check.js';
import { ECDH_SESSION_KEY_BYTES, SECRET_KEY_ALGORITHMS } from '../src/model/crypto-mechanisms.js';
import type { ObjectDescriptor, SecretKeySpec, WorkerTask } from '../src/model/protocol.js';

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

export function encrypt(s: CryptoSession, task: Extract<WorkerTask, { op: 'encrypt' }>): Uint8Array {
  return cipher(s, 'encrypt', task.mechanism, keyFor(s, task.key, task.mechanism, 'encrypt').handle, task);
}

export function decrypt(s: CryptoSession, task: Extract<WorkerTask, { op: 'decrypt' }>): Uint8Array {
  const key = keyFor(s, task.key, task.mechanism, 'decrypt');
  const pin = s.contextPinFor(key, task.key, task.contextPin);
  checkLabelHonoured(s, task, pin);
  return cipher(s, 'decrypt', task.mechanism, key.handle, task, { key, sel: task.key, pin });
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
