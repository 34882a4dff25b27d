/**
 * One worker thread holding one session. Each generation of a slot worker gets a fresh
 * Piscina pool of exactly one thread; a crashed or wedged thread is abandoned with its pool,
 * never reused, so no half-dead session is handed a call.
 *
 * Piscina hosts the thread and reports its death; the calls themselves travel on a channel of
 * this class's own, served by one long-running task (serve-loop.ts). That task spins
 * briefly for the next call before it sleeps: waking a sleeping thread costs ~100 µs on a
 * virtual machine, more than a fast signature, and Piscina's own loop always sleeps.
 */
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import type { ServeRequest, ServeReply, ServeStart } from './serve-loop.js';
import { ownBytes, type WorkerReply, type WorkerTask } from '../../src/model/protocol.js';
import { taskAnswered, taskPosted } from './loop-turner.js';
import { packable, packBatch, sharedBytes, unpackReplies, type PackedBatch } from './batch-codec.js';
import { board, cores, freeCell, takeCell } from './thread-board.js';
import { SPIN_FOR_CALLS_UP_TO_MS } from './busy-board.js';

const WORKER_FILE = fileURLToPath(new URL('../session-worker.js', import.meta.url));

export class ThreadDied extends Error {}

/**
 * A single call as it crosses to the thread: its bytes in buffers of their own (a view on a
 * pooled Buffer would take its 8 KiB slab along). Batches are packed by the thread's owner.
 */
function forTheHop(task: WorkerTask): WorkerTask {
  switch (task.op) {
    case 'sign':
      return { ...task, data: ownBytes(task.data) };
    case 'verify':
      return { ...task, data: ownBytes(task.data), signature: ownBytes(task.signature) };
    case 'encrypt':
    case 'decrypt':
    case 'mac':
      return { ...task, data: ownBytes(task.data) };
    default:
      return task;
  }
}

/**
 * Shared buffers of answered batches kept for the next ones: two (one running, one waiting in
 * the port), each up to 4 MiB; sized in powers of two from 64 KiB so they fit the next batch.
 */
const SPARE_BUFFERS = 2;
const MIN_SHARED_BYTES = 64 * 1024;
const MAX_SPARE_BYTES = 4 * 1024 * 1024;

interface Pending {
  id: number;
  resolve: (reply: WorkerReply) => void;
  reject: (e: Error) => void;
  /** The main thread may keep turning for this reply (see loop-turner.ts). */
  turned: boolean;
  /** A call of its own, not a batch: its time feeds callMs. */
  lone: boolean;
}

export class SessionThread {
  private readonly pool: Piscina<ServeStart, void>;
  private readonly port: MessagePort;
  /** [0]: calls posted so far; the thread waits on it when it has nothing to do. */
  private readonly posted = new Int32Array(new SharedArrayBuffer(4));
  /**
   * Posted and not answered, oldest first: the thread answers in order. An array, not a Map, for
   * the reason the mailbox keeps its batches in one (router.ts).
   */
  private pending: Pending[] = [];
  private nextId = 0;
  /** Shared buffers this thread's answered batches used, for its next ones (batch-codec.ts). */
  private spare: SharedArrayBuffer[] = [];
  /**
   * Moving average of a lone call's time in the thread. The main thread keeps turning for a lone
   * call's reply for about this long plus spinMs (a window of spinMs alone was shorter than an
   * RSA signature on a slow minute, and those replies then paid for waking the loop), and not at
   * all for calls longer than SPIN_FOR_CALLS_UP_TO_MS.
   */
  private callMs = 0;
  /** This thread's cell on the busy board. */
  private readonly cell: number;
  private cellReleased = false;
  private ended = false;
  /** The thread itself has exited (crash, process.exit): nothing of it can still be inside the module. */
  private exited = false;

