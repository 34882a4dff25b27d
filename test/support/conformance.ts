/**
 * The integration suite that runs unchanged against every PKCS#11 implementation: the same
 * calls, checked the same way (Node's crypto.verify, pkcs11-tool from another process, the
 * token's own reports). Where a token lacks something, the test asserts the supervisor's
 * answer to that (a typed refusal, a software digest in front of a raw mechanism) from what
 * the token reported, never from the vendor's name. Each run writes what it found to
 * var/compat/<vendor>.json; `npm run compat` turns those into the README's table.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { constants, createCipheriv, createDecipheriv, createECDH, createHash, createHmac, randomBytes, verify as nodeVerify } from 'node:crypto';
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

/** A key-encryption key whose bytes the suite knows: what lets Node check the token's AES answers. */
const KEK = randomBytes(32);
const KWP_IV = Buffer.from('A65959A6', 'hex');

function writeKek(tok: VendorToken): true | string {
  const file = tmpFile('kek.bin', KEK);
  try {
    pkcs11Tool(tok, ['--write-object', file, '--type', 'secrkey', '--key-type', 'AES:32', '--label', 'conf-kek', '--id', 'c1', '--usage-decrypt', '--usage-wrap', '--sensitive']);
    return true;
  } catch (e) {
    return /error: (.*)/i.exec(String((e as { stderr?: unknown }).stderr))?.[1]?.trim() ?? 'refused';
  }
}

const gcmOpen = (key: Buffer, iv: Buffer, ct: Buffer) => {
  const d = createDecipheriv('aes-256-gcm', key, iv);
  d.setAuthTag(ct.subarray(-16));
  return Buffer.concat([d.update(ct.subarray(0, -16)), d.final()]);
};

