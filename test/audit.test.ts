/**
 * The audit trail under a crash, a full file system and a torn write: in durable mode no
 * signature is returned without its record on disk; a write that fails is a typed error, a
 * metric and not-ready, never a process exit, and nothing is lost once writes succeed again;
 * a torn tail is told apart from tampering and repaired at the next start.
 */
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { appendFileSync, closeSync, ftruncateSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, statSync, symlinkSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { connect, createMetrics, readiness, startSupervisor, type Pkcs11Supervisor } from '../dist/src/index.js';
import { started } from './support/daemon-process.js';
import { configFor, createToken, tokenDir, type TokenDir } from './support/softhsm.js';

let td: TokenDir;
let sup: Pkcs11Supervisor | undefined;
let n = 0;

beforeAll(() => {
  td = tokenDir();
  process.env.AUDIT_PIN = createToken(td, 'audited').pin;
});

afterEach(async () => {
  // Room first: a trail closed while it cannot be written puts its records on stderr.
  execFileSync('prlimit', ['--pid', String(process.pid), '--fsize=unlimited:unlimited']);
  await sup?.close();
  sup = undefined;
});

const configWith = (audit: Record<string, unknown>) => ({ ...configFor(td, { s: { token: { label: 'audited' }, pin: { env: 'AUDIT_PIN' } } }), audit });
const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const records = (path: string) => readFileSync(path, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { event: string; dataSha256?: string; result: string });
const verifyCli = (path: string) => spawnSync(process.execPath, ['dist/src/cli.js', 'audit', 'verify', path], { encoding: 'utf8' });

async function signOne(s: Pkcs11Supervisor) {
  const data = Buffer.from(`audited document ${n++}`);
  const sig = await s.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
  return { data, sig };
}

/** The signing child (fixtures/audit-child.mjs) on a durable trail at `path`, once it has started: its pid, what it printed, and kill -9. */
async function signingChild(name: string, path: string) {
  const file = join(td.dir, `${name}.json`);
  writeFileSync(file, JSON.stringify({ ...configWith({ path, mode: 'durable' }), log: { level: 'silent' } }));
  const child = spawn(process.execPath, ['test/fixtures/audit-child.mjs', file], { env: process.env });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  await new Promise<void>((resolve) => child.stdout.on('data', () => out.includes('ready') && resolve()));
  return {
    pid: child.pid!,
    output: () => out,
    kill: () => new Promise((r) => (child.on('exit', r), child.kill('SIGKILL'))),
  };
}

/** Files this process writes stop growing past the trail's size now plus `room` bytes (EFBIG). */
function limitFileSize(path: string, room: number): void {
  execFileSync('prlimit', ['--pid', String(process.pid), `--fsize=${statSync(path).size + room}:unlimited`]);
}

describe('one writer per trail', () => {
  const refusal = (e: unknown) => ({ code: (e as { code: string }).code, paths: ((e as { issues?: { path: string }[] }).issues ?? []).map((i) => i.path), message: (e as Error).message });

  it('a second supervisor, the same process or another, is CONFIG_INVALID naming audit.path; the trail verifies; once the first is gone the next one writes', async () => {
    const path = join(td.dir, 'shared.jsonl');
    sup = await startSupervisor({ config: configWith({ path, mode: 'durable' }) });
    await signOne(sup);
    const second = await startSupervisor({ config: configWith({ path }) }).then(() => null, refusal);
    expect(second).toMatchObject({ code: 'CONFIG_INVALID', paths: ['audit.path'], message: expect.stringMatching(/written by this process/) });
    // The same trail under another name: a symlink to its directory.
    symlinkSync(td.dir, join(td.dir, 'alias'));
    const aliased = await startSupervisor({ config: configWith({ path: join(td.dir, 'alias', 'shared.jsonl') }) }).then(() => null, refusal);
    expect(aliased).toMatchObject({ code: 'CONFIG_INVALID', paths: ['audit.path'] });
    await sup.close();
    sup = undefined;

    // Another process holds it: refused while it runs; after kill -9 its lock is taken over.
    const child = await signingChild('shared', path);
    const meanwhile = await startSupervisor({ config: configWith({ path }) }).then(() => null, refusal);
    expect(meanwhile).toMatchObject({ code: 'CONFIG_INVALID', paths: ['audit.path'], message: expect.stringContaining(`process ${child.pid} on this host`) });
    await child.kill();
    sup = await startSupervisor({ config: configWith({ path }) });
    await signOne(sup);
    await sup.close();
    sup = undefined;
    expect(verifyCli(path)).toMatchObject({ status: 0, stdout: expect.stringMatching(/^ok: \d+ records, chain intact/) });
    expect(readdirSync(td.dir).filter((f) => f.startsWith('shared.jsonl.lock'))).toEqual([]); // released at close
  }, 30_000);

  it('a lock from another host is honoured while it is refreshed, and taken over once it is a minute old', async () => {
    const path = join(td.dir, 'elsewhere.jsonl');
    const lock = `${path}.lock`;
    writeFileSync(lock, JSON.stringify({ host: 'replica-0.elsewhere', pid: 1 }));
    expect(await startSupervisor({ config: configWith({ path }) }).then(() => null, refusal)).toMatchObject({ code: 'CONFIG_INVALID', paths: ['audit.path'], message: expect.stringContaining('process 1 on host replica-0.elsewhere') });
    const old = new Date(Date.now() - 61_000);
    utimesSync(lock, old, old);
    sup = await startSupervisor({ config: configWith({ path }) });
    expect(JSON.parse(readFileSync(lock, 'utf8'))).toEqual({ host: hostname(), pid: process.pid });
    await signOne(sup);
  });

  it('a disk with no room for the lock does not stop the start: the lock says so, still refuses a second writer here, and is written once there is room', async () => {
    // The lock alone: under a file size limit SoftHSM2 could not keep its own token files either.
    const { lockAuditTrail } = await import('../dist/src/audit-lock.js');
    const path = join(td.dir, 'no-room.jsonl');
    writeFileSync(path, '');
    const warned: string[] = [];
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    let lock: { release(): void } | undefined;
    try {
      execFileSync('prlimit', ['--pid', String(process.pid), '--fsize=10:unlimited']); // no file may grow past 10 bytes: a full disk, to the lock
      try {
        lock = lockAuditTrail(path, (m: string) => warned.push(m));
      } finally {
        execFileSync('prlimit', ['--pid', String(process.pid), '--fsize=unlimited:unlimited']);
      }
      expect(warned).toEqual([expect.stringMatching(/^audit trail: no room for .*no-room\.jsonl\.lock/)]);
      expect(() => lockAuditTrail(path, () => undefined)).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
      vi.advanceTimersByTime(10_000);
      expect(warned[1]).toMatch(/written now that there is room/);
      expect(JSON.parse(readFileSync(`${path}.lock`, 'utf8'))).toEqual({ host: hostname(), pid: process.pid });
    } finally {
      lock?.release();
      vi.useRealTimers();
    }
    expect(readdirSync(td.dir).filter((f) => f.startsWith('no-room.jsonl.lock'))).toEqual([]);
  });
});

describe('durable mode', () => {
  it('after kill -9, every signature that was returned has its record, and the trail verifies once the next start repairs its tail', async () => {
    const path = join(td.dir, 'killed.jsonl');
    const child = await signingChild('killed', path);
    await new Promise((r) => setTimeout(r, 1500));
    await child.kill();
    const returned = child.output().split('\n').filter((l) => /^[0-9a-f]{64}$/.test(l));
    expect(returned.length).toBeGreaterThan(200);
    const onDisk = new Set(readFileSync(path, 'utf8').split('\n').flatMap((l) => /"dataSha256":"([0-9a-f]{64})"/.exec(l)?.[1] ?? []));
    expect(returned.filter((h) => !onDisk.has(h))).toEqual([]);
    expect([0, 4]).toContain(verifyCli(path).status); // intact, or its tail torn by the kill

    sup = await startSupervisor({ config: configWith({ path, mode: 'durable' }) });
    await signOne(sup);
    await sup.close();
    sup = undefined;
    expect(verifyCli(path)).toMatchObject({ status: 0, stdout: expect.stringMatching(/^ok: \d+ records, chain intact/) });
  });

  it('a full file system: calls get AUDIT_UNAVAILABLE and return no signature, the daemon is not ready and counts it, nothing is lost once it has room', async () => {
    process.on('SIGXFSZ', () => undefined); // as a daemon under a file size limit: EFBIG, not death
    const path = join(td.dir, 'full.jsonl');
    sup = await startSupervisor({ config: configWith({ path, mode: 'durable', flushMs: 50 }) });
    const registry = createMetrics(sup);
    const before = [await signOne(sup), await signOne(sup)];
    limitFileSize(path, 600); // room for about one more record, then a short write, then EFBIG
    const during = await Promise.allSettled(Array.from({ length: 8 }, () => signOne(sup!)));
    const refused = during.filter((r) => r.status === 'rejected');
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'AUDIT_UNAVAILABLE' });
    await expect(signOne(sup)).rejects.toMatchObject({ code: 'AUDIT_UNAVAILABLE' }); // refused up front now
    expect(readiness(sup)).toMatchObject({ ready: false, audit: expect.stringMatching(/^failing/) });
    expect(await registry.getSingleMetricAsString('pkcs11_audit_write_errors_total')).toMatch(/pkcs11_audit_write_errors_total [1-9]/);
    expect(verifyCli(path).status).toBe(0); // a short write was cut back: whole records only

    execFileSync('prlimit', ['--pid', String(process.pid), '--fsize=unlimited:unlimited']);
    const until = Date.now() + 5000;
    while (!readiness(sup).ready && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    expect(readiness(sup).ready).toBe(true);
    const after = await signOne(sup);
    await sup.close();
    sup = undefined;
    const trail = records(path);
    for (const { data } of [...before, after, ...during.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))]) {
      expect(trail.some((r) => r.dataSha256 === sha(data))).toBe(true);
    }
    expect(verifyCli(path).status).toBe(0);
  });
});

