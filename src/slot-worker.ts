/**
 * One slot worker: the slot machine actor plus the thread it drives, and the only code that
 * sends the actor events. The mailbox hands it one call (or one batch) at a time, as data
 * (`perform`), plus at most one batch in the thread's port behind it. It owns the recovery
 * rule: after a lost session or a dead thread, get back to a usable state and retry once.
 */
import { createActor, fromPromise, waitFor, type Actor } from 'xstate';
import { slotMachine, type Activity } from '../actors/slot-machine.js';
import { slotFailed, type SlotState } from './model/slot-state.js';
import { SESSION_LOST_CKRS, TRANSIENT_CKRS, handleAllocationFailure } from './model/ckr.js';
import { Pkcs11SupervisorError } from './model/errors.js';
import type { Secret } from './model/secret.js';
import type { CallContext, CallNeeds, SlotTask } from './slot-call.js';
import { SessionHost, ThreadDied, Wedged, unwrap } from './session-host.js';
import type { ContextLoginWorker } from './context-logins.js';
import { checkHealth } from './health-probe.js';
import type { SlotWorkerOptions } from './slot-worker-options.js';
import { USER_SESSION_STATES, type OpenReport, type SessionInfo, type SessionReport, type WorkerReply, type UserPinState, type WorkerTask } from './model/protocol.js';

/** Where start-up settles: open, logged in, or failed (a crash is restarted until the budget is spent). */
const FIRST_OUTCOME: ReadonlySet<SlotState> = new Set(['open', 'logged_in', 'failed', 'closed']);
const SETTLED: ReadonlySet<SlotState> = new Set(['uninitialized', 'open', 'logged_in', 'so_logged_in', 'failed', 'closed']);
const NOT_ACCEPTING: ReadonlySet<SlotState> = new Set(['crashed', 'restarting', 'failed', 'closing', 'closed']);

export class SlotWorker {
  readonly slot: string;
  readonly index: number;
  private readonly actor: Actor<typeof slotMachine>;
  busy = false;
  /** When the router last saw this worker become idle (its own count): it prefers the freshest. */
  freedAt = 0;
  /** Batches handed to the thread and not answered: a second one waits in the thread's port, so the thread never idles between them. */
  batchesInFlight = 0;
  /** Calls in those batches: the router pipelines to the worker with the fewest. */
  callsInFlight = 0;
  /** Messages the router has sent this worker's threads (a lone call or a batch) and the calls they carried, since start. */
  readonly handed = { messages: 0, calls: 0 };
  state: SlotState = 'uninitialized';
  /** The user PIN's retry flags as the token last reported them (a login's first look, the health probe); null until one. */
  userPin: UserPinState | null = null;
  /** When the last call ended (or the login did): the machine's idle logout counts from here. */
  private readonly activity: Activity = { lastCallAt: 0, lastSoCallAt: 0 };
  private readonly host: SessionHost;
  /** What a context-specific sign borrows from this worker (context-logins.ts). */
  private readonly contextWorker: ContextLoginWorker;

