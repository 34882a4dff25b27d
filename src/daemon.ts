#!/usr/bin/env -S node --max-semi-space-size=32
/**
 * The long-lived daemon: starts every slot from a config file, serves the client API on its
 * local socket and mutual-TLS port (`api`), /metrics, /healthz and /readyz, and on SIGTERM or
 * SIGINT shuts down in order (listeners, calls, logins, sessions, modules).
 * A segfault inside a PKCS#11 module takes the whole process down: run it under systemd or
 * Kubernetes so that case is a restart too.
 * It runs with a 32 MiB young-generation semi-space (the shebang, `npm start` and the container
 * pass the flag; V8 reads it only at start): with Node's 16 MiB a busy daemon's main thread
 * stops for a 3-4 ms scavenge every ~50 ms, long enough for a fast token's session thread to run
 * out of queued calls (docs/performance.md).
 */
import { parseArgs } from 'node:util';
import { isEntryPoint } from './entry-point.js';
import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { createSupervisor } from './client/start.js';
import type { Pkcs11Supervisor } from './client/supervisor-client.js';
import { defaultConfigFile, loadConfigFile } from './config.js';
import { checkApiPaths, checkPaths } from './config-paths.js';
import { configHash } from './config-reload.js';
import { gateOf } from './client/supervisor-client.js';
import { createLogger, exitWhenLogged, logLevel } from './logger.js';
import { createMetrics } from './metrics.js';
import { addressOf, startHttpServer } from './http-server.js';
import { Pkcs11SupervisorError } from './model/errors.js';
import { startApiServer, type ApiServer } from './service/api-server.js';
import { packageVersion } from './package-version.js';

export interface Daemon {
  sup: Pkcs11Supervisor;
  server: Server | null;
  url: string | null;
  /** The service API's listeners, if `api` is configured. */
  api: ApiServer | null;
  /**
   * Reads the config file again and applies what can change without a restart (SIGHUP does
   * this); a file that does not load, or that changes what needs a restart, is refused whole and
   * the running config stays. Resolves with the outcome, never rejects.
   */
  reload(): Promise<ReloadOutcome>;
  stop(): Promise<void>;
}

export type ReloadOutcome = { ok: true; hash: string } | { ok: false; hash: string; error: Pkcs11SupervisorError };

export async function startDaemon(configFile: string, logger?: Logger, listen?: string): Promise<Daemon> {
  const config = loadConfigFile(configFile);
  checkApiPaths(config);
  if (listen !== undefined) Object.assign(config.metrics, parseListen(listen));
  const level = logLevel(config.log.level, 'info');
  const log = logger ?? createLogger(level, { pretty: process.stdout.isTTY === true });
  const sup = createSupervisor({ config, logger: log });
  // Subscribe before start so the start-up logins are counted too.
  const register = createMetrics(sup);
  await sup.start();
  let server: Server | null = null;
  if (config.metrics.enabled) {
    server = await startHttpServer(sup, register, config.metrics.host, config.metrics.port, config.metrics);
  }
  let api: ApiServer | null = null;
  try {
    if (config.api) api = await startApiServer(sup, config, log);
  } catch (e) {
    server?.close();
    await sup.close();
    throw e;
  }
  const url = server ? addressOf(server) : null;
  log.info({ config: configFile, http: url, socket: api?.socketPath ?? undefined, tls: api?.tlsUrl ?? undefined, slots: Object.keys(config.slots) }, 'pkcs11-supervisor started');
  return {
    sup,
    server,
    url,
    api,
    async reload() {
      const inner = gateOf(sup).sup;
      await api?.checkFiles();
      try {
        const next = loadConfigFile(configFile);
        checkPaths(next);
        if (listen !== undefined) Object.assign(next.metrics, parseListen(listen));
        const level = logLevel(next.log.level, 'info');
        const hash = inner.reload(next);
        log.level = level;
        api?.setLogLevel(level);
        log.info({ config: configFile, hash }, 'config reloaded');
        return { ok: true, hash };
      } catch (e) {
        const error = e instanceof Pkcs11SupervisorError ? e : new Pkcs11SupervisorError('CONFIG_INVALID', (e as Error).message);
        const hash = configHash(inner.config);
        log.error({ config: configFile, code: error.code, issues: error.issues, err: error.message, hash }, 'config reload refused; the running config stays');
        inner.events.emit('configReloaded', { hash, ok: false, rekeyed: [], reason: error.message });
        return { ok: false, hash, error };
      }
    },
    async stop() {
      // No new requests; those in flight are answered (queued calls CLOSED) before their connections close.
      api?.stopAccepting();
      server?.closeAllConnections();
      await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
      await sup.close();
      await api?.close();
      log.info('pkcs11-supervisor stopped');
    },
  };
}

