/** A compact JWS (RFC 7515) signed on the token. */
import { Pkcs11SupervisorError } from '../model/errors.js';
import * as check from '../validate.js';
import type { Gate } from './gate.js';
import { JWS_ALGS, JWS_CURVE, b64url, isJwsAlg } from './jws-algorithms.js';
import { getPublicKey } from './keys.js';
import { getCertificate } from './objects.js';
import type { KeyRef, PublicKeyRequest, SignJwsRequest, SignRequest } from './requests.js';
import { sign } from './signing.js';

/**
 * Authorized, audited and counted as the `getPublicKey` (for `kid` and the curve check, cached)
 * and the `sign` it makes; `kid` defaults to the key's CKA_ID (hex).
 */
export async function signJws(gate: Gate, request: SignJwsRequest): Promise<string> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'sign', req.key);
  if (!isJwsAlg(req.alg)) throw new Pkcs11SupervisorError('MECHANISM_INVALID', `alg must be one of ${Object.keys(JWS_ALGS).join(', ')}`, { slot: slot.name });
  const alg = req.alg;
  const key = req.key as KeyRef;
  const info = await gate.publicKeys.get(slot.name, check.keySelector(slot, key), slot.config.keyCheckMs, () => getPublicKey(gate, { ...req, slot: slot.name, key, signal: undefined } as PublicKeyRequest));
  const curve = JWS_CURVE[alg];
  if (curve && info.jwk.crv !== curve) {
    throw new Pkcs11SupervisorError('MECHANISM_INVALID', `${alg} needs a ${curve} key; key is ${info.jwk.crv ?? info.keyType}`, { slot: slot.name });
  }
  // RFC 7518 3.3, 3.5: RS* and PS* keys are 2048 bits or more, and verifiers (jose among them) refuse smaller ones.
  const bits = info.keyObject.asymmetricKeyDetails?.modulusLength ?? 0;
  if (info.keyType === 'RSA' && bits < 2048) throw new Pkcs11SupervisorError('MECHANISM_INVALID', `${alg} needs an RSA key of 2048 bits or more (RFC 7518); key is ${bits} bits`, { slot: slot.name });
  const payload = req.payload;
  const body = typeof payload === 'string' || payload instanceof Uint8Array ? payload : payload && typeof payload === 'object' ? asJson(payload, 'payload', slot.name) : undefined;
  if (body === undefined) throw check.badInput('payload must be a string, bytes or an object', slot.name);
  const extra = req.header;
  if (extra !== undefined && (extra === null || typeof extra !== 'object' || Array.isArray(extra))) throw check.badInput('header must be an object of header parameters', slot.name);
  const header: Record<string, unknown> = { ...(extra as Record<string, unknown> | undefined), alg, kid: (extra as { kid?: unknown } | undefined)?.kid ?? info.id };
  checkCritical(header, slot.name);
  const unencoded = unencodedPayload(header, body, slot.name);
  if (req.x5c === true) header.x5c = (await getCertificate(gate, { ...req, slot: slot.name, key } as PublicKeyRequest)).chain.map((c) => c.der.toString('base64'));
  const signingInput = `${b64url(asJson(header, 'header', slot.name))}.${unencoded ?? b64url(body)}`;
  const sig = await sign(gate, { ...req, slot: slot.name, key, mechanism: JWS_ALGS[alg], data: Buffer.from(signingInput), signatureFormat: 'raw' } as SignRequest);
  return `${signingInput}.${b64url(sig)}`;
}

/** JSON text of a caller's object; one JSON cannot carry (a BigInt, a cycle) is BAD_INPUT. */
function asJson(value: object, what: string, slot: string): string {
  try {
    return JSON.stringify(value);
  } catch (e) {
    throw check.badInput(`${what} cannot be written as JSON: ${(e as Error).message.split('\n')[0]}`, slot);
  }
}

/** Header parameters RFC 7515 defines: `crit` may not name them (section 4.1.11). */
const REGISTERED = new Set(['alg', 'jku', 'jwk', 'kid', 'x5u', 'x5c', 'x5t', 'x5t#S256', 'typ', 'cty', 'crit']);

/**
 * RFC 7515 section 4.1.11: `crit` is a non-empty list of extensions the header carries, none
 * defined by the JWS spec itself. A token that breaks it is one every verifier must reject, so it
 * is not signed.
 */
function checkCritical(header: Record<string, unknown>, slot: string): void {
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
function unencodedPayload(header: Record<string, unknown>, body: string | Uint8Array, slot: string): string | null {
  if (header.b64 === undefined || header.b64 === true) return null;
  if (header.b64 !== false) throw check.badInput('header.b64 must be true or false', slot);
  if (!Array.isArray(header.crit) || !header.crit.includes('b64')) throw check.badInput('an unencoded payload (b64: false) needs "b64" in header.crit (RFC 7797)', slot);
  const text = typeof body === 'string' ? body : Buffer.from(body).toString('utf8');
  if (typeof body !== 'string' && !Buffer.from(text, 'utf8').equals(Buffer.from(body))) throw check.badInput('an unencoded payload (b64: false) must be UTF-8 text in the compact form', slot);
  if (text.includes('.')) throw check.badInput("an unencoded payload (b64: false) cannot contain '.' in the compact form (RFC 7797 section 5.2)", slot);
  return text;
}
