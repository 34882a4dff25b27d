/**
 * npm run soak [-- --minutes N]: steady signing load on a token slot and a pool of 2 for N
 * minutes (default 2), through the fault-injecting module, with a fault injected every few
 * seconds (device errors, lost sessions, logouts, hangs, a removed token). Prints totals:
 * calls, outcomes by code, faults, recoveries, calls lost, memory before and after.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, verify } from 'node:crypto';
import { mkdirSync, mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { startSupervisor } from '../src/index.js';

const { values } = parseArgs({ options: { minutes: { type: 'string', default: '2' }, concurrency: { type: 'string', default: '32' } } });
const minutes = Number(values.minutes);
const concurrency = Number(values.concurrency);
const faultModule = execFileSync('bash', ['scripts/build-fault-module.sh'], { encoding: 'utf8' }).trim();

const dir = mkdtempSync(join(tmpdir(), 'p11sup-soak-'));
const conf = join(dir, 'softhsm2.conf');
writeFileSync(conf, `directories.tokendir = ${dir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
const env = { ...process.env, SOFTHSM2_CONF: conf };
const pin = randomBytes(4).toString('hex');
execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'soak', '--so-pin', randomBytes(4).toString('hex'), '--pin', pin], { env, stdio: 'ignore' });
execFileSync('pkcs11-tool', ['--module', '/usr/lib/softhsm/libsofthsm2.so', '--token-label', 'soak', '--login', '--pin', pin, '--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'ec', '--id', '02'], { env, stdio: 'ignore' });
const faultDir = join(dir, 'faults');
mkdirSync(faultDir);
process.env.SOAK_PIN = pin;

let gen = 0;
const setFaults = (...rules: string[]) => {
  const tmp = join(faultDir, `control.${++gen}`);
  writeFileSync(tmp, `# ${gen}\n${rules.join('\n')}\n`);
  renameSync(tmp, join(faultDir, 'control'));
};

const fault = { path: faultModule, env: { SOFTHSM2_CONF: conf, FAULT_PKCS11_DIR: faultDir } };
const slot = { module: 'fault', token: { label: 'soak' }, pin: { env: 'SOAK_PIN' }, keys: { ec: { label: 'ec', id: '02' } }, probeIntervalMs: 500, hungCallGraceMs: 500, callTimeoutMs: 2000 };
const sup = await startSupervisor({
  config: { modules: { fault }, slots: { t: slot, p: { ...slot, type: 'hsm', poolSize: 2 } }, metrics: { enabled: false } },
  logger: pino({ level: 'silent' }),
});
const keys = { t: (await sup.getPublicKey({ slot: 't', key: 'ec' })).keyObject, p: (await sup.getPublicKey({ slot: 'p', key: 'ec' })).keyObject };

const FAULTS = [
  ['fail C_Sign 1 CKR_DEVICE_ERROR'],
  ['fail C_SignInit 1 CKR_SESSION_HANDLE_INVALID'],
  ['logout'],
  ['fail C_Sign 1 CKR_FUNCTION_FAILED'],
  ['hang C_Sign 3000'],
  ['fail C_Sign 1 CKR_DEVICE_ERROR', 'fail C_OpenSession 1 CKR_DEVICE_ERROR'],
  ['removed'],
];
const counts = { issued: 0, settled: 0, ok: 0, badSignature: 0, byCode: {} as Record<string, number>, faults: 0, restarts: 0, moduleResets: 0, slotFailures: 0 };
sup.on('restart', () => counts.restarts++);
sup.on('moduleReset', () => counts.moduleResets++);
sup.on('slotFailed', () => counts.slotFailures++);

const mem = () => (globalThis.gc?.(), Math.round(process.memoryUsage().heapUsed / 2 ** 20));
const heapBefore = mem();
const end = Date.now() + minutes * 60_000;
let stopFaults = false;
const injector = (async () => {
  for (let i = 0; !stopFaults; i++) {
    await new Promise((r) => setTimeout(r, 3000));
    if (stopFaults) break;
    const rules = FAULTS[i % FAULTS.length]!;
    setFaults(...rules);
    counts.faults++;
    await new Promise((r) => setTimeout(r, rules[0] === 'removed' ? 1500 : 200));
    setFaults();
  }
})();

async function client(n: number): Promise<void> {
  const name = n % 2 === 0 ? 't' : 'p';
  while (Date.now() < end) {
    const data = Buffer.from(`soak ${n} ${counts.issued}`);
    counts.issued++;
    try {
      const sig = await sup.sign({ slot: name, key: 'ec', mechanism: 'ECDSA-SHA256', data });
      if (verify('sha256', data, keys[name], sig)) counts.ok++;
      else counts.badSignature++;
    } catch (e) {
      const code = (e as { code?: string }).code ?? 'UNTYPED';
      counts.byCode[code] = (counts.byCode[code] ?? 0) + 1;
      if (code === 'SLOT_FAILED') {
        sup.reset(name);
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      counts.settled++;
    }
  }
}

const t0 = Date.now();
await Promise.all(Array.from({ length: concurrency }, (_, i) => client(i)));
stopFaults = true;
await injector;
const seconds = (Date.now() - t0) / 1000;
await sup.close();
const summary = {
  minutes,
  concurrency,
  calls: counts.issued,
  ok: counts.ok,
  errors: counts.byCode,
  badSignatures: counts.badSignature,
  lost: counts.issued - counts.settled,
  faultsInjected: counts.faults,
  restarts: counts.restarts,
  moduleResets: counts.moduleResets,
  slotFailures: counts.slotFailures,
  callsPerSecond: Math.round(counts.issued / seconds),
  heapMiB: { before: heapBefore, after: mem() },
};
console.log(JSON.stringify(summary, null, 2));
process.exit(summary.lost === 0 && summary.badSignatures === 0 && !summary.errors.UNTYPED ? 0 : 1);
