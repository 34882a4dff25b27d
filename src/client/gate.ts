/**
 * What every call of the client API passes through, in order: the slot it names, the policy
 * (FORBIDDEN, counted and audited), then the slot's mailbox with the call's deadline, signal
 * and PIN; on the way back its audit record, its `callCompleted` event and, for a token's
 * error, a typed Pkcs11SupervisorError. One path for every operation: the operation files
 * only say what to ask of the slot.
 */
import { createHash } from 'node:crypto';
import { AccessPolicy, OPERATIONS, parsePrincipal, type Operation, type Principal } from '../access-policy.js';
import type { AuditLog } from '../audit.js';
import { Pkcs11SupervisorError } from '../model/errors.js';
import type { AnyMechanismName } from '../model/crypto-mechanisms.js';
import type { WorkerReply } from '../model/protocol.js';
import type { Slot } from '../slot.js';
import type { Delivered, SlotTask } from '../slot-call.js';
import type { Supervisor } from '../supervisor.js';
import * as check from '../validate.js';
import { NamingTurns } from './naming-turns.js';
import { PublicKeyCache } from './public-key-cache.js';
import type { PrincipalInput } from './requests.js';

/** How the audit trail names a login's kind. */
const LOGIN_KIND = { user: '', so: 'Security Officer, ', context: 'context-specific (one signature), ' } as const;

/** A request as the operation files read it: any object, each field checked where it is used. */
export type Req = Record<string, unknown>;

export interface CallShape {
  mechanism?: AnyMechanismName;
  /** The call needs a logged-in user session (the slot logs in through its PIN chain if not). */
  needsLogin: boolean;
  /** Runs alone on the slot (Security Officer work). */
  exclusive?: boolean;
  /**
   * Creates objects under a label and id it checks are free (generation, import, unwrap): such
   * calls take turns on the slot, so two cannot both find a name free on two sessions and make
   * it ambiguous. Other calls run beside them.
   */
  namesObjects?: boolean;
}

/**
 * What the audit trail leaves out: reads that use no key for a cryptographic result, and what
 * it records its own way (logins and logouts as events, refusals as denied records).
 */
const UNAUDITED: ReadonlySet<Operation> = new Set(['getPublicKey', 'getCertificate', 'generateRandom', 'findObjects', 'findObjectsPage', 'probe', 'login', 'logout', 'soLogin', 'reset', 'status', 'verifyAudit']);

/** Calls that leave an audit record, with their principal. Logins and logouts are recorded from the slots' events, automatic ones included. */
export const AUDITED: ReadonlySet<Operation> = new Set(OPERATIONS.filter((op) => !UNAUDITED.has(op)));

export class Gate {
  readonly policy: AccessPolicy;
  readonly publicKeys: PublicKeyCache;
  /** Set on a scoped gate (see `scoped`): the principal of every call made through it. */
  private scope: Principal | undefined;
  /** Calls that name objects (CallShape.namesObjects) take turns per slot; shared by scoped gates. */
  private readonly namingTurns = new NamingTurns();

  constructor(
    readonly sup: Supervisor,
    readonly audit: AuditLog | null,
  ) {
    this.policy = new AccessPolicy(() => sup.config.policy);
    this.publicKeys = new PublicKeyCache(sup.events);
    sup.events.on('configReloaded', (e) => e.rekeyed.forEach((slot) => this.publicKeys.forget(slot)));
    if (!audit) return;
    audit.onWriteError = (e) => sup.events.emit('auditWriteError', { path: audit.path, message: e.message });
    sup.events.on('login', (e) => audit.append({ event: 'login', slot: e.slot, result: e.outcome, detail: `${LOGIN_KIND[e.userType]}PIN from ${e.origin}` }));
    sup.events.on('logout', (e) => audit.append({ event: 'logout', slot: e.slot, result: 'ok', detail: e.by }));
  }

  /** The same gate, every call made as `principal`. */
  scoped(principal: PrincipalInput | string): Gate {
    const gate = Object.create(this) as Gate;
    gate.scope = parsePrincipal(principal);
    return gate;
  }

