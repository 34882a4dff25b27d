import { z } from 'zod';
import { AuditLog } from '../audit.js';
import { loadConfigFile, parseConfig } from '../config.js';
import { checkPaths } from '../config-paths.js';
import { createLogger, logLevel } from '../logger.js';
import { Pkcs11SupervisorError, schemaRefused } from '../model/errors.js';
import { Supervisor } from '../supervisor.js';
import type { StartOptions } from './requests.js';
import { Pkcs11Supervisor } from './supervisor-client.js';

const fn = (what: string) => z.custom<(...args: never[]) => unknown>((v) => typeof v === 'function', { message: `must be ${what}` });
/** The logger's methods the supervisor calls (a pino logger has them all). */
const LOGGER_METHODS = ['error', 'warn', 'info', 'debug', 'child'] as const;

const START_OPTIONS = z.strictObject({
  config: z.unknown().optional(),
  configFile: z.string().min(1, 'must be the path of a JSON file').optional(),
  pinCallback: fn('a function that returns a PIN (or null)').optional(),
  logger: z
    .custom<object>((v) => typeof v === 'object' && v !== null && LOGGER_METHODS.every((m) => typeof (v as Record<string, unknown>)[m] === 'function'), { message: `must be a pino logger (${LOGGER_METHODS.join(', ')})` })
    .optional(),
  restartPolicy: fn('a function that makes a RestartPolicy from a slot\'s restart options').optional(),
});

/** The options around the config, checked before anything is loaded: a logger without `warn` fails now, not from inside a state change. */
function checkStartOptions(options: StartOptions): void {
  const parsed = START_OPTIONS.safeParse(options);
  if (!parsed.success) throw schemaRefused('CONFIG_INVALID', 'startSupervisor options', parsed.error.issues);
}

/**
 * Validates the config and loads the modules, but opens nothing yet: subscribe to events
 * (metrics, audit) first, then `start()`.
 */
export function createSupervisor(options: StartOptions): Pkcs11Supervisor {
  if (!options || (options.config === undefined) === (options.configFile === undefined)) {
    throw new Pkcs11SupervisorError('CONFIG_INVALID', 'startSupervisor needs exactly one of { config } or { configFile }');
  }
  checkStartOptions(options);
  const config = options.configFile !== undefined ? loadConfigFile(options.configFile) : parseConfig(options.config);
  checkPaths(config);
  const logger = options.logger ?? createLogger(logLevel(config.log.level, 'warn'));
  const audit = config.audit ? new AuditLog(config.audit.path, logger, { flushMs: config.audit.flushMs, durable: config.audit.mode === 'durable', failClosed: config.audit.failClosed, maxBytes: config.audit.maxBytes, maxQueuedBytes: config.audit.maxQueuedBytes }) : null;
  let supervisor: Supervisor;
  try {
    supervisor = new Supervisor(config, logger, options.pinCallback, options.restartPolicy);
  } catch (e) {
    audit?.abandon();
    throw e;
  }
  return new Pkcs11Supervisor(supervisor, audit);
}

/**
 * Starts every configured slot and resolves once each non-lazy slot has opened its sessions
 * (and logged in where a PIN source is configured) or has failed cleanly.
 */
export async function startSupervisor(options: StartOptions): Promise<Pkcs11Supervisor> {
  return createSupervisor(options).start();
}
