/**
 * The bench's vCPU pinning (bench/same-cpu.ts): it must find the thread that does the work and
 * pin it where asked, or its same-vCPU comparisons compare nothing. Checked against what the
 * kernel reports for the thread (/proc), not against the helper's own bookkeeping.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busiestThread, MAIN_THREAD, otherCpus, pin } from '../bench/same-cpu.js';

const allowed = (tid: number) => readFileSync(`/proc/self/task/${tid}/status`, 'utf8').match(/^Cpus_allowed_list:\s+(\S+)/m)![1];
const cores = availableParallelism();

describe('bench vCPU pinning', () => {
  let worker: Worker;
  let workerTid: number;
  const busyFor = (ms: number) =>
    new Promise<void>((resolve) => {
      worker.once('message', () => resolve());
      worker.postMessage(ms);
    });

  beforeAll(async () => {
    // The thread says who it is (/proc/thread-self is its own task), then spins when asked.
    worker = new Worker(
      `const { parentPort } = require('node:worker_threads');
       parentPort.postMessage(Number(require('node:fs').readlinkSync('/proc/thread-self').split('/').pop()));
       parentPort.on('message', (ms) => { const end = Date.now() + ms; while (Date.now() < end); parentPort.postMessage('done'); });`,
      { eval: true },
    );
    workerTid = await new Promise<number>((resolve) => worker.once('message', resolve));
  });
  afterAll(async () => {
    await worker.terminate();
  });

  it('finds the thread that ran most while the load ran, never the main one', async () => {
    expect(workerTid).not.toBe(MAIN_THREAD);
    expect(await busiestThread(() => busyFor(200))).toBe(workerTid);
  });

  it('pins a thread to one vCPU and lets it go again, as the kernel reports it', () => {
    const last = cores - 1;
    pin(workerTid, [last]);
    expect(allowed(workerTid)).toBe(String(last));
    pin(workerTid);
    expect(allowed(workerTid)).toBe(cores > 1 ? `0-${last}` : '0');
    expect(allowed(MAIN_THREAD)).toBe(cores > 1 ? `0-${last}` : '0');
  });

  it('sends the main thread to every other vCPU, or to the only one there is', () => {
    expect(otherCpus(0)).toEqual(cores > 1 ? Array.from({ length: cores - 1 }, (_, i) => i + 1) : [0]);
  });
});
