/**
 * New keys on the token: key pairs generated for their uses only, and objects imported from
 * key material the main thread parsed, all or nothing, replacing same-named ones only when asked.
 */
import { createHash, X509Certificate } from 'node:crypto';
import type * as P11 from 'pkcs11js';
import { WorkerFailure } from './failure.js';
import { pkcs11js } from './pkcs11js.js';
import { curveByName } from '../src/model/curves.js';
import { octetString } from '../src/model/der.js';
import { CKK_EC_EDWARDS, CKM_EC_EDWARDS_KEY_PAIR_GEN } from './pkcs11-constants.js';
import type { KeyType } from '../src/model/mechanisms.js';
import type { ImportedObject, JsonWebKeyLike, KeyGenSpec, KeyUsage, ObjectDescriptor, ObjectQuery, PrivateKeyUse } from '../src/model/protocol.js';
import { attrs, attrsOf, describe, findHandles, spkiOf, type SessionAccess } from './object-ops.js';

function b64u(s: string | undefined, what: string): Buffer {
  if (!s) throw new WorkerFailure('BAD_INPUT', `the key has no ${what}`);
  return Buffer.from(s, 'base64url');
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
  refuseTakenName(s, ['privateKey', 'publicKey'], spec.label, spec.id);
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
  if (!oid) throw new WorkerFailure('BAD_INPUT', `${jwk.kty} keys on ${jwk.crv ?? 'an unnamed curve'} cannot be imported`);
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

type KeyKind = 'privateKey' | 'publicKey' | 'secretKey';
const KIND_NAMES: Record<KeyKind, string> = { privateKey: 'private key', publicKey: 'public key', secretKey: 'secret key' };

/** The finds that name an object of `kind` as `label` or as `id`: a second object under either would share its name. */
function namedAs(kind: ObjectQuery['class'], label: string, id: string | undefined): ObjectQuery[] {
  return id === undefined ? [{ class: kind, label }] : [{ class: kind, label }, { class: kind, id }];
}

/**
 * A generated key takes a label and an id no key of its kind has: a second key under one name
 * would make every later lookup by it KEY_AMBIGUOUS (and a key ref naming it by label alone
 * stop working), which only destroying a key undoes. Import has `replace` for a planned swap.
 */
export function refuseTakenName(s: SessionAccess, kinds: readonly KeyKind[], label: string, id: string | undefined): void {
  for (const kind of kinds) {
    for (const q of namedAs(kind, label, id)) {
      if (findHandles(s, q, 1).length === 0) continue;
      const name = q.label !== undefined ? `label "${label}"` : `id ${id}`;
      throw new WorkerFailure('KEY_IN_USE', `the token already holds a ${KIND_NAMES[kind]} with ${name}; choose another, or destroy that key first (destroyObject; keys delete in the CLI)`);
    }
  }
}

/**
 * Objects of the same class already on the token under one of the new objects' labels or ids:
 * a certificate for an existing key shares its id, and that is no conflict.
 */
function sameNamed(s: SessionAccess, objects: ImportedObject[]): P11.Handle[] {
  const seen = new Map<string, P11.Handle>();
  for (const o of objects) {
    for (const q of namedAs(o.kind, o.label, o.id)) {
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
 * A certificate stored under a key's id is taken for that key's (getCertificate, x5c): it must
 * hold the public key the token keeps under that id, unless this import brings that key itself
 * (then key-import.ts matched them). No public key with the id: a certificate of its own (a CA's).
 */
function checkCertifies(s: SessionAccess, cert: Extract<ImportedObject, { kind: 'certificate' }>, objects: ImportedObject[]): void {
  if (objects.some((o) => o.kind === 'publicKey' && o.id === cert.id)) return;
  const [h] = findHandles(s, { class: 'publicKey', id: cert.id }, 1);
  const spki = h ? spkiOf(s, h) : null;
  if (!spki) return;
  const certified = new X509Certificate(Buffer.from(cert.der)).publicKey.export({ type: 'spki', format: 'der' });
  if (!certified.equals(spki)) throw new WorkerFailure('BAD_INPUT', `the certificate is not for the key with id ${cert.id}: the public key the token keeps under that id is another`);
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
  for (const o of objects) if (o.kind === 'certificate' && !o.shared) checkCertifies(s, o, objects);
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
