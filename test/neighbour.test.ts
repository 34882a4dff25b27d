/**
 * A good neighbour in one process: the application initialized the module itself, with
 * pkcs11js's default C_Initialize (no CKF_OS_LOCKING_OK), and logged the token in. The
 * supervisor refuses to put several threads on that module instead of crashing the process, and
 * at close leaves the application's login and module as it found them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pkcs11js from 'pkcs11js';
import { createHash, verify } from 'node:crypto';
import { startSupervisor } from '../dist/src/index.js';
import { configFor, createToken, MODULE, tokenDir, type TestToken, type TokenDir } from './support/softhsm.js';

let td: TokenDir;
let tok: TestToken;
const app = new pkcs11js.PKCS11();
let session: Buffer;
const data = Buffer.from('the application and the supervisor share a module');

beforeAll(() => {
  td = tokenDir();
  tok = createToken(td, 'neighbour');
  process.env.NEIGHBOUR_PIN = tok.pin;
  process.env.SOFTHSM2_CONF = td.conf;
  app.load(MODULE);
  app.C_Initialize(); // the application's own, with no flags: no OS locking
  const slot = app.C_GetSlotList(true).find((s) => app.C_GetTokenInfo(s).label.trim() === 'neighbour')!;
  session = app.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  app.C_Login(session, pkcs11js.CKU_USER, tok.pin);
});

afterAll(() => {
  app.C_Finalize();
  app.close();
});

/** The application signs on its own session, as it did before the supervisor came. */
function appSigns(): boolean {
  app.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: 'ec' }]);
  const [key] = app.C_FindObjects(session, 1);
  app.C_FindObjectsFinal(session);
  app.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key!);
  return app.C_Sign(session, createHash('sha256').update(data).digest(), Buffer.alloc(128)).length === 64;
}

describe('a module the application initialized without OS locking', () => {
  it('a pool over it is refused with CONFIG_INVALID naming the module, and the process and the application go on', async () => {
    const config = configFor(td, { p: { type: 'hsm', poolSize: 4, token: { label: 'neighbour' }, pin: { env: 'NEIGHBOUR_PIN' } } });
    await expect(startSupervisor({ config })).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [{ path: 'modules.soft' }] });
    const two = configFor(td, { a: { token: { label: 'neighbour' }, pin: { env: 'NEIGHBOUR_PIN' } }, b: { token: { label: 'neighbour' }, pin: { env: 'NEIGHBOUR_PIN' } } });
    await expect(startSupervisor({ config: two })).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
    expect(appSigns()).toBe(true);
  });

  it('one session thread is allowed; close leaves the application logged in and the module initialized', async () => {
    const sup = await startSupervisor({ config: configFor(td, { s: { token: { label: 'neighbour' }, pin: { env: 'NEIGHBOUR_PIN' } } }) });
    const sig = await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data });
    expect(verify('sha256', data, (await sup.getPublicKey({ slot: 's', key: 'ec' })).keyObject, sig)).toBe(true);
    expect((await sup.probe({ slot: 's' })).calls.C_Login ?? 0).toBe(0); // it found the token logged in
    await sup.close();
    expect(app.C_GetSessionInfo(session).state).toBe(3); // CKS_RW_USER_FUNCTIONS: still logged in
    expect(appSigns()).toBe(true);
  });
});
