/** The operation suite's JWS tests (see operation-suite.ts): every alg verified by jose or OpenSSL, RFC 7797, crit. */
import { describe, expect, it } from 'vitest';
import { generateKeyPairSync, verify as nodeVerify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as jose from 'jose';
import type { SuiteContext } from './operation-suite.js';
import { exportPublicKey } from './openssl.js';

export function jwsTests(ctx: SuiteContext): void {
  describe('JWS', () => {
    for (const [alg, key] of [
      ['RS256', 'rsa'],
      ['RS384', 'rsa'],
      ['RS512', 'rsa'],
      ['PS256', 'rsa'],
      ['PS384', 'rsa'],
      ['PS512', 'rsa'],
      ['ES256', 'ec'],
      ['ES384', 'ec384'],
      ['ES512', 'ec521'],
      ['EdDSA', 'ed'],
    ] as const) {
      it(`${alg} verifies with jose, kid = CKA_ID`, async () => {
        const jws = await ctx.sup.signJws({ slot: 's', key, alg, payload: { sub: 'alice', n: 1 }, header: { typ: 'JWT' } });
        const pem = readFileSync(exportPublicKey(ctx.td, 'ops', ctx.keys[key].id), 'utf8');
        const { payload, protectedHeader } = await jose.compactVerify(jws, await jose.importSPKI(pem, alg));
        expect(JSON.parse(Buffer.from(payload).toString())).toEqual({ sub: 'alice', n: 1 });
        expect(protectedHeader).toEqual({ alg, kid: ctx.keys[key].id, typ: 'JWT' });
      });
    }

    it('ES256K (secp256k1, RFC 8812) verifies with OpenSSL\'s public key in Node (jose\'s WebCrypto has no secp256k1); ES256 on it is refused', async () => {
      const jws = await ctx.sup.signJws({ slot: 's', key: 'k1', alg: 'ES256K', payload: { sub: 'alice' } });
      const [h, p, sig] = jws.split('.');
      expect(JSON.parse(Buffer.from(h!, 'base64url').toString())).toEqual({ alg: 'ES256K', kid: '06' });
      const pem = readFileSync(exportPublicKey(ctx.td, 'ops', '06'), 'utf8');
      expect(nodeVerify('sha256', Buffer.from(`${h}.${p}`), { key: pem, dsaEncoding: 'ieee-p1363' }, Buffer.from(sig!, 'base64url'))).toBe(true);
      expect((await ctx.sup.getPublicKey({ slot: 's', key: 'k1' })).jwk).toMatchObject({ kty: 'EC', crv: 'secp256k1', kid: '06' });
      await expect(ctx.sup.signJws({ slot: 's', key: 'k1', alg: 'ES256', payload: 'x' })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
    });

    it('an unencoded payload (RFC 7797, b64: false) verifies with jose; one it cannot carry is BAD_INPUT', async () => {
      const payload = '{"amount":"42 EUR"}';
      const jws = await ctx.sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload, header: { b64: false, crit: ['b64'] } });
      const [, carried] = jws.split('.');
      expect(carried).toBe(payload);
      const pem = readFileSync(exportPublicKey(ctx.td, 'ops', '02'), 'utf8');
      const verified = await jose.compactVerify(jws, await jose.importSPKI(pem, 'ES256'));
      expect(Buffer.from(verified.payload).toString()).toBe(payload);
      expect(verified.protectedHeader).toMatchObject({ b64: false, crit: ['b64'] });
      await expect(ctx.sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload: 'a.b', header: { b64: false, crit: ['b64'] } })).rejects.toMatchObject({ code: 'BAD_INPUT' });
      await expect(ctx.sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload, header: { b64: false } })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    });

    it('a crit list (RFC 7515 4.1.11) verifiers must reject is BAD_INPUT; one naming a carried extension verifies', async () => {
      const pem = readFileSync(exportPublicKey(ctx.td, 'ops', '02'), 'utf8');
      const jws = await ctx.sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload: 'x', header: { 'urn:example:policy': 'p1', crit: ['urn:example:policy'] } });
      const verified = await jose.compactVerify(jws, await jose.importSPKI(pem, 'ES256'), { crit: { 'urn:example:policy': true } });
      expect(verified.protectedHeader).toMatchObject({ alg: 'ES256', crit: ['urn:example:policy'] });
      for (const crit of [[], ['exp'], ['kid'], ['toString'], ['b64', 'b64'], 'b64', [1]]) {
        await expect(ctx.sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload: 'x', header: { b64: true, crit } })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('crit') });
      }
    });

    it("a header naming another alg, another key's jwk or a JWE's enc, or with a kid or typ that is not text, is BAD_INPUT, not rewritten; the same alg and the key's own jwk verify", async () => {
      const pem = readFileSync(exportPublicKey(ctx.td, 'ops', '02'), 'utf8');
      for (const header of [{ alg: 'none' }, { alg: 'RS256' }, { alg: ['ES256'] }, { enc: 'A128GCM' }, { jwk: (await ctx.sup.getPublicKey({ slot: 's', key: 'rsa' })).jwk }, { jwk: { kty: 'EC' } }, { jwk: 'key' }, { kid: 7 }, { typ: null }]) {
        await expect(ctx.sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload: 'x', header })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/^header\.(alg|enc|jwk|kid|typ) /) });
      }
      const { kid: _kid, ...jwk } = (await ctx.sup.getPublicKey({ slot: 's', key: 'ec' })).jwk as Record<string, unknown>;
      const jws = await ctx.sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload: 'x', header: { alg: 'ES256', jwk } });
      const verified = await jose.compactVerify(jws, await jose.importSPKI(pem, 'ES256'));
      expect(verified.protectedHeader).toMatchObject({ alg: 'ES256', jwk });
    });

    it('refuses an ES* algorithm on the wrong curve, and RS*/PS* with an RSA key under 2048 bits (which jose would refuse to verify)', async () => {
      await expect(ctx.sup.signJws({ slot: 's', key: 'ec', alg: 'ES384', payload: 'x' })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
      const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
      await ctx.sup.importKeyPair({ slot: 's', label: 'rsa-1024', id: 'b4', privateKeyPem: small });
      for (const alg of ['RS256', 'PS256'] as const) {
        await expect(ctx.sup.signJws({ slot: 's', key: { label: 'rsa-1024' }, alg, payload: 'x' })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', message: expect.stringContaining('2048 bits or more') });
      }
    });
  });
}
