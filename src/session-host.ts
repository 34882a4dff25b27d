/**
 * The session thread of one slot worker across its generations: starts a thread, opens its
 * session, runs tasks on it with a deadline past which the thread counts as wedged, and lets a
 * crashed or wedged thread go. Sessions of abandoned threads are closed once the thread is
 * really gone and the next session is open: closing the application's last session on a token
 * logs the token out, and the replacement would need a C_Login for nothing.
 */
import type { SlotConfig } from './config-schema.js';
import { refSelector } from './validate.js';
import { closeOrphanSession, moduleGate, threadAbandoned } from './module-registry.js';
import { fieldRefused, Pkcs11SupervisorError } from './model/errors.js';
import type { OpenReport, WorkerError, WorkerReply, WorkerTask } from './model/protocol.js';
import { SessionThread, ThreadDied } from '../workers/handover/session-thread.js';

export { ThreadDied };

/** A call ran past its deadline plus grace: its thread was abandoned. */
export class Wedged extends Error {}

export function unwrap<T>(reply: WorkerReply<T>, slot: string): T {
  if (reply.ok) return reply.value;
  throw new Pkcs11SupervisorError(reply.error.code, reply.error.message, { slot, ckr: reply.error.ckr });
}

/** The tasks a token's quiet is for: they pass its gate. */
const runsInQuiet = (task: WorkerTask) => task.op === 'logout' || (task.op === 'login' && task.userType === 'so');

export class SessionHost {
  private thread: SessionThread | null = null;
  /** The session the current thread holds, kept here so a crash can still close it. */
  private sessionHandle: string | null = null;
  private readonly orphans: string[] = [];

  constructor(
    private readonly slot: string,
    private readonly config: SlotConfig,
    private readonly modulePath: string,
    /** The current thread died or is wedged (called once per generation). */
    private readonly crashed: (reason: string) => void,
    /** No next session will come (failed or closed): orphans are closed as soon as they are gone. */
    private readonly ended: () => boolean,
    /** Every call that failed on the token (batched calls aside), for the counters that watch the module. */
    private readonly failed: (error: WorkerError) => void,
    /** Closed while the token logs out (TokenDomain.quiet). */
    private readonly tokenGate: () => Promise<void> | null,
  ) {}

  /** What a task waits for before it enters the module: a module reset, or a logout of the token unless it is that logout. */
  private gateFor(task: WorkerTask): Promise<void> | null {
    return moduleGate(this.modulePath) ?? (runsInQuiet(task) ? null : this.tokenGate());
  }

  /** A task is inside the thread (and so maybe inside the module). */
  get busy(): boolean {
    return (this.thread?.tasks ?? 0) > 0;
  }

  /** The thread is alive with at most one task in it: another can wait in its port. */
  get canTakeAnother(): boolean {
    return this.thread?.alive === true && this.thread.tasks <= 1;
  }

  /** Reports a dead thread, once and only for the generation that is current: a late report must not crash its successor. */
  private died(thread: SessionThread, reason: string): void {
    if (this.thread === thread) this.crashed(reason);
  }

  /** Opens a session, on a new thread if the last one is gone. */
  async open(): Promise<OpenReport> {
    if (!this.thread?.alive) {
      const thread: SessionThread = new SessionThread((reason) => this.died(thread, reason.message), this.config.idleSpinMs);
      this.thread = thread;
    }
    await moduleGate(this.modulePath);
    const { config } = this;
    const keys = Object.fromEntries(Object.entries(config.keys).map(([ref, k]) => [ref, refSelector(k)]));
    const report = unwrap(this.seen(await this.thread.run<OpenReport>({ op: 'open', modulePath: this.modulePath, token: config.token, readWrite: !config.readOnly, keys })), this.slot);
    this.sessionHandle = report.handle;
    this.closeOrphans();
    this.checkSessionLimit(report);
    return report;
  }

  /** A pool larger than the token allows would fail at random later (CKR_SESSION_COUNT): refuse it now. */
  private checkSessionLimit(report: OpenReport): void {
    const { poolSize, readOnly } = this.config;
    const limits = readOnly ? [report.maxSessions] : [report.maxSessions, report.maxRwSessions];
    const limit = Math.min(...limits.map((l) => l ?? Infinity));
    if (poolSize <= limit) return;
    const path = `slots.${this.slot}.poolSize`;
    const message = `${poolSize} workers need ${poolSize} ${readOnly ? '' : 'R/W '}sessions, but token "${report.tokenLabel}" allows at most ${limit}`;
    throw fieldRefused(path, message, this.slot);
  }

  async close(): Promise<null> {
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

  private seen<T>(reply: WorkerReply<T>): WorkerReply<T> {
    if (!reply.ok) this.failed(reply.error);
    return reply;
  }

  /** Lets a crashed or wedged thread go; its session is closed later (see the header). */
  abandon(): void {
    const orphan = this.sessionHandle;
    const thread = this.thread;
    this.thread = null;
    this.sessionHandle = null;
    if (!thread) return;
    const gone = thread.tasks > 0 ? threadAbandoned(this.modulePath) : () => undefined;
    thread.abandon(() => {
      gone();
      if (!orphan) return;
      this.orphans.push(orphan);
      if (this.sessionHandle || this.ended()) this.closeOrphans();
    });
  }

  closeOrphans(): void {
    for (const handle of this.orphans.splice(0)) closeOrphanSession(this.modulePath, handle);
  }

  /**
   * Runs a task on the thread. Past the deadline plus grace the thread is declared wedged: it
   * is abandoned, which fails the pending run, and this call reports Wedged.
   */
  async run<T>(task: WorkerTask, deadline: number): Promise<WorkerReply<T>> {
    for (let gate = this.gateFor(task); gate; gate = this.gateFor(task)) await gate;
    if (!this.thread?.alive) throw new ThreadDied('session worker thread is gone');
    const thread = this.thread;
    let wedged = false;
    const timer = setTimeout(() => {
      wedged = true;
      this.died(thread, `a call (${task.op}) ran ${this.config.hungCallGraceMs} ms past its deadline; the worker is wedged and is replaced`);
    }, Math.max(0, deadline + this.config.hungCallGraceMs - Date.now()));
    try {
      return this.seen(await thread.run<T>(task));
    } catch (e) {
      if (wedged) throw new Wedged();
      // The task's rejection can arrive before Piscina's worker events: say it now, so the
      // retry waits for a new thread instead of using a pool whose thread is gone.
      if (e instanceof ThreadDied) this.died(thread, e.message);
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }
}
