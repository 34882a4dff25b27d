/**
 * A configured slot: its workers (one for a token, a pool for an HSM), its mailbox and its
 * PIN chain. Login is token-wide, so the slot keeps its workers' actors following the token:
 * a login or logout through one worker is told to the others.
 */
import type { Logger } from 'pino';
import { SLOT_STATES, slotFailed, type SlotState } from './model/slot-state.js';
import type { SlotConfig } from './config-schema.js';
import { Pkcs11SupervisorError } from './model/errors.js';
import type { SupervisorEmitter } from './events.js';
import { PinChain, type PinCallback } from './pin-chain.js';
import { Mailbox } from './router.js';
import type { CallSpec, Delivered } from './slot-call.js';
import { SlotWorker } from './slot-worker.js';
import type { RestartPolicy } from './restart-policy.js';
import { TokenDomain, tokenDomain } from './token-domain.js';
import type { IvRegistry } from './iv-registry.js';
import type { KeyType } from './model/mechanisms.js';
import type { AnyMechanismName } from './model/crypto-mechanisms.js';
import type { OpenReport } from './model/protocol.js';
import type { TokenEvents } from './model/slot-events.js';
import type { SlotEventWatcher } from './slot-event-watcher.js';
import { ContextLogins } from './context-logins.js';

export interface CrashHandler {
  crashed(slot: Slot, worker: SlotWorker): void;
  moduleBroken(slot: Slot, ckr: string): void;
}

export class Slot {
  readonly workers: SlotWorker[];
  readonly mailbox: Mailbox;
  readonly pins: PinChain;
  /** For the checks before queueing, from the last open: the mechanisms the token can do (a set: looked up per call) and the configured keys' types. */
  readonly capabilities = { mechanisms: new Set<AnyMechanismName>(), keyTypes: new Map<string, KeyType>() };
  /** The token's own abilities and limits as reported at the last open; null before one. */
  token: Pick<OpenReport, 'mechanisms' | 'keyGen' | 'maxSessions' | 'maxRwSessions' | 'pinLength' | 'device'> | null = null;
  /** Keys found to ask for the PIN on every use (CKA_ALWAYS_AUTHENTICATE). */
  private readonly contextLogins = new ContextLogins();
  /** The module's slot-event thread, when its module has one. */
  eventWatcher: SlotEventWatcher | null = null;
  /** The slot's token's domain (token-domain.ts): a private one until a session names the token. */
  private domain = new TokenDomain();

  constructor(
    readonly name: string,
    readonly config: SlotConfig,
    modulePath: string,
    pinCallback: PinCallback | undefined,
    private readonly events: SupervisorEmitter,
    private readonly log: Logger,
    private readonly supervisor: CrashHandler,
    readonly restart: RestartPolicy,
  ) {
    this.pins = new PinChain(name, config.pin, pinCallback, () => this.domain);
    this.domain.members.add(this);
    this.workers = Array.from(
      { length: config.poolSize },
      (_, index) =>
        new SlotWorker({
          slot: name,
          index,
          config,
          modulePath,
          pins: this.pins,
          soActive: () => this.soActive,
          domain: () => this.domain,
          restart,
          moduleBroken: (ckr) => this.supervisor.moduleBroken(this, ckr),
          contextLogins: this.contextLogins,
          hooks: {
            opened: (_w, report) => {
              this.joinDomain(tokenDomain(modulePath, report.tokenSerial, report.tokenLabel));
              this.capabilities.mechanisms = new Set(report.mechanisms);
              this.capabilities.keyTypes = new Map(Object.entries(report.keyTypes));
              const { mechanisms, keyGen, maxSessions, maxRwSessions, pinLength, device } = report;
              this.token = { mechanisms, keyGen, maxSessions, maxRwSessions, pinLength, device };
            },
            stateChanged: (w, from, to) => this.stateChanged(w, from, to),
            handleAllocationFailed: (w, handle, error) => {
              this.events.emit('handleAllocationFailure', { slot: name, worker: w.index, handle, ckr: error.ckr!, fn: error.fn ?? null });
              this.log.warn({ slot: name, worker: w.index, handle, ckr: error.ckr, fn: error.fn }, 'the module could not allocate a handle');
            },
            loginAttempted: (w, origin, outcome, userType = 'user') => {
              this.events.emit('login', { slot: name, worker: w.index, origin, outcome, userType });
              this.log[outcome === 'ok' ? 'info' : 'warn']({ slot: name, worker: w.index, pinSource: origin, outcome, userType }, 'login');
            },
          },
        }),
    );
    this.mailbox = new Mailbox(name, this.workers, () => config.queueLimit, () => this.failure(), this.contextLogins);
  }

  /** The AES-GCM IVs used with the keys of this slot's token, through any slot on it. */
  get gcmIvs(): IvRegistry {
    return this.domain.gcmIvs;
  }

  /** The token is logged in as its Security Officer, through this slot or another on the same token (one user type at a time). */
  get soActive(): boolean {
    return this.domain.soHolder !== null;
  }

  /** One of this slot's workers holds the Security Officer's login. */
  get holdsSo(): boolean {
    return this.domain.soHolder === this;
  }

  /** The token is logged in through a C_Login of this supervisor's (not only found logged in). */
  get loggedInHere(): boolean {
    return this.domain.loggedInHere;
  }

  /** At close: the token's domain forgets this slot (another supervisor of the process may use the token next). */
  leaveDomain(): void {
    this.domain.members.delete(this);
    if (this.domain.soHolder === this) this.domain.soHolder = null;
  }

