/**
 * The supervisor: starts one slot per configured slot, carries out what the slot's restart
 * policy decides when a worker crashes (restart after backoff, give up, reset the module),
 * and shuts everything down in order: calls, logins, sessions, then each module exactly once.
 */
import type { Logger } from 'pino';
import type { Config } from './config-schema.js';
import { fieldRefused, Pkcs11SupervisorError } from './model/errors.js';
import { SupervisorEmitter } from './events.js';
import { acquireModule, closeModuleGate, outOfModule, releaseModule, reinitializeModule } from './module-registry.js';
import { MODULE_BROKEN_CKRS } from './model/ckr.js';
import { checkPinFiles, type PinCallback } from './pin-chain.js';
import { defaultRestartPolicy, type RestartPolicyFactory } from './restart-policy.js';
import { Slot } from './slot.js';
import { applyConfig, configHash, restartNeeded } from './config-reload.js';
import { HealthProbe } from './health-probe.js';
import { SlotEventWatcher } from './slot-event-watcher.js';
import type { SlotWorker } from './slot-worker.js';

/** An operator's resets of one module run at most this often; more asked for in between become one at the end. */
export const OPERATOR_RESET_GAP_MS = 1_000;

export class Supervisor {
  readonly slots = new Map<string, Slot>();
  readonly events = new SupervisorEmitter();
  private readonly probes = new Map<Slot, HealthProbe>();
  /** Module load path → its slot-event thread (modules with slotEvents on). */
  private readonly watchers = new Map<string, SlotEventWatcher>();
  private readonly lastModuleReset = new Map<string, number>();
  private readonly lastOperatorReset = new Map<string, number>();
  /** Operator resets asked for within OPERATOR_RESET_GAP_MS of the last: the slots of the one that runs then. */
  private readonly pendingResets = new Map<string, { slots: Set<Slot>; timer: NodeJS.Timeout }>();
  /** Module name → the path its library is loaded by (a pinned descriptor when sha256 is set). */
  private readonly loadPaths = new Map<string, string>();
  private closing: Promise<void> | null = null;

  constructor(
    readonly config: Config,
    readonly log: Logger,
    pinCallback: PinCallback | undefined,
    restartPolicy: RestartPolicyFactory = defaultRestartPolicy,
  ) {
    // A token is PIN-protected: it needs somewhere to get a PIN from.
    const pinless = Object.entries(config.slots).filter(([, s]) => s.type === 'token' && !s.pin && !pinCallback);
    if (pinless.length > 0) {
      const issues = pinless.map(([n]) => ({ path: `slots.${n}.pin`, message: 'a "token" slot needs a PIN source: pin.env, pin.file, or a pinCallback given to startSupervisor' }));
      throw new Pkcs11SupervisorError('CONFIG_INVALID', `config is invalid:\n${issues.map((i) => `  ${i.path}: ${i.message}`).join('\n')}`, { issues });
    }
    checkPinFiles(config.slots);
    const acquired: string[] = [];
    try {
      for (const [name, slotConfig] of Object.entries(config.slots)) {
        const mod = config.modules[slotConfig.module]!;
        const { loadPath, initializedElsewhere } = acquireModule(mod.path, mod.env, slotConfig.module, mod.sha256);
        if (initializedElsewhere && !mod.applicationInitializesWithOsLocking && !this.loadPaths.has(slotConfig.module)) refuseSharedThreads(config, slotConfig.module, mod.path);
        this.loadPaths.set(slotConfig.module, loadPath);
        acquired.push(loadPath);
        const slot = new Slot(name, slotConfig, loadPath, pinCallback, this.events, log, this, restartPolicy(slotConfig.restart));
        this.slots.set(name, slot);
        this.probes.set(slot, new HealthProbe(slot, loadPath, (s) => this.reset(s), log));
        if (mod.slotEvents && !this.watchers.has(loadPath)) this.watchers.set(loadPath, new SlotEventWatcher(loadPath, (id) => this.slotEvent(loadPath, id), log));
        slot.eventWatcher = this.watchers.get(loadPath) ?? null;
      }
    } catch (e) {
      for (const path of acquired) releaseModule(path);
      throw e;
    }
  }

