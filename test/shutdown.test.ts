import { beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createToken, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { Faults, faultConfig } from './support/faults.js';
import { started } from './support/daemon-process.js';
import { connect } from '../dist/src/index.js';

let td: TokenDir;
let tok: TestToken;
let faults: Faults;

beforeAll(() => {
  td = tokenDir();
  tok = createToken(td, 'shut');
  faults = new Faults(td);
});

describe('SIGTERM with calls in flight', () => {
  it('in-flight calls finish, queued ones fail with CLOSED, none hangs, the token ends logged out, exit 0 within the bound', async () => {
    const config = join(td.dir, 'config.json');
    writeFileSync(config, JSON.stringify({ ...faultConfig(td, faults, { t: { token: { label: 'shut' }, pin: { env: 'SHUT_PIN' } } }), metrics: { host: '127.0.0.1', port: 0 } }));
    faults.set('delay C_Sign 100');
    const child = spawn(process.execPath, ['test/fixtures/shutdown-child.mjs', config, '40'], { env: { ...process.env, SHUT_PIN: tok.pin } });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    await new Promise<void>((resolve) => child.stdout.on('data', () => out.includes('ready') && resolve()));
    await new Promise((r) => setTimeout(r, 250)); // a couple of calls done, one in flight, the rest queued
    const t0 = Date.now();
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    const tookMs = Date.now() - t0;
    expect(code).toBe(0);
    expect(tookMs).toBeLessThan(5000);
    const result = JSON.parse(out.split('\n').find((l) => l.startsWith('{'))!);
    expect(result).toMatchObject({ calls: 40, settled: 40, other: [] });
    expect(result.ok).toBeGreaterThanOrEqual(2);
    expect(result.closed).toBeGreaterThanOrEqual(30);
    const counts = faults.counts();
    expect(counts.C_Logout).toBe(1);
    expect(counts.C_Finalize).toBe(1);
  });
});

describe('a log reader that stops reading and goes away', () => {
  it('costs the log, not the process: a note on stderr, the process lives on and exits 0 promptly', async () => {
    const child = spawn(process.execPath, ['test/fixtures/log-exit-child.mjs'], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.pause(); // never read: 2 MB of log lines wait in the socket and in the logger
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    while (!err.includes('logged')) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 200));
    // The reader (a log shipper, journald's socket, `| tee`) goes away with lines unread: the next write fails with ECONNRESET or EPIPE.
    child.stdout.destroy();
    const t0 = Date.now();
    const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running'), 8000))]);
    if (code === 'still running') child.kill('SIGKILL');
    expect(err).toMatch(/the log could not be written to stdout \((ECONNRESET|EPIPE)\); logging stopped/);
    expect(err).toContain('alive');
    expect(code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});

describe('SIGUSR1', () => {
  it('opens no inspector in the daemon (Node would listen on 9229 for any local user): the daemon says so and signs on', async () => {
    const config = join(td.dir, 'usr1.json');
    const sock = join(td.dir, 'usr1.sock');
    writeFileSync(config, JSON.stringify({ ...faultConfig(td, faults, { t: { token: { label: 'shut' }, pin: { env: 'SHUT_PIN' }, lazy: false } }), metrics: { host: '127.0.0.1', port: 0 }, api: { unix: { path: sock } }, log: { level: 'info' } }));
    const child = spawn(process.execPath, ['dist/src/daemon.js', '--config', config], { env: { ...process.env, SHUT_PIN: tok.pin }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    try {
      await started(child);
      child.kill('SIGUSR1');
      for (const until = Date.now() + 5_000; !err.includes('SIGUSR1') && Date.now() < until; ) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 300));
      expect(err).toContain('SIGUSR1 ignored');
      expect(err).not.toMatch(/Debugger listening/);
      expect(child.exitCode).toBeNull();
      const client = connect({ socket: sock });
      await expect(client.sign({ slot: 't', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from('after USR1') })).resolves.toBeInstanceOf(Buffer);
      await client.close();
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  });
});
