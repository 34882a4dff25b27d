/** A daemon run as a process of its own, as `npm start` and the container run it. */
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/**
 * Its start line (which names its listeners), once it logs it. Its log is read to the end: a
 * reader that went away would cost the daemon its log (EPIPE).
 */
export function started(daemon: ChildProcess): Promise<{ tls?: string; http?: string; socket?: string }> {
  return new Promise((resolve, reject) => {
    createInterface({ input: daemon.stdout! }).on('line', (line) => {
      const entry = JSON.parse(line) as { msg?: string; tls?: string; http?: string; socket?: string };
      if (entry.msg === 'pkcs11-supervisor started') resolve(entry);
    });
    daemon.once('exit', (code) => reject(new Error(`the daemon exited (${code}) before it started`)));
  });
}
