/**
 * SIGHUP: the daemon reads its config file again and applies what can change without a restart
 * (key refs, policy, allow-lists, deadlines, log level) at once, while calls are in flight; a
 * file that does not load, or that changes what needs a restart, is refused whole and the old
 * config stays. `pkcs11_config_info{hash}` says which config is in force.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verify as nodeVerify } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { pino, type Logger } from 'pino';
import { connect, reloadOnSignal, startDaemon, type Daemon, type Pkcs11Client } from '../dist/src/index.js';
import { Faults, faultConfig } from './support/faults.js';
import { createToken, tokenDir, type TokenDir } from './support/softhsm.js';

let td: TokenDir;
let faults: Faults;
let daemon: Daemon;
let client: Pkcs11Client;
let file: string;
/** The daemon's log lines, parsed: a reload's outcome is logged for the operator. */
const logged: { level: number; msg: string; code?: string }[] = [];
let log: Logger;
const data = Buffer.from('signed across a reload');

/** The config file, with the slot's keys, policy and deadlines as given. */
function write(slot: Record<string, unknown>, extra: Record<string, unknown> = {}): void {
  const base = faultConfig(td, faults, { s: { token: { label: 'reload' }, pin: { env: 'RELOAD_PIN' }, keys: { ec: { label: 'ec', id: '02' } }, ...slot } });
  writeFileSync(file, JSON.stringify({ ...base, metrics: { host: '127.0.0.1', port: 0 }, api: { unix: { path: join(td.dir, 'api.sock') } }, policy: { principals: { local: ['service'] }, slots: { s: { service: { keys: ['ec'] } } } }, ...extra }));
}

async function configHash(): Promise<string> {
  const text = await (await fetch(`${daemon.url}/metrics`)).text();
  return /pkcs11_config_info\{hash="([0-9a-f]+)"\} 1/.exec(text)![1]!;
}

async function reloads(result: string): Promise<number> {
  const text = await (await fetch(`${daemon.url}/metrics`)).text();
  return Number(new RegExp(`pkcs11_config_reloads_total\\{result="${result}"\\} (\\d+)`).exec(text)![1]);
}

beforeAll(async () => {
  td = tokenDir();
  faults = new Faults(td);
  process.env.RELOAD_PIN = createToken(td, 'reload').pin;
  file = join(td.dir, 'config.json');
  write({});
  log = pino({ level: 'info' }, new Writable({ write: (line: Buffer, _enc, done) => (logged.push(JSON.parse(line.toString())), done()) }));
  daemon = await startDaemon(file, log);
  reloadOnSignal(daemon);
  client = connect({ socket: join(td.dir, 'api.sock'), connections: 32 });
});

afterAll(async () => {
  await client?.close();
  await daemon?.stop();
});

