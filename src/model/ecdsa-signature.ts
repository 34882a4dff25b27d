/**
 * PKCS#11 returns ECDSA signatures as r‖s (the JOSE form); X.509, CMS, OpenSSL and Node's
 * default want a DER SEQUENCE of two INTEGERs. These convert between the two.
 */
import { readDerLength } from './der.js';

/** The longest DER form of an r‖s signature of `rawBytes`: SEQUENCE with a long-form length, two INTEGERs each with a pad byte. */
export function maxDerBytes(rawBytes: number): number {
  return rawBytes + 9;
}

/**
 * Writes the DER form of `raw` into `out` from its start and returns its length. Allocates
 * nothing: this runs on every ECDSA signature, and a fresh buffer each time (off the V8 heap at
 * this size) cost about 2 µs a signature, allocation and its garbage collection together.
 */
export function writeDer(raw: Uint8Array, out: Uint8Array): number {
  const half = raw.length >> 1;
  const r = minimalStart(raw, 0, half);
  const s = minimalStart(raw, half, raw.length);
  const body = intBytes(raw, r, half) + intBytes(raw, s, raw.length);
  let p = 0;
  out[p++] = 0x30;
  if (body >= 0x80) out[p++] = 0x81; // r, s < 128 bytes each for P-256/384/521
  out[p++] = body;
  p = writeInt(raw, r, half, out, p);
  return writeInt(raw, s, raw.length, out, p);
}

/** Where r or s starts as a minimal INTEGER: leading zero bytes dropped, at least one byte kept. */
function minimalStart(raw: Uint8Array, from: number, to: number): number {
  let start = from;
  while (start < to - 1 && raw[start] === 0) start++;
  return start;
}

/** The INTEGER's bytes with its tag and length: a zero is added when the top bit is set. */
function intBytes(raw: Uint8Array, start: number, end: number): number {
  return 2 + end - start + (raw[start]! & 0x80 ? 1 : 0);
}

function writeInt(raw: Uint8Array, start: number, end: number, out: Uint8Array, at: number): number {
  let p = at;
  const pad = raw[start]! & 0x80 ? 1 : 0;
  out[p++] = 0x02;
  out[p++] = end - start + pad;
  if (pad) out[p++] = 0;
  for (let i = start; i < end; i++) out[p++] = raw[i]!;
  return p;
}

/**
 * r‖s from a DER signature; null for anything that is not one in DER for this field size. Strict,
 * as OpenSSL and the software verify are: minimal lengths, no extra leading zero and no negative
 * INTEGER, nothing after the SEQUENCE. A lax reading made the token say valid to re-encodings of
 * a signature that OpenSSL refuses, and one byte string answered differently by the two paths.
 */
export function derToRaw(der: Uint8Array, fieldBytes: number): Buffer | null {
  let p = 0;
  const readLen = (): number | null => {
    const len = readDerLength(der, p);
    // Long form only for 128 and up, one length byte (a P-521 signature is at most 139 bytes).
    if (!len || (len.start - p === 2 ? der[p] !== 0x81 || len.length < 0x80 : len.start - p !== 1)) return null;
    p = len.start;
    return len.length;
  };
  if (der[p++] !== 0x30) return null;
  const seqLen = readLen();
  if (seqLen === null || p + seqLen !== der.length) return null;
  const out = Buffer.alloc(fieldBytes * 2);
  for (let k = 0; k < 2; k++) {
    if (der[p++] !== 0x02) return null;
    const len = readLen();
    if (len === null || len === 0 || p + len > der.length) return null;
    let int = der.subarray(p, p + len);
    p += len;
    if (int[0]! & 0x80) return null; // negative
    if (int.length > 1 && int[0] === 0) {
      if (!(int[1]! & 0x80)) return null; // a zero byte that is not the sign pad
      int = int.subarray(1);
    }
    if (int.length > fieldBytes) return null;
    out.set(int, k * fieldBytes + fieldBytes - int.length);
  }
  return p === der.length ? out : null;
}
