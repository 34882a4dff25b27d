/** sign and verify: checked before anything is queued, batched in the mailbox, verified in Node where that is exact. */
import { isMechanismName, MECHANISMS, type MechanismName } from '../model/mechanisms.js';
import { Pkcs11SupervisorError } from '../model/errors.js';
import type { Slot } from '../slot.js';
import { verifiableInSoftware, verifyInSoftware } from '../software-verify.js';
import * as check from '../validate.js';
import type { Gate, Req } from './gate.js';
import { checkAllowed } from './allow-lists.js';
import { getPublicKey } from './keys.js';
import type { PublicKeyRequest, SignRequest, VerifyRequest } from './requests.js';

export async function sign(gate: Gate, request: SignRequest): Promise<Buffer> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'sign', req.key);
  const mechanism = check.mechanism(req.mechanism, slot.name);
  checkMechanism(gate, slot, req.key, mechanism, req.prehashed === true);
  const task = {
    op: 'sign' as const,
    key: check.keySelector(slot, req.key),
    mechanism,
    data: check.bytes(req.data, 'data', slot),
    prehashed: check.flag(req.prehashed, 'prehashed', slot.name),
    format: check.signatureFormat(req.signatureFormat, slot.name),
  };
  const sig = await gate.call<Uint8Array>(slot, 'sign', task, req, { mechanism, needsLogin: true });
  return Buffer.from(sig.buffer, sig.byteOffset, sig.byteLength);
}

/**
 * Verifies a signature. With `softwareVerify` (the default) public-key mechanisms are checked
 * in Node with the token's public key, so a verify never queues behind signatures.
 */
export async function verify(gate: Gate, request: VerifyRequest): Promise<boolean> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'verify', req.key);
  const mechanism = check.mechanism(req.mechanism, slot.name);
  checkMechanism(gate, slot, req.key, mechanism, req.prehashed === true);
  const prehashed = check.flag(req.prehashed, 'prehashed', slot.name);
  if (slot.config.softwareVerify && verifiableInSoftware(mechanism, prehashed)) return verifyHere(gate, slot, mechanism, req);
  const task = {
    op: 'verify' as const,
    key: check.keySelector(slot, req.key),
    mechanism,
    data: check.bytes(req.data, 'data', slot),
    signature: check.bytes(req.signature, 'signature', slot),
    prehashed,
    format: check.signatureFormat(req.signatureFormat, slot.name),
  };
  return gate.call<boolean>(slot, 'verify', task, req, { mechanism, needsLogin: false });
}

async function verifyHere(gate: Gate, slot: Slot, mechanism: MechanismName, req: Req): Promise<boolean> {
  gate.auditWritable('verify', slot);
  const data = check.bytes(req.data, 'data', slot);
  const signature = check.bytes(req.signature, 'signature', slot);
  const format = check.signatureFormat(req.signatureFormat, slot.name);
  const info = await gate.publicKeys.get(slot.name, check.keySelector(slot, req.key), slot.config.keyCheckMs, () => getPublicKey(gate, { ...req, slot: slot.name, signal: undefined } as PublicKeyRequest));
  const needs = MECHANISMS[mechanism].keyType;
  if (info.keyType !== needs) {
    throw new Pkcs11SupervisorError('MECHANISM_INVALID', `${mechanism} needs a key of type ${needs}; key ${check.shown(req.key)} is ${info.keyType}`, { slot: slot.name });
  }
  const startedAt = performance.timeOrigin + performance.now();
  const valid = verifyInSoftware(mechanism, info.keyObject, data, signature, format);
  await gate.completedHere('verify', slot, mechanism, req, valid ? 'valid' : 'invalid', startedAt, performance.timeOrigin + performance.now());
  return valid;
}

/** Refuses, before queueing, a mechanism the config or the token does not allow, or one for another key type. */
function checkMechanism(gate: Gate, slot: Slot, key: unknown, mechanism: MechanismName, prehashed: boolean): void {
  checkAllowed(gate, slot, key, mechanism);
  const { mechanisms, keyTypes } = slot.capabilities;
  if (!prehashed && mechanisms.size > 0 && !mechanisms.has(mechanism)) {
    throw new Pkcs11SupervisorError('MECHANISM_INVALID', `the token of slot "${slot.name}" cannot do ${mechanism}; it can do: ${[...mechanisms].filter(isMechanismName).join(', ')}`, { slot: slot.name });
  }
  const keyType = typeof key === 'string' ? keyTypes.get(key) : undefined;
  if (keyType && keyType !== MECHANISMS[mechanism].keyType) {
    throw new Pkcs11SupervisorError('MECHANISM_INVALID', `${mechanism} needs a key of type ${MECHANISMS[mechanism].keyType}; key "${String(key)}" is ${keyType}`, { slot: slot.name });
  }
}
