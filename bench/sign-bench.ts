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
import { parseArgs } from 'node:util';
import { callFor, openRawSession } from './raw-loop.js';
import { vcpuGap } from './same-cpu.js';
import { rate, summarize } from './turns.js';
import { openCells, OP_NAME, type RawName, type SlotInput } from './cells.js';
import { auditModes, REPEATS, targetMedians } from './targets.js';
import { hopFloorUs } from './hop-floor.js';
import { millionCalls, type MillionRun } from './million.js';
import { report, type TargetMedians } from './report.js';
import { serviceBench } from './service-bench.js';
import { networkHsmBench } from './network-hsm.js';
import { compare } from './compare.js';
import type { Result } from './results.js';

const { values, positionals } = parseArgs({
  options: { seconds: { type: 'string', default: '1.5' }, million: { type: 'boolean', default: false }, quick: { type: 'boolean', default: false }, compare: { type: 'string' } },
  allowPositionals: true,
});
if (values.compare) {
  console.log(compare(values.compare, positionals[0]));
  process.exit(0);
}
const SECONDS = Number(values.seconds);
const cells = openCells(SECONDS);
const { slotCfg, startSlot, openBaseline, through, inTurns } = cells;

const rss = () => Math.round(process.memoryUsage().rss / 2 ** 20);
const results: Result[] = [];
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
      await through(sup, target, mech, size, 16); // warm up
      // Opened after the supervisor and closed before it: its close logs the token out, for every session of the process.
      const raw = await openBaseline(rawTarget, mech, size);
      const thread = rawTarget === 'raw-1' ? await cells.sessionThreadOf(sup, target, mech) : undefined;
      for (const c of [1, 16, 256]) {
        let mainMs = 0;
        const turns = await inTurns(raw.run, async (ms) => {
          const elu = performance.eventLoopUtilization();
          const r = await through(sup, target, mech, size, c, ms);
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

const medians: Record<string, TargetMedians> = {};
for (const mech of ['ec', 'rsa', 'aes-gcm', 'rsa-oaep'] as const) {
  process.stderr.write(`bench: ${OP_NAME[mech]} targets, ${REPEATS} repeats\n`);
  medians[OP_NAME[mech]] = await targetMedians(cells, mech);
}

process.stderr.write('bench: durable audit against batched\n');
const audit = { token: await auditModes(cells, { ...slotCfg, type: 'token' }), pool2: await auditModes(cells, { ...slotCfg, type: 'hsm', poolSize: 2 }) };

const serviceToken = await startSlot('token', { ...slotCfg, type: 'token' });
const service = await serviceBench(cells, serviceToken, REPEATS);
await serviceToken.close();

const network = await networkHsmBench(cells);

process.stderr.write('bench: thread hop floor\n');
const hopFloor = await hopFloorUs();
process.stderr.write('bench: vCPU speeds\n');
const gapSession = openRawSession(cells.rawConfig('rsa', 32));
const gap = vcpuGap((ms) => callFor(gapSession, ms).lat, 8);
gapSession.close();

let million: MillionRun | null = null;
if (values.million) {
  const sup = await startSlot('p', { ...slotCfg, type: 'hsm', poolSize: 2 });
  million = await millionCalls(sup, 'p');
  await sup.close();
}

report({ seconds: SECONDS, repeats: REPEATS, quick: values.quick, results, medians, audit, service, network, hopFloor, gap, million });
cells.close();
process.exit(0);
