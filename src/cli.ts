#!/usr/bin/env node
/**
 * pkcs11-supervisor CLI: the client API from a shell, on the same config as the daemon.
 * Where the config has a local socket (`api.unix`), the CLI is a client of the running daemon:
 * it uses the daemon's sessions and login and never asks for a PIN the daemon holds. `--direct`
 * opens the tokens in this process instead, for a machine without a daemon; there PINs come
 * from the slot's configured source or a hidden prompt, never from an argument (arguments end
 * up in shell history and `ps`).
 *
 * Exit codes: 0 ok, 1 signature invalid / audit trail broken, 2 usage, 3 a typed error, 4 the
 * audit trail's only fault is a torn tail (an interrupted write), 5 a file could not be read or
 * written. No stack trace reaches the terminal: each failure is one line with its code.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { isEntryPoint } from './entry-point.js';
import { pino } from 'pino';
import { startSupervisor } from './client/start.js';
import type { Pkcs11Client } from './client/pkcs11-client.js';
import { connect } from './service/remote-client.js';
import { packageVersion } from './package-version.js';
import type { KeyRef, SignRequest } from './client/requests.js';
import { Pkcs11SupervisorError } from './model/errors.js';
import { createLogger } from './logger.js';
import { verifyAuditFiles } from './audit.js';
import { defaultConfigFile, loadConfigFile, printableConfig } from './config.js';
import type { PinCallback } from './pin-chain.js';
import { FileError, promptHidden, readInput, signatureBytes, writeOutput } from './cli-io.js';
import { USAGE, Usage, commandUsage } from './cli-usage.js';
import { PIN_COMMANDS, pinCommand } from './cli-pin.js';
import { resetSlot } from './cli-slot.js';

/** --usage sign,decrypt: the list, or undefined for the default. */
function usageOf(value: string | undefined): never {
  return (value === undefined ? undefined : value.split(',').map((u) => u.trim())) as never;
}

const options = {
  config: { type: 'string', default: defaultConfigFile() },
  slot: { type: 'string' },
  key: { type: 'string' },
  mechanism: { type: 'string' },
  in: { type: 'string' },
  out: { type: 'string' },
  signature: { type: 'string' },
  format: { type: 'string' },
  prehashed: { type: 'boolean', default: false },
  replace: { type: 'boolean', default: false },
  'always-authenticate': { type: 'boolean', default: false },
  usage: { type: 'string' },
  force: { type: 'boolean', default: false },
  algorithm: { type: 'string' },
  label: { type: 'string' },
  id: { type: 'string' },
  class: { type: 'string' },
  p12: { type: 'string' },
  'password-env': { type: 'string' },
  'pin-env': { type: 'string' },
  'so-pin-env': { type: 'string' },
  'new-pin-env': { type: 'string' },
  so: { type: 'boolean', default: false },
  'private-key': { type: 'string' },
  cert: { type: 'string', multiple: true },
  verbose: { type: 'boolean', default: false },
  as: { type: 'string' },
  socket: { type: 'string' },
  direct: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
  version: { type: 'boolean', short: 'V', default: false },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof options; allowPositionals: true }>>['values'];

function need(values: Values, name: keyof Values): string {
  const v = values[name];
  if (typeof v !== 'string' || v === '') throw new Usage(`--${name} is required`);
  return v;
}

function keyRef(spec: string): KeyRef {
  if (spec.startsWith('label:')) return { label: spec.slice(6) };
  if (spec.startsWith('id:')) return { id: spec.slice(3) };
  return spec;
}

const pinPrompt: PinCallback = ({ slot, tokenLabel }) => promptHidden(`PIN for slot "${slot}" (token "${tokenLabel ?? '?'}"): `);

/** The command the words name: `sign`, or two words for the families (`keys list`). */
function commandOf(positionals: string[]): string | undefined {
  const [cmd, sub] = positionals;
  return cmd === 'keys' || cmd === 'audit' || cmd === 'config' || cmd === 'pin' ? `${cmd} ${sub ?? ''}`.trim() : cmd;
}

