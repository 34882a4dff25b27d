/**
 * A slot's mailbox: a bounded FIFO of calls in front of the slot's workers. A worker's session
 * runs one call at a time; the mailbox gives a worker a call or a batch of queued calls, and a
 * logged-in worker running a batch may be given one more to wait in its thread's port. So a
 * token slot (one worker) runs calls one by one in arrival order, and an HSM pool hands each
 * call to an idle worker, skipping workers that are restarting: the one freed last, whose
 * thread is still awake (see workers/handover/busy-board.ts). Under load every worker serves;
 * at low load the others may sleep. Every call ends exactly once: with its result, or with
 * TIMEOUT, ABORTED, QUEUE_FULL, SLOT_FAILED or CLOSED.
 */
import { Pkcs11SupervisorError } from './model/errors.js';
import type { Secret } from './model/secret.js';
import type { SlotWorker } from './slot-worker.js';
import type { CallContext, CallSpec, Delivered, SlotTask } from './slot-call.js';
import { unwatchAbort, watchAbort } from './abort-watch.js';
import { CLAIM_CANCELLED, type WorkerTask } from './model/protocol.js';
import type { ContextLogins } from './context-logins.js';

/** Calls of these operations, with no PIN of their own, may share one message to a worker. */
const BATCHABLE: ReadonlySet<string> = new Set(['sign', 'verify', 'encrypt', 'decrypt', 'mac', 'verifyMac']);

/** At most this many calls share one message to a worker. */
const MAX_BATCH = 256;
/**
 * At most this many bytes of input share one message: batching pays for small inputs, and a
 * packed batch must stay far inside what its 32-bit offsets address (batch-codec.ts). A call
 * larger than this goes alone.
 */
export const MAX_BATCH_BYTES = 1024 * 1024;
/**
 * A batch's replies come back together, so a batch holds about this much token time: enough
 * to amortize the thread hop on fast operations, never enough to delay a slow token's calls.
 * With a deep queue, calls wait anyway: bigger batches then keep the worker from idling
 * between them.
 */
const BATCH_BUDGET_MS = 2;
const DEEP_QUEUE_BATCH_BUDGET_MS = 8;

class Call<T> implements CallContext {
  settled = false;
  /** Set while the call sits in a batch on a worker: cancels it there if it has not started. */
  cancelInBatch: (() => boolean) | null = null;
  queued = true;
  startedAt = 0;
  readonly enqueuedAt = Date.now();
  readonly deadline: number;
  timer: NodeJS.Timeout | undefined;
  onAbort: (() => void) | undefined;

  constructor(
    readonly spec: CallSpec,
    readonly resolve: (d: Delivered<T>) => void,
    readonly reject: (e: Error) => void,
  ) {
    this.deadline = this.enqueuedAt + spec.timeoutMs;
  }

  get pin(): Secret | undefined {
    return this.spec.pin;
  }
  get needsLogin(): boolean {
    return this.spec.needsLogin;
  }
}

export class Mailbox {
  /** Calls from `head` on are waiting; slots before it are cleared, so a finished call is not kept alive here. */
  private queue: (Call<unknown> | undefined)[] = [];
  private head = 0;
  private waiting = 0;
  private inFlight = 0;
  private exclusiveRunning = false;
  /** Counts workers becoming idle: the highest freedAt is the worker freed last. */
  private freed = 0;
  private closedWith: Pkcs11SupervisorError | null = null;
  /**
   * The batches on workers, for close() to cancel what has not started. An array, not a Set of
   * calls: the old tables of a Set under add/delete churn link to their successors, and that
   * chain keeps finished calls alive past young-generation GCs, to be freed only by full ones.
   */
  private readonly batches: Call<unknown>[][] = [];
  /** Moving average of one call's time on the token, from the worker's own timing. */
  private execMs = 1;

  private observe(value: unknown): void {
    const r = value as { startedAt?: unknown; endedAt?: unknown } | null;
    if (r && typeof r.startedAt === 'number' && typeof r.endedAt === 'number') this.execMs = 0.8 * this.execMs + 0.2 * (r.endedAt - r.startedAt);
  }

  constructor(
    private readonly slot: string,
    private readonly workers: readonly SlotWorker[],
    /** The slot's queueLimit, read per call: a config reload may change it. */
    private readonly limit: () => number,
    private readonly slotFailure: () => Pkcs11SupervisorError | null,
    /** Keys that ask for the PIN on every use: each of their signs runs alone, with its own login. */
    private readonly contextLogins: Pick<ContextLogins, 'needsPin'> = { needsPin: () => false },
  ) {}

  get depth(): number {
    return this.waiting;
  }

  get running(): number {
    return this.inFlight;
  }

