/** What a slot worker is given by its slot: its config, its PIN chain and token domain, and whom it tells what happened. */
import type { RestartPolicy } from './restart-policy.js';
import type { HandleKind } from './model/ckr.js';
import type { SlotState } from './model/slot-state.js';
import type { PinChain, PinOrigin } from './pin-chain.js';
import type { ContextLogins } from './context-logins.js';
import type { SlotConfig } from './config-schema.js';
import type { TokenDomain } from './token-domain.js';
import type { OpenReport, WorkerError } from './model/protocol.js';
import type { SlotWorker } from './slot-worker.js';

export interface SlotWorkerHooks {
  opened(worker: SlotWorker, report: OpenReport): void;
  stateChanged(worker: SlotWorker, from: SlotState, to: SlotState): void;
  loginAttempted(worker: SlotWorker, origin: PinOrigin, outcome: 'ok' | string, userType?: 'user' | 'so' | 'context'): void;
  handleAllocationFailed(worker: SlotWorker, handle: HandleKind, error: WorkerError): void;
}

export interface SlotWorkerOptions {
  slot: string;
  index: number;
  config: SlotConfig;
  modulePath: string;
  pins: PinChain;
  /** The token is logged in as its Security Officer through one of the slot's workers. */
  soActive: () => boolean;
  /** The slot's token domain (it changes once the slot learns its token): logins one at a time, logouts in its quiet. */
  domain: () => TokenDomain;
  restart: RestartPolicy;
  hooks: SlotWorkerHooks;
  /** A call found the module itself broken (CKR_GENERAL_ERROR): the supervisor resets it, once for all its slots. */
  moduleBroken(ckr: string): void;
  /** The slot's keys that ask for the PIN on every use, and how their signs run. */
  contextLogins: ContextLogins;
}
