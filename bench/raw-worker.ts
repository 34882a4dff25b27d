/** A raw pkcs11js thread of the baseline: one session, kept open; signs for as long as each message asks. */
import { parentPort, workerData } from 'node:worker_threads';
import { openRawSigner, signFor, type RawConfig } from './raw-loop.js';

const signer = openRawSigner(workerData as RawConfig);
parentPort!.on('message', (ms: number | 'stop') => {
  if (ms === 'stop') {
    signer.close();
    parentPort!.close();
    return;
  }
  parentPort!.postMessage(signFor(signer, ms));
});
