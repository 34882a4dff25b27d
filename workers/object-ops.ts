/**
 * Token objects as plain data: find and describe, generate and import key pairs, destroy,
 * read certificates, random bytes. Private keys are created sensitive and non-extractable
 * unless the caller asks otherwise.
 */
import { createPublicKey, type JsonWebKey } from 'node:crypto';
import type * as P11 from 'pkcs11js';
import { pkcs11js, readUlong } from './pkcs11js.js';
import { curveByParams, type Curve } from '../src/model/curves.js';
import { formatPkcs11Uri } from '../src/model/pkcs11-uri.js';
import { unwrapOctetString } from '../src/model/der.js';
import { KEY_TYPE_VALUE, keyTypeOf } from './token-info.js';
import type { KeyType } from '../src/model/mechanisms.js';
import type { FoundPage, KeySelector, ObjectClass, ObjectDescriptor, ObjectQuery, PublicKeyReport } from '../src/model/protocol.js';
import type { DeviceMatch } from '../src/model/device-match.js';

export interface SessionAccess {
  p11(fn: string): P11.PKCS11;
  readonly sessionHandle: P11.Handle;
  /** Key handles cached for the session may now be stale. */
  forgetKeys(): void;
  /** The token's label and serial, for the objects' PKCS#11 URIs. */
  readonly tokenIdentity: { label: string; serial: string };
  /** Throws KEY_NOT_FOUND when `on` (a key URI's token, slot, library) is not where this session is. */
  checkWhere(on: DeviceMatch | undefined, what: string): void;
}


const CLASS_VALUE: Record<ObjectClass, number> = {
  privateKey: pkcs11js.CKO_PRIVATE_KEY,
  publicKey: pkcs11js.CKO_PUBLIC_KEY,
  certificate: pkcs11js.CKO_CERTIFICATE,
  secretKey: pkcs11js.CKO_SECRET_KEY,
  data: pkcs11js.CKO_DATA,
};
const CLASS_NAME = new Map(Object.entries(CLASS_VALUE).map(([k, v]) => [v, k as ObjectClass]));

function template(q: ObjectQuery): P11.Template {
  const t: P11.Template = [];
  if (q.class) t.push({ type: pkcs11js.CKA_CLASS, value: CLASS_VALUE[q.class] });
  if (q.label !== undefined) t.push({ type: pkcs11js.CKA_LABEL, value: q.label });
  if (q.id !== undefined) t.push({ type: pkcs11js.CKA_ID, value: Buffer.from(q.id, 'hex') });
  if (q.keyType) t.push({ type: pkcs11js.CKA_KEY_TYPE, value: KEY_TYPE_VALUE[q.keyType] });
  return t;
}

export function findHandles(s: SessionAccess, q: ObjectQuery, limit: number): P11.Handle[] {
  s.p11('C_FindObjectsInit').C_FindObjectsInit(s.sessionHandle, template(q));
  try {
    const out: P11.Handle[] = [];
    while (out.length < limit) {
      const batch = s.p11('C_FindObjects').C_FindObjects(s.sessionHandle, Math.min(100, limit - out.length));
      if (batch.length === 0) break;
      out.push(...batch);
    }
    return out;
  } finally {
    s.p11('C_FindObjectsFinal').C_FindObjectsFinal(s.sessionHandle);
  }
}

export function attrs(s: SessionAccess, h: P11.Handle, types: number[]): Buffer[] {
  return s.p11('C_GetAttributeValue').C_GetAttributeValue(s.sessionHandle, h, types.map((type) => ({ type }))).map((a) => a.value as Buffer);
}

const bool = (b: Buffer): boolean => b.length > 0 && b[0] !== 0;

/**
 * The attributes an object has, each read on its own when the object lacks one of them: a data
 * object has no CKA_ID, and one missing attribute fails the whole template
 * (CKR_ATTRIBUTE_TYPE_INVALID). Missing ones are empty.
 */
export function attrsOf(s: SessionAccess, h: P11.Handle, types: number[]): Buffer[] {
  try {
    return attrs(s, h, types);
  } catch (e) {
    if (!/CKR_ATTRIBUTE_TYPE_INVALID|CKR_ATTRIBUTE_SENSITIVE/.test((e as Error).message)) throw e;
    return types.map((type) => {
      try {
        return attrs(s, h, [type])[0]!;
      } catch (inner) {
        if (/CKR_ATTRIBUTE_TYPE_INVALID|CKR_ATTRIBUTE_SENSITIVE/.test((inner as Error).message)) return Buffer.alloc(0);
        throw inner;
      }
    });
  }
}

/** A CK_BBOOL attribute; undefined when the object does not have it. */
export function flagOf(s: SessionAccess, h: P11.Handle, type: number): boolean | undefined {
  const [value] = attrsOf(s, h, [type]);
  return value!.length > 0 ? bool(value!) : undefined;
}

