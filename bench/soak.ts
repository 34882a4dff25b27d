/**
 * npm run soak [-- --minutes N] [-- --chaos]: steady signing load on a token slot and a pool of
 * 2 for N minutes (default 2), through the fault-injecting module, with a fault injected every
 * few seconds (device errors, lost sessions, logouts, hangs, a removed token). --chaos adds, in
 * turn: the token re-initialized in place by another process with a new key under the same
 * label and id, a flood of idle connections to the HTTP listener from another process, and a
 * full disk under a durable audit trail (a file size limit). Every returned signature must
 * verify against a key that existed while the call ran, and (with --chaos) have its record in
 * the audit trail, which must verify. Prints totals: calls, outcomes by code, faults,
 * recoveries, calls lost, memory before and after.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, createPublicKey, randomBytes, verify, type KeyObject } from 'node:crypto';
import { createReadStream, mkdirSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { startDaemon, verifyAuditFile } from '../src/index.js';

const { values } = parseArgs({ options: { minutes: { type: 'string', default: '2' }, concurrency: { type: 'string', default: '32' }, chaos: { type: 'boolean', default: false } } });
const chaos = values.chaos;
const minutes = Number(values.minutes);
const concurrency = Number(values.concurrency);
const faultModule = execFileSync('bash', ['scripts/build-fault-module.sh'], { encoding: 'utf8' }).trim();

const dir = mkdtempSync(join(tmpdir(), 'p11sup-soak-'));
const conf = join(dir, 'softhsm2.conf');
writeFileSync(conf, `directories.tokendir = ${dir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
const env = { ...process.env, SOFTHSM2_CONF: conf };
const pin = randomBytes(4).toString('hex');
const soPin = randomBytes(4).toString('hex');
const SOFTHSM = '/usr/lib/softhsm/libsofthsm2.so';
execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'soak', '--so-pin', soPin, '--pin', pin], { env, stdio: 'ignore' });
const p11tool = (...args: string[]) => execFileSync('pkcs11-tool', ['--module', SOFTHSM, '--token-label', 'soak', ...args], { env, stdio: ['ignore', 'pipe', 'ignore'] });
/** The keys the token has held, each with when it came and went: a signature must verify against one alive while its call ran. */
const keys: { key: KeyObject; from: number; to: number }[] = [];
function newKey(): void {
  p11tool('--login', '--pin', pin, '--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'ec', '--id', '02');
  const der = join(dir, 'pub.der');
  p11tool('--read-object', '--type', 'pubkey', '--id', '02', '-o', der);
  keys.push({ key: createPublicKey({ key: readFileSync(der), format: 'der', type: 'spki' }), from: Date.now(), to: Infinity });
}
newKey();
/** Another process re-initializes the token in place and makes a new key under the same label and id. */
function reinitializeToken(): void {
  const slots = execFileSync('softhsm2-util', ['--show-slots'], { env, encoding: 'utf8' });
  const slotId = /Slot (\d+)\s+Slot info:[\s\S]*?Label:\s+soak\s/.exec(slots)?.[1];
  const old = keys.at(-1)!;
  old.to = Date.now(); // gone from here on (the re-init deletes it)
  if (slotId !== undefined) {
    execFileSync('softhsm2-util', ['--init-token', '--slot', slotId, '--label', 'soak', '--so-pin', soPin, '--pin', pin], { env, stdio: 'ignore' });
  } else {
    // The token's files did not survive the full disk (SoftHSM2 writes them too): delete it and make it anew.
    execFileSync('softhsm2-util', ['--delete-token', '--token', 'soak'], { env, stdio: 'ignore' });
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'soak', '--so-pin', soPin, '--pin', pin], { env, stdio: 'ignore' });
  }
  old.to = Date.now();
  newKey();
}
const auditPath = join(dir, 'audit.jsonl');
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
const configFile = join(dir, 'config.json');
writeFileSync(
  configFile,
  JSON.stringify({
    modules: { fault },
    slots: { t: slot, p: { ...slot, type: 'hsm', poolSize: 2 } },
    metrics: { host: '127.0.0.1', port: 0, maxConnections: 64, idleTimeoutMs: 2000 },
    ...(chaos ? { audit: { path: auditPath, mode: 'durable' } } : {}),
  }),
);
const daemon = await startDaemon(configFile, pino({ level: 'silent' }));
const sup = daemon.sup;
const port = (daemon.server!.address() as { port: number }).port;
process.on('SIGXFSZ', () => undefined); // a full disk is EFBIG here, not death

