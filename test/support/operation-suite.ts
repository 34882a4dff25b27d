/**
 * The operation suite: every operation of the client API against a real SoftHSM2 token, each
 * answer checked by OpenSSL, Node, jose or pkcs11-tool. It takes its client from a transport,
 * so the same tests run in the process, over the local socket and over mutual TLS.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCipheriv, createDecipheriv, createECDH, createHash, createHmac, createPublicKey, randomBytes, verify as nodeVerify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Pkcs11Client } from '../../dist/src/index.js';
import { configFor, createToken, pkcs11Tool, tokenDir, type TestToken, type TokenDir } from './softhsm.js';
import { exportPublicKey, opensslVerifies, tmpFile } from './openssl.js';
import { open, type Opened, type Transport } from './transports.js';
import { importTests } from './operation-suite-import.js';
import { jwsTests } from './operation-suite-jws.js';

/** What the operation suite's parts share: its client and token, made in its beforeAll (read them lazily). */
export interface SuiteContext {
  readonly sup: Pkcs11Client;
  readonly td: TokenDir;
  /** The token's user PIN, for pkcs11-tool doing what another application would. */
  readonly pin: string;
  readonly keys: Record<string, { label: string; id: string }>;
  readonly data: Buffer;
}

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

  const ctx: SuiteContext = {
    get sup() {
      return sup;
    },
    get td() {
      return td;
    },
    get pin() {
      return tok.pin;
    },
    keys: KEYS,
    data,
  };

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

    it('generation refuses a label or id a key of its kind already has (KEY_IN_USE), creating nothing, so no name becomes ambiguous', async () => {
      const objects = async () => (await sup.findObjects({ slot: 's' })).length;
      const before = await objects();
      // The configured 'ec' is label ec, id 02: a second key under either would break the ref.
      await expect(sup.generateKeyPair({ slot: 's', algorithm: 'EC-P256', label: 'ec' })).rejects.toMatchObject({ code: 'KEY_IN_USE', message: expect.stringContaining('label "ec"') });
      await expect(sup.generateKeyPair({ slot: 's', algorithm: 'EC-P256', label: 'fresh-name', id: '02' })).rejects.toMatchObject({ code: 'KEY_IN_USE', message: expect.stringContaining('id 02') });
      await sup.generateSecretKey({ slot: 's', algorithm: 'AES-256', label: 'taken-secret', id: 'c1' });
      await expect(sup.generateSecretKey({ slot: 's', algorithm: 'AES-256', label: 'taken-secret' })).rejects.toMatchObject({ code: 'KEY_IN_USE' });
      await expect(sup.generateSecretKey({ slot: 's', algorithm: 'AES-128', label: 'other-secret', id: 'c1' })).rejects.toMatchObject({ code: 'KEY_IN_USE' });
      expect(await objects()).toBe(before + 1);
      const sig = await sup.sign({ slot: 's', key: { label: 'ec' }, mechanism: 'ECDSA-SHA256', data });
      expect(opensslVerifies(exportPublicKey(td, 'ops', '02'), 'ECDSA-SHA256', data, sig)).toBe(true);
      // Another kind may share the name: lookups are by kind.
      expect(await sup.generateKeyPair({ slot: 's', algorithm: 'EC-P256', label: 'taken-secret', id: 'c2' })).toMatchObject({ class: 'privateKey' });
      expect(await sup.destroyObject({ slot: 's', key: { label: 'taken-secret' } })).toBe(3);
    });

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



  importTests(ctx);

  jwsTests(ctx);

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

    it('a field the method does not take is BAD_INPUT naming it, before the token: a misspelt prehashed would sign a digest as data', async () => {
      const before = (await sup.probe({ slot: 's' })).calls.C_Sign ?? 0;
      const digest = createHash('sha256').update(data).digest();
      await expect(sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: digest, prehash: true } as never)).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('"prehash"') });
      await expect(sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, format: 'raw' } as never)).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('"format"') });
      await expect(sup.sign({ slot: 's', key: { lable: 'ec' } as never, mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('"lable"') });
      await expect(sup.decrypt({ slot: 's', key: 'ec', mechanism: 'AES-GCM', data, nonce: Buffer.alloc(12) } as never)).rejects.toMatchObject({ code: 'BAD_INPUT' });
      expect((await sup.probe({ slot: 's' })).calls.C_Sign ?? 0).toBe(before);
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