export function describe(s: SessionAccess, h: P11.Handle): ObjectDescriptor {
  const [cls, label, id, token, priv] = attrsOf(s, h, [pkcs11js.CKA_CLASS, pkcs11js.CKA_LABEL, pkcs11js.CKA_ID, pkcs11js.CKA_TOKEN, pkcs11js.CKA_PRIVATE]);
  const d: ObjectDescriptor = {
    class: CLASS_NAME.get(readUlong(cls!)) ?? 'data',
    label: label!.toString('utf8'),
    id: id!.toString('hex'),
    token: bool(token!),
    private: bool(priv!),
    uri: '',
  };
  d.uri = formatPkcs11Uri({ token: s.tokenIdentity.label, serial: s.tokenIdentity.serial, object: d.label, id: d.id, class: d.class });
  if (d.class !== 'privateKey' && d.class !== 'publicKey' && d.class !== 'secretKey') return d;
  const [kt] = attrs(s, h, [pkcs11js.CKA_KEY_TYPE]);
  const keyType = keyTypeOf(readUlong(kt!)) ?? undefined;
  if (keyType) d.keyType = keyType;
  Object.assign(d, usage(s, h, d.class));
  if (d.class === 'secretKey') {
    const [len] = attrsOf(s, h, [pkcs11js.CKA_VALUE_LEN]);
    // Some tokens keep no CKA_VALUE_LEN for an unwrapped key (0): then the length is not known.
    if (len!.length > 0 && readUlong(len!) > 0) d.bits = readUlong(len!) * 8;
    return d;
  }
  if (keyType === 'RSA') d.bits = attrs(s, h, [pkcs11js.CKA_MODULUS])[0]!.length * 8;
  if (keyType === 'EC' || keyType === 'EC_EDWARDS') {
    const params = attrs(s, h, [pkcs11js.CKA_EC_PARAMS])[0]!.toString('hex');
    d.curve = curveByParams(params)?.name ?? `unknown (${params})`;
  }
  if (d.class === 'privateKey') {
    const always = flagOf(s, h, pkcs11js.CKA_ALWAYS_AUTHENTICATE);
    if (always !== undefined) d.alwaysAuthenticate = always;
  }
  return d;
}

/** What a key may be used for, and (private and secret keys) whether it may leave the token: the flags it has. */
/** Whether a private or secret key may leave the token, and whether it ever could. */
const SECRECY_FLAGS: [keyof ObjectDescriptor, number][] = [
  ['sensitive', pkcs11js.CKA_SENSITIVE],
  ['extractable', pkcs11js.CKA_EXTRACTABLE],
  ['alwaysSensitive', pkcs11js.CKA_ALWAYS_SENSITIVE],
  ['neverExtractable', pkcs11js.CKA_NEVER_EXTRACTABLE],
];
const USAGE_FLAGS: Record<'privateKey' | 'publicKey' | 'secretKey', [keyof ObjectDescriptor, number][]> = {
  privateKey: [['sign', pkcs11js.CKA_SIGN], ['decrypt', pkcs11js.CKA_DECRYPT], ['unwrap', pkcs11js.CKA_UNWRAP], ['derive', pkcs11js.CKA_DERIVE], ...SECRECY_FLAGS],
  publicKey: [['verify', pkcs11js.CKA_VERIFY], ['encrypt', pkcs11js.CKA_ENCRYPT], ['wrap', pkcs11js.CKA_WRAP]],
  secretKey: [
    ['encrypt', pkcs11js.CKA_ENCRYPT],
    ['decrypt', pkcs11js.CKA_DECRYPT],
    ['sign', pkcs11js.CKA_SIGN],
    ['verify', pkcs11js.CKA_VERIFY],
    ['wrap', pkcs11js.CKA_WRAP],
    ['unwrap', pkcs11js.CKA_UNWRAP],
    ...SECRECY_FLAGS,
  ],
};

function usage(s: SessionAccess, h: P11.Handle, cls: 'privateKey' | 'publicKey' | 'secretKey'): Partial<ObjectDescriptor> {
  const flags = USAGE_FLAGS[cls];
  const values = attrsOf(s, h, flags.map(([, type]) => type));
  return Object.fromEntries(flags.flatMap(([name], i) => (values[i]!.length > 0 ? [[name, bool(values[i]!)]] : [])));
}

