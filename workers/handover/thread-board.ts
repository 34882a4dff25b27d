/** The process's busy board (busy-board.ts) and the cells its session threads hold. */
import { availableParallelism } from 'node:os';
import { BOARD_CELLS, IDLE, newBoard } from './busy-board.js';

export const board = newBoard();
export const cores = availableParallelism();
const free: number[] = [];
let used = 0;

/** A cell for a new thread; 0 (no cell: the thread never spins) when all are taken. */
export function takeCell(): number {
  const cell = free.pop() ?? (used + 1 < BOARD_CELLS ? ++used : 0);
  if (cell > 0) Atomics.store(board, 0, used);
  return cell;
}

/** Once its thread is gone: a thread still inside a native call keeps its cell, and rightly counts as busy. */
export function freeCell(cell: number): void {
  // Never listed twice: a cell given to two threads makes both count as one.
  if (cell === 0 || free.includes(cell)) return;
  Atomics.store(board, cell, IDLE);
  free.push(cell);
}
