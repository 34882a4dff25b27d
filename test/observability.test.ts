import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createRequire } from 'node:module';
import { pino } from 'pino';
import { startDaemon, startSupervisor, type Daemon } from '../dist/src/index.js';
import { REDACT_PATHS } from '../dist/src/logger.js';
import { curl } from './support/curl.js';
import { configFor, createToken, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { injectWorkerFault } from '../dist/src/testing.js';
import { Faults, faultConfig } from './support/faults.js';

const parse = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => {
  name: string;
  type: string;
  metrics: { value?: string; labels?: Record<string, string>; count?: string; buckets?: Record<string, string> }[];
}[];

let td: TokenDir;
let tok: TestToken;
let daemon: Daemon | undefined;
const data = Buffer.from('observe me');

beforeAll(() => {
  process.env.PKCS11_SUPERVISOR_FAULTS = '1';
  td = tokenDir();
  tok = createToken(td, 'obs');
  process.env.OBS_PIN = tok.pin;
});

afterEach(async () => {
  await daemon?.stop();
  daemon = undefined;
});

function writeConfig(slots: Record<string, Record<string, unknown>>, extra: Record<string, unknown> = {}): string {
  const file = join(td.dir, `config-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify({ ...configFor(td, slots), metrics: { host: '127.0.0.1', port: 0 }, ...extra }));
  return file;
}

type Scrape = { families: ReturnType<typeof parse>; text: string };

async function scrape(url: string): Promise<Scrape> {
  const res = await fetch(`${url}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  // The whole exposition must parse.
  return { families: parse(text), text };
}

function value({ families, text }: Scrape, name: string, labels: Record<string, string>): number {
  const family = families.find((f) => f.name === name);
  if (family?.type === 'HISTOGRAM') {
    // parse-prometheus-text-format drops labels and counts of labeled histograms: read _count lines.
    const line = text.split('\n').find((l) => l.startsWith(`${name}_count{`) && Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
    return line ? Number(line.split(' ').at(-1)) : 0;
  }
  const m = family?.metrics.find((x) => Object.entries(labels).every(([k, v]) => x.labels?.[k] === v));
  return Number(m?.value ?? 0);
}

const silent = pino({ level: 'silent' });

describe('metrics over HTTP', () => {
  it('counters and histogram counts move by exactly the calls made; every name but the standard process ones starts with pkcs11_', async () => {
    daemon = await startDaemon(writeConfig({ s: { token: { label: 'obs' }, pin: { env: 'OBS_PIN' } } }), silent, '127.0.0.1:0');
    const before = await scrape(daemon.url!);
    expect(before.families.length).toBeGreaterThan(10);
    expect(before.families.filter((f) => !/^(process|nodejs)_/.test(f.name)).every((f) => f.name.startsWith('pkcs11_'))).toBe(true);
    expect(before.families.map((f) => f.name)).toEqual(expect.arrayContaining(['process_cpu_seconds_total', 'nodejs_heap_size_used_bytes', 'pkcs11_calls_total']));
    expect(value(before, 'pkcs11_login_attempts_total', { slot: 's', source: 'env', result: 'ok' })).toBe(1);
    // The counters an alert watches are there at 0 before their first event.
    const present = (name: string, labels: Record<string, string>) => before.families.find((f) => f.name === name)?.metrics.some((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v) && m.value === '0');
    expect(present('pkcs11_worker_restarts_total', { slot: 's' })).toBe(true);
    expect(present('pkcs11_restart_budget_exhausted_total', { slot: 's' })).toBe(true);
    expect(present('pkcs11_access_denied_total', { slot: 's', op: 'sign' })).toBe(true);
    expect(present('pkcs11_login_attempts_total', { slot: 's', source: 'env', result: 'PIN_INCORRECT' })).toBe(true);
    expect(present('pkcs11_module_resets_total', { module: '/usr/lib/softhsm/libsofthsm2.so' })).toBe(true);
    const version = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;
    expect(before.families.find((f) => f.name === 'pkcs11_build_info')?.metrics).toEqual([expect.objectContaining({ labels: { version }, value: '1' })]);
    // promtool, Prometheus's own linter, has nothing to say about the exposition.
    const lint = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const p = spawn('promtool', ['check', 'metrics']);
      let out = '';
      p.stdout.on('data', (d: Buffer) => (out += d));
      p.stderr.on('data', (d: Buffer) => (out += d));
      p.on('exit', (code) => resolve({ code, out }));
      p.stdin.end(before.text);
    });
    expect(lint, lint.out).toEqual({ code: 0, out: '' });

    for (let i = 0; i < 7; i++) await daemon.sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    for (let i = 0; i < 2; i++) await daemon.sup.sign({ slot: 's', key: { label: 'missing' }, mechanism: 'ECDSA-SHA256', data }).catch(() => undefined);
    await daemon.sup.verify({ slot: 's', key: 'rsa', mechanism: 'RSA-PKCS1-SHA256', data, signature: Buffer.alloc(256) });

    const after = await scrape(daemon.url!);
    const delta = (name: string, labels: Record<string, string>) => value(after, name, labels) - value(before, name, labels);
    expect(delta('pkcs11_calls_total', { slot: 's', op: 'sign', mechanism: 'ECDSA-SHA256', result: 'ok' })).toBe(7);
    expect(delta('pkcs11_calls_total', { slot: 's', op: 'sign', mechanism: 'ECDSA-SHA256', result: 'KEY_NOT_FOUND' })).toBe(2);
    expect(delta('pkcs11_calls_total', { slot: 's', op: 'verify', mechanism: 'RSA-PKCS1-SHA256', result: 'ok' })).toBe(1);
    expect(delta('pkcs11_call_queue_seconds', { slot: 's', op: 'sign' })).toBe(9);
    expect(delta('pkcs11_call_execution_seconds', { slot: 's', op: 'sign', mechanism: 'ECDSA-SHA256' })).toBe(9);
    expect(value(after, 'pkcs11_slot_state', { slot: 's', worker: '0', state: 'logged_in' })).toBe(1);
    expect(value(after, 'pkcs11_slot_state', { slot: 's', worker: '0', state: 'open' })).toBe(0);
    expect(value(after, 'pkcs11_sessions_open', { slot: 's' })).toBe(1);
    expect(value(after, 'pkcs11_mailbox_depth', { slot: 's' })).toBe(0);
    expect(after.families.some((f) => f.name === 'process_cpu_user_seconds_total')).toBe(true);

    const restarted = new Promise((r) => daemon!.sup.once('restart', r));
    await injectWorkerFault(daemon.sup, 's', 0, { kind: 'exit' }).catch(() => undefined);
    await restarted;
    expect(value(await scrape(daemon.url!), 'pkcs11_worker_restarts_total', { slot: 's' })).toBe(1);
  });

  it('/healthz answers; /readyz is 503 while a slot is failed and 200 again once the probe brings it back', async () => {
    daemon = await startDaemon(
      writeConfig({ s: { token: { label: 'obs' }, pin: { env: 'OBS_PIN' }, probeIntervalMs: 1000, restart: { maxRestarts: 0, windowMs: 60000, backoffInitialMs: 0, backoffMaxMs: 0 } } }),
      silent,
      '127.0.0.1:0',
    );
    expect((await fetch(`${daemon.url}/healthz`)).status).toBe(200);
    // HEAD is answered as GET is, without a body (curl -I, as uptime checkers ask); other methods are 405 with Allow.
    for (const path of ['/healthz', '/readyz', '/metrics']) {
      const head = await curl(`${daemon.url}${path}`, ['-I']);
      expect([head.status, head.body], path).toEqual([200, '']);
    }
    const post = await curl(`${daemon.url}/metrics`, ['-X', 'POST']);
    expect([post.status, post.headers.allow]).toEqual([405, 'GET, HEAD']);
    let ready = await fetch(`${daemon.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ ready: true, slots: { s: 'logged_in' } });

    const failed = new Promise((r) => daemon!.sup.once('slotFailed', r));
    await injectWorkerFault(daemon.sup, 's', 0, { kind: 'exit' }).catch(() => undefined);
    await failed;
    ready = await fetch(`${daemon.url}/readyz`);
    expect(ready.status).toBe(503);
    // A probe may already be bringing it back (on a loaded machine the fetch can span one): not ready either way.
    const body = (await ready.json()) as { ready: boolean; slots: { s: string } };
    expect(body.ready).toBe(false);
    expect(['failed', 'restarting']).toContain(body.slots.s);
    expect((await fetch(`${daemon.url}/healthz`)).status).toBe(200);

    // The token is still there, so the next probe restarts the slot.
    const deadline = Date.now() + 5000;
    while ((await fetch(`${daemon.url}/readyz`)).status !== 200 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect((await fetch(`${daemon.url}/readyz`)).status).toBe(200);
    expect(await daemon.sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data })).toBeInstanceOf(Buffer);
  });
});

describe('handles the module cannot allocate', () => {
  it('a session refused with CKR_SESSION_COUNT is counted in pkcs11_handle_allocation_failures_total, and the slot comes back', async () => {
    const faults = new Faults(td);
    const file = join(td.dir, 'fault-config.json');
    const restart = { backoffInitialMs: 10, backoffMaxMs: 10 };
    writeFileSync(file, JSON.stringify({ ...faultConfig(td, faults, { s: { token: { label: 'obs' }, pin: { env: 'OBS_PIN' }, restart } }), metrics: { host: '127.0.0.1', port: 0 } }));
    daemon = await startDaemon(file, silent, '127.0.0.1:0');
    const labels = { slot: 's', handle: 'session', ckr: 'CKR_SESSION_COUNT' };
    expect(value(await scrape(daemon.url!), 'pkcs11_handle_allocation_failures_total', labels)).toBe(0);
    // The session is lost; its replacement is refused once by the token's session count.
    faults.set('fail C_SignInit 1 CKR_DEVICE_ERROR', 'fail C_OpenSession 1 CKR_SESSION_COUNT');
    await daemon.sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data }).catch(() => undefined);
    const sig = await daemon.sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(sig.length).toBeGreaterThan(0);
    expect(faults.counts().C_OpenSession).toBeGreaterThanOrEqual(3);
    expect(value(await scrape(daemon.url!), 'pkcs11_handle_allocation_failures_total', labels)).toBe(1);
  });
});

describe('no PIN anywhere', () => {
  it('after calls that passed a PIN in every way, no log line, metric or audit record contains it', async () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk, _enc, cb) => (lines.push(chunk.toString()), cb()) });
    const logger = pino({ level: 'trace', redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } }, sink);
    const pinFile = join(td.dir, 'pin.txt');
    writeFileSync(pinFile, `${tok.pin}\n`, { mode: 0o600 });
    const auditPath = join(td.dir, 'audit-pins.jsonl');
    const wrong = 'wrong-pin-7777';
    const sup = await startSupervisor({
      config: {
        ...configFor(td, {
          byFile: { token: { label: 'obs' }, pin: { file: pinFile } },
          byEnv: { token: { label: 'obs' }, pin: { env: 'OBS_PIN' }, lazy: true },
          byCallback: { token: { label: 'obs' }, lazy: true },
        }),
        audit: { path: auditPath },
      },
      logger,
      pinCallback: () => tok.pin,
    });
    await sup.logout({ slot: 'byFile' });
    await sup.sign({ slot: 'byFile', key: 'ec', mechanism: 'ECDSA-SHA256', data, pin: wrong }).catch(() => undefined);
    await sup.sign({ slot: 'byFile', key: 'ec', mechanism: 'ECDSA-SHA256', data, pin: tok.pin });
    await sup.logout({ slot: 'byFile' });
    await sup.login('byCallback');
    await sup.logout({ slot: 'byFile' });
    await sup.login({ slot: 'byEnv', pin: tok.pin });
    await sup.logout({ slot: 'byFile' });
    await sup.sign({ slot: 'byEnv', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    logger.info({ pin: tok.pin, nested: { pin: tok.pin } }, 'an object that carries a PIN by mistake');
    await sup.close();
    const everything = lines.join('') + readFileSync(auditPath, 'utf8');
    expect(lines.length).toBeGreaterThan(10);
    expect(everything).toContain('[REDACTED]');
    expect(everything).not.toContain(tok.pin);
    expect(everything).not.toContain(wrong);
  });
});

describe('audit trail', () => {
  it('records every sign, verify and login with the data hash and principal, and detects each kind of tampering', async () => {
    const auditPath = join(td.dir, 'audit.jsonl');
    const sup = await startSupervisor({ config: { ...configFor(td, { s: { token: { label: 'obs' }, pin: { env: 'OBS_PIN' } } }), audit: { path: auditPath } }, logger: silent });
    for (let i = 0; i < 5; i++) await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from(`doc ${i}`), principal: 'billing' });
    const sig = await sup.sign({ slot: 's', key: 'rsa', mechanism: 'RSA-PSS-SHA256', data });
    await sup.verify({ slot: 's', key: 'rsa', mechanism: 'RSA-PSS-SHA256', data, signature: sig });
    await sup.verify({ slot: 's', key: 'rsa', mechanism: 'RSA-PSS-SHA256', data: Buffer.from('other'), signature: sig });
    await sup.logout({ slot: 's' });
    await sup.close();

    const records = readFileSync(auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    // The start-up login and the explicit logout are recorded too, with where the PIN came from and why.
    expect(records.map((r) => `${r.event}:${r.result}`)).toEqual(['login:ok', ...Array(6).fill('sign:ok'), 'verify:valid', 'verify:invalid', 'logout:ok']);
    expect(records[0]).toMatchObject({ seq: 1, event: 'login', detail: 'PIN from env' });
    expect(records[1]).toMatchObject({ seq: 2, slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', principal: 'billing', dataSha256: createHash('sha256').update('doc 0').digest('hex') });
    expect(records[9]).toMatchObject({ event: 'logout', detail: 'request' });

    const cli = (file: string) => spawnSync(process.execPath, ['dist/src/cli.js', 'audit', 'verify', file], { encoding: 'utf8' });
    expect(cli(auditPath)).toMatchObject({ status: 0, stdout: expect.stringMatching(/^ok: 10 records/) });

    const lines = readFileSync(auditPath, 'utf8').trim().split('\n');
    const tampered = (name: string, edit: (l: string[]) => string[]) => {
      const f = join(td.dir, `audit-${name}.jsonl`);
      copyFileSync(auditPath, f);
      writeFileSync(f, edit([...lines]).join('\n') + '\n');
      return cli(f);
    };
    const edited = tampered('edited', (l) => ((l[3] = l[3]!.replace('"principal":"billing"', '"principal":"mallory"')), l));
    expect(edited).toMatchObject({ status: 1, stdout: expect.stringMatching(/broken at line 4 \(seq 4\): record was changed/) });
    const removed = tampered('removed', (l) => (l.splice(2, 1), l));
    expect(removed).toMatchObject({ status: 1, stdout: expect.stringMatching(/broken at line 3 \(seq 4\): record\(s\) before it were removed/) });
    const reordered = tampered('reordered', (l) => ([l[5], l[6]] = [l[6]!, l[5]!], l));
    expect(reordered).toMatchObject({ status: 1, stdout: expect.stringMatching(/broken at line 6 \(seq 7\): records are out of order/) });

    // A restarted daemon continues the chain: its start-up login, a sign, the logout at close.
    const again = await startSupervisor({ config: { ...configFor(td, { s: { token: { label: 'obs' }, pin: { env: 'OBS_PIN' } } }), audit: { path: auditPath } }, logger: silent });
    await again.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    await again.close();
    expect(cli(auditPath)).toMatchObject({ status: 0, stdout: expect.stringMatching(/^ok: 13 records/) });
  });
});
