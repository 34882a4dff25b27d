/**
 * The caller's part of a JWS protected header, checked against what is signed: a header that
 * contradicts the call (another alg, a jwk or x5c certificate of another key, a JWE's enc) or one
 * every verifier must reject is BAD_INPUT, never signed as given and never quietly rewritten.
 */
import { X509Certificate, createHash, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import * as check from '../validate.js';

/** Header parameters RFC 7515 defines: `crit` may not name them (section 4.1.11). */
const REGISTERED = new Set(['alg', 'jku', 'jwk', 'kid', 'x5u', 'x5c', 'x5t', 'x5t#S256', 'typ', 'cty', 'crit']);

/** The caller's header parameters: those RFC 7515 types as text, and those that name the signing key or algorithm, checked against them. */
export function checkHeader(header: Record<string, unknown>, alg: string, key: KeyObject, slot: string): void {
  for (const name of ['kid', 'typ', 'cty', 'jku', 'x5u']) {
    if (header[name] !== undefined && typeof header[name] !== 'string') throw check.badInput(`header.${name} must be a string (RFC 7515 section 4.1)`, slot);
  }
  if (header.alg !== undefined && header.alg !== alg) throw check.badInput(`header.alg is ${JSON.stringify(header.alg)} but the call signs with ${alg}; leave header.alg out or give the same`, slot);
  // RFC 7516 section 9: a header with "enc" is a JWE's; a JWS carrying one would be read as a JWE.
  if (header.enc !== undefined) throw check.badInput('header.enc makes the token a JWE (RFC 7516 section 9); a JWS cannot carry it', slot);
  if (header.jwk !== undefined && !isKey(jwkKey(header.jwk), key)) throw check.badInput("header.jwk must be the signing key's public key (RFC 7515 section 4.1.3)", slot);
  checkCertificates(header, key, slot);
}

/** An x5c chain (the caller's or the token's) must start with the signing key's certificate, and x5t/x5t#S256 be that certificate's thumbprints. */
export function checkCertificates(header: Record<string, unknown>, key: KeyObject, slot: string): void {
  if (header.x5c === undefined) return;
  const leaf = leafOf(header.x5c);
  if (!leaf) throw check.badInput('header.x5c must be a non-empty array of base64 DER certificates (RFC 7515 section 4.1.6)', slot);
  if (!isKey(leaf.publicKey, key)) throw check.badInput("header.x5c must start with the signing key's certificate (RFC 7515 section 4.1.6)", slot);
  for (const [name, hash] of [['x5t', 'sha1'], ['x5t#S256', 'sha256']] as const) {
    if (header[name] !== undefined && header[name] !== createHash(hash).update(leaf.raw).digest('base64url')) throw check.badInput(`header.${name} is not the thumbprint of the first certificate in header.x5c`, slot);
  }
}

function isKey(candidate: KeyObject | undefined, key: KeyObject): boolean {
  return candidate !== undefined && candidate.type === 'public' && candidate.equals(key);
}

function jwkKey(jwk: unknown): KeyObject | undefined {
  if (jwk === null || typeof jwk !== 'object' || Array.isArray(jwk) || 'd' in jwk) return undefined;
  try {
    return createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' });
  } catch {
    return undefined;
  }
}

function leafOf(x5c: unknown): X509Certificate | undefined {
  if (!Array.isArray(x5c) || x5c.length === 0 || !x5c.every((c) => typeof c === 'string' && /^[A-Za-z0-9+/]+={0,2}$/.test(c))) return undefined;
  try {
    return new X509Certificate(Buffer.from(x5c[0] as string, 'base64'));
  } catch {
    return undefined;
  }
}

/**
 * RFC 7515 section 4.1.11: `crit` is a non-empty list of extensions the header carries, none
 * defined by the JWS spec itself. A token that breaks it is one every verifier must reject, so it
 * is not signed.
 */
export function checkCritical(header: Record<string, unknown>, slot: string): void {
  const crit = header.crit;
  if (crit === undefined) return;
  if (!Array.isArray(crit) || crit.length === 0 || !crit.every((n) => typeof n === 'string')) throw check.badInput('header.crit must be a non-empty array of header parameter names (RFC 7515 section 4.1.11)', slot);
  for (const [i, name] of (crit as string[]).entries()) {
    if (REGISTERED.has(name)) throw check.badInput(`header.crit cannot name "${name}", which RFC 7515 defines`, slot);
    if (!Object.hasOwn(header, name)) throw check.badInput(`header.crit names "${name}", which the header does not carry`, slot);
    if (crit.indexOf(name) !== i) throw check.badInput(`header.crit names "${name}" twice`, slot);
  }
}

/**
 * RFC 7797: with `b64: false` the payload is signed and carried as it is, not base64url-encoded.
 * The header must then list `b64` in `crit`, and in the compact form the payload can hold no '.'
 * (and must be text). Returns the payload to put in the signing input, or null for the usual form.
 */
export function unencodedPayload(header: Record<string, unknown>, body: string | Uint8Array, slot: string): string | null {
  if (header.b64 === undefined || header.b64 === true) return null;
  if (header.b64 !== false) throw check.badInput('header.b64 must be true or false', slot);
  if (!Array.isArray(header.crit) || !header.crit.includes('b64')) throw check.badInput('an unencoded payload (b64: false) needs "b64" in header.crit (RFC 7797)', slot);
  const text = typeof body === 'string' ? body : Buffer.from(body).toString('utf8');
  if (typeof body !== 'string' && !Buffer.from(text, 'utf8').equals(Buffer.from(body))) throw check.badInput('an unencoded payload (b64: false) must be UTF-8 text in the compact form', slot);
  if (text.includes('.')) throw check.badInput("an unencoded payload (b64: false) cannot contain '.' in the compact form (RFC 7797 section 5.2)", slot);
  return text;
}
