/**
 * PKCS#11 URIs (RFC 7512), as OpenSSL, p11-kit, GnuTLS and systemd name tokens and keys:
 * `pkcs11:token=dev-token;object=demo-ec;id=%02;type=private`. Path attributes are
 * `;`-separated, query attributes `&`-separated after `?`, values percent-decoded (an `id` is
 * bytes, everything else UTF-8 text). What it names of the token, slot, library and module must
 * all match (device-match.ts). Any attribute is parsed (the RFC's vendor examples too), but a URI
 * naming one this supervisor does not know names nothing here (RFC 7512, 2.5: an unrecognized
 * attribute is a matching failure), so a misspelt or vendor attribute cannot be silently dropped
 * from what the caller asked for. A PIN in the URI (`pin-value`) is refused wherever the
 * supervisor reads one, and `pin-source` too: a slot's PIN comes from its configured source.
 */
import { DEVICE_ATTRIBUTES, normalizeVersion, type DeviceMatch } from './device-match.js';
import { trimPadded } from './token-match.js';

export interface Pkcs11Uri {
  /** Path attributes, decoded; `id` as hex. */
  path: Record<string, string>;
  query: Record<string, string>;
}

export class UriError extends Error {}

/** RFC 7512's path and query characters that may appear unescaped (pk11-pchar / pk11-qchar), besides unreserved ones. */
const PATH_CHARS = /^[A-Za-z0-9\-._~:[\]@!$'()*+,=&%]*$/;
const QUERY_CHARS = /^[A-Za-z0-9\-._~:[\]@!$'()*+,=/?|%]*$/;

function decode(value: string, what: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (c !== '%') {
      out.push(...Buffer.from(c, 'utf8'));
      continue;
    }
    const hex = value.slice(i + 1, i + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw new UriError(`${what}: "%" must be followed by two hex digits`);
    out.push(parseInt(hex, 16));
    i += 2;
  }
  return Buffer.from(out);
}

function attributes(part: string, separator: string, chars: RegExp, where: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (part === '') return out;
  for (const attr of part.split(separator)) {
    const eq = attr.indexOf('=');
    if (eq <= 0) throw new UriError(`${where} attribute "${attr}" is not name=value`);
    const name = attr.slice(0, eq);
    const raw = attr.slice(eq + 1);
    if (!/^[a-z][a-z0-9-]*$/i.test(name)) throw new UriError(`${where} attribute name "${name}" is not valid`);
    if (!chars.test(raw)) throw new UriError(`${where} attribute ${name} has a character that must be percent-encoded`);
    if (Object.hasOwn(out, name)) throw new UriError(`${where} attribute ${name} appears twice`);
    const bytes = decode(raw, name);
    out[name] = name === 'id' ? bytes.toString('hex') : bytes.toString('utf8');
  }
  return out;
}

// A test, not toLowerCase(): this runs for every key of every call.
const SCHEME = /^pkcs11:/i;

export function isPkcs11Uri(value: unknown): value is string {
  return typeof value === 'string' && SCHEME.test(value);
}

export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  if (!isPkcs11Uri(uri)) throw new UriError('a PKCS#11 URI starts with "pkcs11:"');
  const rest = uri.slice('pkcs11:'.length);
  const q = rest.indexOf('?');
  const path = attributes(q < 0 ? rest : rest.slice(0, q), ';', PATH_CHARS, 'path');
  const query = q < 0 ? {} : attributes(rest.slice(q + 1), '&', QUERY_CHARS, 'query');
  return { path, query };
}

/** Object classes by the URI's `type`. */
export const URI_TYPES = { private: 'privateKey', public: 'publicKey', cert: 'certificate', 'secret-key': 'secretKey', data: 'data' } as const;

const PIN_ATTRIBUTES = ['pin-value', 'pin-source'];
const KNOWN_PATH: ReadonlySet<string> = new Set(['object', 'type', 'id', ...DEVICE_ATTRIBUTES.filter((a) => !a.startsWith('module-'))]);
const KNOWN_QUERY: ReadonlySet<string> = new Set([...PIN_ATTRIBUTES, ...DEVICE_ATTRIBUTES.filter((a) => a.startsWith('module-'))]);

/** A URI the supervisor can read: no PIN in it (path or query), and no attribute it does not know. Read on every call naming a key by URI: nothing is built unless it refuses. */
function checkReadable({ path, query }: Pkcs11Uri): void {
  for (const a of PIN_ATTRIBUTES) if (a in query || a in path) throw new UriError("a PIN never goes in the config or in a call's URI (pin-value, pin-source): the slot's PIN source provides it");
  let known = true;
  for (const a in path) known &&= KNOWN_PATH.has(a);
  for (const a in query) known &&= KNOWN_QUERY.has(a);
  if (!known) {
    const unknown = [...Object.keys(path).filter((a) => !KNOWN_PATH.has(a)), ...Object.keys(query).filter((a) => !KNOWN_QUERY.has(a))];
    throw new UriError(`${unknown.map((a) => `"${a}"`).join(', ')} ${unknown.length > 1 ? 'are not attributes' : 'is not an attribute'} this supervisor knows, and a URI with one matches nothing (RFC 7512, 2.5); known: ${[...KNOWN_PATH].join(', ')}; in the query ${[...KNOWN_QUERY].filter((a) => !PIN_ATTRIBUTES.includes(a)).join(', ')}`);
  }
}

/** The key a URI names: `object` is its label, `id` its CKA_ID, `on` the token, slot and library it is on. The operation decides the class; `type` must be one. */
export function keyOfUri(uri: Pkcs11Uri): { label: string | undefined; id: string | undefined; on: DeviceMatch | undefined } {
  checkReadable(uri);
  const { path } = uri;
  if (path.type !== undefined && !Object.hasOwn(URI_TYPES, path.type)) throw new UriError(`type=${path.type} is not a PKCS#11 object type (${Object.keys(URI_TYPES).join(', ')})`);
  if (path.object === undefined && !path.id) throw new UriError('a key URI names its object (label), its id, or both');
  return { label: path.object, id: path.id || undefined, on: deviceOfUri(uri) };
}

/**
 * The token a URI names, as a selector: by serial where it has one (it is unique), else by label;
 * whatever else it names of the token, slot or library must match too.
 */
export function tokenOfUri(uri: Pkcs11Uri): { serial: string; on?: DeviceMatch } | { label: string; on?: DeviceMatch } {
  checkReadable(uri);
  const { serial, token } = uri.path;
  const primary = serial ? { serial } : token ? { label: token } : null;
  if (!primary) throw new UriError('the token URI names neither token (label) nor serial');
  const on = deviceOfUri(uri) ?? {};
  delete on[serial ? 'serial' : 'token']; // the selector itself
  return Object.keys(on).length > 0 ? { ...primary, on } : primary;
}

/** What the URI names of the token, slot, library and module (device-match.ts), checked for form; undefined when nothing. */
function deviceOfUri({ path, query }: Pkcs11Uri): DeviceMatch | undefined {
  const on: DeviceMatch = {};
  for (const a of DEVICE_ATTRIBUTES) {
    const value = a.startsWith('module-') ? query[a] : path[a];
    // Blank-padded as the token keeps it: one meaning, one value (and one cache entry for it).
    const text = value === undefined ? '' : trimPadded(value);
    if (text) on[a] = text; // an empty value names nothing (as an empty id)
  }
  if (on['slot-id'] !== undefined && !/^\d{1,20}$/.test(on['slot-id'])) throw new UriError(`slot-id=${on['slot-id']} is not a decimal slot number`);
  if (on['library-version'] !== undefined) {
    if (!/^\d{1,3}(\.\d{1,3})?$/.test(on['library-version'])) throw new UriError(`library-version=${on['library-version']} is not major[.minor]`);
    on['library-version'] = normalizeVersion(on['library-version']);
  }
  return Object.keys(on).length > 0 ? on : undefined;
}

const encode = (text: string) => [...Buffer.from(text, 'utf8')].map((b) => (/[A-Za-z0-9\-._~]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('');

/** The URI naming one object: its token (label and serial), its label, id and class. */
export function formatPkcs11Uri(o: { token: string; serial: string; object: string; id: string; class: string }): string {
  const type = Object.entries(URI_TYPES).find(([, cls]) => cls === o.class)?.[0];
  const parts = [`token=${encode(o.token)}`, `serial=${encode(o.serial)}`, `object=${encode(o.object)}`];
  if (o.id) parts.push(`id=${o.id.replace(/../g, (h) => `%${h.toUpperCase()}`)}`);
  if (type) parts.push(`type=${type}`);
  return `pkcs11:${parts.join(';')}`;
}