/** A usage error's help: the command's own lines when the words name one, else everything. */
function usageFor(argv: string[]): string {
  const { positionals } = parseArgs({ args: argv, options, allowPositionals: true, strict: false });
  const command = commandOf(positionals);
  return (command && commandUsage(command)) ?? USAGE;
}

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, options, allowPositionals: true });
  if (values.version) {
    process.stdout.write(`${packageVersion()}\n`);
    return 0;
  }
  const command = commandOf(positionals);
  if (values.help || positionals.length === 0) {
    process.stdout.write(`${(command && commandUsage(command)) ?? USAGE}\n`);
    return values.help ? 0 : 2;
  }
  if (command === 'init') return init();
  if (command === 'config print') {
    process.stdout.write(`${JSON.stringify(printableConfig(loadConfigFile(values.config!)), null, 2)}\n`);
    return 0;
  }
  if (command === 'audit verify') {
    const files = positionals.slice(2);
    if (files.length === 0) throw new Usage('audit verify FILE [FILE...]');
    const missing = files.find((f) => !existsSync(f));
    if (missing) throw new FileError(`cannot read the audit trail ${missing}: ENOENT`);
    let v: ReturnType<typeof verifyAuditFiles>;
    try {
      v = verifyAuditFiles(files);
    } catch (e) {
      const errno = (e as NodeJS.ErrnoException).code;
      if (!errno?.startsWith('E')) throw e;
      throw new FileError(`cannot read the audit trail ${files.join(', ')}: ${errno}`);
    }
    const continues = v.ok && v.continues ? ` (its first record follows ${v.continues}, in an earlier file: verify the files together, oldest first)` : '';
    if (v.ok) process.stdout.write(`ok: ${v.records} records, chain intact, head ${v.head}${continues}\n`);
    else if (v.kind === 'torn') process.stdout.write(`torn at line ${v.line}: ${v.reason}; ${v.records} records before it, chain intact, head ${v.head}\n`);
    else process.stdout.write(`broken at line ${v.line}${v.seq === null ? '' : ` (seq ${v.seq})`}: ${v.reason}\n`);
    return v.ok ? 0 : v.kind === 'torn' ? 4 : 1;
  }
  const known = ['status', 'probe', 'reset', 'keys list', 'keys generate', 'keys generate-secret', 'keys import', 'keys delete', 'sign', 'verify', 'pubkey', ...PIN_COMMANDS];
  if (!command || !known.includes(command)) throw new Usage(`unknown command "${positionals.join(' ')}"`);

  if (command === 'pubkey' && values.format !== undefined && !['pem', 'jwk', 'der'].includes(values.format)) throw new Usage('--format is pem, jwk or der');
  const client = await open(values);
  try {
    return await dispatch(client, command, values);
  } finally {
    await client.close();
  }
}

/**
 * An application's project, ready to run the README's snippet: the dev token the package's own
 * `npm start` uses, under ./var, and the config that points at it, as ./config/default.json.
 */
function init(): number {
  const script = fileURLToPath(new URL('../../scripts/provision-dev-token.sh', import.meta.url));
  const r = spawnSync('bash', [script, process.cwd()], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) {
    const missing = /(softhsm2-util|pkcs11-tool|openssl): command not found/.exec(r.stderr)?.[1];
    throw new FileError(missing ? `${missing} is not installed: apt-get install softhsm2 opensc openssl` : `the dev token could not be provisioned: ${r.stderr.trim()}`);
  }
  const target = 'config/default.json';
  if (existsSync(target)) {
    process.stdout.write(`dev token ready in var/; ${target} was there already and is kept\n`);
    return 0;
  }
  mkdirSync('config', { recursive: true });
  copyFileSync(fileURLToPath(new URL('../../config/default.json', import.meta.url)), target);
  process.stdout.write(`dev token ready in var/ (user PIN in var/dev-token.pin); wrote ${target}\n`);
  return 0;
}

/** The running daemon over its socket, or (--direct, or no socket configured) the tokens in this process. */
async function open(values: Values): Promise<Pkcs11Client> {
  if (values.direct && values.socket) throw new Usage('--direct and --socket exclude each other');
  const socket = values.direct ? undefined : (values.socket ?? loadConfigFile(values.config!).api?.unix?.path);
  if (socket !== undefined) {
    if (values.as) throw new Usage(`--as needs --direct: over the socket you act as the daemon's api.unix.principal`);
    if (!existsSync(socket)) {
      throw new Pkcs11SupervisorError('CLOSED', `no daemon socket at ${socket}: start the daemon (npm start), or use --direct to open the tokens in this process`);
    }
    return connect({ socket, connections: 1 });
  }
  const logger = values.verbose ? createLogger('info', { destination: pino.destination(2) }) : createLogger('silent');
  const sup = await startSupervisor({ configFile: values.config!, logger, pinCallback: pinPrompt });
  // A scoped client closes the supervisor it came from.
  return values.as ? sup.as(principal(values.as)) : sup;
}

/** What sign and verify share: slot, key, mechanism, the input file and its options. */
function signRequest(values: Values): SignRequest {
  return {
    slot: need(values, 'slot'),
    key: keyRef(need(values, 'key')),
    mechanism: need(values, 'mechanism') as SignRequest['mechanism'],
    data: readInput(need(values, 'in'), 'the input'),
    signatureFormat: values.format as SignRequest['signatureFormat'],
    prehashed: values.prehashed,
  };
}

function principal(spec: string): { id: string; roles: string[] } {
  const [id, roles = ''] = spec.split(':');
  if (!id) throw new Usage('--as is ID:ROLE[,ROLE]');
  return { id, roles: roles.split(',').filter(Boolean) };
}

