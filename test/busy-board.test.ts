import { describe, expect, it } from 'vitest';
import { RUNNING, SPINNING, busyThreads, newBoard, roomToSpin } from '../dist/workers/handover/busy-board.js';
import { board, freeCell, takeCell } from '../dist/workers/handover/thread-board.js';

describe('busy board', () => {
  it('counts running and spinning threads among the cells in use, and leaves a core to the main thread', () => {
    const b = newBoard();
    Atomics.store(b, 0, 3);
    Atomics.store(b, 1, RUNNING);
    expect(busyThreads(b)).toBe(1);
    expect(roomToSpin(b, 2)).toBe(true); // the asking thread and the main thread: 2 cores
    Atomics.store(b, 3, SPINNING);
    expect(busyThreads(b)).toBe(2);
    expect(roomToSpin(b, 2)).toBe(false);
    expect(roomToSpin(b, 4)).toBe(true);
    Atomics.store(b, 4, RUNNING); // past the cells in use: not counted
    expect(busyThreads(b)).toBe(2);
  });

  it('cells are handed out once, taken back when their thread is gone, and reused', () => {
    const a = takeCell();
    const c = takeCell();
    expect(a).toBeGreaterThan(0);
    expect(c).not.toBe(a);
    expect(Atomics.load(board, 0)).toBeGreaterThanOrEqual(Math.max(a, c));
    Atomics.store(board, a, RUNNING);
    freeCell(a);
    expect(Atomics.load(board, a)).toBe(0);
    expect(takeCell()).toBe(a);
  });

  it('a cell freed twice is still handed to one thread only', () => {
    const a = takeCell();
    freeCell(a);
    freeCell(a);
    const first = takeCell();
    const second = takeCell();
    expect(first).toBe(a);
    expect(second).not.toBe(a);
  });

  it('supervisors started and closed leave every cell free once: the threads of the next pool each get a cell of their own', async () => {
    const { startSupervisor } = await import('../dist/src/index.js');
    const { configFor, createToken, tokenDir } = await import('./support/softhsm.js');
    const td = tokenDir();
    const tok = createToken(td, 'cells');
    process.env.CELLS_PIN = tok.pin;
    for (let i = 0; i < 3; i++) {
      const sup = await startSupervisor({ config: configFor(td, { p: { type: 'hsm', poolSize: 2, token: { label: 'cells' }, pin: { env: 'CELLS_PIN' } } }) });
      await sup.sign({ slot: 'p', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from('x') });
      await sup.close(); // stops each thread, then its machine lets it go: its cell must be freed once
    }
    const cells = Array.from({ length: 8 }, () => takeCell());
    expect(new Set(cells).size).toBe(8);
    for (const c of cells) freeCell(c);
  });
});
