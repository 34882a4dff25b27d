import type { SlotConfig } from './config-schema.js';

/**
 * OTP's intensity/period: at most `maxRestarts` within `windowMs`, each after an
 * exponentially growing pause. One restart more and the slot is failed.
 */
export class RestartBudget {
  private times: number[] = [];

  constructor(private readonly policy: SlotConfig['restart']) {}

  /** Records a crash at `now`: the pause before restart `attempt`, or null when the budget is spent. */
  next(now: number): { attempt: number; backoffMs: number } | null {
    this.times = this.times.filter((t) => now - t < this.policy.windowMs);
    if (this.times.length >= this.policy.maxRestarts) return null;
    this.times.push(now);
    const attempt = this.times.length;
    return { attempt, backoffMs: Math.min(this.policy.backoffMaxMs, this.policy.backoffInitialMs * 2 ** (attempt - 1)) };
  }

  reset(): void {
    this.times = [];
  }
}