describe('batched mode', () => {
  it('a write that fails keeps the records queued; they are written once it can; calls go on unless failClosed', async () => {
    process.on('SIGXFSZ', () => undefined);
    const path = join(td.dir, 'batched.jsonl');
    sup = await startSupervisor({ config: configWith({ path, flushMs: 20 }) });
    await signOne(sup);
    await new Promise((r) => setTimeout(r, 100));
    limitFileSize(path, 0);
    const signed = [await signOne(sup), await signOne(sup)]; // batched: signatures are returned, records wait
    await new Promise((r) => setTimeout(r, 200));
    expect(sup.status().audit).toMatchObject({ healthy: false, pending: expect.any(Number) });
    expect(sup.status().audit!.pending).toBeGreaterThanOrEqual(2);
    execFileSync('prlimit', ['--pid', String(process.pid), '--fsize=unlimited:unlimited']);
    await new Promise((r) => setTimeout(r, 1500));
    expect(sup.status().audit).toMatchObject({ healthy: true, pending: 0 });
    const trail = records(path);
    for (const { data } of signed) expect(trail.some((r) => r.dataSha256 === sha(data))).toBe(true);
    await sup.close();

    sup = await startSupervisor({ config: configWith({ path, flushMs: 20, failClosed: true }) });
    await signOne(sup);
    await new Promise((r) => setTimeout(r, 100));
    limitFileSize(path, 0);
    await signOne(sup); // its record cannot be written: the trail is found failing
    await new Promise((r) => setTimeout(r, 200));
    await expect(signOne(sup)).rejects.toMatchObject({ code: 'AUDIT_UNAVAILABLE' });
  });
});

