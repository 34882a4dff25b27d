import { EventEmitter } from 'node:events';
import type { LogoutCause, SlotState, SlotError } from './model/slot-state.js';
import type { ErrorCode } from './model/errors.js';
import type { HandleKind } from './model/ckr.js';
import type { PinOrigin } from './pin-chain.js';
import type { TlsExpiry } from './service/tls-expiry.js';

export interface StateChangeEvent {
  slot: string;
  worker: number;
  from: SlotState;
  to: SlotState;
  error: SlotError | null;
}

export interface RestartEvent {
  slot: string;
  worker: number;
  /** Restarts of this slot's workers inside the restart window, this one included. */
  attempt: number;
  backoffMs: number;
  reason: string;
}

export interface SlotFailedEvent {
  slot: string;
  worker: number;
  reason: string;
}

export interface CallCompletedEvent {
  slot: string;
  worker: number | null;
  op: string;
  mechanism: string | null;
  outcome: 'ok' | ErrorCode;
  /** Milliseconds between the call entering the mailbox and reaching a worker. */
  queuedMs: number;
  /** Milliseconds the worker thread spent on the call's PKCS#11 work (0 if it never ran). */
  execMs: number;
  /** Epoch ms at which the worker thread began and ended the PKCS#11 work (null if it never ran). */
  startedAt: number | null;
  endedAt: number | null;
}

export interface LoginEvent {
  slot: string;
  worker: number;
  origin: PinOrigin;
  outcome: 'ok' | string;
  /** `context`: a C_Login(CKU_CONTEXT_SPECIFIC) for one signature or decryption with a key that asks for the PIN on every use. */
  userType: 'user' | 'so' | 'context';
}

export interface LogoutEvent {
  slot: string;
  worker: number;
  by: LogoutCause;
}

export interface ModuleResetEvent {
  module: string;
  ckr: string;
  ok: boolean;
}

/** A session or object handle the module could not allocate (CKR_SESSION_COUNT, CKR_HOST_MEMORY, CKR_DEVICE_MEMORY). */
export interface HandleAllocationFailureEvent {
  slot: string;
  worker: number;
  handle: HandleKind;
  ckr: string;
  /** The PKCS#11 function that failed. */
  fn: string | null;
}

/** C_WaitForSlotEvent reported a slot: a token was inserted or removed there. */
export interface SlotEvent {
  /** The module's library path. */
  module: string;
  /** The slot ID the module reported, hex (native byte order). */
  slotId: string;
}

export interface AuditWriteErrorEvent {
  path: string;
  message: string;
}

export interface AccessDeniedEvent {
  slot: string;
  op: string;
  /** The caller's id, or null when the call named none. */
  principal: string | null;
}

/** One request to the service API, answered (or refused, or its client gone). */
export interface ApiRequestEvent {
  /** The method (`sign`, …), `openapi`, or `unknown` for no route. */
  route: string;
  /** `ok`, or the error code of the problem document sent. */
  code: 'ok' | ErrorCode;
  status: number;
  seconds: number;
}

/** A config reload (SIGHUP): applied, or refused with the reason, the old config kept. */
export interface ConfigReloadedEvent {
  /** The config in force afterwards (configHash). */
  hash: string;
  ok: boolean;
  /** Slots whose key refs changed. */
  rekeyed: string[];
  reason: string | null;
}

export interface SupervisorEvents {
  configReloaded: [ConfigReloadedEvent];
  apiRequest: [ApiRequestEvent];
  /** The TLS listener read its files (at start, after a rotation): when each stops working. */
  tlsFilesLoaded: [TlsExpiry];
  accessDenied: [AccessDeniedEvent];
  moduleReset: [ModuleResetEvent];
  stateChange: [StateChangeEvent];
  restart: [RestartEvent];
  slotFailed: [SlotFailedEvent];
  callCompleted: [CallCompletedEvent];
  login: [LoginEvent];
  logout: [LogoutEvent];
  auditWriteError: [AuditWriteErrorEvent];
  handleAllocationFailure: [HandleAllocationFailureEvent];
  slotEvent: [SlotEvent];
}

export class SupervisorEmitter extends EventEmitter<SupervisorEvents> {}
