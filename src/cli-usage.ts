/** The CLI's usage text: all of it, or one command's lines; a usage error (exit 2). */

export const USAGE = `usage: pkcs11-supervisor [--config FILE] <command>    (<command> --help: that command; --version)

  init                                     in this directory: a SoftHSM2 dev token under var/ and config/default.json (kept if present)
  status                                   slot states as JSON
  probe --slot S                           asks the token through the slot's mailbox: session state, the user PIN's retry flags
  reset --slot S                           the slot's module initialized again, its failed workers back with a fresh restart budget;
                                           then probes the slot (exit 3 with the reason if it does not come back)
  keys list [--slot S] [--class C]         objects on each token (C: privateKey, publicKey, certificate, secretKey, data)
  keys generate --slot S --algorithm A --label L [--id HEX] [--usage U,...] [--always-authenticate]
                                           A: RSA-2048 RSA-3072 RSA-4096 EC-P256 EC-P384 EC-P521 Ed25519
                                           U: sign (default), decrypt (RSA), derive (EC)
  keys generate-secret --slot S --algorithm A --label L [--id HEX]
                                           A: AES-128 AES-192 AES-256 HMAC-256 HMAC-384 HMAC-512
  keys import --slot S --label L [--id HEX] (--p12 FILE [--password-env VAR] | --private-key PEM [--cert PEM]...) [--replace]
              [--always-authenticate]      an existing key under that label or id is refused unless --replace;
                                           --always-authenticate: the key asks for the PIN on every use
  keys delete --slot S --key K [--class C] [--force]
                                           destroys the objects K names (--force for a key the config names)
  sign --slot S --key K --mechanism M --in FILE [--out FILE] [--format der|raw] [--prehashed]
                                           without --out the signature is printed in base64; FILE - is stdin or stdout
  verify --slot S --key K --mechanism M --in FILE --signature FILE [--format der|raw] [--prehashed]
                                           the signature file: its bytes, or base64 as sign prints it
  pubkey --slot S --key K [--format pem|jwk|der] [--out FILE]
  login --slot S [--pin-env VAR]           log the token in with the user PIN (after an idle logout under reauthentication "fail")
  logout --slot S                          log the token out (a Security Officer left logged in, too)
  pin init --slot S [--so-pin-env VAR] [--new-pin-env VAR]
                                           the Security Officer sets the user PIN (C_InitPIN), e.g. after a lockout, and logs out
  pin change --slot S [--so] [--pin-env VAR | --so-pin-env VAR] [--new-pin-env VAR]
                                           changes the user's PIN (--so: the Security Officer's); then update the slot's PIN source
  audit verify FILE [FILE...]              check the audit trail's hash chain (rotated files oldest first); says where it breaks (exit 1),
                                           or that only its tail is torn by an interrupted write (exit 4)
  config print                             the effective config, every default filled in (PIN sources by kind only)

  K is a key ref from the config, a PKCS#11 URI (pkcs11:object=NAME;id=%02), or label:NAME, or id:HEX.
  A FILE of - reads stdin or writes stdout. A PIN comes from the variable a --*pin-env option names, else a hidden prompt.
  Exit codes: 0 ok, 1 signature invalid or audit trail broken, 2 usage, 3 a typed error ([CODE] message),
  4 an audit trail whose only fault is a torn tail, 5 a file could not be read or written.
  --config defaults to $PKCS11_SUPERVISOR_CONFIG (the container sets it), else config/default.json.
  --socket PATH        the daemon's socket (default: api.unix.path from the config, if it has one)
  --direct             open the tokens in this process instead of asking the daemon (no daemon running)
  --as ID:ROLE[,ROLE]  with --direct, the caller principal where the config has a policy (e.g. --as alice:operator);
                       over the socket you are the daemon's api.unix.principal.`;

export class Usage extends Error {}

/** The usage lines of one command (or of every command of a family: `keys`, `pin`): each one's own line and the lines indented under it. */
export function commandUsage(command: string): string | null {
  const lines = USAGE.split('\n');
  const entries: string[] = [];
  for (let at = 0; at < lines.length; at++) {
    if (!lines[at]!.startsWith(`  ${command} `) && lines[at] !== `  ${command}`) continue;
    let end = at + 1;
    while (end < lines.length && /^ {20,}\S/.test(lines[end]!)) end++;
    entries.push(`usage: pkcs11-supervisor [--config FILE] ${lines.slice(at, end).map((l) => l.trim()).join('\n    ')}`);
  }
  return entries.length > 0 ? entries.join('\n') : null;
}

