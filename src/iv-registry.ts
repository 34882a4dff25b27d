/**
 * The AES-GCM IVs this process has encrypted with, per key: an IV used twice under one key
 * gives away the XOR of the two plaintexts and the key's authentication, so a caller's IV that
 * was used before is refused. Kept in memory for the life of the process, up to a bound for the
 * slot (about 55 MB at the bound); past it only the daemon's own random IVs are taken. A call
 * that fails gives its IV back: no ciphertext under it left the daemon, and names of keys that
 * do not exist leave nothing behind. A restart forgets: callers who bring their own IVs must
 * never repeat one.
 */
const MAX_IVS = 1_000_000;

export class IvRegistry {
  private readonly used = new Map<string, Set<string>>();
  private count = 0;

  /**
   * Records `iv` for the key; false if it was used before, or if the caller chose it and the
   * record is full (a random 96-bit IV of the daemon's is recorded while there is room).
   */
  claim(key: string, iv: Uint8Array, chosenByCaller: boolean): boolean {
    const id = Buffer.from(iv).toString('base64');
    const seen = this.used.get(key);
    if (seen?.has(id)) return false;
    if (this.count >= MAX_IVS) return !chosenByCaller;
    if (seen) seen.add(id);
    else this.used.set(key, new Set([id]));
    this.count++;
    return true;
  }

  /** The call that claimed `iv` failed: nothing was encrypted under it that anyone holds. */
  release(key: string, iv: Uint8Array): void {
    const seen = this.used.get(key);
    if (!seen?.delete(Buffer.from(iv).toString('base64'))) return;
    this.count--;
    if (seen.size === 0) this.used.delete(key);
  }

  /** IVs recorded now (at most MAX_IVS). */
  get size(): number {
    return this.count;
  }
}
