/**
 * A token deleted and created again by another process, under a module that lists its tokens
 * once per initialization (SoftHSM2): the slot comes back within its restart policy (the module
 * is reset), an operator's reset() brings back a slot that had failed, and a slot on another
 * token of the same module keeps working throughout.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { startSupervisor, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, pkcs11Tool, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { exportPublicKey, opensslVerifies } from './support/openssl.js';

let td: TokenDir;
let a: TestToken;
let b: TestToken;
let sup: Pkcs11Supervisor | undefined;
const data = Buffer.from('signed across a token deleted and made again');

beforeAll(() => {
  td = tokenDir();
  a = createToken(td, 'rec-a');
  b = createToken(td, 'rec-b');
  process.env.REC_A_PIN = a.pin;
  process.env.REC_B_PIN = b.pin;
});

afterEach(async () => {
  await sup?.close();
  sup = undefined;
});

function recreateA(): void {
  execFileSync('softhsm2-util', ['--delete-token', '--token', 'rec-a'], { env: td.env, stdio: 'pipe' });
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'rec-a', '--so-pin', a.soPin, '--pin', a.pin], { env: td.env, stdio: 'pipe' });
  pkcs11Tool(td, 'rec-a', a.pin, ['--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'ec', '--id', '02', '--usage-sign']);
}

const sign = (s: Pkcs11Supervisor, slot: string) => s.sign({ slot, key: 'ec', mechanism: 'ECDSA-SHA256', data });

async function signWithin(s: Pkcs11Supervisor, slot: string, ms: number): Promise<Buffer> {
  const until = Date.now() + ms;
  for (;;) {
    try {
      return await sign(s, slot);
    } catch (e) {
      if (Date.now() > until) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

const slots = (restart: Record<string, number> = {}) =>
  configFor(td, {
    a: { token: { label: 'rec-a' }, pin: { env: 'REC_A_PIN' }, restart: { maxRestarts: 5, windowMs: 60_000, backoffInitialMs: 50, backoffMaxMs: 400, ...restart } },
    b: { token: { label: 'rec-b' }, pin: { env: 'REC_B_PIN' }, lazy: true },
  });

describe('a token deleted and created again', () => {
  it('the slot recovers by itself and signs with the new key; a lazy slot on the other token is unaffected', async () => {
    sup = await startSupervisor({ config: slots() });
    await sign(sup, 'a');
    recreateA();
    const bSig = await sign(sup, 'b');
    expect(opensslVerifies(exportPublicKey(td, 'rec-b', '02'), 'ECDSA-SHA256', data, bSig)).toBe(true);
    const aSig = await signWithin(sup, 'a', 10_000);
    expect(opensslVerifies(exportPublicKey(td, 'rec-a', '02'), 'ECDSA-SHA256', data, aSig)).toBe(true);
    expect(opensslVerifies(exportPublicKey(td, 'rec-b', '02'), 'ECDSA-SHA256', data, await sign(sup, 'b'))).toBe(true);
  });

  it('reset() asked for in a loop resets the module at most once a second, and every slot on it keeps signing', async () => {
    sup = await startSupervisor({ config: slots() });
    const resets: unknown[] = [];
    sup.on('moduleReset', (e) => resets.push(e));
    // Signatures are checked after the loop: OpenSSL and pkcs11-tool in it cost a loaded machine
    // more time than the signatures, and the loop is about the supervisor.
    const sigs: Record<'a' | 'b', Buffer[]> = { a: [], b: [] };
    const until = Date.now() + 3_000;
    const signing = (slot: 'a' | 'b') =>
      (async () => {
        while (Date.now() < until) {
          const sig = await sign(sup!, slot).catch(() => null);
          if (sig) sigs[slot].push(sig);
        }
      })();
    const spam = (async () => {
      // An operator's script (or a caller over the socket with the role) resetting in a loop.
      while (Date.now() < until) {
        sup!.reset('a');
        await new Promise((r) => setImmediate(r));
      }
    })();
    await Promise.all([signing('a'), signing('b'), spam]);
    expect(resets.length).toBeGreaterThanOrEqual(1);
    expect(resets.length).toBeLessThanOrEqual(4);
    for (const slot of ['a', 'b'] as const) {
      expect(sigs[slot].length, slot).toBeGreaterThan(10);
      const pub = exportPublicKey(td, `rec-${slot}`, '02');
      // A sample of 20 across the run, each through OpenSSL, verifies with the key the token holds.
      for (const sig of sigs[slot].filter((_, i) => i % Math.ceil(sigs[slot].length / 20) === 0)) expect(opensslVerifies(pub, 'ECDSA-SHA256', data, sig)).toBe(true);
    }
  });

  it('a slot that failed meanwhile is brought back by reset()', async () => {
    sup = await startSupervisor({ config: slots({ maxRestarts: 0 }) });
    await sign(sup, 'a');
    execFileSync('softhsm2-util', ['--delete-token', '--token', 'rec-a'], { env: td.env, stdio: 'pipe' });
    await expect(sign(sup, 'a')).rejects.toMatchObject({ slot: 'a' });
    const until = Date.now() + 5_000;
    while (sup.status().slots.a!.state !== 'failed' && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    expect(sup.status().slots.a!.state).toBe('failed');
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'rec-a', '--so-pin', a.soPin, '--pin', a.pin], { env: td.env, stdio: 'pipe' });
    pkcs11Tool(td, 'rec-a', a.pin, ['--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'ec', '--id', '02', '--usage-sign']);
    sup.reset('a');
    const aSig = await signWithin(sup, 'a', 10_000);
    expect(opensslVerifies(exportPublicKey(td, 'rec-a', '02'), 'ECDSA-SHA256', data, aSig)).toBe(true);
  });
});
