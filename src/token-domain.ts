/**
 * What belongs to a token rather than to a slot. Within a process, login is the token's: every
 * slot configured on one token shares the memory of PINs the token refused, one lock for
 * logging in, the knowledge of which slot holds the Security Officer's login, the AES-GCM IVs
 * used with its keys, and the quiet a logout needs. Slots join their token's domain when their
 * first session tells them which token they are on.
 */
import type { SlotWorker } from './slot-worker.js';
import { IvRegistry } from './iv-registry.js';
import type { Secret } from './model/secret.js';
import { outOfModule } from './module-registry.js';

export interface DomainMember {
  readonly name: string;
  readonly workers: readonly SlotWorker[];
}

export class TokenDomain {
  /** HMAC fingerprints of PINs the token refused, and the user PIN set through this process (see pin-chain.ts). */
  readonly refused = new Set<string>();
  setHere: Secret | null = null;
  readonly members = new Set<DomainMember>();
  /** The slot whose session holds the Security Officer's login, if one does. */
  soHolder: DomainMember | null = null;
  /** The AES-GCM IVs used with the token's keys, through any of its slots (iv-registry.ts). */
  readonly gcmIvs = new IvRegistry();
  /** The supervisor's own C_Login logged the token in: only then is the logout at close ours to make. */
  loggedInHere = false;
  private chain: Promise<unknown> = Promise.resolve();
  /** Closed while a logout runs: the token's sessions take no new task until it opens (see quiet). */
  gate: Promise<void> | null = null;
  /** Quiet sections run so far: a call that failed across one was logged out under it. */
  logouts = 0;

  /** Runs logins one at a time for the whole token. */
  lock<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /**
   * Runs `fn` (a logout) while no session of the token is inside the module: new tasks wait at the
   * gate and running ones finish first (up to 5 s, as a module reset waits). A C_Logout beside a
   * running operation fails it on SoftHSM2 (CKR_GENERAL_ERROR, or a find left active), and a call
   * that raced the logout could find its key invisible and be told it does not exist.
   */
  async quiet<T>(fn: () => Promise<T>): Promise<T> {
    while (this.gate) await this.gate;
    let open!: () => void;
    this.gate = new Promise<void>((r) => (open = r));
    try {
      await outOfModule(() => this.workers());
      this.logouts++;
      return await fn();
    } finally {
      this.gate = null;
      open();
    }
  }

  /** Every worker of every slot on the token. */
  *workers(): Iterable<SlotWorker> {
    for (const m of this.members) yield* m.workers;
  }

  /** Takes what a slot learned before it knew its token: its refused PINs, a PIN set through it, the IVs it used. */
  absorb(own: TokenDomain): void {
    for (const f of own.refused) this.refused.add(f);
    this.setHere = own.setHere ?? this.setHere;
    this.gcmIvs.absorb(own.gcmIvs);
  }
}

const domains = new Map<string, TokenDomain>();

/** The domain of a token, by module and the token's serial and label. */
export function tokenDomain(modulePath: string, serial: string, label: string): TokenDomain {
  const key = `${modulePath}\0${serial}\0${label}`;
  let d = domains.get(key);
  if (!d) {
    d = new TokenDomain();
    domains.set(key, d);
  }
  return d;
}
