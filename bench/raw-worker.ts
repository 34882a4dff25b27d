/** A raw pkcs11js thread of the baseline: one session, kept open; signs for as long as each message asks. */
import { parentPort, workerData } from 'node:worker_threads';
import { openRawSigner, type RawConfig } from './raw-loop.js';

const signer = openRawSigner(workerData as RawConfig);
parentPort!.on('message', (ms: number | 'stop') => {
  if (ms === 'stop') {
    signer.close();
    parentPort!.close();
    return;
  }
  const lat: number[] = [];
  const t0 = performance.now();
  while (performance.now() - t0 < ms) lat.push(signer.signOnce());
  parentPort!.postMessage({ lat, ops: lat.length, elapsed: performance.now() - t0 });
});