  /**
   * Takes what a new config can change without a restart (config-reload.ts), all at once; a
   * config that changes anything else is refused whole with CONFIG_INVALID naming each field.
   */
  reload(next: Config): string {
    const issues = restartNeeded(this.config, next);
    if (issues.length > 0) {
      throw new Pkcs11SupervisorError('CONFIG_INVALID', `the new config changes what needs a restart:\n${issues.map((i) => `  ${i.path}: ${i.message}`).join('\n')}`, { issues });
    }
    const rekeyed = applyConfig(this.config, next);
    for (const slot of this.slots.values()) for (const w of slot.workers) w.timeoutsChanged();
    // Key types learnt at open describe the old refs: until the next open the token decides.
    for (const name of rekeyed) this.slots.get(name)!.capabilities.keyTypes.clear();
    const hash = configHash(this.config);
    this.events.emit('configReloaded', { hash, ok: true, rekeyed, reason: null });
    return hash;
  }

  async start(): Promise<void> {
    await Promise.all([...this.slots.values()].map((s) => s.start()));
    // What only the token can tell (its session limit) is still a config error: refuse to run.
    const issues = [...this.slots.values()].flatMap((s) => {
      const error = s.workers.map((w) => w.context.lastError).find((e) => e?.code === 'CONFIG_INVALID');
      return error ? [{ path: `slots.${s.name}.poolSize`, message: error.message }] : [];
    });
    if (issues.length > 0) {
      await this.close();
      throw new Pkcs11SupervisorError('CONFIG_INVALID', issues.map((i) => i.message).join('\n'), { issues });
    }
    for (const p of this.probes.values()) p.start();
    for (const w of this.watchers.values()) w.start();
  }

  /** A token was inserted or removed under the module: every slot on it looks at its token now. */
  private slotEvent(path: string, slotId: string): void {
    if (this.closing) return;
    this.log.info({ module: path, slotId }, 'slot event: a token was inserted or removed; the module\'s slots look at their tokens');
    this.events.emit('slotEvent', { module: path, slotId });
    for (const [slot, probe] of this.probes) if (this.loadPaths.get(slot.config.module) === path) void probe.tick();
  }

  get closed(): boolean {
    return this.closing !== null;
  }

  crashed(slot: Slot, worker: SlotWorker): void {
    if (this.closing) return;
    const error = worker.context.lastError;
    const decision = slot.restart.crashed(error, Date.now());
    if (decision.resetModule) this.resetModule(slot, error!.ckr!);
    const reason = error?.message ?? 'unknown';
    // Act after the current transition has settled.
    queueMicrotask(() => {
      if (!decision.restart) {
        this.log.error({ slot: slot.name, worker: worker.index, code: error?.code, reason }, 'restart budget spent or error permanent: slot worker failed');
        this.events.emit('slotFailed', { slot: slot.name, worker: worker.index, reason });
        worker.giveUp();
      } else {
        const { attempt, backoffMs } = decision;
        this.log.warn({ slot: slot.name, worker: worker.index, backoffMs, attempt, reason }, 'restarting slot worker');
        this.events.emit('restart', { slot: slot.name, worker: worker.index, attempt, backoffMs, reason });
        worker.restartAfter(backoffMs);
      }
    });
  }

  /** A call on a session found the module broken: reset it, as a crash with that CKR would. */
  moduleBroken(slot: Slot, ckr: string): void {
    if (!this.closing) this.resetModule(slot, ckr);
  }

  /**
   * The module is broken (a session could not even be opened): finalize and initialize it once,
   * for every worker of every slot on it, then let them all re-open. One incident, one reset.
   */
  private resetModule(origin: Slot, ckr: string, operator = false): void {
    const path = this.loadPaths.get(origin.config.module)!;
    const now = Date.now();
    if (!operator && now - (this.lastModuleReset.get(path) ?? 0) < 2_000) return;
    this.lastModuleReset.set(path, now);
    const onModule = [...this.slots.values()].filter((s) => this.loadPaths.get(s.config.module) === path);
    const open = closeModuleGate(path);
    void (async () => {
      // Quiesce: wait until no thread of the module is inside a call, then reset it.
      const quiet = await outOfModule(() => onModule.flatMap((s) => s.workers));
      const ok = quiet && reinitializeModule(path);
      open();
      this.log.warn({ module: path, ckr, ok, quiet }, ok ? 'module reset: finalized and initialized again; every session of it re-opens' : 'module reset skipped: a thread is still inside the module');
      this.events.emit('moduleReset', { module: path, ckr, ok });
      for (const s of onModule) for (const w of s.workers) if (w.state === 'open' || w.state === 'logged_in') w.sessionLost();
    })();
  }

