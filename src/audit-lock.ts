/**
 * One writer per audit trail. Two writers on one file (replicas sharing a volume, the CLI's
 * `--direct` next to the daemon, two supervisors in one process) would each chain from their
 * own last record, and the trail would no longer verify. `<path>.lock` names its writer's
 * host and pid and is refreshed while held; a lock whose writer is gone is taken over: on the
 * same host, a pid that no longer runs (or this process's own, left by an earlier container
 * with the same pid); from another host, one not refreshed for STALE_MS.
 */
import { hostname } from 'node:os';
import { readFileSync, realpathSync, renameSync, rmSync, statSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fieldRefused, Pkcs11SupervisorError } from './model/errors.js';

const REFRESH_MS = 10_000;
const STALE_MS = 60_000;
/** The trails this process writes: a second writer here is refused without looking at the file. */
const held = new Set<string>();

export interface AuditLock {
  release(): void;
}

/** No room for the lock file: a full disk (or a file size limit) must not keep the daemon from starting. */
const NO_ROOM = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

/** `warn` is told when the lock cannot be written for want of room: it is taken once there is some. */
export function lockAuditTrail(path: string, warn: (message: string) => void): AuditLock {
  let lockPath: string;
  try {
    lockPath = `${realPath(path)}.lock`;
  } catch (e) {
    throw unwritable(path, e as Error);
  }
  if (held.has(lockPath)) throw inUse(path, 'this process (another supervisor in it)');
  const mine = JSON.stringify({ host: hostname(), pid: process.pid });
  let taken = take(path, lockPath, mine);
  if (!taken) warn(`audit trail: no room for ${lockPath}; another writer of the trail goes unnoticed until there is`);
  held.add(lockPath);
  const refresh = setInterval(() => {
    try {
      if (taken) {
        const now = new Date();
        utimesSync(lockPath, now, now);
      } else if ((taken = take(path, lockPath, mine))) {
        warn(`audit trail: ${lockPath} written now that there is room`);
      }
    } catch (e) {
      // The directory unwritable for a moment (the trail reports that itself), or, taken late,
      // another writer that started meanwhile: say so, as the trail will not verify.
      if (e instanceof Pkcs11SupervisorError) warn(e.message);
    }
  }, REFRESH_MS);
  refresh.unref();
  return {
    release() {
      if (!held.delete(lockPath)) return;
      clearInterval(refresh);
      try {
        if (readFileSync(lockPath, 'utf8') === mine) unlinkSync(lockPath);
      } catch {
        // already gone
      }
    },
  };
}

/** Makes the lock, or takes over one whose writer is gone; false when there is no room for it. */
function take(path: string, lockPath: string, mine: string): boolean {
  try {
    writeFileSync(lockPath, mine, { flag: 'wx', mode: 0o600 });
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? '';
    if (NO_ROOM.has(code)) return false;
    if (code !== 'EEXIST') throw unwritable(path, e as Error);
  }
  const holder = holderOf(lockPath);
  if (holder) throw inUse(path, holder);
  // Gone: take it over with a rename, so no reader ever sees half a lock.
  const tmp = `${lockPath}.${process.pid}`;
  try {
    writeFileSync(tmp, mine, { mode: 0o600 });
    renameSync(tmp, lockPath);
    return true;
  } catch (e) {
    rmSync(tmp, { force: true });
    if (NO_ROOM.has((e as NodeJS.ErrnoException).code ?? '')) return false;
    throw unwritable(path, e as Error);
  }
}

/** The file a path names, through any symlinks (to it or to its directory): two names for one trail share one lock. */
function realPath(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return join(realpathSync(dirname(path)), basename(path)); // not made yet
  }
}

/** Who holds the lock, in words; null when its writer is gone. */
function holderOf(lockPath: string): string | null {
  let holder: { host?: unknown; pid?: unknown };
  let age: number;
  try {
    holder = JSON.parse(readFileSync(lockPath, 'utf8')) as typeof holder;
    age = Date.now() - statSync(lockPath).mtimeMs;
  } catch {
    return null; // unreadable or half-written by a writer that died while making it
  }
  const { host, pid } = holder;
  if (typeof host !== 'string' || typeof pid !== 'number') return null;
  if (host === hostname()) return pid !== process.pid && running(pid) ? `process ${pid} on this host` : null;
  return age < STALE_MS ? `process ${pid} on host ${host} (its lock was refreshed ${Math.round(age / 1000)} s ago)` : null;
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function inUse(path: string, holder: string): Pkcs11SupervisorError {
  const hint = holder.startsWith('this process') ? '' : ` (if that writer is gone, remove ${path}.lock)`;
  return fieldRefused('audit.path', `${path} is written by ${holder}: two writers would each chain their own records and the trail would not verify; give each daemon a trail of its own${hint}`);
}

function unwritable(path: string, e: Error): Pkcs11SupervisorError {
  return fieldRefused('audit.path', `cannot create ${path}.lock: ${(e as NodeJS.ErrnoException).code ?? e.message}`);
}
