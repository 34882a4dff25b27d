/**
 * The daemon checks its audit trail in a thread of its own: a trail of a few hundred MiB takes
 * seconds of hashing, which on the main thread would hold up every call in flight.
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { verifyAuditFiles, type AuditVerdict } from './audit-record.js';
import { Pkcs11SupervisorError } from './model/errors.js';

interface Job {
  auditTrail: string[];
}

if (!isMainThread && (workerData as Job | null)?.auditTrail) parentPort!.postMessage(verifyAuditFiles((workerData as Job).auditTrail));

/** verifyAuditFiles, in a thread of its own; a file that cannot be read is AUDIT_UNAVAILABLE. */
function verifyAuditInThread(paths: string[]): Promise<AuditVerdict> {
  return new Promise((resolve, reject) => {
    const job: Job = { auditTrail: paths };
    const thread = new Worker(fileURLToPath(import.meta.url), { workerData: job });
    const cannotRead = (why: string) => reject(new Pkcs11SupervisorError('AUDIT_UNAVAILABLE', `cannot read the audit trail ${paths.join(', ')}: ${why}`));
    thread.once('message', resolve);
    thread.once('error', (e) => cannotRead(e.message));
    thread.once('exit', (code) => cannotRead(`its checking thread exited (${code})`)); // after an answer: settled already
  });
}

/** Per trail: the check running (settled once done), and the one callers wait for after it. */
const running = new Map<string, Promise<unknown>>();
const waiting = new Map<string, Promise<AuditVerdict>>();

/**
 * A trail's checks one at a time: callers who ask while one runs share the next, which starts
 * when it ends (after their records are on disk). A monitor asking every few seconds about a
 * trail that takes longer to check would otherwise pile up threads that each read all of it.
 */
export function checkTrail(path: string): Promise<AuditVerdict> {
  let next = waiting.get(path);
  if (!next) {
    next = (running.get(path) ?? Promise.resolve()).then(() => {
      waiting.delete(path);
      const check = verifyAuditInThread([path]);
      running.set(path, check.catch(() => undefined));
      return check;
    });
    waiting.set(path, next);
  }
  return next;
}
