/**
 * A flood of idle connections to the daemon's HTTP listener: the connection cap closes what is
 * past it at once, idle connections are closed after idleTimeoutMs, the slot keeps signing
 * throughout, and the listener answers again (curl) once the flood is gone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type Socket } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { startDaemon, type Daemon } from '../dist/src/index.js';
import { configFor, createToken, tokenDir, type TokenDir } from './support/softhsm.js';
import { verifiesOnNode } from './support/sign-check.js';

let td: TokenDir;
let daemon: Daemon;
const data = Buffer.from('signed while the listener is flooded');

beforeAll(async () => {
  td = tokenDir();
  process.env.FLOOD_PIN = createToken(td, 'flood').pin;
  const file = join(td.dir, 'config.json');
  writeFileSync(file, JSON.stringify({ ...configFor(td, { s: { token: { label: 'flood' }, pin: { env: 'FLOOD_PIN' } } }), metrics: { host: '127.0.0.1', port: 0, maxConnections: 20, idleTimeoutMs: 2_000 } }));
  daemon = await startDaemon(file, pino({ level: 'silent' }));
});

afterAll(() => daemon?.stop());

describe('the HTTP listener under a flood of idle connections', () => {
  it('holds at most maxConnections, closes idle ones, keeps the slot signing, and serves again afterwards', async () => {
    const { port } = daemon.server!.address() as { port: number };
    const sockets: Socket[] = [];
    let closed = 0;
    await Promise.all(
      Array.from({ length: 300 }, () => new Promise<void>((resolve) => {
        const s = connect(port, '127.0.0.1', () => resolve());
        s.on('error', () => resolve());
        s.on('close', () => {
          closed++;
          resolve();
        });
        sockets.push(s);
      })),
    );
    // The server holds at most 20; the rest it closes as it accepts them, long before the idle
    // timeout (on a busy machine accepting 300 takes more than a moment: wait for it, not a fixed time).
    const connected = Date.now();
    while (300 - closed > 20 && Date.now() - connected < 1_500) await sleep(20);
    expect(300 - closed).toBeLessThanOrEqual(20);

    const sig = await daemon.sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(await verifiesOnNode(daemon.sup, 's', 'ec', data, sig)).toBe(true);

    while (closed < 300 && Date.now() - connected < 6_000) await sleep(50); // past idleTimeoutMs
    expect(closed).toBe(300);
    // Not execFileSync: the listener is in this process, and must keep its event loop to answer.
    const { stdout } = await promisify(execFile)('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:${port}/readyz`]);
    expect(stdout).toBe('200');
    expect(daemon.sup.status().slots.s!.state).toBe('logged_in');
  });
});
