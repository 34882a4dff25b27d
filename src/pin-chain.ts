/**
 * Where a PIN comes from, in order: the call's own `pin`, the slot's configured source
 * (env or file), the application's `pinCallback`, else PIN_REQUIRED.
 *
 * A PIN the token rejected is remembered only as a keyed fingerprint, by every slot on that
 * token, and is not sent again from any automatic source until the token takes it: a real
 * token locks after a few wrong tries.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { PinSource } from './config-schema.js';
import { pinText } from './file-text.js';
import { fieldRefused, Pkcs11SupervisorError } from './model/errors.js';
import { Secret } from './model/secret.js';
import type { UserPinState } from './model/protocol.js';

export interface PinRequest {
  slot: string;
  tokenLabel: string | undefined;
  reason: 'login' | 'relogin';
}

/** Supplied by the embedding application; may prompt a human. Returning null/undefined means "no PIN". */
export type PinCallback = (request: PinRequest) => string | null | undefined | Promise<string | null | undefined>;

export type PinOrigin = 'call' | 'env' | 'file' | 'callback';

/** What every slot on one token knows of its user PIN (token-domain.ts holds it for them). */
export interface TokenPinMemory {
  /** HMAC fingerprints of PINs the token refused. */
  readonly refused: Set<string>;
  /**
   * The user PIN set through this process (initPin, setPin). A configured source still holds the
   * PIN it replaced until an operator updates it: automatic logins use this one instead, so a
   * re-login after the change does not spend one of the token's tries on a PIN known to be gone.
   */
  setHere: Secret | null;
}

const fingerprintKey = randomBytes(32);

function fingerprint(pin: Secret): string {
  return createHmac('sha256', fingerprintKey).update(pin.reveal()).digest('base64');
}

export class PinChain {
  /** Set after an idle logout under reauthentication "fail": only an explicit PIN logs in again. */
  private explicitOnly = false;

  constructor(
    private readonly slot: string,
    private readonly source: PinSource | undefined,
    private readonly callback: PinCallback | undefined,
    /** The token's memory of its PINs, shared by every slot on it. */
    private readonly token: () => TokenPinMemory,
  ) {}

  /** A source the supervisor may log in from by itself: a configured one, unless an idle logout under reauthentication "fail" wants an explicit PIN. */
  get hasAutomaticSource(): boolean {
    return this.source !== undefined && !this.explicitOnly;
  }

  requireExplicitPin(): void {
    this.explicitOnly = true;
  }

  /**
   * The PIN to try now, given the token's retry flags: none on a locked PIN, and on the final
   * try only one a person or the application gives now. A configured PIN may be the wrong one
   * (a daemon restarted with a bad secret tries it once per start), and it would lock the token.
   */
  async resolve(perCall: Secret | undefined, request: PinRequest, explicit: boolean, retries: UserPinState): Promise<{ pin: Secret; origin: PinOrigin }> {
    if (retries === 'locked') {
      throw new Pkcs11SupervisorError('PIN_LOCKED', `token "${request.tokenLabel}" reports its user PIN locked (CKF_USER_PIN_LOCKED): the Security Officer must set a new one (initPin)`, { slot: this.slot });
    }
    const found = await this.find(perCall, request, explicit);
    if (retries === 'final_try' && (found.origin === 'env' || found.origin === 'file')) {
      throw new Pkcs11SupervisorError(
        'PIN_REQUIRED',
        `token "${request.tokenLabel}" reports that one more wrong PIN locks it (CKF_USER_PIN_FINAL_TRY), so the configured PIN (${found.origin}) is not tried; log in with login(slot, pin) or pass a call's pin`,
        { slot: this.slot },
      );
    }
    return found;
  }

