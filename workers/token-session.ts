/**
 * One worker thread's view of a token: one pkcs11js module handle, one persistent session,
 * and the key handles found on that session (flushed whenever the session is replaced).
 * Calls are synchronous; the thread runs one task at a time, which is how a session's
 * single-operation rule (CKR_OPERATION_ACTIVE) is kept.
 */
import { asBuffer, pkcs11js } from './pkcs11js.js';
import type * as P11 from 'pkcs11js';
import { MECHANISMS, MECHANISM_NAMES, type KeyType, type MechanismName } from '../src/model/mechanisms.js';
import { writeDer, derToRaw, maxDerBytes } from '../src/model/ecdsa-signature.js';
import { checkPkcs1Room, prepareMechanisms, preparedKey, keyGenSizes, type PreparedMechanism } from './mechanism-params.js';
import { ContextLoginNeeded, ContextLoginUnsupported, WorkerFailure } from './failure.js';
import { deviceInfo, pinLengthOf, sessionLimit } from './token-info.js';
import { chooseSlot, factsOf } from './slot-choice.js';
import { deviceMismatch, type DeviceFacts, type DeviceMatch } from '../src/model/device-match.js';
import { SESSION_STATES, USER_SESSION_STATES, type SessionState, type KeySelector, type OpenReport, type PinLength, type UserPinState, type PublicKeyReport, type SessionInfo, type SessionReport, type WorkerTask } from '../src/model/protocol.js';
import { publicKeyReport } from './object-ops.js';
import { KeyFinder, keyName, type CachedKey } from './key-finder.js';
import { CRYPTO_MECHANISM_NAMES } from '../src/model/crypto-mechanisms.js';
import { ckmOf, type CryptoSession } from './cipher-core.js';

const MAX_SIGNATURE_BYTES = 2048; // RSA-16384

export class TokenSession implements CryptoSession {
  private mod: P11.PKCS11 | null = null;
  private slot: P11.Handle | null = null;
  private session: P11.Handle | null = null;
  private modulePath = '';
  /**
   * Where this session is, as a PKCS#11 URI names it (its token's label and serial among them): a
   * key URI naming elsewhere finds nothing here.
   */
  private facts: DeviceFacts | null = null;
  /** The module's functions, each call counted (for the helpers that take them so). */
  private readonly counted = (fn: string): P11.PKCS11 => this.count(fn);
  /** ulMaxSessionCount / ulMaxRwSessionCount of the token, as read with its label. */
  private sessionLimits: { maxSessions: number | null; maxRwSessions: number | null } = { maxSessions: null, maxRwSessions: null };
  /** ulMinPinLen / ulMaxPinLen: a PIN outside them is refused here, before it costs a retry on the token. */
  private pinLength: PinLength | null = null;
  private prepared = new Map<string, PreparedMechanism>();
  /** The CKM_* values the token listed at open. */
  private supported = new Set<number>();
  private readonly keyFinder = new KeyFinder(this, () => this.loggedIn());
  private readonly out = Buffer.alloc(MAX_SIGNATURE_BYTES);
  /** Where encryptions, decryptions and MACs are written (crypto-ops.ts): grown to the largest asked for. */
  private scratchBuffer = Buffer.alloc(4096);
  /** An ECDSA signature in DER, up to P-521 (r and s of 66 bytes). */
  private readonly der = Buffer.alloc(maxDerBytes(2 * 66));
  readonly calls: Record<string, number> = {};
  /** The module answered C_Login(CKU_CONTEXT_SPECIFIC) with CKR_USER_TYPE_INVALID: it keeps CKA_ALWAYS_AUTHENTICATE without enforcing it. */
  private noContextLogin = false;

  private count(fn: string): P11.PKCS11 {
    this.calls[fn] = (this.calls[fn] ?? 0) + 1;
    return this.mod!;
  }

  private get live(): P11.Handle {
    if (!this.session) throw new WorkerFailure('PKCS11_ERROR', 'no open session in this worker');
    return this.session;
  }

  // SessionAccess, for the object operations.
  p11(fn: string): P11.PKCS11 {
    return this.count(fn);
  }
  get tokenIdentity(): { label: string; serial: string } {
    return { label: this.facts?.token ?? '', serial: this.facts?.serial ?? '' };
  }

  scratch(bytes: number): Buffer {
    if (this.scratchBuffer.length < bytes) this.scratchBuffer = Buffer.alloc(bytes);
    return this.scratchBuffer;
  }

