import { Worker } from 'node:worker_threads';
import { summarize } from './turns.js';

/**
 * The cheapest possible thread hop on this machine: two threads handing a counter back and
 * forth with Atomics.wait/notify, no message, no copy. Every supervisor call pays at least this.
 */
export async function hopFloorUs(): Promise<number> {
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