describe('batched mode, a full disk that lasts', () => {
  it('holds at most maxQueuedBytes of records in memory: past that, audited calls are AUDIT_UNAVAILABLE and return no signature; once there is room every returned signature has its record', async () => {
    process.on('SIGXFSZ', () => undefined);
    const path = join(td.dir, 'queued.jsonl');
    sup = await startSupervisor({ config: configWith({ path, flushMs: 20, maxQueuedBytes: 8192 }) });
    await signOne(sup);
    await new Promise((r) => setTimeout(r, 100));
    limitFileSize(path, 0);
    const signed: { data: Buffer; sig: Buffer }[] = [];
    let refused: unknown = null;
    // A record is about 400 bytes: the first few dozen calls sign (batched), then they are refused.
    for (let i = 0; i < 200 && !refused; i++) {
      await signOne(sup).then((s) => signed.push(s), (e) => (refused = e));
      if (i === 0) await new Promise((r) => setTimeout(r, 100)); // the first failed write marks the trail failing
    }
    expect(refused).toMatchObject({ code: 'AUDIT_UNAVAILABLE', message: expect.stringMatching(/records wait in memory already/) });
    expect(signed.length).toBeGreaterThan(5);
    expect(signed.length).toBeLessThan(60);
    expect(sup.status().audit!.pending).toBeGreaterThanOrEqual(signed.length);
    await expect(sup.verify({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: signed[0]!.data, signature: signed[0]!.sig })).rejects.toMatchObject({ code: 'AUDIT_UNAVAILABLE' });

    execFileSync('prlimit', ['--pid', String(process.pid), '--fsize=unlimited:unlimited']);
    await expect.poll(() => sup!.status().audit, { timeout: 5_000, interval: 100 }).toMatchObject({ healthy: true, pending: 0 });
    signed.push(await signOne(sup));
    await sup.close();
    sup = undefined;
    const trail = records(path);
    for (const { data } of signed) expect(trail.some((r) => r.dataSha256 === sha(data))).toBe(true);
    expect(verifyCli(path).status).toBe(0);
  });
});