  request(req: unknown): Req {
    if (!req || typeof req !== 'object') throw check.badInput('a request object is required');
    return req as Req;
  }

  slot(name: unknown): Slot {
    if (this.sup.closed) throw new Pkcs11SupervisorError('CLOSED', 'the supervisor is closed');
    const slot = typeof name === 'string' ? this.sup.slots.get(name) : undefined;
    if (!slot) throw new Pkcs11SupervisorError('SLOT_NOT_FOUND', `no slot named ${check.shown(name)} (configured: ${[...this.sup.slots.keys()].join(', ')})`);
    return slot;
  }

  /** The slot named by the request, once the caller may do `op` there (with this key). */
  slotFor(req: Req, op: Operation, key?: unknown): Slot {
    const slot = this.slot(req.slot);
    this.authorize(req, slot.name, op, key);
    return slot;
  }

  principalOf(req: Req, slot?: string): Principal | undefined {
    const perCall = parsePrincipal(req.principal, slot);
    if (this.scope && perCall && perCall.id !== this.scope.id) throw check.badInput(`a client scoped to "${this.scope.id}" cannot call as "${perCall.id}"`, slot);
    return this.scope ?? perCall;
  }

  authorize(req: Req, slot: string, op: Operation, key?: unknown): void {
    if (!this.policy.enforced) return;
    const principal = this.principalOf(req, slot);
    const denial = this.policy.denial(principal, slot, op, key);
    if (!denial) return;
    this.sup.events.emit('accessDenied', { slot, op, principal: principal?.id ?? null });
    this.sup.log.warn({ slot, op, principal: principal?.id, code: 'FORBIDDEN' }, 'access denied');
    this.audit?.append({ event: 'denied', slot, key: keyName(key), result: 'FORBIDDEN', principal: principal?.id, peer: principal?.peer, detail: op });
    throw new Pkcs11SupervisorError('FORBIDDEN', denial, { slot });
  }

  /** For operations not on one slot: the slots where the caller may do `op`; FORBIDDEN (counted, audited) when none. */
  authorizeSomeSlot(req: Req, op: Operation): string[] {
    const names = [...this.sup.slots.keys()];
    if (!this.policy.enforced) return names;
    const allowed = this.policy.slotsAllowing(this.principalOf(req), names, op);
    if (allowed.length === 0) this.authorize(req, names[0]!, op);
    return allowed;
  }

  /** Key material and SO state change only on a slot that may write. */
  writable(slot: Slot, what: string): void {
    if (slot.config.readOnly) throw new Pkcs11SupervisorError('READ_ONLY', `slot "${slot.name}" is read-only (readOnly: true): ${what} is refused`, { slot: slot.name });
  }

  /** An audited call is refused before it reaches the token while the trail cannot take its record (durable mode, failClosed). */
  auditWritable(op: Operation, slot: Slot): void {
    if (this.audit && AUDITED.has(op)) this.audit.checkWritable(slot.name);
  }

  /** Records a call that never reached a slot (software verify): its audit record (durable, if so configured) and event. */
  async completedHere(op: Operation, slot: Slot, mechanism: AnyMechanismName, req: Req, result: string, startedAt: number, endedAt: number): Promise<void> {
    if (this.sup.events.listenerCount('callCompleted') > 0) {
      this.sup.events.emit('callCompleted', { slot: slot.name, worker: null, op, mechanism, outcome: 'ok', queuedMs: 0, execMs: endedAt - startedAt, startedAt, endedAt });
    }
    if (this.audit) await this.record(op, slot, mechanism, req, this.principalOf(req, slot.name), result);
  }