describe('SIGHUP', () => {
  it('applies new key refs, policy, allow-lists and deadlines at once; every call in flight completes', async () => {
    const first = await configHash();
    await expect(client.sign({ slot: 's', key: 'rsa', mechanism: 'RSA-PKCS1-SHA256', data })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    faults.set('delay C_Sign 5');
    const inFlight = Array.from({ length: 64 }, () => client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data }));
    write(
      { keys: { ec: { label: 'ec', id: '02' }, rsa: { label: 'rsa', id: '01' } }, allowedMechanisms: ['ECDSA-SHA256', 'RSA-PKCS1-SHA256'], callTimeoutMs: 20_000 },
      { policy: { principals: { local: ['service'] }, slots: { s: { service: { keys: ['ec', 'rsa'] } } } }, log: { level: 'warn' } },
    );
    const reloaded = new Promise<{ ok: boolean; hash: string; reason: string | null }>((resolve) => daemon.sup.once('configReloaded', resolve));
    process.kill(process.pid, 'SIGHUP');
    const outcome = await reloaded;
    expect(outcome).toMatchObject({ ok: true, reason: null });
    const { keyObject } = await client.getPublicKey({ slot: 's', key: 'ec' });
    for (const sig of await Promise.all(inFlight)) expect(nodeVerify('sha256', data, keyObject, sig)).toBe(true);
    faults.clear();

    expect(await configHash()).not.toBe(first);
    expect(await configHash()).toBe(outcome.hash);
    const rsa = await client.sign({ slot: 's', key: 'rsa', mechanism: 'RSA-PKCS1-SHA256', data });
    expect(nodeVerify('sha256', data, (await client.getPublicKey({ slot: 's', key: 'rsa' })).keyObject, rsa)).toBe(true);
    await expect(client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA384', data })).rejects.toMatchObject({ code: 'MECHANISM_NOT_ALLOWED' });
    expect(daemon.sup.config.slots.s!.callTimeoutMs).toBe(20_000);
    expect(daemon.sup.config.log.level).toBe('warn');
    expect(log.level).toBe('warn');
    expect((await client.status().catch((e: { code: string }) => e)) as { code?: string }).toMatchObject({ code: 'FORBIDDEN' });
    expect(await reloads('ok')).toBeGreaterThanOrEqual(1);
  });

  it('refuses a file that does not load, or that changes what needs a restart, whole; the running config stays', async () => {
    const hash = await configHash();
    const refusedBefore = await reloads('refused');
    writeFileSync(file, '{ "modules": ');
    expect(await daemon.reload()).toMatchObject({ ok: false, error: { code: 'CONFIG_INVALID' } });
    // A new pool size and a new key ref together: the pool size needs a restart, so neither is applied.
    write({ type: 'hsm', poolSize: 2, keys: { ec: { label: 'ec', id: '02' }, rsa: { label: 'rsa', id: '01' }, other: { label: 'other' } } });
    const refused = await daemon.reload();
    expect(refused).toMatchObject({ ok: false, error: { code: 'CONFIG_INVALID', issues: expect.arrayContaining([{ path: 'slots.s.type', message: 'changes only with a restart' }, { path: 'slots.s.poolSize', message: 'changes only with a restart' }]) } });
    expect(await configHash()).toBe(hash);
    expect(await reloads('refused')).toBe(refusedBefore + 2);
    expect(logged.filter((l) => l.msg === 'config reload refused; the running config stays').map((l) => [l.level, l.code])).toEqual([[50, 'CONFIG_INVALID'], [50, 'CONFIG_INVALID']]);
    expect(Object.keys(daemon.sup.config.slots.s!.keys)).toEqual(['ec', 'rsa']);
    expect(await client.sign({ slot: 's', key: 'rsa', mechanism: 'RSA-PKCS1-SHA256', data })).toBeInstanceOf(Buffer);
  });
});

describe('idle timeouts', () => {
  it('a new sessionTimeoutMs (which the slot inherits) or a slot idleTimeoutMs applies at once, to the login already held', async () => {
    const keys = { ec: { label: 'ec', id: '02' }, rsa: { label: 'rsa', id: '01' } };
    const policy = { principals: { local: ['service'] }, slots: { s: { service: { keys: ['ec', 'rsa'] } } } };
    const state = () => daemon.sup.snapshot().slots.s!.state;
    await client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(state()).toBe('logged_in');
    // Set while the 5-minute default runs: the login logs out 400 ms after its last call.
    write({ keys, allowedMechanisms: ['ECDSA-SHA256', 'RSA-PKCS1-SHA256'], callTimeoutMs: 20_000 }, { policy, log: { level: 'warn' }, sessionTimeoutMs: 400 });
    expect(await daemon.reload()).toMatchObject({ ok: true });
    await client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    const signed = Date.now();
    await expect.poll(state, { timeout: 3_000, interval: 20 }).toBe('open');
    expect(Date.now() - signed).toBeGreaterThanOrEqual(350);

    // And back to a login kept for good, by the slot's own field.
    write({ keys, allowedMechanisms: ['ECDSA-SHA256', 'RSA-PKCS1-SHA256'], callTimeoutMs: 20_000, idleTimeoutMs: 0 }, { policy, log: { level: 'warn' }, sessionTimeoutMs: 400 });
    expect(await daemon.reload()).toMatchObject({ ok: true });
    await client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    await new Promise((r) => setTimeout(r, 900));
    expect(state()).toBe('logged_in');
  });
});

