/**
 * Keys that ask for the PIN on every use (CKA_ALWAYS_AUTHENTICATE): each signature logs in for
 * itself with C_Login(CKU_CONTEXT_SPECIFIC) between C_SignInit and C_Sign (each decryption between
 * C_DecryptInit and C_Decrypt), on the session the slot already has. Signatures are checked by
 * OpenSSL with the key pkcs11-tool reads off the token; ciphertexts are made by OpenSSL.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSupervisor, type LoginEvent, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, pkcs11Tool, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { Faults, faultConfig } from './support/faults.js';
import { exportPublicKey, openssl, opensslVerifies, tmpFile } from './support/openssl.js';
import { readFileSync } from 'node:fs';

let td: TokenDir;
let tok: TestToken;
let faults: Faults;
let sup: Pkcs11Supervisor | undefined;
const data = Buffer.from('every signature asks for the PIN');

beforeAll(() => {
  td = tokenDir();
  tok = createToken(td, 'always');
  // Made by OpenSC, as an operator would provision a PIV-like key.
  pkcs11Tool(td, 'always', tok.pin, ['--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'piv-sign', '--id', '9c', '--usage-sign', '--always-auth']);
  pkcs11Tool(td, 'always', tok.pin, ['--keypairgen', '--key-type', 'rsa:2048', '--label', 'piv-decrypt', '--id', '9d', '--usage-decrypt', '--always-auth']);
  faults = new Faults(td);
  process.env.AA_PIN = tok.pin;
});

afterEach(async () => {
  faults.clear();
  await sup?.close();
  sup = undefined;
});

function start(extra: Record<string, unknown> = {}) {
  const cfg = configFor(td, { s: { token: { label: 'always' }, pin: { env: 'AA_PIN' }, ...extra } });
  (cfg.slots.s as { keys: Record<string, unknown> }).keys.piv = { label: 'piv-sign', id: '9c' };
  return startSupervisor({ config: cfg });
}

async function calls(s: Pkcs11Supervisor): Promise<Record<string, number>> {
  return (await s.probe({ slot: 's' })).calls;
}

/** A ciphertext OpenSSL makes with the public key pkcs11-tool exports (RSA-OAEP, SHA-1: all SoftHSM2 2.6 decrypts). */
function opensslEncrypts(id: string, plain: Buffer): Buffer {
  const input = tmpFile('plain', plain);
  const out = tmpFile('ct');
  openssl(['pkeyutl', '-encrypt', '-pubin', '-inkey', exportPublicKey(td, 'always', id), '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha1', '-in', input, '-out', out]);
  return readFileSync(out);
}

