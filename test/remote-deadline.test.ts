/**
 * A remote client keeps the in-process meaning of `timeoutMs` and `signal` when the daemon stops
 * answering: a daemon process stopped with SIGSTOP (as a frozen host or a cut network looks from
 * the client) holds no caller past its deadline and its grace, an aborted call settles at once,
 * and once the daemon runs again the same client signs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { verify } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Pkcs11Client } from '../dist/src/index.js';
import { ANSWER_GRACE_MS } from '../dist/src/service/remote-client.js';
import { configFor, createToken, tokenDir } from './support/softhsm.js';
import { sharedPki, tlsClient, TLS_PRINCIPAL } from './support/transports.js';
import { started } from './support/daemon-process.js';

let daemon: ChildProcess;
let socket: string;
let tlsUrl: string;
const clients: Pkcs11Client[] = [];
const req = { slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256' as const, data: Buffer.from('frozen') };

beforeAll(async () => {
  const td = tokenDir();
  const pin = createToken(td, 'frozen').pin;
  socket = join(td.dir, 'api.sock');
  const pki = sharedPki();
  const config = {
    ...configFor(td, { s: { token: { label: 'frozen' }, pin: { env: 'FROZEN_PIN' } } }),
    api: { unix: { path: socket }, tls: { host: '127.0.0.1', port: 0, cert: pki.server.cert, key: pki.server.key, clientCa: pki.ca.cert } },
    policy: { principals: { [TLS_PRINCIPAL]: ['administrator'], local: ['administrator'] }, slots: { s: { administrator: {} } } },
    log: { level: 'info' },
  };
  const file = join(td.dir, 'config.json');
  writeFileSync(file, JSON.stringify(config));
  daemon = spawn(process.execPath, ['dist/src/daemon.js', '--config', file], { env: { ...process.env, FROZEN_PIN: pin }, stdio: ['ignore', 'pipe', 'inherit'] });
  tlsUrl = (await started(daemon)).tls!;
}, 60_000);

afterAll(async () => {
  daemon.kill('SIGCONT');
  daemon.kill('SIGTERM');
  await Promise.all(clients.map((c) => c.close()));
});

const client = (way: 'socket' | 'tls', options: { timeoutMs?: number } = {}) => {
  const c = way === 'socket' ? connect({ socket, ...options }) : connect({ url: tlsUrl, tls: tlsClient(), ...options });
  clients.push(c);
  return c;
};

/** The call's error code and how long it took to settle. */
async function settle(call: Promise<unknown>): Promise<{ code: string; ms: number }> {
  const t0 = Date.now();
  const code = await call.then(
    () => 'ok',
    (e: { code?: string }) => e.code ?? 'untyped',
  );
  return { code, ms: Date.now() - t0 };
}

describe.each(['socket', 'tls'] as const)('a daemon that stops answering (%s)', (way) => {
  it('a call with timeoutMs is TIMEOUT by its deadline and the grace, alone or batched; an aborted one is ABORTED at once; connect({ timeoutMs }) bounds calls that give none; after it runs again the same client signs', async () => {
    const c = client(way, {});
    const bounded = client(way, { timeoutMs: 300 });
    const { keyObject } = await c.getPublicKey({ slot: 's', key: 'ec' });
    expect(verify('sha256', req.data, keyObject, await c.sign(req))).toBe(true);
    await bounded.status(); // its connection is open before the daemon stops
    daemon.kill('SIGSTOP');
    try {
      const alone = settle(c.sign({ ...req, timeoutMs: 300 }));
      const batched = Promise.all(Array.from({ length: 5 }, () => settle(c.sign({ ...req, timeoutMs: 400 }))));
      const controller = new AbortController();
      const aborted = settle(c.sign({ ...req, signal: controller.signal }));
      setTimeout(() => controller.abort(), 200);
      const byDefault = settle(bounded.sign(req));
      const status = settle(bounded.status());

      const a = await aborted;
      expect(a.code).toBe('ABORTED');
      expect(a.ms).toBeLessThan(1_000);
      const bound = (ms: number) => ms + ANSWER_GRACE_MS + 1_500;
      const one = await alone;
      expect(one.code).toBe('TIMEOUT');
      expect(one.ms).toBeGreaterThanOrEqual(300);
      expect(one.ms).toBeLessThan(bound(300));
      for (const b of await batched) {
        expect(b.code).toBe('TIMEOUT');
        expect(b.ms).toBeLessThan(bound(400));
      }
      for (const d of [await byDefault, await status]) {
        expect(d.code).toBe('TIMEOUT');
        expect(d.ms).toBeLessThan(bound(300));
      }
    } finally {
      daemon.kill('SIGCONT');
    }
    const data = Buffer.from('after');
    expect(verify('sha256', data, keyObject, await c.sign({ ...req, data, timeoutMs: 10_000 }))).toBe(true);
    expect(verify('sha256', data, keyObject, await bounded.sign({ ...req, data, timeoutMs: 10_000 }))).toBe(true);
  }, 30_000);
});
