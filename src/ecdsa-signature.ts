/**
 * PKCS#11 returns ECDSA signatures as r‖s (the JOSE form); X.509, CMS, OpenSSL and Node's
 * default want a DER SEQUENCE of two INTEGERs. These convert between the two.
 */
function derLength(n: number): number[] {
  return n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
}

function derInteger(bytes: Uint8Array): number[] {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const body = Array.from(bytes.subarray(i));
  if ((body[0] ?? 0) & 0x80) body.unshift(0);
  return [0x02, ...derLength(body.length), ...body];
}

export function rawToDer(raw: Uint8Array): Buffer {
  const half = raw.length / 2;
  const seq = [...derInteger(raw.subarray(0, half)), ...derInteger(raw.subarray(half))];
  return Buffer.from([0x30, ...derLength(seq.length), ...seq]);
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
