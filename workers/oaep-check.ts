/**
 * Whether the token decrypts RSA-OAEP as asked, before anything depends on it: a hash it lists
 * but refuses, or a label it ignores, would lose what is encrypted for it or decrypt what was
 * made for another label.
 */
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import { pkcs11js } from './pkcs11js.js';
import { ContextLoginNeeded, WorkerFailure } from './failure.js';
import { SESSION_LOST_CKRS } from '../src/model/ckr.js';
import { publicKeyReport } from './object-ops.js';
import { keyName, type CachedKey } from './key-finder.js';
import { cipher, keyFor, type CryptoSession } from './cipher-core.js';
import { CRYPTO_MECHANISMS, type CryptoMechanismName, type CryptoMechanismSpec } from '../src/model/crypto-mechanisms.js';
import type { KeySelector } from '../src/model/protocol.js';

/**
 * An RSA-OAEP label is refused where the token does not decrypt with one correctly: SoftHSM2 2.6
 * ignores it, so it would decrypt (or unwrap) what was made for another label, and wrap without it.
 */
export function checkLabelHonoured(s: CryptoSession, task: { key: KeySelector; mechanism: CryptoMechanismName; oaepLabel?: Uint8Array | undefined }, contextPin?: string): void {
  if (!task.oaepLabel?.length || CRYPTO_MECHANISMS[task.mechanism].scheme !== 'rsa-oaep') return;
  if (oaepDecryptable(s, task.key, task.mechanism, true, contextPin) !== false) return;
  throw new WorkerFailure('MECHANISM_INVALID', `the token does not decrypt ${task.mechanism} with a label correctly (a ciphertext made with one does not come back), so it cannot take one`);
}

/**
 * Whether the token decrypts RSA-OAEP with these parameters and this key: a ciphertext made here
 * with the key's public half (random bytes, the mechanism's hash, a random label or none) must
 * come back from the token as it went in. A token may list CKM_RSA_PKCS_OAEP yet refuse a hash
 * (SoftHSM2 2.6 takes SHA-1 only) or ignore the label (SoftHSM2 2.6 again), and a ciphertext
 * made for parameters it cannot decrypt is lost. null: it cannot tell (no private or public half
 * here, a key not for decryption, whose unwrap is the caller's to try, or one that asks for the
 * PIN on every use when no `contextPin` came: its decryption shows only whether the token takes
 * the hash). Kept with the found key, so asked again at most when the key is looked up again;
 * an answer without the PIN such a key needs is asked again with it. `askPin`: a label's check
 * that needs that PIN sends the call back for it (ContextLoginNeeded) instead of answering null.
 */
export function oaepDecryptable(s: CryptoSession, sel: KeySelector, name: CryptoMechanismName, labelled: boolean, contextPin?: string, askPin = false): boolean | null {
  let key: CachedKey;
  try {
    key = keyFor(s, sel, name, 'decrypt');
  } catch (e) {
    if (e instanceof WorkerFailure && e.code === 'KEY_NOT_FOUND') return null;
    throw e;
  }
  let pin: string | undefined;
  let unpinned = false;
  try {
    pin = s.contextPinFor(key, sel, contextPin);
  } catch (e) {
    if (!(e instanceof ContextLoginNeeded)) throw e;
    unpinned = true;
  }
  const memo = `${name}\0${labelled}`;
  key.oaep ??= new Map();
  const known = key.oaep.get(memo) ?? (unpinned ? key.oaep.get(`${memo}\0unpinned`) : undefined);
  if (known !== undefined) return known;
  let answer: boolean | null;
  try {
    const pub = s.key(sel, pkcs11js.CKO_PUBLIC_KEY);
    const spki = publicKeyReport(s, pub.handle, pub.keyType, pub.curve?.fieldBytes ?? 0).spkiDer;
    const secret = randomBytes(16);
    const oaepLabel = labelled ? randomBytes(8) : undefined;
    const data = publicEncrypt({ key: createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: (CRYPTO_MECHANISMS[name] as CryptoMechanismSpec).hash!, ...(oaepLabel ? { oaepLabel } : {}) }, secret);
    answer = Buffer.from(cipher(s, 'decrypt', name, key.handle, { data, oaepLabel }, { key, sel, pin })).equals(secret);
  } catch (e) {
    const code = e instanceof WorkerFailure ? e.code : null;
    const ckr = e instanceof WorkerFailure ? e.ckr : (e as Error).message;
    // Refused parameters, or a ciphertext that did not come back: it cannot. A lost session is the
    // caller's to retry, as is a PIN the context login refused. Anything else (a key not for
    // decryption, one that wants a context login, no public half here) says nothing about the parameters.
    if (e instanceof ContextLoginNeeded) {
      // Learnt just now from the token: the key asks for the PIN on every use.
      unpinned = true;
      answer = null;
    } else if (code === 'MECHANISM_INVALID' || code === 'DECRYPTION_FAILED') answer = false;
    else if (ckr && SESSION_LOST_CKRS.has(ckr) && !(key.alwaysAuthenticate && ckr === 'CKR_USER_NOT_LOGGED_IN')) throw e;
    else if (pin !== undefined && (code === 'PIN_INCORRECT' || ckr?.startsWith('CKR_PIN_'))) throw e;
    else answer = null;
  }
  if (answer === null && unpinned && labelled && askPin) throw new ContextLoginNeeded(keyName(sel));
  key.oaep.set(answer === null && unpinned ? `${memo}\0unpinned` : memo, answer);
  return answer;
}

