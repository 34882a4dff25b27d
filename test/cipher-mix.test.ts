/**
 * No ciphertext, plaintext or MAC that belongs to another call: a batch packs each call's data,
 * IV, AAD and label into one buffer, and fast-check sends bursts that mix encryption and
 * decryption (AES-GCM with and without AAD, AES-CBC-PAD, RSA-OAEP), HMACs, MAC checks and
 * signatures over two AES keys of different sizes, to a token slot and a pool on one token at
 * once. Node's crypto, holding the same key bytes, checks every answer; a ciphertext sealed
 * under other AAD must fail with DECRYPTION_FAILED and return nothing. In the process, over the
 * socket and over mutual TLS, where the remote client packs concurrent calls into one batch
 * request of its own.
 */
import { constants, createCipheriv, createDecipheriv, createHmac, publicEncrypt, randomBytes, verify as nodeVerify, type KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { startSupervisor, type Pkcs11Client } from '../dist/src/index.js';
import { configFor, createToken, pkcs11Tool, tokenDir, type TokenDir } from './support/softhsm.js';
import { open, TRANSPORTS } from './support/transports.js';

let td: TokenDir;
let config: ReturnType<typeof configFor>;
let sup: Pkcs11Client;
let rsaPublic: KeyObject;
let ecPublic: KeyObject;
const AES = { aes256: randomBytes(32), aes128: randomBytes(16) } as const;
type AesKey = keyof typeof AES;
const hmacKey = randomBytes(64);
const kwp = (kek: Buffer, key: Buffer) => {
  const c = createCipheriv('id-aes256-wrap-pad', kek, Buffer.from('A65959A6', 'hex'));
  return Buffer.concat([c.update(key), c.final()]);
};
const gcm = (key: Buffer) => `aes-${key.length * 8}-gcm` as 'aes-256-gcm';
const cbc = (key: Buffer) => `aes-${key.length * 8}-cbc`;

beforeAll(async () => {
  td = tokenDir();
  const tok = createToken(td, 'cmix');
  const file = join(td.dir, 'kek.bin');
  writeFileSync(file, AES.aes256);
  pkcs11Tool(td, 'cmix', tok.pin, ['--write-object', file, '--type', 'secrkey', '--key-type', 'AES:32', '--label', 'aes256', '--id', '10', '--usage-decrypt', '--usage-wrap', '--sensitive']);
  pkcs11Tool(td, 'cmix', tok.pin, ['--keypairgen', '--key-type', 'rsa:2048', '--label', 'oaep', '--id', '20', '--usage-decrypt']);
  process.env.CMIX_PIN = tok.pin;
  const keys = { aes256: { label: 'aes256' }, aes128: { label: 'aes128' }, hmac: { label: 'hmac' }, oaep: { label: 'oaep' }, ec: { label: 'ec' } };
  config = configFor(td, { s: { token: { label: 'cmix' }, pin: { env: 'CMIX_PIN' }, keys }, p: { token: { label: 'cmix' }, pin: { env: 'CMIX_PIN' }, keys, type: 'hsm', poolSize: 3 } });
  const setup = await startSupervisor({ config });
  // The other keys: bytes only this test holds, unwrapped onto the token under the first.
  await setup.unwrapKey({ slot: 's', key: 'aes256', mechanism: 'AES-KEY-WRAP-PAD', wrapped: kwp(AES.aes256, AES.aes128), algorithm: 'AES-128', label: 'aes128' });
  await setup.unwrapKey({ slot: 's', key: 'aes256', mechanism: 'AES-KEY-WRAP-PAD', wrapped: kwp(AES.aes256, hmacKey), algorithm: 'HMAC-512', label: 'hmac' });
  rsaPublic = (await setup.getPublicKey({ slot: 's', key: 'oaep' })).keyObject;
  ecPublic = (await setup.getPublicKey({ slot: 's', key: 'ec' })).keyObject;
  await setup.close();
}, 60_000);

type Op = 'gcm-seal' | 'gcm-open' | 'gcm-wrong-aad' | 'cbc-seal' | 'cbc-open' | 'oaep-open' | 'mac' | 'mac-check' | 'sign';
const OPS: Op[] = ['gcm-seal', 'gcm-open', 'gcm-wrong-aad', 'cbc-seal', 'cbc-open', 'oaep-open', 'mac', 'mac-check', 'sign'];

const call = fc.record({
  op: fc.constantFrom(...OPS),
  slot: fc.constantFrom('s', 'p'),
  key: fc.constantFrom<AesKey>('aes256', 'aes128'),
  data: fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.integer({ min: 1, max: 9000 }).map((n) => randomBytes(n))),
  aad: fc.option(fc.uint8Array({ minLength: 1, maxLength: 40 }), { nil: undefined }),
});

