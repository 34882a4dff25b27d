/**
 * Messages between the main thread and a session worker. Everything here crosses a
 * structured clone, so errors travel as values (custom Error fields would be lost).
 */
import type { ErrorCode } from '../src/errors.js';
import type { MechanismName, KeyType } from '../src/mechanisms.js';

export type TokenSelector = { label: string } | { serial: string } | { slotIndex: number };

/** A key as the token knows it: CKA_LABEL and/or CKA_ID (hex). */
export interface KeySelector {
  label?: string | undefined;
  id?: string | undefined;
}

export type SignatureFormat = 'der' | 'raw';

/** Faults a test can inject into a worker thread; refused unless the process enables them. */
export type WorkerFault = { kind: 'exit' } | { kind: 'throw' } | { kind: 'block'; ms: number };

export type WorkerTask =
  | { op: 'open'; modulePath: string; token: TokenSelector; readWrite: boolean }
  | { op: 'login'; pin: string; userType: 'user' | 'so' }
  | { op: 'logout' }
  | { op: 'sessionInfo' }
  | { op: 'sign'; key: KeySelector; mechanism: MechanismName; data: Uint8Array; prehashed: boolean; format: SignatureFormat }
  | {
      op: 'verify';
      key: KeySelector;
      mechanism: MechanismName;
      data: Uint8Array;
      signature: Uint8Array;
      prehashed: boolean;
      format: SignatureFormat;
    }
  | { op: 'publicKey'; key: KeySelector }
  | { op: 'close' }
  | { op: 'fault'; fault: WorkerFault };

export type WorkerOp = WorkerTask['op'];

export interface WorkerError {
  code: ErrorCode;
  message: string;
  ckr?: string;
  /** The PKCS#11 function that returned `ckr`. */
  fn?: string;
}

/** Epoch milliseconds (sub-ms precision), comparable across threads. */
export interface Timing {
  startedAt: number;
  endedAt: number;
}

export type WorkerReply<T = unknown> = ({ ok: true; value: T } | { ok: false; error: WorkerError }) & Timing;

export type SessionState = 'RO_PUBLIC' | 'RO_USER' | 'RW_PUBLIC' | 'RW_USER' | 'RW_SO';

export interface SessionReport {
  /** Session handle, hex: stable for the life of the session, useful in logs. */
  handle: string;
  state: SessionState;
  tokenLabel: string;
  tokenSerial: string;
  slotId: string;
  /** PKCS#11 calls this worker thread has made, by function name. */
  calls: Record<string, number>;
}

export interface OpenReport extends SessionReport {
  mechanisms: MechanismName[];
}

export interface PublicKeyReport {
  keyType: KeyType;
  spkiDer: Uint8Array;
}
