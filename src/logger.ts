import { pino, type Logger, type LevelWithSilent, type LoggerOptions } from 'pino';
import { LOG_LEVELS, type LogLevel } from './config-schema.js';
import { Pkcs11SupervisorError } from './model/errors.js';

/**
 * The level to log at: `LOG_LEVEL` from the environment, else the config's `log.level`, else
 * `fallback` (the daemon's info; a library's warn, quiet in its host application's output).
 */
export function logLevel(configured: LogLevel | undefined, fallback: LogLevel): LogLevel {
  const env = process.env.LOG_LEVEL;
  if (env === undefined || env === '') return configured ?? fallback;
  if ((LOG_LEVELS as readonly string[]).includes(env)) return env as LogLevel;
  throw new Pkcs11SupervisorError('CONFIG_INVALID', `LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, got "${env}"`, { issues: [{ path: 'LOG_LEVEL', message: 'not a log level' }] });
}

/** Belt and braces: PINs travel as Secret (which prints as [REDACTED]); these paths catch plain strings too. */
export const REDACT_PATHS = ['pin', '*.pin', '*.*.pin', 'password', '*.password', 'soPin', '*.soPin', 'newPin', '*.newPin', 'pinCallback', '*.pinCallback'];

/** JSON lines for machines; `pretty` (a terminal) renders them for people, with the same redaction. */
export function createLogger(level: LevelWithSilent, options: { pretty?: boolean; destination?: pino.DestinationStream } = {}): Logger {
  const base: LoggerOptions = { level, base: { name: 'pkcs11-supervisor' }, redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } };
  if (options.pretty) return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: true } } });
  if (options.destination) return pino(base, options.destination);
  // Asynchronous: a log line must never stall the sign path on a slow stdout.
  const destination = pino.destination({ dest: 1, sync: false, maxLength: LOG_BUFFER_BYTES });
  destinations.set(destination as unknown as Destination, destination.flushSync);
  destination.on('error', (e: NodeJS.ErrnoException) => stopWriting(destination as unknown as Destination, e));
  const logger = pino(base, destination);
  let droppedHere = 0;
  destination.on('drop', () => {
    droppedHere++;
    droppedLines++;
  });
  // Written out: say what was lost meanwhile, where the lines would have been.
  destination.on('drain', () => {
    if (droppedHere === 0) return;
    const dropped = droppedHere;
    droppedHere = 0;
    logger.warn({ dropped }, 'log lines dropped: stdout was not read while they came');
  });
  return logger;
}

/**
 * What stdout may hold unwritten. A reader that stops reading (a stalled log shipper or container
 * runtime) would otherwise have every line kept in memory until the daemon is killed for it;
 * past this, lines are dropped and counted (pkcs11_log_lines_dropped_total) instead.
 */
const LOG_BUFFER_BYTES = 16 * 2 ** 20;
let droppedLines = 0;

/** Log lines dropped since start because stdout was not read (LOG_BUFFER_BYTES). */
export function droppedLogLines(): number {
  return droppedLines;
}

/**
 * A write to stdout failed (its reader went away: EPIPE from a pipe, ECONNRESET from a socket
 * such as journald's; or EIO): the log stops there, and the daemon goes on signing. pino does
 * this for EPIPE only; any other error reached no listener and crashed the daemon.
 */
function stopWriting(d: Destination, e: NodeJS.ErrnoException): void {
  if (stopped.has(d)) return;
  stopped.add(d);
  d.write = () => true;
  d.flushSync = () => undefined;
  d.flush = (cb?: (err?: Error) => void) => cb?.();
  d.end = () => undefined;
  try {
    process.stderr.write(`pkcs11-supervisor: the log could not be written to stdout (${e.code ?? e.message}); logging stopped\n`);
  } catch {
    // stderr is gone too
  }
}

/** What exitWhenLogged reads of the stdout destinations createLogger made (sonic-boom's). */
interface Destination {
  _writing: boolean;
  _len: number;
  write: (line: string) => boolean;
  flushSync(): void;
  flush(cb?: (err?: Error) => void): void;
  end(): void;
}
/** The stdout destinations createLogger made, with their own flushSync. */
const destinations = new Map<Destination, () => void>();
/** Not given up: a destination whose write failed has its methods replaced (by pino for EPIPE, by stopWriting otherwise). */
const writing = (d: Destination) => d.flushSync === destinations.get(d);
const stopped = new WeakSet<Destination>();

/**
 * Exits once the log lines already written have left (up to `boundMs`). Not process.exit alone:
 * pino then writes what is pending with sonic-boom's flushSync, which retries a failed write
 * every 100 ms forever, so a daemon whose log reader had gone away (EPIPE on stdout) or stopped
 * reading never exited, SIGTERM or not. Lines that cannot be written by then are dropped.
 */
export function exitWhenLogged(code: number, boundMs = 1_000): void {
  const until = performance.now() + boundMs;
  const check = () => {
    const pending = [...destinations.keys()].some((d) => writing(d) && (d._writing || d._len > 0));
    if (pending && performance.now() < until) return void setTimeout(check, 5);
    // What is left could not be written in time: pino's exit hook must not try again.
    for (const d of destinations.keys()) d.flushSync = () => undefined;
    process.exit(code);
  };
  check();
}
