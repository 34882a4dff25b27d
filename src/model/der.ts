/** The two DER pieces PKCS#11 objects need: a length, and an OCTET STRING around a value (CKA_EC_POINT). */

/** Reads a definite length (short form, or long form of 1–2 bytes) at `at`: the length and where its content starts; null if malformed. */
export function readDerLength(der: Uint8Array, at: number): { length: number; start: number } | null {
  const first = der[at];
  if (first === undefined) return null;
  if (first < 0x80) return { length: first, start: at + 1 };
  const n = first & 0x7f;
  if (n < 1 || n > 2 || at + n >= der.length) return null;
  let length = 0;
  for (let i = 1; i <= n; i++) length = (length << 8) | der[at + i]!;
  return { length, start: at + 1 + n };
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
