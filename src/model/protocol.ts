/**
 * Messages between the main thread and a session worker. Everything here crosses a
 * structured clone, so errors travel as values (custom Error fields would be lost).
 */
import type { ErrorCode } from './errors.js';
import type { MechanismName, KeyType } from './mechanisms.js';
import { matchKey, type DeviceMatch } from './device-match.js';
import type { AnyMechanismName, CryptoMechanismName, SecretKeyAlgorithm } from './crypto-mechanisms.js';

/** `on`: what the token's PKCS#11 URI named besides its label or serial, all of which the token must match. */
export type TokenSelector = { label: string; on?: DeviceMatch } | { serial: string; on?: DeviceMatch } | { slotIndex: number };

/**
 * A key as the token knows it: CKA_LABEL and/or CKA_ID (hex). `on`: where its PKCS#11 URI says
 * it lives (token, slot, library); a session elsewhere does not find it.
 */
export interface KeySelector {
  label?: string | undefined;
  id?: string | undefined;
  on?: DeviceMatch | undefined;
}

/**
 * Whether two selectors could find the same object: none of the label or id they both give
 * differs. Only the token knows which object a name finds, so what holds for a key (its
 * allow-list, the IVs used with it) holds for every name that could be its.
 */
export function mayNameSameObject(a: Pick<KeySelector, 'label' | 'id'>, b: Pick<KeySelector, 'label' | 'id'>): boolean {
  const differ = (x: string | undefined, y: string | undefined) => x !== undefined && y !== undefined && x !== y;
  return !differ(a.label, b.label) && !differ(a.id, b.id);
}

/** One string per selector, for maps and sets of keys on both sides of the thread boundary. */
export function selectorKey(sel: KeySelector): string {
  return `${sel.label ?? ''}\0${sel.id ?? ''}${sel.on ? `\0${matchKey(sel.on)}` : ''}`;
}

export type SignatureFormat = 'der' | 'raw';

/** What a cipher call carries besides its key: the data, and the IV, AAD (GCM) or label (RSA-OAEP) its mechanism takes. */
export interface CipherInput {
  data: Uint8Array;
  iv?: Uint8Array | undefined;
  aad?: Uint8Array | undefined;
  oaepLabel?: Uint8Array | undefined;
}

export interface SecretKeySpec {
  algorithm: SecretKeyAlgorithm;
  label: string;
  /** Hex; random when absent. */
  id?: string | undefined;
  extractable: boolean;
}

/** Faults a test can inject into a worker thread; refused unless the process enables them. */
export type WorkerFault = { kind: 'exit' } | { kind: 'throw' } | { kind: 'block'; ms: number };

