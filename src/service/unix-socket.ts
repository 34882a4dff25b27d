/**
 * The local socket's file: bound with a umask that leaves it private until it has its
 * configured mode (no moment where anyone else may connect), a stale socket left by a crashed
 * daemon replaced, a live one (another daemon) or a file that is not a socket never touched,
 * and removed at shutdown if it is still ours.
 */
import { chmodSync, lstatSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { connect, type Server } from 'node:net';
import { dirname } from 'node:path';
import { Pkcs11SupervisorError } from '../model/errors.js';

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

async function clearStale(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) throw refuse(path, 'exists and is not a socket; it is left alone');
  if (await answers(path)) throw refuse(path, 'another daemon is listening on it');
  unlinkSync(path);
}

export interface BoundSocket {
  /** Closes the listener and removes the file if it is still the one bound here. */
  close(): Promise<void>;
}

export async function listenUnix(server: Server, path: string, mode: string): Promise<BoundSocket> {
  mkdirSync(dirname(path), { recursive: true });
  await clearStale(path);
  const fileMode = parseInt(mode, 8);
  // The bind happens inside listen(): the umask must be in place for exactly that call.
  const previous = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => (server.off('error', reject), resolve()));
    });
  } finally {
    process.umask(previous);
  }
  chmodSync(path, fileMode);
  const ino = statSync(path).ino;
  return {
    async close() {
      await new Promise<void>((r) => server.close(() => r()));
      try {
        if (lstatSync(path).ino === ino) unlinkSync(path);
      } catch {
        // already removed (Node unlinks what it bound)
      }
    },
  };
}
