/**
 * npm run bench [-- --seconds S] [-- --million] [-- --quick] [-- --compare OLD.json [NEW.json]]
 *
 * Side by side, in one process run, on one SoftHSM2 token:
 *   raw-1     raw pkcs11js, one session, the main thread (the ceiling)
 *   raw-N     raw pkcs11js in N worker threads with N sessions (N = 2, 4)
 *   token     the supervisor's sign() through a token slot
 *   pool-N    the supervisor's sign() through an hsm slot of N workers (N = 1, 2, 4)
 * for ECDSA P-256 and RSA-2048 signatures and AES-GCM decryptions, 32 B and 4 KiB inputs, and
 * RSA-OAEP decryptions of 32 B, at concurrency 1, 16 and 256.
 * Reports ops/s, p50/p99 latency, RSS, and the ratio to the matching raw baseline (raw-1 for
 * the token slot and pool-1, raw-N for pool-N), which takes turns with the cell in 250 ms
 * slices (50 ms for one-call-at-a-time latency) so both see the same minutes of the machine,
 * and against raw-1 signs on the same vCPU as the session thread (same-cpu.ts); writes
 * var/bench.json; checks the targets on medians of 5 such comparisons. --million adds
 * 1,000,000 calls with memory samples; --quick runs only the target checks. Durable audit is
 * compared with batched audit the same way. The service API (service-bench.ts): a daemon in a
 * process of its own, its socket and mutual-TLS clients in turns with an in-process client on a
 * token slot, with the CPU of a call split by process and thread. Linux only.
 */
import { createCipheriv, createPublicKey, constants, publicEncrypt, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { pino } from 'pino';
import { callFor, closedLoop, openRawSession, type BenchOp, type RawConfig, type Run } from './raw-loop.js';
import { busiestThread, cpuOfSlice, MAIN_THREAD, otherCpus, pin, vcpuGap } from './same-cpu.js';
import { startSupervisor, type ConfigInput, type Pkcs11Client, type Pkcs11Supervisor } from '../src/index.js';
import { httpUsPerCall, serviceBench, type RemoteCpu } from './service-bench.js';
import { networkHsmBench } from './network-hsm.js';
import { compare } from './compare.js';
import type { Result } from './results.js';
import { pkcs11js } from '../workers/pkcs11js.js';
import { makeBenchToken, MODULE } from './bench-token.js';

const { values, positionals } = parseArgs({
  options: { seconds: { type: 'string', default: '1.5' }, million: { type: 'boolean', default: false }, quick: { type: 'boolean', default: false }, compare: { type: 'string' } },
  allowPositionals: true,
});
if (values.compare) {
  console.log(compare(values.compare, positionals[0]));
  process.exit(0);
}
const SECONDS = Number(values.seconds);
const { dir, conf, pin: PIN, aesKey: AES_KEY } = makeBenchToken();

// The main thread owns the library for the whole run, as the daemon's module registry does.
// Without an owner, the raw baseline's threads each loaded it, raced their C_Initialize calls
// on a fresh copy and unloaded it as they exited: SoftHSM2 then crashed (segfault, "malloc():
// unaligned fastbin chunk") or answered CKR_OPERATION_ACTIVE on a new session, in about one
// run in four.
const owner = new pkcs11js.PKCS11();
owner.load(MODULE);
owner.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
/** The supervisors' module: initialized by this thread first, with OS locking, so pools on it are safe. */
const MODULE_CONFIG = { path: MODULE, env: { SOFTHSM2_CONF: conf }, applicationInitializesWithOsLocking: true };


/** What each decryption cell decrypts, again and again: made once here, by size. */
const GCM_IV = randomBytes(12);
const ciphertexts = new Map<string, Uint8Array>();
for (const size of [32, 4096]) {
  const c = createCipheriv('aes-256-gcm', AES_KEY, GCM_IV);
  ciphertexts.set(`aes-gcm/${size}`, Buffer.concat([c.update(Buffer.alloc(size, 7)), c.final(), c.getAuthTag()]));
}
{
  const s = owner.C_OpenSession(owner.C_GetSlotList(true)[0]!, pkcs11js.CKF_SERIAL_SESSION);
  owner.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, { type: pkcs11js.CKA_LABEL, value: 'rsa-enc' }]);
  const [pub] = owner.C_FindObjects(s, 1);
  owner.C_FindObjectsFinal(s);
  const [n, e] = owner.C_GetAttributeValue(s, pub!, [{ type: pkcs11js.CKA_MODULUS }, { type: pkcs11js.CKA_PUBLIC_EXPONENT }]).map((a) => (a.value as Buffer).toString('base64url'));
  owner.C_CloseSession(s);
  const key = createPublicKey({ key: { kty: 'RSA', n, e }, format: 'jwk' });
  ciphertexts.set('rsa-oaep/32', publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.alloc(32, 7)));
}
const KEY_LABEL: Record<BenchOp, string> = { ec: 'ec', rsa: 'rsa', 'aes-gcm': 'aes', 'rsa-oaep': 'rsa-enc' };
const OP_NAME: Record<BenchOp, string> = { ec: 'ECDSA P-256', rsa: 'RSA-2048', 'aes-gcm': 'AES-GCM decrypt', 'rsa-oaep': 'RSA-OAEP decrypt' };

