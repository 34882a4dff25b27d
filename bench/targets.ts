/**
 * The bench's target checks: each a median of REPEATS comparisons in turns. Per signature or
 * decryption: added p50 at concurrency 1 and the token slot at 256 against raw-1, the pool of 2
 * against raw-2 at 256 and (signatures) at moderate concurrency, with CPU per call and the
 * batch sizes seen; and durable audit against batched.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Pkcs11Supervisor } from '../src/index.js';
import type { BenchOp, Run } from './raw-loop.js';
import { LATENCY_SLICE_MS, median, p50us, rate } from './turns.js';
import type { AuditComparison, TargetMedians } from './report.js';
import type { Baseline, BenchCells, SlotInput } from './cells.js';

/** The targets are judged on medians of this many comparisons, each in turns (see SLICE_MS). */
export const REPEATS = 5;

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
async function addedP50Us(b: BenchCells, sup: Pkcs11Supervisor, raw: Baseline, mech: BenchOp, thread: number): Promise<number> {
  const turns = await b.inTurns(raw.run, (ms) => b.through(sup, 'token', mech, 32, 1, ms), thread, LATENCY_SLICE_MS);
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

export async function targetMedians(b: BenchCells, mech: BenchOp): Promise<TargetMedians> {
  const token = await b.startSlot('token', { ...b.slotCfg, type: 'token' });
  const pool = await b.startSlot('pool-2', { ...b.slotCfg, type: 'hsm', poolSize: 2 });
  const raw1 = await b.openBaseline('raw-1', mech, 32);
  const raw2 = await b.openBaseline('raw-2', mech, 32);
  await b.through(token, 'token', mech, 32, 16);
  await b.through(pool, 'pool-2', mech, 32, 16);
  const thread = await b.sessionThreadOf(token, 'token', mech);
  const poolCells = mech === 'ec' || mech === 'rsa' ? [256, ...MODERATE] : [256];
  const added: number[] = [];
  const tokenRatio: number[] = [];
  /** Per concurrency: the pool's ratio to raw-2, and CPU per call (all threads) of raw-2 and the pool. */
  const pools = new Map(poolCells.map((c) => [c, { ratio: [] as number[], rawCpu: [] as number[], poolCpu: [] as number[], handed: { messages: 0, calls: 0 } }]));
  const tokenHanded = { messages: 0, calls: 0 };
  for (let i = 0; i < REPEATS; i++) {
    added.push(await addedP50Us(b, token, raw1, mech, thread));
    const tokenTurns = await b.inTurns(raw1.run, (ms) => counting(tokenHanded, token, 'token', () => b.through(token, 'token', mech, 32, 256, ms)), thread);
    tokenRatio.push(rate(tokenTurns.cell) / rate(tokenTurns.raw));
    for (const [c, into] of pools) {
      const cpu = { raw2: { us: 0, ops: 0 }, pool2: { us: 0, ops: 0 } };
      const poolTurns = await b.inTurns(
        (ms) => withCpu(cpu.raw2, () => raw2.run(ms)),
        (ms) => withCpu(cpu.pool2, () => counting(into.handed, pool, 'pool-2', () => b.through(pool, 'pool-2', mech, 32, c, ms))),
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
export async function auditModes(b: BenchCells, slot: SlotInput): Promise<AuditComparison> {
  const dir = mkdtempSync(join(tmpdir(), 'p11sup-bench-audit-'));
  const start = (mode: 'batched' | 'durable') => b.startSlot(mode, slot, { audit: { path: join(dir, `${mode}.jsonl`), mode } });
  const batched = await start('batched');
  const durable = await start('durable');
  await b.through(batched, 'batched', 'ec', 32, 16);
  await b.through(durable, 'durable', 'ec', 32, 16);
  const runs: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const turns = await b.inTurns((ms) => b.through(batched, 'batched', 'ec', 32, 64, ms), (ms) => b.through(durable, 'durable', 'ec', 32, 64, ms));
    runs.push(Number((rate(turns.cell) / rate(turns.raw)).toFixed(2)));
  }
  await durable.close();
  await batched.close();
  return { ratio: median(runs), runs };
}
