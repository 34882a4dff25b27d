/**
 * The AES-GCM IVs this process has encrypted with, per key: an IV used twice under one key
 * gives away the XOR of the two plaintexts and the key's authentication, so a caller's IV that
 * was used before is refused. Kept in memory for the life of the process, up to a bound per
 * key; past it only the daemon's own random IVs are taken. A restart forgets: callers who
 * bring their own IVs must never repeat one.
 */
const MAX_PER_KEY = 1_000_000;

export class IvRegistry {
  private readonly used = new Map<string, Set<string>>();

  /**
   * Records `iv` for the key; false if it was used before, or if the caller chose it and the
   * key's record is full (a random 96-bit IV of the daemon's is recorded while there is room).
   */
  claim(key: string, iv: Uint8Array, chosenByCaller: boolean): boolean {
    let seen = this.used.get(key);
    if (!seen) this.used.set(key, (seen = new Set()));
    const id = Buffer.from(iv).toString('base64');
    if (seen.has(id)) return false;
    if (seen.size >= MAX_PER_KEY) return !chosenByCaller;
    seen.add(id);
    return true;
  }
}