/** A public key as SPKI DER with its label and id, read from the token object (RSA modulus and exponent, or EC point). */
export function publicKeyReport(s: SessionAccess, h: P11.Handle, keyType: KeyType, fieldBytes: number): PublicKeyReport {
  const attr = (type: number): Buffer => attrs(s, h, [type])[0]!;
  let jwk: JsonWebKey;
  if (keyType === 'RSA') {
    jwk = { kty: 'RSA', n: attr(pkcs11js.CKA_MODULUS).toString('base64url'), e: attr(pkcs11js.CKA_PUBLIC_EXPONENT).toString('base64url') };
  } else {
    const point = unwrapOctetString(attr(pkcs11js.CKA_EC_POINT));
    if (keyType === 'EC_EDWARDS') {
      jwk = { kty: 'OKP', crv: 'Ed25519', x: point.toString('base64url') };
    } else {
      const crv = curveByParams(attr(pkcs11js.CKA_EC_PARAMS).toString('hex'))?.name;
      jwk = { kty: 'EC', crv, x: point.subarray(1, 1 + fieldBytes).toString('base64url'), y: point.subarray(1 + fieldBytes).toString('base64url') };
    }
  }
  const spkiDer = createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'der' });
  const label = attr(pkcs11js.CKA_LABEL).toString('utf8');
  const id = attr(pkcs11js.CKA_ID).toString('hex');
  return { keyType, spkiDer, label, id, uri: formatPkcs11Uri({ token: s.tokenIdentity.label, serial: s.tokenIdentity.serial, object: label, id, class: 'publicKey' }) };
}

/** A key object's type, undefined for a kind the service does not use, and an EC key's curve (undefined if unknown). */
export function keyShape(s: SessionAccess, h: P11.Handle): { keyType: KeyType | undefined; curve: Curve | undefined } {
  const keyType = keyTypeOf(readUlong(attrs(s, h, [pkcs11js.CKA_KEY_TYPE])[0]!)) ?? undefined;
  const curve = keyType === 'EC' ? curveByParams(attrs(s, h, [pkcs11js.CKA_EC_PARAMS])[0]!.toString('hex')) : undefined;
  return { keyType, curve };
}

/** The SPKI of a public key object; null for a kind the service does not use. */
export function spkiOf(s: SessionAccess, h: P11.Handle): Buffer | null {
  const { keyType, curve } = keyShape(s, h);
  if (!keyType || (keyType === 'EC' && !curve?.fieldBytes)) return null;
  return Buffer.from(publicKeyReport(s, h, keyType, curve?.fieldBytes ?? 0).spkiDer);
}

export function findObjects(s: SessionAccess, q: ObjectQuery, limit: number): ObjectDescriptor[] {
  return findHandles(s, q, limit).map((h) => describe(s, h));
}

/**
 * One page of a search: skips `offset` matches, describes the next `pageSize`. The search is
 * initialized and finalized inside this one task, so no find operation outlives the call and
 * the session stays free for the calls queued behind it.
 */
export function findObjectsPage(s: SessionAccess, q: ObjectQuery, offset: number, pageSize: number): FoundPage {
  s.p11('C_FindObjectsInit').C_FindObjectsInit(s.sessionHandle, template(q));
  let handles: P11.Handle[];
  try {
    for (let skipped = 0; skipped < offset; ) {
      const batch = s.p11('C_FindObjects').C_FindObjects(s.sessionHandle, Math.min(1000, offset - skipped));
      if (batch.length === 0) return { objects: [], more: false };
      skipped += batch.length;
    }
    handles = [];
    // One more than the page: whether another page exists.
    while (handles.length <= pageSize) {
      const batch = s.p11('C_FindObjects').C_FindObjects(s.sessionHandle, pageSize + 1 - handles.length);
      if (batch.length === 0) break;
      handles.push(...batch);
    }
  } finally {
    s.p11('C_FindObjectsFinal').C_FindObjectsFinal(s.sessionHandle);
  }
  return { objects: handles.slice(0, pageSize).map((h) => describe(s, h)), more: handles.length > pageSize };
}

export function destroyObjects(s: SessionAccess, q: ObjectQuery, on: DeviceMatch | undefined): number {
  s.checkWhere(on, 'object');
  const handles = findHandles(s, q, 10_000);
  for (const h of handles) s.p11('C_DestroyObject').C_DestroyObject(s.sessionHandle, h);
  s.forgetKeys();
  return handles.length;
}

/** Every certificate's DER, up to `limit` of them. */
export function certificates(s: SessionAccess, limit: number): Uint8Array[] {
  return findHandles(s, { class: 'certificate' }, limit).map((h) => attrsOf(s, h, [pkcs11js.CKA_VALUE])[0]!);
}

/** The DER of every certificate with the selector's label/id (up to 16: enough for a key's renewals). */
export function certificatesNamed(s: SessionAccess, sel: KeySelector): Uint8Array[] {
  s.checkWhere(sel.on, 'certificate');
  return findHandles(s, { label: sel.label, id: sel.id, class: 'certificate' }, 16).map((h) => attrs(s, h, [pkcs11js.CKA_VALUE])[0]!);
}

export function generateRandom(s: SessionAccess, length: number): Uint8Array {
  return s.p11('C_GenerateRandom').C_GenerateRandom(s.sessionHandle, Buffer.alloc(length));
}
