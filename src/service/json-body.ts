/** The service API's request bodies: JSON only. */
import type { FastifyRequest } from 'fastify';
import secureJson from 'secure-json-parse';
import { Pkcs11SupervisorError } from '../model/errors.js';

/**
 * Fastify's own JSON parser (secure-json-parse, prototype poisoning refused) with the reason in
 * its refusal: Fastify's says only "not valid JSON". The reason never quotes the body (V8's
 * messages can), which may hold a PIN.
 */
export function parseJsonBody(request: FastifyRequest, body: string, done: (err: Error | null, body?: unknown) => void): void {
  const coding = request.headers['content-encoding'];
  if (coding !== undefined && coding.trim().toLowerCase() !== 'identity') {
    // Read as it stands, a body sent compressed would be refused as "not valid JSON", or a body
    // labelled compressed but sent plain would be signed: neither is what the caller meant (RFC 9110 15.5.16).
    return done(Object.assign(new Pkcs11SupervisorError('BAD_INPUT', `the request body is sent with content-encoding ${JSON.stringify(coding.slice(0, 40))}; the daemon takes plain JSON only`), { statusCode: 415 }));
  }
  if (body.length === 0) return done(null, undefined); // the empty request (see preValidation)
  try {
    done(null, secureJson.parse(body, { protoAction: 'error', constructorAction: 'error' }));
  } catch (e) {
    const message = (e as Error).message;
    const at = Number(/at position (\d+)/.exec(message)?.[1] ?? NaN);
    const cutShort = message.includes('end of JSON input') || at >= body.trimEnd().length;
    const why = message.includes('forbidden prototype property') ? 'has a __proto__ or constructor.prototype key' : cutShort ? 'ends before its JSON does' : `is not valid JSON${Number.isNaN(at) ? '' : ` (at character ${at})`}`;
    done(new Pkcs11SupervisorError('BAD_INPUT', `the request body ${why}`));
  }
}
