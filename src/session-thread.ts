/**
 * One worker thread holding one session. Each generation of a slot worker gets a fresh
 * Piscina pool of exactly one thread; a crashed or wedged thread is abandoned with its pool,
 * never reused, so no half-dead session is handed a call.
 */
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import type { WorkerReply, WorkerTask } from '../workers/protocol.js';

const WORKER_FILE = fileURLToPath(new URL('../workers/session-worker.js', import.meta.url));

export class ThreadDied extends Error {}

export class SessionThread {
  private readonly pool: Piscina<WorkerTask, WorkerReply>;
  private ended = false;
  /** The thread itself has exited (crash, process.exit): nothing of it can still be inside the module. */
  private exited = false;
  /** Tasks handed to the thread and not answered: a thread abandoned with one may still be inside the module. */
  private inFlight = 0;

  constructor(onDeath: (reason: Error) => void) {
    this.pool = new Piscina<WorkerTask, WorkerReply>({
      filename: WORKER_FILE,
      minThreads: 1,
      maxThreads: 1,
      // Two: the router may hand a logged-in worker its next batch while one runs (the thread
      // still runs them one after the other, in order).
      concurrentTasksPerWorker: 2,
      idleTimeout: 2 ** 31 - 1,
    });
    const die = (reason: Error): void => {
      if (this.ended) return;
      this.ended = true;
      onDeath(reason);
    };
    this.pool.on('error', (e: Error) => {
      this.exited = true;
      die(e);
    });
    // Piscina replaces a dead thread on its own; the replacement would hold no session, so
    // any thread leaving the pool ends this generation.
    this.pool.on('workerDestroy', () => {
      this.exited = true;
      die(new ThreadDied('session worker thread exited'));
    });
  }

  get alive(): boolean {
    return !this.ended;
  }

  /** Tasks posted to the thread and not answered. */
  get tasks(): number {
    return this.inFlight;
  }

  async run<T>(task: WorkerTask): Promise<WorkerReply<T>> {
    if (this.ended) throw new ThreadDied('session worker thread is gone');
    this.inFlight++;
    try {
      return (await this.pool.run(task)) as WorkerReply<T>;
    } catch (e) {
      throw new ThreadDied(`session worker thread failed: ${(e as Error).message}`);
    } finally {
      this.inFlight--;
    }
  }

  /** Lets go of a crashed or wedged thread without waiting for it: a hung native call cannot be interrupted. */
  abandon(whenGone: () => void): void {
    this.ended = true;
    // A thread that has exited is gone already. Do not wait for destroy() then: after a thread
    // exits with tasks in flight, Piscina's destroy() never settles, and the module would stay
    // marked as having a thread inside it, refusing every later reset.
    let told = false;
    const gone = () => {
      if (told) return;
      told = true;
      whenGone();
    };
    if (this.exited) gone();
    this.pool.destroy().then(gone, gone);
  }

  async stop(): Promise<void> {
    this.ended = true;
    await this.pool.destroy();
  }
}
