/**
 * One slot worker: the slot machine actor plus the thread it drives. It runs one call at a
 * time (the router guarantees it) and owns the recovery rule: after a lost session or a
 * dead thread, get back to a usable state and retry the call once.
 */
import { createActor, fromPromise, waitFor, type Actor } from 'xstate';
import { slotMachine, type SlotState } from '../actors/slot-machine.js';
import { SESSION_LOST_CKRS, TRANSIENT_CKRS } from './model/ckr.js';
import { Pkcs11SupervisorError } from './model/errors.js';
import type { PinChain, PinOrigin } from './pin-chain.js';
import type { Secret } from './model/secret.js';
import { SessionThread, ThreadDied } from '../workers/handover/session-thread.js';
import { closeOrphanSession, moduleGate, threadAbandoned } from './module-registry.js';
import type { SlotConfig } from './config-schema.js';
import { USER_SESSION_STATES, type OpenReport, type SessionInfo, type SessionReport, type WorkerReply, type WorkerTask } from './model/protocol.js';

/** What a worker needs to know about a call; the router's Call satisfies it. */
export interface CallContext {
  readonly deadline: number;
  readonly pin: Secret | undefined;
  readonly needsLogin: boolean;
  /** Set once the caller has an answer; a call not yet started is then dropped. */
  readonly settled: boolean;
}

/**
 * What a call needs before it can run. Kept to plain data: an object with a getter closing over a
 * batch's calls measurably kept those calls alive through young-generation GCs (promoted, then
 * freed only by a full GC), which made garbage collection the main thread's largest cost.
 */
export type CallNeeds = Pick<CallContext, 'deadline' | 'pin' | 'needsLogin'>;

export interface SlotWorkerHooks {
  opened(worker: SlotWorker, report: OpenReport): void;
  stateChanged(worker: SlotWorker, from: SlotState, to: SlotState): void;
  loginAttempted(worker: SlotWorker, origin: PinOrigin, outcome: 'ok' | string, userType?: 'user' | 'so'): void;
}

export interface SlotWorkerOptions {
  slot: string;
  index: number;
  config: SlotConfig;
  modulePath: string;
  pins: PinChain;
  /** The token is logged in as its Security Officer through one of the slot's workers. */
  soActive: () => boolean;
  /** Serializes logins across a slot's workers: login is token-wide. */
  loginLock: <T>(fn: () => Promise<T>) => Promise<T>;
  hooks: SlotWorkerHooks;
}

class Wedged extends Error {}

const SETTLED: ReadonlySet<SlotState> = new Set(['uninitialized', 'open', 'logged_in', 'so_logged_in', 'failed', 'closed']);
const NOT_ACCEPTING: ReadonlySet<SlotState> = new Set(['crashed', 'restarting', 'failed', 'closing', 'closed']);

function unwrap<T>(reply: WorkerReply<T>, slot: string): T {
  if (reply.ok) return reply.value;
  throw new Pkcs11SupervisorError(reply.error.code, reply.error.message, { slot, ckr: reply.error.ckr });
}

export class SlotWorker {
  readonly slot: string;
  readonly index: number;
  readonly actor: Actor<typeof slotMachine>;
  busy = false;
  /** When the router last saw this worker become idle (its own count): it prefers the freshest. */
  freedAt = 0;
  /** Batches handed to the thread and not answered: a second one waits in the thread's port, so the thread never idles between them. */
  batchesInFlight = 0;
  /** Calls in those batches: the router pipelines to the worker with the fewest. */
  callsInFlight = 0;
  /** Sessions of abandoned threads, closed once a new session is open (see abandonThread). */
  private readonly orphans: string[] = [];
  state: SlotState = 'uninitialized';
  /** When the last call ended (or the login did): the idle logout counts from here. */
  private lastCallAt = 0;
  private thread: SessionThread | null = null;
  /** The session this worker's thread holds, kept outside the machine so a crash can still close it. */
  private sessionHandle: string | null = null;

