/**
 * A slot's periodic health probe. On healthy workers that are idle it asks the token for the
 * session state (C_GetSessionInfo): a keepalive against HSM idle timeouts, and a way to see a
 * lost session or a logout before a user call does. On a failed slot it asks whether the
 * token is present again and, if so, brings the slot back.
 */
import type { Logger } from 'pino';
import { SESSION_LOST_CKRS } from './model/ckr.js';
import { tokenPresent } from './module-registry.js';
import type { Slot } from './slot.js';
import { USER_SESSION_STATES, type SessionInfo } from './model/protocol.js';


export class HealthProbe {
  private timer: NodeJS.Timeout | null = null;
  private running = false;

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

  async tick(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      if (this.slot.failure()) {
        if (tokenPresent(this.modulePath, this.slot.config.token)) {
          this.log.info({ slot: this.slot.name }, 'health probe: token is present again; restarting the failed slot');
          this.reset(this.slot);
        }
        return;
      }
      for (const w of this.slot.workers) {
        if (w.busy || (w.state !== 'open' && w.state !== 'logged_in')) continue;
        w.busy = true;
        let reply;
        try {
          reply = await w.runTask<SessionInfo>({ op: 'sessionInfo' }, Date.now() + this.slot.config.callTimeoutMs);
        } catch {
          continue; // a dead or wedged thread is the supervisor's business already
        } finally {
          w.busy = false;
          this.slot.mailbox.pump();
        }
        if (!reply.ok) {
          if (reply.error.ckr && SESSION_LOST_CKRS.has(reply.error.ckr)) {
            this.log.warn({ slot: this.slot.name, worker: w.index, ckr: reply.error.ckr }, 'health probe: session lost; re-opening');
            w.actor.send({ type: 'SESSION_LOST' });
          }
          continue;
        }
        const loggedIn = USER_SESSION_STATES.has(reply.value.state);
        if (w.state === 'logged_in' && !loggedIn) w.actor.send({ type: 'TOKEN_LOGGED_OUT' });
        if (w.state === 'open' && loggedIn) w.actor.send({ type: 'TOKEN_LOGGED_IN' });
      }
    } finally {
      this.running = false;
    }
  }
}
