/**
 * Prometheus metrics, fed by the supervisor's events and by reading slot state at scrape
 * time, so the sign path pays for one event emit and nothing else. Labels are bounded:
 * slot, worker, operation, mechanism, result code, state. Never key material, PINs or data.
 * The supervisor's own metrics start with `pkcs11_`; the process and Node.js metrics keep their
 * standard names (`process_*`, `nodejs_*`), which stock dashboards look for. The counters an
 * alert watches exist at 0 from the start, so their first increase is a change an alert sees.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Pkcs11Supervisor, SlotStatus } from './client/supervisor-client.js';
import { SLOT_STATES } from './model/slot-state.js';
import { USER_PIN_STATES } from './model/protocol.js';
import { OPERATIONS } from './access-policy.js';
import { configHash } from './config-reload.js';
import { droppedLogLines } from './logger.js';
import { packageVersion } from './package-version.js';


const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export function createMetrics(sup: Pkcs11Supervisor): Registry {
  const register = new Registry();
  collectDefaultMetrics({ register });
  // Gauges named like counters: `promtool check metrics` flags them, and nothing is lost without them.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) register.removeSingleMetric(name);

  const calls = new Counter({
    name: 'pkcs11_calls_total',
    help: 'Calls through the client API, by slot, operation, mechanism and result (ok or an error code).',
    labelNames: ['slot', 'op', 'mechanism', 'result'] as const,
    registers: [register],
  });
  const queueWait = new Histogram({
    name: 'pkcs11_call_queue_seconds',
    help: 'Time a call waited in its slot mailbox before a worker took it.',
    labelNames: ['slot', 'op'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [register],
  });
  const exec = new Histogram({
    name: 'pkcs11_call_execution_seconds',
    help: 'Time the worker thread spent on the PKCS#11 calls of one call (measured inside the thread).',
    labelNames: ['slot', 'op', 'mechanism'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [register],
  });
  const restarts = new Counter({ name: 'pkcs11_worker_restarts_total', help: 'Slot worker restarts by the supervisor.', labelNames: ['slot'] as const, registers: [register] });
  const budgetSpent = new Counter({
    name: 'pkcs11_restart_budget_exhausted_total',
    help: 'Times a slot worker was given up because its slot restart budget was spent (or its error was permanent).',
    labelNames: ['slot'] as const,
    registers: [register],
  });
  const moduleResets = new Counter({
    name: 'pkcs11_module_resets_total',
    help: 'Module resets (C_Finalize + C_Initialize) after the module itself broke.',
    labelNames: ['module'] as const,
    registers: [register],
  });
  const logins = new Counter({
    name: 'pkcs11_login_attempts_total',
    help: 'C_Login attempts that reached the token, by PIN source and result.',
    labelNames: ['slot', 'source', 'result'] as const,
    registers: [register],
  });

  const handleFailures = new Counter({
    name: 'pkcs11_handle_allocation_failures_total',
    help: 'Session or object handles the module could not allocate (CKR_SESSION_COUNT, CKR_HOST_MEMORY, CKR_DEVICE_MEMORY), by slot, handle kind and CKR.',
    labelNames: ['slot', 'handle', 'ckr'] as const,
    registers: [register],
  });
  sup.on('handleAllocationFailure', (e) => handleFailures.inc({ slot: e.slot, handle: e.handle, ckr: e.ckr }));

  const slotEvents = new Counter({
    name: 'pkcs11_slot_events_total',
    help: 'Tokens inserted or removed, as the module reported them (C_WaitForSlotEvent), by module path.',
    labelNames: ['module'] as const,
    registers: [register],
  });
  sup.on('slotEvent', (e) => slotEvents.inc({ module: e.module }));

  const denied = new Counter({
    name: 'pkcs11_access_denied_total',
    help: 'Calls refused by the policy (FORBIDDEN), by slot and operation.',
    labelNames: ['slot', 'op'] as const,
    registers: [register],
  });
  sup.on('accessDenied', (e) => denied.inc({ slot: e.slot, op: e.op }));

  const auditErrors = new Counter({ name: 'pkcs11_audit_write_errors_total', help: 'Failed writes of the audit trail (the records stay queued and are written again).', registers: [register] });
  sup.on('auditWriteError', () => auditErrors.inc());
  new Gauge({
    name: 'pkcs11_audit_writable',
    help: 'Whether the audit trail was written at its last try (1) or not (0); absent without a trail.',
    registers: [register],
    collect() {
      const audit = sup.snapshot().audit;
      if (audit) this.set(audit.healthy ? 1 : 0);
    },
  });
  new Gauge({
    name: 'pkcs11_audit_pending_records',
    help: 'Audit records not yet on disk.',
    registers: [register],
    collect() {
      this.set(sup.snapshot().audit?.pending ?? 0);
    },
  });

  let droppedSeen = 0;
  new Counter({
    name: 'pkcs11_log_lines_dropped_total',
    help: 'Log lines dropped because stdout was not read and 16 MiB of them waited already.',
    registers: [register],
    collect() {
      const dropped = droppedLogLines();
      if (dropped > droppedSeen) this.inc(dropped - droppedSeen);
      droppedSeen = dropped;
    },
  });

  const slots = () => Object.entries(sup.snapshot().slots);
  /** A gauge per slot, read from the slot's status at scrape time. */
  const perSlot = (name: string, help: string, value: (s: SlotStatus, slot: string) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['slot'] as const,
      registers: [register],
      collect() {
        this.reset();
        for (const [slot, s] of slots()) this.set({ slot }, value(s, slot));
      },
    });
  perSlot('pkcs11_mailbox_depth', 'Calls waiting in the slot mailbox.', (s) => s.queued);
  // What an alert compares with: the queue's size and the calls' deadline, from the config.
  perSlot('pkcs11_mailbox_limit', 'The slot mailbox size (queueLimit): calls past it get QUEUE_FULL.', (_, slot) => sup.config.slots[slot]!.queueLimit);
  perSlot('pkcs11_call_timeout_seconds', "The slot's default call deadline (callTimeoutMs).", (_, slot) => sup.config.slots[slot]!.callTimeoutMs / 1000);
  perSlot('pkcs11_calls_in_flight', 'Calls running on the slot workers.', (s) => s.running);
  perSlot('pkcs11_sessions_open', 'PKCS#11 sessions held by the slot workers.', (s) => s.workers.filter((w) => w.session !== null).length);
  new Gauge({
    name: 'pkcs11_slot_state',
    help: 'State of each slot worker: 1 for the current state, 0 for the others.',
    labelNames: ['slot', 'worker', 'state'] as const,
    registers: [register],
    collect() {
      this.reset();
      for (const [name, s] of slots()) {
        for (const w of s.workers) for (const st of SLOT_STATES) this.set({ slot: name, worker: String(w.index), state: st }, w.state === st ? 1 : 0);
      }
    },
  });

  new Gauge({
    name: 'pkcs11_user_pin_state',
    help: "The user PIN's retry flags as the token last reported them (CKF_USER_PIN_COUNT_LOW, _FINAL_TRY, _LOCKED): 1 for the current state; absent before the first look.",
    labelNames: ['slot', 'state'] as const,
    registers: [register],
    collect() {
      this.reset();
      for (const [slot, s] of slots()) if (s.userPin) for (const st of USER_PIN_STATES) this.set({ slot, state: st }, s.userPin === st ? 1 : 0);
    },
  });

  sup.on('callCompleted', (e) => {
    const mechanism = e.mechanism ?? '';
    calls.inc({ slot: e.slot, op: e.op, mechanism, result: e.outcome });
    queueWait.observe({ slot: e.slot, op: e.op }, e.queuedMs / 1000);
    if (e.startedAt !== null) exec.observe({ slot: e.slot, op: e.op, mechanism }, e.execMs / 1000);
  });
  const apiRequests = new Counter({
    name: 'pkcs11_api_requests_total',
    help: 'Requests to the service API, by route (method) and code (ok or the error code answered); a batch counts once as batch and each of its calls under its method.',
    labelNames: ['route', 'code'] as const,
    registers: [register],
  });
  const apiDuration = new Histogram({
    name: 'pkcs11_api_request_duration_seconds',
    help: 'Service API requests, from the request arriving to its answer, by route.',
    labelNames: ['route'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [register],
  });
  sup.on('apiRequest', (e) => {
    apiRequests.inc({ route: e.route, code: e.code });
    apiDuration.observe({ route: e.route }, e.seconds);
  });
  const tlsExpiry = new Gauge({
    name: 'pkcs11_api_tls_expiry_timestamp_seconds',
    help: 'When a TLS file of the service API stops working, by file (api.tls field): the earliest notAfter in cert (the server certificate and its chain) and in clientCa, the earliest nextUpdate in crl; clients are refused from then on.',
    labelNames: ['file'] as const,
    registers: [register],
  });
  sup.on('tlsFilesLoaded', (e) => {
    tlsExpiry.reset();
    for (const file of ['cert', 'clientCa', 'crl'] as const) if (e[file]) tlsExpiry.set({ file }, e[file].getTime() / 1000);
  });
  for (const [slot, cfg] of Object.entries(sup.config.slots)) {
    restarts.inc({ slot }, 0);
    budgetSpent.inc({ slot }, 0);
    for (const op of OPERATIONS) denied.inc({ slot, op }, 0);
    const sources = ['call', ...(cfg.pin ? [Object.keys(cfg.pin)[0]!] : []), 'callback'];
    for (const source of sources) for (const result of ['ok', 'PIN_INCORRECT']) logins.inc({ slot, source, result }, 0);
  }
  // A module is named by its library's path, as the reset events name it.
  for (const module of new Set(Object.values(sup.config.modules).map((m) => m.path))) moduleResets.inc({ module }, 0);
  new Gauge({
    name: 'pkcs11_build_info',
    help: 'The running pkcs11-supervisor: 1, with its version (which replicas a rollout has reached).',
    labelNames: ['version'] as const,
    registers: [register],
  }).set({ version: packageVersion() }, 1);
  new Gauge({
    name: 'pkcs11_config_info',
    help: 'The config in force: 1, with the hash of its content (a reload that was applied changes it; a refused one does not).',
    labelNames: ['hash'] as const,
    registers: [register],
    collect() {
      this.reset();
      this.set({ hash: configHash(sup.config) }, 1);
    },
  });
  const reloads = new Counter({ name: 'pkcs11_config_reloads_total', help: 'Config reloads (SIGHUP), applied (ok) or refused.', labelNames: ['result'] as const, registers: [register] });
  for (const result of ['ok', 'refused']) reloads.inc({ result }, 0);
  sup.on('configReloaded', (e) => reloads.inc({ result: e.ok ? 'ok' : 'refused' }));
  sup.on('restart', (e) => restarts.inc({ slot: e.slot }));
  sup.on('slotFailed', (e) => budgetSpent.inc({ slot: e.slot }));
  sup.on('moduleReset', (e) => moduleResets.inc({ module: e.module }));
  sup.on('login', (e) => logins.inc({ slot: e.slot, source: e.origin, result: e.outcome }));
  return register;
}