  /**
   * Operator action: the slot's module is initialized again (its sessions, and those of other
   * slots on it, re-open and log in by themselves), its restart history is forgotten and failed
   * workers come back. A module can be left broken where no restart reaches it: one that lists
   * its tokens once per initialization, or that lost its objects when descriptors ran out.
   */
  reset(slot: Slot): void {
    const path = this.loadPaths.get(slot.config.module)!;
    const pending = this.pendingResets.get(path);
    if (pending) {
      pending.slots.add(slot);
      return;
    }
    // Each reset finalizes the module and re-opens every session on it: resets asked for in a
    // burst (a script in a loop) become one more at the end of the gap, or they starve every slot there.
    const wait = (this.lastOperatorReset.get(path) ?? -Infinity) + OPERATOR_RESET_GAP_MS - Date.now();
    if (wait <= 0) return this.resetNow(path, [slot]);
    const slots = new Set([slot]);
    const timer = setTimeout(() => {
      this.pendingResets.delete(path);
      if (!this.closing) this.resetNow(path, [...slots]);
    }, wait);
    timer.unref();
    this.pendingResets.set(path, { slots, timer });
  }

  private resetNow(path: string, slots: Slot[]): void {
    this.lastOperatorReset.set(path, Date.now());
    for (const s of slots) s.restart.reset();
    const ckr = slots.flatMap((s) => s.workers.map((w) => w.context.lastError?.ckr)).find((c) => c !== undefined && MODULE_BROKEN_CKRS.has(c));
    this.resetModule(slots[0]!, ckr ?? 'operator reset', true);
    for (const s of slots) for (const w of s.workers) w.reset();
  }

  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    for (const p of this.probes.values()) p.stop();
    for (const p of this.pendingResets.values()) clearTimeout(p.timer);
    // Before the modules are finalized: C_Finalize is what ends a slot-event thread's wait.
    for (const w of this.watchers.values()) w.close();
    const slots = [...this.slots.values()];
    const closed = new Pkcs11SupervisorError('CLOSED', 'the supervisor is closing');
    for (const s of slots) s.mailbox.close(closed);
    await Promise.all(slots.map((s) => s.mailbox.drained()));

    // Logout is token-wide: once per token is enough. A cloud slot's login is not ours to end,
    // nor one the supervisor found made by other code of the process.
    await Promise.all(
      slots.filter((s) => s.config.type !== 'cloud' && s.loggedInHere).map(async (s) => {
        const w = s.workers.find((x) => x.state === 'logged_in');
        if (w) await w.logOut(Date.now() + s.config.callTimeoutMs).catch((e: Error) => this.log.warn({ slot: s.name, err: e.message }, 'logout at close failed'));
      }),
    );

    // Close every session, then let the module owner finalize what this process no longer uses.
    await Promise.all(slots.flatMap((s) => s.workers.map((w) => w.close())));
    for (const s of slots) s.leaveDomain();
    for (const s of slots) releaseModule(this.loadPaths.get(s.config.module)!);
  }
}

/**
 * Other code of the process initialized the module first, with flags the supervisor cannot
 * know. Without CKF_OS_LOCKING_OK a module runs without locks, and calls from several threads
 * corrupt it (SoftHSM2: CKR_GENERAL_ERROR, then a crash): one session thread at most.
 */
function refuseSharedThreads(config: Config, module: string, path: string): void {
  const threads = Object.values(config.slots).filter((s) => s.module === module).reduce((n, s) => n + s.poolSize, 0);
  if (threads <= 1) return;
  const field = `modules.${module}`;
  const message = `${path} was initialized by other code in this process before the supervisor, maybe without CKF_OS_LOCKING_OK; ${threads} session threads would call it at once, which corrupts a module without locks. Use one slot with a pool of 1, let the supervisor initialize the module first, or set ${field}.applicationInitializesWithOsLocking if the application initializes it with CKF_OS_LOCKING_OK`;
  throw fieldRefused(field, message);
}
