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
  // Asynchronous by default: a log line must never stall the sign path on a slow stdout.
  return pino(base, options.destination ?? pino.destination({ dest: 1, sync: false }));
}
