/** A raw pkcs11js thread of the baseline: one session, kept open; runs its operation for as long as each message asks. */
import { parentPort, workerData } from 'node:worker_threads';
import { callFor, openRawSession, type RawConfig } from './raw-loop.js';

const session = openRawSession(workerData as RawConfig);
parentPort!.on('message', (ms: number | 'stop') => {
  if (ms === 'stop') {
    session.close();
    parentPort!.close();
    return;
  }
  parentPort!.postMessage(callFor(session, ms));
});
