/**
 * The operation suite's import tests (see operation-suite.ts): PKCS#12 and PEM key pairs made by
 * OpenSSL, certificates and their chains, replace, and keys of kinds the service does not use.
 */
import { describe, expect, it } from 'vitest';
import { createHash, generateKeyPairSync, verify as nodeVerify, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as jose from 'jose';
import type { SuiteContext } from './operation-suite.js';
import { pkcs11Tool } from './softhsm.js';
import { openssl, tmpFile } from './openssl.js';

export function importTests(ctx: SuiteContext): void {
  const { data } = ctx;
  describe('import', () => {
    function makeP12(keyAlg: string[], legacy: boolean): { p12: Buffer; cert: Buffer } {
      const key = tmpFile('k.pem');
      const crt = tmpFile('c.pem');
      openssl(['req', '-x509', '-newkey', ...keyAlg, '-nodes', '-keyout', key, '-out', crt, '-subj', '/CN=imported', '-days', '2']);
      const out = tmpFile('x.p12');
      openssl(['pkcs12', '-export', ...(legacy ? ['-legacy'] : []), '-inkey', key, '-in', crt, '-out', out, '-passout', 'pass:correct horse']);
      return { p12: readFileSync(out), cert: readFileSync(crt) };
    }

    for (const [name, alg, legacy, mech] of [
      ['EC P-256, OpenSSL 3 default (PBES2/AES)', ['ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], false, 'ECDSA-SHA256'],
      ['RSA 2048, legacy (3DES/RC2)', ['rsa:2048'], true, 'RSA-PKCS1-SHA256'],
    ] as const) {
      it(`a PKCS#12 from openssl pkcs12 -export imports and signs: ${name}`, async () => {
        const { p12, cert } = makeP12([...alg], legacy);
        const label = `p12-${legacy ? 'legacy' : 'default'}`;
        const created = await ctx.sup.importKeyPair({ slot: 's', label, pkcs12: p12, password: 'correct horse' });
        expect(created.map((d) => d.class)).toEqual(['privateKey', 'publicKey', 'certificate']);
        expect(created[0]).toMatchObject({ sensitive: true, extractable: false, sign: true });
        expect(new Set(created.map((d) => d.id)).size).toBe(1);
        const x509 = new X509Certificate(cert);
        const sig = await ctx.sup.sign({ slot: 's', key: { label }, mechanism: mech, data });
        expect(nodeVerify('sha256', data, x509.publicKey, sig)).toBe(true);
        const onToken = await ctx.sup.getCertificate({ slot: 's', key: { label } });
        expect(onToken.der.equals(x509.raw)).toBe(true);
        expect(pkcs11Tool(ctx.td, 'ops', null, ['--list-objects', '--type', 'cert'])).toContain(`label:      ${label}`);
      });
    }

    it('the same PKCS#12 again is KEY_IN_USE and stores nothing; with replace: true the new objects take the old ones\' place', async () => {
      const { p12, cert } = makeP12(['ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], false);
      const first = await ctx.sup.importKeyPair({ slot: 's', label: 'twice', pkcs12: p12, password: 'correct horse' });
      await expect(ctx.sup.importKeyPair({ slot: 's', label: 'twice', pkcs12: p12, password: 'correct horse' })).rejects.toMatchObject({ code: 'KEY_IN_USE' });
      expect(await ctx.sup.findObjects({ slot: 's', template: { label: 'twice' } })).toHaveLength(3);
      const again = await ctx.sup.importKeyPair({ slot: 's', label: 'twice', pkcs12: p12, password: 'correct horse', replace: true });
      expect(again.map((d) => d.id)).toEqual(first.map((d) => d.id));
      expect(await ctx.sup.findObjects({ slot: 's', template: { label: 'twice' } })).toHaveLength(3);
      // One key under that label, not two: the lookup is not ambiguous, and it signs with the certificate's key.
      const sig = await ctx.sup.sign({ slot: 's', key: { label: 'twice' }, mechanism: 'ECDSA-SHA256', data });
      expect(nodeVerify('sha256', data, new X509Certificate(cert).publicKey, sig)).toBe(true);
      // A second certificate under that id conflicts with the first (not with the key): refused, or replaced.
      await expect(ctx.sup.importCertificate({ slot: 's', certificate: cert, label: 'twice, renewed', id: first[0]!.id })).rejects.toMatchObject({ code: 'KEY_IN_USE' });
      expect(await ctx.sup.importCertificate({ slot: 's', certificate: cert, label: 'twice, renewed', id: first[0]!.id, replace: true })).toMatchObject({ class: 'certificate', label: 'twice, renewed' });
      expect((await ctx.sup.findObjects({ slot: 's', template: { class: 'certificate', id: first[0]!.id } })).map((d) => d.label)).toEqual(['twice, renewed']);
    });

    it('getCertificate returns the chain the token holds, leaf first; signJws x5c carries it; a second key from the same CA shares its chain certificates', async () => {
      const cnf = tmpFile('min.cnf', '[req]\ndistinguished_name = dn\n[dn]\n');
      const make = (name: string, ca: { key: string; crt: string } | null, isCa: boolean) => {
        const key = tmpFile(`${name}.key`);
        const crt = tmpFile(`${name}.crt`);
        const ext = isCa ? ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign'] : ['-addext', 'basicConstraints=critical,CA:FALSE'];
        const signer = ca ? ['-CA', ca.crt, '-CAkey', ca.key] : [];
        openssl(['req', '-x509', '-config', cnf, '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${name}`, '-days', '2', ...signer, ...ext, '-keyout', key, '-out', crt]);
        return { key, crt };
      };
      const root = make('chain-root', null, true);
      const inter = make('chain-inter', root, true);
      const leaves = [make('chain-leaf-1', inter, false), make('chain-leaf-2', inter, false)];
      const cas = tmpFile('cas.pem', Buffer.concat([readFileSync(inter.crt), readFileSync(root.crt)]));
      for (const [i, leaf] of leaves.entries()) {
        const p12 = tmpFile(`leaf-${i}.p12`);
        openssl(['pkcs12', '-export', '-inkey', leaf.key, '-in', leaf.crt, '-certfile', cas, '-out', p12, '-passout', 'pass:chain']);
        await ctx.sup.importKeyPair({ slot: 's', label: `chained-${i}`, pkcs12: readFileSync(p12), password: 'chain' });
      }
      const info = await ctx.sup.getCertificate({ slot: 's', key: { label: 'chained-1' } });
      expect(info.chain.map((c) => c.x509.subject)).toEqual(['CN=chain-leaf-2', 'CN=chain-inter', 'CN=chain-root']);
      expect(info.chain[0]!.der.equals(info.der)).toBe(true);
      // Each chain certificate is stored once, though both imports carried it.
      expect((await ctx.sup.findObjects({ slot: 's', template: { class: 'certificate' } })).filter((d) => d.label.endsWith(' chain'))).toHaveLength(2);
      const jws = await ctx.sup.signJws({ slot: 's', key: { label: 'chained-0' }, alg: 'ES256', payload: 'chained', x5c: true });
      const header = JSON.parse(Buffer.from(jws.split('.')[0]!, 'base64url').toString()) as { x5c: string[] };
      expect(header.x5c.map((c) => new X509Certificate(Buffer.from(c, 'base64')).subject)).toEqual(['CN=chain-leaf-1', 'CN=chain-inter', 'CN=chain-root']);
      const verified = await jose.compactVerify(jws, new X509Certificate(Buffer.from(header.x5c[0]!, 'base64')).publicKey);
      expect(Buffer.from(verified.payload).toString()).toBe('chained');
      // A chain the caller gives must start with the signing key's certificate, and its thumbprints must be that certificate's.
      const x5c = header.x5c;
      const thumb = createHash('sha256').update(Buffer.from(x5c[0]!, 'base64')).digest('base64url');
      const own = await ctx.sup.signJws({ slot: 's', key: { label: 'chained-0' }, alg: 'ES256', payload: 'given', header: { x5c, 'x5t#S256': thumb } });
      await jose.compactVerify(own, new X509Certificate(Buffer.from(x5c[0]!, 'base64')).publicKey);
      for (const [key, given] of [['chained-1', { x5c }], ['chained-0', { x5c, 'x5t#S256': thumb.slice(1) + 'A' }], ['chained-0', { x5c: [] }], ['chained-0', { x5c: ['not base64!'] }]] as const) {
        await expect(ctx.sup.signJws({ slot: 's', key: { label: key }, alg: 'ES256', payload: 'given', header: given })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('header.x5') });
      }
      await expect(ctx.sup.signJws({ slot: 's', key: { label: 'chained-0' }, alg: 'ES256', payload: 'given', header: { x5c }, x5c: true })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('not both') });
    });

    it("getCertificate gives the key's own certificate: a certificate left from a replaced key under the same label is passed over, and alone it is KEY_NOT_FOUND", async () => {
      const pair = (cn: string) => {
        const key = tmpFile(`${cn}.key`);
        const crt = tmpFile(`${cn}.crt`);
        openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', crt, '-subj', `/CN=${cn}`, '-days', '2']);
        return { privateKeyPem: readFileSync(key, 'utf8'), cert: readFileSync(crt, 'utf8') };
      };
      const old = pair('rotated-old');
      await ctx.sup.importKeyPair({ slot: 's', label: 'rotated', id: 'e1', privateKeyPem: old.privateKeyPem, certificates: [old.cert] });
      expect((await ctx.sup.getCertificate({ slot: 's', key: { label: 'rotated' } })).x509.subject).toBe('CN=rotated-old');
      // The key is destroyed; its certificate stays behind under the same label.
      for (const cls of ['privateKey', 'publicKey'] as const) expect(await ctx.sup.destroyObject({ slot: 's', key: { id: 'e1' }, class: cls })).toBe(1);
      // The new key and its certificate come from another application, under the same label.
      const next = pair('rotated-new');
      await ctx.sup.importKeyPair({ slot: 's', label: 'rotated', id: 'e2', privateKeyPem: next.privateKeyPem });
      const der = tmpFile('rotated-new.der', new X509Certificate(next.cert).raw);
      pkcs11Tool(ctx.td, 'ops', ctx.pin, ['--write-object', der, '--type', 'cert', '--label', 'rotated', '--id', 'e2']);
      expect(await ctx.sup.findObjects({ slot: 's', template: { class: 'certificate', label: 'rotated' } })).toHaveLength(2);
      const info = await ctx.sup.getCertificate({ slot: 's', key: { label: 'rotated' } });
      expect(info.der.equals(new X509Certificate(next.cert).raw)).toBe(true);
      const jws = await ctx.sup.signJws({ slot: 's', key: { label: 'rotated' }, alg: 'ES256', payload: 'rotated', x5c: true });
      const { x5c } = jose.decodeProtectedHeader(jws) as { x5c: string[] };
      expect(new X509Certificate(Buffer.from(x5c[0]!, 'base64')).subject).toBe('CN=rotated-new');
      await jose.compactVerify(jws, new X509Certificate(Buffer.from(x5c[0]!, 'base64')).publicKey);
      // Without the new key's certificate, the old one is not handed out as the new key's.
      expect(await ctx.sup.destroyObject({ slot: 's', key: { id: 'e2' }, class: 'certificate' })).toBe(1);
      await expect(ctx.sup.getCertificate({ slot: 's', key: { label: 'rotated' } })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND', message: expect.stringContaining('is for another key') });
      await expect(ctx.sup.signJws({ slot: 's', key: { label: 'rotated' }, alg: 'ES256', payload: 'rotated', x5c: true })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    });

    it('a wrong PKCS#12 password is BAD_INPUT and nothing is stored', async () => {
      const { p12 } = makeP12(['ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], false);
      await expect(ctx.sup.importKeyPair({ slot: 's', label: 'wrong-pw', pkcs12: p12, password: 'nope' })).rejects.toMatchObject({ code: 'BAD_INPUT' });
      expect(await ctx.sup.findObjects({ slot: 's', template: { label: 'wrong-pw' } })).toEqual([]);
    });

    it('a key of a kind the service does not use (DSA, RSA-PSS-only, X25519, Ed448, brainpool) is BAD_INPUT naming it; nothing is stored', async () => {
      const kinds: [KeyObject, RegExp][] = [
        [generateKeyPairSync('dsa', { modulusLength: 1024, divisorLength: 160 }).privateKey, /^DSA keys cannot be imported/],
        [generateKeyPairSync('rsa-pss', { modulusLength: 1024 }).privateKey, /^RSA keys restricted to PSS/],
        [generateKeyPairSync('x25519').privateKey, /^X25519 keys/],
        [generateKeyPairSync('ed448').privateKey, /^ED448 keys/],
        [generateKeyPairSync('ec', { namedCurve: 'brainpoolP256r1' }).privateKey, /^EC keys on brainpoolP256r1/],
      ];
      for (const [key, named] of kinds) {
        const privateKeyPem = key.export({ type: 'pkcs8', format: 'pem' }) as string;
        await expect(ctx.sup.importKeyPair({ slot: 's', label: 'odd-kind', privateKeyPem })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(named) });
      }
      expect(await ctx.sup.findObjects({ slot: 's', template: { label: 'odd-kind' } })).toEqual([]);
    });

    it('a PEM key with its certificate imports; importCertificate adds a certificate for a key', async () => {
      const key = tmpFile('k.pem');
      const crt = tmpFile('c.pem');
      openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-nodes', '-keyout', key, '-out', crt, '-subj', '/CN=pem', '-days', '2']);
      const created = await ctx.sup.importKeyPair({ slot: 's', label: 'pem-key', id: 'a1', privateKeyPem: readFileSync(key, 'utf8'), certificates: [readFileSync(crt, 'utf8')] });
      expect(created.map((d) => `${d.class}:${d.id}`)).toEqual(['privateKey:a1', 'publicKey:a1', 'certificate:a1']);
      const sig = await ctx.sup.sign({ slot: 's', key: { id: 'a1' }, mechanism: 'ECDSA-SHA384', data });
      expect(nodeVerify('sha384', data, new X509Certificate(readFileSync(crt)).publicKey, sig)).toBe(true);

      const other = tmpFile('c2.pem');
      openssl(['req', '-x509', '-key', key, '-out', other, '-subj', '/CN=renewed', '-days', '3']);
      const d = await ctx.sup.importCertificate({ slot: 's', certificate: readFileSync(other), label: 'pem-key renewed', id: 'a2' });
      expect(d).toMatchObject({ class: 'certificate', id: 'a2' });
      expect((await ctx.sup.getCertificate({ slot: 's', key: { id: 'a2' } })).x509.subject).toBe('CN=renewed');

      // Under the key's id, a certificate for another key is refused: nothing is stored.
      const stranger = tmpFile('c3.pem');
      openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-nodes', '-keyout', tmpFile('k3.pem'), '-out', stranger, '-subj', '/CN=stranger', '-days', '2']);
      await expect(ctx.sup.importCertificate({ slot: 's', certificate: readFileSync(stranger), label: 'pem-key stranger', id: 'a1', replace: true })).rejects.toMatchObject({
        code: 'BAD_INPUT',
        message: expect.stringContaining('not for the key with id a1'),
      });
      expect((await ctx.sup.findObjects({ slot: 's', template: { class: 'certificate', id: 'a1' } })).map((o) => o.label)).toEqual(['pem-key']);
      // Its own certificate again, renewed, under its id: taken.
      const renewed = tmpFile('c4.pem');
      openssl(['req', '-x509', '-key', key, '-out', renewed, '-subj', '/CN=pem renewed', '-days', '4']);
      expect(await ctx.sup.importCertificate({ slot: 's', certificate: readFileSync(renewed), label: 'pem-key', id: 'a1', replace: true })).toMatchObject({ class: 'certificate', id: 'a1' });
    });
  });
}
