/** Token objects as plain data: find (whole or paged), certificates, destroy, random bytes. */
import { createHash, X509Certificate } from 'node:crypto';
import { Pkcs11SupervisorError } from '../model/errors.js';
import type { CertificateCandidates, FoundPage, KeySelector, ObjectDescriptor } from '../model/protocol.js';
import * as check from '../validate.js';
import type { Gate } from './gate.js';
import type { CertificateInfo, DestroyObjectRequest, FindObjectsPageRequest, FindObjectsRequest, GenerateRandomRequest, ObjectsPage, PublicKeyRequest } from './requests.js';

/** Objects as plain descriptors. A session that is not logged in sees only public objects. */
export async function findObjects(gate: Gate, request: FindObjectsRequest): Promise<ObjectDescriptor[]> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'findObjects');
  const limit = req.limit === undefined ? 1000 : check.count(req.limit, 'limit', 1, 100_000, slot.name);
  return gate.call<ObjectDescriptor[]>(slot, 'findObjects', { op: 'findObjects', query: check.objectQuery(req.template, slot.name), limit }, req, { needsLogin: false });
}

/**
 * One page of a search over a large token. Pass the returned `cursor` to get the next page;
 * no cursor means the last page. Nothing stays open on the token between pages (each page
 * is one find operation, finalized before the call returns), so an abandoned cursor costs
 * nothing. Pages follow the token's own order; objects created or destroyed between pages
 * may shift it, as with any offset paging.
 */
export async function findObjectsPage(gate: Gate, request: FindObjectsPageRequest): Promise<ObjectsPage> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'findObjectsPage');
  const query = check.objectQuery(req.template, slot.name);
  const pageSize = req.pageSize === undefined ? 100 : check.count(req.pageSize, 'pageSize', 1, 1000, slot.name);
  const scope = createHash('sha256').update(JSON.stringify([slot.name, query])).digest('base64url').slice(0, 16);
  const offset = req.cursor === undefined ? 0 : readCursor(req.cursor, scope, slot.name);
  const page = await gate.call<FoundPage>(slot, 'findObjectsPage', { op: 'findObjectsPage', query, offset, pageSize }, req, { needsLogin: false });
  const next = offset + page.objects.length;
  return { objects: page.objects, cursor: page.more ? Buffer.from(JSON.stringify({ o: next, s: scope })).toString('base64url') : undefined };
}

/** The offset a cursor continues from; a cursor from another search or slot is refused. */
function readCursor(cursor: unknown, scope: string, slot: string): number {
  let parsed: { o?: unknown; s?: unknown } | null = null;
  try {
    parsed = typeof cursor === 'string' ? (JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as { o?: unknown; s?: unknown }) : null;
  } catch {
    // not one of ours: refused below
  }
  if (!parsed || typeof parsed.o !== 'number' || !Number.isSafeInteger(parsed.o) || parsed.o < 0) throw check.badInput('cursor is not one findObjectsPage returned', slot);
  if (parsed.s !== scope) throw check.badInput('cursor belongs to another search (slot or template differ)', slot);
  return parsed.o;
}

/**
 * The key's certificate: among those its ref names by certLabel/certId, else those stored under
 * the key's own label/id, the one whose public key is the key's (valid now before expired, then
 * the newest), so a certificate left from a replaced key, or another key's under the same name,
 * is never handed out as this key's (nor put in a JWS x5c header). A name with no public key on
 * the token (a CA certificate stored alone) gives its one certificate.
 */
export async function getCertificate(gate: Gate, request: PublicKeyRequest): Promise<CertificateInfo> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'getCertificate', req.key);
  const ref = typeof req.key === 'string' && Object.hasOwn(slot.config.keys, req.key) ? slot.config.keys[req.key] : undefined;
  const key = check.keySelector(slot, req.key);
  const cert = ref?.certLabel !== undefined ? { label: ref.certLabel } : ref?.certId !== undefined ? { id: ref.certId.toLowerCase() } : undefined;
  const found = await gate.call<CertificateCandidates>(slot, 'getCertificate', { op: 'certificate', key, cert }, req, { needsLogin: false });
  const x509 = pickCertificate(found, describeName(cert ?? key), slot.name);
  const onToken = await gate.call<Uint8Array[]>(slot, 'getCertificate', { op: 'certificates', limit: 256 }, req, { needsLogin: false });
  return { der: Buffer.from(x509.raw), pem: x509.toString(), x509, chain: chainFrom(x509, onToken) };
}