/** What a typed refusal says, for the table: the code and the token's own reason. */
const refusal = (e: unknown) => {
  const err = e as { code?: string; ckr?: string; message?: string };
  return `${err.code ?? 'error'}${err.ckr ? ` (${err.ckr})` : ''}`;
};

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
    /** Whether pkcs11-tool could write KEK (an AES key whose bytes the suite knows), or why not. */
    let kekWritten: true | string = 'not tried';
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
      kekWritten = writeKek(tok);
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

    it('keys that ask for the PIN on every use (CKA_ALWAYS_AUTHENTICATE): one context-specific login per signature (and decryption) where the token has them', async () => {
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
        // Decryption with such a key: a ciphertext Node makes with its public half comes back.
        let decrypts = '';
        const dec = await sup.generateKeyPair({ slot: 'v', algorithm: 'RSA-2048', label: 'conf-always-dec', usage: ['decrypt'], alwaysAuthenticate: true, timeoutMs: 120_000 }).catch(() => null);
        const secret = Buffer.from('decrypted after a login of its own');
        const sealed = dec && (await sup.encrypt({ slot: 'v', key: { label: 'conf-always-dec' }, mechanism: 'RSA-OAEP-SHA1', data: secret }).catch(() => null));
        if (sealed) {
          const before = contexts.length;
          expect(Buffer.from(await sup.decrypt({ slot: 'v', key: { label: 'conf-always-dec' }, mechanism: 'RSA-OAEP-SHA1', data: sealed.ciphertext })).equals(secret)).toBe(true);
          if (contexts.length > before) decrypts = ' or decryption';
        }
        record('CKA_ALWAYS_AUTHENTICATE keys', enforced ? `yes: C_Login(CKU_CONTEXT_SPECIFIC) per signature${decrypts}` : stored ? 'attribute kept, not enforced: no context-specific login, signs without one' : 'attribute not kept');
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

    it('AES: GCM where the token has it, else CBC-PAD; the token encrypts and Node decrypts with the known key', async () => {
      if (kekWritten !== true) {
        record('AES encrypt/decrypt', `not checked: pkcs11-tool cannot write an AES key here (${kekWritten})`);
        return;
      }
      const gcm = token().mechanisms.includes('AES-GCM');
      if (!gcm) await expect(sup.encrypt({ slot: 'v', key: { label: 'conf-kek' }, mechanism: 'AES-GCM', data })).rejects.toMatchObject({ code: 'MECHANISM_INVALID' });
      if (!gcm && !token().mechanisms.includes('AES-CBC-PAD')) {
        record('AES encrypt/decrypt', 'refused: MECHANISM_INVALID (neither CKM_AES_GCM nor CKM_AES_CBC_PAD)');
        return;
      }
      const mechanism = gcm ? 'AES-GCM' : 'AES-CBC-PAD';
      const { ciphertext, iv } = await sup.encrypt({ slot: 'v', key: { label: 'conf-kek' }, mechanism, data });
      const opened = gcm ? gcmOpen(KEK, iv!, ciphertext) : (() => {
        const d = createDecipheriv('aes-256-cbc', KEK, iv!);
        return Buffer.concat([d.update(ciphertext), d.final()]);
      })();
      expect(opened.equals(data)).toBe(true);
      expect((await sup.decrypt({ slot: 'v', key: { label: 'conf-kek' }, mechanism, data: ciphertext, iv })).equals(data)).toBe(true);
      if (gcm) {
        const changed = Buffer.from(ciphertext);
        changed[0]! ^= 1;
        await expect(sup.decrypt({ slot: 'v', key: { label: 'conf-kek' }, mechanism, data: changed, iv })).rejects.toMatchObject({ code: 'DECRYPTION_FAILED' });
      }
      record('AES encrypt/decrypt', gcm ? 'AES-GCM (checked by Node)' : 'AES-CBC-PAD (checked by Node); no CKM_AES_GCM');
    });

    it('secret keys: generates AES-256 and HMAC keys, MACs with one and wraps the other (RFC 5649) for Node to unwrap', async () => {
      const aes = await sup.generateSecretKey({ slot: 'v', algorithm: 'AES-256', label: 'conf-dek', extractable: true }).catch((e: unknown) => e);
      record('generate AES-256 / HMAC keys', 'class' in (aes as object) ? 'yes' : `refused: ${refusal(aes)}`);
      const hmacKey = randomBytes(64);
      if (kekWritten === true && token().mechanisms.includes('AES-KEY-WRAP-PAD')) {
        const w = createCipheriv('id-aes256-wrap-pad', KEK, KWP_IV);
        const unwrapped = await sup.unwrapKey({ slot: 'v', key: { label: 'conf-kek' }, mechanism: 'AES-KEY-WRAP-PAD', wrapped: Buffer.concat([w.update(hmacKey), w.final()]), algorithm: 'HMAC-512', label: 'conf-hmac' }).catch((e: unknown) => e);
        if ('class' in (unwrapped as object)) {
          const mac = await sup.mac({ slot: 'v', key: { label: 'conf-hmac' }, mechanism: 'HMAC-SHA256', data }).catch((e: unknown) => e);
          if (mac instanceof Uint8Array) expect(Buffer.from(mac).equals(createHmac('sha256', hmacKey).update(data).digest())).toBe(true);
          record('HMAC-SHA256', mac instanceof Uint8Array ? 'yes (checked by Node)' : `refused: ${refusal(mac)}`);
        } else {
          record('HMAC-SHA256', `not checked: unwrapping the known key was refused: ${refusal(unwrapped)}`);
        }
        if ('class' in (aes as object)) {
          const wrapped = await sup.wrapKey({ slot: 'v', key: { label: 'conf-kek' }, mechanism: 'AES-KEY-WRAP-PAD', target: { label: 'conf-dek' } }).catch((e: unknown) => e);
          if (wrapped instanceof Uint8Array) {
            const u = createDecipheriv('id-aes256-wrap-pad', KEK, KWP_IV);
            expect(Buffer.concat([u.update(wrapped), u.final()])).toHaveLength(32);
          }
          record('AES key wrap with padding (RFC 5649)', wrapped instanceof Uint8Array ? 'yes (Node unwraps)' : `refused: ${refusal(wrapped)}`);
        }
      } else if ('class' in (aes as object)) {
        // No way to bring a known key in: the token's own HMAC key, checked by the token's verify.
        const made = await sup.generateSecretKey({ slot: 'v', algorithm: 'HMAC-512', label: 'conf-hmac' }).catch((e: unknown) => e);
        const mac = 'class' in (made as object) ? await sup.mac({ slot: 'v', key: { label: 'conf-hmac' }, mechanism: 'HMAC-SHA256', data }).catch((e: unknown) => e) : made;
        const valid = mac instanceof Uint8Array && (await sup.verifyMac({ slot: 'v', key: { label: 'conf-hmac' }, mechanism: 'HMAC-SHA256', data, mac }));
        if (mac instanceof Uint8Array) expect(valid).toBe(true);
        record('HMAC-SHA256', mac instanceof Uint8Array ? 'yes (checked by its own C_Verify: no known key)' : `refused: ${refusal(mac)}`);
        record('AES key wrap with padding (RFC 5649)', kekWritten === true ? 'refused: MECHANISM_INVALID (no CKM_AES_KEY_WRAP_PAD)' : `not checked: no known key (${kekWritten})`);
      } else {
        record('HMAC-SHA256', `not checked: no secret keys (${refusal(aes)})`);
        record('AES key wrap with padding (RFC 5649)', kekWritten === true ? 'refused: MECHANISM_INVALID (no CKM_AES_KEY_WRAP_PAD)' : `not checked: no known key (${kekWritten})`);
      }
    });

    it('RSA-OAEP: encrypted in Node with the public key, decrypted on the token, for each hash the token takes', async () => {
      const made = await sup.generateKeyPair({ slot: 'v', algorithm: 'RSA-2048', label: 'conf-oaep', usage: ['decrypt'], timeoutMs: 120_000 }).catch((e: unknown) => e);
      if (!('class' in (made as object))) {
        record('RSA-OAEP decrypt', `not checked: a decryption key pair was refused: ${refusal(made)}`);
        return;
      }
      const works: string[] = [];
      const refused: string[] = [];
      for (const mechanism of ['RSA-OAEP-SHA1', 'RSA-OAEP-SHA256'] as const) {
        const secret = randomBytes(32);
        // Refused already when the token cannot decrypt it (the supervisor asks the token first).
        const encrypted = await sup.encrypt({ slot: 'v', key: { label: 'conf-oaep' }, mechanism, data: secret }).catch((e: unknown) => e);
        const out = 'ciphertext' in (encrypted as object) ? await sup.decrypt({ slot: 'v', key: { label: 'conf-oaep' }, mechanism, data: (encrypted as { ciphertext: Buffer }).ciphertext }).catch((e: unknown) => e) : encrypted;
        if (out instanceof Uint8Array) {
          expect(Buffer.from(out).equals(secret)).toBe(true);
          works.push(mechanism.slice(9));
        } else {
          expect(out).toMatchObject({ code: 'MECHANISM_INVALID' });
          refused.push(`${mechanism.slice(9)}: ${refusal(out)}`);
        }
      }
      expect(works.length + refused.length).toBe(2);
      record('RSA-OAEP decrypt', works.length > 0 ? `yes: ${works.join(', ')}${refused.length ? `; refused ${refused.join(', ')}` : ''}` : `refused: ${refused.join(', ')}`);
    }, 180_000);

    it('ECDH (P-256): the session key the token derives is the one Node computes', async () => {
      const made = await sup.generateKeyPair({ slot: 'v', algorithm: 'EC-P256', label: 'conf-ecdh', usage: ['derive'] }).catch((e: unknown) => e);
      if (!('class' in (made as object))) {
        record('ECDH P-256', `not checked: no EC key pair for derivation: ${refusal(made)}`);
        return;
      }
      const { jwk } = await sup.getPublicKey({ slot: 'v', key: { label: 'conf-ecdh' } });
      const peer = createECDH('prime256v1');
      peer.generateKeys();
      const z = peer.computeSecret(Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]));
      const agreed = await sup.deriveKey({ slot: 'v', key: { label: 'conf-ecdh' }, mechanism: 'ECDH', publicKey: peer.getPublicKey(), then: { op: 'encrypt', mechanism: 'AES-GCM', data } }).catch((e: unknown) => e);
      if (!('ciphertext' in (agreed as object))) {
        record('ECDH P-256', `refused: ${refusal(agreed)}`);
        return;
      }
      const { ciphertext, iv } = agreed as { ciphertext: Buffer; iv: Buffer };
      expect(gcmOpen(z, iv, ciphertext).equals(data)).toBe(true);
      record('ECDH P-256', 'yes (checked by Node)');
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
