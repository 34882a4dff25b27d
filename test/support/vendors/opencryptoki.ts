/**
 * openCryptoki's software token (slot 3 of the Debian package's opencryptoki.conf). Its
 * store is system-wide (/var/lib/opencryptoki/swtok, no override), and every process reaches
 * it through the pkcsslotd daemon, which must run as root. The suite restarts the daemon on a
 * wiped store so each run starts from the factory state (SO PIN 87654321, uninitialized), and
 * refuses to wipe a token someone else initialized.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { commandMissing, pkcs11Tool, type Vendor, type VendorToken } from './vendor.js';

const MODULE = '/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so';
const STORE = '/var/lib/opencryptoki/swtok';
const FACTORY_SO_PIN = '87654321';
const LABEL = 'p11sup-ock';

function tokenLabel(): string | null {
  const out = spawnSync('pkcs11-tool', ['--module', MODULE, '--list-token-slots'], { encoding: 'utf8' }).stdout ?? '';
  if (/uninitialized/.test(out)) return null;
  return /token label\s*:\s*(.*)$/m.exec(out)?.[1]?.trim() ?? null;
}

function stopSlotDaemon(): void {
  spawnSync('pkill', ['-x', 'pkcsslotd']);
  for (let i = 0; i < 50 && spawnSync('pgrep', ['-x', 'pkcsslotd']).status === 0; i++) execFileSync('sleep', ['0.1']);
}

function startSlotDaemon(): void {
  // The daemon's socket directory; the Debian package does not create it outside systemd.
  execFileSync('install', ['-d', '-o', 'root', '-g', 'pkcs11', '-m', '0770', '/run/opencryptoki']);
  execFileSync('pkcsslotd');
}

export const opencryptoki: Vendor = {
  name: 'openCryptoki',
  packages: 'opencryptoki',
  unavailable() {
    if (!existsSync(MODULE)) return `${MODULE} is missing (apt-get install opencryptoki)`;
    const missing = commandMissing('pkcsslotd', 'pkcs11-tool');
    if (missing) return `${missing} is not on PATH`;
    if (process.getuid?.() !== 0) return 'pkcsslotd must be started as root';
    return null;
  },
  provision(): VendorToken {
    stopSlotDaemon(); // one left running may hold a store from before
    startSlotDaemon();
    const found = tokenLabel();
    if (found !== null && found !== LABEL) {
      throw new Error(`the openCryptoki soft token is initialized as "${found}"; the suite only re-initializes its own ("${LABEL}"). Set P11SUP_VENDORS to leave openCryptoki out.`);
    }
    stopSlotDaemon();
    for (const f of existsSync(STORE) ? readdirSync(STORE) : []) rmSync(join(STORE, f), { recursive: true, force: true });
    // The token does not make its object directory again: without it, token objects are
    // "created" but never written, and other processes never see them.
    execFileSync('install', ['-d', '-o', 'root', '-g', 'pkcs11', '-m', '0770', join(STORE, 'TOK_OBJ')]);
    startSlotDaemon();

    // PINs of 4 to 8 characters: the token's ulMinPinLen / ulMaxPinLen.
    const pin = randomBytes(4).toString('hex');
    const soPin = randomBytes(4).toString('hex');
    const tok: VendorToken = {
      module: MODULE,
      env: {},
      label: LABEL,
      pin,
      soPin: FACTORY_SO_PIN,
      keys: { rsa: { label: 'rsa', id: '01' } },
      close: () => {},
    };
    const tool = (args: string[]) => execFileSync('pkcs11-tool', ['--module', MODULE, ...args], { stdio: 'pipe' });
    tool(['--init-token', '--label', LABEL, '--so-pin', FACTORY_SO_PIN]);
    pkcs11Tool(tok, ['--init-pin', '--new-pin', pin], 'so');
    pkcs11Tool(tok, ['--change-pin', '--new-pin', soPin, '--session-rw'], 'so');
    tok.soPin = soPin;
    // The token flags a PIN the SO set as "to be changed"; the user changes it once, as on a real card.
    tok.pin = randomBytes(4).toString('hex');
    tool(['--token-label', LABEL, '--login', '--pin', pin, '--change-pin', '--new-pin', tok.pin]);
    // This build has no EC key generation (C_GetMechanismList has no CKM_EC_KEY_PAIR_GEN): RSA only.
    pkcs11Tool(tok, ['--keypairgen', '--key-type', 'rsa:2048', '--label', 'rsa', '--id', '01', '--usage-sign']);
    return tok;
  },
};
