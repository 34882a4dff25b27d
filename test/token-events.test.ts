/**
 * Tokens inserted and removed, noticed through the module's C_WaitForSlotEvent on a thread of
 * its own, with session polling off; the probe interval where the module has no events. The
 * fault module stands in for a card reader: its wait returns when its `removed` rule comes or
 * goes, and when C_Finalize is called.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSupervisor, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { Faults, faultConfig } from './support/faults.js';
import { verifiesOnNode } from './support/sign-check.js';

let td: TokenDir;
let tok: TestToken;
let faults: Faults;
let sup: Pkcs11Supervisor | undefined;
const data = Buffer.from('inserted, removed, inserted');

beforeAll(() => {
  td = tokenDir();
  tok = createToken(td, 'events');
  faults = new Faults(td);
  process.env.EV_PIN = tok.pin;
});

afterEach(async () => {
  faults.clear();
  await sup?.close();
  sup = undefined;
});

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`not reached within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const slot = (extra: Record<string, unknown> = {}) => ({
  token: { label: 'events' },
  pin: { env: 'EV_PIN' },
  // No restart for a token that is gone: the slot fails, and only an insertion brings it back.
  restart: { maxRestarts: 0, windowMs: 60_000, backoffInitialMs: 10, backoffMaxMs: 10 },
  ...extra,
});
/** Serving again: open, logging in with the next call (as after any module reset), or logged in. */
const serving = (s: Pkcs11Supervisor) => ['open', 'logged_in'].includes(s.status().slots.t!.state);
const sign = (s: Pkcs11Supervisor) => s.sign({ slot: 't', key: 'ec', mechanism: 'ECDSA-SHA256', data });

describe('token events (C_WaitForSlotEvent)', () => {
  it('with polling off, a removal fails the slot without any call, and the insertion brings it back, each through the module event', async () => {
    faults.set('slotevents');
    sup = await startSupervisor({ config: faultConfig(td, faults, { t: slot({ probeIntervalMs: 0 }) }) });
    const events: string[] = [];
    sup.on('slotEvent', (e) => events.push(e.slotId));
    await until(() => (faults.counts().C_WaitForSlotEvent ?? 0) >= 1, 'the event thread waits');
    expect(sup.status().slots.t!.tokenEvents).toBe('events');
    expect(await verifiesOnNode(sup, 't', 'ec', data, await sign(sup))).toBe(true);

    // Polling off: an idle slot asks the token nothing.
    const idle = faults.counts();
    await sleep(500);
    expect(faults.counts().C_GetSessionInfo).toBe(idle.C_GetSessionInfo);

    faults.set('slotevents', 'removed');
    await until(() => sup!.status().slots.t!.state === 'failed', 'the slot fails on removal');
    expect(events.length).toBe(1);
    await expect(sign(sup)).rejects.toMatchObject({ code: 'SLOT_FAILED' });

    faults.set('slotevents');
    await until(() => serving(sup!), 'the slot is back on insertion');
    expect(events.length).toBe(2);
    expect(await verifiesOnNode(sup, 't', 'ec', data, await sign(sup))).toBe(true);
  });

  it('the wait survives a module reset (C_Finalize ends it, it waits again), and close() does not wait for it', async () => {
    faults.set('slotevents');
    sup = await startSupervisor({ config: faultConfig(td, faults, { t: slot({ probeIntervalMs: 0 }) }) });
    await until(() => (faults.counts().C_WaitForSlotEvent ?? 0) >= 1, 'the event thread waits');
    const before = faults.counts();
    sup.reset('t');
    await until(() => (faults.counts().C_Finalize ?? 0) > (before.C_Finalize ?? 0) && serving(sup!), 'the module is reset and the slot back');
    await until(() => (faults.counts().C_WaitForSlotEvent ?? 0) > before.C_WaitForSlotEvent!, 'the event thread waits again');
    expect(sup.status().slots.t!.tokenEvents).toBe('events');
    await sign(sup);

    faults.set('slotevents', 'removed');
    await until(() => sup!.status().slots.t!.state === 'failed', 'a removal after the reset is still noticed');
    faults.set('slotevents');
    await until(() => serving(sup!), 'and the insertion');

    const t0 = Date.now();
    await sup.close();
    sup = undefined;
    expect(Date.now() - t0).toBeLessThan(5_000);
  });

  it('a module without blocking events (SoftHSM2) is polled at the probe interval; polling can be turned off; events can be turned off per module', async () => {
    sup = await startSupervisor({ config: configFor(td, { t: slot({ probeIntervalMs: 100 }), quiet: slot({ probeIntervalMs: 0 }) }) });
    await until(() => sup!.status().slots.t!.tokenEvents === 'polling', 'SoftHSM2 says it has no blocking C_WaitForSlotEvent');
    expect(sup.status().slots.quiet!.tokenEvents).toBe('none');
    await sup.close();

    const cfg = faultConfig(td, faults, { t: slot() });
    (cfg.modules.fault as Record<string, unknown>).slotEvents = false;
    faults.set('slotevents');
    sup = await startSupervisor({ config: cfg });
    const waits = faults.counts().C_WaitForSlotEvent ?? 0;
    await sleep(300);
    expect(faults.counts().C_WaitForSlotEvent ?? 0).toBe(waits);
    expect(sup.status().slots.t!.tokenEvents).toBe('polling');
  });
});
