/** The service API's request bodies: JSON only. */
import type { FastifyRequest } from 'fastify';
import secureJson from 'secure-json-parse';
import { Pkcs11SupervisorError } from '../model/errors.js';

/**
 * Fastify's own JSON parser (secure-json-parse, prototype poisoning refused) with the reason in
 * its refusal: Fastify's says only "not valid JSON". The reason never quotes the body (V8's
 * messages can), which may hold a PIN.
 */
export function parseJsonBody(request: FastifyRequest, raw: Buffer, done: (err: Error | null, body?: unknown) => void): void {
  const coding = request.headers['content-encoding'];
  if (coding !== undefined && coding.trim().toLowerCase() !== 'identity') {
    // Read as it stands, a body sent compressed would be refused as "not valid JSON", or a body
    // labelled compressed but sent plain would be signed: neither is what the caller meant (RFC 9110 15.5.16).
    return done(Object.assign(new Pkcs11SupervisorError('BAD_INPUT', `the request body is sent with content-encoding ${JSON.stringify(coding.slice(0, 40))}; the daemon takes plain JSON only`), { statusCode: 415 }));
  }
  const charset = charsetOf(request.headers['content-type']);
  if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') {
    // JSON between systems is UTF-8 (RFC 8259 8.1): a body in another encoding, read as UTF-8, would name other labels.
    return done(Object.assign(new Pkcs11SupervisorError('BAD_INPUT', `the request body is labelled charset=${JSON.stringify(charset.slice(0, 40))}; the daemon takes JSON in UTF-8 only`), { statusCode: 415 }));
  }
  let body: string;
  try {
    body = utf8.decode(raw);
  } catch {
    // Decoded loosely, each bad byte would become U+FFFD inside a label or an id.
    return done(new Pkcs11SupervisorError('BAD_INPUT', 'the request body is not UTF-8'));
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

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The charset parameter of a content type, lower case; undefined when it names none. */
function charsetOf(contentType: string | undefined): string | undefined {
  const match = contentType === undefined ? null : /;\s*charset\s*=\s*"?([^";\s]*)/i.exec(contentType);
  return match ? match[1]!.toLowerCase() : undefined;
}
