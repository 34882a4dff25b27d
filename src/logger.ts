import { pino, type Logger, type LevelWithSilent, type LoggerOptions } from 'pino';

/** Belt and braces: PINs travel as Secret (which prints as [REDACTED]); these paths catch plain strings too. */
export const REDACT_PATHS = ['pin', '*.pin', '*.*.pin', 'password', '*.password', 'soPin', '*.soPin', 'newPin', '*.newPin', 'pinCallback', '*.pinCallback'];

/** JSON lines for machines; `pretty` (a terminal) renders them for people, with the same redaction. */
export function createLogger(level: LevelWithSilent, options: { pretty?: boolean; destination?: pino.DestinationStream } = {}): Logger {
  const base: LoggerOptions = { level, base: { name: 'pkcs11-supervisor' }, redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } };
  if (options.pretty) return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: true } } });
  // Asynchronous by default: a log line must never stall the sign path on a slow stdout.
  return pino(base, options.destination ?? pino.destination({ dest: 1, sync: false }));
}
