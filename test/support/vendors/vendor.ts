/**
 * A PKCS#11 implementation the conformance suite runs against: how to tell whether it is
 * here, and how to make a token on it with known PINs and keys, as its operator would.
 */
import { execFileSync } from 'node:child_process';

export interface KeyRef {
  label: string;
  id: string;
}

export interface VendorToken {
  module: string;
  /** Environment the module reads at C_Initialize (store paths, TCTI, config files). */
  env: Record<string, string>;
  label: string;
  pin: string;
  soPin: string;
  /** The provisioned keys: an RSA-2048 key always; a P-256 key when the token can make one. */
  keys: { rsa: KeyRef; ec?: KeyRef };
  /** Stops what the provisioning started (daemons, emulators). */
  close(): void;
}

export interface Vendor {
  /** Short name: the compatibility table's column and the P11SUP_VENDORS entry. */
  name: string;
  /** The Debian packages it comes from, for the table and for error messages. */
  packages: string;
  /** Why it cannot run here, or null. */
  unavailable(): string | null;
  provision(): VendorToken;
}

/** OpenSC's pkcs11-tool against a provisioned token: the cross-check from another process. */
export function pkcs11Tool(tok: VendorToken, args: string[], login: 'user' | 'so' | null = 'user'): string {
  const auth = login === 'user' ? ['--login', '--pin', tok.pin] : login === 'so' ? ['--login', '--login-type', 'so', '--so-pin', tok.soPin] : [];
  return execFileSync('pkcs11-tool', ['--module', tok.module, '--token-label', tok.label, ...auth, ...args], {
    env: { ...process.env, ...tok.env },
    encoding: 'utf8',
    stdio: 'pipe',
  });
}

export function commandMissing(...commands: string[]): string | null {
  for (const c of commands) {
    try {
      execFileSync('sh', ['-c', `command -v ${c}`], { stdio: 'ignore' });
    } catch {
      return c;
    }
  }
  return null;
}
