/**
 * The keys a session has found, by class and label/id: a handle is reused until the session
 * goes or it is KEY_RECHECK_MS old, then found again, so a signature comes from the key the
 * token lists now. Flushed with the session, at logout and after objects are destroyed.
 */
import type * as P11 from 'pkcs11js';
import { pkcs11js } from './pkcs11js.js';
import { WorkerFailure } from './failure.js';
import type { Curve } from '../src/model/curves.js';
import type { KeyType } from '../src/model/mechanisms.js';
import { selectorKey, type KeySelector } from '../src/model/protocol.js';
import { findHandles, flagOf, keyShape, type SessionAccess } from './object-ops.js';

export interface CachedKey {
  handle: P11.Handle;
  keyType: KeyType;
  /** An EC key's curve (its fieldBytes: one ECDSA signature half, r or s). */
  curve: Curve | undefined;
  /** Bytes of an RSA key's modulus (0 for other keys, or a token that does not show it). */
  modulusBytes: number;
  /** When a find on the token last returned this handle (performance.now()). */
  foundAt: number;
  /** CKA_ALWAYS_AUTHENTICATE: each signature needs a C_Login(CKU_CONTEXT_SPECIFIC) of its own. */
  alwaysAuthenticate: boolean;
  /** What an RSA-OAEP decryption probe found, by mechanism and label (crypto-ops.ts): asked again when the key is found again. */
  oaep?: Map<string, boolean | null>;
}

/**
 * A key handle is looked up again after this long. A key can be replaced by another process
 * behind a handle that still works (a module may serve the old object from its own cache): a
 * signature comes from the key the token lists at most this long ago. A find costs about as
 * much as an ECDSA signature on SoftHSM2, so not on every call.
 */
const KEY_RECHECK_MS = 1000;

const CLASS_OF = new Map<number, 'privateKey' | 'publicKey' | 'secretKey'>([
  [pkcs11js.CKO_PRIVATE_KEY, 'privateKey'],
  [pkcs11js.CKO_PUBLIC_KEY, 'publicKey'],
  [pkcs11js.CKO_SECRET_KEY, 'secretKey'],
]);

export function keyName(sel: KeySelector, cls: number = pkcs11js.CKO_PRIVATE_KEY): string {
  return `${CLASS_OF.get(cls) === 'secretKey' ? 'secret' : cls === pkcs11js.CKO_PRIVATE_KEY ? 'private' : 'public'} key${sel.label !== undefined ? ` label "${sel.label}"` : ''}${sel.id !== undefined ? ` id ${sel.id}` : ''}`;
}

/** CKA_MODULUS's length, which the spec requires on RSA private and public keys; 0 where a token withholds it. */
function modulusLength(s: SessionAccess, handle: P11.Handle): number {
  try {
    const [m] = s.p11('C_GetAttributeValue').C_GetAttributeValue(s.sessionHandle, handle, [{ type: pkcs11js.CKA_MODULUS }]);
    const bytes = m!.value as Buffer;
    let i = 0;
    while (i < bytes.length && bytes[i] === 0) i++;
    return bytes.length - i;
  } catch {
    return 0;
  }
}

/** A miss that another class of key would have matched (a secret key named for a signature) says so. */
function otherClassHint(s: SessionAccess, sel: KeySelector, cls: number): string {
  for (const [other, name] of CLASS_OF) {
    if (other === cls || findHandles(s, { class: name, label: sel.label, id: sel.id }, 1).length === 0) continue;
    return `; the token has a ${keyName(sel, other)}, which this operation cannot use`;
  }
  return '';
}

export class KeyFinder {
  private readonly keys = new Map<string, CachedKey>();

  constructor(
    private readonly s: SessionAccess,
    /** The session is logged in as the user: private objects are visible. */
    private readonly loggedIn: () => boolean,
  ) {}

  /** The last find's answer: the calls of a batch share one selector object. */
  private last: { sel: KeySelector; cls: number; key: CachedKey } | null = null;

  clear(): void {
    this.keys.clear();
    this.last = null;
  }

  /** Finds a key by label/id; the handle is reused until the session goes or KEY_RECHECK_MS pass (`fresh`: find it now). */
  find(sel: KeySelector, cls: number, fresh = false): CachedKey {
    const now = performance.now();
    const last = this.last;
    if (last && last.sel === sel && last.cls === cls && !fresh && now - last.key.foundAt < KEY_RECHECK_MS) return last.key;
    const s = this.s;
    if (sel.on) s.checkWhere(sel.on, keyName(sel, cls)); // the name is built only for a URI's key
    const cacheKey = `${cls}\0${selectorKey(sel)}`;
    const hit = this.keys.get(cacheKey);
    if (hit && !fresh && now - hit.foundAt < KEY_RECHECK_MS) return this.remember(sel, cls, hit);
    const template = { class: CLASS_OF.get(cls)!, label: sel.label, id: sel.id };
    let found = findHandles(s, template, 2);
    const what = keyName(sel, cls);
    if (found.length === 0 && cls !== pkcs11js.CKO_PUBLIC_KEY) {
      // Private objects are invisible before login; say so, so the caller re-logs in.
      if (!this.loggedIn()) throw new WorkerFailure('PIN_REQUIRED', `the token is not logged in, so no ${what} is visible`, 'CKR_USER_NOT_LOGGED_IN');
      // Logged in now, maybe by another session since the find: only a find made logged in says a key is not there.
      found = findHandles(s, template, 2);
    }
    if (found.length === 0 && hit) {
      // Found on this session a moment ago: a key deleted since, or a module that lost its
      // objects (SoftHSM2 after running out of descriptors). A new session tells them apart.
      this.keys.delete(cacheKey);
      this.last = null;
      throw new WorkerFailure('KEY_NOT_FOUND', `the ${what} this session used is gone from token "${s.tokenIdentity.label}"`, 'CKR_OBJECT_HANDLE_INVALID');
    }
    if (found.length === 0) throw new WorkerFailure('KEY_NOT_FOUND', `no ${what} on token "${s.tokenIdentity.label}" visible to this session${otherClassHint(s, sel, cls)}`);
    if (found.length > 1) throw new WorkerFailure('KEY_AMBIGUOUS', `several objects match ${what}; name the key by id too`);
    const handle = found[0]!;
    const { keyType, curve } = keyShape(s, handle);
    if (!keyType) throw new WorkerFailure('MECHANISM_INVALID', `${what} has a key type this service does not sign with`);
    if (keyType === 'EC' && !curve?.fieldBytes) throw new WorkerFailure('MECHANISM_INVALID', `${what} is on a curve this service does not support (P-256, P-384, P-521, secp256k1)`);
    const modulusBytes = keyType === 'RSA' ? modulusLength(s, handle) : 0;
    // Learnt from C_Sign (a module that enforces it without the attribute) holds for the same object.
    const learnt = hit?.alwaysAuthenticate === true && hit.handle.equals(handle);
    const alwaysAuthenticate = cls === pkcs11js.CKO_PRIVATE_KEY && (learnt || flagOf(s, handle, pkcs11js.CKA_ALWAYS_AUTHENTICATE) === true);
    const entry = { handle, keyType, curve, modulusBytes, foundAt: now, alwaysAuthenticate };
    this.keys.set(cacheKey, entry);
    return this.remember(sel, cls, entry);
  }

  private remember(sel: KeySelector, cls: number, key: CachedKey): CachedKey {
    this.last = { sel, cls, key };
    return key;
  }
}
