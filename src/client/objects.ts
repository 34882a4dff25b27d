/** Token objects as plain data: find (whole or paged), certificates, destroy, random bytes. */
import { createHash, X509Certificate } from 'node:crypto';
import { Pkcs11SupervisorError } from '../model/errors.js';
import type { FoundPage, ObjectDescriptor } from '../model/protocol.js';
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

/** The key's certificate: the one its ref names by certLabel/certId, else the one stored under the key's own label/id. */
export async function getCertificate(gate: Gate, request: PublicKeyRequest): Promise<CertificateInfo> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'getCertificate', req.key);
  const ref = typeof req.key === 'string' && Object.hasOwn(slot.config.keys, req.key) ? slot.config.keys[req.key] : undefined;
  const sel = ref?.certLabel !== undefined ? { label: ref.certLabel } : ref?.certId !== undefined ? { id: ref.certId.toLowerCase() } : check.keySelector(slot, req.key);
  const der = Buffer.from(await gate.call<Uint8Array>(slot, 'getCertificate', { op: 'certificate', key: sel }, req, { needsLogin: false }));
  const x509 = new X509Certificate(der);
  const onToken = await gate.call<Uint8Array[]>(slot, 'getCertificate', { op: 'certificates', limit: 256 }, req, { needsLogin: false });
  return { der, pem: x509.toString(), x509, chain: chainFrom(x509, onToken) };
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
  const query = { ...check.objectQuery({ class: req.class }, slot.name), label: sel.label, id: sel.id };
  gate.publicKeys.forget(slot.name);
  return gate.call<number>(slot, 'destroyObject', { op: 'destroyObjects', query, on: sel.on }, req, { needsLogin: true });
}

export async function generateRandom(gate: Gate, request: GenerateRandomRequest): Promise<Buffer> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'generateRandom');
  const length = check.count(req.length, 'length', 1, 65536, slot.name);
  const bytes = await gate.call<Uint8Array>(slot, 'generateRandom', { op: 'generateRandom', length }, req, { needsLogin: false });
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