const percentile = (sorted: Float64Array, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;

function summarize(lat: number[], ops: number, ms: number) {
  const sorted = Float64Array.from(lat).sort();
  return { opsPerSec: Math.round((ops / ms) * 1000), p50us: Math.round(percentile(sorted, 0.5) * 1000), p99us: Math.round(percentile(sorted, 0.99) * 1000) };
}

const rawConfig = (mech: BenchOp, size: number): RawConfig => ({ label: KEY_LABEL[mech], pin: PIN, module: MODULE, mech, size, ciphertext: ciphertexts.get(`${mech}/${size}`), iv: GCM_IV });

/** N raw pkcs11js threads with a session each, kept between runs so runs can take turns with the supervisor. */
async function rawThreads(n: number, mech: BenchOp, size: number) {
  const threads = Array.from({ length: n }, () => new Worker(new URL('./raw-worker.js', import.meta.url), { workerData: rawConfig(mech, size) }));
  // Each turn takes its listeners off again: a turn every 250 ms would pile them up.
  const ask = (w: Worker, ms: number) =>
    new Promise<Run>((resolve, reject) => {
      const done = (r: Run) => (w.off('error', fail), resolve(r));
      const fail = (e: Error) => (w.off('message', done), reject(e));
      w.once('message', done).once('error', fail);
      w.postMessage(ms);
    });
  await Promise.all(threads.map((w) => ask(w, 10))); // sessions open, code warm
  return {
    async run(ms: number): Promise<Run> {
      const results = await Promise.all(threads.map((w) => ask(w, ms)));
      return { lat: results.flatMap((r) => r.lat), ops: results.reduce((a, r) => a + r.ops, 0), elapsed: Math.max(...results.map((r) => r.elapsed)) };
    },
    async close() {
      await Promise.all(threads.map((w) => (w.postMessage('stop'), new Promise((r) => w.once('exit', r)))));
    },
  };
}

type RawName = 'raw-1' | 'raw-2' | 'raw-4';

interface Baseline {
  run(ms: number): Promise<Run>;
  close(): Promise<void>;
}

/** A raw baseline by its name in the table: raw-1 in this thread, raw-N in N threads. */
async function openBaseline(name: RawName, mech: BenchOp, size: number): Promise<Baseline> {
  if (name !== 'raw-1') return rawThreads(Number(name.slice(4)), mech, size);
  const session = openRawSession(rawConfig(mech, size));
  return { run: async (ms) => callFor(session, ms), close: async () => session.close() };
}

/** One call of the cell's operation through a client. */
function operation(sup: Pkcs11Client, slot: string, mech: BenchOp, size: number): () => Promise<unknown> {
  const data = Buffer.alloc(size, 7);
  switch (mech) {
    case 'ec':
    case 'rsa': {
      const mechanism = mech === 'ec' ? 'ECDSA-SHA256' : 'RSA-PKCS1-SHA256';
      return () => sup.sign({ slot, key: mech, mechanism, data });
    }
    case 'aes-gcm': {
      const ciphertext = ciphertexts.get(`aes-gcm/${size}`)!;
      return () => sup.decrypt({ slot, key: 'aes', mechanism: 'AES-GCM', data: ciphertext, iv: GCM_IV });
    }
    case 'rsa-oaep': {
      const ciphertext = ciphertexts.get(`rsa-oaep/${size}`)!;
      return () => sup.decrypt({ slot, key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', data: ciphertext });
    }
  }
}

function throughSupervisor(sup: Pkcs11Client, slot: string, mech: BenchOp, size: number, concurrency: number, ms = SECONDS * 1000): Promise<Run> {
  return closedLoop(operation(sup, slot, mech, size), concurrency, ms);
}

/**
 * A comparison lets the raw baseline and the supervisor take turns in slices this long, so both
 * see the same machine: run one after the other, a cell on a shared 2-core machine moved by up
 * to 40% between seconds.
 */
const SLICE_MS = 250;
/**
 * One call at a time has no queue to fill or drain at each turn, so the latency comparison takes
 * shorter turns: the machine's slow phases last about a second, and 250 ms turns still let one
 * side meet more of them than the other.
 */
const LATENCY_SLICE_MS = 50;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const rate = (runs: Run[]) => (runs.reduce((a, r) => a + r.ops, 0) / runs.reduce((a, r) => a + r.elapsed, 0)) * 1000;
const p50us = (runs: Run[]) => { const lat = runs.flatMap((r) => r.lat); return summarize(lat, lat.length, 1).p50us; };

/**
 * A raw baseline and a supervisor cell, taking turns of `sliceMs` for SECONDS each. `sessionThread`
 * (against raw-1 only): the slot's one session thread, which then signs on the vCPU raw-1 signed
 * on in the slice before, the slices alternating between vCPUs (see same-cpu.ts); the main
 * thread then runs on the other vCPU, as the scheduler places two busy threads anyway.
 */
async function inTurns(raw: (ms: number) => Promise<Run>, cell: (ms: number) => Promise<Run>, sessionThread?: number, sliceMs = SLICE_MS): Promise<{ raw: Run[]; cell: Run[] }> {
  const runs = { raw: [] as Run[], cell: [] as Run[] };
  const slices = Math.max(1, Math.round((SECONDS * 1000) / sliceMs));
  for (let k = 0; k < slices; k++) {
    if (sessionThread) pin(MAIN_THREAD, [cpuOfSlice(k)]);
    runs.raw.push(await raw(sliceMs));
    if (sessionThread) (pin(MAIN_THREAD, otherCpus(cpuOfSlice(k))), pin(sessionThread, [cpuOfSlice(k)]));
    runs.cell.push(await cell(sliceMs));
  }
  if (sessionThread) (pin(MAIN_THREAD), pin(sessionThread));
  return runs;
}

/** A lone slot's session thread, found while it signs one call at a time. */
const sessionThreadOf = (sup: Pkcs11Supervisor, slot: string, mech: BenchOp) => busiestThread(() => throughSupervisor(sup, slot, mech, 32, 1, 300));

const rss = () => Math.round(process.memoryUsage().rss / 2 ** 20);
const results: Result[] = [];
type SlotInput = ConfigInput['slots'][string];
const slotCfg: SlotInput = { module: 'soft', token: { label: 'bench' }, pin: { env: 'BENCH_PIN' }, keys: { ec: { label: 'ec' }, rsa: { label: 'rsa' }, aes: { label: 'aes' }, rsaEnc: { label: 'rsa-enc' } }, queueLimit: 100_000, probeIntervalMs: 0 };
const startSlot = (name: string, slot: SlotInput) =>
  startSupervisor({ config: { modules: { soft: MODULE_CONFIG }, slots: { [name]: slot }, metrics: { enabled: false } }, logger: pino({ level: 'silent' }) });
/** Each target, its slot, and the raw baseline it is compared with. */
const TARGETS: [string, SlotInput, RawName][] = [
  ['token', { ...slotCfg, type: 'token' }, 'raw-1'],
  ['pool-1', { ...slotCfg, type: 'hsm', poolSize: 1 }, 'raw-1'],
  ['pool-2', { ...slotCfg, type: 'hsm', poolSize: 2 }, 'raw-2'],
  ['pool-4', { ...slotCfg, type: 'hsm', poolSize: 4 }, 'raw-4'],
];

for (const mech of values.quick ? [] : (['ec', 'rsa', 'aes-gcm', 'rsa-oaep'] as const)) {
  for (const size of mech === 'rsa-oaep' ? [32] : [32, 4096]) {
    const alg = OP_NAME[mech];
    const progress = (target: string) => process.stderr.write(`bench: ${alg} ${size} B ${target}\n`);
    for (const [target, concurrency] of [['raw-1', 1], ['raw-2', 2], ['raw-4', 4]] as const) {
      progress(target);
      const raw = await openBaseline(target, mech, size);
      const r = await raw.run(SECONDS * 1000);
      await raw.close();
      results.push({ alg, size, target, concurrency, ...summarize(r.lat, r.ops, r.elapsed), ratio: null, rssMiB: rss() });
    }
    // Each cell's ratio comes from its own comparison: the matching raw baseline and the cell take
    // turns in short slices (see SLICE_MS), so both see the same minutes of a shared machine.
    for (const [target, cfg, rawTarget] of TARGETS) {
      progress(target);
      const sup = await startSlot(target, cfg);
      await throughSupervisor(sup, target, mech, size, 16); // warm up
      // Opened after the supervisor and closed before it: its close logs the token out, for every session of the process.
      const raw = await openBaseline(rawTarget, mech, size);
      const thread = rawTarget === 'raw-1' ? await sessionThreadOf(sup, target, mech) : undefined;
      for (const c of [1, 16, 256]) {
        let mainMs = 0;
        const turns = await inTurns(raw.run, async (ms) => {
          const elu = performance.eventLoopUtilization();
          const r = await throughSupervisor(sup, target, mech, size, c, ms);
          mainMs += performance.eventLoopUtilization(elu).active;
          return r;
        }, thread);
        const ops = turns.cell.reduce((a, r) => a + r.ops, 0);
        const s = summarize(turns.cell.flatMap((r) => r.lat), ops, turns.cell.reduce((a, r) => a + r.elapsed, 0));
        results.push({ alg, size, target, concurrency: c, ...s, ratio: Number((rate(turns.cell) / rate(turns.raw)).toFixed(2)), rssMiB: rss(), mainUs: Math.round((mainMs * 1000) / ops) });
      }
      await raw.close();
      await sup.close();
    }
  }
}

/**
 * The cheapest possible thread hop on this machine: two threads handing a counter back and
 * forth with Atomics.wait/notify, no message, no copy. Every supervisor call pays at least this.
 */
async function hopFloorUs(): Promise<number> {
  const shared = new Int32Array(new SharedArrayBuffer(8));
  const echo = new Worker(
    `const a = new Int32Array(require('node:worker_threads').workerData);
     for (let seq = 0; ; ) { Atomics.wait(a, 0, seq); seq = Atomics.load(a, 0); if (seq < 0) break; Atomics.store(a, 1, seq); Atomics.notify(a, 1); }`,
    { eval: true, workerData: shared.buffer },
  );
  await new Promise((r) => setTimeout(r, 100));
  const lat: number[] = [];
  for (let i = 1; i <= 20_000; i++) {
    const t = performance.now();
    Atomics.store(shared, 0, i);
    Atomics.notify(shared, 0);
    Atomics.wait(shared, 1, i - 1);
    lat.push(performance.now() - t);
  }
  Atomics.store(shared, 0, -1);
  Atomics.notify(shared, 0);
  await echo.terminate();
  return summarize(lat, lat.length, 1).p50us;
}
/** The targets are judged on medians of this many comparisons, each in turns (see SLICE_MS). */
const REPEATS = 5;

/**
 * Adds `run`'s calls and the process's CPU time (all threads) to `into`. With both cores busy,
 * throughput is 2 cores divided by CPU time per call: the supervisor's extra µs per call is
 * what a pool loses to raw.
 */
async function withCpu(into: { us: number; ops: number }, run: () => Promise<Run>): Promise<Run> {
  const before = process.cpuUsage();
  const r = await run();
  const used = process.cpuUsage(before);
  into.us += used.user + used.system;
  into.ops += r.ops;
  return r;
}

/** Added p50 latency at concurrency 1: raw and the supervisor's token slot in turns, one call at a time. */
async function addedP50Us(sup: Pkcs11Supervisor, raw: Baseline, mech: BenchOp, thread: number): Promise<number> {
  const turns = await inTurns(raw.run, (ms) => throughSupervisor(sup, 'token', mech, 32, 1, ms), thread, LATENCY_SLICE_MS);
  return p50us(turns.cell) - p50us(turns.raw);
}

/** Messages the slot's workers were handed and the calls in them, so far. */
function handed(sup: Pkcs11Supervisor, slot: string): { messages: number; calls: number } {
  let messages = 0;
  let calls = 0;
  for (const w of sup.status().slots[slot]!.workers) {
    messages += w.handed.messages;
    calls += w.handed.calls;
  }
  return { messages, calls };
}

/** Runs `run` and adds the calls per message it saw on the slot to `into`. */
async function counting<T>(into: { messages: number; calls: number }, sup: Pkcs11Supervisor, slot: string, run: () => Promise<T>): Promise<T> {
  const before = handed(sup, slot);
  const r = await run();
  const after = handed(sup, slot);
  into.messages += after.messages - before.messages;
  into.calls += after.calls - before.calls;
  return r;
}
const perMessage = (h: { messages: number; calls: number }) => Number((h.calls / Math.max(1, h.messages)).toFixed(1));

/** Concurrencies below 256 where pools are also judged (issue: moderate concurrency), for the signatures. */
const MODERATE = [16, 64] as const;

async function targetMedians(mech: BenchOp) {
  const token = await startSlot('token', { ...slotCfg, type: 'token' });
  const pool = await startSlot('pool-2', { ...slotCfg, type: 'hsm', poolSize: 2 });
  const raw1 = await openBaseline('raw-1', mech, 32);
  const raw2 = await openBaseline('raw-2', mech, 32);
  await throughSupervisor(token, 'token', mech, 32, 16);
  await throughSupervisor(pool, 'pool-2', mech, 32, 16);
  const thread = await sessionThreadOf(token, 'token', mech);
  const poolCells = mech === 'ec' || mech === 'rsa' ? [256, ...MODERATE] : [256];
  const added: number[] = [];
  const tokenRatio: number[] = [];
  /** Per concurrency: the pool's ratio to raw-2, and CPU per call (all threads) of raw-2 and the pool. */
  const pools = new Map(poolCells.map((c) => [c, { ratio: [] as number[], rawCpu: [] as number[], poolCpu: [] as number[], handed: { messages: 0, calls: 0 } }]));
  const tokenHanded = { messages: 0, calls: 0 };
  for (let i = 0; i < REPEATS; i++) {
    added.push(await addedP50Us(token, raw1, mech, thread));
    const tokenTurns = await inTurns(raw1.run, (ms) => counting(tokenHanded, token, 'token', () => throughSupervisor(token, 'token', mech, 32, 256, ms)), thread);
    tokenRatio.push(rate(tokenTurns.cell) / rate(tokenTurns.raw));
    for (const [c, into] of pools) {
      const cpu = { raw2: { us: 0, ops: 0 }, pool2: { us: 0, ops: 0 } };
      const poolTurns = await inTurns(
        (ms) => withCpu(cpu.raw2, () => raw2.run(ms)),
        (ms) => withCpu(cpu.pool2, () => counting(into.handed, pool, 'pool-2', () => throughSupervisor(pool, 'pool-2', mech, 32, c, ms))),
      );
      into.ratio.push(rate(poolTurns.cell) / rate(poolTurns.raw));
      into.rawCpu.push(cpu.raw2.us / cpu.raw2.ops);
      into.poolCpu.push(cpu.pool2.us / cpu.pool2.ops);
    }
  }
  await raw1.close();
  await raw2.close();
  await token.close();
  await pool.close();
  const round = (xs: number[]) => xs.map((x) => Number(x.toFixed(2)));
  const at256 = pools.get(256)!;
  return {
    addedP50us: median(added),
    tokenRatio: Number(median(tokenRatio).toFixed(2)),
    poolRatio: Number(median(at256.ratio).toFixed(2)),
    cpuPerCallUs: { raw2: Math.round(median(at256.rawCpu)), pool2: Math.round(median(at256.poolCpu)) },
    /** Pools at moderate concurrency: ratio to raw-2, and the pool's CPU per call over raw-2's (each a median of its runs). */
    moderate: MODERATE.filter((c) => pools.has(c)).map((c) => {
      const p = pools.get(c)!;
      const cpuRatios = p.poolCpu.map((u, k) => u / p.rawCpu[k]!);
      return { concurrency: c, ratio: Number(median(p.ratio).toFixed(2)), cpuRatio: Number(median(cpuRatios).toFixed(2)), runs: { ratio: round(p.ratio), cpuRatio: round(cpuRatios) } };
    }),
    runs: { added, tokenRatio: round(tokenRatio), poolRatio: round(at256.ratio) },
    /** Calls per message to a session thread, as the mailbox batched them: the token slot at c=256, the pool by concurrency. */
    callsPerMessage: { token256: perMessage(tokenHanded), pool2: Object.fromEntries([...pools].map(([c, p]) => [c, perMessage(p.handed)])) },
  };
}
/**
 * Durable audit (a signature returned only once its record is on disk, the records of calls
 * waiting together sharing one write) against batched, each on the same kind of slot at c=64,
 * in turns.
 */
async function auditModes(slot: SlotInput): Promise<{ ratio: number; runs: number[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'p11sup-bench-audit-'));
  const start = (mode: 'batched' | 'durable') =>
    startSupervisor({
      config: { modules: { soft: MODULE_CONFIG }, slots: { [mode]: slot }, metrics: { enabled: false }, audit: { path: join(dir, `${mode}.jsonl`), mode } },
      logger: pino({ level: 'silent' }),
    });
  const batched = await start('batched');
  const durable = await start('durable');
  await throughSupervisor(batched, 'batched', 'ec', 32, 16);
  await throughSupervisor(durable, 'durable', 'ec', 32, 16);
  const runs: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const turns = await inTurns((ms) => throughSupervisor(batched, 'batched', 'ec', 32, 64, ms), (ms) => throughSupervisor(durable, 'durable', 'ec', 32, 64, ms));
    runs.push(Number((rate(turns.cell) / rate(turns.raw)).toFixed(2)));
  }
  await durable.close();
  await batched.close();
  return { ratio: median(runs), runs };
}

const medians: Record<string, Awaited<ReturnType<typeof targetMedians>>> = {};
for (const mech of ['ec', 'rsa', 'aes-gcm', 'rsa-oaep'] as const) {
  process.stderr.write(`bench: ${OP_NAME[mech]} targets, ${REPEATS} repeats\n`);
  medians[OP_NAME[mech]] = await targetMedians(mech);
}

process.stderr.write('bench: durable audit against batched\n');
const audit = { token: await auditModes({ ...slotCfg, type: 'token' }), pool2: await auditModes({ ...slotCfg, type: 'hsm', poolSize: 2 }) };

const serviceToken = await startSlot('token', { ...slotCfg, type: 'token' });
const service = await serviceBench({
  seconds: SECONDS,
  repeats: REPEATS,
  moduleConfig: MODULE_CONFIG,
  slot: slotCfg as Record<string, unknown>,
  inProcess: serviceToken,
  through: throughSupervisor,
  inTurns,
  rate,
  p50us,
  median,
});
await serviceToken.close();

const network = await networkHsmBench({ dir, pin: PIN, seconds: SECONDS, through: throughSupervisor });

process.stderr.write('bench: thread hop floor\n');
const hopFloor = await hopFloorUs();
process.stderr.write('bench: vCPU speeds\n');
const gapSession = openRawSession(rawConfig('rsa', 32));
const gap = vcpuGap((ms) => callFor(gapSession, ms).lat, 8);
gapSession.close();

let million: Record<string, unknown> | null = null;
if (values.million) {
  const sup = await startSlot('p', { ...slotCfg, type: 'hsm', poolSize: 2 });
  const data = Buffer.alloc(32, 7);
  const samples: { calls: number; heapMiB: number; rssMiB: number }[] = [];
  let started = 0;
  let calls = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 256 }, async () => {
      while (started < 1_000_000) {
        started++;
        await sup.sign({ slot: 'p', key: 'ec', mechanism: 'ECDSA-SHA256', data });
        if (++calls % 100_000 === 0) {
          globalThis.gc?.();
          samples.push({ calls, heapMiB: Math.round(process.memoryUsage().heapUsed / 2 ** 20), rssMiB: rss() });
        }
      }
    }),
  );
  million = { calls, seconds: Math.round((performance.now() - t0) / 1000), samples };
  await sup.close();
}

