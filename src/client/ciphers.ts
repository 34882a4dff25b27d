/**
 * Encryption, MACs, key wrapping and key agreement with keys on the token: checked before
 * anything is queued, then through the same mailbox, policy, audit and metrics as sign. RSA-OAEP
 * encryption needs only the public key and runs in Node, as a verify does.
 */
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import {
  AES_BLOCK_BYTES,
  CRYPTO_MECHANISMS,
  CRYPTO_MECHANISM_NAMES,
  GCM_IV_BYTES,
  GCM_TAG_BYTES,
  isCryptoMechanismName,
  SECRET_KEY_ALGORITHM_NAMES,
  type CryptoMechanismName,
  type CryptoMechanismSpec,
  type CryptoOp,
  type SecretKeyAlgorithm,
} from '../model/crypto-mechanisms.js';
import { Pkcs11SupervisorError } from '../model/errors.js';
import type { CipherInput, KeySelector, ObjectDescriptor, SecretKeySpec } from '../model/protocol.js';
import type { Slot } from '../slot.js';
import * as check from '../validate.js';
import { checkAllowed } from './allow-lists.js';
import type { Gate, Req } from './gate.js';
import { getPublicKey } from './keys.js';
import type {
  CipherRequest,
  DeriveKeyRequest,
  DeriveKeyResult,
  EncryptResult,
  GenerateSecretKeyRequest,
  MacRequest,
  PublicKeyRequest,
  UnwrapKeyRequest,
  VerifyMacRequest,
  WrapKeyRequest,
} from './requests.js';

/** The mechanism named for `op`, allowed by the config and within what the token reported. */
function mechanismFor(gate: Gate, slot: Slot, name: unknown, op: CryptoOp, key: unknown): CryptoMechanismName {
  if (!isCryptoMechanismName(name)) {
    const known = CRYPTO_MECHANISM_NAMES.filter((n) => (CRYPTO_MECHANISMS[n].ops as readonly CryptoOp[]).includes(op));
    throw new Pkcs11SupervisorError('MECHANISM_INVALID', `unknown mechanism ${check.shown(name)} for ${op}; known: ${known.join(', ')}`, { slot: slot.name });
  }
  const spec = CRYPTO_MECHANISMS[name];
  if (!(spec.ops as readonly CryptoOp[]).includes(op)) throw new Pkcs11SupervisorError('MECHANISM_INVALID', `${name} is not for ${op}; it is for ${spec.ops.join(', ')}`, { slot: slot.name });
  checkAllowed(gate, slot, key, name, 'explicit' in spec);
  const { mechanisms, keyTypes } = slot.capabilities;
  // RSA-OAEP encryption runs here, with the public key: the token need not do it.
  const onToken = !(op === 'encrypt' && spec.scheme === 'rsa-oaep');
  if (onToken && mechanisms.size > 0 && !mechanisms.has(name)) {
    throw new Pkcs11SupervisorError('MECHANISM_INVALID', `the token of slot "${slot.name}" cannot do ${name} (not in its C_GetMechanismList)`, { slot: slot.name });
  }
  const keyType = typeof key === 'string' ? keyTypes.get(key) : undefined;
  if (keyType && keyType !== spec.keyType) throw new Pkcs11SupervisorError('MECHANISM_INVALID', `${name} needs a key of type ${spec.keyType}; key "${key}" is ${keyType}`, { slot: slot.name });
  return name;
}

function optionalBytes(value: unknown, what: string, slot: Slot): Uint8Array | undefined {
  if (value === undefined) return undefined;
  if (!(value instanceof Uint8Array)) throw check.badInput(`${what} must be a Buffer or Uint8Array`, slot.name);
  if (value.byteLength > slot.config.maxDataBytes) throw check.badInput(`${what} is ${value.byteLength} bytes; slot "${slot.name}" accepts at most ${slot.config.maxDataBytes} (maxDataBytes)`, slot.name);
  return value;
}

/**
 * The IV, AAD and label a call gives, checked against its mechanism. For encryption an IV left
 * out is made here (random); a GCM IV is refused if this process used it with the key before.
 */
