/**
 * The in-process client API. Applications sign and verify through it without touching a
 * session, a PIN prompt or a retry loop. Input is checked here, before anything is queued.
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import { loadConfigFile, parseConfig } from './config.js';
import type { Config, ConfigInput } from './config-schema.js';
import { Pkcs11SupervisorError } from './errors.js';
import type { SupervisorEvents } from './events.js';
import { createLogger } from './logger.js';
import type { PinCallback } from './pin-chain.js';
import type { Slot } from './slot.js';
import { Supervisor } from './supervisor.js';
import * as check from './validate.js';
import type { KeyRef } from './validate.js';
import type { MechanismName } from './mechanisms.js';
import type { KeyType } from './mechanisms.js';
import type { PublicKeyReport, SessionReport, SignatureFormat, WorkerFault, WorkerReply, WorkerTask } from '../workers/protocol.js';

export interface StartOptions {
  config?: ConfigInput;
  configFile?: string;
  pinCallback?: PinCallback;
  logger?: Logger;
}

export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
  /** A PIN for this call's login if the slot needs one; never stored. */
  pin?: string;
}

export interface SignRequest extends CallOptions {
  slot: string;
  key: KeyRef;
  mechanism: MechanismName;
  data: Uint8Array;
  /** ECDSA only: DER (X.509, CMS, OpenSSL, Node's default) or raw r‖s (JOSE). Default DER. */
  signatureFormat?: SignatureFormat;
  /** `data` is already the digest the mechanism names. */
  prehashed?: boolean;
}

export interface VerifyRequest extends SignRequest {
  signature: Uint8Array;
}

export interface PublicKeyRequest extends CallOptions {
  slot: string;
  key: KeyRef;
}

export interface PublicKeyInfo {
  keyType: KeyType;
  spki: Buffer;
  pem: string;
  jwk: JsonWebKey;
  keyObject: KeyObject;
}

export interface SlotRequest extends CallOptions {
  slot: string;
}

export class Pkcs11Supervisor {
  constructor(private readonly sup: Supervisor) {}

  get config(): Config {
    return this.sup.config;
  }

  /** Opens the slots (see startSupervisor). */
  async start(): Promise<this> {
    await this.sup.start();
    return this;
  }

  private slotOf(name: unknown): Slot {
    if (this.sup.closed) throw new Pkcs11SupervisorError('CLOSED', 'the supervisor is closed');
    const slot = typeof name === 'string' && this.sup.slots.has(name) ? this.sup.slots.get(name) : undefined;
    if (!slot) {
      throw new Pkcs11SupervisorError('SLOT_NOT_FOUND', `no slot named ${JSON.stringify(name)} (configured: ${[...this.sup.slots.keys()].join(', ')})`);
    }
    return slot;
  }

  private request(req: unknown): Record<string, unknown> {
    if (!req || typeof req !== 'object') throw check.badInput('a request object is required');
    return req as Record<string, unknown>;
  }

  async sign(request: SignRequest): Promise<Buffer> {
    const req = this.request(request);
    const slot = this.slotOf(req.slot);
    const mechanism = check.mechanism(req.mechanism, slot.name);
    const task: WorkerTask = {
      op: 'sign',
      key: check.keySelector(slot, req.key),
      mechanism,
      data: check.bytes(req.data, 'data', slot),
      prehashed: check.flag(req.prehashed, 'prehashed', slot.name),
      format: check.signatureFormat(req.signatureFormat, slot.name),
    };
    const sig = await this.run<Uint8Array>(slot, task, mechanism, req, true);
    return Buffer.from(sig.buffer, sig.byteOffset, sig.byteLength);
  }

  async verify(request: VerifyRequest): Promise<boolean> {
    const req = this.request(request);
    const slot = this.slotOf(req.slot);
    const mechanism = check.mechanism(req.mechanism, slot.name);
    const task: WorkerTask = {
      op: 'verify',
      key: check.keySelector(slot, req.key),
      mechanism,
      data: check.bytes(req.data, 'data', slot),
      signature: check.bytes(req.signature, 'signature', slot),
      prehashed: check.flag(req.prehashed, 'prehashed', slot.name),
      format: check.signatureFormat(req.signatureFormat, slot.name),
    };
    return this.run<boolean>(slot, task, mechanism, req, false);
  }

  async getPublicKey(request: PublicKeyRequest): Promise<PublicKeyInfo> {
    const req = this.request(request);
    const slot = this.slotOf(req.slot);
    const report = await this.run<PublicKeyReport>(slot, { op: 'publicKey', key: check.keySelector(slot, req.key) }, null, req, false);
    const spki = Buffer.from(report.spkiDer);
    const keyObject = createPublicKey({ key: spki, format: 'der', type: 'spki' });
    return { keyType: report.keyType, spki, pem: keyObject.export({ type: 'spki', format: 'pem' }).toString(), jwk: keyObject.export({ format: 'jwk' }), keyObject };
  }

  /**
   * Logs the slot's token in. An explicit login is the operator's decision, so it may retry a
   * PIN the token refused before (automatic sources never do).
   */
  async login(request: SlotRequest | string, pin?: string, options: CallOptions = {}): Promise<void> {
    const req = typeof request === 'string' ? { ...options, slot: request, pin } : this.request(request);
    const slot = this.slotOf(req.slot);
    const perCall = check.pin(req.pin, slot.name);
    await this.submit(slot, 'login', null, req, false, (w, call) => w.logIn(perCall, call.deadline, 'login', true));
  }

