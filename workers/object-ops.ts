/**
 * Token objects as plain data: find and describe, generate and import key pairs, destroy,
 * read certificates, random bytes. Private keys are created sensitive and non-extractable
 * unless the caller asks otherwise.
 */
import { createHash, createPublicKey, type JsonWebKey } from 'node:crypto';
import type * as P11 from 'pkcs11js';
import { WorkerFailure } from './failure.js';
import { pkcs11js, readUlong } from './pkcs11js.js';
import { curveByName, curveByParams } from '../src/model/curves.js';
import { formatPkcs11Uri } from '../src/model/pkcs11-uri.js';
import { octetString, unwrapOctetString } from '../src/model/der.js';
import { CKK_EC_EDWARDS, CKM_EC_EDWARDS_KEY_PAIR_GEN } from './pkcs11-constants.js';
import { KEY_TYPE_VALUE, keyTypeOf } from './token-info.js';
import type { KeyType } from '../src/model/mechanisms.js';
import type { FoundPage, ImportedObject, JsonWebKeyLike, KeyGenSpec, KeyUsage, ObjectClass, ObjectDescriptor, ObjectQuery, PrivateKeyUse, PublicKeyReport } from '../src/model/protocol.js';

export interface SessionAccess {
  p11(fn: string): P11.PKCS11;
  readonly sessionHandle: P11.Handle;
  /** Key handles cached for the session may now be stale. */
  forgetKeys(): void;
  /** The token's label and serial, for the objects' PKCS#11 URIs. */
  readonly tokenIdentity: { label: string; serial: string };
}


const CLASS_VALUE: Record<ObjectClass, number> = {
  privateKey: pkcs11js.CKO_PRIVATE_KEY,
  publicKey: pkcs11js.CKO_PUBLIC_KEY,
  certificate: pkcs11js.CKO_CERTIFICATE,
  secretKey: pkcs11js.CKO_SECRET_KEY,
  data: pkcs11js.CKO_DATA,
};
const CLASS_NAME = new Map(Object.entries(CLASS_VALUE).map(([k, v]) => [v, k as ObjectClass]));

function b64u(s: string | undefined, what: string): Buffer {
  if (!s) throw new Error(`the key has no ${what}`);
  return Buffer.from(s, 'base64url');
}

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

function attrs(s: SessionAccess, h: P11.Handle, types: number[]): Buffer[] {
  return s.p11('C_GetAttributeValue').C_GetAttributeValue(s.sessionHandle, h, types.map((type) => ({ type }))).map((a) => a.value as Buffer);
}

const bool = (b: Buffer): boolean => b.length > 0 && b[0] !== 0;

/**
 * The attributes an object has, each read on its own when the object lacks one of them: a data
 * object has no CKA_ID, and one missing attribute fails the whole template
 * (CKR_ATTRIBUTE_TYPE_INVALID). Missing ones are empty.
 */
