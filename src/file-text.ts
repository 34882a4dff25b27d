/**
 * The text of a file an operator wrote, perhaps with a Windows tool: a UTF-8 byte order mark
 * (Notepad, PowerShell's `Out-File`) is not content. RFC 8259 section 8.1 lets a JSON reader
 * ignore it; in a PIN file it would reach C_Login as part of the PIN and cost the token a try.
 */
export function withoutBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}
