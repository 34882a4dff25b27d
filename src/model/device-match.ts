/**
 * What a PKCS#11 URI (RFC 7512) may say about where an object lives besides the object itself:
 * its token, the slot holding that token, the library serving it and the module file. A URI
 * matches only objects for which every attribute it names matches (RFC 7512, 2.3), so a key URI
 * naming another token, slot or library names no key of this slot's, whatever its label.
 */
export const DEVICE_ATTRIBUTES = [
  'token',
  'manufacturer',
  'serial',
  'model',
  'slot-description',
  'slot-manufacturer',
  'slot-id',
  'library-manufacturer',
  'library-description',
  'library-version',
  'module-name',
  'module-path',
] as const;
export type DeviceAttribute = (typeof DEVICE_ATTRIBUTES)[number];

/** The attributes a URI names, in DEVICE_ATTRIBUTES' order (so equal URIs give equal cache keys). */
export type DeviceMatch = Partial<Record<DeviceAttribute, string>>;

/** The same attributes as a session finds them: C_GetTokenInfo, C_GetSlotInfo, C_GetInfo and the module's path. */
export type DeviceFacts = Record<DeviceAttribute, string>;

/** `library-version=2` is 2.0 (RFC 7512: a missing minor version is 0). */
export function normalizeVersion(v: string): string {
  const [major, minor = '0'] = v.split('.');
  return `${Number(major)}.${Number(minor)}`;
}

/** A module's name as RFC 7512's module-name gives it: the file's name without "lib" and its extension (libsofthsm2.so → softhsm2). */
export function moduleNameOf(path: string): string {
  const file = path.slice(path.lastIndexOf('/') + 1);
  return file.replace(/^lib/, '').replace(/\.(so(\.[\d.]+)?|dylib|dll)$/i, '');
}

/** Why a session on `facts` is not where `want` points, or null when every named attribute matches. */
export function deviceMismatch(want: DeviceMatch | undefined, facts: DeviceFacts): string | null {
  if (!want) return null;
  for (const a of DEVICE_ATTRIBUTES) {
    const wanted = want[a];
    if (wanted !== undefined && wanted !== facts[a]) return `the URI names ${a} "${wanted}"; this slot's is "${facts[a]}"`;
  }
  return null;
}

/** One string per match, for cache keys. */
export function matchKey(want: DeviceMatch | undefined): string {
  return want ? DEVICE_ATTRIBUTES.map((a) => want[a] ?? '').join('\0') : '';
}
