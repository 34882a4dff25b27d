/**
 * Pools as users run them against a network HSM: the fault module's `delay C_Sign MS` in front
 * of SoftHSM2 stands in for an HSM that answers in 2 or 5 ms, so the work is waiting, not CPU.
 * Pools of 8, 32 and 64 sessions against as many raw pkcs11js threads, at concurrency from 1
 * to 1,024, each cell against raw and against the ideal (sessions in use / latency). Reports
 * the p99 queue time and how often a worker sat idle while calls waited.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { pino } from 'pino';
import { startSupervisor, type Pkcs11Supervisor } from '../src/index.js';
import type { RawConfig, Run } from './raw-loop.js';
import type { BenchCells } from './cells.js';

/** The fault module, built if it is not (the same script the tests use). */
const FAULT_MODULE = execFileSync('bash', ['scripts/build-fault-module.sh'], { encoding: 'utf8' }).trim();

export interface NetworkHsmRow {
  delayMs: number;
  pool: number;
  concurrency: number;
  raw: number;
  supervisor: number;
  ideal: number;
  ratioRaw: number;
  ratioIdeal: number;
  p99QueueMs: number;
  /** Share of samples (every 5 ms) in which calls waited while a worker of the pool was free. */
  idleWhileWaiting: number;
}

/** N raw threads on the fault module, each with its own session. */
async function rawThreads(n: number, pin: string) {
  const cfg: RawConfig = { label: 'ec', pin, module: FAULT_MODULE, mech: 'ec', size: 32 };
  const threads = Array.from({ length: n }, () => new Worker(new URL('./raw-worker.js', import.meta.url), { workerData: cfg }));
  const ask = (w: Worker, ms: number) => new Promise<Run>((r) => (w.once('message', r), w.postMessage(ms)));
  await Promise.all(threads.map((w) => ask(w, 20)));
  return {
    async rate(ms: number): Promise<number> {
      const runs = await Promise.all(threads.map((w) => ask(w, ms)));
      return (runs.reduce((a, r) => a + r.ops, 0) / Math.max(...runs.map((r) => r.elapsed))) * 1000;
    },
    async close() {
      await Promise.all(threads.map((w) => (w.postMessage('stop'), new Promise((r) => w.once('exit', r)))));
    },
  };
}

/** A closed loop of `concurrency` callers through the bench's own loop, with queue times and idle-worker samples. */
async function supervised(cells: BenchCells, sup: Pkcs11Supervisor, concurrency: number, ms: number): Promise<{ rate: number; queued: number[]; idleWhileWaiting: number }> {
  const queued: number[] = [];
  const onDone = (e: { queuedMs: number }) => queued.push(e.queuedMs);
  sup.on('callCompleted', onDone);
  let samples = 0;
  let idle = 0;
  const sampler = setInterval(() => {
    const s = sup.snapshot().slots.net!;
    samples++;
    if (s.queued > 0 && s.workers.some((w) => w.state === 'logged_in' && !w.busy)) idle++;
  }, 5);
  const run = await cells.through(sup, 'net', 'ec', 32, concurrency, ms);
  clearInterval(sampler);
  sup.off('callCompleted', onDone);
  return { rate: (run.ops / run.elapsed) * 1000, queued, idleWhileWaiting: samples ? idle / samples : 0 };
}

export async function networkHsmBench(cells: BenchCells): Promise<NetworkHsmRow[]> {
  const faults = join(cells.dir, 'net-faults');
  mkdirSync(faults, { recursive: true });
  process.env.FAULT_PKCS11_DIR = faults;
  const rows: NetworkHsmRow[] = [];
  for (const delayMs of [2, 5]) {
    writeFileSync(join(faults, 'control'), `delay C_Sign ${delayMs}\n`);
    for (const pool of [8, 32, 64]) {
      process.stderr.write(`bench: network HSM (${delayMs} ms), pool of ${pool}\n`);
      const sup = await startSupervisor({
        config: {
          modules: { net: { path: FAULT_MODULE, env: { SOFTHSM2_CONF: process.env.SOFTHSM2_CONF!, FAULT_PKCS11_DIR: faults }, applicationInitializesWithOsLocking: true } },
          slots: { net: { module: 'net', type: 'hsm', poolSize: pool, token: { label: 'bench' }, pin: { env: 'BENCH_PIN' }, keys: { ec: { label: 'ec' } }, queueLimit: 100_000, probeIntervalMs: 0, lazy: false } },
          metrics: { enabled: false },
        },
        logger: pino({ level: 'silent' }),
      });
      const raw = await rawThreads(pool, cells.pin);
      for (const concurrency of [1, pool, 4 * pool, 1024]) {
        const ms = cells.seconds * 1000;
        const rawRate = await raw.rate(ms); // raw threads are closed loops of one call each: the pool's own concurrency
        const s = await supervised(cells, sup, concurrency, ms);
        const sorted = s.queued.sort((a, b) => a - b);
        const inUse = Math.min(concurrency, pool);
        const ideal = (inUse * 1000) / delayMs;
        rows.push({
          delayMs,
          pool,
          concurrency,
          raw: Math.round(rawRate * (inUse / pool)),
          supervisor: Math.round(s.rate),
          ideal,
          ratioRaw: Number((s.rate / (rawRate * (inUse / pool))).toFixed(2)),
          ratioIdeal: Number((s.rate / ideal).toFixed(2)),
          p99QueueMs: sorted.length ? Number(sorted[Math.floor(sorted.length * 0.99)]!.toFixed(1)) : 0,
          idleWhileWaiting: Number(s.idleWhileWaiting.toFixed(3)),
        });
      }
      await raw.close();
      await sup.close();
    }
  }
  writeFileSync(join(faults, 'control'), '');
  return rows;
}