describe('a daemon stopped while its disk is full', () => {
  it('puts the records it could not write on stderr; appended to the trail once there is room, they complete its chain, every signature it returned among them', async () => {
    const path = join(td.dir, 'stopped-full.jsonl');
    const socket = join(td.dir, 'stopped-full.sock');
    const file = join(td.dir, 'stopped-full.json');
    writeFileSync(file, JSON.stringify({ ...configWith({ path, flushMs: 20 }), log: { level: 'info' }, metrics: { enabled: false }, api: { unix: { path: socket } } }));
    const daemon = spawn(process.execPath, ['dist/src/daemon.js', '--config', file], { env: process.env });
    let err = '';
    daemon.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((r) => daemon.on('exit', r));
    await started(daemon);
    const client = connect({ socket });
    const signed: Buffer[] = [];
    try {
      const sign = async () => {
        const data = Buffer.from(`audited document ${n++}`);
        await client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
        return data;
      };
      signed.push(await sign());
      await expect.poll(() => records(path).length, { timeout: 5_000, interval: 50 }).toBeGreaterThanOrEqual(2);
      // A full disk, to the daemon: none of its files may grow.
      execFileSync('prlimit', ['--pid', String(daemon.pid), `--fsize=${statSync(path).size}:unlimited`]);
      for (let i = 0; i < 10; i++) signed.push(await sign()); // batched: the signatures are returned, their records wait
      await expect.poll(async () => (await client.status()).audit, { timeout: 5_000, interval: 50 }).toMatchObject({ healthy: false });
    } finally {
      await client.close();
    }
    daemon.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(records(path).filter((r) => signed.some((d) => r.dataSha256 === sha(d)))).toHaveLength(1);
    expect(verifyCli(path).status).toBe(0);

    const spilled = err.split('\n').filter((l) => l.startsWith('{"seq":'));
    expect(spilled.length).toBeGreaterThanOrEqual(10);
    appendFileSync(path, spilled.map((l) => `${l}\n`).join(''));
    expect(verifyCli(path)).toMatchObject({ status: 0 });
    for (const d of signed) expect(records(path).filter((r) => r.dataSha256 === sha(d))).toHaveLength(1);
  });
});

describe('a torn tail', () => {
  it('audit verify tells it from tampering, and the next start cuts it off with a record saying so', async () => {
    const path = join(td.dir, 'torn.jsonl');
    sup = await startSupervisor({ config: configWith({ path }) });
    await signOne(sup);
    await sup.close();
    sup = undefined;
    appendFileSync(path, '{"seq":99,"time":"2026-12-01T00:00:00.000Z","prev":"ab'); // a write cut short
    expect(verifyCli(path)).toMatchObject({ status: 4, stdout: expect.stringMatching(/^torn at line \d+: torn tail/) });

    sup = await startSupervisor({ config: configWith({ path }) });
    await signOne(sup);
    await sup.close();
    sup = undefined;
    expect(verifyCli(path)).toMatchObject({ status: 0 });
    expect(records(path).find((r) => r.event === 'auditRepaired')).toMatchObject({ result: 'ok' });

    const tampered = readFileSync(path, 'utf8').replace('"result":"ok"', '"result":"KEY_NOT_FOUND"');
    writeFileSync(path, tampered);
    expect(verifyCli(path)).toMatchObject({ status: 1, stdout: expect.stringMatching(/^broken at line/) });
  });
});

