/**
 * The local socket's file: bound under a name of its own with a umask that leaves it private,
 * given its configured mode, then linked into place, so the path never names a socket without
 * its mode and never replaces a file that appeared meanwhile. A stale socket left by a crashed
 * daemon is replaced; a live one (another daemon) or a file that is not a socket is never
 * touched. A socket removed while the daemon runs (a tmp cleaner, an operator's `rm`) is bound
 * again, and at shutdown the file is removed only if it is still ours: Node removes the path it
 * bound when it closes, which here is the temporary name, never a file someone else put at the path.
 */
import { chmodSync, linkSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { connect, type Server } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { Pkcs11SupervisorError } from '../model/errors.js';
import { fitsSocketPath } from '../model/socket-path.js';

/** How often the path is checked for the socket still being there. */
const CHECK_INTERVAL_MS = 5_000;

function refuse(path: string, why: string): Pkcs11SupervisorError {
  return new Pkcs11SupervisorError('CONFIG_INVALID', `api.unix.path ${path}: ${why}`, { issues: [{ path: 'api.unix.path', message: why }] });
}

/** Whether a daemon answers on the socket at `path`. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => (probe.destroy(), resolve(true)));
    probe.once('error', () => resolve(false));
  });
}

function inodeAt(path: string): { ino: number; socket: boolean } | null {
  try {
    const st = lstatSync(path);
    return { ino: st.ino, socket: st.isSocket() };
  } catch {
    return null;
  }
}

async function clearStale(path: string): Promise<void> {
  const there = inodeAt(path);
  if (!there) return;
  if (!there.socket) throw refuse(path, 'exists and is not a socket; it is left alone');
  if (await answers(path)) throw refuse(path, 'another daemon is listening on it');
  unlinkSync(path);
}

/** Listens on `path` with `mode` from the start; the socket's inode. */
async function bind(server: Server, path: string, mode: number): Promise<number> {
  const temporary = `${path}.${process.pid}.new`;
  // A path near the system's limit has no room for a longer name: bound in place, as Node would.
  const at = fitsSocketPath(temporary) ? temporary : path;
  if (at !== path) rmSocket(at);
  // The bind happens inside listen(): the umask must be in place for exactly that call.
  const previous = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(at, () => (server.off('error', reject), resolve()));
    });
  } finally {
    process.umask(previous);
  }
  chmodSync(at, mode);
  const { ino } = inodeAt(at)!;
  if (at === path) return ino;
  try {
    linkSync(at, path); // unlike rename, fails if something is at the path by now
  } catch (e) {
    server.close();
    throw (e as NodeJS.ErrnoException).code === 'EEXIST' ? refuse(path, 'another file was put there while the daemon started; it is left alone') : e;
  } finally {
    rmSocket(at);
  }
  return ino;
}

function rmSocket(path: string): void {
  if (inodeAt(path)?.socket) unlinkSync(path);
}

export interface BoundSocket {
  /** Binds the socket again now if its file was removed (SIGHUP; also checked every few seconds). */
  check(): Promise<void>;
  /** Stops checking (the daemon stops accepting). */
  stop(): void;
  /** Closes the listener and removes the file if it is still the one bound here. */
  close(): Promise<void>;
}

export async function listenUnix(server: Server, path: string, mode: string, log: Logger): Promise<BoundSocket> {
  mkdirSync(dirname(path), { recursive: true });
  await clearStale(path);
  const fileMode = parseInt(mode, 8);
  let ino = await bind(server, path, fileMode);
  let warned = false;
  let stopped = false;
  let binding: Promise<void> | null = null;
  const check = async () => {
    const there = inodeAt(path);
    if (stopped || there?.ino === ino) return;
    if (binding) return binding;
    if (there) {
      if (!warned) log.error({ path }, 'api.unix.path: another file replaced the socket; it is left alone, and local clients cannot reach this daemon until it is removed');
      warned = true;
      return;
    }
    warned = false;
    // The listening handle only: requests under way on the removed socket are answered (Node
    // closes its idle connections; their clients connect again, to the new one).
    server.close();
    binding = bind(server, path, fileMode)
      .then((next) => {
        ino = next;
        if (stopped) server.close();
        log.warn({ path }, 'api.unix.path: the socket was removed while the daemon ran; it is bound again');
      })
      .catch((e: Error) => log.error({ path, err: e.message }, 'api.unix.path: the socket was removed and cannot be bound again'))
      .finally(() => (binding = null));
    return binding;
  };
  const timer = setInterval(() => void check(), CHECK_INTERVAL_MS);
  timer.unref();
  const stop = () => {
    stopped = true;
    clearInterval(timer);
  };
  return {
    check,
    stop,
    async close() {
      stop();
      await new Promise<void>((r) => server.close(() => r()));
      if (inodeAt(path)?.ino === ino) unlinkSync(path);
    },
  };
}
