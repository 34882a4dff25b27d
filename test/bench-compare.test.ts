/**
 * `npm run bench -- --compare OLD NEW`: two runs' results side by side for regression checks,
 * and a warning when the two machines woke threads at very different costs that day.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compare } from '../dist/bench/compare.js';

const dir = mkdtempSync(join(tmpdir(), 'p11sup-compare-'));
function run(name: string, opsPerSec: number, hopFloorP50us: number, pass: boolean): string {
  const file = join(dir, `${name}.json`);
  writeFileSync(file, JSON.stringify({
    when: `${name}-time`, cores: 2, hopFloorP50us,
    results: [{ alg: 'ECDSA P-256', size: 32, target: 'pool-2', concurrency: 256, opsPerSec, p50us: 100 }],
    targets: [{ alg: 'ECDSA P-256', target: 'pool of 2 ≥ 0.9× raw', value: pass ? 0.95 : 0.85, pass }],
  }));
  return file;
}

describe('bench --compare', () => {
  it('prints each cell\'s ratio and each target in both runs', () => {
    const out = compare(run('old', 20_000, 4, true), run('new', 15_000, 5, false));
    expect(out).toContain('| ECDSA P-256 | 32 B | pool-2 | 256 | 20000 | 15000 | 0.75 | 100 | 100 |');
    expect(out).toContain('| ECDSA P-256: pool of 2 ≥ 0.9× raw | 0.95 PASS | 0.85 MISS |');
    expect(out).toContain('hop floor 4 µs');
    expect(out).not.toContain('Not comparable');
  });

  it('says when the runs are not comparable for latency: one machine woke threads far slower', () => {
    const out = compare(run('quiet', 20_000, 4, true), run('slow', 12_000, 105, false));
    expect(out.split('\n')[1]).toMatch(/^Not comparable for latency: waking a thread cost 4 µs in one run and 105 µs in the other/);
  });
});
