/**
 * The package as npm publishes it: only what users need (the build, its sources so the source
 * maps resolve, the config samples and the dev-token script; no benchmarks, tests or test
 * support), and, installed from its tarball into a fresh project, `pkcs11-supervisor init`
 * makes the README's "Using it" snippet run there verbatim.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { openssl } from './support/openssl.js';

const run = promisify(execFile);
const ROOT = resolve('.');
let files: string[] = [];
let tarball = '';
const work = mkdtempSync(join(tmpdir(), 'p11sup-pack-'));

beforeAll(async () => {
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', work], { cwd: ROOT });
  const [info] = JSON.parse(stdout) as { filename: string; files: { path: string }[] }[];
  files = info!.files.map((f) => f.path);
  tarball = join(work, info!.filename);
}, 120_000);

describe('npm pack', () => {
  it('holds what users need and nothing else', () => {
    expect(files).toEqual(expect.arrayContaining(['package.json', 'README.md', 'LICENSE', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/cli.js', 'dist/src/daemon.js', 'config/default.json', 'config/schema.json', 'scripts/provision-dev-token.sh']));
    const allowed = /^(package\.json|README\.md|LICENSE|dist\/(src|actors|workers)\/|src\/|actors\/|workers\/|config\/|scripts\/(provision-dev-token\.sh|container-entry\.sh|healthcheck\.mjs)$)/;
    expect(files.filter((f) => !allowed.test(f))).toEqual([]);
    expect(files.filter((f) => /testing\.|\/bench\/|fault-pkcs11/.test(f))).toEqual([]);
  });

  it('every source map points at a source the package ships', () => {
    const shipped = new Set(files);
    const maps = files.filter((f) => f.endsWith('.js.map'));
    expect(maps.length).toBeGreaterThan(20);
    for (const map of maps) {
      const { sources } = JSON.parse(readFileSync(join(ROOT, map), 'utf8')) as { sources: string[] };
      for (const s of sources) expect(shipped.has(join(map, '..', s)), `${map} → ${s}`).toBe(true);
    }
  });
});

describe('a fresh project', () => {
  it('installs the tarball; `pkcs11-supervisor init` gives it a dev token and a config; the README snippet runs verbatim and OpenSSL accepts its signature', async () => {
    const project = mkdtempSync(join(tmpdir(), 'p11sup-project-'));
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'an-application', version: '1.0.0', private: true, type: 'module' }));
    await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', tarball], { cwd: project });
    const init = await run('npx', ['--no-install', 'pkcs11-supervisor', 'init'], { cwd: project });
    expect(init.stdout).toMatch(/wrote config\/default\.json/);
    const readme = readFileSync('README.md', 'utf8');
    const snippet = /<!-- checked: runs against the dev token -->\n```ts\n([\s\S]*?)\n```/.exec(readme)![1]!;
    writeFileSync(join(project, 'example.js'), snippet);
    const { stdout } = await run(process.execPath, ['example.js'], { cwd: project });
    const [, ok, signature, pem] = /^(\S+) (\S+) ([\s\S]+)$/.exec(stdout.trim())!;
    expect(ok).toBe('true');
    writeFileSync(join(project, 'pub.pem'), pem!);
    writeFileSync(join(project, 'sig.der'), Buffer.from(signature!, 'base64'));
    writeFileSync(join(project, 'data'), 'invoice 2026-0042');
    expect(openssl(['dgst', '-sha256', '-verify', join(project, 'pub.pem'), '-signature', join(project, 'sig.der'), join(project, 'data')]).toString()).toContain('Verified OK');
    // And the CLI works there too, against the same dev token.
    const status = await run('npx', ['--no-install', 'pkcs11-supervisor', '--direct', 'status'], { cwd: project });
    expect(JSON.parse(status.stdout).slots.signer.state).toBe('logged_in');
  }, 300_000);
});
