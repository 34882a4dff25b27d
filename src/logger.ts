import { pino, type Logger, type LevelWithSilent } from 'pino';

/** Belt and braces: PINs travel as Secret (which prints as [REDACTED]); these paths catch plain strings too. */
export const REDACT_PATHS = ['pin', '*.pin', '*.*.pin', 'password', '*.password', 'soPin', '*.soPin', 'newPin', '*.newPin', 'pinCallback', '*.pinCallback'];

export function createLogger(level: LevelWithSilent, destination?: pino.DestinationStream): Logger {
  const options = { level, base: { name: 'pkcs11-supervisor' }, redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } };
  return destination ? pino(options, destination) : pino(options);
}
