import type { TokenSelector } from './protocol.js';

/** CK_TOKEN_INFO's text fields are padded with blanks (some modules use NULs) to their fixed size. */
export function trimPadded(s: string): string {
  return s.replace(/[\s\0]+$/, '');
}

/** Whether a token's (padded) label and serial match a label or serial selector. */
export function tokenMatches(sel: Exclude<TokenSelector, { slotIndex: number }>, info: { label: string; serialNumber: string }): boolean {
  return 'label' in sel ? trimPadded(info.label) === sel.label : trimPadded(info.serialNumber) === sel.serial;
}
