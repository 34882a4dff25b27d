import { constants, verify } from 'node:crypto';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSupervisor, type Pkcs11Supervisor, type CallCompletedEvent } from '../dist/src/index.js';
import { configFor, createToken, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { verifiesOnNode } from './support/sign-check.js';
import { injectWorkerFault } from '../dist/src/testing.js';

let td: TokenDir;
let tok: TestToken;
let sup: Pkcs11Supervisor | undefined;

beforeAll(() => {
  td = tokenDir();
  tok = createToken(td, 'router');
  process.env.TEST_PIN = tok.pin;
});

afterEach(async () => {
  await sup?.close();
  sup = undefined;
});

const sign = (s: Pkcs11Supervisor, slot: string, i: number, extra: Record<string, unknown> = {}) =>
  s.sign({ slot, key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from(`doc ${i}`), ...extra });

describe('token slot mailbox', () => {
  it('runs exactly one call at a time on the token, in arrival order', async () => {
    sup = await startSupervisor({ config: configFor(td, { t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' } } }) });
    const events: CallCompletedEvent[] = [];
    sup.on('callCompleted', (e: CallCompletedEvent) => events.push(e));
    const order: number[] = [];
    const sigs = await Promise.all(Array.from({ length: 60 }, (_, i) => sign(sup!, 't', i).then((sig) => (order.push(i), sig))));
    expect(order).toEqual(Array.from({ length: 60 }, (_, i) => i));
    expect(events).toHaveLength(60);
    // Intervals measured inside the worker thread never overlap, and run in arrival order.
    const spans = events.map((e) => [e.startedAt!, e.endedAt!] as const);
    for (let i = 1; i < spans.length; i++) expect(spans[i]![0]).toBeGreaterThanOrEqual(spans[i - 1]![1]);
    // The status says how they were batched: all 60 calls handed over, in fewer messages (the first alone, the rest queued behind it).
    const { handed } = sup.status().slots.t!.workers[0]!;
    expect(handed.calls).toBe(60);
    expect(handed.messages).toBeGreaterThan(1);
    expect(handed.messages).toBeLessThan(60);
    expect(await verifiesOnNode(sup, 't', 'ec', Buffer.from('doc 59'), sigs[59]!)).toBe(true);
  });

  it('refuses calls past queueLimit with QUEUE_FULL; the accepted ones all complete', async () => {
    process.env.PKCS11_SUPERVISOR_FAULTS = '1';
    sup = await startSupervisor({ config: configFor(td, { t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' }, queueLimit: 5 } }) });
    const blocked = injectWorkerFault(sup, 't', 0, { kind: 'block', ms: 500 });
    // The first call goes to the (busy) worker; five wait in the mailbox; the rest are refused.
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => sign(sup!, 't', i)));
    await blocked;
    expect(results.map((r) => r.status)).toEqual([...Array(6).fill('fulfilled'), ...Array(4).fill('rejected')]);
    for (const r of results.slice(6)) expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'QUEUE_FULL', slot: 't' });
  });

  it('a queued call past its deadline gets TIMEOUT and never reaches the token', async () => {
    process.env.PKCS11_SUPERVISOR_FAULTS = '1';
    sup = await startSupervisor({ config: configFor(td, { t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' } } }) });
    const signsBefore = (await sup.probe({ slot: 't' })).calls.C_Sign ?? 0;
    const blocked = injectWorkerFault(sup, 't', 0, { kind: 'block', ms: 600 });
    const running = sign(sup, 't', 1); // takes the worker, waits behind the block
    const t0 = Date.now();
    await expect(sign(sup, 't', 2, { timeoutMs: 150 })).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(Date.now() - t0).toBeLessThan(500);
    await blocked;
    await running;
    expect((await sup.probe({ slot: 't' })).calls.C_Sign).toBe(signsBefore + 1);
  });

  it('an aborted call that has not started never reaches the token; an aborted signal is refused at once', async () => {
    process.env.PKCS11_SUPERVISOR_FAULTS = '1';
    sup = await startSupervisor({ config: configFor(td, { t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' } } }) });
    const signsBefore = (await sup.probe({ slot: 't' })).calls.C_Sign ?? 0;
    const blocked = injectWorkerFault(sup, 't', 0, { kind: 'block', ms: 400 });
    const running = sign(sup, 't', 1);
    const ac = new AbortController();
    const queued = sign(sup, 't', 2, { signal: ac.signal });
    ac.abort();
    await expect(queued).rejects.toMatchObject({ code: 'ABORTED' });
    await expect(sign(sup, 't', 3, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ABORTED' });
    await blocked;
    await running;
    expect((await sup.probe({ slot: 't' })).calls.C_Sign).toBe(signsBefore + 1);
    expect(sup.status().slots.t!.queued).toBe(0);
  });

  it('close fails queued calls with CLOSED, lets the running one finish, and logs the token out', async () => {
    process.env.PKCS11_SUPERVISOR_FAULTS = '1';
    const s = await startSupervisor({ config: configFor(td, { t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' } } }) });
    const transitions: string[] = [];
    s.on('stateChange', (e) => transitions.push(`${e.from}>${e.to}`));
    void injectWorkerFault(s, 't', 0, { kind: 'block', ms: 300 });
    const running = sign(s, 't', 1);
    const queued = Promise.allSettled([sign(s, 't', 2), sign(s, 't', 3)]);
    await s.close();
    await expect(running).resolves.toBeInstanceOf(Buffer);
    for (const q of await queued) expect(q).toMatchObject({ status: 'rejected', reason: { code: 'CLOSED' } });
    expect(transitions).toEqual(['logged_in>logging_out', 'logging_out>open', 'open>closing', 'closing>closed']);
    await expect(sign(s, 't', 4)).rejects.toMatchObject({ code: 'CLOSED' });
  });
});

describe('batches', () => {
  it('a burst mixing keys, mechanisms and a missing key: each call gets its own answer, in one batch or many', async () => {
    sup = await startSupervisor({ config: configFor(td, { t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' } } }) });
    const first = sign(sup, 't', 0); // on the worker: the burst queues behind it and goes in batches
    const burst = Array.from({ length: 60 }, (_, i) => {
      const data = Buffer.from(`doc ${i}`);
      const call =
        i % 3 === 0
          ? sup!.sign({ slot: 't', key: 'rsa', mechanism: 'RSA-PSS-SHA256', data })
          : i % 3 === 1
            ? sup!.sign({ slot: 't', key: { label: 'no such key' }, mechanism: 'ECDSA-SHA256', data })
            : sup!.sign({ slot: 't', key: 'ec', mechanism: 'ECDSA-SHA256', data, signatureFormat: 'raw' });
      return call.then((sig) => ({ i, data, sig }), (e: { code: string }) => ({ i, code: e.code }));
    });
    const results = await Promise.all(burst);
    for (const r of results) {
      if (r.i % 3 === 1) expect(r).toMatchObject({ code: 'KEY_NOT_FOUND' });
      else {
        expect('sig' in r && r.sig.length).toBe(r.i % 3 === 0 ? 256 : 64);
        const { keyObject } = await sup.getPublicKey({ slot: 't', key: r.i % 3 === 0 ? 'rsa' : 'ec' });
        const options = r.i % 3 === 0 ? { padding: constants.RSA_PKCS1_PSS_PADDING } : { dsaEncoding: 'ieee-p1363' as const };
        expect(verify('sha256', (r as { data: Buffer }).data, { key: keyObject, ...options }, (r as { sig: Buffer }).sig)).toBe(true);
      }
    }
    await first;
    expect(sup.status().slots.t!.state).toBe('logged_in');
  });

  it('large inputs queued together: every signature is over its own caller\'s bytes, whatever the batches add up to', async () => {
    process.env.PKCS11_SUPERVISOR_FAULTS = '1';
    const MiB = 1024 * 1024;
    sup = await startSupervisor({ config: configFor(td, { t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' }, maxDataBytes: 8 * MiB } }) });
    const { keyObject } = await sup.getPublicKey({ slot: 't', key: 'ec' });
    const blocked = injectWorkerFault(sup, 't', 0, { kind: 'block', ms: 300 }); // everything below queues, then goes in batches
    // Distinct bytes per call, big and small mixed: 40 MiB in all, forty times a batch's budget.
    const inputs = Array.from({ length: 48 }, (_, i) => {
      const data = Buffer.alloc(i % 4 === 0 ? 64 : (i % 3) * 2 * MiB + 256 * 1024);
      for (let k = 0; k < data.length; k += 4096) data.writeUInt32BE(i * 1_000_003 + k, k);
      return data;
    });
    const sigs = await Promise.all(inputs.map((data) => sup!.sign({ slot: 't', key: 'ec', mechanism: 'ECDSA-SHA256', data })));
    await blocked;
    sigs.forEach((sig, i) => {
      expect(verify('sha256', inputs[i]!, keyObject, sig), `call ${i}`).toBe(true);
      // And not over any other call's bytes.
      expect(verify('sha256', inputs[(i + 1) % inputs.length]!, keyObject, sig)).toBe(false);
    });
  });
});

describe('hsm pool', () => {
  it('one call at a time stays on the worker that is awake; under load every worker takes a share; every signature valid', async () => {
    sup = await startSupervisor({ config: configFor(td, { p: { type: 'hsm', poolSize: 3, token: { label: 'router' }, pin: { env: 'TEST_PIN' } } }) });
    const perWorker = [0, 0, 0];
    sup.on('callCompleted', (e: CallCompletedEvent) => perWorker[e.worker!]++);
    // All three workers share one login: the token is logged in once for the application.
    expect(sup.status().slots.p!.workers.map((w) => w.state)).toEqual(['logged_in', 'logged_in', 'logged_in']);
    // One at a time: the worker freed last takes the next call, so one thread stays hot and
    // the others can sleep.
    const served: number[] = [];
    const onCall = (e: CallCompletedEvent) => served.push(e.worker!);
    sup.on('callCompleted', onCall);
    for (let i = 0; i < 6; i++) await sign(sup, 'p', i);
    sup.off('callCompleted', onCall);
    expect(served).toHaveLength(6);
    expect(new Set(served).size).toBe(1);

    // Under load the next idle worker takes the next call: each does a real share. Long enough a
    // burst that a worker whose thread slept through the first milliseconds (a busy machine:
    // other test files run beside this one) still joins in.
    perWorker.fill(0);
    const sigs = await Promise.all(Array.from({ length: 600 }, (_, i) => sign(sup!, 'p', i)));
    expect(perWorker.reduce((a, b) => a + b)).toBe(600);
    for (const n of perWorker) expect(n).toBeGreaterThanOrEqual(10);
    for (const i of [0, 300, 599]) expect(await verifiesOnNode(sup, 'p', 'ec', Buffer.from(`doc ${i}`), sigs[i]!)).toBe(true);
  });
});

describe('waiting for the next call', () => {
  it('worker threads spin only briefly after a call: an idle pool costs no CPU', async () => {
    sup = await startSupervisor({ config: configFor(td, { p: { type: 'hsm', poolSize: 2, token: { label: 'router' }, pin: { env: 'TEST_PIN' }, idleSpinMs: 5 } }) });
    const sigs = await Promise.all(Array.from({ length: 200 }, (_, i) => sign(sup!, 'p', i)));
    expect(await verifiesOnNode(sup, 'p', 'ec', Buffer.from('doc 199'), sigs[199]!)).toBe(true);
    await new Promise((r) => setTimeout(r, 50));
    const before = process.cpuUsage();
    await new Promise((r) => setTimeout(r, 500));
    const used = process.cpuUsage(before);
    // Two threads that never slept would use ~1,000 ms of CPU here.
    expect((used.user + used.system) / 1000).toBeLessThan(100);
    // And a sleeping thread wakes for the next call.
    expect(await verifiesOnNode(sup, 'p', 'ec', Buffer.from('doc 7'), await sign(sup, 'p', 7))).toBe(true);
  });
});

describe('supervision', () => {
  it('a worker thread that exits is restarted and the queued calls complete on the new one', async () => {
    process.env.PKCS11_SUPERVISOR_FAULTS = '1';
    sup = await startSupervisor({ config: configFor(td, { t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' } } }) });
    const restarts: unknown[] = [];
    sup.on('restart', (e) => restarts.push(e));
    // Hold the worker, queue the calls behind it, then crash it: the thread dies with a call
    // in flight and 18 waiting in the mailbox.
    void injectWorkerFault(sup, 't', 0, { kind: 'block', ms: 300 });
    const calls = Array.from({ length: 20 }, (_, i) => sign(sup!, 't', i));
    await new Promise((r) => setTimeout(r, 50));
    expect(sup.status().slots.t!.queued).toBe(19);
    void injectWorkerFault(sup, 't', 0, { kind: 'exit' });
    const sigs = await Promise.all(calls);
    for (const i of [0, 10, 19]) expect(await verifiesOnNode(sup, 't', 'ec', Buffer.from(`doc ${i}`), sigs[i]!)).toBe(true);
    expect(restarts).toEqual([expect.objectContaining({ slot: 't', worker: 0, attempt: 1 })]);
    expect(sup.status().slots.t!.state).toBe('logged_in');
    // A fresh thread (its own call counters), and the token's login survived the crash:
    // the module stayed loaded, so the new session was logged in without a C_Login.
    const fresh = await sup.probe({ slot: 't' });
    expect(fresh.calls.C_OpenSession).toBe(1);
    // At most all 20: a reply the old thread posted just before it exited can be lost with it,
    // and that call is then signed again here (never more than once more).
    expect(fresh.calls.C_Sign).toBeLessThanOrEqual(20);
    expect(fresh.calls.C_Login ?? 0).toBe(0);
    expect(fresh.state).toBe('RW_USER');
  });

  it('an uncaught error in the worker thread is a crash too, and is restarted', async () => {
    process.env.PKCS11_SUPERVISOR_FAULTS = '1';
    sup = await startSupervisor({ config: configFor(td, { t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' } } }) });
    const restarted = new Promise((r) => sup!.on('restart', r));
    await injectWorkerFault(sup, 't', 0, { kind: 'throw' });
    await restarted;
    const sig = await sign(sup, 't', 1);
    expect(await verifiesOnNode(sup, 't', 'ec', Buffer.from('doc 1'), sig)).toBe(true);
  });

  it('a call that wedges its worker gets TIMEOUT; the worker is abandoned and replaced; the next call succeeds', async () => {
    process.env.PKCS11_SUPERVISOR_FAULTS = '1';
    sup = await startSupervisor({ config: configFor(td, { t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' }, hungCallGraceMs: 200 } }) });
    const restarted = new Promise((r) => sup!.on('restart', r));
    void injectWorkerFault(sup, 't', 0, { kind: 'block', ms: 30_000 });
    const t0 = Date.now();
    await expect(sign(sup, 't', 1, { timeoutMs: 300 })).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(await restarted).toMatchObject({ reason: expect.stringMatching(/wedged/) });
    const sig = await sign(sup, 't', 2);
    expect(await verifiesOnNode(sup, 't', 'ec', Buffer.from('doc 2'), sig)).toBe(true);
  });

  it('past the restart budget the slot is failed: calls fail fast with SLOT_FAILED, other slots keep working, reset brings it back', async () => {
    process.env.PKCS11_SUPERVISOR_FAULTS = '1';
    sup = await startSupervisor({
      config: configFor(td, {
        t: { token: { label: 'router' }, pin: { env: 'TEST_PIN' }, restart: { maxRestarts: 2, windowMs: 60_000, backoffInitialMs: 10, backoffMaxMs: 50 } },
        other: { type: 'hsm', poolSize: 2, token: { label: 'router' }, pin: { env: 'TEST_PIN' } },
      }),
    });
    const decisions: string[] = [];
    let decided = () => {};
    sup.on('restart', () => (decisions.push('restart'), decided()));
    sup.on('slotFailed', () => (decisions.push('failed'), decided()));
    for (let i = 0; i < 3; i++) {
      await sup.probe({ slot: 't' }); // waits until the worker is back
      const next = new Promise<void>((r) => (decided = r));
      void injectWorkerFault(sup, 't', 0, { kind: 'exit' });
      await next;
    }
    expect(decisions).toEqual(['restart', 'restart', 'failed']);
    expect(sup.status().slots.t!.state).toBe('failed');
    const t0 = Date.now();
    await expect(sign(sup, 't', 1)).rejects.toMatchObject({ code: 'SLOT_FAILED', slot: 't' });
    expect(Date.now() - t0).toBeLessThan(250);
    const sig = await sign(sup, 'other', 2);
    expect(await verifiesOnNode(sup, 'other', 'ec', Buffer.from('doc 2'), sig)).toBe(true);

    sup.reset('t');
    await expect(sign(sup, 't', 3)).resolves.toBeInstanceOf(Buffer);
    expect(sup.status().slots.t!.state).toBe('logged_in');
  });
});
