/**
 * The service API, one entry per client method: `POST /v1/<method>` with the method's request
 * as JSON and its result as JSON. Both the server (api-server.ts) and the remote client
 * (remote-client.ts) are built from this table, and the OpenAPI document is generated from it,
 * so the three cannot drift apart. Requests are strict: a field the method does not take
 * (`principal` among them: the listener authenticates the caller) is a BAD_INPUT.
 */
import { z } from 'zod';
import { JWS_ALGS } from '../client/jws-algorithms.js';
import { MECHANISM_NAMES } from '../model/mechanisms.js';
import { CRYPTO_MECHANISM_NAMES, SECRET_KEY_ALGORITHM_NAMES } from '../model/crypto-mechanisms.js';
import { KEY_USAGES, OBJECT_CLASSES, SESSION_STATES, USER_PIN_STATES } from '../model/protocol.js';
import { TOKEN_EVENTS } from '../model/slot-events.js';
import {
  bytes,
  callFields,
  certificate,
  CertificateInfoWire,
  Empty,
  KeyAlgorithmWire,
  KeyRefWire,
  member,
  ObjectDescriptorWire,
  ObjectQueryWire,
  pemOrBytes,
  privateKeyPem,
  PublicKeyInfoWire,
} from './wire.js';

const slot = z.string().min(1).max(256).describe('a slot name from the config');
const mechanism = z.string().max(64).describe(`one of ${MECHANISM_NAMES.join(', ')}`);
const signatureFormat = z.enum(['der', 'raw']).optional().describe('ECDSA only: DER (default) or raw r‖s (JOSE)');

const SignWire = z.strictObject({
  slot,
  key: KeyRefWire,
  mechanism,
  data: bytes('the data, or its digest with prehashed: true'),
  signatureFormat,
  prehashed: z.boolean().optional(),
  ...callFields,
});

const SignJwsWire = z.codec(
  z.strictObject({
    slot,
    key: KeyRefWire,
    alg: z.string().max(16).describe(`one of ${Object.keys(JWS_ALGS).join(', ')}`),
    payload: z.union([z.string(), z.record(z.string(), z.unknown())]).optional().describe('the payload: a string, or an object serialized as JSON'),
    payloadBase64: z.base64().optional().describe('the payload as bytes (base64), instead of payload'),
    header: z.record(z.string(), z.unknown()).optional(),
    x5c: z.boolean().optional(),
    ...callFields,
  }),
  z.custom<Record<string, unknown>>(),
  {
    decode: ({ payloadBase64, ...rest }) => (payloadBase64 === undefined ? rest : { ...rest, payload: Buffer.from(payloadBase64, 'base64') }),
    encode: (req) => {
      const { payload, ...rest } = req as { payload?: unknown };
      return (payload instanceof Uint8Array ? { ...rest, payloadBase64: Buffer.from(payload).toString('base64') } : req) as never;
    },
  },
);

const cryptoMechanism = z.string().max(64).describe(`one of ${CRYPTO_MECHANISM_NAMES.join(', ')}`);
const bufferResult = (name: string) => member(name, z.base64(), (s) => Buffer.from(s, 'base64'), (b: Buffer) => b.toString('base64'));

const CipherWire = z.strictObject({
  slot,
  key: KeyRefWire,
  mechanism: cryptoMechanism,
  data: bytes('the plaintext (encrypt) or the ciphertext, with its tag for AES-GCM (decrypt)'),
  iv: bytes('AES: the IV (12 bytes for GCM, 16 for CBC); leave it out to encrypt and the daemon makes one').optional(),
  aad: bytes('AES-GCM: additional authenticated data').optional(),
  oaepLabel: bytes('RSA-OAEP: the label').optional(),
  ...callFields,
});

const MacWire = z.strictObject({ slot, key: KeyRefWire, mechanism: cryptoMechanism, data: bytes('the data'), ...callFields });

const SecretKeyFields = {
  algorithm: z.enum(SECRET_KEY_ALGORITHM_NAMES),
  label: z.string().max(1024),
  id: z.string().max(256).optional(),
  extractable: z.boolean().optional(),
};

const DeriveKeyWire = z.strictObject({
  slot,
  key: KeyRefWire,
  mechanism: z.enum(['ECDH', 'ECDH-SECRET']),
  publicKey: pemOrBytes("the peer's EC public key: SPKI PEM, or SPKI DER or an uncompressed point in base64", 8192),
  then: z
    .strictObject({
      op: z.enum(['encrypt', 'decrypt']),
      mechanism: z.enum(['AES-GCM', 'AES-CBC-PAD']),
      data: bytes('the data for the session key'),
      iv: bytes('the IV (decrypt)').optional(),
      aad: bytes('AES-GCM: additional authenticated data').optional(),
    })
    .optional(),
  ...callFields,
});

const DeriveResultWire = z.object({
  secret: bytes('ECDH-SECRET: the shared secret').optional(),
  ciphertext: bytes('then encrypt: the ciphertext').optional(),
  iv: bytes('then encrypt: the IV').optional(),
  plaintext: bytes('then decrypt: the plaintext').optional(),
});

