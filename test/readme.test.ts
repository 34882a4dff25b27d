/**
 * Every code block in the README is checked: each is marked with how (`<!-- checked: … -->` on
 * the line before it), and a block with no mark, or a mark this file does not know, fails.
 * The snippets run as written, in a fresh directory with a dev token of their own.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { openssl } from './support/openssl.js';
import { issue, testPki } from './support/pki.js';
import { started } from './support/daemon-process.js';
import { parseConfig } from '../dist/src/index.js';

const ROOT = resolve('.');
const README = readFileSync('README.md', 'utf8');

interface Block {
  check: string | undefined;
  lang: string;
  body: string;
  line: number;
}

function blocks(): Block[] {
  const out: Block[] = [];
  const lines = README.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\w*)$/.exec(lines[i]!);
    if (!open) continue;
    let end = i + 1;
    while (lines[end] !== '```') end++;
    const mark = /^<!-- checked: (.+) -->$/.exec(lines[i - 1] ?? '');
    out.push({ check: mark?.[1], lang: open[1]!, body: lines.slice(i + 1, end).join('\n'), line: i + 1 });
    i = end;
  }
  return out;
}

function only(check: string): Block {
  const found = blocks().filter((b) => b.check === check);
  expect(found, check).toHaveLength(1);
  return found[0]!;
}

/** A directory like a user's project: a dev token under var/ and the package installed. */
let project: string;

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(cmd, args, { cwd: project, env: { ...process.env, ...env }, encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** The daemon `npm start` would run, on the README's config with its service fragment; its TLS port. */
let daemon: ChildProcess;
let tlsPort = 0;

/** The tls/ files the README's fragment and curl line name, made by openssl. */
function makeTlsFiles(): void {
  const pki = testPki();
  const tls = join(project, 'tls');
  mkdirSync(tls);
  copyFileSync(pki.server.cert, join(tls, 'server.crt'));
  copyFileSync(pki.server.key, join(tls, 'server.key'));
  copyFileSync(pki.ca.cert, join(tls, 'clients-ca.crt'));
  copyFileSync(pki.ca.cert, join(tls, 'server-ca.crt'));
  const invoicer = issue(pki.ca, { cn: 'invoicer', uri: 'spiffe://example.org/ns/billing/sa/invoicer' });
  copyFileSync(invoicer.cert, join(tls, 'invoicer.crt'));
  copyFileSync(invoicer.key, join(tls, 'invoicer.key'));
}

/** Starts the daemon as a process of its own and waits for its start line (which names the TLS port). */
async function startDaemon(configFile: string): Promise<void> {
  daemon = spawn(process.execPath, [join(ROOT, 'dist/src/daemon.js'), '--config', configFile, '--listen', '127.0.0.1:0'], { cwd: project, stdio: ['ignore', 'pipe', 'pipe'] });
  tlsPort = Number(new URL((await started(daemon)).tls!).port);
}

afterAll(() => {
  daemon?.kill('SIGTERM');
});

beforeAll(async () => {
  project = mkdtempSync(join(tmpdir(), 'p11sup-readme-'));
  mkdirSync(join(project, 'scripts'));
  mkdirSync(join(project, 'config'));
  mkdirSync(join(project, 'node_modules'));
  symlinkSync(ROOT, join(project, 'node_modules', 'pkcs11-supervisor'));
  copyFileSync('scripts/provision-dev-token.sh', join(project, 'scripts', 'provision-dev-token.sh'));
  copyFileSync('config/default.json', join(project, 'config', 'default.json'));
  const provisioned = run('bash', ['scripts/provision-dev-token.sh']);
  expect(provisioned.code, provisioned.err).toBe(0);
  makeTlsFiles();
  const config = JSON.parse(readFileSync('config/default.json', 'utf8'));
  const service = JSON.parse(`{${only('service config fragment').body}}`);
  service.api.tls.port = 0; // a free port; the curl line is pointed at it below
  // The daemon keeps the audit trail; the embedded example runs on config/default.json as it is.
  writeFileSync(join(project, 'config', 'daemon.json'), JSON.stringify({ ...config, ...service, audit: { path: 'var/audit.jsonl', flushMs: 5 } }));
  await startDaemon('config/daemon.json');
}, 60_000);

describe('README', () => {
  it('marks every code block with how it is checked, and each mark is one this file checks', () => {
    const known = ['package scripts', 'runs against the dev token', 'runs each line', 'file config/default.json', 'config fragment', 'service config fragment', 'curl against the daemon'];
    for (const b of blocks()) expect(known, `README line ${b.line}: ${b.check ?? 'no <!-- checked: … --> mark'}`).toContain(b.check);
  });

  it('two commands: each is a script of package.json', () => {
    const scripts = JSON.parse(readFileSync('package.json', 'utf8')).scripts as Record<string, string>;
    const commands = only('package scripts').body.split('\n').map((l) => /^npm (\w+)/.exec(l)?.[1]);
    expect(commands).toEqual(['start', 'test']);
    for (const c of commands) expect(scripts[c!]).toContain('scripts/setup.sh');
  });

  it('the sample config is config/default.json, verbatim', () => {
    expect(only('file config/default.json').body).toBe(readFileSync('config/default.json', 'utf8').trimEnd());
  });

  it('the policy example is a config fragment the daemon accepts', () => {
    const base = JSON.parse(readFileSync('config/default.json', 'utf8'));
    const fragment = JSON.parse(`{${only('config fragment').body}}`);
    expect(() => parseConfig({ ...base, ...fragment })).not.toThrow();
  });

  it('"Using it" runs as written in a project of its own, and OpenSSL accepts its signature with its PEM', () => {
    writeFileSync(join(project, 'example.mjs'), only('runs against the dev token').body);
    const r = run(process.execPath, ['example.mjs']);
    expect(r.code, r.err).toBe(0);
    // The library logs at the config's level (info in config/default.json) as JSON lines: skip them.
    const printed = r.out.split('\n').filter((l) => !l.startsWith('{"level"')).join('\n');
    const [, ok, signature, pem] = /^(\S+) (\S+) ([\s\S]+)$/.exec(printed.trim()) ?? [];
    expect(ok).toBe('true');
    writeFileSync(join(project, 'pub.pem'), pem!);
    writeFileSync(join(project, 'sig.der'), Buffer.from(signature!, 'base64'));
    writeFileSync(join(project, 'data'), 'invoice 2026-0042');
    expect(openssl(['dgst', '-sha256', '-verify', join(project, 'pub.pem'), '-signature', join(project, 'sig.der'), join(project, 'data')]).toString()).toContain('Verified OK');
  });

  it('the curl lines sign over the socket, over mutual TLS and in a batch; OpenSSL accepts each signature', async () => {
    const pem = run(process.execPath, [join(ROOT, 'dist/src/cli.js'), 'pubkey', '--slot', 'signer', '--key', 'ec', '--format', 'pem', '--out', 'ec-curl.pem']);
    expect(pem.code, pem.err).toBe(0);
    writeFileSync(join(project, 'invoice'), 'invoice 2026-0042');
    const lines = only('curl against the daemon').body.split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^curl --unix-socket /);
    expect(lines[1]).toMatch(/^curl .*--cert /);
    expect(lines[2]).toMatch(/^curl --unix-socket .*\/v1\/batch /);
    let signatures = 0;
    for (const line of lines) {
      // Async: bash and curl are processes of their own, but keep this one's loop free anyway.
      const out = await new Promise<string>((resolve, reject) => {
        const p = spawn('bash', ['-c', line.replace(':9443/', `:${tlsPort}/`)], { cwd: project });
        let text = '';
        p.stdout.on('data', (d: Buffer) => (text += d.toString()));
        p.on('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`${line}: exit ${code}`))));
      });
      const answer = JSON.parse(out) as { signature?: string; results?: { result: { signature: string } }[] };
      for (const signature of answer.results ? answer.results.map((r) => r.result.signature) : [answer.signature!]) {
        writeFileSync(join(project, 'curl.sig'), Buffer.from(signature, 'base64'));
        expect(openssl(['dgst', '-sha256', '-verify', join(project, 'ec-curl.pem'), '-signature', join(project, 'curl.sig'), join(project, 'invoice')]).toString()).toContain('Verified OK');
        signatures++;
      }
    }
    expect(signatures).toBe(4);
  });

  it('the CLI examples run, line by line, through that daemon; OpenSSL accepts the signature they make', () => {
    writeFileSync(join(project, 'invoice.xml'), '<invoice id="2026-0042"/>');
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(project, 'tls.key'), '-out', join(project, 'tls.crt'), '-subj', '/CN=tls', '-days', '2']);
    openssl(['pkcs12', '-export', '-inkey', join(project, 'tls.key'), '-in', join(project, 'tls.crt'), '-out', join(project, 'server.p12'), '-passout', 'pass:readme-p12']);
    const outputs: string[] = [];
    for (const line of only('runs each line').body.split('\n')) {
      const [bin, ...args] = line.split(' ');
      expect(bin).toBe('pkcs11-supervisor');
      const r = run(process.execPath, [join(ROOT, 'dist/src/cli.js'), ...args], { P12_PASS: 'readme-p12' });
      expect(r.code, `${line}\n${r.err}`).toBe(0);
      outputs.push(r.out);
    }
    expect(JSON.parse(outputs[0]!).slots.signer.state).toBe('logged_in');
    expect(JSON.parse(outputs[6]!)).toMatchObject({ kty: 'EC', crv: 'P-384' });
    expect(outputs[7]).toMatch(/^ok: \d+ records, chain intact/);
    const pem = run(process.execPath, [join(ROOT, 'dist/src/cli.js'), 'pubkey', '--slot', 'signer', '--key', 'ec', '--format', 'pem', '--out', 'ec.pem']);
    expect(pem.code, pem.err).toBe(0);
    expect(openssl(['dgst', '-sha256', '-verify', join(project, 'ec.pem'), '-signature', join(project, 'invoice.sig'), join(project, 'invoice.xml')]).toString()).toContain('Verified OK');
  });
});

