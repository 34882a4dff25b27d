import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verify } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { startSupervisor, type CallCompletedEvent, type Pkcs11Supervisor } from '../dist/src/index.js';
import { configFor, createToken, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';

setFlagsFromString('--expose_gc');
const gc = runInNewContext('gc') as () => void;

let td: TokenDir;
let tok: TestToken;
const figures: Record<string, unknown> = {};

beforeAll(() => {
  td = tokenDir();
  tok = createToken(td, 'load');
  process.env.LOAD_PIN = tok.pin;
});

afterAll(() => {
  mkdirSync('var', { recursive: true });
  writeFileSync('var/reliability-load.json', JSON.stringify(figures, null, 2));
});

const slots = (queueLimit: number) => ({
  t: { token: { label: 'load' }, pin: { env: 'LOAD_PIN' }, queueLimit },
  p: { type: 'hsm', poolSize: 2, token: { label: 'load' }, pin: { env: 'LOAD_PIN' }, queueLimit },
});

function heapMiB(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed / 2 ** 20;
}

async function burst(sup: Pkcs11Supervisor, n: number) {
  const events: CallCompletedEvent[] = [];
  const listener = (e: CallCompletedEvent) => events.push(e);
  sup.on('callCompleted', listener);
  const settled = new Array<number>(n).fill(0);
  const outcomes = await Promise.all(
    Array.from({ length: n }, (_, i) => {
      const slot = i % 2 === 0 ? 't' : 'p';
      const data = Buffer.from(`call ${i}`);
      return sup.sign({ slot, key: 'ec', mechanism: 'ECDSA-SHA256', data, timeoutMs: 120_000 }).then(
        (sig) => (settled[i]!++, { i, slot, data, sig, code: 'ok' as string }),
        (e: { code: string }) => (settled[i]!++, { i, slot, data, sig: null, code: e.code }),
      );
    }),
  );
  sup.off('callCompleted', listener);
  return { outcomes, settled, events };
}

describe('10,000 calls at once across a token slot and a pool of 2', () => {
  let sup: Pkcs11Supervisor;
  afterAll(() => sup?.close());

  it('past queueLimit exactly QUEUE_FULL; every call settles exactly once; every signature verifies', async () => {
    sup = await startSupervisor({ config: configFor(td, slots(1000)) });
    const { outcomes, settled, events } = await burst(sup, 10_000);
    expect(settled.every((c) => c === 1)).toBe(true);
    expect(events).toHaveLength(10_000);
    const tally = (slot: string, code: string) => outcomes.filter((o) => o.slot === slot && o.code === code).length;
    // A token slot runs 1 call and queues 1000; a pool of 2 runs 2 and queues 1000.
    expect(tally('t', 'ok')).toBe(1001);
    expect(tally('t', 'QUEUE_FULL')).toBe(5000 - 1001);
    expect(tally('p', 'ok')).toBe(1002);
    expect(tally('p', 'QUEUE_FULL')).toBe(5000 - 1002);
    const keys = { t: (await sup.getPublicKey({ slot: 't', key: 'ec' })).keyObject, p: (await sup.getPublicKey({ slot: 'p', key: 'ec' })).keyObject };
    for (const o of outcomes) if (o.sig) expect(verify('sha256', o.data, keys[o.slot as 't' | 'p'], o.sig)).toBe(true);
    expect(sup.status().slots.t!.state).toBe('logged_in');
  });

  it('with room for all of them, all 10,000 sign and verify, none lost, and memory returns to where it was', async () => {
    await sup.close();
    sup = await startSupervisor({ config: configFor(td, slots(10_000)) });
    await sup.sign({ slot: 't', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from('warm') });
    const before = heapMiB();
    const rssBefore = process.memoryUsage().rss / 2 ** 20;
    const t0 = performance.now();
    const { outcomes, settled } = await burst(sup, 10_000);
    const seconds = (performance.now() - t0) / 1000;
    expect(settled.every((c) => c === 1)).toBe(true);
    expect(outcomes.filter((o) => o.code !== 'ok')).toEqual([]);
    const keys = { t: (await sup.getPublicKey({ slot: 't', key: 'ec' })).keyObject, p: (await sup.getPublicKey({ slot: 'p', key: 'ec' })).keyObject };
    let verified = 0;
    for (const o of outcomes) if (verify('sha256', o.data, keys[o.slot as 't' | 'p'], o.sig!)) verified++;
    expect(verified).toBe(10_000);
    outcomes.length = 0;
    const after = heapMiB();
    Object.assign(figures, {
      calls: 10_000,
      resolvedOk: verified,
      lost: 10_000 - settled.filter((c) => c === 1).length,
      seconds: Number(seconds.toFixed(2)),
      callsPerSecond: Math.round(10_000 / seconds),
      heapMiBBefore: Number(before.toFixed(1)),
      heapMiBAfter: Number(after.toFixed(1)),
      rssMiBBefore: Number(rssBefore.toFixed(1)),
      rssMiBAfter: Number((process.memoryUsage().rss / 2 ** 20).toFixed(1)),
    });
    // A small margin: nothing of the burst is kept once its calls are done.
    expect(after - before).toBeLessThan(5);
  });
});
