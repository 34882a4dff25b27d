/**
 * Logs as a host application and an operator expect them: a library in someone else's process
 * is quiet unless asked (warn by default; LOG_LEVEL or log.level turn it up), and a failed
 * call's line says which worker, key, CKR, message and how long it took.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { verify as nodeVerify } from 'node:crypto';
import { join } from 'node:path';
import { startSupervisor } from '../dist/src/index.js';
import { logLines } from './support/log-lines.js';
import { configFor, createToken, tokenDir, type TokenDir } from './support/softhsm.js';

let td: TokenDir;

beforeAll(() => {
  td = tokenDir();
  process.env.LOGS_PIN = createToken(td, 'logs').pin;
});

/** A host application: opens a slot, signs, closes; prints nothing itself. */
function host(config: Record<string, unknown>, env: NodeJS.ProcessEnv = {}) {
  const file = join(td.dir, `host-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(
    file,
    `import { startSupervisor } from ${JSON.stringify(join(process.cwd(), 'dist/src/index.js'))};
     const sup = await startSupervisor({ config: ${JSON.stringify(config)} });
     await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from('x') });
     await sup.close();`,
  );
  const env2 = { ...process.env, ...env };
  if (!('LOG_LEVEL' in env)) delete env2.LOG_LEVEL;
  return spawnSync(process.execPath, [file], { env: env2, encoding: 'utf8' });
}

describe('embedded, the library is quiet', () => {
  const config = () => {
    const { log: _log, ...rest } = configFor(td, { s: { token: { label: 'logs' }, pin: { env: 'LOGS_PIN' } } });
    return rest;
  };

  it('prints nothing on the host application\'s output at its default level (warn)', () => {
    const r = host(config());
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('');
  });

  it('LOG_LEVEL and log.level turn it up; a bad LOG_LEVEL is CONFIG_INVALID', () => {
    expect(host(config(), { LOG_LEVEL: 'info' }).stdout).toMatch(/"msg":"slot state"/);
    expect(host({ ...config(), log: { level: 'info' } }).stdout).toMatch(/"msg":"slot state"/);
    const bad = host(config(), { LOG_LEVEL: 'loud' });
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/CONFIG_INVALID|LOG_LEVEL must be one of/);
  });
});

describe('a failed call', () => {
  it('logs its worker, key ref, code, ckr, message and duration', async () => {
    const { logger, lines } = logLines('warn');
    const sup = await startSupervisor({ config: configFor(td, { s: { token: { label: 'logs' }, pin: { env: 'LOGS_PIN' } } }), logger });
    try {
      await expect(sup.sign({ slot: 's', key: { label: 'absent' }, mechanism: 'ECDSA-SHA256', data: Buffer.from('x') })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    } finally {
      await sup.close();
    }
    const line = lines.find((l) => l.msg === 'call failed');
    expect(line).toMatchObject({ slot: 's', worker: 0, op: 'sign', key: '{"label":"absent"}', code: 'KEY_NOT_FOUND', err: expect.stringContaining('absent') });
    expect(typeof line!.durationMs).toBe('number');
  });
});

describe("an application's event listener that throws", () => {
  it('is logged; every call still gets its own answer, the slot its state changes, and off() and once() work', async () => {
    const { logger, lines } = logLines('warn');
    const sup = await startSupervisor({ config: configFor(td, { s: { token: { label: 'logs' }, pin: { env: 'LOGS_PIN' } } }), logger });
    const seen: string[] = [];
    const broken = (e: { op?: string }) => {
      seen.push(`broken ${e.op ?? ''}`);
      throw new Error('a telemetry bug');
    };
    try {
      for (const event of ['callCompleted', 'stateChange', 'login', 'logout'] as const) sup.on(event, broken as never);
      sup.once('callCompleted', () => seen.push('once'));
      const data = Buffer.from('signed whatever the listeners do');
      const sigs = await Promise.all(Array.from({ length: 4 }, () => sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data })));
      const { keyObject } = await sup.getPublicKey({ slot: 's', key: 'ec' });
      for (const sig of sigs) expect(nodeVerify('sha256', data, keyObject, sig)).toBe(true);
      await sup.logout({ slot: 's' });
      expect((await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data })).length).toBeGreaterThan(0);
      expect(sup.status().slots.s!.state).toBe('logged_in');
      expect(seen.filter((s) => s === 'once')).toHaveLength(1);
      expect(seen.filter((s) => s === 'broken sign').length).toBeGreaterThanOrEqual(5);
      sup.off('callCompleted', broken as never);
      const before = seen.length;
      await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
      expect(seen.slice(before).filter((s) => s === 'broken sign')).toEqual([]);
    } finally {
      await sup.close();
    }
    expect(lines.filter((l) => l.msg === 'an event listener threw; the supervisor goes on').map((l) => l.event)).toEqual(expect.arrayContaining(['callCompleted', 'stateChange', 'login', 'logout']));
  });
});

describe('a stdout nobody reads', () => {
  it('holds at most 16 MiB of lines: the rest are dropped and counted, and once the reader is back one line says how many', async () => {
    const file = join(td.dir, 'stalled-stdout.mjs');
    writeFileSync(
      file,
      `import { createLogger, droppedLogLines, exitWhenLogged } from ${JSON.stringify(join(process.cwd(), 'dist/src/logger.js'))};
       const log = createLogger('info');
       for (let i = 0; i < 200000; i++) log.warn({ i, pad: 'x'.repeat(300) }, 'filler');
       globalThis.gc();
       process.stderr.write(JSON.stringify({ heapUsed: process.memoryUsage().heapUsed, dropped: droppedLogLines() }) + '\\n');
       process.stdin.once('data', () => exitWhenLogged(0, 20000));`,
    );
    const child = spawn(process.execPath, ['--expose-gc', file], { stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdout.pause();
    const report = await new Promise<{ heapUsed: number; dropped: number }>((resolve) => child.stderr.once('data', (d: Buffer) => resolve(JSON.parse(d.toString()))));
    // 200,000 lines of 370 bytes are 74 MB: kept, they would all be on the heap.
    expect(report.heapUsed).toBeLessThan(45 * 2 ** 20);
    expect(report.dropped).toBeGreaterThan(100_000);
    const chunks: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => chunks.push(d));
    child.stdout.resume();
    child.stdin.write('go\n');
    expect(await new Promise((resolve) => child.once('exit', resolve))).toBe(0);
    const lines = Buffer.concat(chunks).toString().trim().split('\n').map((l) => JSON.parse(l) as { msg: string; i?: number; dropped?: number });
    const kept = lines.filter((l) => l.msg === 'filler');
    const summary = lines.filter((l) => l.msg !== 'filler');
    expect(summary).toMatchObject([{ level: 40, msg: 'log lines dropped: stdout was not read while they came', dropped: report.dropped }]);
    expect(kept.length + report.dropped).toBe(200_000);
    // Lines are dropped whole and in order: what was kept is the first ones.
    expect(kept.map((l) => l.i)).toEqual(Array.from({ length: kept.length }, (_, i) => i));
  });
});
