/**
 * A key named by a PKCS#11 URI is found only where everything the URI names matches: token,
 * slot, library and module (RFC 7512). Two tokens in one SoftHSM2 module hold keys with the same
 * labels, so a URI that named one token and reached the other would sign with the wrong key.
 */
import { verify as nodeVerify } from 'node:crypto';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSupervisor, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, MODULE, pkcs11Tool, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { exportPublicKey, opensslVerifies } from './support/openssl.js';

let td: TokenDir;
let near: TestToken;
let far: TestToken;
let sup: Pkcs11Supervisor | undefined;
const data = Buffer.from('signed only where the URI points');

beforeAll(() => {
  td = tokenDir();
  near = createToken(td, 'near');
  far = createToken(td, 'far');
  process.env.KU_PIN_near = near.pin;
  process.env.KU_PIN_far = far.pin;
});

afterEach(async () => {
  await sup?.close();
  sup = undefined;
});

const slot = (t: TestToken, extra: Record<string, unknown> = {}) => ({ token: { label: t.label }, pin: { env: `KU_PIN_${t.label}` }, ...extra });

/** What OpenSC's pkcs11-tool says about the module and the near token's slot (-I, -L): an outside account of the facts. */
function nearFacts() {
  const info = execText(['-I']);
  const listing = execText(['-L']);
  const block = listing.split(/\n(?=Slot )/).find((b) => /token label\s+:\s+near\s*$/m.test(b))!;
  const field = (text: string, name: string) => new RegExp(`^${name}\\s+:?\\s*(.*)$`, 'm').exec(text)![1]!.trim();
  const slotLine = /^Slot \d+ \((0x[0-9a-f]+)\): (.*)$/m.exec(block)!;
  const library = /^(.*) \(ver (\d+\.\d+)\)$/.exec(field(info, 'Library'))!;
  return {
    token: 'near',
    manufacturer: field(block, '  token manufacturer'),
    model: field(block, '  token model'),
    serial: field(block, '  serial num'),
    'slot-id': String(parseInt(slotLine[1]!, 16)),
    'slot-description': slotLine[2]!.trim(),
    'library-manufacturer': field(info, 'Manufacturer'),
    'library-description': library[1]!,
    'library-version': library[2]!,
  };
}

function execText(args: string[]): string {
  return pkcs11Tool(td, 'near', null, args);
}

const enc = (v: string) => encodeURIComponent(v).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

