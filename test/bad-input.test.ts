import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSupervisor, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';

let td: TokenDir;
let tok: TestToken;
let sup: Pkcs11Supervisor;
const data = Buffer.from('x');

beforeAll(async () => {
  td = tokenDir();
  tok = createToken(td, 'bad');
  process.env.BAD_PIN = tok.pin;
  sup = await startSupervisor({
    config: configFor(td, { t: { token: { label: 'bad' }, pin: { env: 'BAD_PIN' } }, p: { type: 'hsm', poolSize: 2, token: { label: 'bad' }, pin: { env: 'BAD_PIN' } } }),
  });
});

afterAll(() => sup?.close());

const ok = { slot: 't', key: 'ec', mechanism: 'ECDSA-SHA256', data };
const cyclic: Record<string, unknown> = {};
cyclic.self = cyclic;
const cases: [string, () => Promise<unknown>, string][] = [
  ['unknown slot', () => sup.sign({ ...ok, slot: 'nope' } as never), 'SLOT_NOT_FOUND'],
  ['slot as a number', () => sup.sign({ ...ok, slot: 7 } as never), 'SLOT_NOT_FOUND'],
  // Values JSON cannot write: the message names them without throwing a TypeError of its own.
  ['slot as a BigInt', () => sup.sign({ ...ok, slot: 10n } as never), 'SLOT_NOT_FOUND'],
  ['mechanism as a BigInt', () => sup.sign({ ...ok, mechanism: 10n } as never), 'MECHANISM_INVALID'],
  ['cipher mechanism as a BigInt', () => sup.decrypt({ slot: 't', key: 'ec', mechanism: 10n, data } as never), 'MECHANISM_INVALID'],
  ['signatureFormat as a cycle', () => sup.sign({ ...ok, signatureFormat: cyclic } as never), 'BAD_INPUT'],
  ['timeoutMs with no primitive value', () => sup.sign({ ...ok, timeoutMs: Object.create(null) } as never), 'BAD_INPUT'],
  ['timeoutMs whose toString throws', () => sup.sign({ ...ok, timeoutMs: { toString: () => { throw new Error('no'); } } } as never), 'BAD_INPUT'],
  ['unknown key ref', () => sup.sign({ ...ok, key: 'nope' } as never), 'KEY_NOT_FOUND'],
  ['key as a number', () => sup.sign({ ...ok, key: 3 } as never), 'BAD_INPUT'],
  ['key with a bad id', () => sup.sign({ ...ok, key: { id: 'zz' } } as never), 'BAD_INPUT'],
  ['key with a non-UTF-8 label (lone surrogate)', () => sup.sign({ ...ok, key: { label: '\ud800bad' } } as never), 'KEY_NOT_FOUND'],
  ['key with an empty label', () => sup.sign({ ...ok, key: { label: '' } } as never), 'BAD_INPUT'],
  ['unknown mechanism', () => sup.sign({ ...ok, mechanism: 'ECDSA-SHA1' } as never), 'MECHANISM_INVALID'],
  ['mechanism as a number', () => sup.sign({ ...ok, mechanism: 4164 } as never), 'MECHANISM_INVALID'],
  ['mechanism for another key type', () => sup.sign({ ...ok, mechanism: 'RSA-PKCS1-SHA256' } as never), 'MECHANISM_INVALID'],
  ['data as a string', () => sup.sign({ ...ok, data: 'text' } as never), 'BAD_INPUT'],
  ['data as null', () => sup.sign({ ...ok, data: null } as never), 'BAD_INPUT'],
  ['empty data', () => sup.sign({ ...ok, data: Buffer.alloc(0) } as never), 'BAD_INPUT'],
  ['100 MiB of data', () => sup.sign({ ...ok, data: Buffer.alloc(100 * 2 ** 20) } as never), 'BAD_INPUT'],
  ['NaN timeout', () => sup.sign({ ...ok, timeoutMs: NaN } as never), 'BAD_INPUT'],
  ['negative timeout', () => sup.sign({ ...ok, timeoutMs: -5 } as never), 'BAD_INPUT'],
  ['zero timeout', () => sup.sign({ ...ok, timeoutMs: 0 } as never), 'BAD_INPUT'],
  ['infinite timeout', () => sup.sign({ ...ok, timeoutMs: Infinity } as never), 'BAD_INPUT'],
  ['timeout as a string', () => sup.sign({ ...ok, timeoutMs: '100' } as never), 'BAD_INPUT'],
  ['signal that is not an AbortSignal', () => sup.sign({ ...ok, signal: {} } as never), 'BAD_INPUT'],
  ['unknown signature format', () => sup.sign({ ...ok, signatureFormat: 'hex' } as never), 'BAD_INPUT'],
  ['prehashed as a string', () => sup.sign({ ...ok, prehashed: 'yes' } as never), 'BAD_INPUT'],
  ['pre-hashed input of the wrong length', () => sup.sign({ ...ok, prehashed: true } as never), 'BAD_INPUT'],
  ['pin that is not a string', () => sup.sign({ ...ok, pin: 1234 } as never), 'BAD_INPUT'],
  ['a new PIN longer than 256 characters, said so', () => sup.setPin({ slot: 't', oldPin: tok.pin, newPin: 'x'.repeat(257) }).catch((e: Error) => Promise.reject(e.message.endsWith('newPin must be a string of 1 to 256 characters') ? e : new Error(e.message))), 'BAD_INPUT'],
  ['no request at all', () => sup.sign(undefined as never), 'BAD_INPUT'],
  ['null request', () => sup.verify(null as never), 'BAD_INPUT'],
  ['verify without a signature', () => sup.verify({ ...ok } as never), 'BAD_INPUT'],
  ['findObjects with an unknown template field', () => sup.findObjects({ slot: 't', template: { colour: 'red' } } as never), 'BAD_INPUT'],
  ['generateKeyPair with an unknown algorithm', () => sup.generateKeyPair({ slot: 't', algorithm: 'DSA-1024', label: 'x' } as never), 'BAD_INPUT'],
  ['generateRandom of 10 MB', () => sup.generateRandom({ slot: 't', length: 10_000_000 }), 'BAD_INPUT'],
  ['importKeyPair with neither PKCS#12 nor PEM', () => sup.importKeyPair({ slot: 't', label: 'x' }), 'BAD_INPUT'],
  ['importKeyPair with a garbage PKCS#12', () => sup.importKeyPair({ slot: 't', label: 'x', pkcs12: Buffer.from('garbage'), password: 'p' }), 'BAD_INPUT'],
  ['signJws with alg none', () => sup.signJws({ slot: 't', key: 'ec', alg: 'none', payload: 'x' } as never), 'MECHANISM_INVALID'],
  ['signJws with a payload JSON cannot carry (a BigInt)', () => sup.signJws({ slot: 't', key: 'ec', alg: 'ES256', payload: { n: 1n } }), 'BAD_INPUT'],
  ['signJws with a payload that refers to itself', () => sup.signJws({ slot: 't', key: 'ec', alg: 'ES256', payload: (() => { const o: Record<string, unknown> = {}; o.self = o; return o; })() }), 'BAD_INPUT'],
  ['signJws with a header that is an array', () => sup.signJws({ slot: 't', key: 'ec', alg: 'ES256', payload: 'x', header: ['b64'] } as never), 'BAD_INPUT'],
  ['signJws with a header that is a string', () => sup.signJws({ slot: 't', key: 'ec', alg: 'ES256', payload: 'x', header: 'kid' } as never), 'BAD_INPUT'],
];

