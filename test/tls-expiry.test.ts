/**
 * When the service API's TLS files stop working, read as OpenSSL reads them: the certificates'
 * notAfter and the CRLs' nextUpdate, which the daemon exports as a metric and warns about.
 */
import { describe, expect, it, vi } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ExpiryWatch, tlsExpiry, warnOfExpiry } from '../dist/src/service/tls-expiry.js';
import { derLength } from '../dist/src/model/der.js';
import { logLines } from './support/log-lines.js';
import { opensslDate } from './support/openssl.js';
import { issue, makeCa, makeCrl, pkiDir } from './support/pki.js';

const root = pkiDir();
const nextUpdate = (file: string) => opensslDate('nextUpdate', file);
const notAfter = (file: string) => opensslDate('notAfter', file);
const pemOfDer = (label: string, der: Buffer) => `-----BEGIN ${label}-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END ${label}-----\n`;

describe("the CRLs' nextUpdate", () => {
  it('is the one OpenSSL reads, in UTCTime and in GeneralizedTime (2050 on), and the earliest of several CRLs in one file', () => {
    const ca = makeCa(root, 'crl-dates');
    const other = makeCa(root, 'crl-dates-other');
    const utc = makeCrl(ca, join(root, 'utc.crl'), { nextUpdate: '20270115123456Z' });
    const generalized = makeCrl(other, join(root, 'generalized.crl'), { nextUpdate: '20510301000000Z' });
    expect(readFileSync(generalized, 'utf8')).not.toBe(readFileSync(utc, 'utf8'));
    for (const file of [utc, generalized]) expect(tlsExpiry({ crl: readFileSync(file) }).crl).toEqual(nextUpdate(file));
    expect(tlsExpiry({ crl: readFileSync(generalized) }).crl!.toISOString()).toBe('2051-03-01T00:00:00.000Z');
    const both = join(root, 'both.crl');
    writeFileSync(both, readFileSync(generalized, 'utf8') + readFileSync(utc, 'utf8'));
    expect(tlsExpiry({ crl: readFileSync(both) }).crl).toEqual(nextUpdate(utc));
    expect(tlsExpiry({ crl: [readFileSync(generalized), readFileSync(utc)] }).crl).toEqual(nextUpdate(utc));
  });

  it('is read from a CRL over 64 KiB (a long-form length of three bytes), as large CAs publish', () => {
    const ca = makeCa(root, 'crl-large');
    // 3,000 revoked serials written to the CA's database as `openssl ca -revoke` writes them.
    const lines = Array.from({ length: 3000 }, (_, i) => `R\t350101000000Z\t250101000000Z\t${(0x10000 + i).toString(16).toUpperCase().padStart(6, '0')}\tunknown\t/CN=c${i}\n`);
    writeFileSync(join(ca.dir, 'index.txt'), lines.join(''));
    const crl = makeCrl(ca, join(root, 'large.crl'), { nextUpdate: '20270202020202Z' });
    const der = execFileSync('openssl', ['crl', '-in', crl, '-outform', 'DER']);
    expect(der.length).toBeGreaterThan(65_535);
    expect(tlsExpiry({ crl: readFileSync(crl) }).crl).toEqual(nextUpdate(crl));
  });

  it('is none for a CRL without one, or bytes that are not a CRL', () => {
    // tbsCertList with version, algorithm, issuer and thisUpdate only (nextUpdate is OPTIONAL).
    const tlv = (tag: number, content: Buffer) => Buffer.concat([Buffer.from([tag, ...derLength(content.length)]), content]);
    const tbs = tlv(0x30, Buffer.concat([tlv(0x02, Buffer.from([1])), tlv(0x30, Buffer.from([0x06, 0x01, 0x2a])), tlv(0x30, Buffer.alloc(0)), tlv(0x17, Buffer.from('250101000000Z'))]));
    const noNextUpdate = tlv(0x30, Buffer.concat([tbs, tlv(0x30, Buffer.from([0x06, 0x01, 0x2a])), tlv(0x03, Buffer.from([0]))]));
    expect(tlsExpiry({ crl: pemOfDer('X509 CRL', noNextUpdate) }).crl).toBeNull();
    expect(tlsExpiry({ crl: pemOfDer('X509 CRL', Buffer.from('not a CRL')) }).crl).toBeNull();
    expect(tlsExpiry({ crl: pemOfDer('X509 CRL', noNextUpdate.subarray(0, 20)) }).crl).toBeNull();
    expect(tlsExpiry({}).crl).toBeNull();
  });
});

