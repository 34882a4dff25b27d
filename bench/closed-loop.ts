/**
 * npm run bench:closed-loop [-- --seconds S] [-- --repeats N] [-- --against var/bench.json]
 *
 * The bench's moderate-concurrency pool cells measured the plain way, as a user would check
 * them: no pinning, no turns inside one process. Each side runs in a fresh process of its own,
 * the two alternating: raw pkcs11js in 2 threads with a session each, and the supervisor's
 * `sign` through an hsm pool of 2 with a closed loop of C awaited callers. The ratio is the
 * median of the supervisor's runs over the median of raw's, and is set beside the bench's own
 * ratio for the same cell (from its var/bench.json): the two should agree within 10%.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { pino } from 'pino';
import { startSupervisor } from '../src/index.js';
import { pkcs11js } from '../workers/pkcs11js.js';
import { makeBenchToken, MODULE } from './bench-token.js';
import { closedLoop, type Run } from './raw-loop.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    repeats: { type: 'string', default: '3' },
    against: { type: 'string', default: 'var/bench.json' },
    side: { type: 'string' },
    mech: { type: 'string' },
    concurrency: { type: 'string' },
  },
});
const SECONDS = Number(values.seconds);
const ALG = { ec: 'ECDSA P-256', rsa: 'RSA-2048' } as const;
type Mech = keyof typeof ALG;

if (values.side) {
  console.log(JSON.stringify({ opsPerSec: await side(values.side, values.mech as Mech, Number(values.concurrency)) }));
  process.exit(0);
}
await main();

/** One side of a cell, in this (child) process: its ops/s over SECONDS after a warm-up. */
async function side(which: string, mech: Mech, concurrency: number): Promise<number> {
  // As in the bench: this thread owns the initialized library before any session thread opens it.
  const owner = new pkcs11js.PKCS11();
  owner.load(MODULE);
  owner.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  if (which === 'raw') {
    const config = { label: mech, pin: process.env.BENCH_PIN!, module: MODULE, mech, size: 32 };
    const threads = [0, 1].map(() => new Worker(new URL('./raw-worker.js', import.meta.url), { workerData: config }));
    const run = (ms: number) => Promise.all(threads.map((w) => new Promise<Run>((resolve) => (w.once('message', resolve), w.postMessage(ms)))));
    await run(500);
    const runs = await run(SECONDS * 1000);
    for (const w of threads) w.postMessage('stop');
    return Math.round(runs.reduce((a, r) => a + (r.ops / r.elapsed) * 1000, 0));
  }
  const sup = await startSupervisor({
    config: {
      modules: { soft: { path: MODULE, env: { SOFTHSM2_CONF: process.env.SOFTHSM2_CONF! }, applicationInitializesWithOsLocking: true } },
      slots: { pool: { type: 'hsm', poolSize: 2, module: 'soft', token: { label: 'bench' }, pin: { env: 'BENCH_PIN' }, keys: { [mech]: { label: mech } }, probeIntervalMs: 0 } },
      metrics: { enabled: false },
    },
    logger: pino({ level: 'silent' }),
  });
  const data = Buffer.alloc(32, 7);
  const mechanism = mech === 'ec' ? 'ECDSA-SHA256' : 'RSA-PKCS1-SHA256';
  const sign = () => sup.sign({ slot: 'pool', key: mech, mechanism, data });
  await closedLoop(sign, concurrency, 500);
  const run = await closedLoop(sign, concurrency, SECONDS * 1000);
  await sup.close();
  return Math.round((run.ops / run.elapsed) * 1000);
}

async function main(): Promise<void> {
  makeBenchToken(); // its SOFTHSM2_CONF and BENCH_PIN go to the children
  const bench = existsSync(values.against) ? (JSON.parse(readFileSync(values.against, 'utf8')) as { medians?: Record<string, { moderate?: { concurrency: number; ratio: number }[] }> }) : null;
  const self = fileURLToPath(import.meta.url);
  const child = (which: string, mech: Mech, c: number): number => {
    const out = execFileSync(process.execPath, [...process.execArgv, self, '--side', which, '--mech', mech, '--concurrency', String(c), '--seconds', String(SECONDS)], { encoding: 'utf8' });
    return (JSON.parse(out.trim().split('\n').pop()!) as { opsPerSec: number }).opsPerSec;
  };
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
  console.log(`Closed loop, pool of 2 against raw pkcs11js in 2 threads, each side a process of its own, alternating; ${values.repeats} runs of ${SECONDS} s a side, medians.`);
  console.log('| algorithm | conc. | raw ops/s | supervisor ops/s | ratio | bench ratio | agree within 10% |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | --- |');
  let disagree = 0;
  for (const mech of ['ec', 'rsa'] as const) {
    for (const c of [16, 64]) {
      const raw: number[] = [];
      const sup: number[] = [];
      for (let i = 0; i < Number(values.repeats); i++) {
        raw.push(child('raw', mech, c));
        sup.push(child('sup', mech, c));
      }
      const ratio = median(sup) / median(raw);
      const benchRatio = bench?.medians?.[ALG[mech]]?.moderate?.find((m) => m.concurrency === c)?.ratio;
      const agree = benchRatio === undefined ? 'no bench run' : Math.abs(ratio / benchRatio - 1) <= 0.1 ? 'yes' : 'NO';
      if (agree === 'NO') disagree++;
      console.log(`| ${ALG[mech]} | ${c} | ${median(raw)} | ${median(sup)} | ${ratio.toFixed(2)} | ${benchRatio ?? ''} | ${agree} |`);
    }
  }
  process.exit(disagree > 0 ? 1 : 0);
}
