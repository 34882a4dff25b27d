/**
 * When the TLS files stop working: the server certificate (or an intermediate served with it)
 * expires and clients refuse it; a client CA expires, or its CRL passes its nextUpdate, and
 * OpenSSL refuses the certificates of that CA. Each is exported as a metric, and warned about
 * when the files are read that close to it, so an operator hears of a renewal that did not
 * happen before the clients do.
 */
import { X509Certificate } from 'node:crypto';
import type { SecureContextOptions } from 'node:tls';
import type { Logger } from 'pino';
import { readDerElement } from '../model/der.js';

export interface TlsExpiry {
  /** The earliest notAfter in the certificate file (the server's certificate and any chain). */
  cert: Date | null;
  /** The earliest notAfter among the client CAs. */
  clientCa: Date | null;
  /** The earliest nextUpdate among the CRLs; null with no CRL file, or CRLs without one. */
  crl: Date | null;
}

export function tlsExpiry(options: SecureContextOptions): TlsExpiry {
  return {
    cert: earliest(pemBlocks(options.cert, 'CERTIFICATE').map(certificateNotAfter)),
    clientCa: earliest(pemBlocks(options.ca, 'CERTIFICATE').map(certificateNotAfter)),
    crl: earliest(pemBlocks(options.crl, 'X509 CRL').map(crlNextUpdate)),
  };
}

const DAY_MS = 86_400_000;
/** Warned about from this long before: a certificate renews weeks ahead (cert-manager: a third of its life), a CRL is often reissued daily. */
const WARN_BEFORE_MS = { cert: 7 * DAY_MS, clientCa: 7 * DAY_MS, crl: DAY_MS } as const;
/** What each file is, and who is refused once it has expired. */
const WHAT = {
  cert: ['the validity of the server certificate (or of its chain)', 'clients refuse to connect until it is replaced'],
  clientCa: ['the validity of a client CA', 'the certificates it issued are refused until it is replaced'],
  crl: ['the validity of a CRL (its nextUpdate)', 'the certificates of its CA are refused until a newer CRL is read'],
} as const;

/**
 * Warns when files are read and every few hours after: a renewal that failed leaves the files
 * as they are, and the daemon would otherwise only have warned when it last read them.
 */
export class ExpiryWatch {
  private expiry: TlsExpiry | null = null;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly log: Logger,
    everyMs = 6 * 3_600_000,
  ) {
    this.timer = setInterval(() => this.expiry && warnOfExpiry(this.expiry, this.log), everyMs);
    this.timer.unref();
  }

  loaded(expiry: TlsExpiry): void {
    this.expiry = expiry;
    warnOfExpiry(expiry, this.log);
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/** One warning per file whose end is near or past. */
export function warnOfExpiry(expiry: TlsExpiry, log: Logger, now = Date.now()): void {
  for (const file of ['cert', 'clientCa', 'crl'] as const) {
    const at = expiry[file];
    if (!at || at.getTime() - now > WARN_BEFORE_MS[file]) continue;
    const past = at.getTime() <= now;
    const [what, refused] = WHAT[file];
    log.warn({ file: `api.tls.${file}`, expires: at.toISOString() }, `api.tls: ${what} ${past ? 'ended' : 'ends'} at ${at.toISOString()}${past ? `; ${refused}` : ''}`);
  }
}

function pemBlocks(files: SecureContextOptions['cert'], label: string): Buffer[] {
  const text = [files ?? []].flat().map((f) => (typeof f === 'string' ? f : Buffer.from(f as Uint8Array).toString('latin1'))).join('\n');
  const block = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+?)-----END ${label}-----`, 'g');
  return [...text.matchAll(block)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'));
}

function earliest(dates: (Date | null)[]): Date | null {
  const known = dates.filter((d): d is Date => d !== null);
  return known.length ? new Date(Math.min(...known.map((d) => d.getTime()))) : null;
}

function certificateNotAfter(der: Buffer): Date | null {
  try {
    return new Date(new X509Certificate(der).validTo);
  } catch {
    return null;
  }
}

/** nextUpdate of a DER CertificateList (RFC 5280 section 5.1): the Time after thisUpdate in tbsCertList, if there is one. */
function crlNextUpdate(der: Uint8Array): Date | null {
  const list = readDerElement(der, 0);
  const tbs = list?.tag === 0x30 ? readDerElement(der, list.start, list.end) : null;
  if (!tbs || tbs.tag !== 0x30) return null;
  let at = tbs.start;
  const next = () => {
    const e = readDerElement(der, at, tbs.end);
    if (e) at = e.end;
    return e;
  };
  let algorithm = next();
  if (algorithm?.tag === 0x02) algorithm = next(); // that was the version
  const issuer = algorithm ? next() : null;
  const thisUpdate = issuer ? next() : null;
  const nextUpdate = thisUpdate ? next() : null;
  return nextUpdate && (nextUpdate.tag === 0x17 || nextUpdate.tag === 0x18) ? derTime(der.subarray(nextUpdate.start, nextUpdate.end), nextUpdate.tag) : null;
}

/** UTCTime (YYMMDDHHMMSSZ, 1950–2049) or GeneralizedTime (YYYYMMDDHHMMSSZ), as RFC 5280 section 4.1.2.5 profiles them. */
function derTime(content: Uint8Array, tag: number): Date | null {
  const m = /^(\d{2}|\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(Buffer.from(content).toString('latin1'));
  if (!m || m[1]!.length !== (tag === 0x17 ? 2 : 4)) return null;
  const year = tag === 0x17 ? (Number(m[1]) < 50 ? 2000 : 1900) + Number(m[1]) : Number(m[1]);
  const date = new Date(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
  return Number.isNaN(date.getTime()) ? null : date;
}