  constructor(private readonly opts: SlotWorkerOptions) {
    this.slot = opts.slot;
    this.index = opts.index;
    const machine = slotMachine.provide({
      actors: {
        openSession: fromPromise<OpenReport, void>(() => this.openSession()),
        login: fromPromise<SessionReport, { pin: Secret }>(async ({ input }) =>
          unwrap(await this.runTask<SessionReport>({ op: 'login', pin: input.pin.reveal(), userType: 'user' }, Date.now() + opts.config.callTimeoutMs), this.slot),
        ),
        logout: fromPromise<SessionReport, void>(async () => unwrap(await this.runTask<SessionReport>({ op: 'logout' }, Date.now() + opts.config.callTimeoutMs), this.slot)),
        closeSession: fromPromise<null, void>(() => this.closeSession()),
      },
      actions: { abandonThread: () => this.abandonThread() },
      guards: { quietLongEnough: ({ context }) => context.idleTimeoutMs > 0 && Date.now() - this.lastCallAt >= context.idleTimeoutMs },
      delays: { idleTimeout: ({ context }) => (context.idleTimeoutMs > 0 ? Math.max(1, this.lastCallAt + context.idleTimeoutMs - Date.now()) : 2 ** 31 - 1) },
    });
    this.actor = createActor(machine, { input: { slot: opts.slot, worker: opts.index, idleTimeoutMs: opts.config.idleTimeoutMs } });
    this.actor.subscribe((snap) => {
      const to = snap.value as SlotState;
      if (to === this.state) return;
      const from = this.state;
      this.state = to;
      if (to === 'logged_in') this.lastCallAt = Date.now(); // the idle clock starts at login
      if (to === 'failed' || to === 'closed') this.closeOrphans(); // no next session will come
      opts.hooks.stateChanged(this, from, to);
    });
    this.actor.start();
  }

  /** A task of this worker is inside its thread (and so maybe inside the module). */
  get threadBusy(): boolean {
    return (this.thread?.tasks ?? 0) > 0;
  }