  constructor(private readonly opts: SlotWorkerOptions) {
    this.slot = opts.slot;
    this.index = opts.index;
    this.host = new SessionHost(
      opts.slot,
      opts.config,
      opts.modulePath,
      (reason) => this.actor.send({ type: 'CRASHED', reason }),
      () => this.state === 'failed' || this.state === 'closed',
      (error) => {
        const handle = handleAllocationFailure(error);
        if (handle) opts.hooks.handleAllocationFailed(this, handle, error);
      },
      () => opts.domain().gate,
    );
    const machine = slotMachine.provide({
      actors: {
        openSession: fromPromise<OpenReport, void>(() => this.openSession()),
        login: fromPromise<SessionReport, { pin: Secret }>(async ({ input }) =>
          unwrap(await this.runTask<SessionReport>({ op: 'login', pin: input.pin.reveal(), userType: 'user' }, Date.now() + opts.config.callTimeoutMs), this.slot),
        ),
        logout: fromPromise<SessionReport, void>(() => opts.domain().quiet(async () => unwrap(await this.runTask<SessionReport>({ op: 'logout' }, Date.now() + opts.config.callTimeoutMs), this.slot))),
        closeSession: fromPromise<null, void>(() => this.host.close()),
      },
      actions: { abandonThread: () => this.host.abandon() },
    });
    this.contextWorker = {
      slot: opts.slot,
      pins: opts.pins,
      tokenLabel: () => this.context.session?.tokenLabel,
      userPin: () => this.userPin,
      runTask: (task, deadline) => this.runTask(task, deadline),
      attempted: (origin, outcome) => opts.hooks.loginAttempted(this, origin, outcome, 'context'),
    };
    this.actor = createActor(machine, { input: { slot: opts.slot, worker: opts.index, timeouts: opts.config, activity: this.activity } });
    this.actor.subscribe((snap) => {
      const to = snap.value as SlotState;
      if (to === this.state) return;
      const from = this.state;
      this.state = to;
      if (to === 'failed' || to === 'closed') this.host.closeOrphans(); // no next session will come
      opts.hooks.stateChanged(this, from, to);
    });
    this.actor.start();
  }

  /** A task of this worker is inside its thread (and so maybe inside the module). */
  get threadBusy(): boolean {
    return this.host.busy;
  }

  /**
   * Whether the thread can take one more batch behind the one it runs: logged in, and nothing
   * but that batch posted to it (it may not be posted yet), so the next waits in the thread's
   * port. One deep only: what waits there is lost with the thread if it dies (and retried).
   */
  get canPipeline(): boolean {
    return this.batchesInFlight === 1 && this.state === 'logged_in' && this.host.canTakeAnother;
  }

  get accepting(): boolean {
    return !NOT_ACCEPTING.has(this.state);
  }

  get context() {
    return this.actor.getSnapshot().context;
  }

  start(): void {
    if (this.state === 'uninitialized') this.actor.send({ type: 'START' });
  }

  /** Resolves once the worker has opened, logged in, failed or closed. */
  async firstOutcome(): Promise<void> {
    await waitFor(this.actor, (s) => FIRST_OUTCOME.has(s.value as SlotState));
  }

  // What the supervisor, the slot and the probe tell the machine.
  restartAfter(backoffMs: number): void {
    this.actor.send({ type: 'RESTART', backoffMs });
  }
  giveUp(): void {
    this.actor.send({ type: 'GIVE_UP' });
  }
  reset(): void {
    if (this.state === 'failed') this.actor.send({ type: 'RESET' });
  }
  sessionLost(): void {
    this.actor.send({ type: 'SESSION_LOST' });
  }
  /** A reload changed the slot's idle timeouts (in its config, in place): the idle timer is set again. */
  timeoutsChanged(): void {
    this.actor.send({ type: 'TIMEOUTS_CHANGED' });
  }
  /** The token's login changed through another session of this process. */
  followToken(loggedIn: boolean): void {
    this.actor.send({ type: loggedIn ? 'TOKEN_LOGGED_IN' : 'TOKEN_LOGGED_OUT' });
  }

  /** Runs a call the mailbox handed to this worker. */
  async perform(task: SlotTask, call: CallContext): Promise<unknown> {
    switch (task.op) {
      case 'userLogin': // through ready(): a session lost meanwhile (a module reset) is opened again
        return this.ready({ deadline: call.deadline, pin: call.pin, needsLogin: true, explicit: true });
      case 'soLogin':
        if (!call.pin) throw new Pkcs11SupervisorError('PIN_REQUIRED', 'a Security Officer login needs the SO PIN in the call', { slot: this.slot });
        return this.soLogIn(call.pin, call.deadline);
      case 'tokenLogout':
        return this.logOut(call.deadline);
      case 'asSecurityOfficer':
        return this.asSecurityOfficer(task.task, call.deadline);
      case 'healthCheck':
        return checkHealth(this, call.deadline);
      default:
        return this.execute(task, call);
    }
  }

