/**
 * The session thread's loop: reads calls from the main thread's channel and answers each on
 * it, in order. After a call it spins up to `spinMs` for the next one, if the busy threads
 * leave a core for it and its calls are quick (busy-board.ts), then sleeps on the shared
 * counter. A steady caller then never pays for waking the thread, a spinning thread never
 * crowds out a signing one, and an idle slot costs no CPU.
 */
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import type { WorkerReply, WorkerTask } from '../../src/model/protocol.js';
import type { PackedBatch, PackedReplies } from './batch-codec.js';
import { IDLE, RUNNING, SPINNING, SPIN_FOR_CALLS_UP_TO_MS, roomToSpin } from './busy-board.js';

export type ServeRequest = { id: number; task: WorkerTask | PackedBatch } | 'stop';
export type ServeReply = { id: number; reply: WorkerReply } | { id: number; packed: PackedReplies; startedAt: number; endedAt: number };
export interface ServeStart {
  port: MessagePort;
  /** [0]: requests the main thread has posted. */
  posted: Int32Array;
  spinMs: number;
  /** The process's busy board, this thread's cell on it (0: none, never spin), and the cores. */
  board: Int32Array;
  cell: number;
  cores: number;
}

/** What the thread does with a call: any task, or a packed batch (see batch-codec.ts). */
export interface Serve {
  run(task: WorkerTask): WorkerReply;
  runPacked(batch: PackedBatch): { packed: PackedReplies; startedAt: number; endedAt: number };
}

export async function serveLoop(start: ServeStart, serve: Serve): Promise<void> {
  const { port, posted, spinMs, board, cell, cores } = start;
  let seen = 0;
  /** The calls just answered were short enough that the next one is worth spinning for. */
  let quick = true;
  if (cell > 0) Atomics.store(board, cell, RUNNING);
  for (;;) {
    if (cell > 0) {
      if (spinMs > 0 && quick && roomToSpin(board, cores)) {
        Atomics.store(board, cell, SPINNING);
        const until = performance.now() + spinMs;
        // Gives up as soon as another thread starts running and the cores are full.
        while (Atomics.load(posted, 0) === seen && performance.now() < until && roomToSpin(board, cores));
      }
      Atomics.store(board, cell, IDLE);
    }
    Atomics.wait(posted, 0, seen);
    if (cell > 0) Atomics.store(board, cell, RUNNING);
    seen = Atomics.load(posted, 0);
    let calls = 0;
    let tookMs = 0;
    for (let entry = receiveMessageOnPort(port); entry !== undefined; entry = receiveMessageOnPort(port)) {
      const request = entry.message as ServeRequest;
      if (request === 'stop') {
        port.close();
        return;
      }
      const reply = answer(request.id, request.task, serve);
      calls += callsIn(request.task);
      tookMs += tookOf(reply);
      port.postMessage(reply);
    }
    quick = tookMs <= SPIN_FOR_CALLS_UP_TO_MS * calls;
    // Lets queued microtasks run between calls, as they would between Piscina tasks (an
    // uncaught error thrown from one must still end the thread).
    await null;
  }
}

/** The time the reply's calls took, as the thread timed them for the main thread. */
function tookOf(reply: ServeReply): number {
  return 'packed' in reply ? reply.endedAt - reply.startedAt : reply.reply.endedAt - reply.reply.startedAt;
}

function callsIn(task: WorkerTask | PackedBatch): number {
  return task.op === 'packed' ? task.calls : task.op === 'batch' ? task.tasks.length : 1;
}

function answer(id: number, sent: WorkerTask | PackedBatch, serve: Serve): ServeReply {
  return sent.op === 'packed' ? { id, ...serve.runPacked(sent) } : { id, reply: serve.run(sent) };
}