  supports(ckm: number): boolean {
    return this.supported.has(ckm);
  }

  get sessionHandle(): P11.Handle {
    return this.live;
  }
  forgetKeys(): void {
    this.keyFinder.clear();
  }

  open(task: Extract<WorkerTask, { op: 'open' }>): OpenReport {
    if (!this.mod) this.loadModule(task.modulePath);
    this.dropSession();
    const { slot, token } = chooseSlot(this.counted, this.modulePath, task.token);
    this.useTokenInfo(token);
    const flags = pkcs11js.CKF_SERIAL_SESSION | (task.readWrite ? pkcs11js.CKF_RW_SESSION : 0);
    this.session = this.count('C_OpenSession').C_OpenSession(slot, flags);
    this.slot = slot;
    const slotInfo = this.count('C_GetSlotInfo').C_GetSlotInfo(slot);
    this.facts = factsOf(this.counted, this.modulePath, slot, token, slotInfo);
    const supported = new Set(this.count('C_GetMechanismList').C_GetMechanismList(slot));
    this.supported = supported;
    this.prepared = prepareMechanisms(supported);
    const mechanisms = [...MECHANISM_NAMES.filter((n) => this.prepared.has(preparedKey(n, false))), ...CRYPTO_MECHANISM_NAMES.filter((n) => supported.has(ckmOf(n)))];
    return {
      ...this.report(),
      mechanisms,
      keyGen: keyGenSizes(this.counted, slot, supported),
      ...this.sessionLimits,
      pinLength: this.pinLength,
      keyTypes: this.keyTypesOf(task.keys),
      // The token's report is the one the slot was chosen by, a moment ago.
      device: deviceInfo(slotInfo, token),
    };
  }

  /** Key types of the configured keys whose public object is visible, so the main thread can refuse a mismatched mechanism before queueing. */
  private keyTypesOf(keys: Record<string, KeySelector>): Record<string, KeyType> {
    const out: Record<string, KeyType> = {};
    for (const [ref, sel] of Object.entries(keys)) {
      try {
        out[ref] = this.key(sel, pkcs11js.CKO_PUBLIC_KEY).keyType;
      } catch {
        // No public object (or not visible yet): the worker checks at sign time.
      }
    }
    return out;
  }

