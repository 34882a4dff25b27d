/**
 * PKCS#11 returns ECDSA signatures as r‖s (the JOSE form); X.509, CMS, OpenSSL and Node's
 * default want a DER SEQUENCE of two INTEGERs. These convert between the two.
 */
/** Length of r or s as a minimal DER INTEGER body: leading zeros dropped, one added if the top bit is set. */
function intSpan(raw: Uint8Array, from: number, to: number): { start: number; pad: number; len: number } {
  let start = from;
  while (start < to - 1 && raw[start] === 0) start++;
  const pad = raw[start]! & 0x80 ? 1 : 0;
  return { start, pad, len: to - start + pad };
}

/**
 * Sized once and written in place: this runs on every ECDSA signature. Not from Buffer's pool:
 * a pooled Buffer crosses a thread as its whole 8 KiB slab.
 */
export function rawToDer(raw: Uint8Array): Buffer {
  const half = raw.length >> 1;
  const r = intSpan(raw, 0, half);
  const s = intSpan(raw, half, raw.length);
  const body = 2 + r.len + 2 + s.len; // r, s < 128 bytes each for P-256/384/521
  const long = body >= 0x80;
  const out = Buffer.allocUnsafeSlow(body + (long ? 3 : 2));
  let p = 0;
  out[p++] = 0x30;
  if (long) out[p++] = 0x81;
  out[p++] = body;
  for (const x of [r, s]) {
    out[p++] = 0x02;
    out[p++] = x.len;
    if (x.pad) out[p++] = 0;
    out.set(raw.subarray(x.start, x.start + x.len - x.pad), p);
    p += x.len - x.pad;
  }
  return out;
}

/** Returns null for anything that is not a well-formed signature for this field size. */
export function derToRaw(der: Uint8Array, fieldBytes: number): Buffer | null {
  let p = 0;
  const readLen = (): number | null => {
    const first = der[p++];
    if (first === undefined) return null;
    if (first < 0x80) return first;
    const n = first & 0x7f;
    if (n < 1 || n > 2) return null;
    let len = 0;
    for (let i = 0; i < n; i++) {
      const b = der[p++];
      if (b === undefined) return null;
      len = (len << 8) | b;
    }
    return len;
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
    while (int.length > 1 && int[0] === 0) int = int.subarray(1);
    if (int.length > fieldBytes) return null;
    out.set(int, k * fieldBytes + fieldBytes - int.length);
  }
  return p === der.length ? out : null;
}
