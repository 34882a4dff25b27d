import { beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { configFor, createToken, pkcs11Tool, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';
import { exportPublicKey, openssl, opensslVerifies, tmpFile } from './support/openssl.js';

let td: TokenDir;
let tok: TestToken;
let configFile: string;

function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, ['dist/src/cli.js', '--config', configFile, ...args], { env: { ...process.env, CLI_PIN: tok.pin, ...env }, encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

beforeAll(() => {
  td = tokenDir();
  tok = createToken(td, 'cli');
  configFile = join(td.dir, 'config.json');
  writeFileSync(configFile, JSON.stringify(configFor(td, { s: { token: { label: 'cli' }, pin: { env: 'CLI_PIN' } } })));
});

describe('pkcs11-supervisor CLI', () => {
  it('status shows the slot logged in', () => {
    const r = cli(['status']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).slots.s.state).toBe('logged_in');
  });

  it('keys generate, keys list, sign, verify and pubkey work together and agree with openssl', () => {
    const gen = cli(['keys', 'generate', '--slot', 's', '--algorithm', 'EC-P256', '--label', 'from-cli', '--id', 'c1']);
    expect(gen.code, gen.err).toBe(0);
    expect(JSON.parse(gen.out)).toMatchObject({ label: 'from-cli', id: 'c1', sensitive: true, extractable: false });
    const list = JSON.parse(cli(['keys', 'list', '--slot', 's', '--class', 'privateKey']).out);
    expect(list.s.map((d: { label: string }) => d.label).sort()).toEqual(['ec', 'from-cli', 'rsa']);

    const data = tmpFile('doc', 'sign me');
    const sigFile = tmpFile('sig');
    expect(cli(['sign', '--slot', 's', '--key', 'id:c1', '--mechanism', 'ECDSA-SHA256', '--in', data, '--out', sigFile]).code).toBe(0);
    expect(opensslVerifies(exportPublicKey(td, 'cli', 'c1'), 'ECDSA-SHA256', Buffer.from('sign me'), readFileSync(sigFile))).toBe(true);
    expect(cli(['verify', '--slot', 's', '--key', 'id:c1', '--mechanism', 'ECDSA-SHA256', '--in', data, '--signature', sigFile])).toMatchObject({ code: 0, out: 'valid\n' });
    const other = tmpFile('doc2', 'not this');
    expect(cli(['verify', '--slot', 's', '--key', 'id:c1', '--mechanism', 'ECDSA-SHA256', '--in', other, '--signature', sigFile])).toMatchObject({ code: 1, out: 'invalid\n' });

    const b64 = cli(['sign', '--slot', 's', '--key', 'rsa', '--mechanism', 'RSA-PSS-SHA256', '--in', data]);
    expect(opensslVerifies(exportPublicKey(td, 'cli', '01'), 'RSA-PSS-SHA256', Buffer.from('sign me'), Buffer.from(b64.out.trim(), 'base64'))).toBe(true);
    // What sign printed, saved as it was printed, verifies; changed by one character, it does not.
    const printed = tmpFile('sig.b64', b64.out);
    expect(cli(['verify', '--slot', 's', '--key', 'rsa', '--mechanism', 'RSA-PSS-SHA256', '--in', data, '--signature', printed])).toMatchObject({ code: 0, out: 'valid\n' });
    const changed = tmpFile('sig2.b64', `${b64.out[0] === 'A' ? 'B' : 'A'}${b64.out.slice(1)}`);
    expect(cli(['verify', '--slot', 's', '--key', 'rsa', '--mechanism', 'RSA-PSS-SHA256', '--in', data, '--signature', changed])).toMatchObject({ code: 1, out: 'invalid\n' });

    const pem = cli(['pubkey', '--slot', 's', '--key', 'label:from-cli']).out;
    expect(pem.trim()).toBe(readFileSync(exportPublicKey(td, 'cli', 'c1'), 'utf8').trim());
    expect(JSON.parse(cli(['pubkey', '--slot', 's', '--key', 'id:c1', '--format', 'jwk']).out)).toMatchObject({ kty: 'EC', crv: 'P-256', kid: 'c1' });
  });

  it('keys import takes a PKCS#12 with its password from the environment', () => {
    const key = tmpFile('k.pem');
    const crt = tmpFile('c.pem');
    openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', crt, '-subj', '/CN=cli', '-days', '2']);
    const p12 = tmpFile('x.p12');
    openssl(['pkcs12', '-export', '-inkey', key, '-in', crt, '-out', p12, '-passout', 'pass:s3cret']);
    const r = cli(['keys', 'import', '--slot', 's', '--label', 'imported', '--id', 'c2', '--p12', p12, '--password-env', 'P12_PASS'], { P12_PASS: 's3cret' });
    expect(r.code, r.err).toBe(0);
    expect(JSON.parse(r.out).map((d: { class: string }) => d.class)).toEqual(['privateKey', 'publicKey', 'certificate']);
    expect(pkcs11Tool(td, 'cli', null, ['--list-objects', '--type', 'cert'])).toContain('label:      imported');
  });

  it('pin change --direct logs in with the current PIN it is given when the slot has no PIN of its own, and the token then takes only the new one', () => {
    const noSource = { CLI_PIN: '' };
    expect(cli(['pin', 'change', '--slot', 's', '--pin-env', 'OLD', '--new-pin-env', 'NEW'], { ...noSource, OLD: tok.pin, NEW: 'direct-new-1' })).toMatchObject({ code: 0, err: expect.stringContaining('is changed') });
    expect(pkcs11Tool(td, 'cli', 'direct-new-1', ['--list-objects', '--type', 'privkey'])).toContain('label:      ec');
    expect(() => pkcs11Tool(td, 'cli', tok.pin, ['--list-objects'])).toThrow(/CKR_PIN_INCORRECT/);
    expect(cli(['pin', 'change', '--slot', 's', '--pin-env', 'OLD', '--new-pin-env', 'NEW'], { ...noSource, OLD: 'direct-new-1', NEW: tok.pin }).code).toBe(0);
    expect(cli(['status']).code).toBe(0);
  });

  it('usage errors exit 2; typed errors exit 3 with their code', () => {
    expect(cli(['frobnicate']).code).toBe(2);
    const incomplete = cli(['sign', '--slot', 's']);
    expect(incomplete.code).toBe(2);
    // The command's own usage, not every command's.
    expect(incomplete.err).toMatch(/^pkcs11-supervisor: --key is required\n\nusage: pkcs11-supervisor \[--config FILE\] sign --slot S/);
    expect(incomplete.err).not.toMatch(/keys generate/);
    const format = cli(['pubkey', '--slot', 's', '--key', 'ec', '--format', 'pkcs1']);
    expect([format.code, format.err.split('\n')[0]]).toEqual([2, 'pkcs11-supervisor: --format is pem, jwk or der']);
    const directory = cli(['audit', 'verify', td.dir]);
    expect([directory.code, directory.err]).toEqual([5, `pkcs11-supervisor: cannot read the audit trail ${td.dir}: EISDIR\n`]);
    const r = cli(['sign', '--slot', 'nope', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', tmpFile('d', 'x')]);
    expect(r.code).toBe(3);
    expect(r.err).toMatch(/\[SLOT_NOT_FOUND\]/);
    const bad = cli(['status'], { CLI_PIN: 'wrong' });
    expect(bad.code).toBe(0);
    expect(JSON.parse(bad.out).slots.s.workers[0].lastError.code).toBe('PIN_INCORRECT');
    expect(bad.out + bad.err).not.toContain(tok.pin);
  });

  it('keys delete destroys what the key names; a key the config names needs --force; keys import refuses a duplicate unless --replace', () => {
    expect(cli(['keys', 'generate', '--slot', 's', '--algorithm', 'EC-P256', '--label', 'short-lived', '--id', 'e1']).code).toBe(0);
    const deleted = cli(['keys', 'delete', '--slot', 's', '--key', 'pkcs11:object=short-lived;id=%E1']);
    expect(deleted.code, deleted.err).toBe(0);
    expect(JSON.parse(deleted.out)).toEqual({ destroyed: 2 });
    expect(pkcs11Tool(td, 'cli', tok.pin, ['--list-objects'])).not.toContain('short-lived');
    const guarded = cli(['keys', 'delete', '--slot', 's', '--key', 'ec']);
    expect(guarded.code).toBe(3);
    expect(guarded.err).toMatch(/\[KEY_IN_USE\].*force/);
    const key = tmpFile('dup.key');
    const crt = tmpFile('dup.crt');
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', crt, '-subj', '/CN=dup', '-days', '2']);
    const importing = ['keys', 'import', '--slot', 's', '--label', 'dup', '--private-key', key, '--cert', crt];
    expect(cli(importing).code).toBe(0);
    const twice = cli(importing);
    expect(twice.code).toBe(3);
    expect(twice.err).toMatch(/\[KEY_IN_USE\].*replace/);
    expect(cli([...importing, '--replace']).code).toBe(0);
  });

  it('follows the conventions: --version, per-command --help, - for stdin and stdout, one-line errors with documented exit codes', () => {
    const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
    expect(cli(['--version']).out.trim()).toBe(pkg.version);
    const help = cli(['sign', '--help']);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/^usage: pkcs11-supervisor \[--config FILE\] sign --slot S/);
    expect(help.out).not.toMatch(/keys generate/);
    expect(cli(['keys', 'import', '--help']).out).toMatch(/keys import --slot S --label L/);
    // A family's --help: each of its commands.
    expect(cli(['pin', '--help']).out.match(/^usage: pkcs11-supervisor \[--config FILE\] pin (init|change) /gm)).toEqual(['usage: pkcs11-supervisor [--config FILE] pin init ', 'usage: pkcs11-supervisor [--config FILE] pin change ']);
    expect(cli(['keys', 'import', '--help']).out).not.toMatch(/keys generate/);

    // - : the data from stdin, the signature to stdout; OpenSSL accepts it.
    const r = spawnSync(process.execPath, ['dist/src/cli.js', '--config', configFile, 'sign', '--slot', 's', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', '-', '--out', '-'], {
      env: { ...process.env, CLI_PIN: tok.pin },
      input: 'from a pipe',
    });
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(opensslVerifies(exportPublicKey(td, 'cli', '02'), 'ECDSA-SHA256', Buffer.from('from a pipe'), r.stdout)).toBe(true);

    const missing = cli(['sign', '--slot', 's', '--key', 'ec', '--mechanism', 'ECDSA-SHA256', '--in', join(td.dir, 'no-such-file')]);
    expect(missing.code).toBe(5);
    expect(missing.err).toMatch(/^pkcs11-supervisor: cannot read the input .*no-such-file: ENOENT\n$/);
    const unwritable = cli(['pubkey', '--slot', 's', '--key', 'ec', '--out', join(td.dir, 'no', 'such', 'dir.pem')]);
    expect(unwritable.code).toBe(5);
    expect(unwritable.err).not.toMatch(/\n\s+at /);
    const unset = cli(['keys', 'import', '--slot', 's', '--label', 'x', '--p12', join(td.dir, 'none.p12'), '--password-env', 'NOT_SET_ANYWHERE']);
    expect(unset.code).toBe(2);
    expect(unset.err).toMatch(/NOT_SET_ANYWHERE is not set/);
    expect(cli(['--config']).code).toBe(2);
  });
});

describe('the daemon command line', () => {
  const daemon = (args: string[]) => spawnSync(process.execPath, ['dist/src/daemon.js', ...args], { encoding: 'utf8' });

  it('--help and --version answer; a bad option is usage (2); a refused config is 78', () => {
    const help = daemon(['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/Exit codes: 0 .* 78 /s);
    expect(daemon(['--version']).stdout.trim()).toBe((JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version);
    const bad = daemon(['--frobnicate']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).not.toMatch(/\n\s+at /);
    const refused = daemon(['--config', join(td.dir, 'missing.json')]);
    expect(refused.status).toBe(78);
    expect(refused.stderr).toMatch(/\[CONFIG_INVALID\]/);
  });
});