describe('hostile and careless input through the client API', () => {
  for (const [name, call, code] of cases) {
    it(`${name} → ${code}`, async () => {
      await expect(call()).rejects.toMatchObject({ name: 'Pkcs11SupervisorError', code });
    });
  }

  it('leaves every slot healthy and signing', async () => {
    for (const slot of ['t', 'p']) {
      const workers = sup.status().slots[slot]!.workers;
      expect(workers.map((w) => w.state), JSON.stringify(workers.map((w) => w.lastError))).toEqual(workers.map(() => 'logged_in'));
      expect(await sup.sign({ ...ok, slot } as never)).toBeInstanceOf(Buffer);
    }
  });
});

describe('bad config and modules', () => {
  const base = () => configFor(td, { t: { token: { label: 'bad' }, pin: { env: 'BAD_PIN' } } });
  const start = (mutate: (c: any) => void) => {
    const c: any = base();
    mutate(c);
    return startSupervisor({ config: c });
  };
  it('missing, extra and wrong fields → CONFIG_INVALID naming the field', async () => {
    await expect(start((c) => delete c.slots.t.module)).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [expect.objectContaining({ path: 'slots.t.module' })] });
    await expect(start((c) => (c.slots.t.colour = 'red'))).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [expect.objectContaining({ path: 'slots.t' })] });
    await expect(start((c) => (c.slots.t.poolSize = 'two'))).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [expect.objectContaining({ path: 'slots.t.poolSize' })] });
  });
  it("startSupervisor's own options: a logger, PIN callback or config path it cannot use → CONFIG_INVALID naming it, before anything opens", async () => {
    const config = configFor(td, { t: { token: { label: 'bad' }, pin: { env: 'BAD_PIN' } } });
    const refused = async (options: Record<string, unknown>) => startSupervisor(options as never).then((s) => (void s.close(), null), (e: { code: string; issues?: { path: string }[] }) => [e.code, (e.issues ?? []).map((i) => i.path)]);
    // A logger without the methods the supervisor calls crashed the process from inside a state change.
    expect(await refused({ config, logger: {} })).toEqual(['CONFIG_INVALID', ['logger']]);
    expect(await refused({ config, pinCallback: '1234' })).toEqual(['CONFIG_INVALID', ['pinCallback']]);
    expect(await refused({ config, restartPolicy: { maxRestarts: 1 } })).toEqual(['CONFIG_INVALID', ['restartPolicy']]);
    // A number would have been read as a file descriptor.
    expect(await refused({ configFile: 0 })).toEqual(['CONFIG_INVALID', ['configFile']]);
    expect(await refused({ config, colour: 'red' })).toEqual(['CONFIG_INVALID', ['(options)']]);
    expect(await sup.sign({ ...ok } as never)).toBeInstanceOf(Buffer);
  });
  it('a module that is not a PKCS#11 library, and one that is missing → MODULE_LOAD_FAILED naming the field', async () => {
    await expect(start((c) => (c.modules.soft.path = '/bin/ls'))).rejects.toMatchObject({ code: 'MODULE_LOAD_FAILED', issues: [expect.objectContaining({ path: 'modules.soft.path' })] });
    await expect(start((c) => (c.modules.soft.path = '/usr/lib/nope/libnothing.so'))).rejects.toMatchObject({ code: 'MODULE_LOAD_FAILED', issues: [expect.objectContaining({ path: 'modules.soft.path' })] });
    // The running supervisor is untouched.
    expect(await sup.sign({ ...ok } as never)).toBeInstanceOf(Buffer);
  });
});

