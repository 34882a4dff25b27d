/**
 * No signature by the wrong key, with the wrong mechanism or over the wrong data, whatever mix
 * of calls the mailboxes batch together: fast-check sends bursts of concurrent signs that mix
 * keys of four types, every signature mechanism, prehashed and whole-message data, DER and raw
 * ECDSA and sizes from 1 B to 64 KiB (so some bursts overflow a batch's byte budget and split),
 * to a token slot and an hsm pool on one token at once. Each signature is checked by Node's
 * OpenSSL with the mechanism's exact parameters (PSS salt = hash length) against the caller's own
 * message, and each is then verified back through `verify` in software and on the token, and
 * over the data with a byte changed, which both must call false. In the process, over the socket
 * and over mutual TLS, where the remote client packs concurrent calls into one batch request of
 * its own.
 */
import { createHash, constants, verify as nodeVerify, type KeyObject } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { startSupervisor, type Pkcs11Client } from '../dist/src/index.js';
import { MECHANISMS, type MechanismName } from '../dist/src/model/mechanisms.js';
import { configFor, createToken, tokenDir, type TokenDir } from './support/softhsm.js';
import { open, TRANSPORTS, type Opened } from './support/transports.js';

let td: TokenDir;
let config: ReturnType<typeof configFor>;
const publicKeys = new Map<string, KeyObject>();
const KEYS = { rsa: 'RSA', ec: 'EC', ec384: 'EC', ed: 'EC_EDWARDS' } as const;
type Key = keyof typeof KEYS;
const MECHS_FOR = (key: Key) => (Object.keys(MECHANISMS) as MechanismName[]).filter((m) => MECHANISMS[m].keyType === KEYS[key]);
// SHA-256's DigestInfo prefix (RFC 8017 section 9.2): what a caller of raw RSA-PKCS1 puts before the digest.
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');

beforeAll(async () => {
  td = tokenDir();
  process.env.MIX_PIN = createToken(td, 'mix').pin;
  const keys = { rsa: { label: 'rsa' }, ec: { label: 'ec' }, ec384: { label: 'ec384' }, ed: { label: 'ed' } };
  config = configFor(td, {
    t: { token: { label: 'mix' }, pin: { env: 'MIX_PIN' }, keys },
    p: { token: { label: 'mix' }, pin: { env: 'MIX_PIN' }, keys, type: 'hsm', poolSize: 3 },
    onToken: { token: { label: 'mix' }, pin: { env: 'MIX_PIN' }, keys, type: 'hsm', poolSize: 2, softwareVerify: false },
  });
  const sup = await startSupervisor({ config });
  await sup.generateKeyPair({ slot: 't', algorithm: 'EC-P384', label: 'ec384', id: '03' });
  await sup.generateKeyPair({ slot: 't', algorithm: 'Ed25519', label: 'ed', id: '04' });
  for (const key of Object.keys(KEYS)) publicKeys.set(key, (await sup.getPublicKey({ slot: 't', key })).keyObject);
  await sup.close();
}, 60_000);

const call = fc
  .record({
    slot: fc.constantFrom('t', 'p'),
    key: fc.constantFrom<Key>('rsa', 'ec', 'ec384', 'ed'),
    pick: fc.nat(),
    prehashed: fc.boolean(),
    raw: fc.boolean(),
    size: fc.oneof(fc.constantFrom(1, 2, 31, 32, 33, 64, 255, 256, 4096, 65_536), fc.integer({ min: 1, max: 20_000 })),
    seed: fc.nat(),
  })
  .map(({ key, pick, prehashed, raw, size, seed, slot }) => {
    const mechs = MECHS_FOR(key);
    const mechanism = mechs[pick % mechs.length]!;
    const spec = MECHANISMS[mechanism];
    const message = Buffer.alloc(size, seed % 251);
    if (size >= 4) message.writeUInt32BE(seed, 0); // calls of one size differ in their first bytes
    return { slot, key, mechanism, message, prehashed: prehashed && spec.hash !== null, raw: raw && spec.scheme === 'ecdsa' };
  });

