/**
 * A session of the test's own on the same token, in the same process: login state is
 * per application, so this sees (and can change) what the supervisor's sessions see.
 */
import { createRequire } from 'node:module';
import type * as P11 from 'pkcs11js';
import { MODULE, type TokenDir } from './softhsm.js';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof P11;
const STATES = ['RO_PUBLIC', 'RO_USER', 'RW_PUBLIC', 'RW_USER', 'RW_SO'];

export class ExternalSession {
  private readonly mod = new pkcs11js.PKCS11();
  private readonly session: P11.Handle;

  constructor(td: TokenDir, label: string) {
    // SoftHSM2 reads its config at C_Initialize: whoever initializes first decides the token dir.
    process.env.SOFTHSM2_CONF = td.conf;
    this.mod.load(MODULE);
    try {
      // With OS locking, as the supervisor does: the first initializer sets the threading model for the process.
      this.mod.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
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

  /** Logs the token in for the whole process, out of band (a cloud HSM's credentials stand-in). */
  login(pin: string): void {
    try {
      this.mod.C_Login(this.session, pkcs11js.CKU_USER, pin);
    } catch (e) {
      if ((e as Error).message !== 'CKR_USER_ALREADY_LOGGED_IN') throw e;
    }
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