function attrsOf(s: SessionAccess, h: P11.Handle, types: number[]): Buffer[] {
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
const USAGE_FLAGS: Record<'privateKey' | 'publicKey' | 'secretKey', [keyof ObjectDescriptor, number][]> = {
  privateKey: [
    ['sign', pkcs11js.CKA_SIGN],
    ['decrypt', pkcs11js.CKA_DECRYPT],
    ['unwrap', pkcs11js.CKA_UNWRAP],
    ['derive', pkcs11js.CKA_DERIVE],
    ['sensitive', pkcs11js.CKA_SENSITIVE],
    ['extractable', pkcs11js.CKA_EXTRACTABLE],
    ['alwaysSensitive', pkcs11js.CKA_ALWAYS_SENSITIVE],
    ['neverExtractable', pkcs11js.CKA_NEVER_EXTRACTABLE],
  ],
  publicKey: [
    ['verify', pkcs11js.CKA_VERIFY],
    ['encrypt', pkcs11js.CKA_ENCRYPT],
    ['wrap', pkcs11js.CKA_WRAP],
  ],
  secretKey: [
    ['encrypt', pkcs11js.CKA_ENCRYPT],
    ['decrypt', pkcs11js.CKA_DECRYPT],
    ['sign', pkcs11js.CKA_SIGN],
    ['verify', pkcs11js.CKA_VERIFY],
    ['wrap', pkcs11js.CKA_WRAP],
    ['unwrap', pkcs11js.CKA_UNWRAP],
    ['sensitive', pkcs11js.CKA_SENSITIVE],
    ['extractable', pkcs11js.CKA_EXTRACTABLE],
    ['alwaysSensitive', pkcs11js.CKA_ALWAYS_SENSITIVE],
    ['neverExtractable', pkcs11js.CKA_NEVER_EXTRACTABLE],
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

export function destroyObjects(s: SessionAccess, q: ObjectQuery): number {
  const handles = findHandles(s, q, 10_000);
  for (const h of handles) s.p11('C_DestroyObject').C_DestroyObject(s.sessionHandle, h);
  s.forgetKeys();
  return handles.length;
}

/** Every certificate's DER, up to `limit` of them. */
export function certificates(s: SessionAccess, limit: number): Uint8Array[] {
  return findHandles(s, { class: 'certificate' }, limit).map((h) => attrsOf(s, h, [pkcs11js.CKA_VALUE])[0]!);
}

export function certificate(s: SessionAccess, q: ObjectQuery): Uint8Array | null {
  const [h] = findHandles(s, { ...q, class: 'certificate' }, 1);
  return h ? attrs(s, h, [pkcs11js.CKA_VALUE])[0]! : null;
}

export function generateRandom(s: SessionAccess, length: number): Uint8Array {
  return s.p11('C_GenerateRandom').C_GenerateRandom(s.sessionHandle, Buffer.alloc(length));
}

/**
 * A new private key's own attributes: sensitive, for its uses only, extractable only when
 * asked. CKA_DERIVE only on EC keys, CKA_ALWAYS_AUTHENTICATE only when wanted: a module may
 * refuse an attribute a key type does not have.
 */
function privateKeyTemplate(use: PrivateKeyUse, keyType: KeyType): P11.Template {
  const has = (u: KeyUsage) => use.usage.includes(u);
  return [
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SIGN, value: has('sign') },
    ...(keyType === 'RSA'
      ? [
          { type: pkcs11js.CKA_DECRYPT, value: has('decrypt') },
          { type: pkcs11js.CKA_UNWRAP, value: has('decrypt') },
        ]
      : []),
    ...(keyType === 'EC' ? [{ type: pkcs11js.CKA_DERIVE, value: has('derive') }] : []),
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: use.extractable },
    ...(use.alwaysAuthenticate ? [{ type: pkcs11js.CKA_ALWAYS_AUTHENTICATE, value: true }] : []),
  ];
}

/** What a token answers for a key-pair template whose uses it cannot honour. */
const USES_REFUSED = new Set(['CKR_GENERAL_ERROR', 'CKR_TEMPLATE_INCONSISTENT', 'CKR_ATTRIBUTE_VALUE_INVALID']);
const USE_ATTRIBUTES: ReadonlySet<number> = new Set([pkcs11js.CKA_SIGN, pkcs11js.CKA_VERIFY, pkcs11js.CKA_DECRYPT, pkcs11js.CKA_ENCRYPT, pkcs11js.CKA_WRAP, pkcs11js.CKA_UNWRAP, pkcs11js.CKA_DERIVE]);

/** The template without the uses it turns off (`onlyWanted`): the token's defaults then decide those. */
function usesOnly(t: P11.Template, onlyWanted: boolean): P11.Template {
  return onlyWanted ? t.filter((a) => !(USE_ATTRIBUTES.has(a.type) && a.value === false)) : t;
}

/** The public half's uses, matching its private key's. */
function publicKeyTemplate(usage: readonly KeyUsage[], keyType: KeyType): P11.Template {
  return [
    { type: pkcs11js.CKA_VERIFY, value: usage.includes('sign') },
    ...(keyType === 'RSA'
      ? [
          { type: pkcs11js.CKA_ENCRYPT, value: usage.includes('decrypt') },
          { type: pkcs11js.CKA_WRAP, value: usage.includes('decrypt') },
        ]
      : []),
    { type: pkcs11js.CKA_PRIVATE, value: false },
  ];
}

function jwkKeyType(jwk: JsonWebKeyLike): KeyType {
  return jwk.kty === 'RSA' ? 'RSA' : jwk.kty === 'OKP' ? 'EC_EDWARDS' : 'EC';
}

/** The default CKA_ID: SHA-1 of the public key's defining value (modulus or point). */
function defaultId(publicValue: Buffer): Buffer {
  return createHash('sha1').update(publicValue).digest();
}

export function generateKeyPair(s: SessionAccess, spec: KeyGenSpec): ObjectDescriptor {
  const [family, size] = spec.algorithm.split('-') as [string, string | undefined];
  const common = (id: Buffer | null): P11.Template => [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: spec.label },
    ...(id ? [{ type: pkcs11js.CKA_ID, value: id }] : []),
  ];
  const id = spec.id !== undefined ? Buffer.from(spec.id, 'hex') : null;
  const keyType: KeyType = family === 'RSA' ? 'RSA' : family === 'Ed25519' ? 'EC_EDWARDS' : 'EC';
  let mechanism: number;
  let pub: P11.Template;
  if (family === 'RSA') {
    mechanism = pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN;
    pub = [{ type: pkcs11js.CKA_MODULUS_BITS, value: Number(size) }, { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) }];
  } else {
    const curve = family === 'Ed25519' ? 'Ed25519' : `P-${size!.slice(1)}`;
    mechanism = family === 'Ed25519' ? CKM_EC_EDWARDS_KEY_PAIR_GEN : pkcs11js.CKM_EC_KEY_PAIR_GEN;
    pub = [{ type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from(curveByName(curve)!.params, 'hex') }];
  }
  const generate = (onlyWanted: boolean) =>
    s.p11('C_GenerateKeyPair').C_GenerateKeyPair(
      s.sessionHandle,
      { mechanism },
      [...common(id), ...pub, ...usesOnly(publicKeyTemplate(spec.usage, keyType), onlyWanted)],
      [...common(id), ...usesOnly(privateKeyTemplate(spec, keyType), onlyWanted)],
    );
  let keys: P11.KeyPair;
  try {
    keys = generate(false);
  } catch (e) {
    // tpm2-pkcs11 makes every RSA key both sign and decrypt, and answers a template that turns
    // one off with CKR_GENERAL_ERROR: ask again with the wanted uses only. describe() reports
    // the key as the token made it.
    if (!USES_REFUSED.has((e as Error).message)) throw e;
    keys = generate(true);
  }
  if (!id) {
    const value = attrs(s, keys.publicKey, [family === 'RSA' ? pkcs11js.CKA_MODULUS : pkcs11js.CKA_EC_POINT])[0]!;
    const derived = [{ type: pkcs11js.CKA_ID, value: defaultId(value) }];
    s.p11('C_SetAttributeValue').C_SetAttributeValue(s.sessionHandle, keys.publicKey, derived);
    s.p11('C_SetAttributeValue').C_SetAttributeValue(s.sessionHandle, keys.privateKey, derived);
  }
  return describe(s, keys.privateKey);
}

