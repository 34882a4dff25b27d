/** Builds the fault-injecting PKCS#11 module with the system compiler before any test runs. */
import { execFileSync } from 'node:child_process';
import { mkdirSync, statSync } from 'node:fs';
import { resolve } from 'node:path';

export const FAULT_SOURCE = resolve('test/fault-module/fault-pkcs11.c');
export const FAULT_MODULE = resolve('var/test/fault-pkcs11.so');

export default function setup(): void {
  mkdirSync(resolve('var/test'), { recursive: true });
  let fresh = false;
  try {
    fresh = statSync(FAULT_MODULE).mtimeMs >= statSync(FAULT_SOURCE).mtimeMs;
  } catch {
    // not built yet
  }
  if (!fresh) {
    execFileSync('cc', ['-shared', '-fPIC', '-O2', '-Wall', '-Werror', '-I/usr/include/p11-kit-1', '-o', FAULT_MODULE, FAULT_SOURCE, '-ldl', '-lpthread'], { stdio: 'inherit' });
  }
}