describe("the certificates' notAfter", () => {
  it('is the earliest in the server certificate file with its chain, and among the client CAs', () => {
    const ca = makeCa(root, 'chain-ca');
    const leaf = issue(ca, { cn: 'localhost', dns: ['localhost'], server: true, notBefore: '20250101000000Z', notAfter: '20281231235959Z', file: 'leaf' });
    const later = issue(ca, { cn: 'later', server: true, notBefore: '20250101000000Z', notAfter: '20400101000000Z', file: 'later' });
    // A file whose first certificate outlives the next one: the chain stops working at the earlier date.
    const chain = join(root, 'chain.crt');
    writeFileSync(chain, readFileSync(later.cert, 'utf8') + readFileSync(leaf.cert, 'utf8'));
    const bundle = readFileSync(ca.cert, 'utf8') + readFileSync(makeCa(root, 'second-ca').cert, 'utf8');
    const got = tlsExpiry({ cert: readFileSync(chain), ca: bundle });
    expect(got.cert).toEqual(notAfter(leaf.cert));
    expect(got.cert!.toISOString()).toBe('2028-12-31T23:59:59.000Z');
    expect(got.clientCa).toEqual(notAfter(ca.cert));
  });
});

describe('the warning', () => {
  it('names each file that has stopped working, or stops within its margin (7 days for certificates, 1 for CRLs), and no other', () => {
    const { logger, lines } = logLines<{ file: string; expires: string; msg: string }>('warn');
    const now = Date.parse('2027-01-10T00:00:00Z');
    const day = 86_400_000;
    warnOfExpiry({ cert: new Date(now + 6 * day), clientCa: new Date(now + 8 * day), crl: new Date(now - 1000) }, logger, now);
    warnOfExpiry({ cert: new Date(now + 30 * day), clientCa: null, crl: new Date(now + 2 * day) }, logger, now);
    expect(lines.map((l) => [l.file, l.expires])).toEqual([
      ['api.tls.cert', '2027-01-16T00:00:00.000Z'],
      ['api.tls.crl', '2027-01-09T23:59:59.000Z'],
    ]);
    expect(lines[0]!.msg).toBe('api.tls: the validity of the server certificate (or of its chain) ends at 2027-01-16T00:00:00.000Z');
    expect(lines[1]!.msg).toBe('api.tls: the validity of a CRL (its nextUpdate) ended at 2027-01-09T23:59:59.000Z; the certificates of its CA are refused until a newer CRL is read');
  });

  it('comes again every few hours while the files stay as they are: a renewal that failed changes nothing on disk', () => {
    const { logger, lines } = logLines<{ file: string; msg: string }>('warn');
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'Date'] });
    try {
      const day = 86_400_000;
      const watch = new ExpiryWatch(logger, 6 * 3_600_000);
      watch.loaded({ cert: new Date(Date.now() + 8 * day + 3_600_000), clientCa: null, crl: null });
      expect(lines).toEqual([]);
      vi.advanceTimersByTime(day); // 7 days and an hour left: no word yet
      expect(lines).toEqual([]);
      vi.advanceTimersByTime(day); // 6 days and an hour left: said at each look since it was 7
      expect(lines.length).toBeGreaterThan(0);
      expect(lines.every((l) => l.file === 'api.tls.cert')).toBe(true);
      vi.advanceTimersByTime(6 * day + 6 * 3_600_000); // past it
      expect(lines.at(-1)!.msg).toMatch(/ended at .*clients refuse to connect/);
      const seen = lines.length;
      watch.stop();
      vi.advanceTimersByTime(day);
      expect(lines.length).toBe(seen);
    } finally {
      vi.useRealTimers();
    }
  });
});