  async logout(request: SlotRequest | string): Promise<void> {
    const req = typeof request === 'string' ? { slot: request } : this.request(request);
    const slot = this.slotOf(req.slot);
    await this.submit(slot, 'logout', null, req, false, (w, call) => w.logOut(call.deadline));
  }

  /**
   * Asks the token (C_GetSessionInfo) for the session state of the worker that takes the call,
   * through the mailbox like any call. Includes the PKCS#11 calls that worker thread has made.
   */
  async probe(request: SlotRequest): Promise<SessionReport> {
    const req = this.request(request);
    const slot = this.slotOf(req.slot);
    return this.run<SessionReport>(slot, { op: 'sessionInfo' }, null, req, false);
  }

  status() {
    const slots: Record<string, ReturnType<Slot['status']>> = {};
    for (const [name, slot] of this.sup.slots) slots[name] = slot.status();
    return { closed: this.sup.closed, slots };
  }

  /** Operator action: bring a failed slot back and give it a fresh restart budget. */
  reset(slotName: string): void {
    this.sup.reset(this.slotOf(slotName));
  }

  on<E extends keyof SupervisorEvents>(event: E, listener: (...args: SupervisorEvents[E]) => void): this {
    this.sup.events.on(event, listener as never);
    return this;
  }

  off<E extends keyof SupervisorEvents>(event: E, listener: (...args: SupervisorEvents[E]) => void): this {
    this.sup.events.off(event, listener as never);
    return this;
  }

  /** Queued calls fail with CLOSED, running ones finish; then logout, close sessions, finalize modules. */
  close(): Promise<void> {
    return this.sup.close();
  }

  /**
   * Test hook: makes one worker thread crash, exit or block like a hung native call. Refused
   * unless the process runs with PKCS11_SUPERVISOR_FAULTS=1.
   */
  async injectWorkerFault(slotName: string, worker: number, fault: WorkerFault): Promise<void> {
    const slot = this.slotOf(slotName);
    const w = slot.workers[worker];
    if (!w) throw check.badInput(`slot "${slot.name}" has no worker ${worker}`, slot.name);
    const reply = await w.runTask({ op: 'fault', fault }, Date.now() + 24 * 3600_000).catch(() => null);
    if (reply && !reply.ok) throw new Pkcs11SupervisorError('BAD_INPUT', reply.error.message, { slot: slot.name });
  }

  private async run<T>(slot: Slot, task: WorkerTask, mechanism: MechanismName | null, req: Record<string, unknown>, needsLogin: boolean): Promise<T> {
    const reply = await this.submit<WorkerReply<T>>(slot, task.op, mechanism, req, needsLogin, (w, call) => w.execute<T>(task, call));
    if (!reply.ok) throw new Pkcs11SupervisorError(reply.error.code, reply.error.message, { slot: slot.name, ckr: reply.error.ckr });
    return reply.value;
  }

  private async submit<T>(
    slot: Slot,
    op: string,
    mechanism: MechanismName | null,
    req: Record<string, unknown>,
    needsLogin: boolean,
    run: Parameters<Slot['call']>[0]['run'],
  ): Promise<T> {
    const spec = {
      needsLogin,
      pin: check.pin(req.pin, slot.name),
      timeoutMs: check.timeoutMs(req.timeoutMs, slot),
      signal: check.signal(req.signal, slot.name),
      run,
    };
    const events = this.sup.events;
    const submittedAt = Date.now();
    try {
      const d = await slot.call(spec);
      const value = d.value as T & Partial<WorkerReply<unknown>>;
      if (events.listenerCount('callCompleted') > 0) {
        const timed = typeof value === 'object' && value !== null && 'startedAt' in value;
        const startedAt = timed ? (value.startedAt as number) : null;
        const endedAt = timed ? (value.endedAt as number) : null;
        events.emit('callCompleted', {
          slot: slot.name,
          worker: d.worker,
          op,
          mechanism,
          outcome: timed && value.ok === false ? value.error!.code : 'ok',
          queuedMs: d.startedAt - d.enqueuedAt,
          execMs: startedAt !== null && endedAt !== null ? endedAt - startedAt : 0,
          startedAt,
          endedAt,
        });
      }
      return d.value as T;
    } catch (e) {
      if (events.listenerCount('callCompleted') > 0) {
        const code = e instanceof Pkcs11SupervisorError ? e.code : 'PKCS11_ERROR';
        events.emit('callCompleted', { slot: slot.name, worker: null, op, mechanism, outcome: code, queuedMs: Date.now() - submittedAt, execMs: 0, startedAt: null, endedAt: null });
      }
      throw e;
    }
  }
}

/**
 * Validates the config and loads the modules, but opens nothing yet: subscribe to events
 * (metrics, audit) first, then `start()`.
 */
export function createSupervisor(options: StartOptions): Pkcs11Supervisor {
  if (!options || (options.config === undefined) === (options.configFile === undefined)) {
    throw new Pkcs11SupervisorError('CONFIG_INVALID', 'startSupervisor needs exactly one of { config } or { configFile }');
  }
  const config = options.configFile !== undefined ? loadConfigFile(options.configFile) : parseConfig(options.config);
  const logger = options.logger ?? createLogger(config.log.level);
  return new Pkcs11Supervisor(new Supervisor(config, logger, options.pinCallback));
}

/**
 * Starts every configured slot and resolves once each non-lazy slot has opened its sessions
 * (and logged in where a PIN source is configured) or has failed cleanly.
 */
export async function startSupervisor(options: StartOptions): Promise<Pkcs11Supervisor> {
  return createSupervisor(options).start();
}
