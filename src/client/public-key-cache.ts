/**
 * Public keys read from the token, kept per slot and key selector so software verify and JWS
 * headers do not queue behind signatures. Forgotten when a slot's session is re-opened (it
 * may face another token, or one re-provisioned) and when the client changes the slot's keys.
 */
import type { SupervisorEmitter } from '../events.js';
import type { KeySelector } from '../model/protocol.js';
import type { PublicKeyInfo } from './requests.js';

export class PublicKeyCache {
  private readonly entries = new Map<string, PublicKeyInfo>();

  constructor(events: SupervisorEmitter) {
    events.on('stateChange', (e) => {
      if (e.to === 'opening') this.forget(e.slot);
    });
  }

  /** The cached key, or the one `read` fetches (then kept). */
  async get(slot: string, sel: KeySelector, read: () => Promise<PublicKeyInfo>): Promise<PublicKeyInfo> {
    const key = `${slot}\0${sel.label ?? ''}\0${sel.id ?? ''}`;
    const hit = this.entries.get(key);
    if (hit) return hit;
    const info = await read();
    this.entries.set(key, info);
    return info;
  }

  forget(slot: string): void {
    for (const k of this.entries.keys()) if (k.startsWith(`${slot}\0`)) this.entries.delete(k);
  }
}