export type WorkerTask =
  | { op: 'open'; modulePath: string; token: TokenSelector; readWrite: boolean; keys: Record<string, KeySelector> }
  | { op: 'login'; pin: string; userType: 'user' | 'so' }
  | { op: 'logout' }
  | { op: 'initPin'; pin: string }
  | { op: 'setPin'; oldPin: string; newPin: string }
  | { op: 'sessionInfo' }
  | {
      op: 'sign';
      key: KeySelector;
      mechanism: MechanismName;
      data: Uint8Array;
      prehashed: boolean;
      format: SignatureFormat;
      /**
       * For a key with CKA_ALWAYS_AUTHENTICATE: the PIN of the C_Login(CKU_CONTEXT_SPECIFIC)
       * between C_SignInit and C_Sign (C_DecryptInit and C_Decrypt). Only the slot worker sets
       * it, after the thread asked.
       */
      contextPin?: string;
    }
  | {
      op: 'verify';
      key: KeySelector;
      mechanism: MechanismName;
      data: Uint8Array;
      signature: Uint8Array;
      prehashed: boolean;
      format: SignatureFormat;
    }
  | ({ op: 'encrypt'; key: KeySelector; mechanism: CryptoMechanismName } & CipherInput)
  | ({ op: 'decrypt'; key: KeySelector; mechanism: CryptoMechanismName; /** As sign's. */ contextPin?: string } & CipherInput)
  /** Whether the token decrypts this RSA-OAEP (with a label or without) with the key: true, false, or null when it cannot tell. */
  | { op: 'oaepDecryptable'; key: KeySelector; mechanism: CryptoMechanismName; labelled: boolean; /** As sign's: a label's check with a key that asks for the PIN on every use. */ contextPin?: string }
  | { op: 'mac'; key: KeySelector; mechanism: CryptoMechanismName; data: Uint8Array }
  | { op: 'verifyMac'; key: KeySelector; mechanism: CryptoMechanismName; data: Uint8Array; mac: Uint8Array }
  | { op: 'wrapKey'; key: KeySelector; mechanism: CryptoMechanismName; target: KeySelector; targetClass: 'secretKey' | 'privateKey'; oaepLabel?: Uint8Array | undefined }
  | { op: 'unwrapKey'; key: KeySelector; mechanism: CryptoMechanismName; wrapped: Uint8Array; spec: SecretKeySpec; oaepLabel?: Uint8Array | undefined }
  /** ECDH with the key; `then` runs with the derived session key (ECDH), absent for ECDH-SECRET. */
  | { op: 'deriveKey'; key: KeySelector; mechanism: 'ECDH' | 'ECDH-SECRET'; publicPoint: Uint8Array; then?: ({ op: 'encrypt' | 'decrypt'; mechanism: CryptoMechanismName } & CipherInput) | undefined }
  | { op: 'generateSecretKey'; spec: SecretKeySpec }
  | { op: 'publicKey'; key: KeySelector }
  /** The certificates `cert` names (default: the key's label/id) and the key's public key, to pick the key's own among them. */
  | { op: 'certificate'; key: KeySelector; cert?: KeySelector | undefined }
  | { op: 'findObjects'; query: ObjectQuery; limit: number }
  | { op: 'findObjectsPage'; query: ObjectQuery; offset: number; pageSize: number }
  | { op: 'generateKeyPair'; spec: KeyGenSpec }
  | { op: 'generateRandom'; length: number }
  /** `replace`: objects of the same class under one of the labels or ids are destroyed once the new ones exist. */
  | { op: 'importObjects'; objects: ImportedObject[]; replace?: boolean }
  /** The DER of up to `limit` certificates on the token, for building chains. */
  | { op: 'certificates'; limit: number }
  /** `on`: where the key URI that named the objects points (KeySelector.on). */
  | { op: 'destroyObjects'; query: ObjectQuery; on?: DeviceMatch | undefined }
  | { op: 'close' }
  | { op: 'fault'; fault: WorkerFault }
  /**
   * Several calls in one message, run one after another on the session; null marks a call not
   * run. `claims` is shared memory, one slot per task: the worker claims a task (0 → STARTED)
   * before running it, the main thread cancels one (0 → CANCELLED); whoever wins decides.
   */
  | { op: 'batch'; tasks: WorkerTask[]; claims: Int32Array };

/**
 * The bytes of a view alone, in a buffer of their own. A view on a larger buffer crosses a
 * structured clone as that whole buffer: a small pooled Buffer (Buffer.from, allocUnsafe)
 * would carry its 8 KiB slab to the other thread on every call.
 */
export function ownBytes(view: Uint8Array): Uint8Array {
  return view.byteLength === view.buffer.byteLength ? view : new Uint8Array(view);
}

export const CLAIM_STARTED = 2;
export const CLAIM_CANCELLED = 1;

export type WorkerOp = WorkerTask['op'];