function keyTemplate(jwk: JsonWebKeyLike, priv: boolean): P11.Template {
  if (jwk.kty === 'RSA') {
    const t: P11.Template = [
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
      { type: pkcs11js.CKA_MODULUS, value: b64u(jwk.n, 'modulus') },
      { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: b64u(jwk.e, 'public exponent') },
    ];
    if (priv) {
      const parts: [number, string | undefined, string][] = [
        [pkcs11js.CKA_PRIVATE_EXPONENT, jwk.d, 'private exponent'],
        [pkcs11js.CKA_PRIME_1, jwk.p, 'p'],
        [pkcs11js.CKA_PRIME_2, jwk.q, 'q'],
        [pkcs11js.CKA_EXPONENT_1, jwk.dp, 'dp'],
        [pkcs11js.CKA_EXPONENT_2, jwk.dq, 'dq'],
        [pkcs11js.CKA_COEFFICIENT, jwk.qi, 'qi'],
      ];
      for (const [type, v, what] of parts) t.push({ type, value: b64u(v, what) });
    }
    return t;
  }
  const oid = curveByName(jwk.crv ?? '')?.params;
  if (!oid) throw new Error(`unsupported key: ${jwk.kty} ${jwk.crv ?? ''}`);
  const edwards = jwk.kty === 'OKP';
  const t: P11.Template = [
    { type: pkcs11js.CKA_KEY_TYPE, value: edwards ? CKK_EC_EDWARDS : pkcs11js.CKK_EC },
    { type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from(oid, 'hex') },
  ];
  if (priv) t.push({ type: pkcs11js.CKA_VALUE, value: b64u(jwk.d, 'private value') });
  else {
    const point = edwards ? b64u(jwk.x, 'x') : Buffer.concat([Buffer.from([4]), b64u(jwk.x, 'x'), b64u(jwk.y, 'y')]);
    t.push({ type: pkcs11js.CKA_EC_POINT, value: octetString(point) });
  }
  return t;
}