/** What the caller sends for its message: the message, its digest, or (raw RSA) a DigestInfo. */
function dataFor(c: { mechanism: MechanismName; message: Buffer; prehashed: boolean }): Buffer {
  const { hash, scheme } = MECHANISMS[c.mechanism];
  if (scheme === 'rsa-raw') return Buffer.concat([SHA256_DIGEST_INFO, createHash('sha256').update(c.message).digest()]);
  return c.prehashed && hash ? createHash(hash).update(c.message).digest() : c.message;
}

/** OpenSSL's answer for the caller's message, with the mechanism's exact parameters. */
function opensslAccepts(c: { key: Key; mechanism: MechanismName; message: Buffer; raw: boolean }, signature: Uint8Array): boolean {
  const { hash, scheme } = MECHANISMS[c.mechanism];
  const key = publicKeys.get(c.key)!;
  if (scheme === 'eddsa') return nodeVerify(null, c.message, key, signature);
  if (scheme === 'rsa-raw') return nodeVerify('sha256', c.message, key, signature);
  if (scheme === 'pss') return nodeVerify(hash, c.message, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: { sha256: 32, sha384: 48, sha512: 64 }[hash!] }, signature);
  if (scheme === 'pkcs1') return nodeVerify(hash, c.message, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
  return nodeVerify(hash, c.message, { key, dsaEncoding: c.raw ? 'ieee-p1363' : 'der' }, signature);
}

describe.each(TRANSPORTS)('bursts mixing keys, mechanisms, digests and sizes (%s)', (transport) => {
  let opened: Opened;
  let sup: Pkcs11Client;
  beforeAll(async () => {
    opened = await open(transport, config, td.dir);
    sup = opened.client;
  }, 60_000);
  afterAll(() => opened?.close());

  it('every signature is by the key named, with the mechanism named, over that caller\'s data; verify agrees in software and on the token', async () => {
    let signed = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(call, { minLength: 1, maxLength: 32 }), async (calls) => {
        const requests = calls.map((c) => ({ slot: c.slot, key: c.key, mechanism: c.mechanism, data: dataFor(c), prehashed: c.prehashed, ...(c.raw ? { signatureFormat: 'raw' as const } : {}) }));
        const signatures = await Promise.all(requests.map((r) => sup.sign(r)));
        for (const [i, c] of calls.entries()) expect(opensslAccepts(c, signatures[i]!), `${c.key} ${c.mechanism} prehashed=${c.prehashed} ${c.message.length} B`).toBe(true);
        signed += calls.length;
        // Back through verify: each signature over its own data true, over the data with a byte changed false, both ways.
        const checks = requests.flatMap((r, i) => {
          const other = Buffer.from(r.data);
          // The first byte: ECDSA reads only as much of a digest as its curve's order has bits (SHA-512 on P-384: 48 of 64 bytes).
          other[0]! ^= 1;
          const wrong = other;
          return ['t', 'onToken'].flatMap((slot) => [
            sup.verify({ ...r, slot, signature: signatures[i]! }).then((ok) => expect(ok, `${slot} ${r.mechanism}`).toBe(true)),
            sup.verify({ ...r, slot, data: wrong, signature: signatures[i]! }).then((ok) => expect(ok, `${slot} ${r.mechanism} changed data`).toBe(false), (e: { code: string }) => expect(e.code).toBe('BAD_INPUT')),
          ]);
        });
        await Promise.all(checks);
      }),
      { numRuns: 50 },
    );
    expect(signed).toBeGreaterThan(200);
    // The token slot's mixes really shared batches (the pool, with a worker free for most calls, sends fewer).
    const status = await sup.status();
    const { handed } = status.slots.t!.workers[0]!;
    expect(handed.messages).toBeLessThan(handed.calls); // some batches held several (how many depends on the machine's load)
    for (const slot of ['t', 'p', 'onToken']) expect(status.slots[slot]!.state).toBe('logged_in');
  }, 300_000);
});
