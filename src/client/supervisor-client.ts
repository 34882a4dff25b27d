/**
 * The in-process client API: one method per operation, each a line that hands the request to
 * its operation file through the gate. Applications sign and verify through it without
 * touching a session, a PIN prompt or a retry loop.
 */
import type { AuditHealth, AuditLog, AuditVerdict } from '../audit.js';
import { checkTrail } from '../audit-verify-thread.js';
import type { Config } from '../config-schema.js';
import type { SupervisorEvents } from '../events.js';
import type { Slot } from '../slot.js';
import type { Supervisor } from '../supervisor.js';
import * as check from '../validate.js';
import { Gate } from './gate.js';
import type { Pkcs11Client } from './pkcs11-client.js';
import * as jws from './jws.js';
import * as keys from './keys.js';
import * as objects from './objects.js';
import type * as R from './requests.js';
import * as session from './session.js';
import * as signing from './signing.js';
import * as ciphers from './ciphers.js';
import { addListener } from './listeners.js';
import { checkRequestFields } from './request-fields.js';

/**
 * Every operation, from the operation files: each exports its operations, and each becomes a
 * method of the client (below), with the same name, request and result.
 */
const OPERATION_FILES = { ...signing, ...ciphers, ...jws, ...keys, ...objects, ...session };

export type Operations = typeof OPERATION_FILES;
/** The operations as methods: each operation file's function without its gate. */
export type Methods = { [K in keyof Operations]: Operations[K] extends (gate: Gate, ...args: infer A) => infer T ? (...args: A) => T : never };

/** Each client's gate, for the package's own test support (src/testing.ts); not part of the API. */
const gates = new WeakMap<Pkcs11Supervisor, Gate>();

export function gateOf(client: Pkcs11Supervisor): Gate {
  return gates.get(client)!;
}

// The operations' methods are added to the class below: one line each would only repeat them.
export interface Pkcs11Supervisor extends Methods {}

export class Pkcs11Supervisor implements Pkcs11Client {
  private readonly gate: Gate;

  constructor(sup: Supervisor | Gate, audit: AuditLog | null = null) {
    this.gate = sup instanceof Gate ? sup : new Gate(sup, audit);
    gates.set(this, this.gate);
  }

  private get sup(): Supervisor {
    return this.gate.sup;
  }

  get config(): Config {
    return this.sup.config;
  }

  /** Opens the slots (see startSupervisor). */
  async start(): Promise<this> {
    try {
      await this.sup.start();
    } catch (e) {
      await this.gate.audit?.close(); // the caller gets no supervisor to close: free the trail for the next writer
      throw e;
    }
    return this;
  }

  /**
   * A client whose every call is made as `principal`. The principal is the application's word
   * for who is asking: this process cannot authenticate its own callers.
   */
  as(principal: R.PrincipalInput | string): Pkcs11Supervisor {
    return new Pkcs11Supervisor(this.gate.scoped(principal));
  }

  /** Every slot's state; under a policy, the slots the caller may see. */
  status(options: R.PrincipalOptions = {}): SupervisorStatus {
    const all = this.snapshot();
    if (!this.gate.policy.enforced) return all;
    const visible = this.gate.authorizeSomeSlot(options as Record<string, unknown>, 'status');
    return { closed: all.closed, slots: Object.fromEntries(visible.map((n) => [n, all.slots[n]!])), audit: all.audit };
  }

  /** @internal Status for the daemon's own /metrics and /readyz: not subject to the policy. */
  snapshot(): SupervisorStatus {
    const slots: Record<string, SlotStatus> = {};
    for (const [name, slot] of this.sup.slots) slots[name] = slot.status();
    return { closed: this.sup.closed, slots, audit: this.gate.audit?.health ?? null };
  }

  /** Checks the audit trail's hash chain (see `pkcs11-supervisor audit verify`), once what is queued is written. */
  async verifyAudit(options: R.PrincipalOptions = {}): Promise<AuditVerdict> {
    const path = this.sup.config.audit?.path;
    if (!path) throw check.badInput('no audit trail is configured');
    this.gate.authorizeSomeSlot(options as Record<string, unknown>, 'verifyAudit');
    await this.gate.audit?.flush().catch(() => undefined); // an unwritable trail: verify what is on disk
    return checkTrail(path);
  }

  /** Operator action: bring a failed slot back and give it a fresh restart budget. */
  reset(slotName: string, options: R.PrincipalOptions = {}): void {
    this.sup.reset(this.gate.slotFor({ ...options, slot: slotName }, 'reset'));
  }

  /** A listener that throws is logged and does not change a call's outcome or a slot's state. */
  on<E extends keyof SupervisorEvents>(event: E, listener: (...args: SupervisorEvents[E]) => void): this {
    addListener(this.sup.events, this.sup.log, event, listener, false);
    return this;
  }

  once<E extends keyof SupervisorEvents>(event: E, listener: (...args: SupervisorEvents[E]) => void): this {
    addListener(this.sup.events, this.sup.log, event, listener, true);
    return this;
  }

  off<E extends keyof SupervisorEvents>(event: E, listener: (...args: SupervisorEvents[E]) => void): this {
    this.sup.events.off(event, listener as never);
    return this;
  }

  /** Queued calls fail with CLOSED, running ones finish; then logout, close sessions, finalize modules. */
  async close(): Promise<void> {
    await this.sup.close();
    await this.gate.audit?.close();
  }
}

for (const [name, operation] of Object.entries(OPERATION_FILES) as [string, (gate: Gate, ...args: unknown[]) => unknown][]) {
  Object.defineProperty(Pkcs11Supervisor.prototype, name, {
    value(this: Pkcs11Supervisor, ...args: unknown[]) {
      try {
        checkRequestFields(name, args[0]);
      } catch (e) {
        return Promise.reject(e); // every operation is async: its refusals reject
      }
      return operation(gateOf(this), ...args);
    },
    writable: true,
    configurable: true,
  });
}

export type SlotStatus = ReturnType<Slot['status']>;

export interface SupervisorStatus {
  closed: boolean;
  slots: Record<string, SlotStatus>;
  /** The audit trail's state, if one is configured. */
  audit: AuditHealth | null;
}
