/**
 * A call as the mailbox and the slot workers see it: what it asks, and what it needs to run.
 * All plain data: the mailbox dispatches every call the same way, by its task.
 */
import type { Secret } from './model/secret.js';
import type { WorkerTask } from './model/protocol.js';

/**
 * What a call asks of a slot worker: a task for its session thread, or one of the login
 * changes the worker makes through its machine. The PIN of a login is the call's own `pin`.
 */
export type SlotTask =
  | WorkerTask
  | { op: 'userLogin' }
  | { op: 'soLogin' }
  | { op: 'tokenLogout' }
  /** A task on the session that holds the Security Officer's login. */
  | { op: 'asSecurityOfficer'; task: WorkerTask }
  /** The health probe: the session's state as the token reports it, followed by the machine. */
  | { op: 'healthCheck' };

/** What a worker needs to know about a call; the router's Call satisfies it. */
export interface CallContext {
  readonly deadline: number;
  readonly pin: Secret | undefined;
  readonly needsLogin: boolean;
  /** Set once the caller has an answer; a call not yet started is then dropped. */
  readonly settled: boolean;
}

/**
 * What a call needs before it can run, as plain data: an object with a getter closing over a
 * batch's calls would keep those calls alive past young-generation GCs.
 */
export type CallNeeds = Pick<CallContext, 'deadline' | 'pin' | 'needsLogin'> & {
  /** An operator's login() call: it may offer a PIN the token refused before (pin-chain.ts). */
  explicit?: boolean;
};

export interface CallSpec {
  task: SlotTask;
  needsLogin: boolean;
  pin: Secret | undefined;
  timeoutMs: number;
  signal: AbortSignal | undefined;
  /**
   * Runs alone on the slot: it waits in line, then until every running call is done, and
   * nothing else starts until it ends (Security Officer work: one user type per token). It
   * goes to the worker holding the Security Officer's login, if one does.
   */
  exclusive?: boolean;
}

export interface Delivered<T> {
  value: T;
  worker: number;
  enqueuedAt: number;
  startedAt: number;
}