  private async find(perCall: Secret | undefined, request: PinRequest, explicit: boolean): Promise<{ pin: Secret; origin: PinOrigin }> {
    if (perCall) return this.check(perCall, 'call', explicit);
    if (this.explicitOnly) {
      throw new Pkcs11SupervisorError(
        'PIN_REQUIRED',
        `slot "${this.slot}" logged out after being idle and its reauthentication policy is "fail": call login() or pass a pin`,
        { slot: this.slot },
      );
    }
    const configured = await this.fromSource();
    const token = this.token();
    if (token.setHere) {
      if (configured?.pin.reveal() !== token.setHere.reveal()) return this.check(token.setHere, 'call', explicit);
      token.setHere = null; // the source has the new PIN now
    }
    if (configured) return this.check(configured.pin, configured.origin, explicit);
    if (this.callback) {
      let value: string | null | undefined;
      try {
        value = await this.callback(request);
      } catch (e) {
        throw new Pkcs11SupervisorError('PIN_REQUIRED', `the pinCallback for slot "${this.slot}" failed: ${(e as Error).message}`, { slot: this.slot });
      }
      if (typeof value === 'string' && value.length > 0) return this.check(new Secret(value), 'callback', explicit);
    }
    throw new Pkcs11SupervisorError('PIN_REQUIRED', `slot "${this.slot}" needs a login and no PIN source gave a PIN`, { slot: this.slot });
  }

  private async fromSource(): Promise<{ pin: Secret; origin: PinOrigin } | null> {
    if (!this.source) return null;
    if ('env' in this.source) {
      const value = pinText(process.env[this.source.env] ?? '');
      return value ? { pin: new Secret(value), origin: 'env' } : null;
    }
    let handle;
    try {
      handle = await open(this.source.file, 'r');
    } catch {
      return null; // not there (yet): the next source, or PIN_REQUIRED
    }
    try {
      // Checked on the descriptor that is read: a file swapped after a check cannot slip through.
      refuseLoosePinFile(this.source.file, await handle.stat(), `slots.${this.slot}.pin.file`);
      const value = pinText(await handle.readFile('utf8'));
      return value ? { pin: new Secret(value), origin: 'file' } : null;
    } finally {
      await handle.close();
    }
  }

  private check(pin: Secret, origin: PinOrigin, explicit: boolean): { pin: Secret; origin: PinOrigin } {
    if (!explicit && this.token().refused.has(fingerprint(pin))) {
      throw new Pkcs11SupervisorError(
        'PIN_INCORRECT',
        `the token of slot "${this.slot}" already rejected this PIN (from ${origin}); it is not sent again automatically. Supply a different PIN or call login()`,
        { slot: this.slot, ckr: 'CKR_PIN_INCORRECT' },
      );
    }
    return { pin, origin };
  }

  rejectedByToken(pin: Secret): void {
    const token = this.token();
    token.refused.add(fingerprint(pin));
    if (token.setHere?.reveal() === pin.reveal()) token.setHere = null; // changed again elsewhere: back to the sources
  }

  /** The token took this PIN (or it was just set): it may be tried again. Other refused PINs stay refused. */
  accepted(pin: Secret): void {
    this.token().refused.delete(fingerprint(pin));
    this.explicitOnly = false;
  }

  /** The user PIN was just set to this through the slot (initPin, setPin): every slot on the token logs in with it from now on. */
  changed(pin: Secret): void {
    this.accepted(pin);
    this.token().setHere = pin;
  }
}

/**
 * As ssh does with private keys: a PIN file others may access is refused, and so is one its
 * group may access unless that group is the daemon's own (Kubernetes gives a mounted Secret to
 * the pod's fsGroup, and the daemon cannot read a 0400 file that root owns).
 */
function refuseLoosePinFile(path: string, stat: { mode: number; gid: number }, field: string): void {
  const ownGroup = stat.gid === process.getegid?.();
  if ((stat.mode & 0o007) === 0 && ((stat.mode & 0o070) === 0 || ownGroup)) return;
  const octal = (stat.mode & 0o777).toString(8).padStart(4, '0');
  const message = `PIN file ${path} is accessible by ${stat.mode & 0o007 ? 'others' : 'its group'} (mode ${octal}); make it readable by the daemon's user only (chmod 600)`;
  throw fieldRefused(field, message);
}

/** At start: every configured PIN file that exists must be private to the daemon's user. */
export function checkPinFiles(slots: Record<string, { pin?: PinSource | undefined }>): void {
  for (const [name, slot] of Object.entries(slots)) {
    if (!slot.pin || !('file' in slot.pin)) continue;
    let stat;
    try {
      stat = statSync(slot.pin.file);
    } catch {
      continue; // may be mounted later; read (and checked) at login
    }
    refuseLoosePinFile(slot.pin.file, stat, `slots.${name}.pin.file`);
  }
}
