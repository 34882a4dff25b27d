/**
 * PKCS#11 modules are process-wide: C_Initialize once, C_Finalize once, and the environment
 * a module reads at initialization (SOFTHSM2_CONF, ...) is the process's. This registry is
 * the single owner of each library: it holds its own dlopen reference from the main thread
 * for as long as any slot uses it, so a worker thread that dies (and dlcloses its handle)
 * can never unload the library and wipe every other session and the login with it. The
 * last release finalizes the module.
 */
import type * as P11 from 'pkcs11js';
import pkcs11js from 'pkcs11js';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { Pkcs11SupervisorError } from './model/errors.js';
import type { TokenSelector } from './model/protocol.js';
import { tokenMatches } from './model/token-match.js';

interface ModuleUse {
  users: number;
  env: Record<string, string>;
  lib: P11.PKCS11;
  /** This registry's C_Initialize was the first in the process: only then is C_Finalize ours to call. */
  ownsInitialization: boolean;
}

const inUse = new Map<string, ModuleUse>();

/** Libraries this registry initialized and could not finalize (a thread was inside): still ours, with OS locking. */
const leftInitialized = new Set<string>();

/**
 * Threads let go of while inside a call of the module (wedged), per library. While any is,
 * the module is neither finalized, reset nor unloaded: the thread will come back into code
 * and state that must still be there, or the whole process crashes.
 */
const wedgedInside = new Map<string, number>();

export function threadAbandoned(path: string): () => void {
  wedgedInside.set(path, (wedgedInside.get(path) ?? 0) + 1);
  let gone = false;
  return () => {
    if (gone) return;
    gone = true;
    wedgedInside.set(path, wedgedInside.get(path)! - 1);
  };
}

export function hasWedgedThreads(path: string): boolean {
  return (wedgedInside.get(path) ?? 0) > 0;
}

/** Libraries loaded through a pinned descriptor: the path configured → the path everyone loads. */
const pinned = new Map<string, string>();

/**
 * Opens the library file once, hashes it through that descriptor and has everyone load
 * /proc/self/fd/N: the bytes that were checked are the bytes that run, even if the file on
 * disk is swapped afterwards.
 */
function pinLibrary(path: string, sha256: string, name: string): string {
  const known = pinned.get(path);
  if (known) return known;
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new Pkcs11SupervisorError('MODULE_LOAD_FAILED', `modules.${name}.path: cannot open ${path}: ${(e as Error).message}`, {
      issues: [{ path: `modules.${name}.path`, message: (e as Error).message }],
    });
  }
  const actual = createHash('sha256').update(readFileSync(fd)).digest('hex');
  if (actual !== sha256.toLowerCase()) {
    closeSync(fd);
    throw new Pkcs11SupervisorError('MODULE_REJECTED', `modules.${name}.sha256: ${path} has SHA-256 ${actual}, not the pinned ${sha256.toLowerCase()}; refusing to load it`, {
      issues: [{ path: `modules.${name}.sha256`, message: `the library's SHA-256 is ${actual}` }],
    });
  }
  const loadPath = `/proc/self/fd/${fd}`;
  pinned.set(path, loadPath);
  return loadPath;
}

export interface AcquiredModule {
  /** The path every thread loads the library by (the pinned descriptor when sha256 is set). */
  loadPath: string;
  /**
   * Someone else in this process called C_Initialize first, with flags this registry cannot
   * know. Without CKF_OS_LOCKING_OK a module may run without locks, and calls from several
   * threads then corrupt it (SoftHSM2: CKR_GENERAL_ERROR, then a crash).
   */
  initializedElsewhere: boolean;
}

/** Takes a use of a library. */
export function acquireModule(configuredPath: string, env: Record<string, string>, name: string, sha256?: string): AcquiredModule {
  const loadPath = sha256 ? pinLibrary(configuredPath, sha256, name) : configuredPath;
  return { loadPath, initializedElsewhere: !acquireLoaded(loadPath, env, name) };
}

