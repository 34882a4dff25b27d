/**
 * The session thread's code: one thread, one TokenSession. Replies are values with timing measured
 * here, so the main thread can tell time spent on the token from time spent queued.
 */
import { performance } from 'node:perf_hooks';
import { TokenSession } from './token-session.js';
import { toFailure, WorkerFailure } from './failure.js';
import * as objects from './object-ops.js';
import * as keys from './key-creation.js';
import * as crypto from './crypto-ops.js';
import { oaepDecryptable } from './oaep-check.js';
import { SESSION_LOST_CKRS } from '../src/model/ckr.js';
import { CLAIM_STARTED, type CertificateCandidates, type KeySelector, type WorkerFault, type WorkerReply, type WorkerTask } from '../src/model/protocol.js';
import { serveLoop, type ServeStart } from './handover/serve-loop.js';
import { ReplyPacker, unpackBatch, type PackableTask, type PackedBatch, type PackedReplies } from './handover/batch-codec.js';

const session = new TokenSession();
const faultsEnabled = process.env.PKCS11_SUPERVISOR_FAULTS === '1';

function now(): number {
  return performance.timeOrigin + performance.now();
}

function inject(fault: WorkerFault): null {
  if (!faultsEnabled) throw new Error('fault injection is disabled (set PKCS11_SUPERVISOR_FAULTS=1 in tests only)');
  switch (fault.kind) {
    case 'exit':
      process.exit(70);
    // falls through (never reached)
    case 'throw':
      // Thrown outside the task, so nothing catches it: the thread dies as on a real bug.
      queueMicrotask(() => {
        throw new Error('injected uncaught error in session worker');
      });
      return null;
    case 'block':
      // Blocks the thread the way a hung native call does.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, fault.ms);
      return null;
  }
}

/** The key's public key, or null where the token keeps none by that name (a CA certificate stored alone, a card with no public key objects). */
function publicKeyOf(key: KeySelector): Uint8Array | null {
  try {
    return session.publicKey(key).spkiDer;
  } catch (e) {
    if (e instanceof WorkerFailure && e.code === 'KEY_NOT_FOUND') return null;
    throw e;
  }
}

function dispatch(task: WorkerTask): unknown {
  switch (task.op) {
    case 'open':
      return session.open(task);
    case 'login':
      return session.login(task.pin, task.userType);
    case 'logout':
      return session.logout();
    case 'initPin':
      return session.initPin(task.pin);
    case 'setPin':
      return session.setPin(task.oldPin, task.newPin);
    case 'sessionInfo':
      return session.info();
    case 'sign':
    case 'encrypt':
    case 'decrypt':
    case 'mac':
      return new Uint8Array(packedCall(task)); // a copy: the answer is a view on the session's own buffer
    case 'verify':
      return session.verify(task);
    case 'oaepDecryptable':
      return oaepDecryptable(session, task.key, task.mechanism, task.labelled, task.contextPin, true);
    case 'verifyMac':
      return crypto.verifyMac(session, task);
    case 'wrapKey':
      return crypto.wrapKey(session, task);
    case 'unwrapKey':
      return crypto.unwrapKey(session, task);
    case 'deriveKey':
      return new Uint8Array(crypto.deriveKey(session, task));
    case 'generateSecretKey':
      return crypto.generateSecretKey(session, task.spec);
    case 'publicKey':
      return session.publicKey(task.key);
    case 'certificate':
      return { ders: objects.certificatesNamed(session, task.cert ?? task.key), spki: publicKeyOf(task.key) } satisfies CertificateCandidates;
    case 'certificates':
      return objects.certificates(session, task.limit);
    case 'findObjects':
      return objects.findObjects(session, task.query, task.limit);
    case 'findObjectsPage':
      return objects.findObjectsPage(session, task.query, task.offset, task.pageSize);
    case 'generateKeyPair':
      return keys.generateKeyPair(session, task.spec);
    case 'generateRandom':
      return objects.generateRandom(session, task.length);
    case 'importObjects':
      return keys.importObjects(session, task.objects, task.replace === true);
    case 'destroyObjects':
      return objects.destroyObjects(session, task.query, task.on);
    case 'close':
      return session.close();
    case 'fault':
      return inject(task.fault);
    case 'batch':
      throw new WorkerFailure('BAD_INPUT', 'batches do not nest');
  }
}

/**
 * Runs one call, timed from `startedAt` (now, unless the caller read the clock already), its
 * failure as a value. The task is passed in, not closed over: no closure per call on the sign path.
 */
function timed<T>(call: (task: T) => unknown, task: T, startedAt = now()): WorkerReply {
  try {
    return { ok: true, value: call(task), startedAt, endedAt: now() };
  } catch (e) {
    const error = toFailure(e);
    if (error.ckr === 'CKR_GENERAL_ERROR' && session.tokenAnswers()) error.moduleAnswers = true;
    return { ok: false, error, startedAt, endedAt: now() };
  }
}

function runOne(task: WorkerTask): WorkerReply {
  return timed(dispatch, task);
}

/**
 * Runs a batch's calls in order, handing each reply to `take` as it ends. A call cancelled
 * (deadline, abort, close) before its turn never reaches the token; after a lost session the rest
 * is not run (the main thread retries those).
 */
function inOrder<T extends WorkerTask>(tasks: T[], claims: Int32Array, runCall: (task: T) => WorkerReply, take: (i: number, reply: WorkerReply) => void): void {
  for (let i = 0; i < tasks.length; i++) {
    if (Atomics.compareExchange(claims, i, 0, CLAIM_STARTED) !== 0) continue;
    const reply = runCall(tasks[i]!);
    take(i, reply);
    if (!reply.ok && reply.error.ckr && SESSION_LOST_CKRS.has(reply.error.ckr)) break;
  }
}

function runBatch(tasks: WorkerTask[], claims: Int32Array): (WorkerReply | null)[] {
  const replies: (WorkerReply | null)[] = new Array(tasks.length).fill(null);
  inOrder(tasks, claims, runOne, (i, reply) => (replies[i] = reply));
  return replies;
}

/** A call of a packed batch: its answer may be a view on the session's own buffer (ReplyPacker copies it at once). */
function packedCall(task: PackableTask): Uint8Array {
  switch (task.op) {
    case 'sign':
      return session.sign(task);
    case 'encrypt':
      return crypto.encrypt(session, task);
    case 'decrypt':
      return crypto.decrypt(session, task);
    case 'mac':
      return crypto.mac(session, task);
  }
}

/**
 * A packed batch: each answer goes into the reply as it ends, straight from the session's buffer
 * (see ReplyPacker). One clock reading a call: a call starts when the one before it ended.
 */
function runPacked(batch: PackedBatch): { packed: PackedReplies; startedAt: number; endedAt: number } {
  const startedAt = now();
  const tasks = unpackBatch(batch);
  const replies = new ReplyPacker(batch);
  let mark = startedAt;
  inOrder(tasks, batch.claims, (task) => {
    const reply = timed(packedCall, task, mark);
    mark = reply.endedAt;
    return reply;
  }, (i, reply) => replies.add(i, reply));
  return { packed: replies.finish(), startedAt, endedAt: now() };
}

function run(task: WorkerTask): WorkerReply {
  if (task.op !== 'batch') return runOne(task);
  const startedAt = now();
  return { ok: true, value: runBatch(task.tasks, task.claims), startedAt, endedAt: now() };
}

/** The one Piscina task this thread runs: it serves the session thread's calls until told to stop. */
export function serve(start: ServeStart): Promise<void> {
  return serveLoop(start, { run, runPacked });
}