function cipherInput(slot: Slot, name: CryptoMechanismName, op: 'encrypt' | 'decrypt', req: Req, gcmKey: KeySelector | null): CipherInput {
  const { scheme } = CRYPTO_MECHANISMS[name];
  const data = check.bytes(req.data, op === 'encrypt' ? 'data' : 'the ciphertext (data)', slot);
  let iv = optionalBytes(req.iv, 'iv', slot);
  const aad = optionalBytes(req.aad, 'aad', slot);
  const oaepLabel = optionalBytes(req.oaepLabel, 'oaepLabel', slot);
  if (aad !== undefined && scheme !== 'aes-gcm') throw check.badInput(`aad is for AES-GCM, not ${name}`, slot.name);
  if (oaepLabel !== undefined && scheme !== 'rsa-oaep') throw check.badInput(`oaepLabel is for RSA-OAEP, not ${name}`, slot.name);
  if (scheme !== 'aes-gcm' && scheme !== 'aes-cbc-pad') {
    if (iv !== undefined) throw check.badInput(`${name} takes no iv`, slot.name);
    return { data, aad, oaepLabel };
  }
  const ivBytes = scheme === 'aes-gcm' ? GCM_IV_BYTES : AES_BLOCK_BYTES;
  if (iv !== undefined && iv.byteLength !== ivBytes) throw check.badInput(`${name} takes a ${ivBytes}-byte iv, not ${iv.byteLength}`, slot.name);
  if (op === 'decrypt') {
    if (iv === undefined) throw check.badInput(`${name} decryption needs the iv the data was encrypted with`, slot.name);
    if (scheme === 'aes-gcm' && data.byteLength < GCM_TAG_BYTES) throw check.badInput(`an AES-GCM ciphertext ends with its ${GCM_TAG_BYTES}-byte tag; this one is ${data.byteLength} bytes (truncated?)`, slot.name);
    if (scheme === 'aes-cbc-pad' && data.byteLength % AES_BLOCK_BYTES !== 0) throw check.badInput(`an AES-CBC-PAD ciphertext is whole ${AES_BLOCK_BYTES}-byte blocks; this one is ${data.byteLength} bytes (truncated?)`, slot.name);
    return { data, iv, aad };
  }
  const chosen = iv !== undefined;
  iv ??= randomBytes(ivBytes);
  if (gcmKey !== null && scheme === 'aes-gcm' && !slot.gcmIvs.claim(gcmKey, iv, chosen)) {
    throw check.badInput(`this AES-GCM iv was used with this key before (or too many caller IVs to track): an IV must never repeat under a key. Leave iv out and the daemon makes a fresh one`, slot.name);
  }
  return { data, iv, aad };
}

const asBuffer = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

export async function encrypt(gate: Gate, request: CipherRequest): Promise<EncryptResult> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'encrypt', req.key);
  const mechanism = mechanismFor(gate, slot, req.mechanism, 'encrypt', req.key);
  const key = check.keySelector(slot, req.key);
  if (CRYPTO_MECHANISMS[mechanism].scheme === 'rsa-oaep') return encryptHere(gate, slot, mechanism, key, req);
  const input = cipherInput(slot, mechanism, 'encrypt', req, key);
  let ciphertext: Uint8Array;
  try {
    ciphertext = await gate.call<Uint8Array>(slot, 'encrypt', { op: 'encrypt', key, mechanism, ...input }, req, { mechanism, needsLogin: true });
  } catch (e) {
    if (CRYPTO_MECHANISMS[mechanism].scheme === 'aes-gcm') slot.gcmIvs.release(key, input.iv!);
    throw e;
  }
  return { ciphertext: asBuffer(ciphertext), iv: asBuffer(input.iv!) };
}

