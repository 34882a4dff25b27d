/**
 * Encryption, MACs, key wrapping and key agreement with keys on a SoftHSM2 token, each answer
 * checked by an independent implementation: Node's crypto and the openssl command line
 * decrypt what the token encrypts and the other way round, agree on the ECDH secret, unwrap
 * what the token wrapped (RFC 5649) and compute the same HMAC. The known keys are written to
 * the token by OpenSC's pkcs11-tool, or unwrapped onto it from bytes only the test holds.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { constants, createCipheriv, createDecipheriv, createECDH, createHmac, createPrivateKey, createPublicKey, publicDecrypt, publicEncrypt, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSupervisor, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, pkcs11Tool, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { exportPublicKey, openssl } from './support/openssl.js';

let td: TokenDir;
let tok: TestToken;
let sup: Pkcs11Supervisor;
const resets: unknown[] = [];
const aesKey = randomBytes(32);
// 64 bytes: SoftHSM2 wants an HMAC key at least as long as the hash (CKR_KEY_SIZE_RANGE otherwise).
const hmacKey = randomBytes(64);
const KWP_IV = Buffer.from('A65959A6', 'hex'); // RFC 5649's alternative initial value

const gcmOpen = (key: Buffer, iv: Buffer, ciphertext: Buffer, aad?: Buffer) => {
  const d = createDecipheriv('aes-256-gcm', key, iv);
  if (aad) d.setAAD(aad);
  d.setAuthTag(ciphertext.subarray(-16));
  return Buffer.concat([d.update(ciphertext.subarray(0, -16)), d.final()]);
};
const gcmSeal = (key: Buffer, iv: Buffer, plaintext: Buffer, aad?: Buffer) => {
  const c = createCipheriv('aes-256-gcm', key, iv);
  if (aad) c.setAAD(aad);
  return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
};
const kwpWrap = (kek: Buffer, key: Buffer) => {
  const c = createCipheriv('id-aes256-wrap-pad', kek, KWP_IV);
  return Buffer.concat([c.update(key), c.final()]);
};

beforeAll(async () => {
  td = tokenDir();
  tok = createToken(td, 'crypto');
  const file = join(td.dir, 'aes.bin');
  writeFileSync(file, aesKey);
  pkcs11Tool(td, 'crypto', tok.pin, ['--write-object', file, '--type', 'secrkey', '--key-type', 'AES:32', '--label', 'aes', '--id', '10', '--usage-decrypt', '--usage-wrap', '--sensitive']);
  pkcs11Tool(td, 'crypto', tok.pin, ['--keypairgen', '--key-type', 'rsa:2048', '--label', 'rsa-enc', '--id', '20', '--usage-decrypt']);
  pkcs11Tool(td, 'crypto', tok.pin, ['--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'ecdh', '--id', '21', '--usage-derive']);
  process.env.CRYPTO_PIN = tok.pin;
  const keys = {
    aes: { label: 'aes', id: '10' },
    hmac: { label: 'hmac' },
    rsaEnc: { label: 'rsa-enc', id: '20' },
    legacy: { label: 'rsa-enc', id: '20', allowedMechanisms: ['RSA-PKCS1-V1_5'] },
    ecdh: { label: 'ecdh', id: '21' },
    ecdhOpen: { label: 'ecdh', id: '21', allowedMechanisms: ['ECDH-SECRET'] },
    signer: { label: 'rsa', id: '01' },
  };
  // s2: a second slot on the same token (the IVs used with a key are the token's, not a slot's).
  sup = await startSupervisor({ config: configFor(td, { s: { token: { label: 'crypto' }, pin: { env: 'CRYPTO_PIN' }, keys }, s2: { token: { label: 'crypto' }, pin: { env: 'CRYPTO_PIN' }, keys, type: 'hsm' } }) });
  sup.on('moduleReset', (e) => resets.push(e));
  // The HMAC key: bytes only this test knows, unwrapped onto the token under the AES key.
  await sup.unwrapKey({ slot: 's', key: 'aes', mechanism: 'AES-KEY-WRAP-PAD', wrapped: kwpWrap(aesKey, hmacKey), algorithm: 'HMAC-512', label: 'hmac' });
});

afterAll(() => sup?.close());

describe('AES-GCM and AES-CBC-PAD', () => {
  it('the token encrypts with AAD and a fresh 96-bit IV, Node decrypts; Node encrypts, the token decrypts', async () => {
    const aad = Buffer.from('order 42');
    const data = Buffer.from('a data key, wrapped for the ledger');
    const sealed = await sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data, aad });
    expect(sealed.iv).toHaveLength(12);
    expect(sealed.ciphertext).toHaveLength(data.length + 16);
    expect(gcmOpen(aesKey, sealed.iv!, sealed.ciphertext, aad).equals(data)).toBe(true);
    const again = await sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data, aad });
    expect(again.iv!.equals(sealed.iv!)).toBe(false);

    const iv = randomBytes(12);
    const fromNode = gcmSeal(aesKey, iv, data, aad);
    expect((await sup.decrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data: fromNode, iv, aad })).equals(data)).toBe(true);
  });

  it('AES-CBC-PAD: openssl enc decrypts what the token encrypts, and the token decrypts what openssl encrypts', async () => {
    const data = Buffer.from('seventeen bytes!!');
    const { ciphertext, iv } = await sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-CBC-PAD', data });
    const ct = join(td.dir, 'cbc.bin');
    writeFileSync(ct, ciphertext);
    expect(openssl(['enc', '-d', '-aes-256-cbc', '-K', aesKey.toString('hex'), '-iv', iv!.toString('hex'), '-in', ct]).equals(data)).toBe(true);
    const iv2 = randomBytes(16);
    const pt = join(td.dir, 'plain.bin');
    writeFileSync(pt, data);
    const fromOpenssl = openssl(['enc', '-aes-256-cbc', '-K', aesKey.toString('hex'), '-iv', iv2.toString('hex'), '-in', pt]);
    expect((await sup.decrypt({ slot: 's', key: 'aes', mechanism: 'AES-CBC-PAD', data: fromOpenssl, iv: iv2 })).equals(data)).toBe(true);
  });

  it('a wrong tag, wrong AAD, a wrong IV or a truncated ciphertext is DECRYPTION_FAILED or BAD_INPUT, nothing decrypted comes back, and the module is not reset', async () => {
    const aad = Buffer.from('header');
    const { ciphertext, iv } = await sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data: Buffer.from('do not leak me'), aad });
    const flipped = Buffer.from(ciphertext);
    flipped[flipped.length - 1]! ^= 1;
    const bad = (data: Buffer, extra: Record<string, unknown> = {}) => sup.decrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data, iv: iv!, aad, ...extra }).then(() => 'decrypted', (e: { code: string }) => e.code);
    expect(await bad(flipped)).toBe('DECRYPTION_FAILED');
    expect(await bad(ciphertext, { aad: Buffer.from('other header') })).toBe('DECRYPTION_FAILED');
    expect(await bad(ciphertext, { aad: undefined })).toBe('DECRYPTION_FAILED');
    expect(await bad(ciphertext, { iv: randomBytes(12) })).toBe('DECRYPTION_FAILED');
    expect(await bad(ciphertext.subarray(0, ciphertext.length - 3))).toBe('DECRYPTION_FAILED');
    expect(await bad(ciphertext.subarray(0, 10))).toBe('BAD_INPUT');
    expect(await bad(ciphertext, { iv: randomBytes(16) })).toBe('BAD_INPUT');
    expect(await sup.decrypt({ slot: 's', key: 'aes', mechanism: 'AES-CBC-PAD', data: randomBytes(20), iv: randomBytes(16) }).catch((e: { code: string }) => e.code)).toBe('BAD_INPUT');
    expect(resets).toEqual([]);
    expect(sup.status().slots.s!.state).toBe('logged_in');
    expect((await sup.decrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data: ciphertext, iv: iv!, aad })).toString()).toBe('do not leak me');
  });

  it('an IV the caller used before with the key is refused; the daemon never repeats its own', async () => {
    const iv = randomBytes(12);
    await sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data: Buffer.from('first'), iv });
    await expect(sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data: Buffer.from('second'), iv })).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/used with this key before/) });
    const ivs = await Promise.all(Array.from({ length: 40 }, () => sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data: Buffer.from('x') }).then((r) => r.iv!.toString('hex'))));
    expect(new Set(ivs).size).toBe(40);
    // However the key is named, and through another slot on its token: the same key, the same refusal.
    const { label, id } = { label: 'aes', id: '10' };
    for (const [slot, key] of [['s', { label }], ['s', { id }], ['s', `pkcs11:object=${label}`], ['s2', 'aes'], ['s2', { label, id }]] as const) {
      await expect(sup.encrypt({ slot, key, mechanism: 'AES-GCM', data: Buffer.from('second'), iv }), `${slot} ${JSON.stringify(key)}`).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/used with this key before/) });
    }
    // Another key may use it.
    await sup.generateSecretKey({ slot: 's', algorithm: 'AES-256', label: 'other-aes', id: 'e7' });
    expect((await sup.encrypt({ slot: 's', key: { label: 'other-aes', id: 'e7' }, mechanism: 'AES-GCM', data: Buffer.from('x'), iv })).iv!.equals(iv)).toBe(true);
  });

  it('a call that fails gives its IV back (nothing under it left the daemon): the caller may retry with it, once', async () => {
    const iv = randomBytes(12);
    const aborted = AbortSignal.abort();
    await expect(sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data: Buffer.from('retry'), iv, signal: aborted })).rejects.toMatchObject({ code: 'ABORTED' });
    await expect(sup.encrypt({ slot: 's', key: { label: 'no-such-aes' }, mechanism: 'AES-GCM', data: Buffer.from('retry'), iv })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    const { ciphertext } = await sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data: Buffer.from('retry'), iv });
    expect(gcmOpen(aesKey, iv, ciphertext).toString()).toBe('retry');
    await expect(sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data: Buffer.from('again'), iv })).rejects.toMatchObject({ code: 'BAD_INPUT' });
  });

  it('a key of the wrong type, a mechanism for another operation, an unknown one: typed errors before the token', async () => {
    const data = Buffer.from('x');
    await expect(sup.encrypt({ slot: 's', key: 'rsaEnc', mechanism: 'AES-GCM', data })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
    await expect(sup.encrypt({ slot: 's', key: 'aes', mechanism: 'HMAC-SHA256', data })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', message: expect.stringMatching(/not for encrypt/) });
    await expect(sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-XTS' as never, data })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
    await expect(sup.mac({ slot: 's', key: 'aes', mechanism: 'HMAC-SHA256', data })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', message: expect.stringContaining('needs a key of type GENERIC_SECRET; this key is AES') });
    // A secret key named for a signature: no private key by that name, and the answer says what there is.
    await expect(sup.sign({ slot: 's', key: 'aes', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND', message: expect.stringContaining('the token has a secret key label "aes" id 10, which this operation cannot use') });
    await expect(sup.sign({ slot: 's', key: { label: 'no-such-key' }, mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND', message: expect.not.stringContaining('the token has') });
    await expect(sup.encrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data, oaepLabel: Buffer.from('l') })).rejects.toMatchObject({ code: 'BAD_INPUT' });
  });

  it('many concurrent decryptions go through the mailbox in batches and each gets its own plaintext', async () => {
    const items = Array.from({ length: 64 }, (_, i) => {
      const iv = randomBytes(12);
      const data = Buffer.from(`message ${i}`);
      return { iv, data, sealed: gcmSeal(aesKey, iv, data) };
    });
    const out = await Promise.all(items.map((x) => sup.decrypt({ slot: 's', key: 'aes', mechanism: 'AES-GCM', data: x.sealed, iv: x.iv })));
    out.forEach((pt, i) => expect(pt.equals(items[i]!.data)).toBe(true));
  });
});

describe('RSA-OAEP and PKCS#1 v1.5', () => {
  it('openssl pkeyutl encrypts with the public key pkcs11-tool exports, the token decrypts; the daemon encrypts in software, the token decrypts', async () => {
    const pub = exportPublicKey(td, 'crypto', '20');
    const secret = randomBytes(32);
    const input = join(td.dir, 'secret.bin');
    writeFileSync(input, secret);
    const out = join(td.dir, 'oaep.bin');
    openssl(['pkeyutl', '-encrypt', '-pubin', '-inkey', pub, '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha1', '-in', input, '-out', out]);
    expect((await sup.decrypt({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', data: readFileSync(out) })).equals(secret)).toBe(true);
    const { ciphertext } = await sup.encrypt({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', data: secret });
    expect(ciphertext).toHaveLength(256);
    expect((await sup.decrypt({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', data: ciphertext })).equals(secret)).toBe(true);
  });

  it("a hash or a label the token's OAEP does not take is MECHANISM_INVALID both ways (SoftHSM2 2.6: SHA-1 only, labels ignored); a key without CKA_DECRYPT is refused; the slot stays healthy", async () => {
    // Nothing is encrypted for parameters the key's token cannot decrypt: that ciphertext would be lost.
    await expect(sup.encrypt({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA256', data: Buffer.from('k') })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', message: expect.stringContaining('cannot decrypt RSA-OAEP-SHA256') });
    await expect(sup.encrypt({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', data: Buffer.from('k'), oaepLabel: Buffer.from('invoices') })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', message: expect.stringContaining('with a label') });
    const { keyObject } = await sup.getPublicKey({ slot: 's', key: 'rsaEnc' });
    const madeElsewhere = (oaepHash: string, oaepLabel?: Buffer) => publicEncrypt({ key: keyObject, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash, ...(oaepLabel ? { oaepLabel } : {}) }, Buffer.from('k'));
    await expect(sup.decrypt({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA256', data: madeElsewhere('sha256') })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
    // SoftHSM2 2.6 ignores the label when it decrypts: a ciphertext made without one would come
    // back under any label. Refused instead of answered wrongly.
    await expect(sup.decrypt({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', data: madeElsewhere('sha1'), oaepLabel: Buffer.from('invoices') })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', message: expect.stringContaining('with a label') });
    expect((await sup.decrypt({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', data: madeElsewhere('sha1') })).toString()).toBe('k');
    // A key generated for signing (the default usage) has CKA_DECRYPT false: the token refuses.
    const signer = await sup.generateKeyPair({ slot: 's', algorithm: 'RSA-2048', label: 'sign-only', id: '30' });
    expect(signer).toMatchObject({ sign: true, decrypt: false, unwrap: false });
    const forSigner = await sup.encrypt({ slot: 's', key: { id: '30' }, mechanism: 'RSA-OAEP-SHA1', data: Buffer.from('k') });
    await expect(sup.decrypt({ slot: 's', key: { id: '30' }, mechanism: 'RSA-OAEP-SHA1', data: forSigner.ciphertext })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', ckr: 'CKR_KEY_FUNCTION_NOT_PERMITTED' });
    expect(await sup.sign({ slot: 's', key: { id: '30' }, mechanism: 'RSA-PSS-SHA256', data: Buffer.from('still signs') })).toHaveLength(256);
    expect(resets).toEqual([]);

    // One generated for decryption decrypts what openssl encrypts with its public key, and does not sign.
    const decrypter = await sup.generateKeyPair({ slot: 's', algorithm: 'RSA-2048', label: 'decrypt-only', id: '31', usage: ['decrypt'] });
    expect(decrypter).toMatchObject({ sign: false, decrypt: true, unwrap: true });
    const input = join(td.dir, 'to-31.bin');
    writeFileSync(input, 'for the decrypter');
    const out = join(td.dir, 'to-31.enc');
    openssl(['pkeyutl', '-encrypt', '-pubin', '-inkey', exportPublicKey(td, 'crypto', '31'), '-pkeyopt', 'rsa_padding_mode:oaep', '-in', input, '-out', out]);
    expect((await sup.decrypt({ slot: 's', key: { id: '31' }, mechanism: 'RSA-OAEP-SHA1', data: readFileSync(out) })).toString()).toBe('for the decrypter');
    await expect(sup.sign({ slot: 's', key: { id: '31' }, mechanism: 'RSA-PSS-SHA256', data: Buffer.from('x') })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
    await expect(sup.generateKeyPair({ slot: 's', algorithm: 'Ed25519', label: 'no', usage: ['decrypt'] })).rejects.toMatchObject({ code: 'BAD_INPUT' });
  });

  it('RSA PKCS#1 v1.5 decryption only for a key whose allow-list names it', async () => {
    const pub = exportPublicKey(td, 'crypto', '20');
    const input = join(td.dir, 'legacy.bin');
    writeFileSync(input, 'legacy secret');
    const out = join(td.dir, 'legacy.enc');
    openssl(['pkeyutl', '-encrypt', '-pubin', '-inkey', pub, '-pkeyopt', 'rsa_padding_mode:pkcs1', '-in', input, '-out', out]);
    await expect(sup.decrypt({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-PKCS1-V1_5', data: readFileSync(out) })).rejects.toMatchObject({ code: 'MECHANISM_NOT_ALLOWED' });
    expect((await sup.decrypt({ slot: 's', key: 'legacy', mechanism: 'RSA-PKCS1-V1_5', data: readFileSync(out) })).toString()).toBe('legacy secret');
    await expect(sup.encrypt({ slot: 's', key: 'legacy', mechanism: 'RSA-PKCS1-V1_5', data: Buffer.from('x') })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
  });
});

describe('HMAC', () => {
  it('the token computes the HMAC Node computes with the same key; verifyMac accepts it and rejects a changed one', async () => {
    for (const [mechanism, hash] of [['HMAC-SHA256', 'sha256'], ['HMAC-SHA384', 'sha384'], ['HMAC-SHA512', 'sha512']] as const) {
      const data = Buffer.from(`webhook body for ${hash}`);
      const mac = await sup.mac({ slot: 's', key: 'hmac', mechanism, data });
      expect(mac.equals(createHmac(hash, hmacKey).update(data).digest())).toBe(true);
      expect(await sup.verifyMac({ slot: 's', key: 'hmac', mechanism, data, mac })).toBe(true);
      const changed = Buffer.from(mac);
      changed[0]! ^= 1;
      expect(await sup.verifyMac({ slot: 's', key: 'hmac', mechanism, data, mac: changed })).toBe(false);
    }
  });
});

describe('ECDH', () => {
  const tokenPoint = async () => {
    const { jwk } = await sup.getPublicKey({ slot: 's', key: 'ecdh' });
    return Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]);
  };

  it('the raw secret only where an allow-list names ECDH-SECRET; then it equals what Node and openssl pkeyutl -derive compute', async () => {
    const peer = createECDH('prime256v1');
    peer.generateKeys();
    await expect(sup.deriveKey({ slot: 's', key: 'ecdh', mechanism: 'ECDH-SECRET', publicKey: peer.getPublicKey() })).rejects.toMatchObject({ code: 'MECHANISM_NOT_ALLOWED' });
    const { secret } = await sup.deriveKey({ slot: 's', key: 'ecdhOpen', mechanism: 'ECDH-SECRET', publicKey: peer.getPublicKey() });
    expect(secret!.equals(peer.computeSecret(await tokenPoint()))).toBe(true);

    // openssl with a PEM peer key of its own, given to the daemon as SPKI PEM.
    const peerKey = join(td.dir, 'peer.pem');
    openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', peerKey]);
    const peerPub = openssl(['pkey', '-in', peerKey, '-pubout']).toString();
    const fromOpenssl = openssl(['pkeyutl', '-derive', '-inkey', peerKey, '-peerkey', exportPublicKey(td, 'crypto', '21')]);
    const viaPem = await sup.deriveKey({ slot: 's', key: 'ecdhOpen', mechanism: 'ECDH-SECRET', publicKey: peerPub });
    expect(viaPem.secret!.equals(fromOpenssl)).toBe(true);
  });

  it('ECDH into a session key used by the same call: Node, knowing the secret, decrypts what it encrypts and the other way round', async () => {
    const peer = createECDH('prime256v1');
    peer.generateKeys();
    const sessionKey = peer.computeSecret(await tokenPoint()); // P-256: 32 bytes, the AES-256 key (CKD_NULL)
    const data = Buffer.from('agreed, then encrypted');
    const sealed = await sup.deriveKey({ slot: 's', key: 'ecdh', mechanism: 'ECDH', publicKey: peer.getPublicKey(), then: { op: 'encrypt', mechanism: 'AES-GCM', data } });
    expect(gcmOpen(sessionKey, sealed.iv!, sealed.ciphertext!).equals(data)).toBe(true);
    const iv = randomBytes(12);
    const opened = await sup.deriveKey({ slot: 's', key: 'ecdh', mechanism: 'ECDH', publicKey: peer.getPublicKey(), then: { op: 'decrypt', mechanism: 'AES-GCM', data: gcmSeal(sessionKey, iv, data), iv } });
    expect(opened.plaintext!.equals(data)).toBe(true);
    // No session key is left behind on the token.
    expect((await sup.findObjects({ slot: 's', template: { class: 'secretKey' } })).every((o) => o.token)).toBe(true);
    await expect(sup.deriveKey({ slot: 's', key: 'ecdh', mechanism: 'ECDH', publicKey: Buffer.from('not a key') })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    await expect(sup.deriveKey({ slot: 's', key: 'ecdh', mechanism: 'ECDH', publicKey: peer.getPublicKey() } as never)).rejects.toMatchObject({ code: 'BAD_INPUT' });
  });
});

describe('secret keys and wrapping', () => {
  it('generates AES and HMAC keys: sensitive, not extractable, listed by pkcs11-tool, each for its own use', async () => {
    const aes = await sup.generateSecretKey({ slot: 's', algorithm: 'AES-128', label: 'gen-aes', id: 'a0' });
    expect(aes).toMatchObject({ class: 'secretKey', keyType: 'AES', bits: 128, sensitive: true, extractable: false, encrypt: true, decrypt: true, sign: false });
    const hmac = await sup.generateSecretKey({ slot: 's', algorithm: 'HMAC-512', label: 'gen-hmac', id: 'a1' });
    expect(hmac).toMatchObject({ class: 'secretKey', keyType: 'GENERIC_SECRET', bits: 512, sensitive: true, extractable: false, sign: true, encrypt: false });
    const listing = pkcs11Tool(td, 'crypto', tok.pin, ['--list-objects', '--type', 'secrkey']);
    expect(listing).toMatch(/Secret Key Object; AES length 16\s+label:\s+gen-aes/);
    const data = Buffer.from('round trip');
    const { ciphertext, iv } = await sup.encrypt({ slot: 's', key: { label: 'gen-aes' }, mechanism: 'AES-GCM', data });
    expect((await sup.decrypt({ slot: 's', key: { label: 'gen-aes' }, mechanism: 'AES-GCM', data: ciphertext, iv })).equals(data)).toBe(true);
    const mac = await sup.mac({ slot: 's', key: { id: 'a1' }, mechanism: 'HMAC-SHA512', data });
    expect(await sup.verifyMac({ slot: 's', key: { id: 'a1' }, mechanism: 'HMAC-SHA512', data, mac })).toBe(true);
    expect((await sup.findObjects({ slot: 's', template: { class: 'secretKey', keyType: 'AES' } })).map((o) => o.label)).toEqual(expect.arrayContaining(['aes', 'gen-aes']));
  });

  it('wraps an extractable key with AES key wrap with padding (RFC 5649), which Node unwraps; refuses to wrap a key that is not extractable', async () => {
    await sup.generateSecretKey({ slot: 's', algorithm: 'AES-256', label: 'exportable', id: 'b0', extractable: true });
    const wrapped = await sup.wrapKey({ slot: 's', key: 'aes', mechanism: 'AES-KEY-WRAP-PAD', target: { label: 'exportable' } });
    const d = createDecipheriv('id-aes256-wrap-pad', aesKey, KWP_IV);
    const raw = Buffer.concat([d.update(wrapped), d.final()]);
    expect(raw).toHaveLength(32);
    // The unwrapped bytes are the key: Node decrypts what the token encrypts under it.
    const { ciphertext, iv } = await sup.encrypt({ slot: 's', key: { label: 'exportable' }, mechanism: 'AES-GCM', data: Buffer.from('proof') });
    expect(gcmOpen(raw, iv!, ciphertext).toString()).toBe('proof');
    const plain = await sup.wrapKey({ slot: 's', key: 'aes', mechanism: 'AES-KEY-WRAP', target: { label: 'exportable' } });
    const d2 = createDecipheriv('id-aes256-wrap', aesKey, Buffer.from('A6A6A6A6A6A6A6A6', 'hex'));
    expect(Buffer.concat([d2.update(plain), d2.final()]).equals(raw)).toBe(true);
    await expect(sup.wrapKey({ slot: 's', key: 'aes', mechanism: 'AES-KEY-WRAP-PAD', target: { label: 'gen-aes' } })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', ckr: 'CKR_KEY_UNEXTRACTABLE', message: expect.stringContaining('cannot leave the token') });

    // A private key under the same label: a target URI's type says which of the two is wrapped.
    await sup.generateKeyPair({ slot: 's', algorithm: 'EC-P256', label: 'exportable', id: 'b1', extractable: true });
    const unwrap = (w: Buffer) => {
      const dk = createDecipheriv('id-aes256-wrap-pad', aesKey, KWP_IV);
      return Buffer.concat([dk.update(w), dk.final()]);
    };
    const asSecret = await sup.wrapKey({ slot: 's', key: 'aes', mechanism: 'AES-KEY-WRAP-PAD', target: 'pkcs11:object=exportable;type=secret-key' });
    expect(unwrap(asSecret).equals(raw)).toBe(true);
    const asPrivate = await sup.wrapKey({ slot: 's', key: 'aes', mechanism: 'AES-KEY-WRAP-PAD', target: 'pkcs11:object=exportable;type=private' });
    const pkcs8 = createPrivateKey({ key: unwrap(asPrivate), format: 'der', type: 'pkcs8' });
    const { keyObject } = await sup.getPublicKey({ slot: 's', key: { id: 'b1' } });
    expect(createPublicKey(pkcs8).export({ type: 'spki', format: 'der' }).equals(keyObject.export({ type: 'spki', format: 'der' }))).toBe(true);
    await expect(sup.wrapKey({ slot: 's', key: 'aes', mechanism: 'AES-KEY-WRAP-PAD', target: 'pkcs11:object=exportable;type=private', targetClass: 'secretKey' })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    await expect(sup.wrapKey({ slot: 's', key: 'aes', mechanism: 'AES-KEY-WRAP-PAD', target: 'pkcs11:object=exportable;type=public' })).rejects.toMatchObject({ code: 'BAD_INPUT' });
  });

  it('unwraps a key Node wrapped (AES key wrap with padding, and RSA-OAEP) onto the token, sensitive; it then encrypts as that key', async () => {
    const known = randomBytes(32);
    const viaAes = await sup.unwrapKey({ slot: 's', key: 'aes', mechanism: 'AES-KEY-WRAP-PAD', wrapped: kwpWrap(aesKey, known), algorithm: 'AES-256', label: 'unwrapped-aes' });
    expect(viaAes).toMatchObject({ class: 'secretKey', keyType: 'AES', sensitive: true, extractable: false });
    const a = await sup.encrypt({ slot: 's', key: { label: 'unwrapped-aes' }, mechanism: 'AES-GCM', data: Buffer.from('kwp') });
    expect(gcmOpen(known, a.iv!, a.ciphertext).toString()).toBe('kwp');

    const other = randomBytes(32);
    const { ciphertext: wrapped } = await sup.encrypt({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', data: other });
    await sup.unwrapKey({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', wrapped, algorithm: 'AES-256', label: 'unwrapped-rsa' });
    const b = await sup.encrypt({ slot: 's', key: { label: 'unwrapped-rsa' }, mechanism: 'AES-GCM', data: Buffer.from('oaep') });
    expect(gcmOpen(other, b.iv!, b.ciphertext).toString()).toBe('oaep');
    // Unwrapped again under the same label: refused, or every later lookup of that label would be ambiguous.
    await expect(sup.unwrapKey({ slot: 's', key: 'aes', mechanism: 'AES-KEY-WRAP-PAD', wrapped: kwpWrap(aesKey, randomBytes(32)), algorithm: 'AES-256', label: 'unwrapped-rsa' })).rejects.toMatchObject({ code: 'KEY_IN_USE' });
    const c = await sup.encrypt({ slot: 's', key: { label: 'unwrapped-rsa' }, mechanism: 'AES-GCM', data: Buffer.from('still one') });
    expect(gcmOpen(other, c.iv!, c.ciphertext).toString()).toBe('still one');

    // With a label SoftHSM2 2.6 ignores: refused for unwrapping and wrapping alike, nothing made.
    const { keyObject } = await sup.getPublicKey({ slot: 's', key: 'rsaEnc' });
    const oaepLabel = Buffer.from('wrapping');
    const labelled = publicEncrypt({ key: keyObject, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1', oaepLabel }, randomBytes(32));
    await expect(sup.unwrapKey({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', wrapped: labelled, oaepLabel, algorithm: 'AES-256', label: 'never-labelled' })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', message: expect.stringContaining('with a label') });
    await sup.generateSecretKey({ slot: 's', algorithm: 'AES-256', label: 'to-wrap-labelled', extractable: true });
    await expect(sup.wrapKey({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', target: { label: 'to-wrap-labelled' }, oaepLabel })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', message: expect.stringContaining('with a label') });
    expect(await sup.findObjects({ slot: 's', template: { label: 'never-labelled' } })).toEqual([]);
  });
});

describe('input a token answers with CKR_GENERAL_ERROR', () => {
  // SoftHSM2 says CKR_GENERAL_ERROR to each of these, which is also how a broken module speaks: a
  // caller who could send them would reset the module (every session of it) at will.
  it('wrapped bytes that do not unwrap, a peer key on another curve or off it, PKCS#1 input too long: typed errors, no module reset, the slot keeps working', async () => {
    const code = (p: Promise<unknown>) => p.then(() => 'succeeded', (e: { code: string; ckr?: string; message: string }) => `${e.code} ${e.ckr ?? ''} ${e.message}`);
    const before = resets.length;
    for (const mechanism of ['AES-KEY-WRAP', 'AES-KEY-WRAP-PAD'] as const) {
      expect(await code(sup.unwrapKey({ slot: 's', key: 'aes', mechanism, wrapped: randomBytes(40), algorithm: 'AES-256', label: 'never' }))).toMatch(/^DECRYPTION_FAILED  .*does not unwrap/);
    }
    expect(await code(sup.unwrapKey({ slot: 's', key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', wrapped: randomBytes(256), algorithm: 'AES-256', label: 'never' }))).toMatch(/^DECRYPTION_FAILED /);
    expect((await sup.findObjects({ slot: 's', template: { label: 'never' } }))).toEqual([]);

    const p384 = createECDH('secp384r1');
    p384.generateKeys();
    const k1 = createECDH('secp256k1'); // the same length of point as P-256, on another curve
    k1.generateKeys();
    const offCurve = Buffer.concat([Buffer.from([4]), randomBytes(64)]);
    for (const publicKey of [p384.getPublicKey(), k1.getPublicKey(), offCurve]) {
      expect(await code(sup.deriveKey({ slot: 's', key: 'ecdh', mechanism: 'ECDH', publicKey, then: { op: 'encrypt', mechanism: 'AES-GCM', data: Buffer.from('x') } }))).toMatch(/^BAD_INPUT  publicKey is not a point on P-256/);
    }

    const digestInfoTooLong = randomBytes(256 - 10);
    expect(await code(sup.sign({ slot: 's', key: 'signer', mechanism: 'RSA-PKCS1', data: digestInfoTooLong }))).toMatch(/^BAD_INPUT  RSA PKCS#1 v1.5 signs at most 245 bytes with this 2048-bit key; got 246/);
    const longest = randomBytes(245);
    const signature = await sup.sign({ slot: 's', key: 'signer', mechanism: 'RSA-PKCS1', data: longest });
    expect(publicDecrypt(readFileSync(exportPublicKey(td, 'crypto', '01'), 'utf8'), signature).equals(longest)).toBe(true);

    await new Promise((r) => setTimeout(r, 100)); // a reset is asynchronous
    expect(resets.slice(before)).toEqual([]);
    expect(sup.status().slots.s!.state).toBe('logged_in');
  });
});

describe('policy and audit', () => {
  it('the service role may encrypt, decrypt and MAC; the auditor may not; every call is in the audit trail', async () => {
    const cfg = configFor(td, {
      p: { token: { label: 'crypto' }, pin: { env: 'CRYPTO_PIN' }, keys: { aes: { label: 'aes', id: '10' } } },
    });
    const audit = join(td.dir, 'crypto-audit.jsonl');
    const policed = await startSupervisor({
      config: { ...cfg, audit: { path: audit }, policy: { principals: { app: ['service'], watcher: ['auditor'] }, slots: { p: { service: {}, auditor: {} } } } },
    });
    try {
      const app = policed.as({ id: 'app', roles: ['service'] });
      const sealed = await app.encrypt({ slot: 'p', key: 'aes', mechanism: 'AES-GCM', data: Buffer.from('policed') });
      expect((await app.decrypt({ slot: 'p', key: 'aes', mechanism: 'AES-GCM', data: sealed.ciphertext, iv: sealed.iv })).toString()).toBe('policed');
      await expect(policed.as({ id: 'watcher', roles: ['auditor'] }).decrypt({ slot: 'p', key: 'aes', mechanism: 'AES-GCM', data: sealed.ciphertext, iv: sealed.iv })).rejects.toMatchObject({ code: 'FORBIDDEN' });
      await expect(app.generateSecretKey({ slot: 'p', algorithm: 'AES-256', label: 'not-for-services' })).rejects.toMatchObject({ code: 'FORBIDDEN' });
      await policed.verifyAudit({ principal: { id: 'root', roles: ['administrator'] } }).catch(() => undefined);
    } finally {
      await policed.close();
    }
    const records = readFileSync(audit, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { event: string; principal?: string; mechanism?: string; result: string });
    expect(records.filter((r) => r.event === 'encrypt' || r.event === 'decrypt').map((r) => `${r.event}:${r.principal}:${r.mechanism}:${r.result}`)).toEqual([
      'encrypt:app:AES-GCM:ok',
      'decrypt:app:AES-GCM:ok',
    ]);
  });
});