describe('a key URI names where the key is', () => {
  it('before the slot first opens, a URI for another token is KEY_NOT_FOUND for every key operation, and nothing reaches C_Sign', async () => {
    // Lazy: the slot has not met its token when the first call arrives. Public keys confirmed
    // for a minute: a verify may answer from what the token said then.
    sup = await startSupervisor({ config: configFor(td, { n: slot(near, { lazy: true, keyCheckMs: 60_000 }) }) });
    const other = `pkcs11:token=far;object=ec;type=private`;
    await expect(sup.sign({ slot: 'n', key: other, mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND', message: expect.stringMatching(/token "far"; this slot's is "near"/) });
    expect((await sup.probe({ slot: 'n' })).calls.C_Sign ?? 0).toBe(0);

    // A signature by near's key does not verify under a URI that names far's.
    const nearSig = await sup.sign({ slot: 'n', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(opensslVerifies(exportPublicKey(td, 'near', '02'), 'ECDSA-SHA256', data, nearSig)).toBe(true);
    // The same label verified a moment ago (its public key now cached for software verification): the URI for far still finds nothing.
    expect(await sup.verify({ slot: 'n', key: 'pkcs11:object=ec', mechanism: 'ECDSA-SHA256', data, signature: nearSig })).toBe(true);
    await expect(sup.verify({ slot: 'n', key: 'pkcs11:token=far;object=ec', mechanism: 'ECDSA-SHA256', data, signature: nearSig })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    await expect(sup.signJws({ slot: 'n', key: 'pkcs11:token=near;object=ec', alg: 'ES256', payload: 'x' })).resolves.toMatch(/^ey/);
    await expect(sup.getPublicKey({ slot: 'n', key: 'pkcs11:serial=' + far.serial + ';object=ec' })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    await expect(sup.getCertificate({ slot: 'n', key: 'pkcs11:token=far;object=ec' })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    await expect(sup.signJws({ slot: 'n', key: 'pkcs11:token=far;object=ec', alg: 'ES256', payload: 'x' })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    await expect(sup.encrypt({ slot: 'n', key: 'pkcs11:token=far;object=rsa', mechanism: 'RSA-OAEP-SHA1', data })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
  });

  it('a URI naming everything pkcs11-tool reports of the token, slot and library signs with that key; any one attribute off is KEY_NOT_FOUND', async () => {
    sup = await startSupervisor({ config: configFor(td, { n: slot(near), f: slot(far) }) });
    const facts = { ...nearFacts(), 'module-name': 'softhsm2' };
    const path = Object.entries(facts).filter(([a]) => !a.startsWith('module-')).map(([a, v]) => `${a}=${enc(v)}`).join(';');
    const full = `pkcs11:${path};object=ec;type=private?module-name=softhsm2&module-path=${MODULE}`;
    const sig = await sup.sign({ slot: 'n', key: full, mechanism: 'ECDSA-SHA256', data });
    expect(opensslVerifies(exportPublicKey(td, 'near', '02'), 'ECDSA-SHA256', data, sig)).toBe(true);
    expect(opensslVerifies(exportPublicKey(td, 'far', '02'), 'ECDSA-SHA256', data, sig)).toBe(false);
    // The same URI on the slot of the other token finds nothing there.
    await expect(sup.sign({ slot: 'f', key: full, mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });

    const off: Record<string, string> = {
      token: 'far', manufacturer: 'Nobody', model: 'X', serial: far.serial, 'slot-id': String(Number(facts['slot-id']) + 1), 'slot-description': 'elsewhere',
      'library-manufacturer': 'Nobody', 'library-description': 'other', 'library-version': '99.1',
    };
    for (const [a, v] of Object.entries(off)) {
      await expect(sup.sign({ slot: 'n', key: `pkcs11:object=ec;${a}=${enc(v)}`, mechanism: 'ECDSA-SHA256', data }), a).rejects.toMatchObject({ code: 'KEY_NOT_FOUND', message: expect.stringContaining(`names ${a}`) });
    }
    for (const q of ['module-name=opensc-pkcs11', 'module-path=/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so']) {
      await expect(sup.sign({ slot: 'n', key: `pkcs11:object=ec?${q}`, mechanism: 'ECDSA-SHA256', data }), q).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    }
    await expect(sup.sign({ slot: 'n', key: 'pkcs11:object=ec;slot-id=0x1', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    // An attribute it does not know narrows nothing it could check (RFC 7512 2.5: no match): refused, not signed with what the rest names.
    for (const uri of ['pkcs11:object=ec;x-vendor=1', 'pkcs11:id=%02;objekt=other', 'pkcs11:object=ec;pin-value=1234', 'pkcs11:object=ec?x-q=1']) {
      await expect(sup.sign({ slot: 'n', key: uri, mechanism: 'ECDSA-SHA256', data }), uri).rejects.toMatchObject({ code: 'BAD_INPUT' });
      await expect(sup.destroyObject({ slot: 'n', key: uri }), uri).rejects.toMatchObject({ code: 'BAD_INPUT' });
    }
    // Destroying by a URI for the other token destroys nothing here.
    await sup.generateKeyPair({ slot: 'n', algorithm: 'EC-P256', label: 'spare', id: '77' });
    await expect(sup.destroyObject({ slot: 'n', key: 'pkcs11:token=far;object=spare' })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    expect(pkcs11Tool(td, 'near', near.pin, ['--list-objects', '--type', 'privkey'])).toMatch(/label:\s+spare/);
    expect(await sup.destroyObject({ slot: 'n', key: 'pkcs11:token=near;object=spare' })).toBe(2);
    // Both slots still sign with their own keys.
    expect(opensslVerifies(exportPublicKey(td, 'far', '02'), 'ECDSA-SHA256', data, await sup.sign({ slot: 'f', key: 'ec', mechanism: 'ECDSA-SHA256', data }))).toBe(true);
  });

  it('signatures asked for together share a batch to the session thread: each URI for another token is refused there, each plain call signs', async () => {
    sup = await startSupervisor({ config: configFor(td, { n: slot(near) }) });
    await sup.sign({ slot: 'n', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    const before = (await sup.probe({ slot: 'n' })).calls.C_Sign ?? 0;
    // Sixty at once on one worker: the first runs alone, the rest wait and go in batches.
    const outcomes = await Promise.all(
      Array.from({ length: 60 }, (_, i) =>
        sup!.sign({ slot: 'n', key: i % 3 === 2 ? 'pkcs11:token=far;object=ec' : { label: 'ec' }, mechanism: 'ECDSA-SHA256', data }).then(
          (sig) => ({ i, sig }),
          (e: { code: string }) => ({ i, code: e.code }),
        ),
      ),
    );
    expect(sup.status().slots.n!.workers[0]!.handed.messages).toBeLessThan(50); // batched, not one by one
    const pub = exportPublicKey(td, 'near', '02');
    for (const o of outcomes) {
      if (o.i % 3 === 2) expect(o, `call ${o.i}`).toMatchObject({ code: 'KEY_NOT_FOUND' });
      else expect('sig' in o && opensslVerifies(pub, 'ECDSA-SHA256', data, o.sig), `call ${o.i}`).toBe(true);
    }
    expect(((await sup.probe({ slot: 'n' })).calls.C_Sign ?? 0) - before).toBe(40);
  });

  it('in the config: a key ref URI for another token finds nothing; a token URI whose other attributes do not match opens no token', async () => {
    sup = await startSupervisor({
      config: configFor(td, {
        n: slot(near, { keys: { mine: 'pkcs11:token=near;object=ec', theirs: 'pkcs11:token=far;object=ec' } }),
        m: { token: `pkcs11:token=near;model=${enc(nearFacts().model)}`, pin: { env: 'KU_PIN_near' }, type: 'hsm' },
        x: { token: 'pkcs11:token=near;manufacturer=Nobody', pin: { env: 'KU_PIN_near' }, type: 'hsm', restart: { maxRestarts: 0 } },
      }),
    });
    expect(opensslVerifies(exportPublicKey(td, 'near', '02'), 'ECDSA-SHA256', data, await sup.sign({ slot: 'n', key: 'mine', mechanism: 'ECDSA-SHA256', data }))).toBe(true);
    await expect(sup.sign({ slot: 'n', key: 'theirs', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    expect(opensslVerifies(exportPublicKey(td, 'near', '02'), 'ECDSA-SHA256', data, await sup.sign({ slot: 'm', key: 'ec', mechanism: 'ECDSA-SHA256', data }))).toBe(true);
    await expect(sup.sign({ slot: 'x', key: 'ec', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'SLOT_FAILED', message: expect.stringContaining('no token with label "near" is present where its URI points (the URI names manufacturer "Nobody"') });
    expect(sup.status().slots.x!.workers[0]!.lastError).toMatchObject({ code: 'TOKEN_NOT_FOUND' });
  });

  it("a URI's type names one object for destroyObject: the public key's URI destroys the public key alone, and the private key still signs", async () => {
    pkcs11Tool(td, 'near', near.pin, ['--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'typed', '--id', '7e', '--usage-sign']);
    sup = await startSupervisor({ config: configFor(td, { n: slot(near) }) });
    // The kinds of object pkcs11-tool lists under id 7e.
    const listed = () => pkcs11Tool(td, 'near', near.pin, ['--list-objects']).split(/\n(?=\S)/).filter((b) => /ID:\s+7e\s*$/m.test(b)).map((b) => b.split(';')[0]).sort().join(', ');
    const { uri, keyObject } = await sup.getPublicKey({ slot: 'n', key: { id: '7e' } });
    expect(uri).toMatch(/;type=public$/);
    expect(listed()).toBe('Private Key Object, Public Key Object');
    await expect(sup.destroyObject({ slot: 'n', key: uri, class: 'privateKey' })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    expect(await sup.destroyObject({ slot: 'n', key: uri })).toBe(1);
    expect(listed()).toBe('Private Key Object');
    const sig = await sup.sign({ slot: 'n', key: { id: '7e' }, mechanism: 'ECDSA-SHA256', data });
    expect(nodeVerify('sha256', data, keyObject, sig)).toBe(true);
    // The private key's URI, as findObjects gives it, destroys that key.
    const [priv] = await sup.findObjects({ slot: 'n', template: { id: '7e' } });
    expect(priv).toMatchObject({ class: 'privateKey' });
    expect(await sup.destroyObject({ slot: 'n', key: priv!.uri! })).toBe(1);
    expect(listed()).toBe('');
  });
});