/** RSA-OAEP with the public key the token holds now, in Node. */
async function encryptHere(gate: Gate, slot: Slot, mechanism: CryptoMechanismName, key: KeySelector, req: Req): Promise<EncryptResult> {
  gate.auditWritable('encrypt', slot);
  const input = cipherInput(slot, mechanism, 'encrypt', req, null);
  const info = await gate.publicKeys.get(slot.name, key, slot.config.keyCheckMs, () => getPublicKey(gate, { ...req, slot: slot.name, signal: undefined } as PublicKeyRequest));
  if (info.keyType !== 'RSA') throw new Pkcs11SupervisorError('MECHANISM_INVALID', `${mechanism} needs a key of type RSA; this key is ${info.keyType}`, { slot: slot.name });
  // A ciphertext the key's token cannot decrypt is data lost: the token proves it can first (crypto-ops.ts).
  const labelled = (input.oaepLabel?.length ?? 0) > 0;
  if ((await gate.call<boolean | null>(slot, 'encrypt', { op: 'oaepDecryptable', key, mechanism, labelled }, req, { mechanism, needsLogin: true })) === false) {
    throw new Pkcs11SupervisorError('MECHANISM_INVALID', `the token of slot "${slot.name}" cannot decrypt ${mechanism}${labelled ? ' with a label' : ''} with this key, so nothing encrypted that way could be decrypted again`, { slot: slot.name });
  }
  const startedAt = performance.timeOrigin + performance.now();
  let ciphertext: Buffer;
  try {
    ciphertext = publicEncrypt(
      { key: info.keyObject, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: (CRYPTO_MECHANISMS[mechanism] as CryptoMechanismSpec).hash!, ...(input.oaepLabel ? { oaepLabel: input.oaepLabel } : {}) },
      input.data,
    );
  } catch (e) {
    throw check.badInput(`${mechanism}: ${(e as Error).message} (the data is too long for this key and hash?)`, slot.name);
  }
  await gate.completedHere('encrypt', slot, mechanism, req, 'ok', startedAt, performance.timeOrigin + performance.now());
  return { ciphertext };
}

export async function decrypt(gate: Gate, request: CipherRequest): Promise<Buffer> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'decrypt', req.key);
  const mechanism = mechanismFor(gate, slot, req.mechanism, 'decrypt', req.key);
  const key = check.keySelector(slot, req.key);
  const input = cipherInput(slot, mechanism, 'decrypt', req, null);
  return asBuffer(await gate.call<Uint8Array>(slot, 'decrypt', { op: 'decrypt', key, mechanism, ...input }, req, { mechanism, needsLogin: true }));
}

export async function mac(gate: Gate, request: MacRequest): Promise<Buffer> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'mac', req.key);
  const mechanism = mechanismFor(gate, slot, req.mechanism, 'mac', req.key);
  const task = { op: 'mac' as const, key: check.keySelector(slot, req.key), mechanism, data: check.bytes(req.data, 'data', slot) };
  return asBuffer(await gate.call<Uint8Array>(slot, 'mac', task, req, { mechanism, needsLogin: true }));
}

export async function verifyMac(gate: Gate, request: VerifyMacRequest): Promise<boolean> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'verifyMac', req.key);
  const mechanism = mechanismFor(gate, slot, req.mechanism, 'verifyMac', req.key);
  const task = { op: 'verifyMac' as const, key: check.keySelector(slot, req.key), mechanism, data: check.bytes(req.data, 'data', slot), mac: check.bytes(req.mac, 'mac', slot) };
  return gate.call<boolean>(slot, 'verifyMac', task, req, { mechanism, needsLogin: true });
}

function secretKeySpec(slot: Slot, req: Req): SecretKeySpec {
  if (!(SECRET_KEY_ALGORITHM_NAMES as readonly unknown[]).includes(req.algorithm)) throw check.badInput(`algorithm must be one of ${SECRET_KEY_ALGORITHM_NAMES.join(', ')}`, slot.name);
  return {
    algorithm: req.algorithm as SecretKeyAlgorithm,
    label: check.label(req.label, slot.name),
    id: check.hexId(req.id, slot.name),
    extractable: check.flag(req.extractable, 'extractable', slot.name),
  };
}

export async function generateSecretKey(gate: Gate, request: GenerateSecretKeyRequest): Promise<ObjectDescriptor> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'generateSecretKey');
  gate.writable(slot, 'key generation');
  const spec = secretKeySpec(slot, req);
  return gate.call<ObjectDescriptor>(slot, 'generateSecretKey', { op: 'generateSecretKey', spec }, req, { needsLogin: true, namesObjects: true });
}

export async function wrapKey(gate: Gate, request: WrapKeyRequest): Promise<Buffer> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'wrapKey', req.key);
  const mechanism = mechanismFor(gate, slot, req.mechanism, 'wrapKey', req.key);
  const target = check.keySelector(slot, req.target);
  // A target URI's type names the class to wrap, as targetClass does: they must agree.
  const named = check.uriObjectClass(req.target);
  const targetClass = req.targetClass ?? (named === 'privateKey' ? named : 'secretKey');
  if (targetClass !== 'secretKey' && targetClass !== 'privateKey') throw check.badInput('targetClass must be "secretKey" or "privateKey"', slot.name);
  if (named && named !== targetClass) throw check.badInput(`the target URI names a ${named} (its type); wrapKey wraps the ${targetClass} of that name`, slot.name);
  const task = {
    op: 'wrapKey' as const,
    key: check.keySelector(slot, req.key),
    mechanism,
    target,
    targetClass: targetClass as 'secretKey' | 'privateKey',
    oaepLabel: optionalBytes(req.oaepLabel, 'oaepLabel', slot),
  };
  return asBuffer(await gate.call<Uint8Array>(slot, 'wrapKey', task, req, { mechanism, needsLogin: true }));
}