describe('hostile input through the CLI', () => {
  const cli = (args: string[], config?: unknown) => {
    const file = join(td.dir, `cli-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, typeof config === 'string' ? config : JSON.stringify(config ?? configFor(td, { t: { token: { label: 'bad' }, pin: { env: 'BAD_PIN' } } })));
    return spawnSync(process.execPath, ['dist/src/cli.js', '--config', file, ...args], { encoding: 'utf8', env: { ...process.env } });
  };
  it('each gets an exit code and a typed message', () => {
    const f = join(td.dir, 'doc.txt');
    writeFileSync(f, 'doc');
    expect(cli(['sign', '--slot', 'nope', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', f])).toMatchObject({ status: 3, stderr: expect.stringContaining('[SLOT_NOT_FOUND]') });
    expect(cli(['sign', '--slot', 't', '--key', 'nope', '--mechanism', 'ECDSA-SHA256', '--in', f])).toMatchObject({ status: 3, stderr: expect.stringContaining('[KEY_NOT_FOUND]') });
    expect(cli(['sign', '--slot', 't', '--key', 'ec', '--mechanism', 'MD5', '--in', f])).toMatchObject({ status: 3, stderr: expect.stringContaining('[MECHANISM_INVALID]') });
    expect(cli(['status'], '{ not json')).toMatchObject({ status: 3, stderr: expect.stringContaining('[CONFIG_INVALID]') });
    expect(cli(['status'], { modules: {}, slots: {} })).toMatchObject({ status: 3, stderr: expect.stringContaining('slots') });
    expect(cli(['sign', '--slot', 't'])).toMatchObject({ status: 2 });
    expect(cli(['--bogus'])).toMatchObject({ status: 2 });
  });
});

describe('the fields each method takes', () => {
  it('the in-process table and the service schemas name the same fields, so a field is refused the same way both ways in', async () => {
    const { REQUEST_FIELDS } = await import('../dist/src/client/request-fields.js');
    const { ROUTES } = await import('../dist/src/service/routes.js');
    type Shaped = { shape?: Record<string, unknown>; in?: { shape: Record<string, unknown> } };
    // Over the wire only: the deadline and PIN are call options, a JWS payload may come as base64.
    const wireOnly = new Set(['timeoutMs', 'pin', 'payloadBase64']);
    const methods = Object.keys(ROUTES).filter((m) => !['status', 'reset', 'verifyAudit'].includes(m));
    expect(Object.keys(REQUEST_FIELDS).sort()).toEqual(methods.sort());
    for (const m of methods) {
      const schema = ROUTES[m as keyof typeof ROUTES].request as Shaped;
      const wire = Object.keys(schema.in?.shape ?? schema.shape!).filter((f) => !wireOnly.has(f));
      expect([m, ...wire.sort()]).toEqual([m, ...[...(REQUEST_FIELDS as Record<string, readonly string[]>)[m]!].sort()]);
    }
  });

  it('an unknown field in a request, a key or a then object is BAD_INPUT naming it; undefined ones are ignored', async () => {
    await expect(sup.sign({ ...ok, prehash: true } as never)).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('sign takes no field "prehash"') });
    await expect(sup.verify({ ...ok, signature: data, signatureformat: 'raw' } as never)).rejects.toMatchObject({ code: 'BAD_INPUT' });
    await expect(sup.sign({ ...ok, key: { label: 'ec', uri: 'x' } } as never)).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('key has no field "uri"') });
    await expect(sup.deriveKey({ slot: 't', key: 'ec', mechanism: 'ECDH', publicKey: Buffer.alloc(65, 4), then: { op: 'encrypt', mechanism: 'AES-GCM', data, nonce: data } } as never)).rejects.toMatchObject({ code: 'BAD_INPUT', message: expect.stringContaining('then has no field "nonce"') });
    await expect(sup.generateKeyPair({ slot: 't', algorithm: 'EC-P256', label: 'typo', exportable: true } as never)).rejects.toMatchObject({ code: 'BAD_INPUT' });
    expect((await sup.findObjects({ slot: 't', template: { label: 'typo' } })).length).toBe(0);
    expect(await sup.sign({ ...ok, prehashed: undefined, signatureFormat: undefined, signal: undefined })).toBeInstanceOf(Buffer);
  });
});
