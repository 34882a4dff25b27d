/** 1,000,000 signatures through a pool of 2 at concurrency 256, with the heap and RSS sampled every 100,000 (--million). */
import type { Pkcs11Supervisor } from '../src/index.js';

export interface MillionRun {
  calls: number;
  seconds: number;
  samples: { calls: number; heapMiB: number; rssMiB: number }[];
}

const mib = (bytes: number) => Math.round(bytes / 2 ** 20);

export async function millionCalls(sup: Pkcs11Supervisor, slot: string): Promise<MillionRun> {
  const data = Buffer.alloc(32, 7);
  const samples: MillionRun['samples'] = [];
  let started = 0;
  let calls = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 256 }, async () => {
      while (started < 1_000_000) {
        started++;
        await sup.sign({ slot, key: 'ec', mechanism: 'ECDSA-SHA256', data });
        if (++calls % 100_000 === 0) {
          globalThis.gc?.();
          const m = process.memoryUsage();
          samples.push({ calls, heapMiB: mib(m.heapUsed), rssMiB: mib(m.rss) });
        }
      }
    }),
  );
  return { calls, seconds: Math.round((performance.now() - t0) / 1000), samples };
}