export interface WorkerError {
  code: ErrorCode;
  message: string;
  ckr?: string;
  /** The PKCS#11 function that returned `ckr`. */
  fn?: string;
  /**
   * `needed`: not run, the key asks for the PIN on every use (CKA_ALWAYS_AUTHENTICATE, or C_Sign
   * said CKR_USER_NOT_LOGGED_IN on a logged-in session); the slot worker sends it again with a
   * PIN. `unsupported`: not run, the module knows no CKU_CONTEXT_SPECIFIC (it keeps the
   * attribute without enforcing it); sent again without one, the thread signs as for any key.
   */
  contextLogin?: 'needed' | 'unsupported';
  /**
   * With CKR_GENERAL_ERROR: the module still answered C_GetTokenInfo right after, so it is not
   * broken (a module that lost its token or its files cannot) and the token refused this call's input.
   */
  moduleAnswers?: true;
}

/** Epoch milliseconds (sub-ms precision), comparable across threads. */
export interface Timing {
  startedAt: number;
  endedAt: number;
}

export type WorkerReply<T = unknown> = ({ ok: true; value: T } | { ok: false; error: WorkerError }) & Timing;

/** In the order of their CKS_* values (CKS_RO_PUBLIC_SESSION = 0 … CKS_RW_SO_FUNCTIONS = 4). */
export const SESSION_STATES = ['RO_PUBLIC', 'RO_USER', 'RW_PUBLIC', 'RW_USER', 'RW_SO'] as const;
export type SessionState = (typeof SESSION_STATES)[number];

/** A session a user call can use. RW_SO is logged in too, but as the Security Officer: not for user calls. */
export const USER_SESSION_STATES: ReadonlySet<SessionState> = new Set(['RO_USER', 'RW_USER']);

export const USER_PIN_STATES = ['ok', 'count_low', 'final_try', 'locked'] as const;
export type UserPinState = (typeof USER_PIN_STATES)[number];

export interface SessionReport {
  /** Session handle, hex: stable for the life of the session, useful in logs. */
  handle: string;
  state: SessionState;
  tokenLabel: string;
  tokenSerial: string;
  slotId: string;
  /** PKCS#11 calls this worker thread has made, by function name. */
  calls: Record<string, number>;
  /** After a login: this C_Login logged the token in (not another session of the process before it). */
  loggedInHere?: boolean;
}

/** What `sessionInfo` (login's first look, the health probe, `probe()`) adds to a session report. */
export interface SessionInfo extends SessionReport {
  /** The user PIN's retry counter as the token flags it (CKF_USER_PIN_COUNT_LOW, _FINAL_TRY, _LOCKED). */
  userPin: UserPinState;
}

/** Sizes C_GetMechanismInfo reports for a key-pair generation mechanism (RSA: bits; EC: field bits). */
export interface KeySizeRange {
  min: number;
  max: number;
}

export interface PinLength {
  min: number;
  max: number;
}

export interface OpenReport extends SessionReport {
  /** Signature and other mechanisms the token can serve, by name. */
  mechanisms: AnyMechanismName[];
  /** Key-pair generation the token can do, by key type, with the sizes it allows. */
  keyGen: Partial<Record<KeyType, KeySizeRange>>;
  /** ulMaxSessionCount / ulMaxRwSessionCount; null when the token sets no limit (or does not say). */
  maxSessions: number | null;
  maxRwSessions: number | null;
  /** PIN lengths in bytes the token accepts (ulMinPinLen / ulMaxPinLen); null when it does not say. */
  pinLength: PinLength | null;
  /** Types of the configured key refs whose public key object is visible. */
  keyTypes: Record<string, KeyType>;
  /** What the slot (C_GetSlotInfo) and its token (C_GetTokenInfo) say about themselves. */
  device: DeviceInfo;
}

export interface DeviceInfo {
  slot: { description: string; manufacturer: string; hardware: string; firmware: string; flags: string[] };
  token: { label: string; manufacturer: string; model: string; serial: string; hardware: string; firmware: string; flags: string[] };
}

