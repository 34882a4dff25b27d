/**
 * The integration suite that runs unchanged against every PKCS#11 implementation: the same
 * calls, checked the same way (Node's crypto.verify, pkcs11-tool from another process, the
 * token's own reports). Where a token lacks something, the test asserts the supervisor's
 * answer to that (a typed refusal, a software digest in front of a raw mechanism) from what
 * the token reported, never from the vendor's name. Each run writes what it found to
 * var/compat/<vendor>.json; `npm run compat` turns those into the README's table.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { constants, createHash, verify as nodeVerify } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compactVerify, decodeProtectedHeader } from 'jose';
import { startSupervisor, type Pkcs11Supervisor } from '../../dist/src/index.js';
import { waitForEvent } from './sign-check.js';
import { pkcs11Tool, type Vendor, type VendorToken } from './vendors/vendor.js';
import { injectWorkerFault } from '../../dist/src/testing.js';
import { makeCa, pkiDir } from './pki.js';
import { openssl, tmpFile } from './openssl.js';

type Row = { feature: string; result: string };

/** Mechanisms the token lists, by pkcs11-tool's names, and which of them the supervisor's names need natively. */
const NATIVE: Record<string, string> = {
  'RSA-PKCS1-SHA256': 'SHA256-RSA-PKCS',
  'RSA-PSS-SHA256': 'SHA256-RSA-PKCS-PSS',
  'ECDSA-SHA256': 'ECDSA-SHA256',
};
const RAW: Record<string, string> = { 'RSA-PKCS1-SHA256': 'RSA-PKCS', 'RSA-PSS-SHA256': 'RSA-PKCS-PSS', 'ECDSA-SHA256': 'ECDSA' };
const KEYGEN = ['RSA-2048', 'RSA-4096', 'EC-P256', 'EC-P384', 'Ed25519'] as const;
/** Key type and the sizes C_GetMechanismInfo may state for it (Ed25519: 255 or 256, by vendor). */
const KEYGEN_TYPE = { 'RSA-2048': ['RSA', [2048]], 'RSA-4096': ['RSA', [4096]], 'EC-P256': ['EC', [256]], 'EC-P384': ['EC', [384]], Ed25519: ['EC_EDWARDS', [255, 256]] } as const;

/**
 * A data object written by pkcs11-tool, as a smart card's would be. Before the supervisor
 * starts: tpm2-pkcs11 reads its store when a token is loaded, so an object another process
 * adds later is not seen until the module is initialized again.
 */
function writeDataObject(tok: VendorToken): string {
  const note = tmpFile('note.txt', 'a note kept on the token');
  const write = (extra: string[]) => pkcs11Tool(tok, ['--write-object', note, '--type', 'data', '--label', 'conf-note', ...extra]);
  try {
    write([]);
    return 'yes';
  } catch (e) {
    // Some tokens keep private data objects only (tpm2-pkcs11: "CKA_PRIVATE cannot be CK_FALSE").
    const why = /error: (.*)/i.exec(String((e as { stderr?: unknown }).stderr))?.[1]?.trim() ?? 'refused';
    write(['--private']);
    return `yes (private data objects only: ${why})`;
  }
}

