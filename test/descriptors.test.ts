/**
 * File descriptors run out (a flood, or another part of the process): a session thread that dies
 * meanwhile, and the module itself, fail; calls get typed errors. Once descriptors are back, an
 * operator's reset() brings the slot back: the module is initialized again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, openSync } from 'node:fs';
import { ERROR_CODES, startSupervisor, type Pkcs11Supervisor } from '../dist/src/index.js';
import { injectWorkerFault } from '../dist/src/testing.js';
import { configFor, createToken, tokenDir, type TokenDir } from './support/softhsm.js';
import { verifiesOnNode } from './support/sign-check.js';

let td: TokenDir;
let sup: Pkcs11Supervisor;
const data = Buffer.from('signed before, during and after a descriptor shortage');

beforeAll(async () => {
  td = tokenDir();
  process.env.FD_PIN = createToken(td, 'fds').pin;
  process.env.PKCS11_SUPERVISOR_FAULTS = '1';
  sup = await startSupervisor({ config: configFor(td, { s: { token: { label: 'fds' }, pin: { env: 'FD_PIN' }, restart: { maxRestarts: 3, windowMs: 60_000, backoffInitialMs: 20, backoffMaxMs: 50 } } }) });
});

afterAll(() => sup?.close());

/** Takes every descriptor the process may still open, as a flood of connections would. */
function takeAllDescriptors(): number[] {
  const taken: number[] = [];
  for (;;) {
    try {
      taken.push(openSync('/dev/null', 'r'));
    } catch {
      return taken;
    }
  }
}

describe('a descriptor shortage', () => {
  it('a worker that dies while no descriptor is free fails typed; once they are back, reset() makes the slot sign again with the right key', async () => {
    expect(await verifiesOnNode(sup, 's', 'ec', data, await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data }))).toBe(true);
    await injectWorkerFault(sup, 's', 0, { kind: 'exit' }).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 20)); // the thread is gone, and its descriptors free
    const taken = takeAllDescriptors();
    let during: unknown;
    try {
      await new Promise((r) => setTimeout(r, 500)); // restarts meanwhile find no descriptor
      during = await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, timeoutMs: 300 }).then(() => 'signed', (e: { code?: string }) => e.code);
    } finally {
      for (const fd of taken) closeSync(fd);
    }
    expect(taken.length).toBeGreaterThan(0);
    // Whatever the module makes of it (SoftHSM2 cannot open its object files: KEY_NOT_FOUND), a typed answer.
    expect(['signed', ...ERROR_CODES]).toContain(during);

    // The operator's reset: the module is initialized again (SoftHSM2 lost its objects while it
    // could open no file, and a new session does not bring them back).
    sup.reset('s');
    const until = Date.now() + 15_000;
    let sig: Buffer | null = null;
    while (!sig && Date.now() < until) {
      sig = await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, timeoutMs: 2000 }).catch(() => null);
      if (!sig) await new Promise((r) => setTimeout(r, 200));
    }
    expect(sig).not.toBeNull();
    expect(await verifiesOnNode(sup, 's', 'ec', data, sig!)).toBe(true);
    expect(sup.status().slots.s!.state).toBe('logged_in');
  });
});