function describeName(sel: KeySelector): string {
  return [sel.label !== undefined ? `label "${sel.label}"` : '', sel.id !== undefined ? `id ${sel.id}` : ''].filter(Boolean).join(' and ');
}

function pickCertificate({ ders, spki }: CertificateCandidates, name: string, slot: string): X509Certificate {
  const certs = ders.map((d) => new X509Certificate(Buffer.from(d)));
  if (certs.length === 0) throw new Pkcs11SupervisorError('KEY_NOT_FOUND', `no certificate with ${name} on the token`, { slot });
  if (!spki) {
    if (certs.length > 1) throw new Pkcs11SupervisorError('KEY_AMBIGUOUS', `${certs.length} certificates have ${name} and no public key has it to choose by; name the certificate by id too`, { slot });
    return certs[0]!;
  }
  const key = Buffer.from(spki);
  const own = certs.filter((c) => c.publicKey.export({ type: 'spki', format: 'der' }).equals(key));
  if (own.length === 0) {
    throw new Pkcs11SupervisorError('KEY_NOT_FOUND', `the certificate${certs.length > 1 ? 's' : ''} with ${name} ${certs.length > 1 ? 'are' : 'is'} for another key: none has this key's public key`, { slot });
  }
  const now = Date.now();
  const validNow = (c: X509Certificate) => Date.parse(c.validFrom) <= now && now <= Date.parse(c.validTo);
  return own.sort((a, b) => Number(validNow(b)) - Number(validNow(a)) || Date.parse(b.validFrom) - Date.parse(a.validFrom))[0]!;
}

/** Longest chains have a handful of links; a loop of cross-signed certificates must still end. */
const MAX_CHAIN = 10;

/** The leaf, then its issuer among the token's certificates (name and signature checked), and so on, to a self-signed root or the last one the token holds. */
function chainFrom(leaf: X509Certificate, ders: Uint8Array[]): { der: Buffer; pem: string; x509: X509Certificate }[] {
  const pool = ders.map((d) => new X509Certificate(Buffer.from(d)));
  const chain = [leaf];
  for (let cert = leaf; chain.length < MAX_CHAIN; ) {
    if (cert.checkIssued(cert) && cert.verify(cert.publicKey)) break; // self-signed: the root
    const issuer = pool.find((c) => cert.checkIssued(c) && cert.verify(c.publicKey) && !chain.some((k) => k.raw.equals(c.raw)));
    if (!issuer) break;
    chain.push(issuer);
    cert = issuer;
  }
  return chain.map((c) => ({ der: Buffer.from(c.raw), pem: c.toString(), x509: c }));
}

/** Destroys every object with the key's label/id (of one class if given). Returns how many. */
export async function destroyObject(gate: Gate, request: DestroyObjectRequest): Promise<number> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'destroyObject', req.key);
  gate.writable(slot, 'object destruction');
  const sel = check.keySelector(slot, req.key);
  // Err towards refusing: sharing a label or an id with a configured key is enough.
  const configured = Object.entries(slot.config.keys).find(([, k]) => (sel.label !== undefined && k.label === sel.label) || (sel.id !== undefined && k.id?.toLowerCase() === sel.id));
  if (configured && req.force !== true) {
    throw new Pkcs11SupervisorError('KEY_IN_USE', `key "${configured[0]}" is configured for slot "${slot.name}"; destroying it takes force: true (--force in the CLI)`, { slot: slot.name });
  }
  const named = check.uriObjectClass(req.key);
  if (named && req.class !== undefined && req.class !== named) throw check.badInput(`class ${check.shown(req.class)} is not the ${named} the key URI's type names`, slot.name);
  const query = { ...check.objectQuery({ class: req.class ?? named }, slot.name), label: sel.label, id: sel.id };
  return gate.publicKeys.changing(slot.name, () => gate.call<number>(slot, 'destroyObject', { op: 'destroyObjects', query, on: sel.on }, req, { needsLogin: true }));
}

export async function generateRandom(gate: Gate, request: GenerateRandomRequest): Promise<Buffer> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'generateRandom');
  const length = check.count(req.length, 'length', 1, 65536, slot.name);
  const bytes = await gate.call<Uint8Array>(slot, 'generateRandom', { op: 'generateRandom', length }, req, { needsLogin: false });
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