const KeyWire = z.strictObject({ slot, key: KeyRefWire, ...callFields });
const SlotWire = z.strictObject({ slot, ...callFields });
const NoFields = z.strictObject({});

const SessionInfoWire = z.object({
  handle: z.string(),
  state: z.enum(SESSION_STATES),
  tokenLabel: z.string(),
  tokenSerial: z.string(),
  slotId: z.string(),
  calls: z.record(z.string(), z.number()),
  loggedInHere: z.boolean().optional(),
  userPin: z.enum(USER_PIN_STATES),
});

const AuditHealthWire = z.object({ path: z.string(), healthy: z.boolean(), pending: z.number(), error: z.string().nullable() });

const StatusWire = z.object({
  closed: z.boolean(),
  slots: z.record(
    z.string(),
    z.object({
      type: z.enum(['token', 'hsm', 'cloud']),
      state: z.string(),
      queued: z.number(),
      running: z.number(),
      userPin: z.enum(USER_PIN_STATES).nullable(),
      tokenEvents: z.enum(TOKEN_EVENTS).describe('how a token inserted or removed is noticed: the module\'s C_WaitForSlotEvent, the health probe\'s polling, or only by a failing call'),
      token: z.record(z.string(), z.unknown()).nullable().describe('what the token reported when the slot opened: mechanisms, key generation, session limits'),
      workers: z.array(z.record(z.string(), z.unknown())),
    }),
  ),
  audit: AuditHealthWire.nullable(),
});

const AuditVerdictWire = z.union([
  z.object({ ok: z.literal(true), records: z.number(), head: z.string(), continues: z.string().optional() }),
  z.object({ ok: z.literal(false), kind: z.literal('torn'), records: z.number(), head: z.string(), file: z.string(), line: z.number(), bytes: z.number(), reason: z.string() }),
  z.object({ ok: z.literal(false), kind: z.literal('broken'), file: z.string(), line: z.number(), seq: z.number().nullable(), reason: z.string() }),
]);

const passThrough = <T>() => (v: T) => v;

/** One route: its request codec (wire → client request) and result codec (wire → client result). */
export interface Route {
  summary: string;
  request: z.ZodType;
  result: z.ZodType;
}

const route = <Req extends z.ZodType, Res extends z.ZodType>(summary: string, request: Req, result: Res) => ({ summary, request, result });

