/**
 * Keeps the main thread's event loop turning, not sleeping, while the reply to a lone call is
 * due shortly. A loop asleep in epoll takes ~35 µs to wake on a virtual machine, a third of a
 * fast signature; turning it with setImmediate costs a little CPU and only while that call runs.
 * Not with several tasks in flight on any session thread: replies then come often enough to keep
 * the loop awake, and turning measurably slowed a pool of 4 at concurrency 16. Not while the busy
 * session threads fill the cores either.
 */
import { roomToSpin } from './busy-board.js';
import { board, cores } from './thread-board.js';

let inFlight = 0;
/** Of those, the ones worth turning for. */
let worthIt = 0;
let due = 0;
let turning = false;

function turn(): void {
  if (inFlight === 1 && worthIt === 1 && performance.now() < due && roomToSpin(board, cores)) setImmediate(turn);
  else turning = false;
}

/** A task was posted to a session thread; `turnMs`: how long its reply is worth turning for (null: not at all). */
export function taskPosted(turnMs: number | null): void {
  inFlight++;
  if (turnMs === null) return;
  worthIt++;
  due = performance.now() + turnMs;
  if (!turning && inFlight === 1) {
    turning = true;
    setImmediate(turn);
  }
}

/** Its reply came, or will not; `turned`: it was posted with a turnMs. */
export function taskAnswered(turned: boolean): void {
  inFlight--;
  if (turned) worthIt--;
}
