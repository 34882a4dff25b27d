/**
 * The pieces of the service API's JSON: binary fields as base64, and the shapes of the results
 * that carry Buffers, KeyObjects or certificates. Each is a zod codec from the wire (JSON) to
 * what the in-process client takes or returns: the server decodes requests and encodes
 * results with it, the remote client does the reverse, and the OpenAPI document describes its
 * wire side. One definition, both ends of the connection.
 */
import { createPublicKey, X509Certificate, type JsonWebKey } from 'node:crypto';
import { z } from 'zod';
import { KEY_TYPES } from '../model/mechanisms.js';
import { KEY_ALGORITHMS, OBJECT_CLASSES, type ObjectDescriptor } from '../model/protocol.js';

const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const toBase64 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');

/** Bytes: base64 on the wire, a Buffer in the process. */
export const bytes = (description: string) =>
  z.codec(z.base64().describe(`${description} (base64)`), z.custom<Uint8Array>(isBytes, { message: 'must be a Buffer or Uint8Array' }), {
    decode: (s) => Buffer.from(s, 'base64'),
    encode: toBase64,
  });

/** Text that may also be given as bytes in the process (a PEM file read without an encoding). */
const pemText = (description: string) =>
  z.codec(z.string().min(1).max(1 << 20).describe(description), z.union([z.string(), z.custom<Uint8Array>(isBytes)]), {
    decode: (s) => s,
    encode: (v) => (typeof v === 'string' ? v : Buffer.from(v).toString('utf8')),
  });

const BASE64 = z.base64();
const isPem = (s: string) => s.trimStart().startsWith('-----BEGIN');

/**
 * PEM text, or bytes in base64, told apart by the PEM header; text or bytes in the process. The
 * base64 is checked as strictly as every other binary field: Buffer.from skips what is not
 * base64, so a stray character would shift the bits after it into other bytes rather than be refused.
 */
export const pemOrBytes = (description: string, max: number) =>
  z.codec(
    z
      .string()
      .min(1)
      .max(max)
      .refine((s) => isPem(s) || BASE64.safeParse(s).success, { message: 'must be PEM text, or base64' })
      .describe(description),
    z.union([z.string(), z.custom<Uint8Array>(isBytes)]),
    {
      decode: (s) => (isPem(s) ? s : Buffer.from(s, 'base64')),
      encode: (v) => (typeof v === 'string' ? v : toBase64(v)),
    },
  );

/** A certificate: PEM text, or DER as base64. */
export const certificate = pemOrBytes('a certificate: PEM text, or DER in base64', 1 << 20);

export const privateKeyPem = pemText('a private key, PEM (PKCS#8 or traditional)');

export const KeyRefWire = z
  .union([
    z.string().min(1).max(2048).describe('a key ref from the slot config, or a PKCS#11 URI (RFC 7512)'),
    z.strictObject({ label: z.string().max(256).optional(), id: z.string().max(256).optional().describe('CKA_ID, hex') }),
  ])
  .describe('a key ref, or { label } and/or { id }');

/** What every call may carry. The deadline also travels in the x-timeout-ms header, which wins. */
export const callFields = {
  timeoutMs: z.number().optional().describe('the call deadline in milliseconds (the x-timeout-ms header wins)'),
  pin: z.string().max(256).optional().describe("a PIN for this call's login if the slot needs one; never stored or logged"),
};


export const ObjectDescriptorWire = z.object({
  class: z.enum(OBJECT_CLASSES),
  label: z.string(),
  id: z.string(),
  uri: z.string().describe('the PKCS#11 URI (RFC 7512) of the object'),
  token: z.boolean(),
  private: z.boolean(),
  keyType: z.enum(KEY_TYPES).optional(),
  bits: z.number().int().optional(),
  curve: z.string().optional(),
  sign: z.boolean().optional(),
  verify: z.boolean().optional(),
  encrypt: z.boolean().optional(),
  decrypt: z.boolean().optional(),
  wrap: z.boolean().optional(),
  unwrap: z.boolean().optional(),
  derive: z.boolean().optional(),
  sensitive: z.boolean().optional(),
  extractable: z.boolean().optional(),
  alwaysSensitive: z.boolean().optional(),
  neverExtractable: z.boolean().optional(),
  alwaysAuthenticate: z.boolean().optional(),
}) satisfies z.ZodType<ObjectDescriptor>;

export const ObjectQueryWire = z
  .strictObject({
    class: z.enum(OBJECT_CLASSES).optional(),
    label: z.string().max(256).optional(),
    id: z.string().max(256).optional(),
    keyType: z.enum(KEY_TYPES).optional(),
  })
  .describe('attributes the objects must have');

export const KeyAlgorithmWire = z.enum(KEY_ALGORITHMS);

/** getPublicKey's result: the KeyObject is rebuilt from the SPKI on the client side. */
export const PublicKeyInfoWire = z.codec(
  z.object({
    keyType: z.enum(KEY_TYPES),
    label: z.string(),
    id: z.string().describe('CKA_ID, hex'),
    uri: z.string().describe('the PKCS#11 URI (RFC 7512) of the public key'),
    spki: z.base64().describe('SubjectPublicKeyInfo, DER in base64'),
    pem: z.string(),
    jwk: z.record(z.string(), z.unknown()),
  }),
  z.custom<{ keyType: (typeof KEY_TYPES)[number]; label: string; id: string; uri: string; spki: Buffer; pem: string; jwk: JsonWebKey; keyObject: ReturnType<typeof createPublicKey> }>(),
  {
    decode: (w) => {
      const spki = Buffer.from(w.spki, 'base64');
      return { ...w, spki, jwk: w.jwk as JsonWebKey, keyObject: createPublicKey({ key: spki, format: 'der', type: 'spki' }) };
    },
    encode: (info) => ({ keyType: info.keyType, label: info.label, id: info.id, uri: info.uri, spki: info.spki.toString('base64'), pem: info.pem, jwk: info.jwk as Record<string, unknown> }),
  },
);

type CertWithX509 = { der: Buffer; pem: string; x509: X509Certificate };
const certWire = z.object({ der: z.base64().describe('the certificate, DER in base64'), pem: z.string() });
const withX509 = (w: z.infer<typeof certWire>): CertWithX509 => {
  const der = Buffer.from(w.der, 'base64');
  return { der, pem: w.pem, x509: new X509Certificate(der) };
};

export const CertificateInfoWire = z.codec(
  certWire.extend({ chain: z.array(certWire).describe('the leaf first, then each issuer the token holds') }),
  z.custom<CertWithX509 & { chain: CertWithX509[] }>(),
  {
    decode: (w) => ({ ...withX509(w), chain: w.chain.map(withX509) }),
    encode: (c) => ({ der: c.der.toString('base64'), pem: c.pem, chain: c.chain.map((k) => ({ der: k.der.toString('base64'), pem: k.pem })) }),
  },
);

/** A result that is one value, carried as the one member of an object (JSON a non-Node caller reads by name). */
export function member<K extends string, W extends z.ZodType, T>(name: K, wire: W, decode: (w: z.output<W>) => T, encode: (v: T) => z.input<W>) {
  return z.codec(z.object({ [name]: wire } as { [P in K]: W }), z.custom<T>(), {
    decode: (o) => decode((o as Record<K, z.output<W>>)[name]),
    encode: (v) => ({ [name]: encode(v) }) as never,
  });
}

export const Empty = z.codec(z.object({}), z.custom<void>(), { decode: () => undefined, encode: () => ({}) });