/** Runs one generated call through the supervisor and checks its answer with Node. */
async function runAndCheck(c: { op: Op; slot: string; key: AesKey; data: Uint8Array; aad?: Uint8Array }): Promise<void> {
  const data = Buffer.from(c.data);
  const aad = c.aad && Buffer.from(c.aad);
  const secret = AES[c.key];
  const what = `${c.op} ${c.key} ${data.length} B aad=${aad?.length ?? 0}`;
  switch (c.op) {
    case 'gcm-seal': {
      const { ciphertext, iv } = await sup.encrypt({ slot: c.slot, key: c.key, mechanism: 'AES-GCM', data, aad });
      const d = createDecipheriv(gcm(secret), secret, iv!);
      if (aad) d.setAAD(aad);
      d.setAuthTag(ciphertext.subarray(-16));
      expect(Buffer.concat([d.update(ciphertext.subarray(0, -16)), d.final()]).equals(data), what).toBe(true);
      return;
    }
    case 'gcm-open':
    case 'gcm-wrong-aad': {
      const iv = randomBytes(12);
      const e = createCipheriv(gcm(secret), secret, iv);
      if (aad) e.setAAD(aad);
      const sealed = Buffer.concat([e.update(data), e.final(), e.getAuthTag()]);
      const request = { slot: c.slot, key: c.key, mechanism: 'AES-GCM' as const, data: sealed, iv, aad };
      if (c.op === 'gcm-open') expect((await sup.decrypt(request)).equals(data), what).toBe(true);
      else await expect(sup.decrypt({ ...request, aad: Buffer.concat([aad ?? Buffer.alloc(0), Buffer.from([1])]) }), what).rejects.toMatchObject({ code: 'DECRYPTION_FAILED' });
      return;
    }
    case 'cbc-seal': {
      const { ciphertext, iv } = await sup.encrypt({ slot: c.slot, key: c.key, mechanism: 'AES-CBC-PAD', data });
      const d = createDecipheriv(cbc(secret), secret, iv!);
      expect(Buffer.concat([d.update(ciphertext), d.final()]).equals(data), what).toBe(true);
      return;
    }
    case 'cbc-open': {
      const iv = randomBytes(16);
      const e = createCipheriv(cbc(secret), secret, iv);
      const sealed = Buffer.concat([e.update(data), e.final()]);
      expect((await sup.decrypt({ slot: c.slot, key: c.key, mechanism: 'AES-CBC-PAD', data: sealed, iv })).equals(data), what).toBe(true);
      return;
    }
    case 'oaep-open': {
      const plain = data.subarray(0, 190); // RSA-2048 with OAEP-SHA1 holds 214 bytes
      const sealed = publicEncrypt({ key: rsaPublic, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, plain);
      expect((await sup.decrypt({ slot: c.slot, key: 'oaep', mechanism: 'RSA-OAEP-SHA1', data: sealed })).equals(plain), what).toBe(true);
      return;
    }
    case 'mac':
      expect(Buffer.from(await sup.mac({ slot: c.slot, key: 'hmac', mechanism: 'HMAC-SHA512', data })).equals(createHmac('sha512', hmacKey).update(data).digest()), what).toBe(true);
      return;
    case 'mac-check': {
      const tag = createHmac('sha512', hmacKey).update(data).digest();
      const changed = Buffer.from(data);
      changed[0]! ^= 1;
      expect(await sup.verifyMac({ slot: c.slot, key: 'hmac', mechanism: 'HMAC-SHA512', data, mac: tag }), what).toBe(true);
      expect(await sup.verifyMac({ slot: c.slot, key: 'hmac', mechanism: 'HMAC-SHA512', data: changed, mac: tag }), what).toBe(false);
      return;
    }
    case 'sign': {
      const signature = await sup.sign({ slot: c.slot, key: 'ec', mechanism: 'ECDSA-SHA256', data });
      expect(nodeVerify('sha256', data, ecPublic, signature), what).toBe(true);
      return;
    }
  }
}

describe.each(TRANSPORTS)('bursts mixing encryption, decryption, MACs and signatures (%s)', (transport) => {
  beforeAll(async () => {
    const opened = await open(transport, config, td.dir);
    sup = opened.client;
    return () => opened.close();
  }, 60_000);

  it("every answer is the one Node computes for that call's own key, data, IV and AAD; a wrong AAD returns nothing", async () => {
    let calls = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(call, { minLength: 1, maxLength: 32 }), async (burst) => {
        await Promise.all(burst.map((c) => runAndCheck(c)));
        calls += burst.length;
      }),
      { numRuns: 50 },
    );
    expect(calls).toBeGreaterThan(200);
    const status = await sup.status();
    const { handed } = status.slots.s!.workers[0]!;
    expect(handed.messages).toBeLessThan(handed.calls); // some batches held several (how many depends on the machine's load)
    for (const slot of ['s', 'p']) expect(status.slots[slot]!.state).toBe('logged_in');
  }, 300_000);
});