describe('SIGHUP while the daemon starts', () => {
  it('does not end the process: the file is read again once the slots are open', async () => {
    const early = join(td.dir, 'early');
    const config = join(td.dir, 'early.json');
    const withTimeout = (callTimeoutMs: number) =>
      writeFileSync(config, JSON.stringify({ ...faultConfig(td, faults, { s: { token: { label: 'reload' }, pin: { env: 'RELOAD_PIN' }, keys: { ec: { label: 'ec', id: '02' } }, callTimeoutMs } }), metrics: { host: '127.0.0.1', port: 0 }, api: { unix: { path: `${early}.sock` } }, log: { level: 'info' } }));
    withTimeout(30_000);
    faults.set('delay C_Login 1500'); // the slot's first login: the daemon is still starting
    const child = spawn(process.execPath, ['dist/src/daemon.js', '--config', config], { env: process.env, stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((r) => child.once('exit', r));
    try {
      const lines: { msg?: string; to?: string }[] = [];
      const loggingIn = new Promise<void>((resolve) =>
        createInterface({ input: child.stdout! }).on('line', (l) => {
          lines.push(JSON.parse(l) as { msg?: string; to?: string });
          if (lines.at(-1)!.to === 'logging_in') resolve();
        }),
      );
      await Promise.race([loggingIn, exited]);
      expect(lines.some((l) => l.msg === 'pkcs11-supervisor started')).toBe(false);
      withTimeout(20_000);
      child.kill('SIGHUP');
      for (const until = Date.now() + 15_000; !lines.some((l) => l.msg === 'config reloaded') && child.exitCode === null && child.signalCode === null && Date.now() < until; ) await new Promise((r) => setTimeout(r, 50));
      expect([child.exitCode, child.signalCode]).toEqual([null, null]);
      expect(lines.map((l) => l.msg)).toEqual(expect.arrayContaining(['pkcs11-supervisor started', 'config reloaded']));
      faults.clear();
      const remote = connect({ socket: `${early}.sock` });
      const sig = await remote.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
      expect(nodeVerify('sha256', data, (await remote.getPublicKey({ slot: 's', key: 'ec' })).keyObject, sig)).toBe(true);
      await remote.close();
    } finally {
      faults.clear();
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
    }
  }, 30_000);
});

describe('SIGTERM while the daemon starts', () => {
  it('is kept (PID 1 in a container would lose it): the daemon stops in order once started, exit 0, its socket gone', async () => {
    const sock = join(td.dir, 'stopped-early.sock');
    const config = join(td.dir, 'stopped-early.json');
    writeFileSync(config, JSON.stringify({ ...faultConfig(td, faults, { s: { token: { label: 'reload' }, pin: { env: 'RELOAD_PIN' }, keys: { ec: { label: 'ec', id: '02' } } } }), metrics: { host: '127.0.0.1', port: 0 }, api: { unix: { path: sock } }, log: { level: 'info' } }));
    faults.set('delay C_Login 1500');
    const child = spawn(process.execPath, ['dist/src/daemon.js', '--config', config], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    try {
      const msgs: string[] = [];
      await new Promise<void>((resolve) =>
        createInterface({ input: child.stdout! }).on('line', (l) => {
          const line = JSON.parse(l) as { msg?: string; to?: string };
          msgs.push(line.msg ?? '');
          if (line.to === 'logging_in') resolve();
        }),
      );
      expect(msgs).not.toContain('pkcs11-supervisor started');
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(msgs).toEqual(expect.arrayContaining(['pkcs11-supervisor started', 'pkcs11-supervisor stopped']));
      expect(err).toContain('SIGTERM while starting; stopping once started');
      expect(existsSync(sock)).toBe(false);
    } finally {
      faults.clear();
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }, 30_000);
});