/** `host:port` (IPv6 in brackets) overriding the config's metrics listener, e.g. in a container. */
function parseListen(listen: string): { host: string; port: number } {
  const m = /^\[?([^\]]*?)\]?:(\d{1,5})$/.exec(listen);
  if (!m || Number(m[2]) > 65535) {
    throw new Pkcs11SupervisorError('CONFIG_INVALID', `--listen must be host:port, got "${listen}"`, { issues: [{ path: '--listen', message: 'not host:port' }] });
  }
  return { host: m[1]!, port: Number(m[2]) };
}

const DAEMON_USAGE = `usage: node dist/src/daemon.js [--config FILE] [--listen HOST:PORT]

  --config FILE       the config (default $PKCS11_SUPERVISOR_CONFIG, else config/default.json)
  --listen HOST:PORT  the metrics and health listener, overriding metrics.host and metrics.port
  --version           the package's version

Exit codes: 0 stopped by SIGTERM or SIGINT after an orderly shutdown (one sent while the daemon
starts stops it once started), 1 the shutdown took longer than 30 s or failed, a second signal
while starting, or the daemon could not start for a reason outside its config (a port in
use), 2 usage, 78 the config or a module was refused at start ([CODE] message).`;

async function main(): Promise<void> {
  let values: { config?: string; listen?: string; help?: boolean; version?: boolean };
  try {
    ({ values } = parseArgs({
      options: { config: { type: 'string', short: 'c', default: defaultConfigFile() }, listen: { type: 'string' }, help: { type: 'boolean', short: 'h' }, version: { type: 'boolean', short: 'V' } },
    }));
  } catch (e) {
    process.stderr.write(`pkcs11-supervisor: ${(e as Error).message}\n\n${DAEMON_USAGE}\n`);
    process.exit(2);
  }
  if (values.help) return void process.stdout.write(`${DAEMON_USAGE}\n`);
  if (values.version) return void process.stdout.write(`${packageVersion()}\n`);
  const release = keepSignalsWhileStarting();
  // Node opens its inspector on 127.0.0.1:9229 at SIGUSR1, where any local user could then run
  // code in a process that holds token logins. A listener of its own keeps it closed.
  process.on('SIGUSR1', () => process.stderr.write('pkcs11-supervisor: SIGUSR1 ignored (the daemon opens no inspector)\n'));
  let daemon: Daemon;
  try {
    daemon = await startDaemon(values.config!, undefined, values.listen);
  } catch (e) {
    const err = e as Pkcs11SupervisorError;
    process.stderr.write(`pkcs11-supervisor: cannot start: ${err.code ? `[${err.code}] ` : ''}${err.message}\n`);
    exitWhenLogged(err instanceof Pkcs11SupervisorError ? 78 : 1);
    return;
  }
  stopOnSignal(daemon);
  reloadOnSignal(daemon);
  release();
}

const STOPS = ['SIGTERM', 'SIGINT'] as const;

/**
 * Until the daemon runs, SIGHUP, SIGTERM and SIGINT are kept, and raised again once their own
 * handlers are there (call the function this returns then): a SIGHUP while the slots open (a
 * config written just after a restart) would end the process by its default action, and in a
 * container, where the daemon is PID 1 and the kernel spares it every signal it has no handler
 * for, a stop would be lost and the daemon run on. A stop wins over a reload; a second stop
 * while starting exits at once.
 */
function keepSignalsWhileStarting(): () => void {
  const kept = new Set<NodeJS.Signals>();
  const stopAsked = () => STOPS.find((s) => kept.has(s));
  const keep = (signal: NodeJS.Signals) => {
    if (signal !== 'SIGHUP') {
      if (stopAsked()) process.exit(1);
      process.stderr.write(`pkcs11-supervisor: ${signal} while starting; stopping once started (${signal} again exits at once)\n`);
    }
    kept.add(signal);
  };
  for (const s of ['SIGHUP', ...STOPS]) process.on(s, keep);
  return () => {
    for (const s of ['SIGHUP', ...STOPS]) process.off(s, keep);
    const signal = stopAsked() ?? (kept.has('SIGHUP') ? 'SIGHUP' : undefined);
    if (signal) process.kill(process.pid, signal);
  };
}

/** SIGHUP: the config file is read again and what can change without a restart is applied (Daemon.reload). */
export function reloadOnSignal(daemon: Daemon): void {
  process.on('SIGHUP', () => void daemon.reload());
}

/**
 * SIGTERM/SIGINT: stop in order (queued calls CLOSED, running ones finish, logout, sessions,
 * modules), then exit 0; exit 1 if that takes longer than `boundMs`.
 */
export function stopOnSignal(daemon: Daemon, boundMs = 30_000, onStopped: () => void = () => undefined): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`pkcs11-supervisor: ${signal}, shutting down\n`);
    const force = setTimeout(() => exitWhenLogged(1), boundMs);
    force.unref();
    daemon.stop().then(
      () => (onStopped(), exitWhenLogged(0)),
      () => exitWhenLogged(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

if (isEntryPoint(import.meta.url)) void main();
