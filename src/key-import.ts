/**
 * Provisioning input: a PKCS#12 file (with its password) or a PEM private key plus
 * certificates, turned into the objects a token stores. node-forge decrypts PKCS#12 (legacy
 * 3DES/RC2 and OpenSSL 3's PBES2/AES alike); Node's crypto parses the keys; certificate fields
 * PKCS#11 wants (subject, issuer, serial) are taken from the DER with forge's ASN.1 reader.
 */
import { createHash, createPrivateKey, createPublicKey, X509Certificate, type KeyObject } from 'node:crypto';
import forge from 'node-forge';
import { Pkcs11SupervisorError } from './model/errors.js';
import type { ImportedObject, JsonWebKeyLike, PrivateKeyUse } from './model/protocol.js';
import { octetString } from './model/der.js';
import { curveByName } from './model/curves.js';

export interface ImportMaterial {
  privateKey: KeyObject;
  certificates: Buffer[];
}

const bad = (message: string) => new Pkcs11SupervisorError('BAD_INPUT', message);

export function fromPkcs12(p12: Uint8Array, password: string): ImportMaterial {
  let parsed: forge.pkcs12.Pkcs12Pfx;
  try {
    parsed = forge.pkcs12.pkcs12FromAsn1(forge.asn1.fromDer(forge.util.createBuffer(Buffer.from(p12).toString('binary'))), password);
  } catch (e) {
    throw bad(`cannot open the PKCS#12 file: ${(e as Error).message}`);
  }
  const bagsOf = (type: string) => parsed.getBags({ bagType: type })[type] ?? [];
  const keyBags = [...bagsOf(forge.pki.oids.pkcs8ShroudedKeyBag!), ...bagsOf(forge.pki.oids.keyBag!)];
  if (keyBags.length !== 1) throw bad(`the PKCS#12 file holds ${keyBags.length} private keys; import takes exactly one`);
  // forge hands back parsed objects where it can (RSA) and the decrypted ASN.1 where it cannot (EC).
  const der = (node: forge.asn1.Asn1) => Buffer.from(forge.asn1.toDer(node).getBytes(), 'binary');
  const keyBag = keyBags[0]!;
  const keyDer = der(keyBag.asn1 ? (keyBag.asn1 as forge.asn1.Asn1) : forge.pki.wrapRsaPrivateKey(forge.pki.privateKeyToAsn1(keyBag.key!)));
  const certificates = bagsOf(forge.pki.oids.certBag!).map((b) => certificateDer(der(b.asn1 ? (b.asn1 as forge.asn1.Asn1) : forge.pki.certificateToAsn1(b.cert!))));
  try {
    return { privateKey: createPrivateKey({ key: keyDer, format: 'der', type: 'pkcs8' }), certificates };
  } catch (e) {
    throw bad(`cannot read the PKCS#12 file's private key: ${(e as Error).message}`);
  }
}

export function fromPem(keyPem: string | Uint8Array, certificates: (string | Uint8Array)[] = []): ImportMaterial {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: Buffer.from(keyPem), format: 'pem' });
  } catch (e) {
    throw bad(`cannot read the private key: ${(e as Error).message}`);
  }
  return { privateKey, certificates: certificates.map(certificateDer) };
}

export function certificateDer(cert: string | Uint8Array): Buffer {
  try {
    return Buffer.from(new X509Certificate(Buffer.from(cert)).raw);
  } catch (e) {
    throw bad(`cannot read the certificate: ${(e as Error).message}`);
  }
}

/** Subject, issuer and serial of a certificate as DER, for CKA_SUBJECT, CKA_ISSUER, CKA_SERIAL_NUMBER. */
export function certificateFields(der: Buffer): { subject: Buffer; issuer: Buffer; serial: Buffer } {
  const cert = forge.asn1.fromDer(forge.util.createBuffer(der.toString('binary')));
  const tbs = (cert.value as forge.asn1.Asn1[])[0]!.value as forge.asn1.Asn1[];
  const off = tbs[0]!.tagClass === forge.asn1.Class.CONTEXT_SPECIFIC ? 1 : 0; // optional [0] version
  const enc = (n: forge.asn1.Asn1) => Buffer.from(forge.asn1.toDer(n).getBytes(), 'binary');
  return { serial: enc(tbs[off]!), issuer: enc(tbs[off + 2]!), subject: enc(tbs[off + 4]!) };
}

/** The CKA_ID a key gets when none is given: SHA-1 of its modulus or point, as generateKeyPair does. */
export function defaultKeyId(jwk: JsonWebKeyLike): string {
  const value =
    jwk.kty === 'RSA'
      ? Buffer.from(jwk.n!, 'base64url')
      : jwk.kty === 'OKP'
        ? octetString(Buffer.from(jwk.x!, 'base64url'))
        : octetString(Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]));
  return createHash('sha1').update(value).digest('hex');
}

/** The kinds of key a token here holds and the service uses: anything else is refused before the token sees it. */
function checkImportable(key: KeyObject): void {
  const type = key.asymmetricKeyType;
  if (type === 'rsa' || type === 'ed25519') return;
  if (type === 'ec' && curveByName(jwkCurve(key)) !== undefined) return;
  const what = type === 'ec' ? `EC keys on ${key.asymmetricKeyDetails?.namedCurve ?? 'an unnamed curve'}` : type === 'rsa-pss' ? 'RSA keys restricted to PSS (id-RSASSA-PSS)' : `${(type ?? 'such').toUpperCase()} keys`;
  throw bad(`${what} cannot be imported: this service imports RSA, EC (P-256, P-384, P-521, secp256k1) and Ed25519 keys`);
}

/** The JWK name of an EC key's curve; '' for a curve JWK has no name for (brainpool and others). */
function jwkCurve(key: KeyObject): string {
  try {
    return (key.export({ format: 'jwk' }) as JsonWebKeyLike).crv ?? '';
  } catch {
    return '';
  }
}

export function importObjectsFor(material: ImportMaterial, label: string, id: string | undefined, use: PrivateKeyUse): ImportedObject[] {
  checkImportable(material.privateKey);
  const jwk = material.privateKey.export({ format: 'jwk' }) as JsonWebKeyLike;
  const pub = createPublicKey(material.privateKey).export({ format: 'jwk' }) as JsonWebKeyLike;
  const keyId = id ?? defaultKeyId(pub);
  const spki = createPublicKey(material.privateKey).export({ type: 'spki', format: 'der' });
  const matching = material.certificates.filter((der) => Buffer.from(new X509Certificate(der).publicKey.export({ type: 'spki', format: 'der' })).equals(spki));
  if (material.certificates.length > 0 && matching.length === 0) throw bad('none of the certificates is for this private key');
  const others = material.certificates.filter((der) => !matching.includes(der));
  return [
    { kind: 'privateKey', jwk, label, id: keyId, ...use },
    { kind: 'publicKey', jwk: pub, label, id: keyId, usage: use.usage },
    ...matching.map((der) => ({ kind: 'certificate' as const, der, ...certificateFields(der), label, id: keyId })),
    // Chain certificates go in too, each under its own id so they never shadow the key's.
    ...others.map((der) => ({ kind: 'certificate' as const, der, ...certificateFields(der), label: `${label} chain`, id: createHash('sha1').update(der).digest('hex'), shared: true })),
  ];
}
