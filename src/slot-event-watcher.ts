/**
 * One module's token events: a thread of its own waits in C_WaitForSlotEvent
 * (workers/slot-event-thread.ts) and each event makes the module's slots look at their tokens
 * now, through their health probes. A module without blocking events (SoftHSM2, most software
 * tokens) says so at once; its slots rely on the probe interval.
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { SlotEventMessage, SlotEventStart } from './model/slot-events.js';

const THREAD_FILE = fileURLToPath(new URL('../workers/slot-event-thread.js', import.meta.url));

export class SlotEventWatcher {
  private readonly stop = new Int32Array(new SharedArrayBuffer(4));
  /** The module delivers events: true until it says it cannot (or its thread fails). */
  active = false;

  constructor(
    readonly modulePath: string,
    private readonly onEvent: (slotId: string) => void,
    private readonly log: Logger,
  ) {}

  start(): void {
    const start: SlotEventStart = { modulePath: this.modulePath, stop: this.stop };
    const thread = new Worker(THREAD_FILE, { workerData: start });
    // A module that ignores C_Finalize keeps the thread in its wait: it must not keep the process alive.
    thread.unref();
    this.active = true;
    thread.on('message', (m: SlotEventMessage) => this.received(m));
    thread.on('error', (e) => {
      this.active = false;
      this.log.warn({ module: this.modulePath, err: e.message }, 'slot events: the thread failed; the probe interval notices tokens inserted or removed');
    });
    thread.on('exit', () => {
      this.active = false;
    });
  }

  private received(m: SlotEventMessage): void {
    switch (m.kind) {
      case 'event':
        this.onEvent(m.slotId);
        return;
      case 'unsupported':
        this.active = false;
        this.log.info({ module: this.modulePath }, 'slot events: the module has no blocking C_WaitForSlotEvent; the probe interval notices tokens inserted or removed');
        return;
      case 'failed':
        this.active = false;
        this.log.warn({ module: this.modulePath, ckr: m.ckr }, 'slot events: C_WaitForSlotEvent keeps failing; given up, the probe interval notices tokens inserted or removed');
        return;
    }
  }

  /**
   * Tells the thread to end when its wait returns: before the module is finalized, whose
   * C_Finalize is what ends the wait. Not awaited: a module may never return from it.
   */
  close(): void {
    Atomics.store(this.stop, 0, 1);
    Atomics.notify(this.stop, 0);
    this.active = false;
  }
}
