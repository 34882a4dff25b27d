/**
 * How the bench compares: a raw baseline and a supervisor cell taking turns in short slices on
 * the same machine, and the figures drawn from their runs.
 */
import type { Run } from './raw-loop.js';
import { cpuOfSlice, MAIN_THREAD, otherCpus, pin } from './same-cpu.js';

const percentile = (sorted: Float64Array, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;

export function summarize(lat: number[], ops: number, ms: number) {
  const sorted = Float64Array.from(lat).sort();
  return { opsPerSec: Math.round((ops / ms) * 1000), p50us: Math.round(percentile(sorted, 0.5) * 1000), p99us: Math.round(percentile(sorted, 0.99) * 1000) };
}

/**
 * A comparison lets the raw baseline and the supervisor take turns in slices this long, so both
 * see the same machine: run one after the other, a cell on a shared 2-core machine moved by up
 * to 40% between seconds.
 */
export const SLICE_MS = 250;
/**
 * One call at a time has no queue to fill or drain at each turn, so the latency comparison takes
 * shorter turns: the machine's slow phases last about a second, and 250 ms turns still let one
 * side meet more of them than the other.
 */
export const LATENCY_SLICE_MS = 50;
export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
export const rate = (runs: Run[]) => (runs.reduce((a, r) => a + r.ops, 0) / runs.reduce((a, r) => a + r.elapsed, 0)) * 1000;
export const p50us = (runs: Run[]) => {
  const lat = runs.flatMap((r) => r.lat);
  return summarize(lat, lat.length, 1).p50us;
};

/**
 * A raw baseline and a supervisor cell, taking turns of `sliceMs` for `seconds` each. `sessionThread`
 * (against raw-1 only): the slot's one session thread, which then signs on the vCPU raw-1 signed
 * on in the slice before, the slices alternating between vCPUs (see same-cpu.ts); the main
 * thread then runs on the other vCPU, as the scheduler places two busy threads anyway.
 */
export async function inTurns(seconds: number, raw: (ms: number) => Promise<Run>, cell: (ms: number) => Promise<Run>, sessionThread?: number, sliceMs = SLICE_MS): Promise<{ raw: Run[]; cell: Run[] }> {
  const runs = { raw: [] as Run[], cell: [] as Run[] };
  const slices = Math.max(1, Math.round((seconds * 1000) / sliceMs));
  for (let k = 0; k < slices; k++) {
    if (sessionThread) pin(MAIN_THREAD, [cpuOfSlice(k)]);
    runs.raw.push(await raw(sliceMs));
    if (sessionThread) (pin(MAIN_THREAD, otherCpus(cpuOfSlice(k))), pin(sessionThread, [cpuOfSlice(k)]));
    runs.cell.push(await cell(sliceMs));
  }
  if (sessionThread) (pin(MAIN_THREAD), pin(sessionThread));
  return runs;
}
