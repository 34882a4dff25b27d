/**
 * The TLS listener's certificate, key, client CA and CRL, read from files and read again when they
 * change (cert-manager and other rotators replace them in place, often by swapping a
 * symlink), so a rotation needs no restart. A half-written rotation that does not load keeps
 * the previous context until the files are whole.
 */
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import type { Logger } from 'pino';
import type { ApiConfig } from '../config-schema.js';
import { Pkcs11SupervisorError } from '../model/errors.js';
import { fileStamp } from './file-stamp.js';

type TlsConfig = NonNullable<ApiConfig['tls']>;

/** Only TLS 1.3: no downgrade to ciphers or renegotiation of older versions. */
export const TLS_FLOOR = { minVersion: 'TLSv1.3' } as const;

export function readTlsFiles(tls: TlsConfig): SecureContextOptions {
  let options: SecureContextOptions;
  try {
    options = { cert: readFileSync(tls.cert), key: readFileSync(tls.key), ca: readFileSync(tls.clientCa), ...(tls.crl ? { crl: readFileSync(tls.crl) } : {}), ...TLS_FLOOR };
    createSecureContext(options); // a key that does not match its certificate, or a CRL that does not parse, fails here, not at the first handshake
  } catch (e) {
    throw new Pkcs11SupervisorError('CONFIG_INVALID', `api.tls: cannot load the certificate, key, client CA or CRL: ${(e as Error).message}`, {
      issues: [{ path: 'api.tls', message: (e as Error).message }],
    });
  }
  return options;
}

/**
 * Calls `apply` with freshly read options whenever the files change (checked every
 * reloadIntervalMs, and at once on `check()`, which SIGHUP calls); `stop` ends the watching.
 */
export function watchTlsFiles(tls: TlsConfig, log: Logger, apply: (options: SecureContextOptions) => void): { check(): void; stop(): void } {
  const paths = [tls.cert, tls.key, tls.clientCa, ...(tls.crl ? [tls.crl] : [])];
  let seen = fileStamp(paths);
  const check = () => {
    const now = fileStamp(paths);
    if (now === seen) return;
    try {
      apply(readTlsFiles(tls));
      seen = now;
      log.info({ cert: tls.cert }, 'api.tls: certificate, key, client CA or CRL reloaded');
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'api.tls: changed files do not load yet; keeping the previous ones');
    }
  };
  const timer = setInterval(check, tls.reloadIntervalMs);
  timer.unref();
  return { check, stop: () => clearInterval(timer) };
}