const FAULTS = [
  ['fail C_Sign 1 CKR_DEVICE_ERROR'],
  ['fail C_SignInit 1 CKR_SESSION_HANDLE_INVALID'],
  ['logout'],
  ['fail C_Sign 1 CKR_FUNCTION_FAILED'],
  ['hang C_Sign 3000'],
  ['fail C_Sign 1 CKR_DEVICE_ERROR', 'fail C_OpenSession 1 CKR_DEVICE_ERROR'],
  ['removed'],
];
/** --chaos, in turn with the faults: what another process or the machine does to the daemon. */
const CHAOS: [string, () => Promise<void>][] = [
  ['token re-initialized with a new key', async () => reinitializeToken()],
  [
    'descriptor flood: 5,000 idle connections from another process',
    () =>
      new Promise<void>((resolve) => {
        const flood = spawn(process.execPath, ['-e', `const n=require('node:net');for(let i=0;i<5000;i++)n.connect(${port},'127.0.0.1').on('error',()=>{});setTimeout(()=>process.exit(0),3000)`]);
        flood.on('exit', () => resolve());
      }),
  ],
  [
    'full disk under the durable audit trail for 2 s',
    async () => {
      execFileSync('prlimit', ['--pid', String(process.pid), '--fsize=1:unlimited']);
      await new Promise((r) => setTimeout(r, 2000));
      execFileSync('prlimit', ['--pid', String(process.pid), '--fsize=unlimited:unlimited']);
    },
  ],
];
const chaosCounts: Record<string, number> = {};
/** SHA-256 of the data of every signature returned (each must have its audit record), packed off the JS heap. */
const returned = {
  chunks: [] as Buffer[],
  n: 0,
  add(digest: Buffer): void {
    const at = this.n % 32_768;
    if (at === 0) this.chunks.push(Buffer.allocUnsafe(32 * 32_768));
    digest.copy(this.chunks.at(-1)!, 32 * at);
    this.n++;
  },
  *hex(): Iterable<string> {
    for (let i = 0; i < this.n; i++) yield this.chunks[Math.floor(i / 32_768)]!.toString('hex', 32 * (i % 32_768), 32 * (i % 32_768) + 32);
  },
};
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
    if (chaos && i % 3 === 2) {
      const [what, act] = CHAOS[Math.floor(i / 3) % CHAOS.length]!;
      await act();
      chaosCounts[what] = (chaosCounts[what] ?? 0) + 1;
      continue;
    }
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
      const startedAt = Date.now();
      const sig = await sup.sign({ slot: name, key: 'ec', mechanism: 'ECDSA-SHA256', data });
      const endedAt = Date.now();
      // A key that existed at some moment while the call ran.
      const alive = keys.filter((k) => k.from <= endedAt && k.to >= startedAt);
      if (alive.some((k) => verify('sha256', data, k.key, sig))) counts.ok++;
      else counts.badSignature++;
      if (chaos) returned.add(createHash('sha256').update(data).digest());
    } catch (e) {
      const code = (e as { code?: string }).code ?? 'UNTYPED';
      counts.byCode[code] = (counts.byCode[code] ?? 0) + 1;
      if (code === 'SLOT_FAILED') {
        sup.reset(name);
        await new Promise((r) => setTimeout(r, 100));
      }
      // Refused at once: a caller retrying in a tight loop of rejections would starve the event loop.
      if (code === 'AUDIT_UNAVAILABLE' || code === 'TOKEN_NOT_FOUND') await new Promise((r) => setTimeout(r, 50));
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
await daemon.stop();
const heapAfter = mem(); // before the checks below read the whole audit trail into memory
let audit: Record<string, unknown> | null = null;
if (chaos) {
  // Line by line: twelve minutes of chaos write a trail of about a GiB, more than a string holds.
  const onDisk = new Set<string>();
  for await (const l of createInterface({ input: createReadStream(auditPath) })) {
    const h = /"dataSha256":"([0-9a-f]{64})"/.exec(l)?.[1];
    if (h) onDisk.add(h);
  }
  const verdict = verifyAuditFile(auditPath);
  let missing = 0;
  for (const h of returned.hex()) if (!onDisk.has(h)) missing++;
  audit = { verifies: verdict.ok, records: verdict.ok ? verdict.records : null, returnedWithoutRecord: missing };
}
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
  heapMiB: { before: heapBefore, after: heapAfter },
  ...(chaos ? { chaos: chaosCounts, keysOverTheRun: keys.length, audit } : {}),
};
console.log(JSON.stringify(summary, null, 2));
const auditOk = !audit || (audit.verifies === true && audit.returnedWithoutRecord === 0);
process.exit(summary.lost === 0 && summary.badSignatures === 0 && !summary.errors.UNTYPED && auditOk ? 0 : 1);