/** Returns whether this registry initialized the library (or it failed to initialize: the workers report why). */
function acquireLoaded(path: string, env: Record<string, string>, name: string): boolean {
  for (const [otherPath, use] of inUse) {
    for (const [k, v] of Object.entries(env)) {
      if (k in use.env && use.env[k] !== v) {
        const field = `modules.${name}.env.${k}`;
        throw new Pkcs11SupervisorError(
          'CONFIG_INVALID',
          `${field}: "${v}" conflicts with "${use.env[k]}", which module ${otherPath} was initialized with in this process; a module's environment is process-wide`,
          { issues: [{ path: field, message: `conflicts with ${k}="${use.env[k]}"` }] },
        );
      }
    }
  }
  // Set before any worker thread starts: the native library reads the real process environment.
  for (const [k, v] of Object.entries(env)) process.env[k] = v;
  const use = inUse.get(path);
  if (use) {
    use.users++;
    return use.ownsInitialization;
  }
  const lib = new pkcs11js.PKCS11();
  try {
    lib.load(path);
  } catch (e) {
    throw new Pkcs11SupervisorError('MODULE_LOAD_FAILED', `modules.${name}.path: cannot load PKCS#11 library ${path}: ${(e as Error).message}`, {
      issues: [{ path: `modules.${name}.path`, message: (e as Error).message }],
    });
  }
  // The first C_Initialize in a process decides the threading model for everyone: make it
  // ours, with OS locking, before any worker thread calls the module.
  let ownsInitialization = true;
  try {
    lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (e) {
    ownsInitialization = (e as Error).message !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED' || leftInitialized.has(path);
  }
  leftInitialized.delete(path);
  inUse.set(path, { users: 1, env: { ...env }, lib, ownsInitialization });
  return ownsInitialization;
}

/** The last release finalizes the module (after every session of it is closed) and drops the owner's reference. */
export function releaseModule(path: string): void {
  const use = inUse.get(path);
  if (!use || --use.users > 0) return;
  inUse.delete(path);
  // A thread still inside the module would crash the process when it returns: leave the
  // module loaded and initialized; process exit ends both.
  if (hasWedgedThreads(path)) {
    if (use.ownsInitialization) leftInitialized.add(path);
    return;
  }
  // Initialized by someone else in the process: finalizing would pull it from under them.
  if (!use.ownsInitialization) {
    use.lib.close();
    return;
  }
  try {
    use.lib.C_Finalize();
  } catch {
    // CKR_CRYPTOKI_NOT_INITIALIZED: no worker ever initialized it.
  }
  use.lib.close();
}

/** Closes the session a dead worker thread left behind; session handles are process-wide. */
export function closeOrphanSession(path: string, handleHex: string): void {
  try {
    inUse.get(path)?.lib.C_CloseSession(Buffer.from(handleHex, 'hex'));
  } catch {
    // Already gone with its token, or the module was reset.
  }
}

/**
 * Whether a token matching the selector is present, asked from the main thread through the
 * owner's handle. Used only by the health probe of a failed slot.
 */
export function tokenPresent(path: string, sel: TokenSelector): boolean {
  const lib = inUse.get(path)?.lib;
  if (!lib) return false;
  try {
    lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch {
    // Already initialized: the usual case. Not after a module reset whose C_Initialize failed,
    // which is when this call brings the module back.
  }
  try {
    const slots = lib.C_GetSlotList(true);
    if ('slotIndex' in sel) return slots[sel.slotIndex] !== undefined;
    return slots.some((s) => tokenMatches(sel, lib.C_GetTokenInfo(s)));
  } catch {
    return false;
  }
}

/**
 * Resets a broken module for every user in the process: C_Finalize, then C_Initialize, from
 * the owner. Every session of it is gone afterwards; the caller tells the workers to re-open.
 */
export function reinitializeModule(path: string): boolean {
  const lib = inUse.get(path)?.lib;
  if (!lib || hasWedgedThreads(path)) return false;
  try {
    lib.C_Finalize();
  } catch {
    // Not initialized (any more): initializing is all that is needed.
  }
  try {
    lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    return true;
  } catch (e) {
    return (e as Error).message === 'CKR_CRYPTOKI_ALREADY_INITIALIZED';
  }
}

/**
 * A closed gate holds every new task for a module's threads; C_Finalize must not run while
 * any thread is inside a call of the module (the spec leaves it undefined; SoftHSM2 crashes).
 */
const gates = new Map<string, Promise<void>>();

export function moduleGate(path: string): Promise<void> | undefined {
  return gates.get(path);
}

/**
 * Resolves once no thread of `workers` is inside a call of the module (polled every 2 ms), or
 * after `limitMs` with one still inside (a wedged call): whether they all came out.
 */
export async function outOfModule(workers: () => Iterable<{ readonly threadBusy: boolean }>, limitMs = 5_000): Promise<boolean> {
  const inside = () => {
    for (const w of workers()) if (w.threadBusy) return true;
    return false;
  };
  const deadline = Date.now() + limitMs;
  while (inside() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
  return !inside();
}

/** Closes the gate of a module; call the returned function to open it again. */
export function closeModuleGate(path: string): () => void {
  let open!: () => void;
  gates.set(path, new Promise<void>((r) => (open = r)));
  return () => {
    gates.delete(path);
    open();
  };
}
