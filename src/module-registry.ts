/**
 * PKCS#11 modules are process-wide: C_Initialize once, C_Finalize once, and the environment
 * a module reads at initialization (SOFTHSM2_CONF, ...) is the process's. This registry is
 * the single owner that knows who still uses a library, so only the last user finalizes it.
 */
import { Pkcs11SupervisorError } from './errors.js';

interface ModuleUse {
  users: number;
  env: Record<string, string>;
}

const inUse = new Map<string, ModuleUse>();

export function acquireModule(path: string, env: Record<string, string>, field: string): void {
  for (const [otherPath, use] of inUse) {
    for (const [k, v] of Object.entries(env)) {
      if (k in use.env && use.env[k] !== v) {
        throw new Pkcs11SupervisorError(
          'CONFIG_INVALID',
          `${field}: sets ${k}="${v}" but module ${otherPath} is already initialized in this process with ${k}="${use.env[k]}"; a module's environment is process-wide`,
          { issues: [{ path: field, message: `conflicting ${k}` }] },
        );
      }
    }
  }
  // Set before any worker thread starts: the native library reads the real process environment.
  for (const [k, v] of Object.entries(env)) process.env[k] = v;
  const use = inUse.get(path);
  if (use) use.users++;
  else inUse.set(path, { users: 1, env: { ...env } });
}

/** Returns true when this was the last user: the caller then finalizes the module. */
export function releaseModule(path: string): boolean {
  const use = inUse.get(path);
  if (!use) return false;
  use.users--;
  if (use.users > 0) return false;
  inUse.delete(path);
  return true;
}
