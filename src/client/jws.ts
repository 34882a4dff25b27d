/** A compact JWS (RFC 7515) signed on the token. */
import { Pkcs11SupervisorError } from '../model/errors.js';
import * as check from '../validate.js';
import type { Gate } from './gate.js';
import { JWS_ALGS, JWS_CURVE, b64url, isJwsAlg } from './jws-algorithms.js';
import { checkCertificates, checkCritical, checkHeader, unencodedPayload } from './jws-header.js';
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
  const given: Record<string, unknown> = { ...(extra as Record<string, unknown> | undefined) };
  if (req.x5c === true && given.x5c !== undefined) throw check.badInput("give x5c: true (the token's certificate chain) or header.x5c, not both", slot.name);
  // The caller's header is checked before the token is asked for anything more.
  checkHeader(given, alg, info.keyObject, slot.name);
  const header: Record<string, unknown> = { ...given, alg, kid: given.kid ?? info.id };
  checkCritical(header, slot.name);
  const unencoded = unencodedPayload(header, body, slot.name);
  if (req.x5c === true) {
    header.x5c = (await getCertificate(gate, { ...req, slot: slot.name, key } as PublicKeyRequest)).chain.map((c) => c.der.toString('base64'));
    checkCertificates(header, info.keyObject, slot.name);
  }
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