  private async asSecurityOfficer(task: WorkerTask, deadline: number): Promise<unknown> {
    if (this.state !== 'so_logged_in') {
      throw new Pkcs11SupervisorError('SO_LOGIN_REQUIRED', `slot "${this.slot}" is not logged in as its Security Officer: login(slot, soPin, { userType: 'so' }) first`, { slot: this.slot });
    }
    const reply = await this.runTask(task, deadline);
    this.activity.lastSoCallAt = Date.now();
    return unwrap(reply, this.slot);
  }

  private async openSession(): Promise<OpenReport> {
    const report = await this.host.open();
    this.opts.hooks.opened(this, report);
    return report;
  }

  /** Runs a task on this worker's thread (see SessionHost.run). */
  runTask<T>(task: WorkerTask, deadline: number): Promise<WorkerReply<T>> {
    return this.host.run<T>(task, deadline);
  }

  /**
   * Runs a call's task: waits until the session is usable (logging in through the PIN chain
   * if the call needs it), and retries once after a lost session or a dead thread.
   */
  async execute<T>(task: WorkerTask, call: CallContext, firstAttempt = 0): Promise<WorkerReply<T>> {
    for (let attempt = firstAttempt; ; attempt++) {
      const logouts = this.opts.domain().logouts; // one made meanwhile (an operator's, in a loop) does not use up the retry
      await this.ready(call);
      if (call.settled) throw new Pkcs11SupervisorError('TIMEOUT', 'the call ended before it reached the token', { slot: this.slot });
      let reply: WorkerReply<T>;
      try {
        reply = await this.opts.contextLogins.run<T>(task, call, this.contextWorker);
      } catch (e) {
        if (attempt === 0 && e instanceof ThreadDied) continue;
        if (e instanceof Wedged || e instanceof ThreadDied) {
          throw new Pkcs11SupervisorError('WORKER_CRASHED', `slot "${this.slot}" worker ${this.index}: ${e.message || 'worker wedged'}`, { slot: this.slot });
        }
        throw e;
      }
      this.noteModuleHealth(reply);
      if (!reply.ok && (attempt === 0 || (this.opts.domain().logouts !== logouts && attempt < 5)) && reply.error.ckr && SESSION_LOST_CKRS.has(reply.error.ckr)) {
        this.sessionLost();
        continue;
      }
      if (!reply.ok && attempt === 0 && reply.error.ckr && TRANSIENT_CKRS.has(reply.error.ckr)) continue;
      this.activity.lastCallAt = Date.now();
      return reply;
    }
  }

  /**
   * A call that got CKR_GENERAL_ERROR from a module that then could not say what its token is
   * found the module itself broken: the supervisor resets it, rate-limited. One that still
   * answered was refused for its input, and a caller must not be able to reset a module at will.
   */
  private noteModuleHealth(reply: WorkerReply<unknown>): void {
    if (!reply.ok && reply.error.ckr === 'CKR_GENERAL_ERROR' && !reply.error.moduleAnswers) this.opts.moduleBroken(reply.error.ckr);
  }

