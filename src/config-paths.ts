/**
 * The files a config names, checked at start: a trail that cannot be written, a PIN file or
 * a certificate that is not there is a CONFIG_INVALID naming the field, before any slot opens,
 * not an ENOENT at the first call (or a crash on a read-only root filesystem).
 */
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Config } from './config-schema.js';
import { Pkcs11SupervisorError } from './model/errors.js';

type Issue = { path: string; message: string };

function readable(file: string, field: string, issues: Issue[]): void {
  try {
    accessSync(file, constants.R_OK);
    if (!statSync(file).isFile()) issues.push({ path: field, message: `${file} is not a file` });
  } catch (e) {
    issues.push({ path: field, message: `${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` });
  }
}

/** A file the daemon creates or appends to: it, or else its directory, must be writable. */
function writable(file: string, field: string, issues: Issue[], createDirs = false): void {
  let target = existsSync(file) ? file : dirname(resolve(file));
  // A directory the daemon creates itself (the socket's): the nearest one that exists must take it.
  if (createDirs) while (!existsSync(target) && dirname(target) !== target) target = dirname(target);
  try {
    if (target !== file && !statSync(target).isDirectory()) throw Object.assign(new Error('ENOTDIR'), { code: 'ENOTDIR' });
    accessSync(target, constants.W_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    issues.push({ path: field, message: code === 'ENOENT' ? `the directory of ${file} does not exist` : `${target} is not writable (${code})` });
  }
}

function refuse(issues: Issue[]): void {
  if (issues.length === 0) return;
  throw new Pkcs11SupervisorError('CONFIG_INVALID', `config names files that cannot be used:\n${issues.map((i) => `  ${i.path}: ${i.message}`).join('\n')}`, { issues });
}

/** The files every use of the config needs: the audit trail and the PIN files. */
export function checkPaths(config: Config): void {
  const issues: Issue[] = [];
  if (config.audit) writable(config.audit.path, 'audit.path', issues);
  for (const [name, slot] of Object.entries(config.slots)) if (slot.pin && 'file' in slot.pin) readable(slot.pin.file, `slots.${name}.pin.file`, issues);
  refuse(issues);
}

/** What the daemon's service API also needs: its socket's place, its TLS files, its JWKS. */
export function checkApiPaths(config: Config): void {
  const issues: Issue[] = [];
  const api = config.api;
  if (api?.unix) writable(api.unix.path, 'api.unix.path', issues, true);
  if (api?.tls) for (const f of ['cert', 'key', 'clientCa', 'crl'] as const) if (api.tls[f] !== undefined) readable(api.tls[f], `api.tls.${f}`, issues);
  if (api?.jwt) readable(api.jwt.jwks, 'api.jwt.jwks', issues);
  refuse(issues);
}
