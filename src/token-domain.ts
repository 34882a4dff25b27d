/**
 * What belongs to a token rather than to a slot. Within a process, login is the token's: every
 * slot configured on one token shares the memory of PINs the token refused, one lock for
 * logging in, the knowledge of which slot holds the Security Officer's login, and the AES-GCM IVs
 * used with its keys. Slots join
 * their token's domain when their first session tells them which token they are on.
 */
import type { SlotWorker } from './slot-worker.js';
import { IvRegistry } from './iv-registry.js';

export interface DomainMember {
  readonly name: string;
  readonly workers: readonly SlotWorker[];
}

export class TokenDomain {
  /** HMAC fingerprints of PINs the token refused (see pin-chain.ts). */
  readonly refused = new Set<string>();
  readonly members = new Set<DomainMember>();
  /** The slot whose session holds the Security Officer's login, if one does. */
  soHolder: DomainMember | null = null;
  /** The AES-GCM IVs used with the token's keys, through any of its slots (iv-registry.ts). */
  readonly gcmIvs = new IvRegistry();
  /** The supervisor's own C_Login logged the token in: only then is the logout at close ours to make. */
  loggedInHere = false;
  private chain: Promise<unknown> = Promise.resolve();

  /** Runs logins one at a time for the whole token. */
  lock<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Every worker of every slot on the token. */
  *workers(): Iterable<SlotWorker> {
    for (const m of this.members) yield* m.workers;
  }

  /** Takes what a slot learned before it knew its token: its refused PINs, the IVs it used. */
  absorb(own: TokenDomain): void {
    for (const f of own.refused) this.refused.add(f);
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
