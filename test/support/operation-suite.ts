/**
 * The operation suite: every operation of the client API against a real SoftHSM2 token, each
 * answer checked by OpenSSL, Node, jose or pkcs11-tool. It takes its client from a transport,
 * so the same tests run in the process, over the local socket and over mutual TLS.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCipheriv, createDecipheriv, createECDH, createHash, createHmac, createPublicKey, generateKeyPairSync, randomBytes, verify as nodeVerify, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as jose from 'jose';
import type { Pkcs11Client } from '../../dist/src/index.js';
import { configFor, createToken, pkcs11Tool, tokenDir, type TestToken, type TokenDir } from './softhsm.js';
import { exportPublicKey, openssl, opensslVerifies, tmpFile } from './openssl.js';
import { open, type Opened, type Transport } from './transports.js';

export function operationSuite(transport: Transport): void {
  describe(`operations, ${transport}`, () => {
  let td: TokenDir;
  let tok: TestToken;
  let sup: Pkcs11Client;
  let opened: Opened;
  const data = Buffer.from('an invoice, a token, a certificate request');

  const KEYS = {
    rsa: { label: 'rsa', id: '01' },
    ec: { label: 'ec', id: '02' },
    ec384: { label: 'ec384', id: '03' },
    ec521: { label: 'ec521', id: '04' },
    ed: { label: 'ed', id: '05' },
    k1: { label: 'k1', id: '06' },
  };

  beforeAll(async () => {
    td = tokenDir();
    tok = createToken(td, 'ops', [
      { kind: 'rsa:2048', label: 'rsa', id: '01' },
      { kind: 'EC:prime256v1', label: 'ec', id: '02' },
      { kind: 'EC:secp384r1', label: 'ec384', id: '03' },
      { kind: 'EC:secp521r1', label: 'ec521', id: '04' },
      { kind: 'EC:edwards25519', label: 'ed', id: '05' },
      { kind: 'EC:secp256k1', label: 'k1', id: '06' },
      // Two keys under one label: lookups by that label alone are ambiguous.
      { kind: 'EC:prime256v1', label: 'twin', id: '21' },
      { kind: 'EC:prime256v1', label: 'twin', id: '22' },
    ]);
    // A token nobody in this process logs in to: login state is per token, per application.
    createToken(td, 'anon', [{ kind: 'EC:prime256v1', label: 'ec', id: '02' }]);
    // A key-encryption key only this suite knows the bytes of, written by pkcs11-tool.
    const kekFile = tmpFile('kek.bin', KEK);
    pkcs11Tool(td, 'ops', tok.pin, ['--write-object', kekFile, '--type', 'secrkey', '--key-type', 'AES:32', '--label', 'kek', '--id', '40', '--usage-decrypt', '--usage-wrap', '--sensitive']);
    process.env.OPS_PIN = tok.pin;
    opened = await open(transport, configFor(td, { s: { token: { label: 'ops' }, pin: { env: 'OPS_PIN' }, keys: KEYS, maxDataBytes: 1 << 20 } }), td.dir);
    sup = opened.client;
  });

  afterAll(() => opened?.close());

  const KEK = randomBytes(32);
  const flip = (b: Buffer) => {
    const c = Buffer.from(b);
    c[c.length >> 1]! ^= 0x01;
    return c;
  };
  const nodeHash = (mech: string) => (mech === 'EdDSA' ? null : `sha${/SHA(\d+)/.exec(mech)?.[1] ?? '256'}`);

  describe('every mechanism, checked by OpenSSL and Node against the key pkcs11-tool exports', () => {
    const cases: [keyof typeof KEYS, string][] = [
      ['rsa', 'RSA-PKCS1-SHA256'],
      ['rsa', 'RSA-PKCS1-SHA384'],
      ['rsa', 'RSA-PKCS1-SHA512'],
      ['rsa', 'RSA-PSS-SHA256'],
      ['rsa', 'RSA-PSS-SHA384'],
      ['rsa', 'RSA-PSS-SHA512'],
      ['ec', 'ECDSA-SHA256'],
      ['ec384', 'ECDSA-SHA384'],
      ['ec521', 'ECDSA-SHA512'],
      ['ed', 'EdDSA'],
      ['k1', 'ECDSA-SHA256'],
    ];
    for (const [key, mechanism] of cases) {
      it(`${mechanism} with ${key}`, async () => {
        const sig = await sup.sign({ slot: 's', key, mechanism: mechanism as never, data });
        const pem = exportPublicKey(td, 'ops', KEYS[key].id);
        expect(opensslVerifies(pem, mechanism, data, sig)).toBe(true);
        const pss = mechanism.startsWith('RSA-PSS') ? { padding: 6, saltLength: Number(/SHA(\d+)/.exec(mechanism)![1]) / 8 } : {};
        expect(nodeVerify(nodeHash(mechanism), data, { key: readFileSync(pem), ...pss }, sig)).toBe(true);
        expect(await sup.verify({ slot: 's', key, mechanism: mechanism as never, data, signature: sig })).toBe(true);
        expect(await sup.verify({ slot: 's', key, mechanism: mechanism as never, data, signature: flip(sig) })).toBe(false);
        expect(opensslVerifies(pem, mechanism, data, flip(sig))).toBe(false);
        expect(await sup.verify({ slot: 's', key, mechanism: mechanism as never, data: flip(data), signature: sig })).toBe(false);
      });
    }

    it('ECDSA raw r‖s (JOSE) output verifies as IEEE P1363 and is 2 × field size', async () => {
      for (const [key, mech, bytes] of [['ec', 'ECDSA-SHA256', 64], ['ec384', 'ECDSA-SHA384', 96], ['ec521', 'ECDSA-SHA512', 132]] as const) {
        const sig = await sup.sign({ slot: 's', key, mechanism: mech, data, signatureFormat: 'raw' });
        expect(sig.length).toBe(bytes);
        const pem = readFileSync(exportPublicKey(td, 'ops', KEYS[key].id));
        expect(nodeVerify(nodeHash(mech), data, { key: pem, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
        expect(await sup.verify({ slot: 's', key, mechanism: mech, data, signature: sig, signatureFormat: 'raw' })).toBe(true);
      }
    });

    it('pre-hashed input signs the same digest the unhashed call would', async () => {
      const pem = exportPublicKey(td, 'ops', '02');
      const digest = createHash('sha256').update(data).digest();
      const sig = await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: digest, prehashed: true });
      expect(opensslVerifies(pem, 'ECDSA-SHA256', data, sig)).toBe(true);
      const rsaPem = exportPublicKey(td, 'ops', '01');
      for (const mech of ['RSA-PKCS1-SHA256', 'RSA-PSS-SHA256'] as const) {
        const rsaSig = await sup.sign({ slot: 's', key: 'rsa', mechanism: mech, data: digest, prehashed: true });
        expect(opensslVerifies(rsaPem, mech, data, rsaSig)).toBe(true);
      }
      await expect(sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: digest.subarray(1), prehashed: true })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    });

    it('raw RSA-PKCS1 signs a caller-built DigestInfo', async () => {
      const digestInfo = Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), createHash('sha256').update(data).digest()]);
      const sig = await sup.sign({ slot: 's', key: 'rsa', mechanism: 'RSA-PKCS1', data: digestInfo });
      expect(opensslVerifies(exportPublicKey(td, 'ops', '01'), 'RSA-PKCS1-SHA256', data, sig)).toBe(true);
    });

    it('getPublicKey matches what pkcs11-tool exports, as SPKI, PEM, JWK and KeyObject', async () => {
      for (const key of Object.keys(KEYS) as (keyof typeof KEYS)[]) {
        const pk = await sup.getPublicKey({ slot: 's', key });
        const theirs = createPublicKey(readFileSync(exportPublicKey(td, 'ops', KEYS[key].id))).export({ type: 'spki', format: 'der' });
        expect(pk.spki.equals(theirs)).toBe(true);
        expect(pk.id).toBe(KEYS[key].id);
        expect(pk.jwk.kid).toBe(KEYS[key].id);
        expect(createPublicKey({ key: pk.jwk, format: 'jwk' }).export({ type: 'spki', format: 'der' }).equals(theirs)).toBe(true);
      }
    });
  });

  describe('objects', () => {
    it('finds the keys pkcs11-tool created, as plain descriptors', async () => {
      const priv = await sup.findObjects({ slot: 's', template: { class: 'privateKey' } });
      const byLabel = Object.fromEntries(priv.map((d) => [`${d.label}/${d.id}`, d]));
      expect(byLabel['rsa/01']).toMatchObject({ class: 'privateKey', keyType: 'RSA', bits: 2048, sign: true, private: true, sensitive: true, extractable: false });
      expect(byLabel['ec384/03']).toMatchObject({ keyType: 'EC', curve: 'P-384' });
      expect(byLabel['ed/05']).toMatchObject({ keyType: 'EC_EDWARDS', curve: 'Ed25519' });
      const ecPub = await sup.findObjects({ slot: 's', template: { class: 'publicKey', keyType: 'EC' } });
      expect(ecPub.map((d) => d.id).sort()).toEqual(['02', '03', '04', '06', '21', '22']);
      expect(byLabel['k1/06']).toMatchObject({ keyType: 'EC', curve: 'secp256k1' });
      expect(ecPub.every((d) => d.verify === true && d.private === false)).toBe(true);
    });

    it('describes every object class: data objects pkcs11-tool wrote, which have no CKA_ID, next to keys and certificates', async () => {
      const file = tmpFile('note.txt', 'a note kept on the token');
      pkcs11Tool(td, 'ops', tok.pin, ['--write-object', file, '--type', 'data', '--label', 'a note']);
      const all = await sup.findObjects({ slot: 's' });
      expect(all).toEqual(expect.arrayContaining([expect.objectContaining({ class: 'data', label: 'a note', id: '', token: true })]));
      expect(all.filter((d) => d.class === 'privateKey').length).toBeGreaterThanOrEqual(5);
      const data = await sup.findObjects({ slot: 's', template: { class: 'data' } });
      expect(data.map((d) => d.label)).toEqual(['a note']);
      const page = await sup.findObjectsPage({ slot: 's', pageSize: 1000 });
      expect(page.objects.length).toBe(all.length);
    });

    it('a session that is not logged in sees only public objects', async () => {
      const opened = await open(transport, configFor(td, { a: { type: 'hsm', token: { label: 'anon' }, lazy: true } }), td.dir);
      const anon = opened.client;
      try {
        const all = await anon.findObjects({ slot: 'a' });
        expect(all).toEqual([expect.objectContaining({ class: 'publicKey', label: 'ec', private: false })]);
        await expect(anon.sign({ slot: 'a', key: 'ec', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'PIN_REQUIRED' });
      } finally {
        await opened.close();
      }
    });

    const algorithms = [
      ['RSA-2048', 'RSA', { bits: 2048 }, 'RSA-PSS-SHA256'],
      ['RSA-3072', 'RSA', { bits: 3072 }, 'RSA-PKCS1-SHA384'],
      ['RSA-4096', 'RSA', { bits: 4096 }, 'RSA-PKCS1-SHA512'],
      ['EC-P256', 'EC', { curve: 'P-256' }, 'ECDSA-SHA256'],
      ['EC-P384', 'EC', { curve: 'P-384' }, 'ECDSA-SHA384'],
      ['EC-P521', 'EC', { curve: 'P-521' }, 'ECDSA-SHA512'],
      ['Ed25519', 'EC_EDWARDS', { curve: 'Ed25519' }, 'EdDSA'],
    ] as const;
    for (const [algorithm, keyType, shape, mechanism] of algorithms) {
      it(`generates ${algorithm}: sensitive, never extractable, listed by pkcs11-tool, and it signs`, async () => {
        const label = `gen-${algorithm}`;
        const d = await sup.generateKeyPair({ slot: 's', algorithm, label, timeoutMs: 120_000 });
        expect(d).toMatchObject({ class: 'privateKey', label, keyType, ...shape, sensitive: true, extractable: false, alwaysSensitive: true, neverExtractable: true });
        expect(d.id).toMatch(/^[0-9a-f]{40}$/); // SHA-1 of the public key
        const listing = pkcs11Tool(td, 'ops', tok.pin, ['--list-objects', '--type', 'privkey']);
        const block = listing.split(/\n(?=Private Key Object)/).find((b) => b.includes(`label:      ${label}`));
        expect(block).toContain(`ID:         ${d.id}`);
        expect(block).toMatch(/Access:\s+sensitive, always sensitive, never extractable/);
        const sig = await sup.sign({ slot: 's', key: { label }, mechanism, data });
        expect(opensslVerifies(exportPublicKey(td, 'ops', d.id), mechanism, data, sig)).toBe(true);
      });
    }

    it('generateRandom returns fresh bytes of the asked length', async () => {
      const a = await sup.generateRandom({ slot: 's', length: 32 });
      const b = await sup.generateRandom({ slot: 's', length: 32 });
      expect(a.length).toBe(32);
      expect(a.equals(b)).toBe(false);
      await expect(sup.generateRandom({ slot: 's', length: 0 })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    });

    it('destroyObject refuses a configured key unless forced, and destroys what it names', async () => {
      await expect(sup.destroyObject({ slot: 's', key: 'ec' })).rejects.toMatchObject({ code: 'KEY_IN_USE' });
      await expect(sup.destroyObject({ slot: 's', key: { id: '02' } })).rejects.toMatchObject({ code: 'KEY_IN_USE' });
      await sup.generateKeyPair({ slot: 's', algorithm: 'EC-P256', label: 'doomed', id: 'dd' });
      expect(await sup.destroyObject({ slot: 's', key: { label: 'doomed' } })).toBe(2);
      expect(await sup.findObjects({ slot: 's', template: { label: 'doomed' } })).toEqual([]);
      await expect(sup.sign({ slot: 's', key: { label: 'doomed' }, mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    });
  });

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
        const created = await sup.importKeyPair({ slot: 's', label, pkcs12: p12, password: 'correct horse' });
        expect(created.map((d) => d.class)).toEqual(['privateKey', 'publicKey', 'certificate']);
        expect(created[0]).toMatchObject({ sensitive: true, extractable: false, sign: true });
        expect(new Set(created.map((d) => d.id)).size).toBe(1);
        const x509 = new X509Certificate(cert);
        const sig = await sup.sign({ slot: 's', key: { label }, mechanism: mech, data });
        expect(nodeVerify('sha256', data, x509.publicKey, sig)).toBe(true);
        const onToken = await sup.getCertificate({ slot: 's', key: { label } });
        expect(onToken.der.equals(x509.raw)).toBe(true);
        expect(pkcs11Tool(td, 'ops', null, ['--list-objects', '--type', 'cert'])).toContain(`label:      ${label}`);
      });
    }

    it('the same PKCS#12 again is KEY_IN_USE and stores nothing; with replace: true the new objects take the old ones\' place', async () => {
      const { p12, cert } = makeP12(['ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], false);
      const first = await sup.importKeyPair({ slot: 's', label: 'twice', pkcs12: p12, password: 'correct horse' });
      await expect(sup.importKeyPair({ slot: 's', label: 'twice', pkcs12: p12, password: 'correct horse' })).rejects.toMatchObject({ code: 'KEY_IN_USE' });
      expect(await sup.findObjects({ slot: 's', template: { label: 'twice' } })).toHaveLength(3);
      const again = await sup.importKeyPair({ slot: 's', label: 'twice', pkcs12: p12, password: 'correct horse', replace: true });
      expect(again.map((d) => d.id)).toEqual(first.map((d) => d.id));
      expect(await sup.findObjects({ slot: 's', template: { label: 'twice' } })).toHaveLength(3);
      // One key under that label, not two: the lookup is not ambiguous, and it signs with the certificate's key.
      const sig = await sup.sign({ slot: 's', key: { label: 'twice' }, mechanism: 'ECDSA-SHA256', data });
      expect(nodeVerify('sha256', data, new X509Certificate(cert).publicKey, sig)).toBe(true);
      // A second certificate under that id conflicts with the first (not with the key): refused, or replaced.
      await expect(sup.importCertificate({ slot: 's', certificate: cert, label: 'twice, renewed', id: first[0]!.id })).rejects.toMatchObject({ code: 'KEY_IN_USE' });
      expect(await sup.importCertificate({ slot: 's', certificate: cert, label: 'twice, renewed', id: first[0]!.id, replace: true })).toMatchObject({ class: 'certificate', label: 'twice, renewed' });
      expect((await sup.findObjects({ slot: 's', template: { class: 'certificate', id: first[0]!.id } })).map((d) => d.label)).toEqual(['twice, renewed']);
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
        await sup.importKeyPair({ slot: 's', label: `chained-${i}`, pkcs12: readFileSync(p12), password: 'chain' });
      }
      const info = await sup.getCertificate({ slot: 's', key: { label: 'chained-1' } });
      expect(info.chain.map((c) => c.x509.subject)).toEqual(['CN=chain-leaf-2', 'CN=chain-inter', 'CN=chain-root']);
      expect(info.chain[0]!.der.equals(info.der)).toBe(true);
      // Each chain certificate is stored once, though both imports carried it.
      expect((await sup.findObjects({ slot: 's', template: { class: 'certificate' } })).filter((d) => d.label.endsWith(' chain'))).toHaveLength(2);
      const jws = await sup.signJws({ slot: 's', key: { label: 'chained-0' }, alg: 'ES256', payload: 'chained', x5c: true });
      const header = JSON.parse(Buffer.from(jws.split('.')[0]!, 'base64url').toString()) as { x5c: string[] };
      expect(header.x5c.map((c) => new X509Certificate(Buffer.from(c, 'base64')).subject)).toEqual(['CN=chain-leaf-1', 'CN=chain-inter', 'CN=chain-root']);
      const verified = await jose.compactVerify(jws, new X509Certificate(Buffer.from(header.x5c[0]!, 'base64')).publicKey);
      expect(Buffer.from(verified.payload).toString()).toBe('chained');
    });

    it('a wrong PKCS#12 password is BAD_INPUT and nothing is stored', async () => {
      const { p12 } = makeP12(['ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], false);
      await expect(sup.importKeyPair({ slot: 's', label: 'wrong-pw', pkcs12: p12, password: 'nope' })).rejects.toMatchObject({ code: 'BAD_INPUT' });
      expect(await sup.findObjects({ slot: 's', template: { label: 'wrong-pw' } })).toEqual([]);
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
        await expect(sup.importKeyPair({ slot: 's', label: 'odd-kind', privateKeyPem })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(named) });
      }
      expect(await sup.findObjects({ slot: 's', template: { label: 'odd-kind' } })).toEqual([]);
    });

    it('a PEM key with its certificate imports; importCertificate adds a certificate for a key', async () => {
      const key = tmpFile('k.pem');
      const crt = tmpFile('c.pem');
      openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-nodes', '-keyout', key, '-out', crt, '-subj', '/CN=pem', '-days', '2']);
      const created = await sup.importKeyPair({ slot: 's', label: 'pem-key', id: 'a1', privateKeyPem: readFileSync(key, 'utf8'), certificates: [readFileSync(crt, 'utf8')] });
      expect(created.map((d) => `${d.class}:${d.id}`)).toEqual(['privateKey:a1', 'publicKey:a1', 'certificate:a1']);
      const sig = await sup.sign({ slot: 's', key: { id: 'a1' }, mechanism: 'ECDSA-SHA384', data });
      expect(nodeVerify('sha384', data, new X509Certificate(readFileSync(crt)).publicKey, sig)).toBe(true);

      const other = tmpFile('c2.pem');
      openssl(['req', '-x509', '-key', key, '-out', other, '-subj', '/CN=renewed', '-days', '3']);
      const d = await sup.importCertificate({ slot: 's', certificate: readFileSync(other), label: 'pem-key renewed', id: 'a2' });
      expect(d).toMatchObject({ class: 'certificate', id: 'a2' });
      expect((await sup.getCertificate({ slot: 's', key: { id: 'a2' } })).x509.subject).toBe('CN=renewed');
    });
  });

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
        const jws = await sup.signJws({ slot: 's', key, alg, payload: { sub: 'alice', n: 1 }, header: { typ: 'JWT' } });
        const pem = readFileSync(exportPublicKey(td, 'ops', KEYS[key].id), 'utf8');
        const { payload, protectedHeader } = await jose.compactVerify(jws, await jose.importSPKI(pem, alg));
        expect(JSON.parse(Buffer.from(payload).toString())).toEqual({ sub: 'alice', n: 1 });
        expect(protectedHeader).toEqual({ alg, kid: KEYS[key].id, typ: 'JWT' });
      });
    }

    it('ES256K (secp256k1, RFC 8812) verifies with OpenSSL\'s public key in Node (jose\'s WebCrypto has no secp256k1); ES256 on it is refused', async () => {
      const jws = await sup.signJws({ slot: 's', key: 'k1', alg: 'ES256K', payload: { sub: 'alice' } });
      const [h, p, sig] = jws.split('.');
      expect(JSON.parse(Buffer.from(h!, 'base64url').toString())).toEqual({ alg: 'ES256K', kid: '06' });
      const pem = readFileSync(exportPublicKey(td, 'ops', '06'), 'utf8');
      expect(nodeVerify('sha256', Buffer.from(`${h}.${p}`), { key: pem, dsaEncoding: 'ieee-p1363' }, Buffer.from(sig!, 'base64url'))).toBe(true);
      expect((await sup.getPublicKey({ slot: 's', key: 'k1' })).jwk).toMatchObject({ kty: 'EC', crv: 'secp256k1', kid: '06' });
      await expect(sup.signJws({ slot: 's', key: 'k1', alg: 'ES256', payload: 'x' })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
    });

    it('an unencoded payload (RFC 7797, b64: false) verifies with jose; one it cannot carry is BAD_INPUT', async () => {
      const payload = '{"amount":"42 EUR"}';
      const jws = await sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload, header: { b64: false, crit: ['b64'] } });
      const [, carried] = jws.split('.');
      expect(carried).toBe(payload);
      const pem = readFileSync(exportPublicKey(td, 'ops', '02'), 'utf8');
      const verified = await jose.compactVerify(jws, await jose.importSPKI(pem, 'ES256'));
      expect(Buffer.from(verified.payload).toString()).toBe(payload);
      expect(verified.protectedHeader).toMatchObject({ b64: false, crit: ['b64'] });
      await expect(sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload: 'a.b', header: { b64: false, crit: ['b64'] } })).rejects.toMatchObject({ code: 'BAD_INPUT' });
      await expect(sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload, header: { b64: false } })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    });

    it('a crit list (RFC 7515 4.1.11) verifiers must reject is BAD_INPUT; one naming a carried extension verifies; the header cannot change alg', async () => {
      const pem = readFileSync(exportPublicKey(td, 'ops', '02'), 'utf8');
      const jws = await sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload: 'x', header: { alg: 'none', 'urn:example:policy': 'p1', crit: ['urn:example:policy'] } });
      const verified = await jose.compactVerify(jws, await jose.importSPKI(pem, 'ES256'), { crit: { 'urn:example:policy': true } });
      expect(verified.protectedHeader).toMatchObject({ alg: 'ES256', crit: ['urn:example:policy'] });
      for (const crit of [[], ['exp'], ['kid'], ['toString'], ['b64', 'b64'], 'b64', [1]]) {
        await expect(sup.signJws({ slot: 's', key: 'ec', alg: 'ES256', payload: 'x', header: { b64: true, crit } })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('crit') });
      }
    });

    it('refuses an ES* algorithm on the wrong curve', async () => {
      await expect(sup.signJws({ slot: 's', key: 'ec', alg: 'ES384', payload: 'x' })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
    });
  });

  describe('misuse gets typed errors', () => {
    it('unknown slot, key ref, mechanism; ambiguous label; bad data', async () => {
      await expect(sup.sign({ slot: 'nope', key: 'ec', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'SLOT_NOT_FOUND' });
      await expect(sup.sign({ slot: 's', key: 'nope', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
      await expect(sup.sign({ slot: 's', key: { label: 'missing' }, mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
      await expect(sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-MD5' as never, data })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
      await expect(sup.sign({ slot: 's', key: { label: 'twin' }, mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'KEY_AMBIGUOUS' });
      expect(await sup.sign({ slot: 's', key: { label: 'twin', id: '22' }, mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);
      await expect(sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.alloc(0) })).rejects.toMatchObject({ code: 'BAD_INPUT' });
      await expect(sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: 'text' as never })).rejects.toMatchObject({ code: 'BAD_INPUT' });
      await expect(sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.alloc((1 << 20) + 1) })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    });

    it('a mechanism for another key type is refused before it reaches the token', async () => {
      const before = (await sup.probe({ slot: 's' })).calls;
      await expect(sup.sign({ slot: 's', key: 'ec', mechanism: 'RSA-PSS-SHA256', data })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
      await expect(sup.sign({ slot: 's', key: 'rsa', mechanism: 'EdDSA', data })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
      const after = (await sup.probe({ slot: 's' })).calls;
      expect(after.C_SignInit).toBe(before.C_SignInit);
      expect(after.C_FindObjectsInit).toBe(before.C_FindObjectsInit);
    });

    it('status() says what the slot and its token report of themselves, as pkcs11-tool -L does', async () => {
      const listing = pkcs11Tool(td, 'ops', null, ['-L']);
      const block = listing.split(/\n(?=Slot )/).find((b) => /token label\s+:\s+ops\s*$/m.test(b))!;
      const field = (name: string) => new RegExp(`${name}\\s+:\\s+(.*)`).exec(block)![1]!.trim();
      const { device } = (await sup.status()).slots.s!.token as unknown as { device: { slot: { description: string; flags: string[] }; token: Record<string, unknown> } };
      expect(device.token).toMatchObject({ label: 'ops', manufacturer: field('token manufacturer'), model: field('token model'), serial: field('serial num'), hardware: field('hardware version'), firmware: field('firmware version') });
      expect(device.token.flags).toEqual(expect.arrayContaining(['rng', 'loginRequired', 'userPinInitialized', 'tokenInitialized']));
      expect(device.slot.flags).toContain('tokenPresent');
      expect(device.slot.description).toMatch(/^SoftHSM slot ID/);
    });

    it('keys by PKCS#11 URI (RFC 7512): the URI findObjects reports signs; one for another token, or carrying a PIN, is refused', async () => {
      const [priv] = await sup.findObjects({ slot: 's', template: { class: 'privateKey', id: '02' } });
      expect(priv!.uri).toBe(`pkcs11:token=ops;serial=${tok.serial};object=ec;id=%02;type=private`);
      const sig = await sup.sign({ slot: 's', key: priv!.uri, mechanism: 'ECDSA-SHA256', data });
      expect(opensslVerifies(exportPublicKey(td, 'ops', '02'), 'ECDSA-SHA256', data, sig)).toBe(true);
      expect(await sup.sign({ slot: 's', key: 'pkcs11:object=rsa;type=private', mechanism: 'RSA-PSS-SHA256', data })).toBeInstanceOf(Buffer);
      expect((await sup.getPublicKey({ slot: 's', key: 'pkcs11:id=%02' })).uri).toBe(`pkcs11:token=ops;serial=${tok.serial};object=ec;id=%02;type=public`);
      await expect(sup.sign({ slot: 's', key: 'pkcs11:token=another;object=ec', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
      await expect(sup.sign({ slot: 's', key: 'pkcs11:object=ec?pin-value=1234', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'BAD_INPUT' });
      await expect(sup.sign({ slot: 's', key: 'pkcs11:object=e%', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    });

    it('a key that asks for the PIN on every use signs with a context login per signature; status says how token changes are noticed', async () => {
      const d = await sup.generateKeyPair({ slot: 's', algorithm: 'EC-P256', label: 'always-ec', id: 'aa', alwaysAuthenticate: true });
      expect(d.alwaysAuthenticate).toBe(true);
      expect(pkcs11Tool(td, 'ops', tok.pin, ['--list-objects', '--type', 'privkey', '--id', 'aa'])).toMatch(/Access:.*always authenticate/);
      const before = (await sup.probe({ slot: 's' })).calls.C_Login ?? 0;
      const sigs = await Promise.all([1, 2, 3].map(() => sup.sign({ slot: 's', key: d.uri, mechanism: 'ECDSA-SHA256', data })));
      for (const sig of sigs) expect(opensslVerifies(exportPublicKey(td, 'ops', 'aa'), 'ECDSA-SHA256', data, sig)).toBe(true);
      expect(((await sup.probe({ slot: 's' })).calls.C_Login ?? 0) - before).toBe(3);
      await expect(sup.sign({ slot: 's', key: d.uri, mechanism: 'ECDSA-SHA256', data, pin: 'not-the-pin' })).rejects.toMatchObject({ code: 'PIN_INCORRECT' });
      expect((await sup.status()).slots.s!.tokenEvents).toBe('polling');
    });

    it('encrypts, decrypts, MACs, wraps and agrees on keys; Node decrypts, recomputes or unwraps each answer', async () => {
      const open = (key: Buffer, iv: Buffer, ct: Buffer, aad?: Buffer) => {
        const d = createDecipheriv('aes-256-gcm', key, iv);
        if (aad) d.setAAD(aad);
        d.setAuthTag(ct.subarray(-16));
        return Buffer.concat([d.update(ct.subarray(0, -16)), d.final()]);
      };
      const aad = Buffer.from('aad');
      const sealed = await sup.encrypt({ slot: 's', key: { label: 'kek' }, mechanism: 'AES-GCM', data, aad });
      expect(open(KEK, sealed.iv!, sealed.ciphertext, aad).equals(data)).toBe(true);
      expect((await sup.decrypt({ slot: 's', key: { label: 'kek' }, mechanism: 'AES-GCM', data: sealed.ciphertext, iv: sealed.iv!, aad })).equals(data)).toBe(true);
      await expect(sup.decrypt({ slot: 's', key: { label: 'kek' }, mechanism: 'AES-GCM', data: flip(sealed.ciphertext), iv: sealed.iv!, aad })).rejects.toMatchObject({ code: 'DECRYPTION_FAILED' });

      const hmacKey = randomBytes(64);
      const w = createCipheriv('id-aes256-wrap-pad', KEK, Buffer.from('A65959A6', 'hex'));
      const hmac = await sup.unwrapKey({ slot: 's', key: { label: 'kek' }, mechanism: 'AES-KEY-WRAP-PAD', wrapped: Buffer.concat([w.update(hmacKey), w.final()]), algorithm: 'HMAC-512', label: 'op-hmac' });
      expect(hmac).toMatchObject({ class: 'secretKey', keyType: 'GENERIC_SECRET', sensitive: true });
      const mac = await sup.mac({ slot: 's', key: { label: 'op-hmac' }, mechanism: 'HMAC-SHA256', data });
      expect(mac.equals(createHmac('sha256', hmacKey).update(data).digest())).toBe(true);
      expect(await sup.verifyMac({ slot: 's', key: { label: 'op-hmac' }, mechanism: 'HMAC-SHA256', data, mac: flip(mac) })).toBe(false);

      const dek = await sup.generateSecretKey({ slot: 's', algorithm: 'AES-256', label: 'op-dek', extractable: true });
      expect(dek).toMatchObject({ class: 'secretKey', keyType: 'AES', bits: 256, extractable: true });
      const wrapped = await sup.wrapKey({ slot: 's', key: { label: 'kek' }, mechanism: 'AES-KEY-WRAP-PAD', target: { label: 'op-dek' } });
      const u = createDecipheriv('id-aes256-wrap-pad', KEK, Buffer.from('A65959A6', 'hex'));
      const dekBytes = Buffer.concat([u.update(wrapped), u.final()]);
      const byDek = await sup.encrypt({ slot: 's', key: { label: 'op-dek' }, mechanism: 'AES-GCM', data });
      expect(open(dekBytes, byDek.iv!, byDek.ciphertext).equals(data)).toBe(true);

      await sup.generateKeyPair({ slot: 's', algorithm: 'EC-P256', label: 'op-ecdh', id: '41', usage: ['derive'] });
      const { jwk } = await sup.getPublicKey({ slot: 's', key: { id: '41' } });
      const peer = createECDH('prime256v1');
      peer.generateKeys();
      const z = peer.computeSecret(Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]));
      const agreed = await sup.deriveKey({ slot: 's', key: { id: '41' }, mechanism: 'ECDH', publicKey: peer.getPublicKey(), then: { op: 'encrypt', mechanism: 'AES-GCM', data } });
      expect(open(z, agreed.iv!, agreed.ciphertext!).equals(data)).toBe(true);
      await expect(sup.deriveKey({ slot: 's', key: { id: '41' }, mechanism: 'ECDH-SECRET', publicKey: peer.getPublicKey() })).rejects.toMatchObject({ code: 'MECHANISM_NOT_ALLOWED' });

      await sup.generateKeyPair({ slot: 's', algorithm: 'RSA-2048', label: 'op-oaep', id: '42', usage: ['decrypt'] });
      const oaep = await sup.encrypt({ slot: 's', key: { id: '42' }, mechanism: 'RSA-OAEP-SHA1', data: Buffer.from('a data key') });
      expect((await sup.decrypt({ slot: 's', key: { id: '42' }, mechanism: 'RSA-OAEP-SHA1', data: oaep.ciphertext })).toString()).toBe('a data key');
    });

    it('every slot is still healthy after all that', async () => {
      expect((await sup.status()).slots.s!.state).toBe('logged_in');
      expect(await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);
    });
  });
  });
}