  private joinDomain(domain: TokenDomain): void {
    if (domain === this.domain) return;
    this.domain.members.delete(this);
    domain.absorb(this.domain);
    domain.members.add(this);
    this.domain = domain;
  }

  /** Opens every worker's session and, where a PIN source is configured, logs in. Lazy slots wait for their first call. */
  async start(): Promise<void> {
    if (this.config.lazy) return;
    for (const w of this.workers) w.start();
    await Promise.all(this.workers.map((w) => w.firstOutcome()));
    await this.userLogin();
  }

  /** Logs in through the configured PIN source, at start and after the Security Officer is done. */
  async userLogin(): Promise<void> {
    const first = this.workers.find((w) => w.state === 'open');
    if (!first || !this.pins.hasAutomaticSource) return;
    try {
      await first.logIn(undefined, Date.now() + this.config.callTimeoutMs, 'login', false);
    } catch (e) {
      this.log.warn({ slot: this.name, code: (e as Pkcs11SupervisorError).code }, 'start-up login failed; calls will ask the PIN chain again');
    }
  }

  call<T>(spec: CallSpec): Promise<Delivered<T>> {
    return this.mailbox.submit(spec);
  }

  /** The slot fails when every worker has failed; until then the healthy ones serve. */
  failure(): Pkcs11SupervisorError | null {
    if (!this.workers.every((w) => w.state === 'failed')) return null;
    return slotFailed(this.name, this.workers[0]!.context.lastError);
  }

  private stateChanged(worker: SlotWorker, from: SlotState, to: SlotState): void {
    const error = worker.context.lastError;
    this.events.emit('stateChange', { slot: this.name, worker: worker.index, from, to, error });
    const level = to === 'crashed' || to === 'failed' ? 'warn' : 'info';
    this.log[level]({ slot: this.name, worker: worker.index, from, to, ...(error && (to === 'crashed' || to === 'failed') ? { code: error.code, ckr: error.ckr, reason: error.message } : {}) }, 'slot state');

    if (to === 'crashed') this.supervisor.crashed(this, worker);
    if (to === 'failed') {
      const failure = this.failure();
      if (failure) this.mailbox.failQueued(failure);
    }
    // Also from open: a worker that found the token logged in already (through another slot on
    // the same token) logs in without a C_Login, and its siblings are just as logged in.
    if ((from === 'logging_in' || from === 'open') && to === 'logged_in') this.tellSiblings(worker, 'open', 'TOKEN_LOGGED_IN');
    if (from === 'logging_in' && to === 'logged_in' && worker.context.session?.loggedInHere) this.domain.loggedInHere = true;
    if (to === 'open' && (from === 'logging_out' || from === 'logged_in')) this.domain.loggedInHere = false;
    if (to === 'so_logged_in') {
      this.domain.soHolder = this;
      this.tellSiblings(worker, 'logged_in', 'TOKEN_LOGGED_OUT');
    }
    if (from === 'so_logged_in' && this.domain.soHolder === this && !this.workers.some((w) => w.state === 'so_logged_in')) this.domain.soHolder = null;
    // Opened while a sibling logged the token in: its session report predates the login.
    if (from === 'opening' && to === 'open' && [...this.domain.workers()].some((w) => w !== worker && w.state === 'logged_in')) worker.followToken(true);
    if (from === 'logging_out' && to === 'open') {
      this.events.emit('logout', { slot: this.name, worker: worker.index, by: worker.context.loggedOutBy ?? 'request' });
      this.tellSiblings(worker, 'logged_in', 'TOKEN_LOGGED_OUT');
      if (worker.context.loggedOutBy === 'idle' && this.config.reauthentication === 'fail') this.pins.requireExplicitPin();
    }
    this.mailbox.pump();
  }

  private tellSiblings(origin: SlotWorker, inState: SlotState, type: 'TOKEN_LOGGED_IN' | 'TOKEN_LOGGED_OUT'): void {
    // Login is the token's: every worker of every slot on it follows.
    for (const w of this.domain.workers()) if (w !== origin && w.state === inState) w.followToken(type === 'TOKEN_LOGGED_IN');
  }

  status() {
    return {
      type: this.config.type,
      state: this.summaryState(),
      queued: this.mailbox.depth,
      running: this.mailbox.running,
      /** The user PIN's retry flags as the token last reported them; null before the first look. */
      userPin: this.workers.find((w) => w.userPin !== null)?.userPin ?? null,
      tokenEvents: this.tokenEvents,
      token: this.token,
      workers: this.workers.map((w) => {
        const ctx = w.context;
        return {
          index: w.index,
          state: w.state,
          /** Running a call or a batch now. */
          busy: w.busy,
          /** Batches handed to the thread and not answered: 2 while the next one waits behind the running one. */
          batchesInThread: w.batchesInFlight,
          /** Messages handed to its threads and the calls in them, since start: calls / messages is the batch size seen. */
          handed: { ...w.handed },
          session: ctx.session ? { handle: ctx.session.handle, state: ctx.session.state, tokenLabel: ctx.session.tokenLabel, tokenSerial: ctx.session.tokenSerial } : null,
          lastError: ctx.lastError,
        };
      }),
    };
  }

  /** How a token inserted or removed is noticed. */
  get tokenEvents(): TokenEvents {
    if (this.eventWatcher?.active) return 'events';
    return this.config.probeIntervalMs > 0 ? 'polling' : 'none';
  }

  /** The best state any worker is in: a pool with one healthy worker still serves. */
  summaryState(): SlotState {
    for (const s of SLOT_STATES) if (this.workers.some((w) => w.state === s)) return s;
    return 'uninitialized';
  }
}
