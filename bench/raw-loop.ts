/** The raw pkcs11js baseline (one session, one operation in a loop, no supervisor), and the closed loop of awaited callers the supervisor's cells run. */
import { createHash } from 'node:crypto';
import type * as P11 from 'pkcs11js';
import { pkcs11js } from '../workers/pkcs11js.js';

/** What a bench cell does: ECDSA P-256 or RSA-2048 signatures, AES-GCM or RSA-OAEP (SHA-1) decryptions. */
export type BenchOp = 'ec' | 'rsa' | 'aes-gcm' | 'rsa-oaep';

export interface RawConfig {
  label: string;
  pin: string;
  module: string;
  mech: BenchOp;
  size: number;
  /** For a decryption: the ciphertext to decrypt again and again, and its IV (AES-GCM). */
  ciphertext?: Uint8Array;
  iv?: Uint8Array;
}

/** What the supervisor asks SoftHSM2 for, per operation: it has CKM_ECDSA but not CKM_ECDSA_SHA256; RSA-OAEP with SHA-1 only. */
function mechanismOf(c: RawConfig): P11.Mechanism {
  const p = pkcs11js;
  switch (c.mech) {
    case 'ec':
      return { mechanism: p.CKM_ECDSA };
    case 'rsa':
      return { mechanism: p.CKM_SHA256_RSA_PKCS };
    case 'aes-gcm':
      return { mechanism: p.CKM_AES_GCM, parameter: { type: p.CK_PARAMS_AES_GCM, iv: Buffer.from(c.iv!), ivBits: 96, tagBits: 128 } as P11.GcmParams };
    case 'rsa-oaep':
      return { mechanism: p.CKM_RSA_PKCS_OAEP, parameter: { type: p.CK_PARAMS_RSA_OAEP, hashAlg: p.CKM_SHA_1, mgf: p.CKG_MGF1_SHA1, source: 1 } as P11.RsaOAEP };
  }
}

/** One raw session, logged in, its key found: `callOnce` runs the operation once and returns its latency in ms. */
export function openRawSession(c: RawConfig): { callOnce: () => number; close: () => void } {
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
    { type: p.CKA_CLASS, value: c.mech === 'aes-gcm' ? p.CKO_SECRET_KEY : p.CKO_PRIVATE_KEY },
    { type: p.CKA_LABEL, value: c.label },
  ]);
  const [key] = m.C_FindObjects(s, 1);
  m.C_FindObjectsFinal(s);
  const data = c.ciphertext ? Buffer.from(c.ciphertext) : Buffer.alloc(c.size, 7);
  const out = Buffer.alloc(Math.max(512, data.length + 64));
  const mechanism = mechanismOf(c);
  const decrypt = c.mech === 'aes-gcm' || c.mech === 'rsa-oaep';
  return {
    callOnce: () => {
      const a = performance.now();
      if (decrypt) {
        m.C_DecryptInit(s, mechanism, key!);
        m.C_Decrypt(s, data, out);
      } else {
        const input = c.mech === 'ec' ? createHash('sha256').update(data).digest() : data;
        m.C_SignInit(s, mechanism, key!);
        m.C_Sign(s, input, out);
      }
      return performance.now() - a;
    },
    close: () => m.C_CloseSession(s),
  };
}

/** What a run of calls gives: each call's latency in ms, the count, the wall time in ms. */
export interface Run {
  lat: number[];
  ops: number;
  elapsed: number;
}

export type RawSession = ReturnType<typeof openRawSession>;

/** Runs the session's operation for `ms`. */
export function callFor(session: RawSession, ms: number): Run {
  const lat: number[] = [];
  const t0 = performance.now();
  while (performance.now() - t0 < ms) lat.push(session.callOnce());
  return { lat, ops: lat.length, elapsed: performance.now() - t0 };
}

/** `concurrency` callers, each awaiting `call` again and again for `ms`: a closed loop, as an application's callers are. */
export async function closedLoop(call: () => Promise<unknown>, concurrency: number, ms: number): Promise<Run> {
  const lat: number[] = [];
  let ops = 0;
  const end = performance.now() + ms;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        const a = performance.now();
        await call();
        lat.push(performance.now() - a);
        ops++;
      }
    }),
  );
  return { lat, ops, elapsed: performance.now() - t0 };
}
