import { beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as jose from 'jose';
import { parseConfig, startDaemon, startSupervisor, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, MODULE, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { ExternalSession } from './support/external-session.js';
import { openssl, tmpFile } from './support/openssl.js';
import { verifiesOnNode } from './support/sign-check.js';

let td: TokenDir;
let tok: TestToken;
let cloud: TestToken;
const data = Buffer.from('by the rules');

beforeAll(() => {
  td = tokenDir();
  tok = createToken(td, 'rules');
  cloud = createToken(td, 'cloudy');
  process.env.RULES_PIN = tok.pin;
});

const base = (slot: Record<string, unknown> = {}) => configFor(td, { s: { token: { label: 'rules' }, pin: { env: 'RULES_PIN' }, ...slot } });

async function refused(config: unknown, code: string, path: string, start = true) {
  const attempt = start ? startSupervisor({ config: config as never }) : Promise.resolve().then(() => parseConfig(config));
  const e = await attempt.then(
    (s) => ((s as Pkcs11Supervisor)?.close?.(), null),
    (err) => err,
  );
  expect(e, `expected ${code} at ${path}`).toMatchObject({ code, issues: expect.arrayContaining([expect.objectContaining({ path })]) });
}

describe('each rule refuses the config that breaks it, naming the field', () => {
  it('a cloud slot with a PIN source', () => refused(base({ type: 'cloud', poolSize: 2 }), 'CONFIG_INVALID', 'slots.s.pin'));
  it('a token slot without any PIN source', () => refused(configFor(td, { s: { token: { label: 'rules' } } }), 'CONFIG_INVALID', 'slots.s.pin'));
  it('a relative module path', () => refused({ ...base(), modules: { soft: { path: 'libsofthsm2.so' } } }, 'CONFIG_INVALID', 'modules.soft.path'));
  it('a malformed sha256', () => refused({ ...base(), modules: { soft: { path: MODULE, sha256: 'abc' } } }, 'CONFIG_INVALID', 'modules.soft.sha256'));
  it('a library whose hash differs from the pinned one', () => refused({ ...base(), modules: { soft: { path: MODULE, sha256: '0'.repeat(64) } } }, 'MODULE_REJECTED', 'modules.soft.sha256'));
  it('one library under two module names with different settings', () =>
    refused({ ...base(), modules: { soft: { path: MODULE }, other: { path: MODULE, env: { X: '1' } } } }, 'CONFIG_INVALID', 'modules.other'));
  it('a slot allow-list that shares nothing with the global one', () =>
    refused({ ...base({ allowedMechanisms: ['RSA-PSS-SHA256'] }), allowedMechanisms: ['ECDSA-SHA256'] }, 'CONFIG_INVALID', 'slots.s.allowedMechanisms'));
  it('an unknown mechanism in an allow-list', () => refused({ ...base(), allowedMechanisms: ['ECDSA-MD5'] }, 'CONFIG_INVALID', 'allowedMechanisms.0'));
  it('a key naming its certificate by both label and id', () =>
    refused(base({ keys: { ec: { label: 'ec', id: '02', certLabel: 'c', certId: '02' } } }), 'CONFIG_INVALID', 'slots.s.keys.ec.certId'));
  it('an unknown slot type', () => refused(base({ type: 'usb' }), 'CONFIG_INVALID', 'slots.s.type', false));
  it('a negative spin', () => refused(base({ idleSpinMs: -1 }), 'CONFIG_INVALID', 'slots.s.idleSpinMs'));
  it('a token label with a lone surrogate (a token would store U+FFFD)', () => refused(base({ token: { label: 'rules\uD800' } }), 'CONFIG_INVALID', 'slots.s.token.label'));
  it('a token label longer than CK_TOKEN_INFO holds', () => refused(base({ token: { label: 'x'.repeat(33) } }), 'CONFIG_INVALID', 'slots.s.token.label'));
});

describe('names as the token holds them', () => {
  it('a token label with trailing blanks names the token, as CK_TOKEN_INFO pads it', async () => {
    const sup = await startSupervisor({ config: base({ token: { label: 'rules   ' } }) });
    try {
      const data = Buffer.from('padded');
      expect(await verifiesOnNode(sup, 's', 'ec', data, await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data }))).toBe(true);
      await expect(sup.generateKeyPair({ slot: 's', algorithm: 'EC-P256', label: 'bad\uDC00label' })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    } finally {
      await sup.close();
    }
  });

  it('an eager slot on an absent token settles at start: failed, not restarting; its calls fail fast', async () => {
    const sup = await startSupervisor({ config: base({ token: { label: 'no-such-token' }, restart: { maxRestarts: 2, windowMs: 60_000, backoffInitialMs: 10, backoffMaxMs: 20 } }) });
    try {
      expect(sup.status().slots.s!.state).toBe('failed');
      await expect(sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from('x') })).rejects.toMatchObject({ code: 'SLOT_FAILED' });
    } finally {
      await sup.close();
    }
  });

  it('one AbortSignal shared by many calls: no listener warning, and aborting it ends every call not yet started', async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    const sup = await startSupervisor({ config: base() });
    try {
      const controller = new AbortController();
      const calls = Array.from({ length: 40 }, (_, i) => sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from(`a${i}`), signal: controller.signal }).then(() => 'signed', (e: { code: string }) => e.code));
      controller.abort();
      const outcomes = await Promise.all(calls);
      expect(outcomes.filter((o) => o === 'ABORTED').length).toBeGreaterThan(30);
      expect(outcomes.every((o) => o === 'ABORTED' || o === 'signed')).toBe(true);
      await new Promise((r) => setImmediate(r));
      expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
    } finally {
      process.off('warning', onWarning);
      await sup.close();
    }
  });
});

