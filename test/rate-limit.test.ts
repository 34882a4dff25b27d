import { describe, expect, it } from 'vitest';
import { RateLimiter } from '../dist/src/service/rate-limit.js';

const limits = () => ({ service: { perSecond: 1, burst: 2 } });

describe('rate limits per principal', () => {
  it('a subject per request cannot grow the buckets without bound, and the noisy subject stays limited', () => {
    const limiter = new RateLimiter(limits);
    const now = 1_000;
    // One subject drains its bucket and keeps asking.
    expect(limiter.takeUpTo('noisy', ['service'], 5, now)).toEqual({ granted: 2, waitMs: 1000 });
    let largest = 0;
    for (let i = 0; i < 50_000; i++) {
      // Fresh subjects, each drained (not full), so none can be dropped as "changes nothing".
      expect(limiter.takeUpTo(`sub-${i}`, ['service'], 2, now).granted).toBe(2);
      if (i % 100 === 0) expect(limiter.take('noisy', ['service'], now)).toBeGreaterThan(0);
      largest = Math.max(largest, limiter.size);
    }
    expect(largest).toBeLessThanOrEqual(10_000);
    expect(limiter.take('noisy', ['service'], now)).toBe(1000);
  });

  it('full buckets are the first to go and forgetting them changes no answer', () => {
    const limiter = new RateLimiter(limits);
    for (let i = 0; i < 10_000; i++) limiter.take(`idle-${i}`, ['service'], 0);
    // Ten seconds later every idle bucket is full again; the next subject's arrival drops them.
    expect(limiter.takeUpTo('late', ['service'], 3, 10_000)).toEqual({ granted: 2, waitMs: 1000 });
    expect(limiter.size).toBe(1);
    expect(limiter.take('idle-7', ['service'], 10_000)).toBe(0);
  });

  it('a role without a limit is unlimited and holds no bucket', () => {
    const limiter = new RateLimiter(limits);
    expect(limiter.takeUpTo('admin', ['service', 'administrator'], 1_000, 0)).toEqual({ granted: 1_000, waitMs: 0 });
    expect(limiter.size).toBe(0);
  });
});
