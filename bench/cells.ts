/**
 * What the bench's cells run on: its SoftHSM2 token (bench-token.ts), the library this thread
 * owns for the whole run, the ciphertexts the decryption cells decrypt, the raw pkcs11js
 * baselines, and the supervisor's slots and operations on the same keys.
 */
import { createCipheriv, createPublicKey, constants, publicEncrypt, randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { pino } from 'pino';
import { callFor, closedLoop, openRawSession, type BenchOp, type RawConfig, type Run } from './raw-loop.js';
import { busiestThread } from './same-cpu.js';
import { inTurns as takeTurns } from './turns.js';
import { startSupervisor, type ConfigInput, type Pkcs11Client, type Pkcs11Supervisor } from '../src/index.js';
import { pkcs11js } from '../workers/pkcs11js.js';
import { makeBenchToken, MODULE } from './bench-token.js';

export const OP_NAME: Record<BenchOp, string> = { ec: 'ECDSA P-256', rsa: 'RSA-2048', 'aes-gcm': 'AES-GCM decrypt', 'rsa-oaep': 'RSA-OAEP decrypt' };

const KEY_LABEL: Record<BenchOp, string> = { ec: 'ec', rsa: 'rsa', 'aes-gcm': 'aes', 'rsa-oaep': 'rsa-enc' };

export type RawName = 'raw-1' | 'raw-2' | 'raw-4';
export type SlotInput = ConfigInput['slots'][string];

export interface Baseline {
  run(ms: number): Promise<Run>;
  close(): Promise<void>;
}

export type BenchCells = ReturnType<typeof openCells>;

/** The bench's token made and its library initialized; `seconds`: how long a comparison runs. */
export function openCells(seconds: number) {
  const { dir, conf, pin, aesKey } = makeBenchToken();
  // The main thread owns the library for the whole run, as the daemon's module registry does.
  // Without an owner, the raw baseline's threads each loaded it, raced their C_Initialize calls
  // on a fresh copy and unloaded it as they exited: SoftHSM2 then crashed (segfault, "malloc():
  // unaligned fastbin chunk") or answered CKR_OPERATION_ACTIVE on a new session, in about one
  // run in four.
  const owner = new pkcs11js.PKCS11();
  owner.load(MODULE);
  owner.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  /** The supervisors' module: initialized by this thread first, with OS locking, so pools on it are safe. */
  const moduleConfig = { path: MODULE, env: { SOFTHSM2_CONF: conf }, applicationInitializesWithOsLocking: true };

  /** What each decryption cell decrypts, again and again: made once here, by size. */
  const GCM_IV = randomBytes(12);
  const ciphertexts = new Map<string, Uint8Array>();
  for (const size of [32, 4096]) {
    const c = createCipheriv('aes-256-gcm', aesKey, GCM_IV);
    ciphertexts.set(`aes-gcm/${size}`, Buffer.concat([c.update(Buffer.alloc(size, 7)), c.final(), c.getAuthTag()]));
  }
  {
    const s = owner.C_OpenSession(owner.C_GetSlotList(true)[0]!, pkcs11js.CKF_SERIAL_SESSION);
    owner.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, { type: pkcs11js.CKA_LABEL, value: 'rsa-enc' }]);
    const [pub] = owner.C_FindObjects(s, 1);
    owner.C_FindObjectsFinal(s);
    const [n, e] = owner.C_GetAttributeValue(s, pub!, [{ type: pkcs11js.CKA_MODULUS }, { type: pkcs11js.CKA_PUBLIC_EXPONENT }]).map((a) => (a.value as Buffer).toString('base64url'));
    owner.C_CloseSession(s);
    const key = createPublicKey({ key: { kty: 'RSA', n, e }, format: 'jwk' });
    ciphertexts.set('rsa-oaep/32', publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.alloc(32, 7)));
  }

  const rawConfig = (mech: BenchOp, size: number): RawConfig => ({ label: KEY_LABEL[mech], pin, module: MODULE, mech, size, ciphertext: ciphertexts.get(`${mech}/${size}`), iv: GCM_IV });

  /** N raw pkcs11js threads with a session each, kept between runs so runs can take turns with the supervisor. */
  async function rawThreads(n: number, mech: BenchOp, size: number) {
    const threads = Array.from({ length: n }, () => new Worker(new URL('./raw-worker.js', import.meta.url), { workerData: rawConfig(mech, size) }));
    // Each turn takes its listeners off again: a turn every 250 ms would pile them up.
    const ask = (w: Worker, ms: number) =>
      new Promise<Run>((resolve, reject) => {
        const done = (r: Run) => (w.off('error', fail), resolve(r));
        const fail = (e: Error) => (w.off('message', done), reject(e));
        w.once('message', done).once('error', fail);
        w.postMessage(ms);
      });
    await Promise.all(threads.map((w) => ask(w, 10))); // sessions open, code warm
    return {
      async run(ms: number): Promise<Run> {
        const results = await Promise.all(threads.map((w) => ask(w, ms)));
        return { lat: results.flatMap((r) => r.lat), ops: results.reduce((a, r) => a + r.ops, 0), elapsed: Math.max(...results.map((r) => r.elapsed)) };
      },
      async close() {
        await Promise.all(threads.map((w) => (w.postMessage('stop'), new Promise((r) => w.once('exit', r)))));
      },
    };
  }

  /** A raw baseline by its name in the table: raw-1 in this thread, raw-N in N threads. */
  async function openBaseline(name: RawName, mech: BenchOp, size: number): Promise<Baseline> {
    if (name !== 'raw-1') return rawThreads(Number(name.slice(4)), mech, size);
    const session = openRawSession(rawConfig(mech, size));
    return { run: async (ms) => callFor(session, ms), close: async () => session.close() };
  }

  /** One call of the cell's operation through a client. */
  function operation(sup: Pkcs11Client, slot: string, mech: BenchOp, size: number): () => Promise<unknown> {
    const data = Buffer.alloc(size, 7);
    switch (mech) {
      case 'ec':
      case 'rsa': {
        const mechanism = mech === 'ec' ? 'ECDSA-SHA256' : 'RSA-PKCS1-SHA256';
        return () => sup.sign({ slot, key: mech, mechanism, data });
      }
      case 'aes-gcm': {
        const ciphertext = ciphertexts.get(`aes-gcm/${size}`)!;
        return () => sup.decrypt({ slot, key: 'aes', mechanism: 'AES-GCM', data: ciphertext, iv: GCM_IV });
      }
      case 'rsa-oaep': {
        const ciphertext = ciphertexts.get(`rsa-oaep/${size}`)!;
        return () => sup.decrypt({ slot, key: 'rsaEnc', mechanism: 'RSA-OAEP-SHA1', data: ciphertext });
      }
    }
  }

  function through(sup: Pkcs11Client, slot: string, mech: BenchOp, size: number, concurrency: number, ms = seconds * 1000): Promise<Run> {
    return closedLoop(operation(sup, slot, mech, size), concurrency, ms);
  }

  /** A raw baseline and a supervisor cell in turns, `seconds` each (turns.ts). */
  const inTurns = (raw: (ms: number) => Promise<Run>, cell: (ms: number) => Promise<Run>, sessionThread?: number, sliceMs?: number) => takeTurns(seconds, raw, cell, sessionThread, sliceMs);

  /** A lone slot's session thread, found while it signs one call at a time. */
  const sessionThreadOf = (sup: Pkcs11Supervisor, slot: string, mech: BenchOp) => busiestThread(() => through(sup, slot, mech, 32, 1, 300));

  const slotCfg: SlotInput = { module: 'soft', token: { label: 'bench' }, pin: { env: 'BENCH_PIN' }, keys: { ec: { label: 'ec' }, rsa: { label: 'rsa' }, aes: { label: 'aes' }, rsaEnc: { label: 'rsa-enc' } }, queueLimit: 100_000, probeIntervalMs: 0 };
  /** A supervisor with one slot on the bench token; `more`: the rest of its config (an audit trail, say). */
  const startSlot = (name: string, slot: SlotInput, more: Partial<ConfigInput> = {}) =>
    startSupervisor({ config: { modules: { soft: moduleConfig }, slots: { [name]: slot }, metrics: { enabled: false }, ...more }, logger: pino({ level: 'silent' }) });

  return {
    seconds,
    dir,
    pin,
    moduleConfig,
    slotCfg,
    rawConfig,
    openBaseline,
    through,
    inTurns,
    sessionThreadOf,
    startSlot,
    /** Ends the run's hold on the library. */
    close: () => owner.C_Finalize(),
  };
}
