/**
 * The CLI next to a running daemon: with a socket in the config it is the daemon's client, so
 * it signs with the daemon's login (no PIN anywhere in its environment, no terminal to ask
 * on) and leaves no second session or login on the token; `--direct` opens the token itself
 * and needs the PIN.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, type Daemon, type LoginEvent } from '../dist/src/index.js';
import { started } from './support/daemon-process.js';
import { Faults, faultConfig } from './support/faults.js';
import { exportPublicKey, opensslVerifies } from './support/openssl.js';
import { createToken, pkcs11Tool, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';

let td: TokenDir;
let faults: Faults;
let daemon: Daemon;
let configFile: string;
let token: TestToken;
const data = Buffer.from('signed from a shell, through the daemon');

/**
 * Async: the daemon answering it lives in this process. The PIN variable is removed from the
 * CLI's environment. `where.cwd` without `--config`: only PKCS11_SUPERVISOR_CONFIG names one.
 */
function cli(args: string[], extra: NodeJS.ProcessEnv = {}, where: { cwd?: string } = {}): Promise<{ code: number; out: string; err: string }> {
  const env = { ...process.env, ...extra };
  delete env.CLISOCK_PIN;
  const config = where.cwd === undefined ? ['--config', configFile] : [];
  return new Promise((resolve) => {
    execFile(process.execPath, [join(process.cwd(), 'dist/src/cli.js'), ...config, ...args], { env, cwd: where.cwd, encoding: 'utf8' }, (e, out, err) => resolve({ code: e ? Number(e.code) : 0, out, err }));
  });
}

beforeAll(async () => {
  td = tokenDir();
  faults = new Faults(td);
  token = createToken(td, 'clisock');
  process.env.CLISOCK_PIN = token.pin;
  configFile = join(td.dir, 'config.json');
  writeFileSync(configFile, JSON.stringify({ ...faultConfig(td, faults, { s: { token: { label: 'clisock' }, pin: { env: 'CLISOCK_PIN' } } }), api: { unix: { path: join(td.dir, 'api.sock') } } }));
  daemon = await startDaemon(configFile);
});

afterAll(() => daemon?.stop());