  /**
   * Whether the thread can take one more batch behind the one it runs: logged in, and nothing
   * but that batch posted to it (it may not be posted yet), so the next waits in the thread's
   * port. One deep only: what waits there is lost with the thread if it dies (and retried).
   */
  get canPipeline(): boolean {
    return this.batchesInFlight === 1 && this.state === 'logged_in' && this.thread?.alive === true && this.thread.tasks <= 1;
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

  private liveThread(): SessionThread {
    if (!this.thread?.alive) throw new ThreadDied('session worker thread is gone');
    return this.thread;
  }

  /** Reports a dead thread, once and only for the generation that is current: a late report must not crash its successor. */
  private threadDied(thread: SessionThread, reason: string): void {
    if (this.thread === thread) this.actor.send({ type: 'CRASHED', reason });
  }

  private async openSession(): Promise<OpenReport> {
    if (!this.thread?.alive) {
      const thread: SessionThread = new SessionThread((reason) => this.threadDied(thread, reason.message), this.opts.config.idleSpinMs);
      this.thread = thread;
    }
    await moduleGate(this.opts.modulePath);
    const { modulePath, config } = this.opts;
    const keys = Object.fromEntries(Object.entries(config.keys).map(([ref, k]) => [ref, { label: k.label, id: k.id?.toLowerCase() }]));
    const report = unwrap(await this.thread.run<OpenReport>({ op: 'open', modulePath, token: config.token, readWrite: !config.readOnly, keys }), this.slot);
    this.sessionHandle = report.handle;
    this.closeOrphans();
    this.checkSessionLimit(report);
    this.opts.hooks.opened(this, report);
    return report;
  }

  /** A pool larger than the token allows would fail at random later (CKR_SESSION_COUNT): refuse it now. */
  private checkSessionLimit(report: OpenReport): void {
    const { poolSize, readOnly } = this.opts.config;
    const limits = readOnly ? [report.maxSessions] : [report.maxSessions, report.maxRwSessions];
    const limit = Math.min(...limits.map((l) => l ?? Infinity));
    if (poolSize <= limit) return;
    const path = `slots.${this.slot}.poolSize`;
    const message = `${poolSize} workers need ${poolSize} ${readOnly ? '' : 'R/W '}sessions, but token "${report.tokenLabel}" allows at most ${limit}`;
    throw new Pkcs11SupervisorError('CONFIG_INVALID', `${path}: ${message}`, { slot: this.slot, issues: [{ path, message }] });
  }

  private async closeSession(): Promise<null> {
    const thread = this.thread;
    if (!thread?.alive) return null;
    try {
      await thread.run({ op: 'close' });
      this.sessionHandle = null;
    } finally {
      await thread.stop().catch(() => undefined);
    }
    return null;
  }

  /**
   * Lets a crashed or wedged thread go. Its orphaned session is closed once the thread is
   * really gone and this worker's next session is open: closing the application's last session
   * on a token logs the token out, and the replacement would need a C_Login for nothing.
   */
  private abandonThread(): void {
    const orphan = this.sessionHandle;
    const thread = this.thread;
    this.thread = null;
    this.sessionHandle = null;
    if (!thread) return;
    const gone = thread.tasks > 0 ? threadAbandoned(this.opts.modulePath) : () => undefined;
    thread.abandon(() => {
      gone();
      if (!orphan) return;
      this.orphans.push(orphan);
      if (this.sessionHandle || this.state === 'failed' || this.state === 'closed') this.closeOrphans();
    });
  }

  private closeOrphans(): void {
    for (const handle of this.orphans.splice(0)) closeOrphanSession(this.opts.modulePath, handle);
  }

  /**
   * Runs a task on this worker's thread. Past the deadline plus grace the thread is declared
   * wedged: it is abandoned, which fails the pending run, and this call reports Wedged.
   */
  async runTask<T>(task: WorkerTask, deadline: number): Promise<WorkerReply<T>> {
    const gate = moduleGate(this.opts.modulePath);
    if (gate) await gate; // the module is being reset: nothing enters it until it is back
    const thread = this.liveThread();
    let wedged = false;
    const timer = setTimeout(() => {
      wedged = true;
      this.threadDied(thread, `a ${task.op} call ran ${this.opts.config.hungCallGraceMs} ms past its deadline; the worker is wedged and is replaced`);
    }, Math.max(0, deadline + this.opts.config.hungCallGraceMs - Date.now()));
    try {
      return await thread.run<T>(task);
    } catch (e) {
      if (wedged) throw new Wedged();
      if (e instanceof ThreadDied) {
        // The task's rejection can arrive before Piscina's worker events: say it now, so the
        // retry waits for a new thread instead of using a pool whose thread is gone.
        this.threadDied(thread, e.message);
      }
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Runs a call's task: waits until the session is usable (logging in through the PIN chain
   * if the call needs it), and retries once after a lost session or a dead thread.
   */
  async execute<T>(task: WorkerTask, call: CallContext, firstAttempt = 0): Promise<WorkerReply<T>> {
    for (let attempt = firstAttempt; ; attempt++) {
      await this.ready(call);
      if (call.settled) throw new Pkcs11SupervisorError('TIMEOUT', 'the call ended before it reached the token', { slot: this.slot });
      let reply: WorkerReply<T>;
      try {
        reply = await this.runTask<T>(task, call.deadline);
      } catch (e) {
        if (attempt === 0 && e instanceof ThreadDied) continue;
        if (e instanceof Wedged || e instanceof ThreadDied) {
          throw new Pkcs11SupervisorError('WORKER_CRASHED', `slot "${this.slot}" worker ${this.index}: ${e.message || 'worker wedged'}`, { slot: this.slot });
        }
        throw e;
      }
      if (!reply.ok && attempt === 0 && reply.error.ckr && SESSION_LOST_CKRS.has(reply.error.ckr)) {
        this.actor.send({ type: 'SESSION_LOST' });
        continue;
      }
      if (!reply.ok && attempt === 0 && reply.error.ckr && TRANSIENT_CKRS.has(reply.error.ckr)) continue;
      this.lastCallAt = Date.now();
      return reply;
    }
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
    // Every call, settled or not, keeps its slot in `claims`; settled ones were cancelled there already.
    const live = calls.map((_c, i) => i);
    const results: WorkerReply<T>[] = new Array(calls.length);
    let replies: (WorkerReply<T> | null)[];
    try {
      const batch = await this.runTask<(WorkerReply<T> | null)[]>({ op: 'batch', tasks, claims }, ctx.deadline);
      replies = batch.ok ? batch.value : live.map(() => null);
    } catch (e) {
      if (!(e instanceof ThreadDied)) throw e;
      replies = live.map(() => null);
    }
    let sessionLost = false;
    for (let k = 0; k < live.length; k++) {
      const i = live[k]!;
      const reply = replies[k] ?? null;
      const lost = reply && !reply.ok && reply.error.ckr !== undefined && SESSION_LOST_CKRS.has(reply.error.ckr);
      const transient = reply && !reply.ok && reply.error.ckr !== undefined && TRANSIENT_CKRS.has(reply.error.ckr);
      if (reply && !lost && !transient) {
        results[i] = reply;
        continue;
      }
      // Not run because it was cancelled: its caller has its answer already.
      if (calls[i]!.settled) continue;
      if (lost && !sessionLost) {
        sessionLost = true;
        this.actor.send({ type: 'SESSION_LOST' });
      }
      // Not run, or worth its one retry: the single-call path, counting a failed run as the first attempt.
      results[i] = await this.execute<T>(tasks[i]!, calls[i]!, reply ? 1 : 0);
    }
    this.lastCallAt = Date.now();
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
      await this.logIn(call.pin, call.deadline, round === 0 ? 'login' : 'relogin', false);
    }
    throw new Pkcs11SupervisorError('PIN_REQUIRED', `slot "${this.slot}" could not reach a logged-in session`, { slot: this.slot });
  }

  /** A settled state a call can go on from: a failed or closed worker ends the call here. */
  private async liveState(deadline: number): Promise<SlotState> {
    const state = await this.settledState(deadline);
    if (state === 'failed') {
      const e = this.context.lastError;
      throw new Pkcs11SupervisorError('SLOT_FAILED', `slot "${this.slot}" has failed${e ? `: ${e.message}` : ''}`, { slot: this.slot, ckr: e?.ckr });
    }
    if (state === 'closed') throw new Pkcs11SupervisorError('CLOSED', 'the supervisor is closed', { slot: this.slot });
    return state;
  }

  /** Down because the token is not there: no reason to keep a caller waiting for the restarts. */
  private tokenAbsent(state: SlotState, error: { code: string } | null): boolean {
    return (state === 'crashed' || state === 'restarting') && error?.code === 'TOKEN_NOT_FOUND';
  }

  private async settledState(deadline: number): Promise<SlotState> {
    if (this.state === 'uninitialized') this.start();
    let state = this.state;
    if (!SETTLED.has(state) && !this.tokenAbsent(state, this.context.lastError)) {
      const timeout = deadline - Date.now();
      if (timeout <= 0) throw new Pkcs11SupervisorError('TIMEOUT', `slot "${this.slot}" was not ready before the deadline`, { slot: this.slot });
      try {
        const snap = await waitFor(this.actor, (s) => SETTLED.has(s.value as SlotState) || this.tokenAbsent(s.value as SlotState, s.context.lastError), { timeout });
        state = snap.value as SlotState;
      } catch {
        throw new Pkcs11SupervisorError('TIMEOUT', `slot "${this.slot}" was not ready before the deadline (state ${this.state})`, { slot: this.slot });
      }
    }
    if (this.tokenAbsent(state, this.context.lastError)) {
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
    await this.opts.loginLock(async () => {
      const info = unwrap(await this.runTask<SessionInfo>({ op: 'sessionInfo' }, deadline), this.slot);
      if (USER_SESSION_STATES.has(info.state)) {
        if (this.state === 'open') this.actor.send({ type: 'TOKEN_LOGGED_IN' });
        return;
      }
      const { pins } = this.opts;
      if (info.userPin === 'locked') {
        throw new Pkcs11SupervisorError('PIN_LOCKED', `token "${info.tokenLabel}" reports its user PIN locked (CKF_USER_PIN_LOCKED): the Security Officer must set a new one (initPin)`, { slot: this.slot });
      }
      const { pin, origin } = await pins.resolve(perCall, { slot: this.slot, tokenLabel: info.tokenLabel, reason }, explicit);
      // The token says the next wrong PIN locks it. A configured PIN may be the wrong one (a
      // daemon restarted with a bad secret tries it once per start): only a PIN a person or
      // the application gives now is tried.
      if (info.userPin === 'final_try' && (origin === 'env' || origin === 'file')) {
        throw new Pkcs11SupervisorError(
          'PIN_REQUIRED',
          `token "${info.tokenLabel}" reports that one more wrong PIN locks it (CKF_USER_PIN_FINAL_TRY), so the configured PIN (${origin}) is not tried; log in with login(slot, pin) or pass a call's pin`,
          { slot: this.slot },
        );
      }
      this.actor.send({ type: 'LOGIN', pin });
      const snap = await waitFor(this.actor, (s) => s.value !== 'logging_in');
      if (snap.value === 'logged_in') {
        pins.accepted();
        this.opts.hooks.loginAttempted(this, origin, 'ok');
        return;
      }
      const err = snap.context.lastError;
      this.opts.hooks.loginAttempted(this, origin, err?.code ?? 'UNKNOWN');
      if (err?.code === 'PIN_INCORRECT') pins.rejectedByToken(pin);
      if (snap.value === 'open' && err) throw new Pkcs11SupervisorError(err.code, err.message, { slot: this.slot, ckr: err.ckr });
      // The session was lost or the thread died during login: the caller's loop tries again.
    });
  }

  /** Logs the token in as its Security Officer, ending the user login first (one user type at a time). */
  async soLogIn(pin: Secret, deadline: number): Promise<void> {
    await this.liveState(deadline);
    await this.opts.loginLock(async () => {
      const reply = await this.runTask<SessionReport>({ op: 'login', pin: pin.reveal(), userType: 'so' }, deadline);
      this.opts.hooks.loginAttempted(this, 'call', reply.ok ? 'ok' : reply.error.code, 'so');
      const report = unwrap(reply, this.slot);
      if (report.state !== 'RW_SO') throw new Pkcs11SupervisorError('PKCS11_ERROR', `the token reports ${report.state} after an SO login`, { slot: this.slot });
      this.actor.send({ type: 'SO_LOGGED_IN' });
    });
  }

  async logOut(deadline: number): Promise<void> {
    if (this.state !== 'logged_in' && this.state !== 'so_logged_in') {
      // The token may still be logged in through a sibling's session: log it out all the same.
      const state = await this.settledState(deadline);
      if (state !== 'open' && state !== 'logged_in') return;
      unwrap(await this.runTask({ op: 'logout' }, deadline), this.slot);
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
