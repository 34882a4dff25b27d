/**
 * Which of a module's slots a token selector names: by index, or by the token's label or serial
 * and whatever else its PKCS#11 URI named (device-match.ts), among the slots with a token.
 */
import type * as P11 from 'pkcs11js';
import { readUlong } from './pkcs11js.js';
import { WorkerFailure } from './failure.js';
import { deviceFacts } from './token-info.js';
import { tokenMatches } from '../src/model/token-match.js';
import { deviceMismatch, type DeviceFacts } from '../src/model/device-match.js';
import type { TokenSelector } from '../src/model/protocol.js';

/** The module's functions, each call counted under its name. */
export type Counted = (fn: string) => P11.PKCS11;

/** Where a session on `slot` is, as a PKCS#11 URI names it. */
export function factsOf(p11: Counted, modulePath: string, slot: P11.Handle, token: P11.TokenInfo, slotInfo = p11('C_GetSlotInfo').C_GetSlotInfo(slot)): DeviceFacts {
  return deviceFacts(modulePath, readUlong(slot), p11('C_GetInfo').C_GetInfo(), slotInfo, token);
}

/** The slot and its token's C_GetTokenInfo; TOKEN_NOT_FOUND naming why when none or several match. */
export function chooseSlot(p11: Counted, modulePath: string, sel: TokenSelector): { slot: P11.Handle; token: P11.TokenInfo } {
  const slots = p11('C_GetSlotList').C_GetSlotList(true);
  if ('slotIndex' in sel) {
    const slot = slots[sel.slotIndex];
    if (!slot) throw new WorkerFailure('TOKEN_NOT_FOUND', `no token at slot index ${sel.slotIndex} (${slots.length} slots with a token)`);
    return { slot, token: p11('C_GetTokenInfo').C_GetTokenInfo(slot) };
  }
  // One slot whose token cannot be read (deleted under the module, broken) must not hide the others.
  let unreadable: unknown = null;
  /** Why the first token with the label or serial is not the one the URI names. */
  let mismatch: string | null = null;
  const matches: { slot: P11.Handle; token: P11.TokenInfo }[] = [];
  for (const slot of slots) {
    let token: P11.TokenInfo;
    try {
      token = p11('C_GetTokenInfo').C_GetTokenInfo(slot);
    } catch (e) {
      unreadable ??= e;
      continue;
    }
    if (!tokenMatches(sel, token)) continue;
    const why = sel.on ? deviceMismatch(sel.on, factsOf(p11, modulePath, slot, token)) : null;
    mismatch ??= why;
    if (why === null) matches.push({ slot, token });
  }
  const what = 'label' in sel ? `label "${sel.label}"` : `serial "${sel.serial}"`;
  // Not found, and a slot could not say what it holds: that slot's error is the one to act on.
  if (matches.length === 0 && unreadable) throw unreadable;
  if (matches.length === 0) throw new WorkerFailure('TOKEN_NOT_FOUND', `no token with ${what} is present${mismatch ? ` where its URI points (${mismatch})` : ''}`);
  if (matches.length > 1) throw new WorkerFailure('TOKEN_NOT_FOUND', `${matches.length} tokens have ${what}; select the token by serial`);
  return matches[0]!;
}