export async function unwrapKey(gate: Gate, request: UnwrapKeyRequest): Promise<ObjectDescriptor> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'unwrapKey', req.key);
  gate.writable(slot, 'key unwrapping');
  const mechanism = mechanismFor(gate, slot, req.mechanism, 'unwrapKey', req.key);
  const task = {
    op: 'unwrapKey' as const,
    key: check.keySelector(slot, req.key),
    mechanism,
    wrapped: check.bytes(req.wrapped, 'wrapped', slot),
    spec: secretKeySpec(slot, req),
    oaepLabel: optionalBytes(req.oaepLabel, 'oaepLabel', slot),
  };
  return gate.call<ObjectDescriptor>(slot, 'unwrapKey', task, req, { mechanism, needsLogin: true, namesObjects: true });
}

/** The peer's EC public key as the uncompressed point CKM_ECDH1_DERIVE takes. */
function peerPoint(value: unknown, slot: Slot): Uint8Array {
  if (value instanceof Uint8Array && value[0] === 0x04 && value.byteLength % 2 === 1 && value.byteLength <= 133) return value;
  try {
    const key = createPublicKey(value instanceof Uint8Array ? { key: Buffer.from(value), format: 'der', type: 'spki' } : { key: String(value), format: 'pem' });
    const jwk = key.export({ format: 'jwk' });
    if (jwk.kty !== 'EC' || !jwk.x || !jwk.y) throw new Error(`it is a key of type ${jwk.kty}, not EC`);
    return Buffer.concat([Buffer.from([0x04]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]);
  } catch (e) {
    throw check.badInput(`publicKey must be the peer's EC public key (SPKI PEM or DER, or an uncompressed point): ${(e as Error).message}`, slot.name);
  }
}

export async function deriveKey(gate: Gate, request: DeriveKeyRequest): Promise<DeriveKeyResult> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'deriveKey', req.key);
  const mechanism = mechanismFor(gate, slot, req.mechanism, 'deriveKey', req.key) as 'ECDH' | 'ECDH-SECRET';
  const key = check.keySelector(slot, req.key);
  const publicPoint = peerPoint(req.publicKey, slot);
  if (mechanism === 'ECDH-SECRET') {
    if (req.then !== undefined) throw check.badInput('ECDH-SECRET returns the secret; `then` is for ECDH', slot.name);
    const secret = await gate.call<Uint8Array>(slot, 'deriveKey', { op: 'deriveKey', key, mechanism, publicPoint }, req, { mechanism, needsLogin: true });
    return { secret: asBuffer(secret) };
  }
  const then = req.then as DeriveKeyRequest['then'] | undefined;
  if (!then || (then.op !== 'encrypt' && then.op !== 'decrypt')) throw check.badInput('ECDH needs `then: { op: "encrypt" | "decrypt", mechanism, data, … }`: the session key it derives is used by that call only', slot.name);
  if (then.mechanism !== 'AES-GCM' && then.mechanism !== 'AES-CBC-PAD') throw check.badInput('then.mechanism must be AES-GCM or AES-CBC-PAD', slot.name);
  // The same key pair derives the same session key every time: an encryption always gets a fresh IV of the daemon's.
  if (then.op === 'encrypt' && then.iv !== undefined) throw check.badInput('then.iv: an ECDH session key repeats with its key pair, so the daemon makes every IV for it', slot.name);
  const input = cipherInput(slot, then.mechanism, then.op, then as unknown as Req, null);
  const task = { op: 'deriveKey' as const, key, mechanism, publicPoint, then: { op: then.op, mechanism: then.mechanism, ...input } };
  const out = asBuffer(await gate.call<Uint8Array>(slot, 'deriveKey', task, req, { mechanism, needsLogin: true }));
  return then.op === 'encrypt' ? { ciphertext: out, iv: asBuffer(input.iv!) } : { plaintext: out };
}
