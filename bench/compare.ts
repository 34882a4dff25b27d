/**
 * `npm run bench -- --compare OLD.json [NEW.json]`: two runs' var/bench.json side by side, for
 * regression checks (NEW defaults to var/bench.json, the latest run): each cell's throughput
 * ratio NEW/OLD and p50 change, and each target's value in both. Runs nothing.
 */
import { readFileSync } from 'node:fs';
import type { Result } from './results.js';

type Cell = Pick<Result, 'alg' | 'size' | 'target' | 'concurrency' | 'opsPerSec' | 'p50us'>;

interface Target {
  alg: string;
  target: string;
  value: number;
  pass: boolean;
}

interface BenchFile {
  when: string;
  cores: number;
  results: Cell[];
  targets: Target[];
}

const read = (file: string): BenchFile => JSON.parse(readFileSync(file, 'utf8')) as BenchFile;

export function compare(oldFile: string, newFile = 'var/bench.json'): string {
  const a = read(oldFile);
  const b = read(newFile);
  const key = (c: Cell) => `${c.alg}|${c.size}|${c.target}|${c.concurrency}`;
  const before = new Map(a.results.map((c) => [key(c), c]));
  const lines = [`${oldFile} (${a.when}, ${a.cores} cores) → ${newFile} (${b.when}, ${b.cores} cores)`, ''];
  const cells = b.results.filter((c) => before.has(key(c)));
  if (cells.length > 0) {
    lines.push('| algorithm | input | target | conc. | ops/s before | ops/s now | ratio | p50 µs before | p50 µs now |', '| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const c of cells) {
      const o = before.get(key(c))!;
      lines.push(`| ${c.alg} | ${c.size} B | ${c.target} | ${c.concurrency} | ${o.opsPerSec} | ${c.opsPerSec} | ${(c.opsPerSec / o.opsPerSec).toFixed(2)} | ${o.p50us} | ${c.p50us} |`);
    }
    lines.push('');
  }
  const targets = new Map(a.targets.map((t) => [`${t.alg}|${t.target}`, t]));
  lines.push('| target | before | now |', '| --- | ---: | ---: |');
  for (const t of b.targets) {
    const o = targets.get(`${t.alg}|${t.target}`);
    lines.push(`| ${t.alg}: ${t.target} | ${o ? `${o.value} ${o.pass ? 'PASS' : 'MISS'}` : '-'} | ${t.value} ${t.pass ? 'PASS' : 'MISS'} |`);
  }
  return lines.join('\n');
}
