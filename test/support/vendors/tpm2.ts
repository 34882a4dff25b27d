/**
 * tpm2-pkcs11 on a software TPM. swtpm emulates the TPM on a loopback port; tpm2-abrmd, the
 * access broker and resource manager, sits in front of it on a private D-Bus session bus,
 * because without a resource manager tpm2_ptool runs the TPM out of object slots
 * (TPM_RC_OBJECT_MEMORY) and only one client may connect at a time. tpm2_ptool writes the
 * token into a store directory of the suite's own.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commandMissing, type Vendor, type VendorToken } from './vendor.js';

const MODULE = '/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so';
const TABRMD_TCTI = '/usr/lib/x86_64-linux-gnu/libtss2-tcti-tabrmd.so.0';
const LABEL = 'p11sup-tpm';

/** Two consecutive free loopback ports (server, control) for swtpm. */
function freePortPair(): number {
  for (let i = 0; i < 20; i++) {
    // Below Linux's ephemeral range (32768 and up): a port there may be bound by an outgoing
    // connection, which a connect probe cannot see, and swtpm's bind then fails.
    const port = 20000 + Math.floor(Math.random() * 6000) * 2;
    // Nothing answers a connect: bash's /dev/tcp probes without leaving a listener bound.
    const ok = [port, port + 1].every((p) => spawnSync('bash', ['-c', `(exec 3<>/dev/tcp/127.0.0.1/${p}) 2>/dev/null`]).status !== 0);
    if (ok) return port;
  }
  throw new Error('no free port pair for swtpm');
}

/** Starts swtpm on a free port pair, trying another pair if one was taken meanwhile; returns the server port. */
function startSwtpm(dir: string): number {
  for (let attempt = 1; ; attempt++) {
    const port = freePortPair();
    try {
      execFileSync('swtpm', [
        'socket', '--tpm2', '--tpmstate', `dir=${dir}`,
        '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`,
        '--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
        '--flags', 'not-need-init,startup-clear', '--daemon', '--pid', `file=${join(dir, 'swtpm.pid')}`,
      ], { stdio: 'pipe' });
      return port;
    } catch (e) {
      if (attempt >= 5 || !String((e as { stderr?: unknown }).stderr).includes('Address already in use')) throw e;
    }
  }
}

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function until(what: string, ok: () => boolean, timeoutMs = 10_000): void {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`tpm2 set-up: ${what} did not come up within ${timeoutMs} ms`);
    sleep(100);
  }
}

export const tpm2: Vendor = {
  name: 'tpm2-pkcs11',
  packages: 'libtpm2-pkcs11-1, swtpm, tpm2-abrmd',
  unavailable() {
    if (!existsSync(MODULE)) return `${MODULE} is missing (apt-get install libtpm2-pkcs11-1)`;
    if (!existsSync(TABRMD_TCTI)) return `${TABRMD_TCTI} is missing (apt-get install libtss2-tcti-tabrmd0)`;
    const missing = commandMissing('swtpm', 'tpm2-abrmd', 'tpm2_ptool', 'tpm2_getrandom', 'dbus-daemon');
    return missing ? `${missing} is not on PATH` : null;
  },
  provision(): VendorToken {
    const dir = mkdtempSync(join(tmpdir(), 'p11sup-tpm-'));
    const children: ChildProcess[] = [];
    const pids: number[] = [];
    const close = () => {
      for (const c of children) c.kill('SIGTERM');
      for (const p of pids) {
        try {
          process.kill(p, 'SIGTERM');
        } catch {
          /* already gone */
        }
      }
      rmSync(dir, { recursive: true, force: true });
    };
    try {
      const port = startSwtpm(dir);
      pids.push(Number(readFileSync(join(dir, 'swtpm.pid'), 'utf8')));

      const [address, busPid] = execFileSync('dbus-daemon', ['--session', '--fork', '--print-address=1', '--print-pid=1'], { encoding: 'utf8' }).trim().split('\n');
      pids.push(Number(busPid));
      const busName = `com.intel.tss2.Tabrmd.p11sup${port}`;
      const env = {
        DBUS_SESSION_BUS_ADDRESS: address!,
        TPM2_PKCS11_TCTI: `tabrmd:bus_type=session,bus_name=${busName}`,
        TPM2TOOLS_TCTI: `tabrmd:bus_type=session,bus_name=${busName}`,
        TPM2_PKCS11_STORE: join(dir, 'store'),
      };
      mkdirSync(env.TPM2_PKCS11_STORE);
      const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { env: { ...process.env, ...env }, stdio: 'pipe', encoding: 'utf8' });
      children.push(
        spawn('tpm2-abrmd', [`--tcti=swtpm:host=127.0.0.1,port=${port}`, '--session', '--allow-root', `--dbus-name=${busName}`, '--flush-all'], {
          env: { ...process.env, ...env },
          stdio: 'ignore',
        }),
      );
      until('tpm2-abrmd', () => spawnSync('tpm2_getrandom', ['4', '--hex'], { env: { ...process.env, ...env }, stdio: 'ignore' }).status === 0);

      const pin = randomBytes(6).toString('hex');
      const soPin = randomBytes(6).toString('hex');
      run('tpm2_ptool', ['init']);
      run('tpm2_ptool', ['addtoken', '--pid=1', `--label=${LABEL}`, `--sopin=${soPin}`, `--userpin=${pin}`]);
      // tpm2_ptool stores --id as the bytes of the string: "01" becomes CKA_ID 3031.
      run('tpm2_ptool', ['addkey', `--label=${LABEL}`, '--key-label=rsa', '--id=01', `--userpin=${pin}`, '--algorithm=rsa2048']);
      run('tpm2_ptool', ['addkey', `--label=${LABEL}`, '--key-label=ec', '--id=02', `--userpin=${pin}`, '--algorithm=ecc256']);
      return {
        module: MODULE,
        env,
        label: LABEL,
        pin,
        soPin,
        keys: { rsa: { label: 'rsa', id: '3031' }, ec: { label: 'ec', id: '3032' } },
        close,
      };
    } catch (e) {
      close();
      throw e;
    }
  },
};