export const ROUTES = {
  sign: route('Signs data with a key on the token', SignWire, member('signature', z.base64(), (s) => Buffer.from(s, 'base64'), (b: Buffer) => b.toString('base64'))),
  verify: route(
    'Verifies a signature with the public key the token holds now',
    SignWire.extend({ signature: bytes('the signature') }),
    member('valid', z.boolean(), passThrough<boolean>(), passThrough<boolean>()),
  ),
  encrypt: route(
    'Encrypts with a key on the token (AES-GCM, AES-CBC-PAD), or with its public key here (RSA-OAEP)',
    CipherWire,
    z.object({ ciphertext: bytes('the ciphertext; AES-GCM with its 16-byte tag appended'), iv: bytes('the IV used').optional() }),
  ),
  decrypt: route('Decrypts with a key on the token; a ciphertext that does not decrypt is DECRYPTION_FAILED', CipherWire, bufferResult('plaintext')),
  mac: route('An HMAC with a secret key on the token', MacWire, bufferResult('mac')),
  verifyMac: route('Checks an HMAC on the token', MacWire.extend({ mac: bytes('the MAC') }), member('valid', z.boolean(), passThrough<boolean>(), passThrough<boolean>())),
  deriveKey: route('ECDH with an EC key on the token: a session key used by `then`, or (ECDH-SECRET, where allowed) the secret', DeriveKeyWire, DeriveResultWire),
  wrapKey: route(
    'Wraps an extractable key with a key on the token (AES key wrap, RSA-OAEP)',
    z.strictObject({ slot, key: KeyRefWire, mechanism: cryptoMechanism, target: KeyRefWire, targetClass: z.enum(['secretKey', 'privateKey']).optional(), oaepLabel: bytes('RSA-OAEP: the label').optional(), ...callFields }),
    bufferResult('wrapped'),
  ),
  unwrapKey: route(
    'Unwraps a key onto the token as a sensitive secret key',
    z.strictObject({ slot, key: KeyRefWire, mechanism: cryptoMechanism, wrapped: bytes('the wrapped key'), ...SecretKeyFields, oaepLabel: bytes('RSA-OAEP: the label').optional(), ...callFields }),
    ObjectDescriptorWire,
  ),
  generateSecretKey: route('Generates an AES or HMAC key on the token (sensitive, not extractable unless asked)', z.strictObject({ slot, ...SecretKeyFields, ...callFields }), ObjectDescriptorWire),
  signJws: route('Signs a compact JWS (RFC 7515) on the token', SignJwsWire, member('jws', z.string(), passThrough<string>(), passThrough<string>())),
  getPublicKey: route('The public key of a key on the token, as SPKI, PEM and JWK', KeyWire, PublicKeyInfoWire),
  getCertificate: route("The key's certificate on the token", KeyWire, CertificateInfoWire),
  findObjects: route(
    'Objects on the token, as plain descriptors',
    z.strictObject({ slot, template: ObjectQueryWire.optional(), limit: z.number().int().optional(), ...callFields }),
    member('objects', z.array(ObjectDescriptorWire), passThrough<z.infer<typeof ObjectDescriptorWire>[]>(), passThrough<z.infer<typeof ObjectDescriptorWire>[]>()),
  ),
  findObjectsPage: route(
    'One page of objects; pass the returned cursor for the next',
    z.strictObject({ slot, template: ObjectQueryWire.optional(), pageSize: z.number().int().optional(), cursor: z.string().max(1024).optional(), ...callFields }),
    z.object({ objects: z.array(ObjectDescriptorWire), cursor: z.string().optional().describe('absent on the last page') }),
  ),
  generateKeyPair: route(
    'Generates a key pair on the token (sensitive, not extractable unless asked)',
    z.strictObject({ slot, algorithm: KeyAlgorithmWire, label: z.string().max(1024), id: z.string().max(256).optional(), extractable: z.boolean().optional(), alwaysAuthenticate: z.boolean().optional(), usage: z.array(z.enum(KEY_USAGES)).max(3).optional(), ...callFields }),
    ObjectDescriptorWire,
  ),
  importKeyPair: route(
    'Stores a private key, its public key and certificates under one label and id',
    z.strictObject({
      slot,
      label: z.string().max(1024),
      id: z.string().max(256).optional(),
      pkcs12: bytes('a PKCS#12 file').optional(),
      password: z.string().max(1024).optional(),
      privateKeyPem: privateKeyPem.optional(),
      certificates: z.array(certificate).max(16).optional(),
      extractable: z.boolean().optional(),
      alwaysAuthenticate: z.boolean().optional(),
      usage: z.array(z.enum(KEY_USAGES)).max(3).optional(),
      replace: z.boolean().optional().describe('replace objects of the same kind under this label or id'),
      ...callFields,
    }),
    member('objects', z.array(ObjectDescriptorWire), passThrough<z.infer<typeof ObjectDescriptorWire>[]>(), passThrough<z.infer<typeof ObjectDescriptorWire>[]>()),
  ),
  importCertificate: route(
    'Stores a certificate for a key',
    z.strictObject({ slot, certificate, label: z.string().max(1024), id: z.string().max(256), replace: z.boolean().optional(), ...callFields }),
    ObjectDescriptorWire,
  ),
  destroyObject: route(
    'Destroys the objects a key names (force: true for a configured key)',
    z.strictObject({ slot, key: KeyRefWire, class: z.enum(OBJECT_CLASSES).optional(), force: z.boolean().optional(), ...callFields }),
    member('destroyed', z.number().int(), passThrough<number>(), passThrough<number>()),
  ),
  generateRandom: route(
    'Random bytes from the token',
    z.strictObject({ slot, length: z.number().int(), ...callFields }),
    member('bytes', z.base64(), (s) => Buffer.from(s, 'base64'), (b: Buffer) => b.toString('base64')),
  ),
  login: route('Logs the token in (userType "so": its Security Officer)', z.strictObject({ slot, userType: z.enum(['user', 'so']).optional(), ...callFields }), Empty),
  logout: route("Logs the token out; after a Security Officer session the user logs in again from the slot's PIN source", SlotWire, Empty),
  initPin: route("Sets the user PIN (the Security Officer's C_InitPIN)", z.strictObject({ slot, newPin: z.string().max(256), ...callFields }), Empty),
  setPin: route('Changes the PIN of the user type logged in (C_SetPIN)', z.strictObject({ slot, oldPin: z.string().max(256), newPin: z.string().max(256), ...callFields }), Empty),
  probe: route("The session state of the worker that takes the call (C_GetSessionInfo)", SlotWire, SessionInfoWire),
  status: route("Every slot's state; under a policy, the slots the caller may see", NoFields, StatusWire),
  reset: route('Brings a failed slot back with a fresh restart budget', z.strictObject({ slot }), Empty),
  verifyAudit: route("Checks the audit trail's hash chain", NoFields, AuditVerdictWire),
} satisfies Record<string, Route>;

export type RouteName = keyof typeof ROUTES;
export const ROUTE_NAMES = Object.keys(ROUTES) as RouteName[];

/** The deadline header: the call's timeoutMs, in milliseconds. */
export const TIMEOUT_HEADER = 'x-timeout-ms';
export const OPENAPI_PATH = '/v1/openapi.json';

/** The x-timeout-ms header's schema, refused in the words timeoutHeader() uses. */
export function deadlineHeader(description: string) {
  return z.object({ [TIMEOUT_HEADER]: z.string().regex(/^\d+$/, 'must be a whole number of milliseconds from 1 to 2147483647').optional().describe(description) });
}
