/**
 * config/monitoring/: the alert rules pass `promtool check rules` and their own `promtool test
 * rules` with sample series, and every metric the rules and the Grafana dashboard query is one a
 * running daemon exposes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startDaemon, type Daemon } from '../dist/src/index.js';
import { configFor, createToken, tokenDir } from './support/softhsm.js';

const run = promisify(execFile);
let daemon: Daemon;
let exposed: Set<string>;

beforeAll(async () => {
  const td = tokenDir();
  process.env.MON_PIN = createToken(td, 'mon').pin;
  const file = join(td.dir, 'config.json');
  writeFileSync(file, JSON.stringify({ ...configFor(td, { s: { token: { label: 'mon' }, pin: { env: 'MON_PIN' } } }), metrics: { host: '127.0.0.1', port: 0 }, audit: { path: join(td.dir, 'audit.jsonl') }, api: { unix: { path: join(td.dir, 'api.sock') } } }));
  daemon = await startDaemon(file);
  const text = await (await fetch(`${daemon.url}/metrics`)).text();
  exposed = new Set([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].flatMap(([, name, type]) => (type === 'histogram' ? [`${name}_bucket`, `${name}_count`, `${name}_sum`] : [name!])));
});

afterAll(() => daemon?.stop());

/** The metric names a PromQL text mentions. */
const metricsIn = (text: string) => [...new Set([...text.matchAll(/\b(pkcs11_[a-z0-9_]+)/g)].map((m) => m[1]!))];

describe('alert rules', () => {
  it('pass promtool check rules and promtool test rules', async () => {
    const check = await run('promtool', ['check', 'rules', 'config/monitoring/alerts.yaml']);
    expect(check.stdout).toMatch(/SUCCESS: 11 rules found/);
    const test = await run('promtool', ['test', 'rules', 'alerts.test.yaml'], { cwd: 'config/monitoring' });
    expect(test.stdout).toMatch(/SUCCESS/);
  });

  it('query only metrics the daemon exposes', () => {
    const used = metricsIn(readFileSync('config/monitoring/alerts.yaml', 'utf8'));
    expect(used.length).toBeGreaterThanOrEqual(7);
    expect(used.filter((m) => !exposed.has(m))).toEqual([]);
  });
});

describe('the Grafana dashboard', () => {
  const dashboard = JSON.parse(readFileSync('config/monitoring/grafana-dashboard.json', 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };

  it('has the panels operators need, each querying metrics the daemon exposes', () => {
    const titles = dashboard.panels.map((p) => p.title).join(' | ');
    for (const want of [/Calls by result/, /Queue vs token time/, /Slot worker states/, /Restarts/, /Login attempts/, /PIN retry flags/, /Audit trail/]) expect(titles).toMatch(want);
    const used = metricsIn(dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr)).join('\n'));
    expect(used.filter((m) => !exposed.has(m))).toEqual([]);
  });
});

describe('docs/operations.md', () => {
  it('lists every metric the daemon exposes', () => {
    const doc = readFileSync('docs/operations.md', 'utf8');
    const own = [...new Set([...exposed].filter((m) => m.startsWith('pkcs11_')).map((m) => m.replace(/_(bucket|count|sum)$/, '')))];
    expect(own.length).toBeGreaterThan(20);
    expect(own.filter((m) => !doc.includes(`\`${m}\``))).toEqual([]);
  });
});