describe('the CLI uses the daemon by default', () => {
  it('signs through the socket without a PIN, one login and one session on the token; OpenSSL verifies', async () => {
    const before = faults.counts();
    const input = join(td.dir, 'in.txt');
    const sigFile = join(td.dir, 'sig.der');
    writeFileSync(input, data);
    const r = await cli(['sign', '--slot', 's', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', input, '--out', sigFile]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(opensslVerifies(exportPublicKey(td, 'clisock', '02'), 'ECDSA-SHA256', data, readFileSync(sigFile))).toBe(true);
    const after = faults.counts();
    expect(after.C_Login ?? 0).toBe(before.C_Login ?? 0);
    expect(after.C_OpenSession ?? 0).toBe(before.C_OpenSession ?? 0);
    expect(JSON.parse((await cli(['status'])).out).slots.s.state).toBe('logged_in');
  });

  it('--direct opens the token in its own process, and without the PIN it cannot sign', async () => {
    const input = join(td.dir, 'in.txt');
    const r = await cli(['--direct', 'sign', '--slot', 's', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', input]);
    expect(r.code).toBe(3);
    expect(r.err).toMatch(/PIN/);
  });

  it('--as is refused over the socket: the daemon decides who the socket is', async () => {
    const r = await cli(['--as', 'alice:operator', 'status']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--as needs --direct/);
  });

  it('without --config it reads PKCS11_SUPERVISOR_CONFIG, as the container entry runs the daemon with; --config still wins', async () => {
    // Run where there is no config/default.json: only the variable can name the config.
    const run = (args: string[], env: NodeJS.ProcessEnv) => cli(args, env, { cwd: td.dir });
    const viaEnv = await run(['status'], { PKCS11_SUPERVISOR_CONFIG: configFile });
    expect([viaEnv.code, viaEnv.err]).toEqual([0, '']);
    expect(JSON.parse(viaEnv.out).slots.s.state).toBe('logged_in');
    expect((await run(['--config', configFile, 'status'], { PKCS11_SUPERVISOR_CONFIG: join(td.dir, 'absent.json') })).code).toBe(0);
    expect(await run(['status'], { PKCS11_SUPERVISOR_CONFIG: join(td.dir, 'absent.json') })).toMatchObject({ code: 3, err: expect.stringContaining('absent.json') });
  });

  it('a socket with no daemon behind it is a typed error that names --direct', async () => {
    const r = await cli(['--socket', join(td.dir, 'nothing.sock'), 'status']);
    expect(r.code).toBe(3);
    expect(r.err).toMatch(/\[CLOSED\].*--direct/);
  });
});

describe('PINs from the shell', () => {
  const sign = (extra: NodeJS.ProcessEnv = {}) => cli(['sign', '--slot', 's', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', join(td.dir, 'in.txt')], extra);
  // The daemon's own count: the fault module's counts file is shared with the CLI processes of --direct.
  const logins = async () => (await daemon.sup.probe({ slot: 's' })).calls.C_Login ?? 0;

  it("pin change, pin init, logout and login act on the daemon's sessions with PINs from the variables named; the daemon signs on without its source's old PIN costing a try", async () => {
    writeFileSync(join(td.dir, 'in.txt'), data);
    const userLogins: LoginEvent[] = [];
    daemon.sup.on('login', (e: LoginEvent) => {
      if (e.userType === 'user') userLogins.push(e);
    });
    // A variable read from a file keeps its final newline; the PIN set is the one without it.
    const changed = await cli(['pin', 'change', '--slot', 's', '--pin-env', 'OLD', '--new-pin-env', 'NEW'], { OLD: token.pin, NEW: 'cli-new-1\n' });
    expect([changed.code, changed.err]).toEqual([0, `the user PIN of slot "s" is changed; put it in the slot's PIN source before the daemon restarts\n`]);
    expect(pkcs11Tool(td, 'clisock', 'cli-new-1', ['--list-objects', '--type', 'privkey'])).toContain('label:      ec');

    // The daemon's env source still holds the old PIN: the re-login after a logout uses the new one, once.
    expect((await cli(['logout', '--slot', 's'])).code).toBe(0);
    const before = await logins();
    expect((await sign()).code).toBe(0);
    expect((await logins()) - before).toBe(1);
    expect(JSON.parse((await cli(['status'])).out).slots.s).toMatchObject({ state: 'logged_in', userPin: 'ok' });

    const init = await cli(['pin', 'init', '--slot', 's', '--so-pin-env', 'SO', '--new-pin-env', 'NEW'], { SO: token.soPin, NEW: 'cli-new-2' });
    expect([init.code, init.err]).toEqual([0, `the user PIN of slot "s" is set; put it in the slot's PIN source before the daemon restarts\n`]);
    const signed = await sign();
    expect(signed.code).toBe(0);
    expect(opensslVerifies(exportPublicKey(td, 'clisock', '02'), 'ECDSA-SHA256', data, Buffer.from(signed.out.trim(), 'base64'))).toBe(true);
    expect(JSON.parse((await cli(['status'])).out).slots.s).toMatchObject({ state: 'logged_in', userPin: 'ok' });

    // A wrong SO PIN leaves no Security Officer session behind.
    const wrong = await cli(['pin', 'init', '--slot', 's', '--so-pin-env', 'SO', '--new-pin-env', 'NEW'], { SO: 'not-the-so-pin', NEW: 'cli-new-3' });
    expect([wrong.code, wrong.err]).toEqual([3, expect.stringMatching(/^pkcs11-supervisor: \[PIN_INCORRECT\]/)]);
    expect((await sign()).code).toBe(0);

    expect((await cli(['logout', '--slot', 's'])).code).toBe(0);
    expect((await cli(['login', '--slot', 's', '--pin-env', 'P'], { P: 'cli-new-2\r\n' })).code).toBe(0);
    expect(JSON.parse((await cli(['status'])).out).slots.s.state).toBe('logged_in');

    // Back to the PIN the daemon's source holds, and the SO PIN changed and back, each with --so.
    expect((await cli(['pin', 'change', '--slot', 's', '--pin-env', 'OLD', '--new-pin-env', 'NEW'], { OLD: 'cli-new-2', NEW: token.pin })).code).toBe(0);
    expect((await cli(['pin', 'change', '--slot', 's', '--so', '--so-pin-env', 'OLD', '--new-pin-env', 'NEW'], { OLD: token.soPin, NEW: 'so-new-1' })).code).toBe(0);
    expect(() => pkcs11Tool(td, 'clisock', null, ['--session-rw', '--login', '--login-type', 'so', '--so-pin', token.soPin, '--list-objects'])).toThrow(/CKR_PIN_INCORRECT/);
    expect((await cli(['pin', 'change', '--slot', 's', '--so', '--so-pin-env', 'OLD', '--new-pin-env', 'NEW'], { OLD: 'so-new-1', NEW: token.soPin })).code).toBe(0);
    expect((await sign()).code).toBe(0);
    expect(userLogins.length).toBeGreaterThanOrEqual(3);
    expect(userLogins.filter((e) => e.outcome !== 'ok')).toEqual([]);
  });

  it('a PIN is never an argument: a variable that is not set, or no variable and no terminal, is a usage error (2) and nothing reaches the token', async () => {
    const before = faults.counts();
    expect(await cli(['login', '--slot', 's', '--pin-env', 'NOT_SET_ANYWHERE'])).toMatchObject({ code: 2, err: expect.stringContaining('--pin-env NOT_SET_ANYWHERE: the variable NOT_SET_ANYWHERE is not set') });
    expect(await cli(['login', '--slot', 's'])).toMatchObject({ code: 2, err: expect.stringContaining('comes from --pin-env VAR or a terminal prompt') });
    expect(await cli(['pin', 'init', '--slot', 's', '--new-pin-env', 'N'], { N: 'x' })).toMatchObject({ code: 2, err: expect.stringContaining('--so-pin-env VAR') });
    expect(await cli(['pin', 'change', '--slot', 's', '--pin', '1234'])).toMatchObject({ code: 2 });
    const after = faults.counts();
    for (const fn of ['C_Login', 'C_SetPIN', 'C_InitPIN']) expect(after[fn] ?? 0, fn).toBe(before[fn] ?? 0);
  });
});

describe('a failed slot, from the shell', () => {
  it('reset brings it back and probes it: exit 3 with the reason while the token is still away, then 0, logged in, and it signs; OpenSSL verifies', async () => {
    const socket = join(td.dir, 'failing.sock');
    const file = join(td.dir, 'failing.json');
    const restart = { maxRestarts: 1, windowMs: 60_000, backoffInitialMs: 10, backoffMaxMs: 20 };
    writeFileSync(file, JSON.stringify({ ...faultConfig(td, faults, { s: { token: { label: 'clisock' }, pin: { env: 'CLISOCK_PIN' }, restart } }), log: { level: 'info' }, api: { unix: { path: socket } } }));
    // A process of its own, as a daemon is: a module reset finalizes the module for its whole process.
    const failing = spawn(process.execPath, ['dist/src/daemon.js', '--config', file], { env: process.env, stdio: ['ignore', 'pipe', 'ignore'] });
    await started(failing);
    const at = (args: string[]) => cli(['--socket', socket, ...args]);
    const input = join(td.dir, 'failing.txt');
    writeFileSync(input, data);
    try {
      faults.set('fail C_OpenSession every CKR_TOKEN_NOT_PRESENT', 'fail C_Sign every CKR_SESSION_HANDLE_INVALID');
      await at(['sign', '--slot', 's', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', input]);
      await expect.poll(async () => JSON.parse((await at(['status'])).out).slots.s.state, { timeout: 10_000, interval: 200 }).toBe('failed');
      expect(await at(['sign', '--slot', 's', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', input])).toMatchObject({ code: 3, err: expect.stringContaining('[SLOT_FAILED]') });

      const still = await at(['reset', '--slot', 's']);
      expect([still.code, still.err]).toEqual([3, expect.stringMatching(/^pkcs11-supervisor: \[(TOKEN_NOT_FOUND|SLOT_FAILED)\]/)]);

      faults.clear();
      const back = await at(['reset', '--slot', 's']);
      expect([back.code, back.err]).toEqual([0, '']);
      expect(JSON.parse(back.out)).toMatchObject({ tokenLabel: 'clisock', userPin: 'ok' });
      const signed = await at(['sign', '--slot', 's', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', input]);
      expect(signed.code).toBe(0);
      expect(opensslVerifies(exportPublicKey(td, 'clisock', '02'), 'ECDSA-SHA256', data, Buffer.from(signed.out.trim(), 'base64'))).toBe(true);
      expect(JSON.parse((await at(['probe', '--slot', 's'])).out)).toMatchObject({ tokenLabel: 'clisock', userPin: 'ok' });
    } finally {
      faults.clear();
      failing.kill('SIGTERM');
      await new Promise((r) => failing.once('exit', r));
    }
  });
});
