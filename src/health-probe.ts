/**
 * A slot's periodic health probe. On a slot that serves, it sends each open session a health
 * check through the slot's mailbox, like any call (C_GetSessionInfo): a keepalive against HSM
 * idle timeouts, and a way to see a lost session or a logout before a user call does. On a
 * failed slot it asks whether the token is present again and, if the restart policy says so,
 * brings the slot back. The module's slot events (slot-event-watcher.ts) make it look at once.
 */
import type { Logger } from 'pino';
import { tokenPresent } from './module-registry.js';
import type { Slot } from './slot.js';
import { SESSION_LOST_CKRS } from './model/ckr.js';
import { USER_SESSION_STATES, type SessionInfo, type WorkerReply } from './model/protocol.js';
import type { SlotWorker } from './slot-worker.js';

export class HealthProbe {
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private again = false;

  constructor(
    private readonly slot: Slot,
    private readonly modulePath: string,
    private readonly reset: (slot: Slot) => void,
    private readonly log: Logger,
  ) {}

  start(): void {
    const every = this.slot.config.probeIntervalMs;
    if (every <= 0) return;
    this.timer = setInterval(() => void this.tick(), every);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Looks at the token now; asked while a look runs (a slot event), it looks once more after it. */
  async tick(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      do {
        this.again = false;
        await this.look();
      } while (this.again);
    } finally {
      this.running = false;
    }
  }

  private async look(): Promise<void> {
    const { slot } = this;
    if (slot.failure()) {
      if (slot.restart.resetWhenTokenReturns && tokenPresent(this.modulePath, slot.config.token)) {
        this.log.info({ slot: slot.name }, 'health probe: token is present again; restarting the failed slot');
        this.reset(slot);
      }
      return;
    }
    const open = slot.workers.filter((w) => w.state === 'open' || w.state === 'logged_in').length;
    const checks = Array.from({ length: open }, () =>
      slot
        .call<WorkerReply | null>({ task: { op: 'healthCheck' }, needsLogin: false, pin: undefined, timeoutMs: slot.config.callTimeoutMs, signal: undefined })
        .then(({ value, worker }) => {
          if (value && !value.ok) this.log.warn({ slot: slot.name, worker, ckr: value.error.ckr, code: value.error.code }, 'health probe: the session check failed');
        })
        .catch(() => undefined), // a full queue or a closing slot: the next tick looks again
    );
    await Promise.all(checks);
  }
}

/**
 * Asks the token for a session's state and has the worker's machine follow it. Only on a session
 * that is open: the probe never opens a lazy slot. The reply, for the probe's log.
 */
export async function checkHealth(worker: SlotWorker, deadline: number): Promise<WorkerReply<SessionInfo> | null> {
  if (worker.state !== 'open' && worker.state !== 'logged_in') return null;
  let reply: WorkerReply<SessionInfo>;
  try {
    reply = await worker.runTask<SessionInfo>({ op: 'sessionInfo' }, deadline);
  } catch {
    return null; // a dead or wedged thread is reported to the supervisor already
  }
  if (!reply.ok) {
    if (reply.error.ckr && SESSION_LOST_CKRS.has(reply.error.ckr)) worker.sessionLost();
    return reply;
  }
  worker.userPin = reply.value.userPin;
  const loggedIn = USER_SESSION_STATES.has(reply.value.state);
  if ((worker.state === 'logged_in') !== loggedIn) worker.followToken(loggedIn);
  return reply;
}
