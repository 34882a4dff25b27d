/** The raw pkcs11js baseline: one session, C_SignInit + C_Sign in a loop, no supervisor. */
import { createHash } from 'node:crypto';
import { pkcs11js } from '../workers/pkcs11js.js';

export interface RawConfig {
  label: string;
  pin: string;
  module: string;
  mech: 'ec' | 'rsa';
  size: number;
}

/** One raw session, logged in, its key found: `signOnce` signs and returns the call's latency in ms. */
export function openRawSigner(c: RawConfig): { signOnce: () => number; close: () => void } {
  const p = pkcs11js;
  const m = new p.PKCS11();
  m.load(c.module);
  try {
    m.C_Initialize({ flags: p.CKF_OS_LOCKING_OK });
  } catch (e) {
    if ((e as Error).message !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') throw e;
  }
  const slot = m.C_GetSlotList(true).find((s) => m.C_GetTokenInfo(s).label.trim() === 'bench')!;
  const s = m.C_OpenSession(slot, p.CKF_SERIAL_SESSION | p.CKF_RW_SESSION);
  try {
    m.C_Login(s, p.CKU_USER, c.pin);
  } catch (e) {
    if ((e as Error).message !== 'CKR_USER_ALREADY_LOGGED_IN') throw e;
  }
  m.C_FindObjectsInit(s, [
    { type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY },
    { type: p.CKA_LABEL, value: c.label },
  ]);
  const [key] = m.C_FindObjects(s, 1);
  m.C_FindObjectsFinal(s);
  const data = Buffer.alloc(c.size, 7);
  const out = Buffer.alloc(512);
  // What the supervisor asks SoftHSM2 for: it has CKM_ECDSA but not CKM_ECDSA_SHA256.
  const mechanism = { mechanism: c.mech === 'ec' ? p.CKM_ECDSA : p.CKM_SHA256_RSA_PKCS };
  return {
    signOnce: () => {
      const a = performance.now();
      const input = c.mech === 'ec' ? createHash('sha256').update(data).digest() : data;
      m.C_SignInit(s, mechanism, key!);
      m.C_Sign(s, input, out);
      return performance.now() - a;
    },
    close: () => m.C_CloseSession(s),
  };
}

/** What a run of signatures gives: each call's latency in ms, the count, the wall time in ms. */
export interface Run {
  lat: number[];
  ops: number;
  elapsed: number;
}

export type RawSigner = ReturnType<typeof openRawSigner>;

/** Signs on `signer` for `ms`. */
export function signFor(signer: RawSigner, ms: number): Run {
  const lat: number[] = [];
  const t0 = performance.now();
  while (performance.now() - t0 < ms) lat.push(signer.signOnce());
  return { lat, ops: lat.length, elapsed: performance.now() - t0 };
}