describe('module pinning', () => {
  it('a pinned library loads and signs; the same library with one byte changed is refused before it is loaded', async () => {
    // Pin the real library: a second copy of SoftHSM2 in one process would share (and tear
    // down) OpenSSL's global state with the first.
    const sha256 = createHash('sha256').update(readFileSync(MODULE)).digest('hex');
    const config = { ...base(), modules: { soft: { path: MODULE, sha256, env: { SOFTHSM2_CONF: td.conf } } } };
    const sup = await startSupervisor({ config });
    expect(await verifiesOnNode(sup, 's', 'ec', data, await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data }))).toBe(true);
    await sup.close();
    const tampered = join(td.dir, 'libsofthsm2-tampered.so');
    copyFileSync(MODULE, tampered);
    appendFileSync(tampered, Buffer.from([0]));
    await refused({ ...config, modules: { soft: { ...config.modules.soft, path: tampered } } }, 'MODULE_REJECTED', 'modules.soft.sha256');
  });
});

describe('slot kinds', () => {
  it('a token slot whose token is not plugged in lets the daemon start; its first call fails with TOKEN_NOT_FOUND', async () => {
    const sup = await startSupervisor({ config: configFor(td, { s: { token: { label: 'rules' }, pin: { env: 'RULES_PIN' } }, absent: { token: { label: 'nowhere' }, pin: { env: 'RULES_PIN' }, lazy: undefined } }) });
    try {
      expect(sup.status().slots.absent!.state).toBe('uninitialized');
      const t0 = Date.now();
      await expect(sup.sign({ slot: 'absent', key: 'ec', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND', slot: 'absent' });
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);
    } finally {
      await sup.close();
    }
  });

  it('a cloud slot (a pool, no PIN, credentials out of band) signs without any login', async () => {
    const outside = new ExternalSession(td, 'cloudy');
    outside.login(cloud.pin); // stands in for the cloud credentials a kmsp11-style module uses
    const config = configFor(td, { c: { type: 'cloud', poolSize: 2, token: { label: 'cloudy' } } });
    // The stand-in initialized the module first, with OS locking, as such an application does.
    const sup = await startSupervisor({ config: { ...config, modules: { soft: { ...config.modules.soft, applicationInitializesWithOsLocking: true } } } });
    try {
      await sup.login('c'); // a no-op for a cloud slot
      const sigs = await Promise.all([1, 2, 3, 4].map(() => sup.sign({ slot: 'c', key: 'ec', mechanism: 'ECDSA-SHA256', data })));
      for (const sig of sigs) expect(await verifiesOnNode(sup, 'c', 'ec', data, sig)).toBe(true);
      expect((await sup.probe({ slot: 'c' })).calls.C_Login ?? 0).toBe(0);
      await sup.close();
      // The module was initialized by this test's own code first: the supervisor must not finalize it under us.
      expect(outside.state()).toBe('RW_USER');
    } finally {
      await sup.close();
      outside.close();
    }
  });
});

describe('allow-lists', () => {
  it('a mechanism outside the global, slot or key list fails with MECHANISM_NOT_ALLOWED before it is queued', async () => {
    const sup = await startSupervisor({
      config: {
        ...base({
          allowedMechanisms: ['ECDSA-SHA256', 'ECDSA-SHA384', 'RSA-PSS-SHA256'],
          keys: { ec: { label: 'ec', id: '02', allowedMechanisms: ['ECDSA-SHA256'] }, rsa: { label: 'rsa', id: '01' } },
        }),
        allowedMechanisms: ['ECDSA-SHA256', 'ECDSA-SHA384', 'RSA-PSS-SHA256', 'RSA-PKCS1-SHA256'],
      },
    });
    try {
      const before = (await sup.probe({ slot: 's' })).calls;
      await expect(sup.sign({ slot: 's', key: 'rsa', mechanism: 'RSA-PKCS1-SHA512', data })).rejects.toMatchObject({ code: 'MECHANISM_NOT_ALLOWED', message: expect.stringMatching(/^RSA-PKCS1-SHA512 is not in allowedMechanisms/) });
      await expect(sup.sign({ slot: 's', key: 'rsa', mechanism: 'RSA-PKCS1-SHA256', data })).rejects.toMatchObject({ code: 'MECHANISM_NOT_ALLOWED', message: expect.stringContaining('slots.s.allowedMechanisms') });
      await expect(sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA384', data })).rejects.toMatchObject({ code: 'MECHANISM_NOT_ALLOWED', message: expect.stringContaining('slots.s.keys.ec.allowedMechanisms') });
      expect((await sup.probe({ slot: 's' })).calls.C_SignInit).toBe(before.C_SignInit);
      expect(await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);
      expect(await sup.sign({ slot: 's', key: 'rsa', mechanism: 'RSA-PSS-SHA256', data })).toBeInstanceOf(Buffer);
    } finally {
      await sup.close();
    }
  });

  it("a key's list holds however the key is named: by label, by id or by URI; a key no ref can name is held to none", async () => {
    const sup = await startSupervisor({ config: base({ keys: { ec: { label: 'ec', id: '02', allowedMechanisms: ['ECDSA-SHA256'] } } }) });
    try {
      const before = (await sup.probe({ slot: 's' })).calls.C_SignInit;
      for (const key of [{ label: 'ec' }, { id: '02' }, { label: 'ec', id: '02' }, 'pkcs11:object=ec', 'pkcs11:id=%02;type=private']) {
        await expect(sup.sign({ slot: 's', key, mechanism: 'ECDSA-SHA384', data }), JSON.stringify(key)).rejects.toMatchObject({
          code: 'MECHANISM_NOT_ALLOWED',
          message: expect.stringContaining('slots.s.keys.ec.allowedMechanisms (ECDSA-SHA256); a key named otherwise than by its ref'),
        });
      }
      expect((await sup.probe({ slot: 's' })).calls.C_SignInit).toBe(before);
      expect(await sup.sign({ slot: 's', key: { label: 'ec' }, mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);
      // The RSA key shares neither label nor id with the ref: its own mechanisms are not held to the EC key's list.
      expect(await sup.sign({ slot: 's', key: { label: 'rsa', id: '01' }, mechanism: 'RSA-PSS-SHA256', data })).toBeInstanceOf(Buffer);
    } finally {
      await sup.close();
    }
  });
});

describe('keys with certificates', () => {
  it('certLabel names the key certificate for getCertificate and for the JWS x5c header', async () => {
    const setup = await startSupervisor({ config: base() });
    const key = tmpFile('k.pem');
    const crt = tmpFile('c.pem');
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', crt, '-subj', '/CN=issuer-2026', '-days', '2']);
    await setup.importKeyPair({ slot: 's', label: 'jws-key', id: 'b1', privateKeyPem: readFileSync(key, 'utf8') });
    await setup.importCertificate({ slot: 's', certificate: readFileSync(crt), label: 'jws-cert', id: 'c1' });
    await setup.close();

    const sup = await startSupervisor({ config: base({ keys: { signer: { label: 'jws-key', id: 'b1', certLabel: 'jws-cert' } } }) });
    try {
      const cert = await sup.getCertificate({ slot: 's', key: 'signer' });
      expect(cert.x509.subject).toBe('CN=issuer-2026');
      const jws = await sup.signJws({ slot: 's', key: 'signer', alg: 'ES256', payload: 'hello', x5c: true });
      const header = jose.decodeProtectedHeader(jws);
      expect(header).toMatchObject({ alg: 'ES256', kid: 'b1', x5c: [cert.der.toString('base64')] });
      const { payload } = await jose.compactVerify(jws, await jose.importX509(cert.pem, 'ES256'));
      expect(Buffer.from(payload).toString()).toBe('hello');
    } finally {
      await sup.close();
    }
  });
});

describe('defaults and config print', () => {
  it('slots inherit sessionTimeoutMs as their idle timeout unless they set their own', () => {
    const c = parseConfig({ ...base({ idleTimeoutMs: undefined }), sessionTimeoutMs: 1234, slots: { a: { module: 'soft', token: { label: 'x' }, pin: { env: 'P' } }, b: { module: 'soft', token: { label: 'y' }, pin: { env: 'P' }, idleTimeoutMs: 5 } } });
    expect(c.slots.a!.idleTimeoutMs).toBe(1234);
    expect(c.slots.b!.idleTimeoutMs).toBe(5);
  });

  it('config print shows every default and PIN sources by kind only, never a PIN', () => {
    const pinFile = join(td.dir, 'print.pin');
    writeFileSync(pinFile, tok.pin, { mode: 0o600 });
    const file = join(td.dir, 'print.json');
    writeFileSync(file, JSON.stringify(configFor(td, { a: { token: { label: 'rules' }, pin: { env: 'RULES_PIN' } }, b: { type: 'hsm', poolSize: 2, token: { label: 'rules' }, pin: { file: pinFile } } })));
    const r = spawnSync(process.execPath, ['dist/src/cli.js', '--config', file, 'config', 'print'], { encoding: 'utf8', env: { ...process.env, RULES_PIN: tok.pin } });
    expect(r.status).toBe(0);
    const printed = JSON.parse(r.stdout);
    expect(printed.sessionTimeoutMs).toBe(300000);
    expect(printed.slots.a).toMatchObject({ pin: { kind: 'env' }, idleTimeoutMs: 300000, queueLimit: 1000, callTimeoutMs: 30000, restart: { maxRestarts: 5 } });
    expect(printed.slots.b).toMatchObject({ pin: { kind: 'file' }, poolSize: 2 });
    expect(r.stdout).not.toContain(tok.pin);
    expect(r.stdout).not.toContain('RULES_PIN');
    expect(r.stdout).not.toContain(pinFile);
  });
});

describe('the files a config names are checked at start', () => {
  it('an audit trail in a missing or read-only directory, a missing PIN file, TLS files, a socket directory that cannot be made and a socket path too long for the system: CONFIG_INVALID naming each field', async () => {
    const readOnly = join(td.dir, 'read-only');
    mkdirSync(readOnly);
    // Root ignores permission bits: a read-only bind of the directory is what a read-only root filesystem gives.
    const asRoot = process.getuid?.() === 0;
    const config = {
      ...configFor(td, { a: { token: { label: 'rules' }, pin: { env: 'RULES_PIN' } }, b: { type: 'hsm', token: { label: 'rules' }, pin: { file: join(td.dir, 'no-such.pin') } } }),
      audit: { path: join(td.dir, 'no-such-dir', 'audit.jsonl') },
    };
    await expect(startSupervisor({ config })).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
      issues: [
        { path: 'audit.path', message: expect.stringMatching(/does not exist/) },
        { path: 'slots.b.pin.file', message: expect.stringMatching(/ENOENT/) },
      ],
    });
    if (!asRoot) {
      chmodSync(readOnly, 0o555);
      await expect(startSupervisor({ config: { ...config, slots: { a: config.slots.a }, audit: { path: join(readOnly, 'audit.jsonl') } } })).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [{ path: 'audit.path' }] });
    }
    const file = join(td.dir, 'api-paths.json');
    writeFileSync(join(td.dir, 'a-file'), 'not a directory');
    writeFileSync(file, JSON.stringify({ ...config, slots: { a: config.slots.a }, audit: undefined, api: { unix: { path: join(td.dir, 'a-file', 'run', 'api.sock') }, tls: { port: 0, cert: join(td.dir, 'x.crt'), key: join(td.dir, 'x.key'), clientCa: join(td.dir, 'ca.crt') } }, policy: { slots: {} } }));
    await expect(startDaemon(file)).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
      issues: [{ path: 'api.unix.path' }, { path: 'api.tls.cert' }, { path: 'api.tls.key' }, { path: 'api.tls.clientCa' }],
    });
    // Longer than a socket's path may be: Node would cut it short and listen on another file.
    const long = join(td.dir, `${'s'.repeat(110)}.sock`);
    writeFileSync(file, JSON.stringify({ ...config, slots: { a: config.slots.a }, audit: undefined, api: { unix: { path: long } } }));
    await expect(startDaemon(file)).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [{ path: 'api.unix.path', message: expect.stringMatching(/at most 107 bytes/) }] });
    expect(readdirSync(td.dir).filter((f) => f.startsWith('sss'))).toEqual([]);
  });
});

