import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig, loadConfigFile, configJsonSchema, startSupervisor, Pkcs11SupervisorError } from '../dist/src/index.js';

const MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const valid = () => ({
  modules: { soft: { path: MODULE } },
  slots: { signer: { module: 'soft', token: { label: 't' }, pin: { env: 'SIGNER_PIN' }, keys: { ec: { label: 'ec', id: '02' } } } },
});

function issuesOf(input: unknown): { path: string; message: string }[] {
  try {
    parseConfig(input);
  } catch (e) {
    expect(e).toBeInstanceOf(Pkcs11SupervisorError);
    expect((e as Pkcs11SupervisorError).code).toBe('CONFIG_INVALID');
    return (e as Pkcs11SupervisorError).issues!;
  }
  throw new Error('config was accepted');
}

describe('config validation', () => {
  it('accepts a minimal config and fills the documented defaults', () => {
    const c = parseConfig(valid());
    const s = c.slots.signer!;
    // A token slot is lazy by default (the daemon starts without it plugged in) and inherits sessionTimeoutMs.
    expect(s).toMatchObject({ type: 'token', poolSize: 1, queueLimit: 1000, callTimeoutMs: 30000, reauthentication: 'prompt', lazy: true, idleTimeoutMs: 300000 });
    expect(c.sessionTimeoutMs).toBe(300000);
    expect(s.restart).toEqual({ maxRestarts: 5, windowMs: 60000, backoffInitialMs: 100, backoffMaxMs: 5000 });
    expect(c.metrics).toEqual({ enabled: true, host: '127.0.0.1', port: 9464, maxConnections: 64, idleTimeoutMs: 10_000 });
  });

  it('the shipped config/default.json validates', () => {
    expect(loadConfigFile('config/default.json').slots.signer!.keys.ec).toEqual({ label: 'demo-ec', id: '02' });
  });

  const cases: [string, (c: any) => void, string, RegExp][] = [
    ['a token slot with a pool', (c) => (c.slots.signer.poolSize = 2), 'slots.signer.poolSize', /exactly one worker/],
    ['a PIN written in the config', (c) => (c.slots.signer.pin = '123456'), 'slots.signer.pin', /never goes in the config/],
    ['a slot naming an unknown module', (c) => (c.slots.signer.module = 'nope'), 'slots.signer.module', /not in "modules"/],
    ['a missing token selector', (c) => delete c.slots.signer.token, 'slots.signer.token', /.+/],
    ['an unknown field', (c) => (c.slots.signer.polSize = 2), 'slots.signer', /polSize/],
    ['a negative queue limit', (c) => (c.slots.signer.queueLimit = -1), 'slots.signer.queueLimit', /.+/],
    ['a key id that is not hex', (c) => (c.slots.signer.keys.ec.id = 'xyz'), 'slots.signer.keys.ec.id', /hex/],
    ['a key with neither label nor id', (c) => (c.slots.signer.keys.ec = {}), 'slots.signer.keys.ec', /label, its id/],
    ['an unknown slot type', (c) => (c.slots.signer.type = 'usb'), 'slots.signer.type', /.+/],
    ['a bad reauthentication policy', (c) => (c.slots.signer.reauthentication = 'retry'), 'slots.signer.reauthentication', /.+/],
    ['no slots', (c) => (c.slots = {}), 'slots', /at least one slot/],
    ['a string timeout', (c) => (c.slots.signer.callTimeoutMs = '30s'), 'slots.signer.callTimeoutMs', /.+/],
  ];
  for (const [name, mutate, path, message] of cases) {
    it(`refuses ${name}, naming ${path}`, () => {
      const c = valid();
      mutate(c);
      const issues = issuesOf(c);
      const hit = issues.find((i) => i.path === path);
      expect(hit, JSON.stringify(issues)).toBeDefined();
      expect(hit!.message).toMatch(message);
    });
  }

  it('lists every offending field at once', () => {
    const c: any = valid();
    c.slots.signer.poolSize = 3;
    c.slots.signer.module = 'x';
    expect(issuesOf(c).map((i) => i.path).sort()).toEqual(['slots.signer.module', 'slots.signer.poolSize']);
  });

  it('allows a pool on an hsm slot', () => {
    const c: any = valid();
    c.slots.signer.type = 'hsm';
    c.slots.signer.poolSize = 4;
    expect(parseConfig(c).slots.signer!.poolSize).toBe(4);
  });

  it('reports unreadable and non-JSON config files as CONFIG_INVALID', async () => {
    expect(() => loadConfigFile('/nonexistent/config.json')).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
    expect(() => loadConfigFile('package-lock.json.not')).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
    await expect(startSupervisor({ config: { modules: {} } as never })).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
    await expect(startSupervisor({} as never)).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });

  it('a config file saved with a UTF-8 byte order mark (Notepad, PowerShell) reads as the same file without one', () => {
    const text = readFileSync('config/default.json', 'utf8');
    const file = join(mkdtempSync(join(tmpdir(), 'p11sup-bom-')), 'config.json');
    writeFileSync(file, `\uFEFF${text}`);
    expect(loadConfigFile(file)).toEqual(loadConfigFile('config/default.json'));
  });

  it('config/schema.json is the schema the code validates with', () => {
    expect(JSON.parse(readFileSync('config/schema.json', 'utf8'))).toEqual(JSON.parse(JSON.stringify(configJsonSchema())));
  });
});