  /**
   * Sends `task` through the slot's mailbox as operation `op`; the token's answer, or its error
   * as a Pkcs11SupervisorError. Every outcome is logged if failed, audited and reported once.
   */
  async call<T>(slot: Slot, op: Operation, task: SlotTask, req: Req, shape: CallShape): Promise<T> {
    const mechanism = shape.mechanism ?? null;
    const spec = {
      task,
      exclusive: shape.exclusive === true,
      // A cloud HSM authenticates with cloud credentials: there is no login to wait for.
      needsLogin: shape.needsLogin && slot.config.type !== 'cloud',
      pin: check.pin(req.pin, slot.name),
      timeoutMs: check.timeoutMs(req.timeoutMs, slot),
      signal: check.signal(req.signal, slot.name),
    };
    const events = this.sup.events;
    const submittedAt = Date.now();
    const principal = this.principalOf(req, slot.name);
    this.auditWritable(op, slot);
    // One outcome, whether the mailbox threw (a typed error; nothing untyped reaches a caller)
    // or the token answered with an error.
    let delivered: Delivered<unknown> | null = null;
    let failure: Pkcs11SupervisorError | null = null;
    const release = shape.namesObjects ? this.namingTurns.take(slot.name) : null;
    try {
      if (release) spec.timeoutMs = Math.max(1, spec.timeoutMs - (await release.waited(spec.timeoutMs, spec.signal)));
      delivered = await slot.call<unknown>(spec);
    } catch (raw) {
      failure = raw instanceof Pkcs11SupervisorError ? raw : new Pkcs11SupervisorError('WORKER_CRASHED', `slot "${slot.name}": ${(raw as Error).message}`, { slot: slot.name, cause: raw });
    } finally {
      release?.done();
    }
    const reply = delivered && isReply(delivered.value) ? delivered.value : null;
    if (reply && !reply.ok) failure = new Pkcs11SupervisorError(reply.error.code, reply.error.message, { slot: slot.name, ckr: reply.error.ckr });
    if (failure) {
      this.sup.log.warn(
        { slot: slot.name, worker: delivered?.worker ?? null, op, key: keyName(req.key), mechanism, code: failure.code, ckr: failure.ckr, err: failure.message, durationMs: Date.now() - submittedAt },
        'call failed',
      );
      if (failure.code === 'KEY_NOT_FOUND') this.publicKeys.forget(slot.name);
    }
    if (events.listenerCount('callCompleted') > 0) {
      events.emit('callCompleted', {
        slot: slot.name,
        worker: delivered?.worker ?? null,
        op,
        mechanism,
        outcome: failure?.code ?? 'ok',
        queuedMs: delivered ? delivered.startedAt - delivered.enqueuedAt : Date.now() - submittedAt,
        execMs: reply ? reply.endedAt - reply.startedAt : 0,
        startedAt: reply?.startedAt ?? null,
        endedAt: reply?.endedAt ?? null,
      });
    }
    if (this.audit && AUDITED.has(op)) {
      const result = failure ? failure.code : op === 'verify' && reply?.ok ? (reply.value ? 'valid' : 'invalid') : 'ok';
      const written = this.record(op, slot, mechanism, req, principal, result);
      // In durable mode nothing is returned before its record is on disk; a failed call's own error is the one to report.
      await (failure ? written?.catch(() => undefined) : written);
    }
    if (failure) throw failure;
    return (reply?.ok ? reply.value : delivered!.value) as T;
  }

  private record(op: Operation, slot: Slot, mechanism: AnyMechanismName | null, req: Req, principal: Principal | undefined, result: string): Promise<void> | undefined {
    const data = req.data instanceof Uint8Array ? req.data : undefined;
    return this.audit!.commit({
      event: op,
      slot: slot.name,
      key: req.key === undefined ? (typeof req.label === 'string' ? `label:${req.label}` : undefined) : keyName(req.key),
      mechanism: mechanism ?? undefined,
      dataSha256: data ? createHash('sha256').update(data).digest('hex') : undefined,
      result,
      principal: principal?.id,
      peer: principal?.peer,
    });
  }
}

function keyName(key: unknown): string | undefined {
  return key === undefined ? undefined : typeof key === 'string' ? key : check.shown(key, Infinity);
}

/** A worker's reply (with its timing), as opposed to what a login change returns. */
function isReply(value: unknown): value is WorkerReply {
  return typeof value === 'object' && value !== null && 'ok' in value && 'startedAt' in value;
}
