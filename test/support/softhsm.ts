/**
 * Real SoftHSM2 tokens for tests: a token directory of its own per test file (never the
 * system one), tokens made by softhsm2-util and keys by OpenSC's pkcs11-tool, as an
 * operator would. PINs are random per token.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MODULE = '/usr/lib/softhsm/libsofthsm2.so';

export interface TokenDir {
  dir: string;
  conf: string;
  env: NodeJS.ProcessEnv;
  labels: string[];
}

export interface TestToken {
  label: string;
  pin: string;
  soPin: string;
  serial: string;
}

export type KeySpec = { kind: 'rsa:2048' | 'rsa:3072' | 'EC:prime256v1' | 'EC:secp384r1' | 'EC:secp521r1' | 'EC:secp256k1' | 'EC:edwards25519'; label: string; id: string };

export const DEMO_KEYS: KeySpec[] = [
  { kind: 'rsa:2048', label: 'rsa', id: '01' },
  { kind: 'EC:prime256v1', label: 'ec', id: '02' },
];

export function tokenDir(): TokenDir {
  const dir = mkdtempSync(join(tmpdir(), 'p11sup-'));
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${dir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  return { dir, conf, env: { ...process.env, SOFTHSM2_CONF: conf }, labels: [] };
}

/**
 * Labels in one token dir must not be prefixes of each other: OpenSC's pkcs11-tool matches
 * --token-label by prefix, so "ops" would also pick "ops-anon", in directory order.
 */
export function createToken(td: TokenDir, label: string, keys: KeySpec[] = DEMO_KEYS): TestToken {
  const clash = td.labels.find((l) => l.startsWith(label) || label.startsWith(l));
  if (clash) throw new Error(`token label "${label}" and "${clash}" share a prefix; pkcs11-tool could pick the wrong one`);
  td.labels.push(label);
  const pin = randomBytes(4).toString('hex');
  const soPin = randomBytes(4).toString('hex');
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', pin], { env: td.env, stdio: 'pipe' });
  for (const k of keys) pkcs11Tool(td, label, pin, ['--keypairgen', '--key-type', k.kind, '--label', k.label, '--id', k.id, '--usage-sign']);
  const info = execFileSync('softhsm2-util', ['--show-slots'], { env: td.env, encoding: 'utf8' });
  const block = info.split(/\n(?=Slot )/).find((b) => new RegExp(`Label:\\s+${label}\\s*$`, 'm').test(b)) ?? '';
  const serial = /Serial number:\s+(\S+)/.exec(block)?.[1] ?? '';
  return { label, pin, soPin, serial };
}

export function pkcs11Tool(td: TokenDir, label: string, pin: string | null, args: string[]): string {
  const login = pin === null ? [] : ['--login', '--pin', pin];
  return execFileSync('pkcs11-tool', ['--module', MODULE, '--token-label', label, ...login, ...args], { env: td.env, encoding: 'utf8', stdio: 'pipe' });
}

/** A config for slots on this token dir's module; each slot's fields may be overridden. */
export function configFor(td: TokenDir, slots: Record<string, Record<string, unknown>>) {
  return {
    modules: { soft: { path: MODULE, env: { SOFTHSM2_CONF: td.conf } } },
    slots: Object.fromEntries(
      // Eager by default in tests (a token slot is lazy by default in production).
      Object.entries(slots).map(([name, s]) => [name, { module: 'soft', lazy: false, keys: { rsa: { label: 'rsa', id: '01' }, ec: { label: 'ec', id: '02' } }, ...s }]),
    ),
    metrics: { enabled: false },
    log: { level: 'silent' as const },
  };
}
