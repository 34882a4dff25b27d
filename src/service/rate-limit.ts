/**
 * Requests per principal: a token bucket each, sized by the most generous of the principal's
 * roles in `policy.rateLimits`. One noisy caller runs out of tokens and gets RATE_LIMITED
 * (429, Retry-After) before its calls can fill a slot's mailbox for everyone.
 */
import type { Policy, Role } from '../config-schema.js';

interface Bucket {
  tokens: number;
  at: number;
  perSecond: number;
  burst: number;
}

/**
 * Buckets kept: authenticated identities are few, but JWT subjects need not be. Past this, full
 * buckets go first (forgetting one changes nothing), then the least recently used down to
 * three quarters, so an issuer minting a subject per request cannot grow the map without bound.
 */
const MAX_BUCKETS = 10_000;

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  /** `limits` returns the limits in force: after a config reload, `forget()` makes every bucket anew. */
  constructor(private readonly limits: () => Policy['rateLimits']) {}

  forget(): void {
    this.buckets.clear();
  }

  /** Buckets held now (at most MAX_BUCKETS). */
  get size(): number {
    return this.buckets.size;
  }

  /** 0 if the request may go ahead, else the milliseconds until the principal's next token. */
  take(principal: string, roles: readonly Role[], now = performance.now()): number {
    return this.takeUpTo(principal, roles, 1, now).waitMs;
  }

  /**
   * Tokens for up to `wanted` calls (a batch's): how many may go ahead, and, if not all, the
   * milliseconds until the principal's next token. Each call of a batch counts, as it would alone.
   */
  takeUpTo(principal: string, roles: readonly Role[], wanted: number, now = performance.now()): { granted: number; waitMs: number } {
    let bucket = this.buckets.get(principal);
    if (bucket) {
      // Map order is use order: the least recently used bucket is the first a sweep meets.
      this.buckets.delete(principal);
      this.buckets.set(principal, bucket);
    } else {
      const limit = this.limitFor(roles);
      if (!limit) return { granted: wanted, waitMs: 0 };
      if (this.buckets.size >= MAX_BUCKETS) this.sweep(now);
      bucket = { tokens: limit.burst, at: now, ...limit };
      this.buckets.set(principal, bucket);
    }
    bucket.tokens = Math.min(bucket.burst, bucket.tokens + ((now - bucket.at) / 1000) * bucket.perSecond);
    bucket.at = now;
    const granted = Math.min(wanted, Math.floor(bucket.tokens));
    bucket.tokens -= granted;
    return { granted, waitMs: granted === wanted ? 0 : Math.ceil(((1 - bucket.tokens) / bucket.perSecond) * 1000) };
  }

  private limitFor(roles: readonly Role[]): { perSecond: number; burst: number } | null {
    let best: { perSecond: number; burst: number } | null = null;
    for (const role of roles) {
      const limit = this.limits()[role];
      // A role without a limit is unlimited: the most generous there is.
      if (!limit) return null;
      if (!best || limit.perSecond > best.perSecond) best = limit;
    }
    return best;
  }

  private sweep(now: number): void {
    for (const [k, b] of this.buckets) if (b.tokens + ((now - b.at) / 1000) * b.perSecond >= b.burst) this.buckets.delete(k);
    if (this.buckets.size < MAX_BUCKETS) return;
    for (const k of this.buckets.keys()) {
      if (this.buckets.size <= (MAX_BUCKETS * 3) / 4) break;
      this.buckets.delete(k);
    }
  }
}