/**
 * Objects of the same class already on the token under one of the new objects' labels or ids:
 * a certificate for an existing key shares its id, and that is no conflict.
 */
function sameNamed(s: SessionAccess, objects: ImportedObject[]): P11.Handle[] {
  const seen = new Map<string, P11.Handle>();
  for (const o of objects) {
    for (const q of [{ class: o.kind, label: o.label }, { class: o.kind, id: o.id }] satisfies ObjectQuery[]) {
      for (const h of findHandles(s, q, 10_000)) seen.set(Buffer.from(h).toString('hex'), h);
    }
  }
  return [...seen.values()];
}

/** A certificate with this id and exactly these bytes is on the token. */
function storedAlready(s: SessionAccess, o: Extract<ImportedObject, { kind: 'certificate' }>): boolean {
  return findHandles(s, { class: 'certificate', id: o.id }, 100).some((h) => attrsOf(s, h, [pkcs11js.CKA_VALUE])[0]!.equals(Buffer.from(o.der)));
}

/**
 * Stores the objects all or nothing. Objects already named by one of their labels or ids are
 * refused (KEY_IN_USE): a second copy would make every later lookup ambiguous. With `replace`,
 * the new objects are created first and the old ones destroyed only then, so a failed import
 * leaves the old key in place.
 */
export function importObjects(s: SessionAccess, all: ImportedObject[], replace = false): ObjectDescriptor[] {
  // A chain certificate already on the token, byte for byte (two keys from one CA), is shared, not a conflict.
  const objects = all.filter((o) => !(o.kind === 'certificate' && o.shared === true && storedAlready(s, o)));
  const existing = sameNamed(s, objects);
  if (existing.length > 0 && !replace) {
    const names = [...new Set(objects.map((o) => `label "${o.label}"`).concat(objects.map((o) => `id ${o.id}`)))].join(', ');
    throw new WorkerFailure('KEY_IN_USE', `the token already holds ${existing.length} object(s) of the same kind with ${names}; pass replace: true to replace them`);
  }
  const created: P11.Handle[] = [];
  try {
    for (const o of objects) {
      const base: P11.Template = [
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_LABEL, value: o.label },
        { type: pkcs11js.CKA_ID, value: Buffer.from(o.id, 'hex') },
      ];
      let t: P11.Template;
      if (o.kind === 'privateKey') {
        t = [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
          ...base,
          ...keyTemplate(o.jwk, true),
          ...privateKeyTemplate(o, jwkKeyType(o.jwk)),
        ];
      } else if (o.kind === 'publicKey') {
        t = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, ...base, ...keyTemplate(o.jwk, false), ...publicKeyTemplate(o.usage, jwkKeyType(o.jwk))];
      } else {
        t = [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE },
          { type: pkcs11js.CKA_CERTIFICATE_TYPE, value: pkcs11js.CKC_X_509 },
          ...base,
          { type: pkcs11js.CKA_PRIVATE, value: false },
          { type: pkcs11js.CKA_VALUE, value: Buffer.from(o.der) },
          { type: pkcs11js.CKA_SUBJECT, value: Buffer.from(o.subject) },
          { type: pkcs11js.CKA_ISSUER, value: Buffer.from(o.issuer) },
          { type: pkcs11js.CKA_SERIAL_NUMBER, value: Buffer.from(o.serial) },
        ];
      }
      created.push(s.p11('C_CreateObject').C_CreateObject(s.sessionHandle, t));
    }
  } catch (e) {
    // All or nothing: a half-imported key pair is worse than none.
    for (const h of created) {
      try {
        s.p11('C_DestroyObject').C_DestroyObject(s.sessionHandle, h);
      } catch {
        // best effort
      }
    }
    throw e;
  }
  for (const h of existing) s.p11('C_DestroyObject').C_DestroyObject(s.sessionHandle, h);
  s.forgetKeys();
  return created.map((h) => describe(s, h));
}
