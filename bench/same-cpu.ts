/**
 * Pins threads to a vCPU, so a raw baseline and the supervisor's session thread sign on the same
 * one. On this shared VM the two vCPUs run at different speeds from second to second (one is
 * over 10% slower in about half the seconds, up to 1.5×: `vcpuGap` below measures it). A
 * comparison of raw pkcs11js in the main thread with a session thread on the other vCPU then
 * measures the host's neighbours, not the supervisor.
 *
 * Linux only: thread ids and CPU times come from /proc, affinity from util-linux's taskset.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

const ALL = Array.from({ length: availableParallelism() }, (_, i) => i);
export const MAIN_THREAD = process.pid;

export function pin(tid: number, cpus: readonly number[] = ALL): void {
  execFileSync('taskset', ['-p', '-c', cpus.join(','), String(tid)], { stdio: 'ignore' });
}

/** CPU time (ns) each thread of this process has run so far. */
function threadTimes(): Map<number, number> {
  const out = new Map<number, number>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      out.set(Number(tid), Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]));
    } catch {
      // The thread ended while we looked.
    }
  }
  return out;
}

/** The thread, other than the main one, that ran most while `load` ran: a lone slot's session thread while it signs. */
export async function busiestThread(load: () => Promise<unknown>): Promise<number> {
  const before = threadTimes();
  await load();
  let best = 0;
  let most = -1;
  for (const [tid, ns] of threadTimes()) {
    const ran = ns - (before.get(tid) ?? 0);
    if (tid !== MAIN_THREAD && ran > most) [best, most] = [tid, ran];
  }
  return best;
}

/** The vCPU a slice of a comparison signs on: the slices alternate, so both vCPUs count alike. */
export const cpuOfSlice = (k: number): number => k % ALL.length;

/**
 * Every vCPU but `cpu`: where the main thread goes while a session thread is pinned to `cpu`.
 * Merely unpinned, it stays where it last ran, and when that is `cpu` the two share it,
 * time-sliced by the scheduler, until load balancing moves one (calls took 4 ms, not 0.7).
 */
export const otherCpus = (cpu: number): number[] => (ALL.length > 1 ? ALL.filter((c) => c !== cpu) : ALL);

/**
 * How far apart the vCPUs' speeds are during the run: `signFor` signs on the main thread for
 * the given ms; per second, a third of it on each vCPU in turn, the p50 of each compared.
 */
export function vcpuGap(signFor: (ms: number) => number[], seconds: number): { slowerSeconds: number; seconds: number; largestGap: number } {
  const p50 = (xs: number[]) => Float64Array.from(xs).sort()[xs.length >> 1]!;
  const gaps: number[] = [];
  for (let s = 0; s < seconds; s++) {
    const lat = ALL.map(() => [] as number[]);
    for (let k = 0; k < 3; k++) for (const cpu of ALL) (pin(MAIN_THREAD, [cpu]), lat[cpu]!.push(...signFor(1000 / 3 / ALL.length)));
    const each = lat.map(p50);
    gaps.push(Math.max(...each) / Math.min(...each));
  }
  pin(MAIN_THREAD);
  return { slowerSeconds: gaps.filter((g) => g > 1.1).length, seconds, largestGap: Number(Math.max(...gaps).toFixed(2)) };
}
