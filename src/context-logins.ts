/**
 * Keys that ask for the PIN on every use (CKA_ALWAYS_AUTHENTICATE) on one slot, and how a sign
 * or decrypt with one runs: C_Login(CKU_CONTEXT_SPECIFIC) for that one use, with a PIN from the
 * chain (the call's own, the configured one or the callback's). A key is learnt when its
 * session thread sends a use back unrun for want of a PIN; from then on its uses carry the
 * PIN at once, and the mailbox never batches them. A PIN the token refuses is never sent again
 * by the chain, and a refusal is the caller's error, not a lost session.
 */
import type { PinChain, PinOrigin } from './pin-chain.js';
import { selectorKey, type UserPinState, type WorkerReply, type WorkerTask } from './model/protocol.js';
import type { CallNeeds } from './slot-call.js';

/**
 * The uses that log in for themselves (C_UnwrapKey has no init to log in after), and an RSA-OAEP
 * label's check before an encryption, which decrypts with the key. Only signs and decryptions
 * teach that a key needs the PIN: the check asks for it only while it has no answer.
 */
type PinnedTask = Extract<WorkerTask, { op: 'sign' | 'decrypt' | 'oaepDecryptable' }>;
const PINNED: ReadonlySet<string> = new Set(['sign', 'decrypt', 'oaepDecryptable']);
const REMEMBERED: ReadonlySet<string> = new Set(['sign', 'decrypt']);

/** What a slot worker lends a context-specific sign. */
export interface ContextLoginWorker {
  readonly slot: string;
  readonly pins: PinChain;
  tokenLabel(): string | undefined;
  /** The user PIN's retry flags as the token last reported them. */
  userPin(): UserPinState | null;
  runTask<T>(task: WorkerTask, deadline: number): Promise<WorkerReply<T>>;
  attempted(origin: PinOrigin, outcome: string): void;
}

export class ContextLogins {
  private readonly keys = new Set<string>();

  /** A use of a key known to ask for the PIN: it runs alone, with that PIN. */
  needsPin(task: { op: string; key?: unknown }): boolean {
    return this.keys.size > 0 && REMEMBERED.has(task.op) && this.keys.has(selectorKey((task as PinnedTask).key));
  }

  /** One run of a call's task; a use of a key that asks for the PIN on every use runs with that PIN. */
  async run<T>(task: WorkerTask, call: CallNeeds, w: ContextLoginWorker): Promise<WorkerReply<T>> {
    if (!this.needsPin(task)) {
      const reply = await w.runTask<T>(task, call.deadline);
      if (reply.ok || reply.error.contextLogin !== 'needed' || !PINNED.has(task.op)) return reply;
      if (REMEMBERED.has(task.op)) this.keys.add(selectorKey((task as PinnedTask).key));
    }
    const use = task as PinnedTask;
    const reply = await this.runWithPin<T>(use, call, w);
    if (reply.ok || reply.error.contextLogin !== 'unsupported') return reply;
    // The module keeps the attribute without enforcing it: the token uses it as any key.
    this.keys.delete(selectorKey(use.key));
    return w.runTask<T>(task, call.deadline);
  }

  private async runWithPin<T>(task: PinnedTask, call: CallNeeds, w: ContextLoginWorker): Promise<WorkerReply<T>> {
    const { pin, origin } = await w.pins.resolve(call.pin, { slot: w.slot, tokenLabel: w.tokenLabel(), reason: 'login' }, false, w.userPin() ?? 'ok');
    const reply = await w.runTask<T>({ ...task, contextPin: pin.reveal() }, call.deadline);
    if (!reply.ok && reply.error.contextLogin === 'unsupported') return reply; // no login was tried
    const outcome = reply.ok ? 'ok' : reply.error.code;
    w.attempted(origin, outcome);
    if (reply.ok) w.pins.accepted(pin);
    else if (outcome === 'PIN_INCORRECT') w.pins.rejectedByToken(pin);
    return reply;
  }
}
