/**
 * A key is what the token holds now. Keys replaced and tokens re-initialized by another
 * process (pkcs11-tool, softhsm2-util), then: which key signs, which public key getPublicKey
 * returns, and what verify trusts, each checked by OpenSSL against the key on the token now.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { startSupervisor, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, pkcs11Tool, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { exportPublicKey, opensslVerifies, tmpFile } from './support/openssl.js';

let td: TokenDir;
let tok: TestToken;
let sup: Pkcs11Supervisor | undefined;
const data = Buffer.from('a document signed before and after the key changed');

beforeAll(() => {
  td = tokenDir();
  tok = createToken(td, 'ident');
  process.env.IDENT_PIN = tok.pin;
});

afterEach(async () => {
  await sup?.close();
  sup = undefined;
});

const start = async (extra: Record<string, unknown> = {}) =>
  (sup = await startSupervisor({ config: configFor(td, { s: { token: { label: 'ident' }, pin: { env: 'IDENT_PIN' }, ...extra } }) }));

/** Deletes key 02 ("ec") in another process and makes a new one with the same label and id. */
function replaceEcKey(): void {
  for (const type of ['privkey', 'pubkey']) pkcs11Tool(td, 'ident', tok.pin, ['--delete-object', '--type', type, '--id', '02']);
  pkcs11Tool(td, 'ident', tok.pin, ['--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'ec', '--id', '02', '--usage-sign']);
}

/** A DER ECDSA signature by key 02 as it is on the token now, made by pkcs11-tool in another process. */
function signElsewhere(): Buffer {
  // SoftHSM2 has CKM_ECDSA, not CKM_ECDSA_SHA256: the digest is hashed here.
  const input = tmpFile('digest', createHash('sha256').update(data).digest());
  const out = tmpFile('sig');
  pkcs11Tool(td, 'ident', tok.pin, ['--sign', '--mechanism', 'ECDSA', '--id', '02', '--signature-format', 'openssl', '--input-file', input, '--output-file', out]);
  return readFileSync(out);
}

const spkiPem = (pemFile: string) => readFileSync(pemFile, 'utf8').trim();

describe('a key replaced behind the daemon', () => {
  it('verify never trusts the deleted key, even for a caller that only verifies; getPublicKey returns the new key', async () => {
    const s = await start();
    const oldSig = await s.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(await s.verify({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, signature: oldSig })).toBe(true); // the public key is now cached
    replaceEcKey();
    const newSig = signElsewhere();
    const newPem = exportPublicKey(td, 'ident', '02');
    expect(opensslVerifies(newPem, 'ECDSA-SHA256', data, newSig)).toBe(true);
    expect(opensslVerifies(newPem, 'ECDSA-SHA256', data, oldSig)).toBe(false);

    expect(await s.verify({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, signature: oldSig })).toBe(false);
    expect(await s.verify({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, signature: newSig })).toBe(true);
    expect((await s.getPublicKey({ slot: 's', key: 'ec' })).pem.trim()).toBe(spkiPem(newPem));
  });

  it('the next signatures come from the key on the token now, not the deleted one', async () => {
    const s = await start();
    await s.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    const oldPem = exportPublicKey(td, 'ident', '02');
    replaceEcKey();
    const newPem = exportPublicKey(td, 'ident', '02');
    for (const wait of [0, 1100]) {
      await new Promise((r) => setTimeout(r, wait));
      const sig = await s.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
      expect(opensslVerifies(newPem, 'ECDSA-SHA256', data, sig), `after ${wait} ms`).toBe(true);
      expect(opensslVerifies(oldPem, 'ECDSA-SHA256', data, sig)).toBe(false);
    }
  });

  it('a burst of verifies shares one look at the token', async () => {
    const s = await start();
    const sig = await s.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    const before = (await s.probe({ slot: 's' })).calls.C_FindObjectsInit ?? 0;
    const results = await Promise.all(Array.from({ length: 200 }, () => s.verify({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, signature: sig })));
    expect(results.every((r) => r)).toBe(true);
    const finds = ((await s.probe({ slot: 's' })).calls.C_FindObjectsInit ?? 0) - before;
    expect(finds).toBeGreaterThanOrEqual(1);
    expect(finds).toBeLessThanOrEqual(2);
  });

  it('with keyCheckMs, a confirmed key answers verifies for that long without the token', async () => {
    const s = await start({ keyCheckMs: 60_000 });
    const sig = await s.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    await s.verify({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, signature: sig });
    const before = (await s.probe({ slot: 's' })).calls.C_FindObjectsInit ?? 0;
    for (let i = 0; i < 20; i++) expect(await s.verify({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, signature: sig })).toBe(true);
    expect(((await s.probe({ slot: 's' })).calls.C_FindObjectsInit ?? 0) - before).toBe(0);
  });
});

describe('the public-key cache and the daemon changing keys', () => {
  it('a read that began while a key was replaced through the daemon is not kept after the replacement ends', async () => {
    const { PublicKeyCache } = await import('../dist/src/client/public-key-cache.js');
    const { EventEmitter } = await import('node:events');
    const cache = new PublicKeyCache(new EventEmitter() as never);
    const sel = { label: 'ec', id: '02' };
    let finishRead!: (v: unknown) => void;
    let replaced!: () => void;
    const replacement = cache.changing('s', () => new Promise<void>((r) => (replaced = r)));
    // A verify arrives mid-replacement: its read of the key starts while the old key is still there.
    const raced = cache.get('s', sel, 60_000, () => new Promise((r) => (finishRead = r)) as never);
    replaced();
    await replacement;
    finishRead({ keyType: 'EC', label: 'old' });
    expect(await raced).toMatchObject({ label: 'old' });
    // The next verify, after the replacement returned, reads the key again.
    expect(await cache.get('s', sel, 60_000, async () => ({ keyType: 'EC', label: 'new' }) as never)).toMatchObject({ label: 'new' });
  });
});

describe('a token re-initialized in place', () => {
  it('with the same key label and id made again: signatures and public keys follow the new key', async () => {
    const s = await start();
    const oldSig = await s.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    await s.verify({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, signature: oldSig });
    const slots = execFileSync('softhsm2-util', ['--show-slots'], { env: td.env, encoding: 'utf8' });
    const slotId = /Slot (\d+)\s+Slot info:[\s\S]*?Label:\s+ident\s/.exec(slots)![1]!;
    execFileSync('softhsm2-util', ['--init-token', '--slot', slotId, '--label', 'ident', '--so-pin', tok.soPin, '--pin', tok.pin], { env: td.env, stdio: 'pipe' });
    pkcs11Tool(td, 'ident', tok.pin, ['--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'ec', '--id', '02', '--usage-sign']);
    const newPem = exportPublicKey(td, 'ident', '02');

    expect(await s.verify({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, signature: oldSig })).toBe(false);
    const sig = await s.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(opensslVerifies(newPem, 'ECDSA-SHA256', data, sig)).toBe(true);
    expect((await s.getPublicKey({ slot: 's', key: 'ec' })).pem.trim()).toBe(spkiPem(newPem));
  });
});
