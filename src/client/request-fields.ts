/**
 * The fields each client method's request takes. Anything else is BAD_INPUT, in the process as
 * over the wire (the service's strict schemas, which test/bad-input.test.ts holds to this
 * table): ignored, a misspelt field changes the answer without a word, and `prehash: true`
 * signs a digest as if it were the data.
 */
import { badInput } from '../validate.js';

/** Every call's options (CallOptions). */
const CALL = ['signal', 'timeoutMs', 'principal', 'pin'] as const;
const CIPHER = ['slot', 'key', 'mechanism', 'data', 'iv', 'aad', 'oaepLabel'] as const;
const SECRET_KEY = ['algorithm', 'label', 'id', 'extractable'] as const;

export const REQUEST_FIELDS = {
  sign: ['slot', 'key', 'mechanism', 'data', 'signatureFormat', 'prehashed'],
  verify: ['slot', 'key', 'mechanism', 'data', 'signatureFormat', 'prehashed', 'signature'],
  encrypt: CIPHER,
  decrypt: CIPHER,
  mac: ['slot', 'key', 'mechanism', 'data'],
  verifyMac: ['slot', 'key', 'mechanism', 'data', 'mac'],
  deriveKey: ['slot', 'key', 'mechanism', 'publicKey', 'then'],
  wrapKey: ['slot', 'key', 'mechanism', 'target', 'targetClass', 'oaepLabel'],
  unwrapKey: ['slot', 'key', 'mechanism', 'wrapped', ...SECRET_KEY, 'oaepLabel'],
  generateSecretKey: ['slot', ...SECRET_KEY],
  signJws: ['slot', 'key', 'alg', 'payload', 'header', 'x5c'],
  getPublicKey: ['slot', 'key'],
  getCertificate: ['slot', 'key'],
  findObjects: ['slot', 'template', 'limit'],
  findObjectsPage: ['slot', 'template', 'pageSize', 'cursor'],
  generateKeyPair: ['slot', 'algorithm', 'label', 'id', 'extractable', 'alwaysAuthenticate', 'usage'],
  importKeyPair: ['slot', 'label', 'id', 'pkcs12', 'password', 'privateKeyPem', 'certificates', 'extractable', 'alwaysAuthenticate', 'usage', 'replace'],
  importCertificate: ['slot', 'certificate', 'label', 'id', 'replace'],
  destroyObject: ['slot', 'key', 'class', 'force'],
  generateRandom: ['slot', 'length'],
  login: ['slot', 'userType'],
  logout: ['slot'],
  initPin: ['slot', 'newPin'],
  setPin: ['slot', 'oldPin', 'newPin'],
  probe: ['slot'],
} as const satisfies Record<string, readonly string[]>;

const TAKEN = new Map<string, ReadonlySet<string>>(Object.entries(REQUEST_FIELDS).map(([method, fields]) => [method, new Set([...fields, ...CALL])]));
const KEY_FIELDS: ReadonlySet<string> = new Set(['label', 'id']);
const THEN_FIELDS: ReadonlySet<string> = new Set(['op', 'mechanism', 'data', 'iv', 'aad']);
const KEY_NAMED = ['key', 'target'] as const;

/** Refuses a request object with a field `method` does not take (and a key or `then` object with one it does not have). */
export function checkRequestFields(method: string, request: unknown): void {
  const taken = TAKEN.get(method);
  if (!taken || !request || typeof request !== 'object') return;
  const req = request as Record<string, unknown>;
  const slot = typeof req.slot === 'string' ? req.slot : undefined;
  for (const field in req) if (!taken.has(field) && req[field] !== undefined) throw badInput(`${method} takes no field "${field}" (it takes ${[...taken].join(', ')})`, slot);
  for (const name of KEY_NAMED) checkObject(req[name], KEY_FIELDS, name, slot);
  checkObject(req.then, THEN_FIELDS, 'then', slot);
}

function checkObject(value: unknown, fields: ReadonlySet<string>, what: string, slot: string | undefined): void {
  if (!value || typeof value !== 'object' || value instanceof Uint8Array) return;
  for (const field in value) if (!fields.has(field) && (value as Record<string, unknown>)[field] !== undefined) throw badInput(`${what} has no field "${field}" (it has ${[...fields].join(', ')})`, slot);
}
