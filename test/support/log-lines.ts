/** A pino logger whose JSON lines a test reads back, parsed, in the order they were written. */
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';

export function logLines<T = Record<string, unknown>>(level: string): { logger: Logger; lines: T[] } {
  const lines: T[] = [];
  const sink = new Writable({ write: (chunk, _e, done) => (lines.push(JSON.parse(chunk.toString()) as T), done()) });
  return { logger: pino({ level }, sink), lines };
}