async function dispatch(sup: Pkcs11Client, command: string, values: Values): Promise<number> {
  const print = (v: unknown) => process.stdout.write(`${typeof v === 'string' ? v : JSON.stringify(v, null, 2)}\n`);
  switch (command) {
    case 'status':
      print(await sup.status());
      return 0;
    case 'probe':
      print(await sup.probe({ slot: need(values, 'slot') }));
      return 0;
    case 'reset':
      print(await resetSlot(sup, need(values, 'slot')));
      return 0;
    case 'keys list': {
      const slots = values.slot ? [values.slot] : Object.keys((await sup.status()).slots);
      const out: Record<string, unknown> = {};
      for (const slot of slots) out[slot] = await sup.findObjects({ slot, template: values.class ? { class: values.class as never } : {} });
      print(out);
      return 0;
    }
    case 'keys generate':
      print(await sup.generateKeyPair({ slot: need(values, 'slot'), algorithm: need(values, 'algorithm') as never, label: need(values, 'label'), id: values.id, alwaysAuthenticate: values['always-authenticate'], usage: usageOf(values.usage), timeoutMs: 300_000 }));
      return 0;
    case 'keys generate-secret':
      print(await sup.generateSecretKey({ slot: need(values, 'slot'), algorithm: need(values, 'algorithm') as never, label: need(values, 'label'), id: values.id }));
      return 0;
    case 'keys import': {
      const base = { slot: need(values, 'slot'), label: need(values, 'label'), id: values.id, replace: values.replace, alwaysAuthenticate: values['always-authenticate'], usage: usageOf(values.usage) };
      if (values.p12) {
        const envName = values['password-env'];
        if (envName && process.env[envName] === undefined) throw new Usage(`--password-env ${envName}: the variable ${envName} is not set`);
        const password = envName ? process.env[envName] : await promptHidden('PKCS#12 password: ');
        if (password == null) throw new Usage('the PKCS#12 password comes from --password-env VAR or a terminal prompt');
        print(await sup.importKeyPair({ ...base, pkcs12: readInput(values.p12, 'the PKCS#12 file'), password }));
      } else if (values['private-key']) {
        print(await sup.importKeyPair({ ...base, privateKeyPem: readInput(values['private-key'], 'the private key'), certificates: (values.cert ?? []).map((f) => readInput(f, 'the certificate')) }));
      } else {
        throw new Usage('keys import needs --p12 FILE or --private-key FILE');
      }
      return 0;
    }
    case 'keys delete': {
      const destroyed = await sup.destroyObject({ slot: need(values, 'slot'), key: keyRef(need(values, 'key')), class: values.class as never, force: values.force });
      print({ destroyed });
      return 0;
    }
    case 'sign': {
      const sig = await sup.sign(signRequest(values));
      if (values.out) writeOutput(values.out, sig);
      else print(sig.toString('base64'));
      return 0;
    }
    case 'verify': {
      const request = signRequest(values);
      if (values.in === '-' && values.signature === '-') throw new Usage('--in and --signature cannot both be standard input');
      const ok = await sup.verify({ ...request, signature: signatureBytes(readInput(need(values, 'signature'), 'the signature')) });
      print(ok ? 'valid' : 'invalid');
      return ok ? 0 : 1;
    }
    case 'pubkey': {
      const pk = await sup.getPublicKey({ slot: need(values, 'slot'), key: keyRef(need(values, 'key')) });
      const format = values.format ?? 'pem';
      const body = format === 'pem' ? pk.pem : format === 'jwk' ? JSON.stringify({ ...pk.jwk, kid: pk.id }) : pk.spki;
      if (values.out) writeOutput(values.out, body);
      else if (typeof body === 'string') print(body.trimEnd());
      else process.stdout.write(body);
      return 0;
    }
  }
  const said = await pinCommand(sup, command, { slot: need(values, 'slot'), so: values.so, pinEnv: values['pin-env'], soPinEnv: values['so-pin-env'], newPinEnv: values['new-pin-env'] });
  process.stderr.write(`${said}\n`);
  return 0;
}

export async function main(argv = process.argv.slice(2)): Promise<number> {
  try {
    return await run(argv);
  } catch (e) {
    if (e instanceof Usage || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`pkcs11-supervisor: ${(e as Error).message}\n\n${usageFor(argv)}\n`);
      return 2;
    }
    if (e instanceof Pkcs11SupervisorError) {
      process.stderr.write(`pkcs11-supervisor: [${e.code}]${e.ckr ? ` (${e.ckr})` : ''} ${e.message}\n`);
      return 3;
    }
    if (e instanceof FileError) {
      process.stderr.write(`pkcs11-supervisor: ${e.message}\n`);
      return 5;
    }
    // Not one of ours: still one line, never a stack trace (--verbose logs show the rest).
    process.stderr.write(`pkcs11-supervisor: [INTERNAL] ${(e as Error).message ?? String(e)}\n`);
    return 3;
  }
}

if (isEntryPoint(import.meta.url)) main().then((code) => process.exit(code));
