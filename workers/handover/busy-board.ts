/**
 * Which session threads are running a call or spinning for the next one, in shared memory
 * every thread reads. Spinning (a worker waiting for its next call, the main thread waiting
 * for a reply) saves the ~35–100 µs of waking a sleeping thread, but only while the busy
 * threads fit on the cores: past that, a spinning thread takes the CPU a signing one needs.
 * Cell 0 holds how many cells are in use; a thread's own cell is 1 + its place.
 */
export const IDLE = 0;
export const RUNNING = 1;
export const SPINNING = 2;
/**
 * Calls that take longer than this are not spun or turned for: the wake they save is then a few
 * per cent of the call, and spinning through a network HSM's 2 ms answers burned a core at
 * concurrency 1 (3.3 ms of CPU per call, against 0.6 ms without) for no gain in rate. An
 * RSA-2048 signature on SoftHSM2 (0.5 ms, 1.2 ms on a slow day of this VM) stays under it.
 */
export const SPIN_FOR_CALLS_UP_TO_MS = 2;

/** Threads past this many get no cell and never spin. */
export const BOARD_CELLS = 256;

export function newBoard(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4 * BOARD_CELLS));
}

/** Threads running a call or spinning. */
export function busyThreads(board: Int32Array): number {
  let busy = 0;
  for (let i = Atomics.load(board, 0); i > 0; i--) if (Atomics.load(board, i) !== IDLE) busy++;
  return busy;
}

/**
 * Whether spinning fits: the busy threads (a worker asking counts itself as busy) and the main
 * thread, one core each.
 */
export function roomToSpin(board: Int32Array, cores: number): boolean {
  return busyThreads(board) + 1 <= cores;
}