describe('the error tables', () => {
  /** Each row's codes with the statuses it gives them: one for the row, or one per code in its order ("400 (over HTTP also 408, …)": the first). */
  async function errorRows(file: string): Promise<[string, number, number][]> {
    const { HTTP_STATUS } = await import('../dist/src/index.js');
    const out: [string, number, number][] = [];
    for (const row of readFileSync(file, 'utf8').split('\n').filter((l) => /^\| `[A-Z0-9_]+`/.test(l))) {
      const [codes, http] = row.split(' | ');
      const names = [...codes!.matchAll(/`([A-Z0-9_]+)`/g)].map((m) => m[1]!);
      const statuses = http!.split(' (')[0]!.split(', ').map(Number);
      expect(statuses.length === 1 || statuses.length === names.length, row).toBe(true);
      names.forEach((n, i) => out.push([n, statuses.length === 1 ? statuses[0]! : statuses[i]!, HTTP_STATUS[n as keyof typeof HTTP_STATUS]]));
    }
    return out;
  }

  it('docs/api.md lists every error code once, with the HTTP status the service answers it with', async () => {
    const { ERROR_CODES } = await import('../dist/src/index.js');
    const rows = await errorRows('docs/api.md');
    expect(rows.map(([code]) => code).sort()).toEqual([...ERROR_CODES].sort());
    for (const [code, documented, answered] of rows) expect(documented, code).toBe(answered);
  });

  it("the README's short table gives each code the status the service answers it with", async () => {
    const rows = await errorRows('README.md');
    expect(rows.length).toBeGreaterThan(5);
    for (const [code, documented, answered] of rows) expect(documented, code).toBe(answered);
  });
});