  submit<T>(spec: CallSpec): Promise<Delivered<T>> {
    return new Promise<Delivered<T>>((resolve, reject) => {
      const refused = this.closedWith ?? this.slotFailure() ?? this.refusal(spec);
      if (refused) return reject(refused);
      const call = new Call<T>(spec, resolve, reject);
      call.timer = setTimeout(() => this.fail(call, new Pkcs11SupervisorError('TIMEOUT', this.timeoutMessage(call), { slot: this.slot })), spec.timeoutMs);
      if (spec.signal) {
        call.onAbort = () => this.fail(call, new Pkcs11SupervisorError('ABORTED', 'the call was aborted by its signal', { slot: this.slot }));
        watchAbort(spec.signal, call.onAbort);
      }
      this.queue.push(call as Call<unknown>);
      this.waiting++;
      this.pump();
    });
  }

  private refusal(spec: CallSpec): Pkcs11SupervisorError | null {
    if (spec.signal?.aborted) return new Pkcs11SupervisorError('ABORTED', 'the call was aborted before it was queued', { slot: this.slot });
    if (this.waiting >= this.limit()) {
      return new Pkcs11SupervisorError('QUEUE_FULL', `slot "${this.slot}" has ${this.waiting} calls waiting (queueLimit ${this.limit()})`, { slot: this.slot });
    }
    return null;
  }

  private timeoutMessage<T>(call: Call<T>): string {
    const where = call.queued ? 'waiting in the queue' : 'running on the token';
    return `the call timed out after ${call.spec.timeoutMs} ms ${where} (slot "${this.slot}")`;
  }

  private pumpScheduled = false;
  /**
   * A batch's callers were answered in this turn: their next calls come in the same turn, so they
   * are handed out together at its end. Handed out as each came, the first went alone to the
   * worker just freed: at concurrency 16 on a pool of 2, a message carried 2.3 calls, and waking
   * a sleeping thread cost the main thread ~40 µs on a VM.
   */
  private answeredThisTurn = false;