export function conformanceSuite(vendor: Vendor): void {
  const selected = (process.env.P11SUP_VENDORS ?? '').split(',').filter(Boolean);
  if (selected.length > 0 && !selected.includes(vendor.name)) {
    describe.skip(`${vendor.name} (not in P11SUP_VENDORS)`, () => it('is left out', () => {}));
    return;
  }

  describe(`${vendor.name}: the integration suite`, () => {
    let tok: VendorToken;
    let sup: Pkcs11Supervisor;
    let listed: Set<string>;
    let library = '';
    /** How pkcs11-tool could write a data object before the supervisor opened the token. */
    let dataObjects = '';
    const rows: Row[] = [];
    const record = (feature: string, result: string) => rows.push({ feature, result });
    const token = () => sup.status().slots.v!.token!;
    const data = Buffer.from('a purchase order, signed where the key lives');

    const signsAndVerifies = async (key: string | { label: string }, mechanism: 'RSA-PKCS1-SHA256' | 'RSA-PSS-SHA256' | 'ECDSA-SHA256', prehashed = false) => {
      const input = prehashed ? createHash('sha256').update(data).digest() : data;
      const sig = await sup.sign({ slot: 'v', key, mechanism, data: input, prehashed });
      const { keyObject } = await sup.getPublicKey({ slot: 'v', key });
      const padding = mechanism === 'RSA-PSS-SHA256' ? { padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 } : {};
      return nodeVerify('sha256', data, { key: keyObject, ...padding }, sig);
    };

    beforeAll(async () => {
      const why = vendor.unavailable();
      if (why) throw new Error(`${vendor.name} cannot run here: ${why}. Run setup (npm test does), or leave it out with P11SUP_VENDORS.`);
      tok = vendor.provision();
      const info = pkcs11Tool(tok, ['--show-info'], null);
      library = `${/Manufacturer\s+(.*)/.exec(info)?.[1]?.trim()}, ${/Library\s+(.*)/.exec(info)?.[1]?.trim()}, Cryptoki ${/Cryptoki version\s+(\S+)/.exec(info)?.[1]}`;
      listed = new Set([...pkcs11Tool(tok, ['--list-mechanisms'], null).matchAll(/^\s+([A-Z0-9-]+)[,\s]/gm)].map((m) => m[1]!));
      dataObjects = writeDataObject(tok);
      process.env.VENDOR_PIN = tok.pin;
      process.env.PKCS11_SUPERVISOR_FAULTS = '1'; // the crash test's injected worker exit
      sup = await startSupervisor({
        config: {
          modules: { m: { path: tok.module, env: tok.env } },
          slots: { v: { module: 'm', type: 'hsm', poolSize: 2, lazy: false, token: { label: tok.label }, pin: { env: 'VENDOR_PIN' }, keys: tok.keys, restart: { backoffInitialMs: 50 } } },
          metrics: { enabled: false },
          log: { level: 'silent' },
        },
      });
    }, 120_000);

    afterAll(async () => {
      await sup?.close();
      tok?.close();
      mkdirSync('var/compat', { recursive: true });
      const t = sup ? sup.status().slots.v?.token : null;
      writeFileSync(`var/compat/${vendor.name}.json`, JSON.stringify({ vendor: vendor.name, packages: vendor.packages, library, token: t, rows }, null, 2));
    });

    it('opens a pool of two sessions, logs in, and reports the token limits', () => {
      const s = sup.status().slots.v!;
      expect(s.workers.map((w) => w.state)).toEqual(['logged_in', 'logged_in']);
      const t = token();
      expect(t.mechanisms).toContain('RSA-PKCS1-SHA256');
      record('pool of 2 sessions, user login', 'yes');
      const limit = t.maxSessions === null ? 'no limit stated' : t.maxSessions >= 2 ** 31 ? `${t.maxSessions} (none in effect)` : String(t.maxSessions);
      record('max sessions (ulMaxSessionCount)', limit);
      record('PIN length (ulMin/MaxPinLen)', t.pinLength ? `${t.pinLength.min}–${t.pinLength.max}` : 'not stated');
    });

    for (const mechanism of ['RSA-PKCS1-SHA256', 'RSA-PSS-SHA256', 'ECDSA-SHA256'] as const) {
      it(`${mechanism}: signs where the token can, natively or over a digest made here; refuses with MECHANISM_INVALID where it cannot`, async () => {
        const key = mechanism.startsWith('ECDSA') ? 'ec' : 'rsa';
        const native = listed.has(NATIVE[mechanism]!);
        const raw = listed.has(RAW[mechanism]!);
        const hasKey = key in tok.keys;
        if (hasKey && (native || raw)) {
          expect(token().mechanisms).toContain(mechanism);
          expect(await signsAndVerifies(key, mechanism)).toBe(true);
          expect(await signsAndVerifies(key, mechanism, true)).toBe(true);
          record(mechanism, native ? `native (CKM ${NATIVE[mechanism]})` : `adapted: SHA-256 here, CKM ${RAW[mechanism]} on the token`);
          return;
        }
        expect(token().mechanisms).not.toContain(mechanism);
        const err = await sup.sign({ slot: 'v', key: 'rsa', mechanism, data }).catch((e: unknown) => e);
        expect(err).toMatchObject({ code: 'MECHANISM_INVALID' });
        expect(String((err as Error).message)).toMatch(/cannot do/);
        expect(await signsAndVerifies('rsa', 'RSA-PKCS1-SHA256')).toBe(true); // the slot stays healthy
        record(mechanism, 'refused: MECHANISM_INVALID (not in C_GetMechanismList)');
      });
    }

    for (const algorithm of KEYGEN) {
      it(`generates ${algorithm} where the token reports it can, and refuses it before queueing where not`, async () => {
        const [type, sizes] = KEYGEN_TYPE[algorithm];
        const range = token().keyGen[type];
        const label = `gen-${algorithm.toLowerCase()}`;
        if (range && sizes.some((bits) => bits >= range.min && bits <= range.max)) {
          const t0 = performance.now();
          const made = await sup.generateKeyPair({ slot: 'v', algorithm, label, timeoutMs: 120_000 });
          const ms = performance.now() - t0;
          expect(made.label).toBe(label);
          // Visible from another process: the key is in the token's persistent store.
          expect(pkcs11Tool(tok, ['--list-objects', '--type', 'pubkey'])).toContain(label);
          if (type === 'RSA') expect(await signsAndVerifies({ label }, 'RSA-PKCS1-SHA256')).toBe(true);
          if (algorithm === 'EC-P256' && token().mechanisms.includes('ECDSA-SHA256')) expect(await signsAndVerifies({ label }, 'ECDSA-SHA256')).toBe(true);
          record(`generate ${algorithm}`, `yes, ${ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`}`);
          return;
        }
        const err = await sup.generateKeyPair({ slot: 'v', algorithm, label }).catch((e: unknown) => e);
        expect(err).toMatchObject({ code: 'MECHANISM_INVALID' });
        record(`generate ${algorithm}`, range ? `refused: outside ${range.min}–${range.max} bits` : 'refused: no key-pair mechanism');
      }, 180_000);
    }

    it('draws random bytes from the token', async () => {
      const a = await sup.generateRandom({ slot: 'v', length: 32 });
      const b = await sup.generateRandom({ slot: 'v', length: 32 });
      expect(a.length).toBe(32);
      expect(a.equals(b)).toBe(false);
      record('C_GenerateRandom', 'yes');
    });

    it('finds the provisioned keys by label', async () => {
      const found = await sup.findObjects({ slot: 'v', template: { class: 'privateKey' } });
      expect(found.map((o) => o.label)).toEqual(expect.arrayContaining(Object.values(tok.keys).map((k) => k.label)));
      record('find objects', 'yes');
    });

    it('names keys by PKCS#11 URI (RFC 7512): findObjects gives each object its URI, and that URI signs', async () => {
      const [priv] = await sup.findObjects({ slot: 'v', template: { class: 'privateKey', label: tok.keys.rsa.label } });
      expect(priv!.uri.startsWith('pkcs11:token=')).toBe(true);
      expect(priv!.uri).toContain(';type=private');
      expect(await signsAndVerifies(priv!.uri, 'RSA-PKCS1-SHA256')).toBe(true);
      const pub = await sup.getPublicKey({ slot: 'v', key: `pkcs11:object=${encodeURIComponent(tok.keys.rsa.label)};type=public` });
      expect(pub.id).toBe(tok.keys.rsa.id);
      record('keys by PKCS#11 URI (RFC 7512)', 'yes');
    });

    it('describes every object class, with a data object pkcs11-tool wrote', async () => {
      const all = await sup.findObjects({ slot: 'v' });
      expect(all.filter((d) => d.class === 'privateKey').length).toBeGreaterThanOrEqual(1);
      expect(all).toEqual(expect.arrayContaining([expect.objectContaining({ class: 'data', label: 'conf-note' })]));
      record('find objects of every class (data objects from pkcs11-tool)', dataObjects);
    });

    it('builds the certificate chain from certificates on the token: getCertificate leaf first, signJws x5c with the whole chain', async () => {
      const root = pkiDir();
      const ca = makeCa(root, 'conformance-ca');
      const pub = join(root, 'token-rsa.pem');
      writeFileSync(pub, (await sup.getPublicKey({ slot: 'v', key: 'rsa' })).pem);
      // A certificate for the token's key: a request signed by a throwaway key, the token's key forced in.
      openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(root, 'x.key'), '-out', join(root, 'leaf.csr'), '-subj', '/CN=conformance-leaf']);
      openssl(['x509', '-req', '-in', join(root, 'leaf.csr'), '-CA', ca.cert, '-CAkey', ca.key, '-force_pubkey', pub, '-days', '30', '-out', join(root, 'leaf.crt')]);
      await sup.importCertificate({ slot: 'v', certificate: readFileSync(join(root, 'leaf.crt')), label: tok.keys.rsa.label, id: tok.keys.rsa.id, replace: true });
      await sup.importCertificate({ slot: 'v', certificate: readFileSync(ca.cert), label: 'conformance-ca', id: 'c0ca', replace: true });
      const info = await sup.getCertificate({ slot: 'v', key: 'rsa' });
      expect(info.chain.map((c) => c.x509.subject)).toEqual(['CN=conformance-leaf', 'CN=conformance-ca']);
      const jws = await sup.signJws({ slot: 'v', key: 'rsa', alg: 'RS256', payload: 'chained', x5c: true });
      expect(decodeProtectedHeader(jws).x5c).toHaveLength(2);
      const { keyObject } = await sup.getPublicKey({ slot: 'v', key: 'rsa' });
      expect(new TextDecoder().decode((await compactVerify(jws, keyObject)).payload)).toBe('chained');
      record('certificate chain (getCertificate, signJws x5c)', 'yes');
    });

    it('keys that ask for the PIN on every use (CKA_ALWAYS_AUTHENTICATE): one context-specific login per signature where the token has them', async () => {
      const contexts: string[] = [];
      const onLogin = (e: { userType: string; outcome: string }) => e.userType === 'context' && contexts.push(e.outcome);
      sup.on('login', onLogin);
      try {
        const made = await sup.generateKeyPair({ slot: 'v', algorithm: 'RSA-2048', label: 'conf-always', alwaysAuthenticate: true, timeoutMs: 120_000 }).catch((e: { code: string; ckr?: string }) => e);
        if (!('label' in made)) {
          record('CKA_ALWAYS_AUTHENTICATE keys', `refused at generation: ${made.code}${made.ckr ? ` (${made.ckr})` : ''}`);
          return;
        }
        for (let i = 0; i < 3; i++) expect(await signsAndVerifies({ label: 'conf-always' }, 'RSA-PKCS1-SHA256')).toBe(true);
        const enforced = contexts.length > 0;
        if (enforced) expect(contexts).toEqual(['ok', 'ok', 'ok']);
        const stored = made.alwaysAuthenticate === true;
        record('CKA_ALWAYS_AUTHENTICATE keys', enforced ? 'yes: C_Login(CKU_CONTEXT_SPECIFIC) per signature' : stored ? 'attribute kept, not enforced: no context-specific login, signs without one' : 'attribute not kept');
      } finally {
        sup.off('login', onLogin as never);
      }
    }, 180_000);

    it('reports what the slot and the token say of themselves (C_GetSlotInfo, C_GetTokenInfo), and how it notices tokens come and go', async () => {
      const { device } = token();
      const listing = pkcs11Tool(tok, ['--list-token-slots'], null);
      expect(listing).toContain(device.token.manufacturer);
      expect(listing).toContain(device.token.model);
      expect(device.token.flags).toContain('tokenInitialized');
      record('slot and token metadata in status()', `${device.token.manufacturer}, ${device.token.model}, firmware ${device.token.firmware}`);
      for (let i = 0; i < 50 && sup.status().slots.v!.tokenEvents === 'events'; i++) await new Promise((r) => setTimeout(r, 20));
      const how = sup.status().slots.v!.tokenEvents;
      record('tokens inserted/removed noticed by', how === 'events' ? 'C_WaitForSlotEvent' : 'polling (no blocking C_WaitForSlotEvent)');
    });

    it('a wrong PIN is PIN_INCORRECT; one of a length the token cannot take never reaches it; the right one logs in again', async () => {
      await sup.logout('v');
      const wrong = tok.pin.slice(0, -1) + (tok.pin.endsWith('0') ? '1' : '0');
      await expect(sup.login('v', wrong)).rejects.toMatchObject({ code: 'PIN_INCORRECT' });
      // Whether the token counts wrong PINs where the supervisor can see it (CKF_USER_PIN_COUNT_LOW).
      const counts = /user PIN count low/.test(pkcs11Tool(tok, ['--list-token-slots'], null));
      const { pinLength } = token();
      if (pinLength) {
        const tooLong = 'x'.repeat(pinLength.max + 1);
        const err = await sup.login('v', tooLong).catch((e: unknown) => e);
        expect(err).toMatchObject({ code: 'PIN_INCORRECT' });
        expect(String((err as Error).message)).toMatch(/no retry was used/);
      }
      await sup.login('v', tok.pin);
      expect(await signsAndVerifies('rsa', 'RSA-PKCS1-SHA256')).toBe(true);
      record('wrong PIN', pinLength ? 'PIN_INCORRECT; out-of-range length refused before C_Login' : 'PIN_INCORRECT');
      record('flags a wrong PIN (CKF_USER_PIN_COUNT_LOW)', counts ? 'yes' : 'no');
    });

    it('changes the user PIN (pkcs11-tool logs in with the new one) and changes it back', async () => {
      const next = tok.pin.split('').reverse().join('');
      await sup.setPin({ slot: 'v', oldPin: tok.pin, newPin: next });
      const before = tok.pin;
      tok.pin = next;
      try {
        expect(pkcs11Tool(tok, ['--list-objects', '--type', 'privkey'])).toContain('rsa');
      } finally {
        await sup.setPin({ slot: 'v', oldPin: next, newPin: before });
        tok.pin = before;
      }
      const { pinLength } = token();
      if (pinLength) await expect(sup.setPin({ slot: 'v', oldPin: tok.pin, newPin: 'y'.repeat(pinLength.max + 1) })).rejects.toMatchObject({ code: 'BAD_INPUT' });
      expect(await signsAndVerifies('rsa', 'RSA-PKCS1-SHA256')).toBe(true);
      record('C_SetPIN (user)', 'yes');
    });

    it('the Security Officer logs in, sets the user PIN with C_InitPIN, and user signing resumes', async () => {
      await sup.login({ slot: 'v', userType: 'so', pin: tok.soPin });
      expect(sup.status().slots.v!.state).toBe('so_logged_in');
      await sup.initPin({ slot: 'v', newPin: tok.pin });
      await sup.logout('v');
      await sup.login('v', tok.pin);
      expect(await signsAndVerifies('rsa', 'RSA-PKCS1-SHA256')).toBe(true);
      record('SO login, C_InitPIN', 'yes');
    });

    it('a crashed worker is restarted, logs in again, and signs', async () => {
      const restarted = waitForEvent(sup, 'restart', () => true, 30_000);
      await injectWorkerFault(sup, 'v', 0, { kind: 'exit' }).catch(() => undefined);
      await restarted;
      for (let i = 0; i < 300 && !sup.status().slots.v!.workers.every((w) => w.state === 'logged_in'); i++) await new Promise((r) => setTimeout(r, 100));
      expect(sup.status().slots.v!.workers.map((w) => w.state)).toEqual(['logged_in', 'logged_in']);
      expect(await signsAndVerifies('rsa', 'RSA-PKCS1-SHA256')).toBe(true);
      record('worker crash: restart and re-login', 'yes');
    });

    it('200 concurrent signatures over the pool all verify', async () => {
      const { keyObject } = await sup.getPublicKey({ slot: 'v', key: 'rsa' });
      const t0 = performance.now();
      const sigs = await Promise.all(Array.from({ length: 200 }, () => sup.sign({ slot: 'v', key: 'rsa', mechanism: 'RSA-PKCS1-SHA256', data })));
      const s = (performance.now() - t0) / 1000;
      expect(sigs.every((sig) => nodeVerify('sha256', data, keyObject, sig))).toBe(true);
      record('RSA-2048 signatures/s, pool of 2 (indicative)', String(Math.round(200 / s)));
    }, 120_000);
  });
}
