/**
 * The whole restart strategy of a slot, in one place (OTP's one `strategy:` line):
 *
 * - a crash is restarted after a backoff that doubles from `backoffInitialMs` to `backoffMaxMs`,
 *   spread by ±`jitter` so replicas that lost the same HSM do not come back in step;
 * - at most `maxRestarts` within `windowMs` (OTP's intensity and period); one more and the
 *   worker is failed, as it is at once for an error no restart can fix;
 * - a crash whose CKR says the module itself is broken resets the module first;
 * - while the token is absent, calls fail fast (TOKEN_NOT_FOUND) instead of waiting out the
 *   restarts;
 * - a failed slot whose token is present again is reset by the health probe.
 *
 * The supervisor asks; this module decides. A test swaps the options (or the whole policy).
 */
import type { SlotConfig } from './config-schema.js';
import { MODULE_BROKEN_CKRS } from './model/ckr.js';
import type { ErrorCode } from './model/errors.js';
import type { SlotError, SlotState } from './model/slot-state.js';

export interface RestartOptions {
  maxRestarts: number;
  windowMs: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  /** Each backoff is scaled by a random factor in [1 - jitter, 1 + jitter]. */
  jitter?: number;
  /** Errors a restart cannot fix: the worker fails at once. */
  permanent?: ReadonlySet<ErrorCode>;
  random?: () => number;
}

export type RestartDecision = { restart: true; attempt: number; backoffMs: number; resetModule: boolean } | { restart: false; resetModule: boolean };

const PERMANENT: ReadonlySet<ErrorCode> = new Set(['MODULE_LOAD_FAILED', 'CONFIG_INVALID']);
const JITTER = 0.2;

export class RestartPolicy {
  private times: number[] = [];

  constructor(private readonly options: RestartOptions) {}

  /** Records a crash at `now` and decides what follows it. */
  crashed(error: SlotError | null, now: number): RestartDecision {
    const resetModule = error?.ckr !== undefined && MODULE_BROKEN_CKRS.has(error.ckr);
    if (error && (this.options.permanent ?? PERMANENT).has(error.code)) return { restart: false, resetModule };
    const { maxRestarts, windowMs, backoffInitialMs, backoffMaxMs } = this.options;
    this.times = this.times.filter((t) => now - t < windowMs);
    if (this.times.length >= maxRestarts) return { restart: false, resetModule };
    this.times.push(now);
    const attempt = this.times.length;
    const jitter = this.options.jitter ?? JITTER;
    const spread = 1 + jitter * (2 * (this.options.random ?? Math.random)() - 1);
    const backoffMs = Math.round(Math.min(backoffMaxMs, backoffInitialMs * 2 ** (attempt - 1)) * spread);
    return { restart: true, attempt, backoffMs, resetModule };
  }

  /** An operator's reset: the restart history is forgotten. */
  reset(): void {
    this.times = [];
  }

  /** Down because the token is not there: no reason to keep a caller waiting for the restarts. */
  failsFast(state: SlotState, error: SlotError | null): boolean {
    return (state === 'crashed' || state === 'restarting') && error?.code === 'TOKEN_NOT_FOUND';
  }

  /** The health probe found a failed slot's token present again: bring the slot back. */
  readonly resetWhenTokenReturns = true;
}

export type RestartPolicyFactory = (restart: SlotConfig['restart']) => RestartPolicy;

export const defaultRestartPolicy: RestartPolicyFactory = (restart) => new RestartPolicy(restart);
