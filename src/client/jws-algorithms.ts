/** Compact JWS (RFC 7515) signed on the token. ES* signatures are raw r‖s, as JOSE wants. */
import type { MechanismName } from '../model/mechanisms.js';

export const JWS_ALGS = {
  RS256: 'RSA-PKCS1-SHA256',
  RS384: 'RSA-PKCS1-SHA384',
  RS512: 'RSA-PKCS1-SHA512',
  PS256: 'RSA-PSS-SHA256',
  PS384: 'RSA-PSS-SHA384',
  PS512: 'RSA-PSS-SHA512',
  ES256: 'ECDSA-SHA256',
  ES384: 'ECDSA-SHA384',
  ES512: 'ECDSA-SHA512',
  ES256K: 'ECDSA-SHA256',
  EdDSA: 'EdDSA',
} as const satisfies Record<string, MechanismName>;

export type JwsAlg = keyof typeof JWS_ALGS;

/** RFC 7518 (and RFC 8812 for ES256K) tie each ES* algorithm to one curve. */
export const JWS_CURVE: Partial<Record<JwsAlg, string>> = { ES256: 'P-256', ES384: 'P-384', ES512: 'P-521', ES256K: 'secp256k1', EdDSA: 'Ed25519' };

export function isJwsAlg(alg: unknown): alg is JwsAlg {
  return typeof alg === 'string' && Object.hasOwn(JWS_ALGS, alg);
}

export function b64url(data: Uint8Array | string): string {
  return Buffer.from(data).toString('base64url');
}