  private pumpAtEndOfTurn(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump(true);
    });
  }

  /** Hands queued calls to idle, accepting workers. Called on submit, on completion and on worker state changes. */
  pump(endOfTurn = false): void {
    if (endOfTurn) this.answeredThisTurn = false;
    else if (this.answeredThisTurn) return this.pumpAtEndOfTurn();
    while (this.head < this.queue.length && !this.exclusiveRunning) {
      const call = this.queue[this.head]!;
      if (call.settled) {
        this.dequeueHead();
        continue;
      }
      if (call.spec.exclusive) {
        if (this.inFlight > 0) return;
        this.dequeueHead();
        call.queued = false;
        this.waiting--;
        // The call's own code picks the worker(s) it needs; nothing else runs meanwhile.
        this.exclusiveRunning = true;
        this.dispatch(this.workers.find((w) => w.state === 'so_logged_in') ?? this.workers.find((w) => w.accepting) ?? this.workers[0]!, call);
        return;
      }
      let worker: SlotWorker | undefined;
      for (const w of this.workers) if (!w.busy && w.accepting && (!worker || w.freedAt > worker.freedAt)) worker = w;
      // No idle worker and a queue behind this call: give a logged-in worker that is running a
      // batch the next one, so its thread goes straight on to it instead of waiting for a round trip.
      // Not from inside a submit: callers answered together submit again together, and waiting
      // for the end of this turn of the event loop lets them share one message.
      const pipelined = !worker && this.waiting > 1 && this.batchable(call);
      if (pipelined && !endOfTurn) return this.pumpAtEndOfTurn();
      if (pipelined) for (const w of this.workers) if (w.canPipeline && (!worker || w.callsInFlight < worker.callsInFlight)) worker = w;
      if (!worker) return;
      this.dequeueHead();
      call.queued = false;
      this.waiting--;
      if (!this.batchable(call) || this.waiting === 0) {
        this.dispatch(worker, call);
        continue;
      }
      // Share the waiting calls between the serving workers and the batch each can hold behind
      // the one it runs: a worker freed a moment before its siblings leaves them their part, and
      // a lone worker leaves calls to pipeline, so its thread signs on while the callers it just
      // answered are busy (writing a durable audit record, say). A pipelined batch takes what
      // waits (within the budget): halving it for busy siblings left batches of 3 that mostly
      // paid for their messages.
      const serving = this.workers.filter((w) => w.accepting).length;
      const sharing = pipelined ? 1 : serving + 1;
      const shallow = Math.max(1, Math.floor(BATCH_BUDGET_MS / this.execMs));
      const byTime = this.waiting + 1 > shallow * serving ? Math.max(1, Math.floor(DEEP_QUEUE_BATCH_BUDGET_MS / this.execMs)) : shallow;
      const cap = Math.min(MAX_BATCH, byTime, Math.max(1, Math.ceil((this.waiting + 1) / sharing)));
      const batch: Call<unknown>[] = [call];
      let bytes = inputBytes(call.spec.task);
      while (batch.length < cap && this.head < this.queue.length) {
        const next = this.queue[this.head]!;
        if (next.settled) {
          this.dequeueHead();
          continue;
        }
        if (!this.batchable(next)) break;
        bytes += inputBytes(next.spec.task);
        if (bytes > MAX_BATCH_BYTES) break;
        this.dequeueHead();
        next.queued = false;
        this.waiting--;
        batch.push(next);
      }
      if (batch.length === 1 && !pipelined) this.dispatch(worker, call);
      else this.dispatchBatch(worker, batch);
    }
  }

  private batchable(call: Call<unknown>): boolean {
    const { task } = call.spec;
    if (!BATCHABLE.has(task.op) || call.spec.pin !== undefined) return false;
    return !this.contextLogins.needsPin(task);
  }

  /** One message to `worker`, carrying `calls` calls. */
  private handOut(worker: SlotWorker, calls: number): void {
    worker.busy = true;
    worker.handed.messages++;
    worker.handed.calls += calls;
    this.inFlight += calls;
  }

  private dispatchBatch(worker: SlotWorker, calls: Call<unknown>[]): void {
    this.handOut(worker, calls.length);
    worker.batchesInFlight++;
    worker.callsInFlight += calls.length;
    const startedAt = Date.now();
    const claims = new Int32Array(new SharedArrayBuffer(4 * calls.length));
    calls.forEach((c, i) => {
      c.startedAt = startedAt;
      c.cancelInBatch = () => Atomics.compareExchange(claims, i, 0, CLAIM_CANCELLED) === 0;
    });
    this.batches.push(calls);
    worker
      .executeBatch(
        calls.map((c) => c.spec.task as WorkerTask),
        calls,
        claims,
      )
      .then(
        (values) => {
          this.release(worker, calls);
          this.answeredThisTurn = true;
          this.pumpAtEndOfTurn();
          for (let i = 0; i < calls.length; i++) {
            const c = calls[i]!;
            this.observe(values[i]);
            this.finish(c, () => c.resolve({ value: values[i], worker: worker.index, enqueuedAt: c.enqueuedAt, startedAt }));
          }
        },
        (e: unknown) => {
          this.release(worker, calls);
          const err = e instanceof Error ? e : new Error(String(e));
          for (const c of calls) this.finish(c, () => c.reject(err));
        },
      );
  }

  /**
   * The worker is free: hand it the next batch before settling this one's callers, so it
   * signs while their continuations run here instead of waiting for them.
   */
  private release(worker: SlotWorker, calls: Call<unknown>[]): void {
    this.batches.splice(this.batches.indexOf(calls), 1);
    worker.batchesInFlight--;
    worker.callsInFlight -= calls.length;
    worker.busy = worker.batchesInFlight > 0;
    if (!worker.busy) worker.freedAt = ++this.freed;
    this.inFlight -= calls.length;
    this.pump();
  }

  private dequeueHead(): void {
    this.queue[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  private dispatch(worker: SlotWorker, call: Call<unknown>): void {
    this.handOut(worker, 1);
    call.startedAt = Date.now();
    worker.perform(call.spec.task, call).then(
      (value) => (this.observe(value), this.finish(call, () => call.resolve({ value, worker: worker.index, enqueuedAt: call.enqueuedAt, startedAt: call.startedAt }))),
      (e: unknown) => this.finish(call, () => call.reject(e instanceof Error ? e : new Error(String(e)))),
    ).finally(() => {
      worker.busy = false;
      worker.freedAt = ++this.freed;
      this.inFlight--;
      if (call.spec.exclusive) this.exclusiveRunning = false;
      this.pump();
    });
  }

  private finish(call: Call<unknown>, settle: () => void): void {
    if (call.settled) return;
    this.cleanup(call);
    settle();
  }

  private fail<T>(call: Call<T>, error: Pkcs11SupervisorError): void {
    if (call.settled) return;
    if (call.queued) this.waiting--;
    call.cancelInBatch?.();
    call.queued = false;
    this.cleanup(call);
    call.reject(error);
  }

  private cleanup<T>(call: Call<T>): void {
    call.settled = true;
    clearTimeout(call.timer);
    if (call.onAbort && call.spec.signal) unwatchAbort(call.spec.signal, call.onAbort);
  }

  /** Fails every queued call (not the running ones) with `error`. */
  failQueued(error: Pkcs11SupervisorError): void {
    for (let i = this.head; i < this.queue.length; i++) this.fail(this.queue[i]!, error);
    this.queue = [];
    this.head = 0;
  }

  /** Refuses new calls and fails the queued ones, and batched ones not started yet; running calls finish. */
  close(error: Pkcs11SupervisorError): void {
    this.closedWith = error;
    this.failQueued(error);
    for (const batch of this.batches) for (const c of batch) if (!c.settled && c.cancelInBatch?.()) this.fail(c, error);
  }

  /** Resolves when no call is running. */
  async drained(): Promise<void> {
    while (this.inFlight > 0) await new Promise((r) => setTimeout(r, 10));
  }
}

/** The caller's bytes a sign or verify carries to the thread. */
function inputBytes(task: SlotTask): number {
  return task.op === 'sign' ? task.data.byteLength : task.op === 'verify' ? task.data.byteLength + task.signature.byteLength : 0;
}
