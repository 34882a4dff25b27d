/** Keys as the client sees them: public keys read from the token, and key pairs generated or imported on it. */
import { createPublicKey } from 'node:crypto';
import { certificateDer, certificateFields, fromPem, fromPkcs12, importObjectsFor } from '../key-import.js';
import { Pkcs11SupervisorError } from '../model/errors.js';
import type { KeyType } from '../model/mechanisms.js';
import { KEY_ALGORITHMS, type KeyAlgorithm, type ObjectDescriptor, type PublicKeyReport } from '../model/protocol.js';
import type { Slot } from '../slot.js';
import * as check from '../validate.js';
import type { Gate } from './gate.js';
import type { GenerateKeyPairRequest, ImportCertificateRequest, ImportKeyPairRequest, PublicKeyInfo, PublicKeyRequest } from './requests.js';

export async function getPublicKey(gate: Gate, request: PublicKeyRequest): Promise<PublicKeyInfo> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'getPublicKey', req.key);
  const report = await gate.call<PublicKeyReport>(slot, 'getPublicKey', { op: 'publicKey', key: check.keySelector(slot, req.key) }, req, { needsLogin: false });
  const spki = Buffer.from(report.spkiDer);
  const keyObject = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  return {
    keyType: report.keyType,
    label: report.label,
    id: report.id,
    uri: report.uri,
    spki,
    pem: keyObject.export({ type: 'spki', format: 'pem' }).toString(),
    // kid: the key's CKA_ID, as signJws puts in its header, so a JWKS built from these matches.
    jwk: report.id ? { ...keyObject.export({ format: 'jwk' }), kid: report.id } : keyObject.export({ format: 'jwk' }),
    keyObject,
  };
}

/** Key type and size (bits, as C_GetMechanismInfo counts them) of each algorithm; Ed25519 is 255 or 256 depending on the vendor. */
/** Node's asymmetricKeyType → the token's key type, for what an imported key may be for. */
const KEY_TYPE_OF_ASYMMETRIC: Record<string, KeyType> = { rsa: 'RSA', ec: 'EC', ed25519: 'EC_EDWARDS' };

const KEYGEN_SIZES: Record<KeyAlgorithm, [KeyType, number[]]> = {
  'RSA-2048': ['RSA', [2048]],
  'RSA-3072': ['RSA', [3072]],
  'RSA-4096': ['RSA', [4096]],
  'EC-P256': ['EC', [256]],
  'EC-P384': ['EC', [384]],
  'EC-P521': ['EC', [521]],
  Ed25519: ['EC_EDWARDS', [255, 256]],
};

export async function generateKeyPair(gate: Gate, request: GenerateKeyPairRequest): Promise<ObjectDescriptor> {
  const asked = gate.request(request);
  const slot = gate.slotFor(asked, 'generateKeyPair');
  const req = asked.timeoutMs === undefined ? { ...asked, timeoutMs: slot.config.keyGenTimeoutMs } : asked;
  gate.writable(slot, 'key generation');
  if (!(KEY_ALGORITHMS as readonly unknown[]).includes(req.algorithm)) throw check.badInput(`algorithm must be one of ${KEY_ALGORITHMS.join(', ')}`, slot.name);
  checkKeyGen(slot, req.algorithm as KeyAlgorithm);
  const spec = {
    algorithm: req.algorithm as KeyAlgorithm,
    label: check.label(req.label, slot.name),
    id: check.hexId(req.id, slot.name),
    extractable: check.flag(req.extractable, 'extractable', slot.name),
    alwaysAuthenticate: check.flag(req.alwaysAuthenticate, 'alwaysAuthenticate', slot.name),
    usage: check.keyUsage(req.usage, KEYGEN_SIZES[req.algorithm as KeyAlgorithm][0], slot.name),
  };
  return gate.publicKeys.changing(slot.name, () => gate.call<ObjectDescriptor>(slot, 'generateKeyPair', { op: 'generateKeyPair', spec }, req, { needsLogin: true, namesObjects: true }));
}

/** Refuses, before queueing, a key type or size the token said (C_GetMechanismInfo) it cannot generate. */
function checkKeyGen(slot: Slot, algorithm: KeyAlgorithm): void {
  if (!slot.token) return; // not opened yet (lazy): the token decides
  const { keyGen } = slot.token;
  const [type, sizes] = KEYGEN_SIZES[algorithm];
  const range = keyGen[type];
  if (range && sizes.some((n) => n >= range.min && n <= range.max)) return;
  const can = Object.entries(keyGen).map(([t, r]) => `${t} ${r!.min}-${r!.max}`).join(', ') || 'none';
  throw new Pkcs11SupervisorError('MECHANISM_INVALID', `the token of slot "${slot.name}" cannot generate ${algorithm}; it generates (key type, sizes in bits): ${can}`, { slot: slot.name });
}

/**
 * Provisioning, not a request-path API: stores a private key, its public key and its
 * certificate(s) under one label and id, all or nothing.
 */
export async function importKeyPair(gate: Gate, request: ImportKeyPairRequest): Promise<ObjectDescriptor[]> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'importKeyPair');
  gate.writable(slot, 'key import');
  const label = check.label(req.label, slot.name);
  let material;
  if (req.pkcs12 !== undefined) {
    if (!(req.pkcs12 instanceof Uint8Array)) throw check.badInput('pkcs12 must be the file contents as a Buffer', slot.name);
    if (typeof req.password !== 'string') throw check.badInput('a PKCS#12 import needs its password', slot.name);
    material = fromPkcs12(req.pkcs12, req.password);
  } else if (req.privateKeyPem !== undefined) {
    material = fromPem(req.privateKeyPem as string, (req.certificates as (string | Uint8Array)[] | undefined) ?? []);
  } else {
    throw check.badInput('importKeyPair needs pkcs12 + password, or privateKeyPem (+ certificates)', slot.name);
  }
  const objects = importObjectsFor(material, label, check.hexId(req.id, slot.name), {
    extractable: check.flag(req.extractable, 'extractable', slot.name),
    alwaysAuthenticate: check.flag(req.alwaysAuthenticate, 'alwaysAuthenticate', slot.name),
    usage: check.keyUsage(req.usage, KEY_TYPE_OF_ASYMMETRIC[material.privateKey.asymmetricKeyType ?? ''] ?? 'RSA', slot.name),
  });
  const replace = check.flag(req.replace, 'replace', slot.name);
  return gate.publicKeys.changing(slot.name, () => gate.call<ObjectDescriptor[]>(slot, 'importKeyPair', { op: 'importObjects', objects, replace }, req, { needsLogin: true, namesObjects: true }));
}

export async function importCertificate(gate: Gate, request: ImportCertificateRequest): Promise<ObjectDescriptor> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'importCertificate');
  gate.writable(slot, 'certificate import');
  const der = certificateDer(req.certificate as string);
  const id = check.hexId(req.id, slot.name);
  if (id === undefined) throw check.badInput('importCertificate needs the id of the key it certifies', slot.name);
  const objects = [{ kind: 'certificate' as const, der, ...certificateFields(der), label: check.label(req.label, slot.name), id }];
  const replace = check.flag(req.replace, 'replace', slot.name);
  const [d] = await gate.call<ObjectDescriptor[]>(slot, 'importCertificate', { op: 'importObjects', objects, replace }, req, { needsLogin: true, namesObjects: true });
  return d!;
}