  /** `spinMs`: how long the thread looks for its next call before it sleeps (0: never spins). */
  constructor(
    onDeath: (reason: Error) => void,
    private readonly spinMs: number,
  ) {
    this.pool = new Piscina<ServeStart, void>({ filename: WORKER_FILE, minThreads: 1, maxThreads: 1, idleTimeout: 2 ** 31 - 1 });
    const channel = new MessageChannel();
    this.port = channel.port1;
    this.port.on('message', (m: ServeReply) => this.answer(m));
    this.port.unref();
    const die = (reason: Error): void => {
      if (this.ended && this.pending.length === 0) return;
      const first = !this.ended;
      this.ended = true;
      this.failPending(reason.message);
      if (first) onDeath(reason);
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
    this.cell = takeCell();
    const start: ServeStart = { port: channel.port2, posted: this.posted, spinMs, board, cell: this.cell, cores };
    this.pool.run(start, { name: 'serve', transferList: [channel.port2] }).then(
      () => die(new ThreadDied('session worker thread stopped serving')),
      (e: Error) => die(new ThreadDied(`session worker thread failed: ${e.message}`)),
    );
  }

  get alive(): boolean {
    return !this.ended;
  }

  /** Tasks posted to the thread and not answered. */
  get tasks(): number {
    return this.pending.length;
  }

  run<T>(task: WorkerTask): Promise<WorkerReply<T>> {
    if (this.ended) return Promise.reject(new ThreadDied('session worker thread is gone'));
    const id = ++this.nextId;
    return new Promise<WorkerReply<T>>((resolve, reject) => {
      if (this.pending.length === 0) this.port.ref();
      // A batch comes with a queue behind it: the CPU is better spent on the signing threads.
      const lone = task.op !== 'batch';
      const turned = lone && this.spinMs > 0 && this.callMs <= SPIN_FOR_CALLS_UP_TO_MS;
      this.pending.push({ id, resolve: resolve as Pending['resolve'], reject, turned, lone });
      this.post({ id, task: this.packed(task) ?? forTheHop(task) });
      taskPosted(turned ? this.spinMs + this.callMs : null);
    });
  }

  /** A batch of calls answered with bytes, packed into a shared buffer this thread reuses; null for anything else. */
  private packed(task: WorkerTask): PackedBatch | null {
    if (task.op !== 'batch') return null;
    const tasks = packable(task.tasks);
    if (!tasks) return null;
    const bytes = sharedBytes(tasks);
    const i = this.spare.findIndex((b) => b.byteLength >= bytes);
    const shared = i >= 0 ? this.spare.splice(i, 1)[0]! : new SharedArrayBuffer(Math.max(MIN_SHARED_BYTES, 2 ** Math.ceil(Math.log2(bytes))));
    return packBatch(tasks, task.claims, shared);
  }

  private post(request: ServeRequest): void {
    this.port.postMessage(request);
    // After the message is in the port: the thread reads the port once it sees the count move.
    Atomics.add(this.posted, 0, 1);
    Atomics.notify(this.posted, 0);
  }

  private answer(m: ServeReply): void {
    const p = this.pending[0];
    if (p?.id !== m.id) return;
    let reply: WorkerReply;
    if ('packed' in m) {
      reply = { ok: true, value: unpackReplies(m.packed), startedAt: m.startedAt, endedAt: m.endedAt };
      // Read: the buffer may take the next batch (the thread is done with it once it answers).
      if (this.spare.length < SPARE_BUFFERS && m.packed.shared.byteLength <= MAX_SPARE_BYTES) this.spare.push(m.packed.shared);
    } else reply = m.reply;
    if (p.lone) this.callMs = 0.8 * this.callMs + 0.2 * (reply.endedAt - reply.startedAt);
    this.pending.shift();
    if (this.pending.length === 0) this.port.unref();
    taskAnswered(p.turned);
    p.resolve(reply);
  }

  private failPending(why: string): void {
    const pending = this.pending;
    this.pending = [];
    this.port.unref();
    for (const p of pending) taskAnswered(p.turned);
    for (const p of pending) p.reject(new ThreadDied(`session worker thread failed: ${why}`));
  }

  /** Lets go of a crashed or wedged thread without waiting for it: a hung native call cannot be interrupted. */
  abandon(whenGone: () => void): void {
    this.ended = true;
    this.failPending('abandoned');
    // A thread that has exited is gone already. Do not wait for destroy() then: after a thread
    // exits with tasks in flight, Piscina's destroy() never settles, and the module would stay
    // marked as having a thread inside it, refusing every later reset.
    let told = false;
    const gone = () => {
      if (told) return;
      told = true;
      this.port.close();
      this.releaseCell();
      whenGone();
    };
    if (this.exited) gone();
    this.pool.destroy().then(gone, gone);
  }

  async stop(): Promise<void> {
    if (!this.ended) this.post('stop');
    this.ended = true;
    this.failPending('stopped');
    await this.pool.destroy();
    this.port.close();
    this.releaseCell();
  }

  /**
   * Gives the cell back, once: a worker closed by its supervisor is stopped and then abandoned
   * by its machine, and a cell freed twice was handed to two threads at once. A board of shared
   * cells let every thread of a large pool spin at the same time, and a pool of 64 on a slow
   * HSM fell to a quarter of its rate.
   */
  private releaseCell(): void {
    if (this.cellReleased) return;
    this.cellReleased = true;
    freeCell(this.cell);
  }
}
