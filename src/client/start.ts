import { AuditLog } from '../audit.js';
import { loadConfigFile, parseConfig } from '../config.js';
import { checkPaths } from '../config-paths.js';
import { createLogger, logLevel } from '../logger.js';
import { Pkcs11SupervisorError } from '../model/errors.js';
import { Supervisor } from '../supervisor.js';
import type { StartOptions } from './requests.js';
import { Pkcs11Supervisor } from './supervisor-client.js';

/**
 * Validates the config and loads the modules, but opens nothing yet: subscribe to events
 * (metrics, audit) first, then `start()`.
 */
export function createSupervisor(options: StartOptions): Pkcs11Supervisor {
  if (!options || (options.config === undefined) === (options.configFile === undefined)) {
    throw new Pkcs11SupervisorError('CONFIG_INVALID', 'startSupervisor needs exactly one of { config } or { configFile }');
  }
  const config = options.configFile !== undefined ? loadConfigFile(options.configFile) : parseConfig(options.config);
  checkPaths(config);
  const logger = options.logger ?? createLogger(logLevel(config.log.level, 'warn'));
  const audit = config.audit ? new AuditLog(config.audit.path, logger, { flushMs: config.audit.flushMs, durable: config.audit.mode === 'durable', failClosed: config.audit.failClosed, maxBytes: config.audit.maxBytes }) : null;
  return new Pkcs11Supervisor(new Supervisor(config, logger, options.pinCallback, options.restartPolicy), audit);
}

/**
 * Starts every configured slot and resolves once each non-lazy slot has opened its sessions
 * (and logged in where a PIN source is configured) or has failed cleanly.
 */
export async function startSupervisor(options: StartOptions): Promise<Pkcs11Supervisor> {
  return createSupervisor(options).start();
}