/** What a certificate lookup found: the candidates' DER, and the key's SPKI (null: the token has no public key object by that name). */
export interface CertificateCandidates {
  ders: Uint8Array[];
  spki: Uint8Array | null;
}

export interface PublicKeyReport {
  keyType: KeyType;
  spkiDer: Uint8Array;
  label: string;
  /** CKA_ID, hex. */
  id: string;
  uri: string;
}

export const OBJECT_CLASSES = ['privateKey', 'publicKey', 'certificate', 'secretKey', 'data'] as const;
export type ObjectClass = (typeof OBJECT_CLASSES)[number];

export interface ObjectQuery {
  class?: ObjectClass | undefined;
  label?: string | undefined;
  id?: string | undefined;
  keyType?: KeyType | undefined;
}

/** A token object as plain data: no handles, nothing secret. */
export interface ObjectDescriptor {
  class: ObjectClass;
  label: string;
  id: string;
  /** The object's PKCS#11 URI (RFC 7512): usable wherever a key is named. */
  uri: string;
  token: boolean;
  private: boolean;
  keyType?: KeyType;
  /** RSA modulus bits; a secret key's length in bits. */
  bits?: number;
  curve?: string;
  sign?: boolean;
  verify?: boolean;
  encrypt?: boolean;
  decrypt?: boolean;
  wrap?: boolean;
  unwrap?: boolean;
  derive?: boolean;
  sensitive?: boolean;
  extractable?: boolean;
  alwaysSensitive?: boolean;
  neverExtractable?: boolean;
  /** CKA_ALWAYS_AUTHENTICATE of a private key: each signature logs in for itself. */
  alwaysAuthenticate?: boolean;
}

export interface FoundPage {
  objects: ObjectDescriptor[];
  /** More matches follow this page. */
  more: boolean;
}

export const KEY_ALGORITHMS = ['RSA-2048', 'RSA-3072', 'RSA-4096', 'EC-P256', 'EC-P384', 'EC-P521', 'Ed25519'] as const;
export type KeyAlgorithm = (typeof KEY_ALGORITHMS)[number];

/** What a key pair is for: signing, decrypting (and unwrapping; RSA), or key agreement (EC). */
export const KEY_USAGES = ['sign', 'decrypt', 'derive'] as const;
export type KeyUsage = (typeof KEY_USAGES)[number];

/** What a new private key allows: its uses, leaving the token wrapped, and signing without a PIN of its own. */
export interface PrivateKeyUse {
  /** Only these: every other use is set false, whatever the token's defaults (SoftHSM2 lets a new key decrypt). */
  usage: readonly KeyUsage[];
  extractable: boolean;
  /** CKA_ALWAYS_AUTHENTICATE: each signature needs C_Login(CKU_CONTEXT_SPECIFIC). */
  alwaysAuthenticate: boolean;
}

export interface KeyGenSpec extends PrivateKeyUse {
  algorithm: KeyAlgorithm;
  label: string;
  /** Hex; when absent the SHA-1 of the public key is used, as many PKCS#11 tools do. */
  id?: string | undefined;
}

/** Objects to create on import. Key material travels as JWK from the main thread, which parsed it. */
export type ImportedObject =
  | ({ kind: 'privateKey'; jwk: JsonWebKeyLike; label: string; id: string } & PrivateKeyUse)
  | { kind: 'publicKey'; jwk: JsonWebKeyLike; label: string; id: string; usage: readonly KeyUsage[] }
  /** `shared`: a chain certificate, stored once however many keys it certifies. */
  | { kind: 'certificate'; der: Uint8Array; subject: Uint8Array; issuer: Uint8Array; serial: Uint8Array; label: string; id: string; shared?: boolean };

export interface JsonWebKeyLike {
  kty?: string;
  crv?: string;
  n?: string;
  e?: string;
  d?: string;
  p?: string;
  q?: string;
  dp?: string;
  dq?: string;
  qi?: string;
  x?: string;
  y?: string;
}
