/**
 * Keeps the main thread's event loop turning, not sleeping, while a single call's reply is due
 * shortly. A loop asleep in epoll takes ~35 µs to wake on a virtual machine, a third of a fast
 * signature; turning it with setImmediate costs a little CPU and only while such a call runs.
 * Batches are left out: they come with a queue behind them, and then the CPU is better spent
 * on the threads that sign.
 */
import { roomToSpin } from '../workers/busy-board.js';
import { board, cores } from './thread-board.js';

let due = 0;
let expected = 0;
let turning = false;

function turn(): void {
  // Only while the busy session threads leave this thread a core of its own.
  if (expected > 0 && performance.now() < due && roomToSpin(board, cores)) setImmediate(turn);
  else turning = false;
}

/** A reply is expected within `ms`; call replyCame() once it has come (or will not). */
export function replySoon(ms: number): void {
  expected++;
  due = Math.max(due, performance.now() + ms);
  if (!turning) {
    turning = true;
    setImmediate(turn);
  }
}

export function replyCame(): void {
  expected--;
}
