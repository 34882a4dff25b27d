import { verify } from 'node:crypto';
import type { Pkcs11Supervisor } from '../../dist/src/index.js';

/** True when Node's crypto accepts the signature with the public key read from the token. */
export async function verifiesOnNode(sup: Pkcs11Supervisor, slot: string, key: string, data: Buffer, sig: Buffer, hash = 'sha256'): Promise<boolean> {
  const pk = await sup.getPublicKey({ slot, key });
  return verify(hash, data, pk.keyObject, sig);
}

export function waitForEvent<T>(sup: Pkcs11Supervisor, event: 'stateChange' | 'restart' | 'slotFailed' | 'login', pred: (e: T) => boolean, timeoutMs = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} event within ${timeoutMs} ms`)), timeoutMs);
    const listener = (e: T) => {
      if (!pred(e)) return;
      clearTimeout(timer);
      sup.off(event, listener as never);
      resolve(e);
    };
    sup.on(event, listener as never);
  });
}