  /**
   * Runs several queued calls in one message to the thread (the hop is paid once), one after
   * another on the session, so order and the one-operation rule hold. Each call keeps its own
   * reply. Calls after a lost session, and failed ones worth a retry, go through execute().
   */
  async executeBatch<T>(tasks: WorkerTask[], calls: CallContext[], claims: Int32Array): Promise<WorkerReply<T>[]> {
    // A plain object, no closure over `calls`: see CallNeeds.
    const ctx: CallNeeds = { deadline: Math.max(...calls.map((c) => c.deadline)), pin: undefined, needsLogin: calls.some((c) => c.needsLogin) };
    await this.ready(ctx);
    // Every call, settled or not, keeps its place in `claims` and in the replies; settled ones were cancelled there already.
    const results: WorkerReply<T>[] = new Array(calls.length);
    let replies: (WorkerReply<T> | null)[] | null = null;
    try {
      const batch = await this.runTask<(WorkerReply<T> | null)[]>({ op: 'batch', tasks, claims }, ctx.deadline);
      if (batch.ok) replies = batch.value;
    } catch (e) {
      if (!(e instanceof ThreadDied)) throw e;
    }
    let sessionLost = false;
    for (let i = 0; i < calls.length; i++) {
      const reply = replies?.[i] ?? null;
      if (reply) this.noteModuleHealth(reply);
      const lost = reply && !reply.ok && reply.error.ckr !== undefined && SESSION_LOST_CKRS.has(reply.error.ckr);
      const transient = reply && !reply.ok && reply.error.ckr !== undefined && TRANSIENT_CKRS.has(reply.error.ckr);
      const wantsPin = reply && !reply.ok && reply.error.contextLogin !== undefined;
      if (reply && !lost && !transient && !wantsPin) {
        results[i] = reply;
        continue;
      }
      // Not run because it was cancelled: its caller has its answer already.
      if (calls[i]!.settled) continue;
      if (lost && !sessionLost) {
        sessionLost = true;
        this.sessionLost();
      }
      // Not run, or worth its one retry: the single-call path, counting a failed run as the first attempt.
      results[i] = await this.execute<T>(tasks[i]!, calls[i]!, reply && !wantsPin ? 1 : 0);
    }
    this.activity.lastCallAt = Date.now();
    return results;
  }

  /** Waits for a state a call can run in; logs in when the call needs it. */
  async ready(call: CallNeeds): Promise<void> {
    for (let round = 0; round < 3; round++) {
      const state = await this.liveState(call.deadline);
      if (call.needsLogin && this.opts.soActive()) {
        throw new Pkcs11SupervisorError('SO_SESSION_ACTIVE', `slot "${this.slot}" is logged in as its Security Officer; user calls resume after logout`, { slot: this.slot });
      }
      if (state === 'logged_in' || ((state === 'open' || state === 'so_logged_in') && !call.needsLogin)) return;
      try {
        await this.logIn(call.pin, call.deadline, round === 0 ? 'login' : 'relogin', call.explicit === true);
      } catch (e) {
        // The session went (a module reset, a token pulled) while logging in: open a new one.
        if (!(e instanceof Pkcs11SupervisorError && e.ckr && SESSION_LOST_CKRS.has(e.ckr))) throw e;
        this.sessionLost();
      }
    }
    throw new Pkcs11SupervisorError('PIN_REQUIRED', `slot "${this.slot}" could not reach a logged-in session`, { slot: this.slot });
  }

  /** A settled state a call can go on from: a failed or closed worker ends the call here. */
  private async liveState(deadline: number): Promise<SlotState> {
    const state = await this.settledState(deadline);
    if (state === 'failed') throw slotFailed(this.slot, this.context.lastError);
    if (state === 'closed') throw new Pkcs11SupervisorError('CLOSED', 'the supervisor is closed', { slot: this.slot });
    return state;
  }

  private async settledState(deadline: number): Promise<SlotState> {
    if (this.state === 'uninitialized') this.start();
    let state = this.state;
    if (!SETTLED.has(state) && !this.opts.restart.failsFast(state, this.context.lastError)) {
      const timeout = deadline - Date.now();
      if (timeout <= 0) throw new Pkcs11SupervisorError('TIMEOUT', `slot "${this.slot}" was not ready before the deadline`, { slot: this.slot });
      try {
        const snap = await waitFor(this.actor, (s) => SETTLED.has(s.value as SlotState) || this.opts.restart.failsFast(s.value as SlotState, s.context.lastError), { timeout });
        state = snap.value as SlotState;
      } catch {
        throw new Pkcs11SupervisorError('TIMEOUT', `slot "${this.slot}" was not ready before the deadline (state ${this.state})`, { slot: this.slot });
      }
    }
    if (this.opts.restart.failsFast(state, this.context.lastError)) {
      throw new Pkcs11SupervisorError('TOKEN_NOT_FOUND', `slot "${this.slot}": ${this.context.lastError!.message}`, { slot: this.slot });
    }
    return state;
  }

