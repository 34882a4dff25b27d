import type { TokenSelector } from './protocol.js';

/** CK_TOKEN_INFO's text fields are padded with blanks (some modules use NULs) to their fixed size. */
export function trimPadded(s: string): string {
  return s.replace(/[\s\0]+$/, '');
}

/**
 * Whether a token's label or serial matches a selector, compared as the token holds them: padded
 * with blanks, so "signer " and "signer" name the same token.
 */
export function tokenMatches(sel: Exclude<TokenSelector, { slotIndex: number }>, info: { label: string; serialNumber: string }): boolean {
  return 'label' in sel ? trimPadded(info.label) === trimPadded(sel.label) : trimPadded(info.serialNumber) === trimPadded(sel.serial);
}

/** No lone surrogate: the text encodes to UTF-8 as it is (a lone one becomes U+FFFD on the token). */
export function isWellFormed(s: string): boolean {
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}