  private loadModule(path: string): void {
    const mod = new pkcs11js.PKCS11();
    try {
      mod.load(path);
    } catch (e) {
      throw new WorkerFailure('MODULE_LOAD_FAILED', `cannot load PKCS#11 module ${path}: ${(e as Error).message}`);
    }
    this.mod = mod;
    this.modulePath = path;
    try {
      this.count('C_Initialize').C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (e) {
      // Initialization is process-wide: another thread got there first.
      if ((e as Error).message !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') {
        this.mod = null;
        throw e;
      }
    }
  }

  /** A key whose URI names another token, slot or library is not on this session's token, whatever its label. */
  checkWhere(on: DeviceMatch | undefined, what: string): void {
    if (!on || !this.facts) return;
    const why = deviceMismatch(on, this.facts);
    if (why) throw new WorkerFailure('KEY_NOT_FOUND', `no ${what} here: ${why}`);
  }

  private useTokenInfo(info: P11.TokenInfo): void {
    this.sessionLimits = { maxSessions: sessionLimit(info.maxSessionCount), maxRwSessions: sessionLimit(info.maxRwSessionCount) };
    this.pinLength = pinLengthOf(info.minPinLen, info.maxPinLen);
  }

  /** Throws `code` for a PIN the token would refuse by its length alone. */
  private checkPinLength(pin: string, code: 'PIN_INCORRECT' | 'BAD_INPUT', what: string): void {
    const range = this.pinLength;
    const n = Buffer.byteLength(pin);
    if (!range || (n >= range.min && n <= range.max)) return;
    const then = code === 'PIN_INCORRECT' ? '; refused before it reached the token, so no retry was used' : '';
    throw new WorkerFailure(code, `${what} is ${n} bytes; this token takes ${range.min} to ${range.max} (C_GetTokenInfo)${then}`);
  }

  /** Closes the current session if any; its key handles die with it. */
  private dropSession(): void {
    this.keyFinder.clear();
    if (!this.session) return;
    try {
      this.count('C_CloseSession').C_CloseSession(this.session);
    } catch {
      // Already gone (that is usually why we are here).
    }
    this.session = null;
  }

  report(): SessionReport {
    return {
      handle: this.live.toString('hex'),
      state: this.sessionState(),
      tokenLabel: this.facts?.token ?? '',
      tokenSerial: this.facts?.serial ?? '',
      slotId: this.slot ? this.slot.toString('hex') : '',
      calls: { ...this.calls },
    };
  }

  /** The session report plus the token's PIN retry flags: read when asked, not after every operation. */
  info(): SessionInfo {
    return { ...this.report(), userPin: this.userPinState() };
  }

  private userPinState(): UserPinState {
    const { flags } = this.count('C_GetTokenInfo').C_GetTokenInfo(this.slot!);
    if (flags & pkcs11js.CKF_USER_PIN_LOCKED) return 'locked';
    if (flags & pkcs11js.CKF_USER_PIN_FINAL_TRY) return 'final_try';
    return flags & pkcs11js.CKF_USER_PIN_COUNT_LOW ? 'count_low' : 'ok';
  }

  private loggedIn(): boolean {
    return USER_SESSION_STATES.has(this.sessionState());
  }

  private sessionState(): SessionState {
    return SESSION_STATES[this.count('C_GetSessionInfo').C_GetSessionInfo(this.live).state] ?? 'RO_PUBLIC';
  }

  login(pin: string, userType: 'user' | 'so'): SessionReport {
    // One user type at a time per token (CKR_USER_ANOTHER_ALREADY_LOGGED_IN): the Security
    // Officer comes in only after the user login ends, and the other way round.
    const state = this.sessionState();
    if ((userType === 'so' && USER_SESSION_STATES.has(state)) || (userType === 'user' && state === 'RW_SO')) this.logout();
    this.checkPinLength(pin, 'PIN_INCORRECT', 'the PIN');
    try {
      this.count('C_Login').C_Login(this.live, userType === 'so' ? pkcs11js.CKU_SO : pkcs11js.CKU_USER, pin);
    } catch (e) {
      // Login belongs to the token: another session of this application already did it.
      if ((e as Error).message !== 'CKR_USER_ALREADY_LOGGED_IN') throw e;
      return { ...this.report(), loggedInHere: false };
    }
    return { ...this.report(), loggedInHere: true };
  }

  logout(): SessionReport {
    // Private-object handles end with the login on some tokens (SoftHSM2): a stale one would
    // cost a session re-open, and on the application's only session that re-open logs the
    // token out again.
    this.keyFinder.clear();
    try {
      this.count('C_Logout').C_Logout(this.live);
    } catch (e) {
      if ((e as Error).message !== 'CKR_USER_NOT_LOGGED_IN') throw e;
    }
    return this.report();
  }

  /** Sets the user PIN: the Security Officer's operation (C_InitPIN on an SO session). */
  initPin(pin: string): SessionReport {
    this.checkPinLength(pin, 'BAD_INPUT', 'the new PIN');
    this.count('C_InitPIN').C_InitPIN(this.live, pin);
    return this.report();
  }

  /** Changes the PIN of whoever is logged in on the session: the user's, or the SO's own. */
  setPin(oldPin: string, newPin: string): SessionReport {
    this.checkPinLength(newPin, 'BAD_INPUT', 'the new PIN');
    this.checkPinLength(oldPin, 'PIN_INCORRECT', 'the old PIN');
    this.count('C_SetPIN').C_SetPIN(this.live, oldPin, newPin);
    return this.report();
  }

  /**
   * The module still answers for its token. SoftHSM2 with its token deleted or its descriptors
   * gone answers C_GetTokenInfo with CKR_GENERAL_ERROR, as it does some calls' bad input: this
   * tells the two apart.
   */
  tokenAnswers(): boolean {
    if (!this.mod || this.slot === null) return false;
    try {
      this.count('C_GetTokenInfo').C_GetTokenInfo(this.slot);
      return true;
    } catch {
      return false;
    }
  }

  /** Closes the session. C_Finalize is never called here: the main thread's module registry owns it. */
  close(): null {
    this.dropSession();
    this.mod = null;
    return null;
  }

  private mechanism(name: MechanismName, prehashed: boolean, key: CachedKey): PreparedMechanism {
    const spec = MECHANISMS[name];
    if (spec.keyType !== key.keyType) throw new WorkerFailure('MECHANISM_INVALID', `${name} needs a key of type ${spec.keyType}; this key is ${key.keyType}`);
    const p = this.prepared.get(preparedKey(name, prehashed));
    if (!p) {
      const has = MECHANISM_NAMES.filter((n) => this.prepared.has(preparedKey(n, prehashed)));
      throw new WorkerFailure('MECHANISM_INVALID', `the token cannot do ${name}${prehashed ? ' over a pre-hashed input' : ''}; it can do: ${has.join(', ')}`);
    }
    return p;
  }

  /** The signature as a view on this session's own buffers: valid until its next call, so a caller keeping it copies it. */
  sign(task: Extract<WorkerTask, { op: 'sign' }>): Uint8Array {
    const key = this.key(task.key, pkcs11js.CKO_PRIVATE_KEY);
    const pin = this.contextPinFor(key, task.key, task.contextPin);
    const p = this.mechanism(task.mechanism, task.prehashed, key);
    const input = p.input(asBuffer(task.data));
    checkPkcs1Room(p, input.length, key.modulusBytes);
    const session = this.live;
    this.count('C_SignInit').C_SignInit(session, p.mechanism, key.handle);
    if (pin !== undefined) this.contextLogin(pin, () => this.count('C_Sign').C_Sign(session, input, this.out));
    let sig: Buffer;
    try {
      sig = this.count('C_Sign').C_Sign(session, input, this.out);
    } catch (e) {
      this.usedWithoutPin(e, key, task.key);
    }
    if (MECHANISMS[task.mechanism].scheme === 'ecdsa' && task.format === 'der') return this.der.subarray(0, writeDer(sig, this.der));
    return sig;
  }

  contextPinFor(key: CachedKey, sel: KeySelector, contextPin: string | undefined): string | undefined {
    if (!key.alwaysAuthenticate || this.noContextLogin) return undefined;
    if (contextPin === undefined) throw new ContextLoginNeeded(keyName(sel));
    return contextPin;
  }

  contextLogin(pin: string, end: () => void): void {
    try {
      this.checkPinLength(pin, 'PIN_INCORRECT', 'the PIN');
      this.count('C_Login').C_Login(this.live, pkcs11js.CKU_CONTEXT_SPECIFIC, pin);
    } catch (e) {
      try {
        end();
      } catch {
        // CKR_USER_NOT_LOGGED_IN: the operation is over, as wanted.
      }
      if ((e as Error).message !== 'CKR_USER_TYPE_INVALID') throw e;
      this.noContextLogin = true;
      throw new ContextLoginUnsupported();
    }
  }

  usedWithoutPin(e: unknown, key: CachedKey, sel: KeySelector): never {
    if ((e as Error).message !== 'CKR_USER_NOT_LOGGED_IN' || key.alwaysAuthenticate || !this.loggedIn()) throw e;
    key.alwaysAuthenticate = true;
    throw new ContextLoginNeeded(keyName(sel));
  }

  verify(task: Extract<WorkerTask, { op: 'verify' }>): boolean {
    const key = this.key(task.key, pkcs11js.CKO_PUBLIC_KEY);
    const p = this.mechanism(task.mechanism, task.prehashed, key);
    const input = p.input(asBuffer(task.data));
    let signature: Buffer | null = asBuffer(task.signature);
    if (MECHANISMS[task.mechanism].scheme === 'ecdsa' && task.format === 'der') signature = derToRaw(signature, key.curve?.fieldBytes ?? 0);
    if (!signature) return false;
    const session = this.live;
    this.count('C_VerifyInit').C_VerifyInit(session, p.mechanism, key.handle);
    try {
      return this.count('C_Verify').C_Verify(session, input, signature);
    } catch (e) {
      const ckr = (e as Error).message;
      if (ckr === 'CKR_SIGNATURE_INVALID' || ckr === 'CKR_SIGNATURE_LEN_RANGE') return false;
      throw e;
    }
  }

  /** Read from the object a find returns now: this is how the main thread confirms a public key it keeps. */
  publicKey(sel: KeySelector): PublicKeyReport {
    const key = this.key(sel, pkcs11js.CKO_PUBLIC_KEY, true);
    return publicKeyReport(this, key.handle, key.keyType, key.curve?.fieldBytes ?? 0);
  }

  /** Finds a key by label/id (key-finder.ts). */
  key(sel: KeySelector, cls: number, fresh = false): CachedKey {
    return this.keyFinder.find(sel, cls, fresh);
  }

}