describe('a trail larger than any string', () => {
  it('is taken up at the next start from its end, and checked a chunk at a time, by the CLI and by verifyAudit', async () => {
    const small = join(td.dir, 'small.jsonl');
    sup = await startSupervisor({ config: configWith({ path: small }) });
    await signOne(sup);
    await sup.close();
    sup = undefined;
    // 600 MiB of zeros (a sparse file, no disk) before a newline and the records: longer than V8's
    // longest string (512 MiB), so a trail read whole could not even be held, let alone checked.
    const path = join(td.dir, 'large.jsonl');
    const hole = 600 * 2 ** 20;
    const fd = openSync(path, 'w');
    ftruncateSync(fd, hole);
    const tail = Buffer.concat([Buffer.from('\n'), readFileSync(small)]);
    writeSync(fd, tail, 0, tail.length, hole);
    closeSync(fd);
    const before = records(small).at(-1) as unknown as { seq: number; hash: string };

    expect(verifyCli(path)).toMatchObject({ status: 1, stdout: 'broken at line 1: not a JSON record\n' });
    sup = await startSupervisor({ config: configWith({ path }) });
    const { data } = await signOne(sup);
    await expect(sup.verifyAudit()).resolves.toMatchObject({ ok: false, kind: 'broken', line: 1, reason: 'not a JSON record' });
    // Ten at once share checks (one running, one after it) instead of ten threads each reading
    // 600 MiB: the trail is open for reading once at a time besides the writer's own descriptor.
    const opens = () =>
      readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`) === path;
        } catch {
          return false; // closed meanwhile
        }
      }).length;
    const baseline = opens();
    let most = baseline;
    const sampler = setInterval(() => (most = Math.max(most, opens())), 5);
    const verdicts = await Promise.all(Array.from({ length: 10 }, () => sup!.verifyAudit()));
    clearInterval(sampler);
    for (const v of verdicts) expect(v).toMatchObject({ ok: false, kind: 'broken', line: 1 });
    expect(most - baseline).toBe(1);
    await sup.close();
    sup = undefined;
    // The new records follow the last one on file.
    const end = Buffer.alloc(statSync(path).size - hole - tail.length);
    const rfd = openSync(path, 'r');
    readSync(rfd, end, 0, end.length, hole + tail.length);
    closeSync(rfd);
    const added = end.toString('utf8').trim().split('\n').map((l) => JSON.parse(l) as { seq: number; prev: string; dataSha256?: string });
    expect(added[0]).toMatchObject({ seq: before.seq + 1, prev: before.hash });
    expect(added.some((r) => r.dataSha256 === sha(data))).toBe(true);
  });
});

describe('rotation by size', () => {
  it('past maxBytes the trail goes on in a new file; the files verify together, oldest first, and a gap between them is found', async () => {
    const path = join(td.dir, 'rotated.jsonl');
    sup = await startSupervisor({ config: configWith({ path, flushMs: 5, maxBytes: 4096 }) });
    const signed = [];
    for (let i = 0; i < 40; i++) {
      signed.push(await signOne(sup));
      await new Promise((r) => setTimeout(r, 8));
    }
    await sup.close();
    sup = undefined;
    const rotated = readdirSync(td.dir).filter((f) => /^rotated\.jsonl\.\d+$/.test(f)).sort((a, b) => Number(a.split('.').pop()) - Number(b.split('.').pop()));
    expect(rotated.length).toBeGreaterThanOrEqual(2);
    const files = [...rotated.map((f) => join(td.dir, f)), path];
    for (const f of files.slice(0, -1)) expect(statSync(f).size).toBeLessThan(4096 + 4096);
    const cli = (args: string[]) => spawnSync(process.execPath, ['dist/src/cli.js', 'audit', 'verify', ...args], { encoding: 'utf8' });
    expect(cli(files)).toMatchObject({ status: 0, stdout: expect.stringMatching(/^ok: \d+ records, chain intact/) });
    // Every signature's record is in one of them.
    const all = files.flatMap((f) => records(f));
    for (const { data } of signed) expect(all.some((r) => r.dataSha256 === sha(data))).toBe(true);
    // The newest file alone: intact, and said to continue an earlier one.
    expect(cli([path]).stdout).toMatch(/follows [0-9a-f]{64}, in an earlier file/);
    // A file left out in between breaks the chain where the next one starts.
    expect(cli([files[0]!, ...files.slice(2)])).toMatchObject({ status: 1, stdout: expect.stringMatching(/^broken at line 1/) });
  });
});
