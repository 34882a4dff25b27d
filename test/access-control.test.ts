import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { createMetrics, startSupervisor, type LoginEvent, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, pkcs11Tool, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { PinChain } from '../dist/src/pin-chain.js';
import { Secret } from '../dist/src/model/secret.js';
import { verifiesOnNode } from './support/sign-check.js';

let td: TokenDir;
let tokens: Record<string, TestToken>;
let sup: Pkcs11Supervisor | undefined;
const data = Buffer.from('access controlled');

beforeAll(() => {
  td = tokenDir();
  tokens = Object.fromEntries(['admin', 'userpin', 'roles', 'readonly', 'stale'].map((l) => [l, createToken(td, l)]));
  for (const [label, t] of Object.entries(tokens)) process.env[`AC_PIN_${label}`] = t.pin;
});

afterEach(async () => {
  await sup?.close();
  sup = undefined;
});

const slot = (label: string, extra: Record<string, unknown> = {}) => ({ token: { label }, pin: { env: `AC_PIN_${label}` }, ...extra });

describe('Security Officer', () => {
  it('an SO login waits for running user calls, holds new ones, and the token reports RW_SO; initPin and setPin work; logout returns to the user login', async () => {
    const t = tokens.admin!;
    sup = await startSupervisor({ config: configFor(td, { a: slot('admin', { type: 'hsm', poolSize: 2 }) }) });
    const logins: LoginEvent[] = [];
    sup.on('login', (e) => logins.push(e));

    const done: string[] = [];
    const signs = Array.from({ length: 20 }, (_, i) => sup!.sign({ slot: 'a', key: 'ec', mechanism: 'ECDSA-SHA256', data }).then((sig) => (done.push(`sign${i}`), sig)));
    const so = sup.login('a', t.soPin, { userType: 'so' }).then(() => done.push('so'));
    await Promise.all([...signs, so]);
    // Every user call that was ahead of the SO login finished, with a good signature, before it.
    expect(done.at(-1)).toBe('so');
    for (const sig of await Promise.all(signs.map((p) => p))) expect(await verifiesOnNode(sup, 'a', 'ec', data, sig as unknown as Buffer)).toBe(true);
    expect((await sup.probe({ slot: 'a' })).state).toBe('RW_SO');
    expect(sup.status().slots.a!.state).toBe('so_logged_in');

    // One user type at a time: user calls are refused with a clear code, not sent to the token.
    await expect(sup.sign({ slot: 'a', key: 'ec', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'SO_SESSION_ACTIVE' });
    await expect(sup.login('a', t.pin)).rejects.toMatchObject({ code: 'SO_SESSION_ACTIVE' });

    const newUserPin = 'fresh-user-1';
    const newSoPin = 'fresh-so-1';
    await sup.initPin({ slot: 'a', newPin: newUserPin });
    await sup.setPin({ slot: 'a', oldPin: t.soPin, newPin: newSoPin });
    expect(logins.map((e) => `${e.userType}:${e.outcome}`)).toEqual(['so:ok']);

    // Back to the configured user login, which now reads the new PIN.
    process.env.AC_PIN_admin = newUserPin;
    await sup.logout('a');
    expect((await sup.probe({ slot: 'a' })).state).toBe('RW_USER');
    const sig = await sup.sign({ slot: 'a', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(await verifiesOnNode(sup, 'a', 'ec', data, sig)).toBe(true);
    await sup.close();

    // The token agrees, seen from another process: the new user PIN logs in, the old SO PIN no longer does.
    expect(pkcs11Tool(td, 'admin', newUserPin, ['--list-objects', '--type', 'privkey'])).toContain('label:      ec');
    expect(() => pkcs11Tool(td, 'admin', null, ['--session-rw', '--login', '--login-type', 'so', '--so-pin', t.soPin, '--list-objects'])).toThrow(/CKR_PIN_INCORRECT/);
    pkcs11Tool(td, 'admin', null, ['--session-rw', '--login', '--login-type', 'so', '--so-pin', newSoPin, '--list-objects']);
  });

  it('a wrong SO PIN is PIN_INCORRECT and the slot keeps serving its user; initPin without an SO login is SO_LOGIN_REQUIRED', async () => {
    sup = await startSupervisor({ config: configFor(td, { r: slot('roles') }) });
    await expect(sup.login('r', 'not-the-so-pin', { userType: 'so' })).rejects.toMatchObject({ code: 'PIN_INCORRECT', ckr: 'CKR_PIN_INCORRECT' });
    await expect(sup.initPin({ slot: 'r', newPin: 'x1234' })).rejects.toMatchObject({ code: 'SO_LOGIN_REQUIRED' });
    await expect(sup.login('r', undefined, { userType: 'so' })).rejects.toMatchObject({ code: 'PIN_REQUIRED' });
    const sig = await sup.sign({ slot: 'r', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(await verifiesOnNode(sup, 'r', 'ec', data, sig)).toBe(true);
  });

  it('the user changes their own PIN with setPin; the token accepts only the new one', async () => {
    const t = tokens.userpin!;
    sup = await startSupervisor({ config: configFor(td, { u: slot('userpin') }) });
    await sup.setPin({ slot: 'u', oldPin: t.pin, newPin: 'changed-9876' });
    await sup.close();
    expect(pkcs11Tool(td, 'userpin', 'changed-9876', ['--list-objects', '--type', 'privkey'])).toContain('label:      rsa');
    expect(() => pkcs11Tool(td, 'userpin', t.pin, ['--list-objects'])).toThrow(/CKR_PIN_INCORRECT/);
    pkcs11Tool(td, 'userpin', 'changed-9876', ['--change-pin', '--new-pin', t.pin]);
  });
});

describe('a PIN changed through the supervisor', () => {
  it('is the one automatic logins use, on every slot of the token, while the configured source still holds the old one: no try is spent on a PIN known to be gone', async () => {
    const t = tokens.stale!;
    sup = await startSupervisor({ config: configFor(td, { a: slot('stale', { type: 'hsm', poolSize: 2 }), b: slot('stale') }) });
    const signsOn = async (name: string) => verifiesOnNode(sup!, name, 'ec', data, await sup!.sign({ slot: name, key: 'ec', mechanism: 'ECDSA-SHA256', data }));
    expect(await signsOn('a')).toBe(true);
    const logins: LoginEvent[] = [];
    sup.on('login', (e) => logins.push(e));

    await sup.login('a', t.soPin, { userType: 'so' });
    await sup.initPin({ slot: 'a', newPin: 'set-here-1' });
    await sup.logout('a'); // the user logs in again, from the PIN the SO just set: the env source still has the old one
    expect(await signsOn('a')).toBe(true);
    expect(await signsOn('b')).toBe(true);
    expect((await sup.probe({ slot: 'b' })).userPin).toBe('ok');

    await sup.setPin({ slot: 'b', oldPin: 'set-here-1', newPin: 'set-here-2' });
    await sup.logout('b');
    expect(await signsOn('a')).toBe(true);
    expect((await sup.probe({ slot: 'a' })).userPin).toBe('ok');
    expect(logins.filter((e) => e.outcome !== 'ok')).toEqual([]);

    await sup.close();
    expect(pkcs11Tool(td, 'stale', 'set-here-2', ['--list-objects', '--type', 'privkey'])).toContain('label:      ec');
  });

  it('is given up once the token refuses it (changed again elsewhere): the configured source is asked again', async () => {
    // SoftHSM2 keeps a PIN changed by another process unseen by this one, so the chain is driven directly here.
    const memory = { refused: new Set<string>(), setHere: null as Secret | null };
    process.env.AC_CHAIN_PIN = 'configured';
    const chain = new PinChain('c', { env: 'AC_CHAIN_PIN' }, undefined, () => memory);
    const ask = () => chain.resolve(undefined, { slot: 'c', tokenLabel: 't', reason: 'relogin' }, false, 'ok');
    chain.changed(new Secret('set-here'));
    expect(await ask()).toMatchObject({ origin: 'call', pin: { reveal: expect.any(Function) } });
    expect((await ask()).pin.reveal()).toBe('set-here');
    chain.rejectedByToken(new Secret('set-here'));
    expect((await ask()).pin.reveal()).toBe('configured');
    expect((await ask()).origin).toBe('env');
    // And once the source holds the PIN set here, the source is used again.
    chain.changed(new Secret('configured'));
    expect(await ask()).toMatchObject({ origin: 'env' });
    expect(memory.setHere).toBeNull();
  });
});

describe('callers and roles', () => {
  const policy = { slots: { r: { service: { keys: ['ec'] }, operator: {}, administrator: {}, auditor: {} } } };

  it('each role does what it may and gets FORBIDDEN otherwise; denials are counted and audited with the principal', async () => {
    const auditPath = join(td.dir, 'roles-audit.jsonl');
    sup = await startSupervisor({ config: { ...configFor(td, { r: slot('roles') }), policy, audit: { path: auditPath, flushMs: 5 } } });
    const registry = createMetrics(sup);
    const service = sup.as({ id: 'billing-app', roles: ['service'] });
    const operator = sup.as({ id: 'ops-alice', roles: ['operator'] });
    const admin = sup.as({ id: 'sec-bob', roles: ['administrator'] });
    const auditor = sup.as({ id: 'audit-carol', roles: ['auditor'] });

    const sig = await service.sign({ slot: 'r', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(await verifiesOnNode(sup.as({ id: 'x', roles: ['service'] }), 'r', 'ec', data, sig)).toBe(true);
    await expect(service.sign({ slot: 'r', key: 'rsa', mechanism: 'RSA-PSS-SHA256', data })).rejects.toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('billing-app') });
    await expect(service.sign({ slot: 'r', key: { label: 'ec' }, mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    // A key JSON cannot write is named in the denial, not thrown as a TypeError.
    await expect(service.getPublicKey({ slot: 'r', key: 10n as never })).rejects.toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('with key 10n') });
    await expect(service.generateKeyPair({ slot: 'r', algorithm: 'EC-P256', label: 'nope' })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await expect(sup.sign({ slot: 'r', key: 'ec', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('needs a caller principal') });
    await expect(sup.sign({ slot: 'r', key: 'ec', mechanism: 'ECDSA-SHA256', data, principal: { id: 'p', roles: ['service'] } })).resolves.toBeInstanceOf(Buffer);

    const generated = await operator.generateKeyPair({ slot: 'r', algorithm: 'EC-P256', label: 'op-made', id: 'e1' });
    expect(generated.label).toBe('op-made');
    await expect(operator.destroyObject({ slot: 'r', key: { label: 'op-made' } })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    expect(await admin.destroyObject({ slot: 'r', key: { label: 'op-made' } })).toBe(2);

    expect(Object.keys(auditor.status().slots)).toEqual(['r']);
    await expect(auditor.sign({ slot: 'r', key: 'ec', mechanism: 'ECDSA-SHA256', data })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    expect(() => service.status()).toThrow(expect.objectContaining({ code: 'FORBIDDEN' }));
    await expect(service.verifyAudit()).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await new Promise((r) => setTimeout(r, 50));
    expect(await auditor.verifyAudit()).toMatchObject({ ok: true });

    const text = await registry.metrics();
    expect(text).toContain('pkcs11_access_denied_total{slot="r",op="sign"} 4');
    expect(text).toContain('pkcs11_access_denied_total{slot="r",op="generateKeyPair"} 1');
    await sup.close();
    const records = readFileSync(auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const denied = records.filter((r) => r.event === 'denied');
    expect(denied.map((r) => r.principal)).toEqual(expect.arrayContaining(['billing-app', 'ops-alice', 'audit-carol']));
    expect(records.find((r) => r.event === 'destroyObject')).toMatchObject({ principal: 'sec-bob', result: 'ok' });
    expect(readFileSync(auditPath, 'utf8')).not.toContain(tokens.roles!.pin);
  });

  it('every role × operation pair, allowed or denied as the README table says; each denial counted and audited', async () => {
    // The contract, written out (README "Access control"): S service, O operator, A administrator, U auditor.
    const table: Record<string, string> = {
      sign: 'SOA', verify: 'SOA', getPublicKey: 'SOA', getCertificate: 'SOA', generateRandom: 'SOA',
      findObjects: 'OAU', probe: 'OAU', status: 'OAU',
      generateKeyPair: 'OA', importCertificate: 'OA', login: 'OA', logout: 'OA',
      destroyObject: 'A', soLogin: 'A', initPin: 'A', setPin: 'A', reset: 'A',
      verifyAudit: 'AU',
    };
    const letter = { service: 'S', operator: 'O', administrator: 'A', auditor: 'U' } as const;
    const t = tokens.roles!;
    const auditPath = join(td.dir, 'table-audit.jsonl');
    sup = await startSupervisor({ config: { ...configFor(td, { r: slot('roles') }), policy: { slots: { r: { service: {}, operator: {}, administrator: {}, auditor: {} } } }, audit: { path: auditPath, flushMs: 5 } } });
    const registry = createMetrics(sup);
    const sig = await sup.sign({ slot: 'r', key: 'ec', mechanism: 'ECDSA-SHA256', data, principal: { id: 'setup', roles: ['service'] } });
    const ops: Record<string, (c: Pkcs11Supervisor) => Promise<unknown>> = {
      sign: (c) => c.sign({ slot: 'r', key: 'ec', mechanism: 'ECDSA-SHA256', data }),
      verify: (c) => c.verify({ slot: 'r', key: 'ec', mechanism: 'ECDSA-SHA256', data, signature: sig }),
      getPublicKey: (c) => c.getPublicKey({ slot: 'r', key: 'ec' }),
      getCertificate: (c) => c.getCertificate({ slot: 'r', key: 'ec' }),
      generateRandom: (c) => c.generateRandom({ slot: 'r', length: 16 }),
      findObjects: (c) => c.findObjects({ slot: 'r' }),
      probe: (c) => c.probe({ slot: 'r' }),
      status: async (c) => c.status(),
      generateKeyPair: (c) => c.generateKeyPair({ slot: 'r', algorithm: 'EC-P256', label: 'table-made' }),
      importCertificate: (c) => c.importCertificate({ slot: 'r', certificate: Buffer.from('not a certificate'), id: '02' }),
      login: (c) => c.login('r'),
      logout: (c) => c.logout('r'),
      destroyObject: (c) => c.destroyObject({ slot: 'r', key: { label: 'table-made' } }),
      soLogin: async (c) => {
        await c.login('r', t.soPin, { userType: 'so' });
        await c.logout('r');
      },
      initPin: (c) => c.initPin({ slot: 'r', newPin: t.pin }),
      setPin: (c) => c.setPin({ slot: 'r', oldPin: t.pin, newPin: t.pin }),
      reset: async (c) => c.reset('r'),
      verifyAudit: async (c) => c.verifyAudit(),
    };
    expect(Object.keys(ops).sort()).toEqual(Object.keys(table).sort());
    const got: string[] = [];
    const want: string[] = [];
    const deniedPerOp: Record<string, number> = {};
    for (const role of ['service', 'operator', 'administrator', 'auditor'] as const) {
      const client = sup.as({ id: `as-${role}`, roles: [role] });
      for (const [op, call] of Object.entries(ops)) {
        const outcome = await call(client).then(
          () => 'allowed',
          (e: { code?: string }) => (e.code === 'FORBIDDEN' ? 'denied' : 'allowed'),
        );
        got.push(`${role} ${op} ${outcome}`);
        const allowed = table[op]!.includes(letter[role]);
        want.push(`${role} ${op} ${allowed ? 'allowed' : 'denied'}`);
        if (!allowed) deniedPerOp[op] = (deniedPerOp[op] ?? 0) + 1;
      }
    }
    expect(got).toEqual(want);
    const text = await registry.metrics();
    for (const [op, n] of Object.entries(deniedPerOp)) expect(text).toContain(`pkcs11_access_denied_total{slot="r",op="${op}"} ${n}`);
    await sup.close();
    const denied = readFileSync(auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((r) => r.event === 'denied');
    expect(denied.length).toBe(Object.values(deniedPerOp).reduce((a, b) => a + b, 0));
    expect(new Set(denied.map((r) => r.principal))).toEqual(new Set(['as-service', 'as-operator', 'as-auditor']));
  });

  it('the CLI acts as the principal given by --as, and is refused without one', () => {
    const file = join(td.dir, 'policy-cli.json');
    writeFileSync(file, JSON.stringify({ ...configFor(td, { r: slot('roles') }), policy }));
    const doc = join(td.dir, 'cli-doc.txt');
    writeFileSync(doc, 'signed from the shell');
    const cli = (...args: string[]) => spawnSync(process.execPath, ['dist/src/cli.js', '--config', file, ...args], { encoding: 'utf8' });
    const args = ['sign', '--slot', 'r', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', doc];
    expect(cli(...args, '--as', 'deploy-bot:service')).toMatchObject({ status: 0, stdout: expect.stringMatching(/^[A-Za-z0-9+/=]+\n$/) });
    expect(cli(...args)).toMatchObject({ status: 3, stderr: expect.stringContaining('[FORBIDDEN]') });
    expect(cli(...args, '--as', 'deploy-bot:auditor')).toMatchObject({ status: 3, stderr: expect.stringContaining('[FORBIDDEN]') });
  });

  it('a policy naming an unknown slot or key ref is refused at start, naming the field', async () => {
    await expect(startSupervisor({ config: { ...configFor(td, { r: slot('roles') }), policy: { slots: { nope: { service: {} } } } } })).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
      issues: [expect.objectContaining({ path: 'policy.slots.nope' })],
    });
    await expect(startSupervisor({ config: { ...configFor(td, { r: slot('roles') }), policy: { slots: { r: { service: { keys: ['ghost'] } } } } } })).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
      issues: [expect.objectContaining({ path: 'policy.slots.r.service.keys.0' })],
    });
    await expect(startSupervisor({ config: { ...configFor(td, { r: slot('roles') }), policy: { slots: { r: { superuser: {} } } } } })).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });
});

describe('read-only slots', () => {
  it('open R/O sessions and refuse generate, import, destroy and SO work with READ_ONLY before the token sees them', async () => {
    sup = await startSupervisor({ config: configFor(td, { ro: slot('readonly', { readOnly: true }) }) });
    expect((await sup.probe({ slot: 'ro' })).state).toBe('RO_USER');
    const calls = (await sup.probe({ slot: 'ro' })).calls;
    await expect(sup.generateKeyPair({ slot: 'ro', algorithm: 'EC-P256', label: 'x' })).rejects.toMatchObject({ code: 'READ_ONLY' });
    await expect(sup.importCertificate({ slot: 'ro', certificate: Buffer.from('x'), id: '01' })).rejects.toMatchObject({ code: 'READ_ONLY' });
    await expect(sup.destroyObject({ slot: 'ro', key: { label: 'rsa' }, force: true })).rejects.toMatchObject({ code: 'READ_ONLY' });
    await expect(sup.login('ro', tokens.readonly!.soPin, { userType: 'so' })).rejects.toMatchObject({ code: 'READ_ONLY' });
    await expect(sup.setPin({ slot: 'ro', oldPin: tokens.readonly!.pin, newPin: 'other' })).rejects.toMatchObject({ code: 'READ_ONLY' });
    const after = (await sup.probe({ slot: 'ro' })).calls;
    expect(after.C_GenerateKeyPair ?? 0).toBe(calls.C_GenerateKeyPair ?? 0);
    expect(after.C_CreateObject ?? 0).toBe(calls.C_CreateObject ?? 0);
    expect(after.C_DestroyObject ?? 0).toBe(calls.C_DestroyObject ?? 0);
    const sig = await sup.sign({ slot: 'ro', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(await verifiesOnNode(sup, 'ro', 'ec', data, sig)).toBe(true);
  });
});
