/**
 * Public keys read from the token, kept per slot and key selector for software verify and JWS
 * headers. A key is what the token holds now: a call uses an entry only if the token confirmed
 * it within the slot's `keyCheckMs`, else it waits for a confirmation that began after it
 * arrived. Calls that wait together share one confirmation, so a burst of verifies costs the
 * token one public-key read. Forgotten at once when a slot's session is re-opened, when a call
 * on the slot finds a key missing (the gate says so), after a module reset, and when the client
 * changes the slot's keys.
 */
import type { SupervisorEmitter } from '../events.js';
import { selectorKey, type KeySelector } from '../model/protocol.js';
import type { PublicKeyInfo } from './requests.js';

interface Entry {
  info: PublicKeyInfo | null;
  confirmedAt: number;
  inFlight: Promise<PublicKeyInfo> | null;
  /** The confirmation that starts when the one in flight ends, for the calls that came meanwhile. */
  next: Promise<PublicKeyInfo> | null;
}

export class PublicKeyCache {
  private readonly entries = new Map<string, Entry>();

  constructor(events: SupervisorEmitter) {
    events.on('stateChange', (e) => {
      if (e.to === 'opening') this.forget(e.slot);
    });
    events.on('moduleReset', () => this.entries.clear());
  }

  /** The key as the token confirmed it within `maxAgeMs`, or after this call arrived. */
  get(slot: string, sel: KeySelector, maxAgeMs: number, read: () => Promise<PublicKeyInfo>): Promise<PublicKeyInfo> {
    // With what a URI names of the token (sel.on): a key confirmed here is not one a URI for elsewhere names.
    const key = `${slot}\0${selectorKey(sel)}`;
    let e = this.entries.get(key);
    if (!e) {
      e = { info: null, confirmedAt: 0, inFlight: null, next: null };
      this.entries.set(key, e);
    }
    if (e.info && maxAgeMs > 0 && Date.now() - e.confirmedAt < maxAgeMs) return Promise.resolve(e.info);
    const inFlight = e.inFlight;
    if (!inFlight) return this.confirm(e, read);
    const entry = e;
    // The read in flight began before this call: wait for the next one.
    entry.next ??= inFlight.then(noop, noop).then(() => {
      entry.next = null;
      return this.confirm(entry, read);
    });
    return entry.next;
  }

  private confirm(e: Entry, read: () => Promise<PublicKeyInfo>): Promise<PublicKeyInfo> {
    const startedAt = Date.now();
    const reading = read().then((info) => {
      e.info = info;
      e.confirmedAt = startedAt;
      return info;
    });
    e.inFlight = reading;
    const done = () => {
      if (e.inFlight === reading) e.inFlight = null;
    };
    reading.then(done, done);
    return reading;
  }

  /**
   * A call that changes the slot's keys (generation, import, destruction): what was confirmed
   * before it is forgotten as it starts and again as it ends, so a read that raced it is not kept.
   */
  async changing<T>(slot: string, call: () => Promise<T>): Promise<T> {
    this.forget(slot);
    try {
      return await call();
    } finally {
      this.forget(slot);
    }
  }

  forget(slot: string): void {
    for (const k of this.entries.keys()) if (k.startsWith(`${slot}\0`)) this.entries.delete(k);
  }
}

function noop(): void {}
