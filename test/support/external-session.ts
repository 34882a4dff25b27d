/**
 * A session of the test's own on the same token, in the same process: login state is
 * per application, so this sees (and can change) what the supervisor's sessions see.
 */
import { createRequire } from 'node:module';
import type * as P11 from 'pkcs11js';
import { MODULE } from './softhsm.js';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof P11;
const STATES = ['RO_PUBLIC', 'RO_USER', 'RW_PUBLIC', 'RW_USER', 'RW_SO'];

export class ExternalSession {
  private readonly mod = new pkcs11js.PKCS11();
  private readonly session: P11.Handle;

  constructor(label: string) {
    this.mod.load(MODULE);
    try {
      this.mod.C_Initialize();
    } catch (e) {
      if ((e as Error).message !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') throw e;
    }
    const slot = this.mod.C_GetSlotList(true).find((s) => this.mod.C_GetTokenInfo(s).label.trim() === label);
    if (!slot) throw new Error(`no token ${label}`);
    this.session = this.mod.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  }

  /** What the token says about login state, through this session. */
  state(): string {
    return STATES[this.mod.C_GetSessionInfo(this.session).state]!;
  }

  /** Logs the whole token out, behind the supervisor's back. */
  logout(): void {
    this.mod.C_Logout(this.session);
  }

  close(): void {
    try {
      this.mod.C_CloseSession(this.session);
    } catch {
      // finalized by the supervisor already
    }
  }
}
