import { constants, generateKeyPairSync, sign as nodeSign, verify as nodeVerify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSupervisor, type MechanismName, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, DEMO_KEYS, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { Faults, faultConfig } from './support/faults.js';
import { exportPublicKey, opensslVerifies } from './support/openssl.js';

let td: TokenDir;
let tokens: Record<string, TestToken>;
let sup: Pkcs11Supervisor | undefined;
const data = Buffer.from('routed by what the token says');

beforeAll(() => {
  td = tokenDir();
  tokens = {
    paging: createToken(td, 'paging'),
    verify: createToken(td, 'verify', [...DEMO_KEYS, { kind: 'EC:edwards25519', label: 'ed', id: '03' }]),
    limits: createToken(td, 'limits'),
    naming: createToken(td, 'naming'),
  };
  for (const [label, t] of Object.entries(tokens)) process.env[`RV_PIN_${label}`] = t.pin;
});

afterEach(async () => {
  await sup?.close();
  sup = undefined;
});

const slot = (label: string, extra: Record<string, unknown> = {}) => ({ token: { label }, pin: { env: `RV_PIN_${label}` }, ...extra });

describe('findObjects paging and visibility', () => {
  it('pages through 254 objects in pages of 40, each exactly once, across a pool, with nothing left open on the session', async () => {
    sup = await startSupervisor({ config: configFor(td, { p: slot('paging', { type: 'hsm', poolSize: 2 }), one: slot('paging') }) });
    // 125 key pairs: 250 objects, plus the two demo key pairs.
    for (let i = 0; i < 125; i++) await sup.generateKeyPair({ slot: 'p', algorithm: 'EC-P256', label: `bulk-${String(i).padStart(3, '0')}`, id: (0x100 + i).toString(16).padStart(4, '0') });
    const all = await sup.findObjects({ slot: 'p', template: {} });
    expect(all.length).toBe(254);

    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await sup.findObjectsPage({ slot: 'p', template: {}, pageSize: 40, cursor });
      expect(page.objects.length).toBeLessThanOrEqual(40);
      seen.push(...page.objects.map((o) => `${o.class}/${o.label}/${o.id}`));
      cursor = page.cursor;
      pages++;
    } while (cursor);
    expect(pages).toBe(7);
    expect(seen.length).toBe(254);
    expect(new Set(seen).size).toBe(254);
    expect(seen.sort()).toEqual(all.map((o) => `${o.class}/${o.label}/${o.id}`).sort());

    // One worker: every search it began, it finalized, and the session signs right after.
    const before = (await sup.probe({ slot: 'one' })).calls;
    const first = await sup.findObjectsPage({ slot: 'one', template: { class: 'publicKey' }, pageSize: 5 });
    expect(first.cursor).toBeDefined(); // abandoned here on purpose
    const after = (await sup.probe({ slot: 'one' })).calls;
    expect(after.C_FindObjectsInit! - (before.C_FindObjectsInit ?? 0)).toBe(after.C_FindObjectsFinal! - (before.C_FindObjectsFinal ?? 0));
    expect(await sup.sign({ slot: 'one', key: 'ec', mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);

    await expect(sup.findObjectsPage({ slot: 'p', template: { class: 'privateKey' }, cursor: first.cursor })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    await expect(sup.findObjectsPage({ slot: 'p', cursor: 'not-a-cursor' })).rejects.toMatchObject({ code: 'BAD_INPUT' });
  });

  it('a slot that is not logged in sees no private objects', async () => {
    sup = await startSupervisor({ config: configFor(td, { anon: { type: 'hsm', token: { label: 'paging' } } }) });
    expect((await sup.probe({ slot: 'anon' })).state).toBe('RW_PUBLIC');
    expect((await sup.findObjectsPage({ slot: 'anon', template: { class: 'privateKey' } })).objects).toEqual([]);
    expect((await sup.findObjectsPage({ slot: 'anon', template: { class: 'publicKey' } })).objects.length).toBeGreaterThan(0);
  });
});

describe('verify in software', () => {
  const cases: [string, MechanismName, 'der' | 'raw'][] = [
    ['rsa', 'RSA-PKCS1-SHA256', 'der'],
    ['rsa', 'RSA-PSS-SHA384', 'der'],
    ['ec', 'ECDSA-SHA256', 'der'],
    ['ec', 'ECDSA-SHA512', 'raw'],
    ['ed', 'EdDSA', 'der'],
  ];

  it('gives the token\'s answer for good, tampered and malformed signatures, without touching the token', async () => {
    const keys = { rsa: { label: 'rsa', id: '01' }, ec: { label: 'ec', id: '02' }, ed: { label: 'ed', id: '03' } };
    sup = await startSupervisor({ config: configFor(td, { sw: slot('verify', { type: 'hsm', keys }), hw: slot('verify', { type: 'hsm', keys, softwareVerify: false }) }) });
    const swBefore = (await sup.probe({ slot: 'sw' })).calls.C_VerifyInit ?? 0;
    const hwBefore = (await sup.probe({ slot: 'hw' })).calls.C_VerifyInit ?? 0;
    for (const [key, mechanism, signatureFormat] of cases) {
      const signature = await sup.sign({ slot: 'hw', key, mechanism, data, signatureFormat });
      const tamperedSig = Buffer.from(signature);
      tamperedSig[tamperedSig.length - 1]! ^= 1;
      const inputs = [
        { data, signature },
        { data: Buffer.from('other data'), signature },
        { data, signature: tamperedSig },
        { data, signature: signature.subarray(0, signature.length - 3) },
      ];
      for (const input of inputs) {
        const sw = await sup.verify({ slot: 'sw', key, mechanism, signatureFormat, ...input });
        const hw = await sup.verify({ slot: 'hw', key, mechanism, signatureFormat, ...input });
        expect(sw, `${mechanism} ${signatureFormat}`).toBe(hw);
      }
      expect(await sup.verify({ slot: 'sw', key, mechanism, signatureFormat, data, signature })).toBe(true);
    }
    expect((await sup.probe({ slot: 'sw' })).calls.C_VerifyInit ?? 0).toBe(swBefore);
    // The token saw the well-formed ones (a signature of the wrong length may be refused before C_VerifyInit).
    expect((await sup.probe({ slot: 'hw' })).calls.C_VerifyInit! - hwBefore).toBeGreaterThanOrEqual(cases.length * 3);
    // Pre-hashed input is the token's job (Node verifies messages, not digests).
    const digest = (await import('node:crypto')).createHash('sha256').update(data).digest();
    const sig = await sup.sign({ slot: 'hw', key: 'ec', mechanism: 'ECDSA-SHA256', data: digest, prehashed: true });
    expect(await sup.verify({ slot: 'sw', key: 'ec', mechanism: 'ECDSA-SHA256', data: digest, prehashed: true, signature: sig })).toBe(true);
    expect((await sup.probe({ slot: 'sw' })).calls.C_VerifyInit).toBe(swBefore + 1);
  });
});

/** Re-encodings of a DER ECDSA signature that are not DER: the same r and s, other bytes. */
function reEncodings(der: Buffer): Record<string, Buffer> {
  const ints: Buffer[] = [];
  for (let i = 2; ints.length < 2; i += 2 + der[i + 1]!) ints.push(der.subarray(i + 2, i + 2 + der[i + 1]!));
  const int = (v: Buffer) => Buffer.concat([Buffer.from([0x02, v.length]), v]);
  const seq = (body: Buffer, longForm = false) => Buffer.concat([Buffer.from(longForm ? [0x30, 0x81, body.length] : [0x30, body.length]), body]);
  const [r, s] = ints as [Buffer, Buffer];
  const out: Record<string, Buffer> = {
    'r with an extra zero byte': seq(Buffer.concat([int(Buffer.concat([Buffer.from([0]), r])), int(s)])),
    'a long-form length under 128': seq(Buffer.concat([int(r), int(s)]), true),
    'a byte after the SEQUENCE': Buffer.concat([der, Buffer.from([0])]),
    'an INTEGER length in long form': seq(Buffer.concat([Buffer.from([0x02, 0x81, r.length]), r, int(s)])),
  };
  // r with its sign pad dropped reads as negative.
  if (r[0] === 0 && r.length > 1) out['r negative'] = seq(Buffer.concat([int(r.subarray(1)), int(s)]));
  return out;
}

describe('signature encodings in verify', () => {
  it('a re-encoding of a valid ECDSA signature that OpenSSL refuses is refused by the token path and the software path alike', async () => {
    const keys = { ec: { label: 'ec', id: '02' } };
    sup = await startSupervisor({ config: configFor(td, { sw: slot('verify', { type: 'hsm', keys }), hw: slot('verify', { type: 'hsm', keys, softwareVerify: false }) }) });
    const pub = exportPublicKey(td, 'verify', '02');
    let negatives = 0;
    for (let i = 0; i < 8; i++) {
      const message = Buffer.from(`message ${i}`);
      const signature = await sup.sign({ slot: 'hw', key: 'ec', mechanism: 'ECDSA-SHA256', data: message });
      expect(opensslVerifies(pub, 'ECDSA-SHA256', message, signature)).toBe(true);
      for (const [what, bytes] of Object.entries(reEncodings(signature))) {
        if (what === 'r negative') negatives++;
        // OpenSSL's library, through Node: `openssl dgst -verify` reads only as many signature
        // bytes as the key's largest signature has, so it would not see a byte after the SEQUENCE.
        expect(nodeVerify('sha256', message, readFileSync(pub), bytes), what).toBe(false);
        expect(await sup.verify({ slot: 'hw', key: 'ec', mechanism: 'ECDSA-SHA256', data: message, signature: bytes }), `token: ${what}`).toBe(false);
        expect(await sup.verify({ slot: 'sw', key: 'ec', mechanism: 'ECDSA-SHA256', data: message, signature: bytes }), `software: ${what}`).toBe(false);
      }
      expect(await sup.verify({ slot: 'hw', key: 'ec', mechanism: 'ECDSA-SHA256', data: message, signature })).toBe(true);
    }
    expect(negatives).toBeGreaterThan(0); // half of all r have their top bit set
  });

  it('an RSA signature one byte short (its leading zero dropped) is invalid on both paths, as RFC 8017 says', async () => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    sup = await startSupervisor({ config: configFor(td, { sw: slot('verify', { type: 'hsm' }), hw: slot('verify', { type: 'hsm', softwareVerify: false }) }) });
    await sup.importKeyPair({ slot: 'sw', label: 'short-sig', id: '5e', privateKeyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string });
    for (const [mechanism, padding] of [['RSA-PSS-SHA256', constants.RSA_PKCS1_PSS_PADDING], ['RSA-PKCS1-SHA256', constants.RSA_PKCS1_PADDING]] as const) {
      // One signature in 256 starts with a zero byte; Node finds one quickly.
      let message: Buffer;
      let signature: Buffer;
      let i = 0;
      do {
        message = Buffer.from(`${mechanism} ${i++}`);
        signature = nodeSign('sha256', message, { key: privateKey, padding, saltLength: 32 });
      } while (signature[0] !== 0);
      const key = { label: 'short-sig' };
      expect(await sup.verify({ slot: 'hw', key, mechanism, data: message, signature })).toBe(true);
      expect(await sup.verify({ slot: 'sw', key, mechanism, data: message, signature })).toBe(true);
      for (const bytes of [signature.subarray(1), Buffer.concat([Buffer.from([0]), signature])]) {
        expect(await sup.verify({ slot: 'hw', key, mechanism, data: message, signature: bytes }), `token, ${bytes.length} bytes`).toBe(false);
        expect(await sup.verify({ slot: 'sw', key, mechanism, data: message, signature: bytes }), `software, ${bytes.length} bytes`).toBe(false);
      }
    }
  });
});

describe('what the token reports decides', () => {
  it('a pool larger than the token\'s session limit is refused at start; one that fits starts', async () => {
    const faults = new Faults(td);
    faults.set('maxsessions 2');
    await expect(startSupervisor({ config: faultConfig(td, faults, { p: slot('limits', { type: 'hsm', poolSize: 3 }) }) })).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
      issues: [expect.objectContaining({ path: 'slots.p.poolSize', message: expect.stringContaining('allows at most 2') })],
    });
    sup = await startSupervisor({ config: faultConfig(td, faults, { p: slot('limits', { type: 'hsm', poolSize: 2 }) }) });
    expect(await sup.sign({ slot: 'p', key: 'ec', mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);
  });

  it('a key size the token cannot generate is MECHANISM_INVALID before it is queued, naming what it can', async () => {
    const faults = new Faults(td);
    faults.set('maxkeybits 2048');
    sup = await startSupervisor({ config: faultConfig(td, faults, { k: slot('limits') }) });
    const before = (await sup.probe({ slot: 'k' })).calls;
    await expect(sup.generateKeyPair({ slot: 'k', algorithm: 'RSA-3072', label: 'too-big' })).rejects.toMatchObject({
      code: 'MECHANISM_INVALID',
      message: expect.stringContaining('RSA 512-2048'),
    });
    expect((await sup.probe({ slot: 'k' })).calls.C_GenerateKeyPair ?? 0).toBe(before.C_GenerateKeyPair ?? 0);
    expect((await sup.generateKeyPair({ slot: 'k', algorithm: 'EC-P256', label: 'fits', id: 'f1' })).keyType).toBe('EC');
  });
});

describe('creating named objects on a pool', () => {
  it('concurrent generations and imports of one name on four sessions make exactly one key each way, the rest KEY_IN_USE, while signatures go on', async () => {
    sup = await startSupervisor({ config: configFor(td, { n: slot('naming', { type: 'hsm', poolSize: 4 }) }) });
    const s = sup;
    const pem = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    const signing = Promise.all(Array.from({ length: 40 }, () => s.sign({ slot: 'n', key: 'ec', mechanism: 'ECDSA-SHA256', data })));
    const outcomes = await Promise.all([
      ...Array.from({ length: 6 }, () => s.generateKeyPair({ slot: 'n', algorithm: 'EC-P256', label: 'one-name' })),
      ...Array.from({ length: 6 }, () => s.importKeyPair({ slot: 'n', label: 'one-import', privateKeyPem: pem() })),
      ...Array.from({ length: 6 }, () => s.generateSecretKey({ slot: 'n', algorithm: 'AES-256', label: 'one-secret' })),
    ].map((p) => p.then(() => 'ok', (e: { code: string }) => e.code)));
    for (let i = 0; i < 3; i++) expect(outcomes.slice(6 * i, 6 * i + 6).sort()).toEqual(['KEY_IN_USE', 'KEY_IN_USE', 'KEY_IN_USE', 'KEY_IN_USE', 'KEY_IN_USE', 'ok']);
    const pub = exportPublicKey(td, 'naming', '02');
    for (const sig of await signing) expect(opensslVerifies(pub, 'ECDSA-SHA256', data, sig)).toBe(true);
    // Each name is one key: it is found, not KEY_AMBIGUOUS.
    expect(await s.sign({ slot: 'n', key: { label: 'one-name' }, mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);
    expect(await s.sign({ slot: 'n', key: { label: 'one-import' }, mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);
    expect((await s.encrypt({ slot: 'n', key: { label: 'one-secret' }, mechanism: 'AES-GCM', data })).ciphertext.length).toBeGreaterThan(0);
  });

  it('a creation waiting for its turn keeps its deadline and its signal: TIMEOUT or ABORTED at once, and it never reaches the token', async () => {
    const faults = new Faults(td);
    sup = await startSupervisor({ config: faultConfig(td, faults, { n: slot('naming', { type: 'hsm', poolSize: 2, keyGenTimeoutMs: 10_000 }) }) });
    const s = sup;
    faults.set('delay C_GenerateKeyPair 1500');
    const slow = s.generateKeyPair({ slot: 'n', algorithm: 'EC-P256', label: 'slow-turn' });
    const t0 = Date.now();
    await expect(s.generateKeyPair({ slot: 'n', algorithm: 'EC-P256', label: 'late-turn', timeoutMs: 100 })).rejects.toMatchObject({ code: 'TIMEOUT' });
    const controller = new AbortController();
    const aborted = s.generateSecretKey({ slot: 'n', algorithm: 'AES-256', label: 'aborted-turn', signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await expect(aborted).rejects.toMatchObject({ code: 'ABORTED' });
    expect(Date.now() - t0).toBeLessThan(2_000);
    // Signatures were never held up by the creation.
    expect(await s.sign({ slot: 'n', key: 'ec', mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);
    await slow;
    faults.clear();
    const names = (await s.findObjects({ slot: 'n' })).map((o) => o.label);
    expect(names).toContain('slow-turn');
    expect(names).not.toContain('late-turn');
    expect(names).not.toContain('aborted-turn');
  });
});

