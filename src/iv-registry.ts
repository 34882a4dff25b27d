/**
 * The AES-GCM IVs this process has encrypted with, per key: an IV used twice under one key
 * gives away the XOR of the two plaintexts and the key's authentication, so a caller's IV that
 * was used before is refused. A key may be named by its ref, label, id or URI, and only the token
 * knows which object a name finds: an IV is refused if it was used under any name that could be
 * the same key (no label or id differs). Kept per token (token-domain.ts), so slots on one token
 * share it, in memory for the life of the process, up to a bound (about 57 MB at the bound); past
 * it only the daemon's own random IVs are taken. A call that fails gives its IV back: no
 * ciphertext under it left the daemon, and names of keys that do not exist leave nothing behind.
 * A restart forgets: callers who bring their own IVs must never repeat one.
 */
import { mayNameSameObject, type KeySelector } from './model/protocol.js';

const MAX_IVS = 1_000_000;

interface Entry {
  label: string | undefined;
  id: string | undefined;
  /** The IVs used under this name, base64. */
  ivs: Set<string>;
}

const add = <K, V>(m: Map<K, Set<V>>, k: K, v: V) => (m.get(k) ?? m.set(k, new Set()).get(k)!).add(v);
const remove = <K, V>(m: Map<K, Set<V>>, k: K, v: V) => {
  const set = m.get(k);
  if (set?.delete(v) && set.size === 0) m.delete(k);
};

/** Whether an entry of `set` that could name the key's object has `iv`. */
function usedIn(set: Set<Entry> | undefined, key: KeySelector, iv: string): boolean {
  if (!set) return false;
  for (const e of set) if (mayNameSameObject(e, key) && e.ivs.has(iv)) return true;
  return false;
}

const nameOf = (key: KeySelector) => `${key.label ?? ''}\0${key.id ?? ''}`;

export class IvRegistry {
  /** By key name (label and id), each name indexed by its label and by its id. */
  private readonly entries = new Map<string, Entry>();
  private readonly byLabel = new Map<string | undefined, Set<Entry>>();
  private readonly byId = new Map<string | undefined, Set<Entry>>();
  private count = 0;

  /**
   * Records `iv` for the key; false if it was used before with a name that could be this key's,
   * or if the caller chose it and the record is full (a random 96-bit IV of the daemon's is
   * recorded while there is room).
   */
  claim(key: KeySelector, iv: Uint8Array, chosenByCaller: boolean): boolean {
    const id = Buffer.from(iv).toString('base64');
    if (this.usedBefore(key, id)) return false;
    if (this.count >= MAX_IVS) return !chosenByCaller;
    const name = nameOf(key);
    let entry = this.entries.get(name);
    if (!entry) {
      entry = { label: key.label, id: key.id, ivs: new Set() };
      this.entries.set(name, entry);
      add(this.byLabel, entry.label, entry);
      add(this.byId, entry.id, entry);
    }
    entry.ivs.add(id);
    this.count++;
    return true;
  }

  /** Whether `iv` was used under a name that could be the key's (mayNameSameObject), found through the indexes. */
  private usedBefore(key: KeySelector, iv: string): boolean {
    if (key.label !== undefined) return usedIn(this.byLabel.get(key.label), key, iv) || usedIn(this.byLabel.get(undefined), key, iv);
    return usedIn(this.byId.get(key.id), key, iv) || usedIn(this.byId.get(undefined), key, iv);
  }

  /** The call that claimed `iv` failed: nothing was encrypted under it that anyone holds. */
  release(key: KeySelector, iv: Uint8Array): void {
    const name = nameOf(key);
    const entry = this.entries.get(name);
    if (!entry?.ivs.delete(Buffer.from(iv).toString('base64'))) return;
    this.count--;
    if (entry.ivs.size > 0) return;
    this.entries.delete(name);
    remove(this.byLabel, entry.label, entry);
    remove(this.byId, entry.id, entry);
  }

  /** Takes the IVs another record holds (a slot's, from before it knew its token). */
  absorb(other: IvRegistry): void {
    for (const e of other.entries.values()) for (const iv of e.ivs) this.claim(e, Buffer.from(iv, 'base64'), false);
  }

  /** IVs recorded now (at most MAX_IVS, and what slots brought when they joined the token). */
  get size(): number {
    return this.count;
  }
}
