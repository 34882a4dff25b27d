/**
 * The bench's SoftHSM2 token, made fresh in a directory of its own so nothing else disturbs the
 * numbers: ECDSA P-256 and RSA-2048 signing keys (labels ec, rsa), an AES-256 key whose bytes
 * the bench knows (aes, for the ciphertexts it decrypts) and an RSA-2048 decryption pair
 * (rsa-enc). SOFTHSM2_CONF and BENCH_PIN are set for this process and its children.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MODULE = '/usr/lib/softhsm/libsofthsm2.so';

export interface BenchToken {
  dir: string;
  conf: string;
  pin: string;
  aesKey: Buffer;
}

export function makeBenchToken(): BenchToken {
  const dir = mkdtempSync(join(tmpdir(), 'p11sup-bench-'));
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${dir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  process.env.SOFTHSM2_CONF = conf;
  const pin = randomBytes(4).toString('hex');
  process.env.BENCH_PIN = pin;
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'bench', '--so-pin', randomBytes(4).toString('hex'), '--pin', pin], { stdio: 'ignore' });
  const tool = (args: string[]) => execFileSync('pkcs11-tool', ['--module', MODULE, '--token-label', 'bench', '--login', '--pin', pin, ...args], { stdio: 'ignore' });
  for (const [type, label, id] of [['rsa:2048', 'rsa', '01'], ['EC:prime256v1', 'ec', '02']] as const) tool(['--keypairgen', '--key-type', type, '--label', label, '--id', id]);
  const aesKey = randomBytes(32);
  writeFileSync(join(dir, 'aes.bin'), aesKey);
  tool(['--write-object', join(dir, 'aes.bin'), '--type', 'secrkey', '--key-type', 'AES:32', '--label', 'aes', '--id', '03', '--usage-decrypt', '--sensitive']);
  tool(['--keypairgen', '--key-type', 'rsa:2048', '--label', 'rsa-enc', '--id', '04', '--usage-decrypt']);
  return { dir, conf, pin, aesKey };
}