// ---- report
const pad = (s: string | number, n: number) => String(s).padStart(n);
const lines = [
  `| algorithm | input | target | conc. | ops/s | p50 µs | p99 µs | ratio | main µs/call | RSS MiB |`,
  `| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`,
  ...results.map((r) => `| ${r.alg} | ${r.size} B | ${r.target} | ${r.concurrency} | ${pad(r.opsPerSec, 6)} | ${r.p50us} | ${r.p99us} | ${r.ratio ?? ''} | ${r.mainUs ?? ''} | ${r.rssMiB} |`),
];
const find = (alg: string, size: number, target: string, c: number) => results.find((r) => r.alg === alg && r.size === size && r.target === target && r.concurrency === c)!;
const targets = Object.keys(medians).flatMap((alg) => {
  const m = medians[alg]!;
  return [
    { alg, target: 'pool of 2 ≥ 0.9× raw in 2 threads (c=256, 32 B)', value: m.poolRatio, runs: m.runs.poolRatio, pass: m.poolRatio >= 0.9 },
    { alg, target: 'added p50 latency at c=1 ≤ 100 µs (token vs raw-1, 32 B)', value: m.addedP50us, runs: m.runs.added, pass: m.addedP50us <= 100 },
    { alg, target: 'token slot at c=256 loses ≤ 10% vs raw-1 (32 B)', value: m.tokenRatio, runs: m.runs.tokenRatio, pass: m.tokenRatio >= 0.9 },
  ];
});
for (const [alg, m] of Object.entries(medians)) {
  for (const cell of m.moderate) {
    // RSA's token time hides the supervisor's work on any core count; ECDSA's does not on two
    // cores, so there the supervisor's CPU per call is judged, which holds on any core count.
    if (alg === 'RSA-2048') targets.push({ alg, target: `pool of 2 ≥ 0.9× raw in 2 threads (c=${cell.concurrency}, 32 B)`, value: cell.ratio, runs: cell.runs.ratio, pass: cell.ratio >= 0.9 });
    else targets.push({ alg, target: `pool of 2: CPU per call (all threads) ≤ 1.15× raw-2's (c=${cell.concurrency}, 32 B)`, value: cell.cpuRatio, runs: cell.runs.cpuRatio, pass: cell.cpuRatio <= 1.15 });
  }
}
targets.push({ alg: 'ECDSA P-256', target: 'durable audit ≥ 0.8× batched audit (token slot, c=64, 32 B)', value: audit.token.ratio, runs: audit.token.runs, pass: audit.token.ratio >= 0.8 });
for (const r of network.filter((n) => n.concurrency >= n.pool)) {
  targets.push({ alg: 'ECDSA P-256', target: `network HSM ${r.delayMs} ms, pool of ${r.pool}, c=${r.concurrency}: ≥ 0.9× raw and ≥ 0.85× ideal`, value: r.ratioIdeal, runs: [r.ratioRaw, r.ratioIdeal], pass: r.ratioRaw >= 0.9 && r.ratioIdeal >= 0.85 });
}
for (const r of service) {
  targets.push({ alg: r.alg, target: 'added p50 over the socket at c=1 ≤ 150 µs (vs in-process, token slot, 32 B)', value: r.addedP50us.socket, runs: r.runs.socketAdded, pass: r.addedP50us.socket <= 150 });
  targets.push({ alg: r.alg, target: 'added p50 over mutual TLS at c=1 ≤ 300 µs (vs in-process, token slot, 32 B)', value: r.addedP50us.tls, runs: r.runs.tlsAdded, pass: r.addedP50us.tls <= 300 });
  const floor = r.alg === 'RSA-2048' ? 0.9 : 0.6;
  targets.push({ alg: r.alg, target: `socket ≥ ${floor}× in-process at c=64 (token slot, 32 B)`, value: r.ratioC64.socket, runs: r.runs.socketRatio, pass: r.ratioC64.socket >= floor });
}
console.log(`Conditions: ${availableParallelism()} cores, Node ${process.version}, ${SECONDS} s a comparison in ${SLICE_MS} ms turns (${LATENCY_SLICE_MS} ms for latency), medians of ${REPEATS}; session threads pinned to raw-1's vCPU (taskset) for the token and pool-1 comparisons; concurrency 1, 16, 256 in the table${values.quick ? ' (not run: --quick)' : ''}.\n`);
console.log(lines.join('\n'));
// What bounds the misses: the hop every call pays, and the main thread's busy time per call,
// which on a machine with no spare core is taken from the signing threads.
console.log(`\nThread hop floor (Atomics.wait/notify round trip between two threads): p50 ${hopFloor} µs`);
console.log(`vCPU speeds (raw RSA-2048 p50 on each vCPU in turn, per second): one vCPU over 10% slower in ${gap.slowerSeconds} of ${gap.seconds} s, by up to ${gap.largestGap}×`);
if (!values.quick) {
  const ec = (target: string, c: number) => find('ECDSA P-256', 32, target, c);
  console.log(`ECDSA P-256 sign on the token: ${(1e6 / ec('raw-1', 1).opsPerSec).toFixed(0)} µs of CPU; main thread per call in pool-2 at c=256: ${ec('pool-2', 256).mainUs} µs, on ${availableParallelism()} cores`);
}
console.log(`\nTargets (median of ${REPEATS} comparisons, raw and supervisor taking turns in ${SLICE_MS} ms slices, ${LATENCY_SLICE_MS} ms for latency, signing on the same vCPU against raw-1; the runs in brackets):`);
for (const t of targets) console.log(`  ${t.pass ? 'PASS' : 'MISS'}  ${t.alg}: ${t.target}: ${t.value} [${t.runs.join(', ')}]`);
console.log(`Durable audit against batched, pool of 2 (both cores signing), c=64, 32 B: ${audit.pool2.ratio} [${audit.pool2.runs.join(', ')}]`);
console.log('\nCPU per call, all threads (median, c=256): ' + Object.entries(medians).map(([alg, m]) => `${alg}: raw-2 ${m.cpuPerCallUs.raw2} µs, pool-2 ${m.cpuPerCallUs.pool2} µs`).join('; '));
console.log('Calls per message to a session thread (batch sizes seen): ' + Object.entries(medians).map(([alg, m]) => `${alg}: token c=256 ${m.callsPerMessage.token256}, pool-2 ${Object.entries(m.callsPerMessage.pool2).map(([c, n]) => `c=${c} ${n}`).join(' ')}`).join('; '));
console.log('Pool of 2 at moderate concurrency (vs raw-2; CPU per call over raw-2\'s): ' + Object.entries(medians).flatMap(([alg, m]) => m.moderate.map((c) => `${alg} c=${c.concurrency}: ${c.ratio}×, CPU ${c.cpuRatio}×`)).join('; '));
console.log('\nNetwork HSM stand-in (fault module: delay C_Sign in front of SoftHSM2), hsm pools against as many raw pkcs11js threads (raw scaled to the sessions in use at c < pool):');
console.log('| delay | pool | conc. | raw ops/s | supervisor ops/s | ideal | vs raw | vs ideal | p99 queue ms | idle while waiting |');
console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const r of network) console.log(`| ${r.delayMs} ms | ${r.pool} | ${r.concurrency} | ${r.raw} | ${r.supervisor} | ${r.ideal} | ${r.ratioRaw} | ${r.ratioIdeal} | ${r.p99QueueMs} | ${(r.idleWhileWaiting * 100).toFixed(1)}% |`);
console.log('\nService API against the in-process client (token slot, 32 B, daemon in a process of its own; median of runs):');
console.log('| algorithm | way in | added p50 µs at c=1 | ratio at c=64 | runs (ratio) |');
console.log('| --- | --- | ---: | ---: | --- |');
for (const r of service) {
  console.log(`| ${r.alg} | socket | ${r.addedP50us.socket} | ${r.ratioC64.socket} | ${r.runs.socketRatio.join(', ')} |`);
  console.log(`| ${r.alg} | mutual TLS | ${r.addedP50us.tls} | ${r.ratioC64.tls} | ${r.runs.tlsRatio.join(', ')} |`);
}
for (const r of service) {
  const split = (c: RemoteCpu) => `client ${c.client} µs, daemon main (HTTP + supervisor) ${c.daemonMain} µs, daemon session (token) ${c.daemonOthers} µs`;
  console.log(
    `CPU per call, ${r.alg}, c=64: in-process main ${r.cpu.inProcess.main} µs + session ${r.cpu.inProcess.others} µs; ` +
      `socket, batched: ${split(r.cpu.socket)} (HTTP ≈ ${httpUsPerCall(r, r.cpu.socket)} µs a call); ` +
      `socket, one request per call (ratio ${r.ratioC64.socketUnbatched} [${r.runs.socketUnbatchedRatio.join(', ')}]): ${split(r.cpu.socketUnbatched)} (HTTP ≈ ${httpUsPerCall(r, r.cpu.socketUnbatched)} µs).`,
  );
}
if (million) console.log('\n1,000,000 calls (pool of 2, c=256, ECDSA, 32 B):', JSON.stringify(million));
mkdirSync('var', { recursive: true });
writeFileSync('var/bench.json', JSON.stringify({ when: new Date().toISOString(), seconds: SECONDS, cores: availableParallelism(), hopFloorP50us: hopFloor, vcpuGap: gap, results, targets, medians, audit, service, network, million }, null, 2));
console.log('\nwritten: var/bench.json');
owner.C_Finalize();
process.exit(0);