  /**
   * Logs the token in through this worker, following the token first: if another session
   * of this application already logged it in, no PIN is needed or sent.
   */
  async logIn(perCall: Secret | undefined, deadline: number, reason: 'login' | 'relogin', explicit: boolean): Promise<void> {
    if (explicit) {
      // An explicit login may find a lazy worker not opened yet, or one restarting.
      await this.liveState(deadline);
    }
    await this.opts.domain().lock(async () => {
      const info = unwrap(await this.runTask<SessionInfo>({ op: 'sessionInfo' }, deadline), this.slot);
      this.userPin = info.userPin;
      if (USER_SESSION_STATES.has(info.state)) {
        if (this.state === 'open') this.actor.send({ type: 'TOKEN_LOGGED_IN' });
        return;
      }
      const { pins } = this.opts;
      const { pin, origin } = await pins.resolve(perCall, { slot: this.slot, tokenLabel: info.tokenLabel, reason }, explicit, info.userPin);
      this.actor.send({ type: 'LOGIN', pin });
      const snap = await waitFor(this.actor, (s) => s.value !== 'logging_in');
      if (snap.value === 'logged_in') {
        pins.accepted(pin);
        this.opts.hooks.loginAttempted(this, origin, 'ok');
        return;
      }
      const err = snap.context.lastError;
      this.opts.hooks.loginAttempted(this, origin, err?.code ?? 'UNKNOWN');
      if (err?.ckr === 'CKR_GENERAL_ERROR') this.opts.moduleBroken(err.ckr);
      if (err?.code === 'PIN_INCORRECT') pins.rejectedByToken(pin);
      if (snap.value === 'open' && err) throw new Pkcs11SupervisorError(err.code, err.message, { slot: this.slot, ckr: err.ckr });
      // The session was lost or the thread died during login: the caller's loop tries again.
    });
  }

  /** Logs the token in as its Security Officer, ending the user login first (a logout: in the token's quiet, inside the login lock). */
  async soLogIn(pin: Secret, deadline: number): Promise<void> {
    await this.liveState(deadline);
    await this.opts.domain().lock(() => this.opts.domain().quiet(async () => {
      const reply = await this.runTask<SessionReport>({ op: 'login', pin: pin.reveal(), userType: 'so' }, deadline);
      this.opts.hooks.loginAttempted(this, 'call', reply.ok ? 'ok' : reply.error.code, 'so');
      const report = unwrap(reply, this.slot);
      if (report.state !== 'RW_SO') throw new Pkcs11SupervisorError('PKCS11_ERROR', `the token reports ${report.state} after an SO login`, { slot: this.slot });
      this.actor.send({ type: 'SO_LOGGED_IN' });
    }));
  }

  async logOut(deadline: number): Promise<void> {
    if (this.state !== 'logged_in' && this.state !== 'so_logged_in') {
      // The token may still be logged in through a sibling's session: log it out all the same.
      const state = await this.settledState(deadline);
      if (state !== 'open' && state !== 'logged_in') return;
      await this.opts.domain().quiet(async () => unwrap(await this.runTask({ op: 'logout' }, deadline), this.slot));
      return;
    }
    this.actor.send({ type: 'LOGOUT' });
    await waitFor(this.actor, (s) => s.value !== 'logging_out' && s.value !== 'logged_in' && s.value !== 'so_logged_in');
  }

  async close(): Promise<void> {
    this.actor.send({ type: 'CLOSE' });
    await waitFor(this.actor, (s) => s.value === 'closed');
  }
}