describe('keys with CKA_ALWAYS_AUTHENTICATE', () => {
  it('signs with a context-specific login per signature, on the same session, and OpenSSL accepts each signature', async () => {
    sup = await start();
    const logins: LoginEvent[] = [];
    sup.on('login', (e: LoginEvent) => logins.push(e));
    const before = await calls(sup);
    const pub = exportPublicKey(td, 'always', '9c');
    for (let i = 0; i < 3; i++) {
      const sig = await sup.sign({ slot: 's', key: 'piv', mechanism: 'ECDSA-SHA256', data });
      expect(opensslVerifies(pub, 'ECDSA-SHA256', data, sig)).toBe(true);
    }
    const after = await calls(sup);
    expect((after.C_Login ?? 0) - (before.C_Login ?? 0)).toBe(3);
    // Not taken for a lost session: no new session, no re-login, the slot stayed logged in.
    expect(after.C_OpenSession).toBe(before.C_OpenSession);
    expect(logins.map((e) => `${e.userType}:${e.origin}:${e.outcome}`)).toEqual(['context:env:ok', 'context:env:ok', 'context:env:ok']);
    expect(sup.status().slots.s!.state).toBe('logged_in');
    // A key without the attribute signs without a login of its own.
    await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect((await calls(sup)).C_Login).toBe(after.C_Login);
  });

  it('generates and imports keys with the attribute; concurrent signatures each get their own login, none batched together', async () => {
    sup = await start({ poolSize: 1 });
    const gen = await sup.generateKeyPair({ slot: 's', algorithm: 'RSA-2048', label: 'aa-rsa', id: 'a1', alwaysAuthenticate: true });
    expect(gen.alwaysAuthenticate).toBe(true);
    // OpenSC reads the attribute off the token as set.
    expect(pkcs11Tool(td, 'always', tok.pin, ['--list-objects', '--type', 'privkey', '--id', 'a1'])).toMatch(/Access:.*always authenticate/);
    const [plain] = await sup.findObjects({ slot: 's', template: { class: 'privateKey', label: 'ec' } });
    expect(plain!.alwaysAuthenticate).toBe(false);

    const before = await calls(sup);
    const sigs = await Promise.all(Array.from({ length: 8 }, (_, i) => sup!.sign({ slot: 's', key: { label: 'aa-rsa' }, mechanism: 'RSA-PKCS1-SHA256', data: Buffer.from(`doc ${i}`) })));
    const pub = exportPublicKey(td, 'always', 'a1');
    sigs.forEach((sig, i) => expect(opensslVerifies(pub, 'RSA-PKCS1-SHA256', Buffer.from(`doc ${i}`), sig)).toBe(true));
    expect((await calls(sup)).C_Login! - (before.C_Login ?? 0)).toBe(8);

    const { privateKey } = await import('node:crypto').then((c) => c.generateKeyPairSync('ec', { namedCurve: 'P-256' }));
    const imported = await sup.importKeyPair({ slot: 's', label: 'aa-imported', id: 'a2', privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }), alwaysAuthenticate: true });
    expect(imported.find((o) => o.class === 'privateKey')!.alwaysAuthenticate).toBe(true);
    const sig = await sup.sign({ slot: 's', key: { id: 'a2' }, mechanism: 'ECDSA-SHA256', data });
    expect(opensslVerifies(exportPublicKey(td, 'always', 'a2'), 'ECDSA-SHA256', data, sig)).toBe(true);

    // RSA-OAEP to a decryption key that asks for the PIN on every use: the token cannot be asked
    // to show it decrypts those parameters without that PIN, so it is not asked, and Node encrypts.
    const rsa = await import('node:crypto').then((c) => c.generateKeyPairSync('rsa', { modulusLength: 2048 }));
    await sup.importKeyPair({ slot: 's', label: 'aa-decrypt', id: 'a3', privateKeyPem: rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }), usage: ['decrypt'], alwaysAuthenticate: true });
    const { ciphertext } = await sup.encrypt({ slot: 's', key: { id: 'a3' }, mechanism: 'RSA-OAEP-SHA1', data });
    const { privateDecrypt, constants } = await import('node:crypto');
    expect(privateDecrypt({ key: rsa.privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, ciphertext).equals(data)).toBe(true);
  });

  it('a PIN the token refuses in a context login is PIN_INCORRECT, is never sent again, and leaves the slot serving', async () => {
    sup = await start();
    const before = await calls(sup);
    const refused = await sup.sign({ slot: 's', key: 'piv', mechanism: 'ECDSA-SHA256', data, pin: 'not-the-pin' }).catch((e: { code: string }) => e);
    expect(refused).toMatchObject({ code: 'PIN_INCORRECT' });
    const once = await calls(sup);
    expect(once.C_Login! - (before.C_Login ?? 0)).toBe(1);
    // The same wrong PIN again: refused here, the token's retry counter untouched.
    await expect(sup.sign({ slot: 's', key: 'piv', mechanism: 'ECDSA-SHA256', data, pin: 'not-the-pin' })).rejects.toMatchObject({ code: 'PIN_INCORRECT' });
    expect((await calls(sup)).C_Login).toBe(once.C_Login);
    // The session was left usable: no re-open, the right PIN signs at once.
    const sig = await sup.sign({ slot: 's', key: 'piv', mechanism: 'ECDSA-SHA256', data });
    expect(opensslVerifies(exportPublicKey(td, 'always', '9c'), 'ECDSA-SHA256', data, sig)).toBe(true);
    expect((await calls(sup)).C_OpenSession).toBe(before.C_OpenSession);
    expect(sup.status().slots.s!.state).toBe('logged_in');
  });

  it('without a PIN source the call is PIN_REQUIRED, and the slot keeps serving other keys', async () => {
    sup = await startSupervisor({ config: configFor(td, { s: { token: { label: 'always' }, pin: { env: 'AA_PIN' }, keys: { piv: { label: 'piv-sign' }, ec: { label: 'ec' } } } }) });
    delete process.env.AA_PIN; // logged in at start; nothing left to ask
    try {
      await expect(sup.sign({ slot: 's', key: 'piv', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'PIN_REQUIRED' });
      await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
      expect(sup.status().slots.s!.state).toBe('logged_in');
    } finally {
      process.env.AA_PIN = tok.pin;
    }
  });

  it('decrypts with a context-specific login per decryption, each its own (never batched), and a refused PIN leaves the slot serving', async () => {
    sup = await start({ poolSize: 1 });
    const logins: LoginEvent[] = [];
    sup.on('login', (e: LoginEvent) => logins.push(e));
    const plains = Array.from({ length: 6 }, (_, i) => Buffer.from(`secret ${i}`));
    const cts = plains.map((p) => opensslEncrypts('9d', p));
    const before = await calls(sup);
    const got = await Promise.all(cts.map((data) => sup!.decrypt({ slot: 's', key: { label: 'piv-decrypt' }, mechanism: 'RSA-OAEP-SHA1', data })));
    got.forEach((g, i) => expect(Buffer.from(g).equals(plains[i]!)).toBe(true));
    const after = await calls(sup);
    expect(after.C_Login! - (before.C_Login ?? 0)).toBe(6);
    expect(after.C_OpenSession).toBe(before.C_OpenSession);
    expect(logins.map((e) => `${e.userType}:${e.outcome}`)).toEqual(Array(6).fill('context:ok'));

    // SoftHSM2 2.6 ignores an OAEP label: asked with one, the token is shown a labelled
    // ciphertext first (with the PIN), and the call is refused instead of decrypting what was made
    // without that label.
    const labelled = { slot: 's', key: { id: '9d' }, mechanism: 'RSA-OAEP-SHA1', data: cts[2]!, oaepLabel: Buffer.from('other context') } as const;
    await expect(sup.decrypt({ ...labelled, pin: 'not-the-pin' })).rejects.toMatchObject({ code: 'PIN_INCORRECT' });
    await expect(sup.decrypt(labelled)).rejects.toMatchObject({ code: 'MECHANISM_INVALID', message: expect.stringContaining('with a label') });
    await expect(sup.encrypt({ slot: 's', key: { id: '9d' }, mechanism: 'RSA-OAEP-SHA1', data, oaepLabel: Buffer.from('x') })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });

    // A fresh key asked to encrypt with a label first: the check needs the PIN too, and gets it.
    await sup.generateKeyPair({ slot: 's', algorithm: 'RSA-2048', label: 'aa-fresh', id: 'af', usage: ['decrypt'], alwaysAuthenticate: true });
    const loginsBefore = (await calls(sup)).C_Login!;
    await expect(sup.encrypt({ slot: 's', key: { id: 'af' }, mechanism: 'RSA-OAEP-SHA1', data, oaepLabel: Buffer.from('x') })).rejects.toMatchObject({ code: 'MECHANISM_INVALID', message: expect.stringContaining('with a label') });
    expect((await calls(sup)).C_Login! - loginsBefore).toBe(1);
    const sealed = await sup.encrypt({ slot: 's', key: { id: 'af' }, mechanism: 'RSA-OAEP-SHA1', data });
    expect(Buffer.from(await sup.decrypt({ slot: 's', key: { id: 'af' }, mechanism: 'RSA-OAEP-SHA1', data: sealed.ciphertext })).equals(data)).toBe(true);

    // A ciphertext for another key is still DECRYPTION_FAILED after the login, not a PIN error.
    const other = Buffer.from(opensslEncrypts('9d', Buffer.from('x')));
    other[10] ^= 1;
    await expect(sup.decrypt({ slot: 's', key: { id: '9d' }, mechanism: 'RSA-OAEP-SHA1', data: other })).rejects.toMatchObject({ code: 'DECRYPTION_FAILED' });

    await expect(sup.decrypt({ slot: 's', key: { id: '9d' }, mechanism: 'RSA-OAEP-SHA1', data: cts[0]!, pin: 'not-the-pin' })).rejects.toMatchObject({ code: 'PIN_INCORRECT' });
    // The refused login left no operation open: the next decrypt and sign on the session work.
    expect(Buffer.from(await sup.decrypt({ slot: 's', key: { id: '9d' }, mechanism: 'RSA-OAEP-SHA1', data: cts[1]! })).equals(plains[1]!)).toBe(true);
    const sig = await sup.sign({ slot: 's', key: 'piv', mechanism: 'ECDSA-SHA256', data });
    expect(opensslVerifies(exportPublicKey(td, 'always', '9c'), 'ECDSA-SHA256', data, sig)).toBe(true);
    expect((await calls(sup)).C_OpenSession).toBe(before.C_OpenSession);
    expect(sup.status().slots.s!.state).toBe('logged_in');
  });

  it('a module that enforces it without showing the attribute: C_Sign says CKR_USER_NOT_LOGGED_IN on a logged-in session, which is not a lost session', async () => {
    faults.set('hidealwaysauth');
    const cfg = faultConfig(td, faults, { s: { token: { label: 'always' }, pin: { env: 'AA_PIN' }, keys: { piv: { label: 'piv-sign', id: '9c' } } } });
    sup = await startSupervisor({ config: cfg });
    const before = faults.counts();
    const pub = exportPublicKey(td, 'always', '9c');
    for (let i = 0; i < 3; i++) {
      const sig = await sup.sign({ slot: 's', key: 'piv', mechanism: 'ECDSA-SHA256', data });
      expect(opensslVerifies(pub, 'ECDSA-SHA256', data, sig)).toBe(true);
    }
    const after = faults.counts();
    expect(after.C_LoginContextSpecific! - (before.C_LoginContextSpecific ?? 0)).toBe(3);
    expect(after.C_OpenSession).toBe(before.C_OpenSession);
    expect(after.C_Login).toBe(before.C_Login);
    // Learnt once: later signatures go with the PIN at once (one C_Sign each, not two).
    expect(after.C_Sign! - before.C_Sign!).toBe(4);

    // The same for a decryption key: C_Decrypt's CKR_USER_NOT_LOGGED_IN is learnt, and each decrypt logs in.
    const plain = Buffer.from('hidden attribute');
    for (let i = 0; i < 2; i++) {
      const got = await sup.decrypt({ slot: 's', key: { label: 'piv-decrypt' }, mechanism: 'RSA-OAEP-SHA1', data: opensslEncrypts('9d', plain) });
      expect(Buffer.from(got).equals(plain)).toBe(true);
    }
    const end = faults.counts();
    expect(end.C_LoginContextSpecific! - after.C_LoginContextSpecific!).toBe(2);
    expect(end.C_OpenSession).toBe(before.C_OpenSession);
    expect(end.C_Login).toBe(before.C_Login);
  });
});
