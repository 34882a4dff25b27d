/**
 * Login state and PINs: user and Security Officer logins, logout, C_InitPIN and C_SetPIN, and
 * the session probe. The token has one user type at a time, so Security Officer work runs
 * alone on the slot (exclusive) on the session that holds that login.
 */
import { Pkcs11SupervisorError } from '../model/errors.js';
import type { SessionInfo, WorkerTask } from '../model/protocol.js';
import type { Slot } from '../slot.js';
import * as check from '../validate.js';
import type { Gate } from './gate.js';
import type { InitPinRequest, LoginOptions, SetPinRequest, SlotRequest } from './requests.js';

/**
 * Logs the slot's token in. An explicit login is the operator's decision, so it may retry a
 * PIN the token refused before (automatic sources never do).
 */
export async function login(gate: Gate, request: (SlotRequest & { userType?: 'user' | 'so' }) | string, pin?: string, options: LoginOptions = {}): Promise<void> {
  const req = typeof request === 'string' ? { ...options, slot: request, pin } : gate.request(request);
  const so = req.userType === 'so';
  if (req.userType !== undefined && req.userType !== 'user' && !so) throw check.badInput('userType must be "user" or "so"', typeof req.slot === 'string' ? req.slot : undefined);
  const slot = gate.slotFor(req, so ? 'soLogin' : 'login');
  const perCall = check.pin(req.pin, slot.name);
  if (slot.config.type === 'cloud') {
    if (so) throw check.badInput(`slot "${slot.name}" is a cloud HSM: it has no Security Officer login`, slot.name);
    return; // login is a no-op for a cloud HSM
  }
  if (!so) {
    if (slot.soActive) throw soActive(slot);
    await gate.call(slot, 'login', { op: 'userLogin' }, req, { needsLogin: false });
    return;
  }
  gate.writable(slot, 'a Security Officer login');
  // The SO PIN only ever comes from the call: no automatic source is kept for it.
  if (!perCall) throw new Pkcs11SupervisorError('PIN_REQUIRED', 'a Security Officer login needs the SO PIN in the call', { slot: slot.name });
  await gate.call(slot, 'soLogin', { op: 'soLogin' }, req, { needsLogin: false, exclusive: true });
}

/** Logs the token out; after a Security Officer session, the slot logs its user in again from its PIN source. */
export async function logout(gate: Gate, request: SlotRequest | string): Promise<void> {
  const req = typeof request === 'string' ? { slot: request } : gate.request(request);
  const slot = gate.slotFor(req, 'logout');
  if (slot.config.type === 'cloud') return;
  const so = slot.holdsSo;
  await gate.call(slot, 'logout', { op: 'tokenLogout' }, req, { needsLogin: false, exclusive: so });
  if (so) await slot.userLogin();
}

/** Sets the user PIN (C_InitPIN): the Security Officer's operation, so the slot must be logged in as SO. */
export async function initPin(gate: Gate, request: InitPinRequest): Promise<void> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'initPin');
  gate.writable(slot, 'initPin');
  const newPin = check.pin(req.newPin, slot.name, 'newPin');
  if (!newPin) throw check.badInput('initPin needs newPin', slot.name);
  await gate.call(slot, 'initPin', asSecurityOfficer({ op: 'initPin', pin: newPin.reveal() }), req, { needsLogin: false, exclusive: true });
  slot.pins.changed(newPin);
}

/**
 * Changes a PIN (C_SetPIN): the user's own on a user session, or the Security Officer's own
 * while the slot is logged in as SO. Update the slot's PIN source afterwards.
 */
export async function setPin(gate: Gate, request: SetPinRequest): Promise<void> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'setPin');
  gate.writable(slot, 'setPin');
  const oldPin = check.pin(req.oldPin, slot.name, 'oldPin');
  const newPin = check.pin(req.newPin, slot.name, 'newPin');
  if (!oldPin || !newPin) throw check.badInput('setPin needs oldPin and newPin', slot.name);
  const task: WorkerTask = { op: 'setPin', oldPin: oldPin.reveal(), newPin: newPin.reveal() };
  if (slot.holdsSo) {
    await gate.call(slot, 'setPin', asSecurityOfficer(task), req, { needsLogin: false, exclusive: true });
    return;
  }
  await gate.call(slot, 'setPin', task, req, { needsLogin: true });
  slot.pins.changed(newPin);
}

/**
 * Asks the token (C_GetSessionInfo) for the session state of the worker that takes the call,
 * through the mailbox like any call. Includes the PKCS#11 calls that worker thread has made.
 */
export async function probe(gate: Gate, request: SlotRequest): Promise<SessionInfo> {
  const req = gate.request(request);
  const slot = gate.slotFor(req, 'probe');
  return gate.call<SessionInfo>(slot, 'probe', { op: 'sessionInfo' }, req, { needsLogin: false });
}

function asSecurityOfficer(task: WorkerTask) {
  return { op: 'asSecurityOfficer' as const, task };
}

function soActive(slot: Slot): Pkcs11SupervisorError {
  return new Pkcs11SupervisorError('SO_SESSION_ACTIVE', `slot "${slot.name}" is logged in as its Security Officer; log it out first`, { slot: slot.name });
}
