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
  /** What waking a thread cost that machine that day; absent from files older than the field. */
  hopFloorP50us?: number;
  results: Cell[];
  targets: Target[];
}

const read = (file: string): BenchFile => JSON.parse(readFileSync(file, 'utf8')) as BenchFile;

export function compare(oldFile: string, newFile = 'var/bench.json'): string {
  const a = read(oldFile);
  const b = read(newFile);
  const key = (c: Cell) => `${c.alg}|${c.size}|${c.target}|${c.concurrency}`;
  const before = new Map(a.results.map((c) => [key(c), c]));
  const hop = (f: BenchFile) => (f.hopFloorP50us === undefined ? '' : `, hop floor ${f.hopFloorP50us} µs`);
  const lines = [`${oldFile} (${a.when}, ${a.cores} cores${hop(a)}) → ${newFile} (${b.when}, ${b.cores} cores${hop(b)})`, ''];
  // A VM whose idle vCPUs are slow to wake (4 µs one day, over 100 another on the same machine)
  // moves every latency and moderate-concurrency figure with it, whatever the code did.
  if (a.hopFloorP50us && b.hopFloorP50us && Math.max(a.hopFloorP50us, b.hopFloorP50us) > 2 * Math.min(a.hopFloorP50us, b.hopFloorP50us)) {
    lines.splice(1, 0, `Not comparable for latency: waking a thread cost ${a.hopFloorP50us} µs in one run and ${b.hopFloorP50us} µs in the other (the hop floor); compare runs on equally quiet machines.`);
  }
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
