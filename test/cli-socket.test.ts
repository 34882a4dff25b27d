/**
 * The CLI next to a running daemon: with a socket in the config it is the daemon's client, so
 * it signs with the daemon's login (no PIN anywhere in its environment, no terminal to ask
 * on) and leaves no second session or login on the token; `--direct` opens the token itself
 * and needs the PIN.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, type Daemon } from '../dist/src/index.js';
import { Faults, faultConfig } from './support/faults.js';
import { exportPublicKey, opensslVerifies } from './support/openssl.js';
import { createToken, tokenDir, type TokenDir } from './support/softhsm.js';

let td: TokenDir;
let faults: Faults;
let daemon: Daemon;
let configFile: string;
const data = Buffer.from('signed from a shell, through the daemon');

/** Async: the daemon answering it lives in this process. The PIN variable is removed from the CLI's environment. */
function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const env = { ...process.env };
  delete env.CLISOCK_PIN;
  return new Promise((resolve) => {
    execFile(process.execPath, ['dist/src/cli.js', '--config', configFile, ...args], { env, encoding: 'utf8' }, (e, out, err) => resolve({ code: e ? Number(e.code) : 0, out, err }));
  });
}

beforeAll(async () => {
  td = tokenDir();
  faults = new Faults(td);
  process.env.CLISOCK_PIN = createToken(td, 'clisock').pin;
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

  it('a socket with no daemon behind it is a typed error that names --direct', async () => {
    const r = await cli(['--socket', join(td.dir, 'nothing.sock'), 'status']);
    expect(r.code).toBe(3);
    expect(r.err).toMatch(/\[CLOSED\].*--direct/);
  });
});
