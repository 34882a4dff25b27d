import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { derToRaw, maxDerBytes, writeDer } from '../dist/src/model/ecdsa-signature.js';

describe('ECDSA signature forms', () => {
  it('r‖s written as DER is what OpenSSL verifies, for every curve, across thousands of signatures (high bits, leading zeros)', () => {
    for (const [namedCurve, field] of [['P-256', 32], ['P-384', 48], ['P-521', 66]] as const) {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve });
      const out = new Uint8Array(maxDerBytes(2 * field));
      const runs = namedCurve === 'P-256' ? 3000 : 300;
      for (let i = 0; i < runs; i++) {
        const data = Buffer.from(`message ${i}`);
        const raw = sign('sha256', data, { key: privateKey, dsaEncoding: 'ieee-p1363' });
        const der = out.subarray(0, writeDer(raw, out));
        expect(verify('sha256', data, publicKey, der)).toBe(true);
        expect(derToRaw(der, field)).toEqual(raw);
      }
    }
  });

  it('minimal INTEGERs: leading zeros dropped, a zero added before a set top bit, one byte kept for zero', () => {
    const raw = new Uint8Array(64);
    raw[31] = 1; // r = 1
    raw[32] = 0x80; // s has its top bit set
    const out = new Uint8Array(maxDerBytes(64));
    const der = Buffer.from(out.subarray(0, writeDer(raw, out)));
    expect(der.toString('hex')).toBe(`3026020101022100${'80'.padEnd(64, '0')}`);
    raw[31] = 0; // r = 0: still one byte
    expect(Buffer.from(out.subarray(0, writeDer(raw, out))).toString('hex').slice(0, 10)).toBe('3026020100');
  });
});
