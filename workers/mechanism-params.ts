/**
 * Turns a mechanism name into what the token is asked to do, choosing from what the token
 * reported in C_GetMechanismList: SoftHSM2 2.6 has CKM_ECDSA but not CKM_ECDSA_SHA256, so
 * there the digest is computed here and the token signs it.
 */
import { hash as digest } from 'node:crypto';
import { pkcs11js } from './pkcs11js.js';
import type * as P11 from 'pkcs11js';
import { MECHANISMS, HASH_BYTES, type HashName, type MechanismName } from '../src/model/mechanisms.js';
import { CKM_EDDSA, CKM_EC_EDWARDS_KEY_PAIR_GEN } from './pkcs11-constants.js';
import { WorkerFailure } from './failure.js';
import type { KeySizeRange } from '../src/model/protocol.js';
import type { KeyType } from '../src/model/mechanisms.js';

export interface PreparedMechanism {
  mechanism: P11.Mechanism;
  /** Maps the caller's data to what C_Sign / C_Verify receives. */
  input: (data: Buffer) => Buffer;
}

const DIGEST_INFO_PREFIX: Record<HashName, Buffer> = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};

/** Per digest: the token's mechanisms and parameters that use it. */
const BY_HASH: Record<HashName, { digest: number; mgf1: number; rsaPkcs: number; rsaPss: number; ecdsa: number }> = {
  sha256: { digest: pkcs11js.CKM_SHA256, mgf1: pkcs11js.CKG_MGF1_SHA256, rsaPkcs: pkcs11js.CKM_SHA256_RSA_PKCS, rsaPss: pkcs11js.CKM_SHA256_RSA_PKCS_PSS, ecdsa: pkcs11js.CKM_ECDSA_SHA256 },
  sha384: { digest: pkcs11js.CKM_SHA384, mgf1: pkcs11js.CKG_MGF1_SHA384, rsaPkcs: pkcs11js.CKM_SHA384_RSA_PKCS, rsaPss: pkcs11js.CKM_SHA384_RSA_PKCS_PSS, ecdsa: pkcs11js.CKM_ECDSA_SHA384 },
  sha512: { digest: pkcs11js.CKM_SHA512, mgf1: pkcs11js.CKG_MGF1_SHA512, rsaPkcs: pkcs11js.CKM_SHA512_RSA_PKCS, rsaPss: pkcs11js.CKM_SHA512_RSA_PKCS_PSS, ecdsa: pkcs11js.CKM_ECDSA_SHA512 },
};


const asIs = (data: Buffer): Buffer => data;

function digestOf(hash: HashName, prehashed: boolean): (data: Buffer) => Buffer {
  // One-shot: no Hash object per signature.
  if (!prehashed) return (data) => digest(hash, data, 'buffer');
  return (data) => {
    if (data.length !== HASH_BYTES[hash]) throw new WorkerFailure('BAD_INPUT', `a pre-hashed ${hash} input is ${HASH_BYTES[hash]} bytes, got ${data.length}`);
    return data;
  };
}

/**
 * The mechanisms a token can serve by name. Called once per session open; the per-call
 * path only looks the result up.
 */
export function prepareMechanisms(supported: ReadonlySet<number>): Map<string, PreparedMechanism> {
  const prepared = new Map<string, PreparedMechanism>();
  for (const prehashed of [false, true]) {
    for (const [name, spec] of Object.entries(MECHANISMS)) {
      const p = prepareOne(spec, supported, prehashed);
      if (p) prepared.set(preparedKey(name as MechanismName, prehashed), p);
    }
  }
  return prepared;
}

export function preparedKey(name: MechanismName, prehashed: boolean): string {
  return prehashed ? `${name}#prehashed` : name;
}

function prepareOne(spec: (typeof MECHANISMS)[MechanismName], has: ReadonlySet<number>, prehashed: boolean): PreparedMechanism | null {
  switch (spec.scheme) {
    case 'rsa-raw':
      return has.has(pkcs11js.CKM_RSA_PKCS) ? { mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS }, input: asIs } : null;
    case 'eddsa':
      return has.has(CKM_EDDSA) && !prehashed ? { mechanism: { mechanism: CKM_EDDSA }, input: asIs } : null;
    case 'pkcs1': {
      if (!prehashed && has.has(BY_HASH[spec.hash].rsaPkcs)) return { mechanism: { mechanism: BY_HASH[spec.hash].rsaPkcs }, input: asIs };
      if (!has.has(pkcs11js.CKM_RSA_PKCS)) return null;
      const hashOf = digestOf(spec.hash, prehashed);
      const prefix = DIGEST_INFO_PREFIX[spec.hash];
      return { mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS }, input: (data) => Buffer.concat([prefix, hashOf(data)]) };
    }
    case 'pss': {
      const parameter = {
        type: pkcs11js.CK_PARAMS_RSA_PSS,
        hashAlg: BY_HASH[spec.hash].digest,
        mgf: BY_HASH[spec.hash].mgf1,
        saltLen: HASH_BYTES[spec.hash],
      };
      if (!prehashed && has.has(BY_HASH[spec.hash].rsaPss)) return { mechanism: { mechanism: BY_HASH[spec.hash].rsaPss, parameter }, input: asIs };
      if (!has.has(pkcs11js.CKM_RSA_PKCS_PSS)) return null;
      return { mechanism: { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter }, input: digestOf(spec.hash, prehashed) };
    }
    case 'ecdsa': {
      if (!prehashed && has.has(BY_HASH[spec.hash].ecdsa)) return { mechanism: { mechanism: BY_HASH[spec.hash].ecdsa }, input: asIs };
      if (!has.has(pkcs11js.CKM_ECDSA)) return null;
      return { mechanism: { mechanism: pkcs11js.CKM_ECDSA }, input: digestOf(spec.hash, prehashed) };
    }
  }
}

/** Key-pair generation the token can do, by key type, with the sizes C_GetMechanismInfo allows. */
export function keyGenSizes(p11: (fn: string) => P11.PKCS11, slot: P11.Handle, supported: ReadonlySet<number>): Partial<Record<KeyType, KeySizeRange>> {
  const out: Partial<Record<KeyType, KeySizeRange>> = {};
  const gens: [KeyType, number][] = [
    ['RSA', pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN],
    ['EC', pkcs11js.CKM_EC_KEY_PAIR_GEN],
    ['EC_EDWARDS', CKM_EC_EDWARDS_KEY_PAIR_GEN],
  ];
  for (const [type, mech] of gens) {
    if (!supported.has(mech)) continue;
    const info = p11('C_GetMechanismInfo').C_GetMechanismInfo(slot, mech);
    out[type] = { min: info.minKeySize, max: info.maxKeySize };
  }
  return out;
}

/**
 * CKM_RSA_PKCS pads its input to the modulus with at least 11 bytes (RFC 8017, 9.2): a longer
 * input is the caller's error, refused here. SoftHSM2 answers it with CKR_GENERAL_ERROR, which
 * would read as a broken module.
 */
export function checkPkcs1Room(p: PreparedMechanism, inputBytes: number, modulusBytes: number): void {
  if (p.mechanism.mechanism !== pkcs11js.CKM_RSA_PKCS || modulusBytes === 0 || inputBytes <= modulusBytes - 11) return;
  throw new WorkerFailure('BAD_INPUT', `RSA PKCS#1 v1.5 signs at most ${modulusBytes - 11} bytes with this ${modulusBytes * 8}-bit key; got ${inputBytes}`);
}
