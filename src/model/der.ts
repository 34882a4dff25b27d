/** The DER pieces PKCS#11 objects and the TLS files need: a length, an element, and an OCTET STRING around a value (CKA_EC_POINT). */

/** Reads a definite length (short form, or long form of 1–4 bytes) at `at`: the length and where its content starts; null if malformed. */
export function readDerLength(der: Uint8Array, at: number): { length: number; start: number } | null {
  const first = der[at];
  if (first === undefined) return null;
  if (first < 0x80) return { length: first, start: at + 1 };
  const n = first & 0x7f;
  if (n < 1 || n > 4 || at + n >= der.length) return null;
  let length = 0;
  for (let i = 1; i <= n; i++) length = length * 256 + der[at + i]!;
  return { length, start: at + 1 + n };
}

/** The element at `at` (tag, where its content starts and ends); null if malformed or past `end`. */
export function readDerElement(der: Uint8Array, at: number, end = der.length): { tag: number; start: number; end: number } | null {
  const tag = der[at];
  const len = at < end && tag !== undefined ? readDerLength(der, at + 1) : null;
  if (tag === undefined || !len || len.start + len.length > end) return null;
  return { tag, start: len.start, end: len.start + len.length };
}

export function derLength(n: number): number[] {
  return n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
}

export function octetString(content: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([0x04, ...derLength(content.length)]), content]);
}

/** The value inside an OCTET STRING; a module that returns the bare point (some do for CKA_EC_POINT) gets it back as it is. */
export function unwrapOctetString(b: Buffer): Buffer {
  if (b[0] !== 0x04) return b;
  const len = readDerLength(b, 1);
  return len && len.start + len.length === b.length ? b.subarray(len.start) : b;
}
