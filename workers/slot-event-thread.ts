/**
 * A module's slot-event thread: it waits in C_WaitForSlotEvent (blocking) and reports each
 * token inserted or removed. The call blocks for as long as nothing happens, so it has a
 * thread of its own, outside every slot's mailbox. C_Finalize ends the wait
 * (CKR_CRYPTOKI_NOT_INITIALIZED, as the spec requires): after a module reset the thread waits
 * again; at shutdown the main thread has set `stop` first, and the thread ends.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { pkcs11js } from './pkcs11js.js';
import type { SlotEventMessage, SlotEventStart } from '../src/model/slot-events.js';

const { modulePath, stop } = workerData as SlotEventStart;
const post = (m: SlotEventMessage): void => parentPort!.postMessage(m);
const stopped = (): boolean => Atomics.load(stop, 0) !== 0;
/** Sleeps up to `ms`, waking at once when the main thread says stop. */
const pause = (ms: number): void => void Atomics.wait(stop, 0, 0, ms);

/** Consecutive failures other than a reset after which the module's events are given up. */
const MAX_FAILURES = 5;

function watch(): void {
  // No C_Initialize here: the main thread's module registry initialized the module before any
  // slot opened, and re-initializes it after a reset.
  const mod = new pkcs11js.PKCS11();
  mod.load(modulePath);
  let failures = 0;
  while (!stopped()) {
    try {
      const slot = mod.C_WaitForSlotEvent(0);
      failures = 0;
      if (slot && !stopped()) post({ kind: 'event', slotId: slot.toString('hex') });
    } catch (e) {
      const ckr = (e as Error).message;
      if (stopped()) break;
      if (ckr === 'CKR_FUNCTION_NOT_SUPPORTED') return post({ kind: 'unsupported' });
      // Finalized by a module reset: wait until it is initialized again.
      if (ckr === 'CKR_CRYPTOKI_NOT_INITIALIZED') {
        pause(100);
        continue;
      }
      if (++failures >= MAX_FAILURES) return post({ kind: 'failed', ckr });
      pause(1000);
    }
  }
}

try {
  watch();
} catch (e) {
  post({ kind: 'failed', ckr: (e as Error).message });
}
