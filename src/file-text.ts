/**
 * The text of a file an operator wrote, perhaps with a Windows tool: a UTF-8 byte order mark
 * (Notepad, PowerShell's `Out-File`) is not content. RFC 8259 section 8.1 lets a JSON reader
 * ignore it; in a PIN file it would reach C_Login as part of the PIN and cost the token a try.
 */
export function withoutBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/**
 * A PIN as a file or a variable holds it: less a byte order mark and one final newline (`echo`,
 * an editor, a Kubernetes Secret made from a file and passed as a variable), which nobody means
 * as part of a PIN and which would make a PIN set from it one nobody can type.
 */
export function pinText(text: string): string {
  return withoutBom(text).replace(/\r?\n$/, '');
}
