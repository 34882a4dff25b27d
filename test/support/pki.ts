/**
 * A small PKI made with the openssl command line, as an operator (or cert-manager) would:
 * CAs, a server certificate for localhost, and client certificates with a SPIFFE ID, a DNS
 * name or only a CN, valid, expired or not yet valid. `openssl ca` sets any validity dates.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Issued {
  cert: string;
  key: string;
}

export interface Ca extends Issued {
  name: string;
  dir: string;
}

const ossl = (args: string[], cwd?: string) => execFileSync('openssl', args, { cwd, stdio: 'pipe' });

export function pkiDir(): string {
  return mkdtempSync(join(tmpdir(), 'p11sup-pki-'));
}

export function makeCa(root: string, name: string): Ca {
  const dir = join(root, name);
  mkdirSync(join(dir, 'new'), { recursive: true });
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '1000\n');
  writeFileSync(
    join(dir, 'ca.cnf'),
    `[ca]\ndefault_ca = ca_default\n[ca_default]\ndir = ${dir}\ndatabase = $dir/index.txt\nnew_certs_dir = $dir/new\nserial = $dir/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\ncopy_extensions = none\n[any]\ncommonName = supplied\n`,
  );
  const key = join(dir, 'ca.key');
  const cert = join(dir, 'ca.crt');
  ossl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-subj', `/CN=${name}`, '-days', '30', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  return { name, dir, key, cert };
}

export interface IssueOptions {
  cn: string;
  uri?: string | string[];
  dns?: string[];
  ip?: string[];
  server?: boolean;
  /** openssl ca dates, YYYYMMDDHHMMSSZ. */
  notBefore?: string;
  notAfter?: string;
  /** A file name other than the CN's. */
  file?: string;
}

export function issue(ca: Ca, o: IssueOptions): Issued {
  const base = join(ca.dir, o.file ?? o.cn.replace(/[^A-Za-z0-9.-]/g, '_'));
  const key = `${base}.key`;
  const csr = `${base}.csr`;
  const cert = `${base}.crt`;
  const ext = `${base}.ext`;
  const san = [...[o.uri ?? []].flat().map((u) => `URI:${u}`), ...(o.dns ?? []).map((d) => `DNS:${d}`), ...(o.ip ?? []).map((i) => `IP:${i}`)];
  writeFileSync(ext, `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=${o.server ? 'serverAuth' : 'clientAuth'}\n${san.length ? `subjectAltName=${san.join(',')}\n` : ''}`);
  ossl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${o.cn.replace(/\//g, '\\/')}`]);
  const dates = o.notBefore || o.notAfter ? ['-startdate', o.notBefore ?? '20250101000000Z', '-enddate', o.notAfter ?? '20350101000000Z'] : ['-days', '30'];
  ossl(['ca', '-batch', '-config', join(ca.dir, 'ca.cnf'), '-cert', ca.cert, '-keyfile', ca.key, '-in', csr, '-out', cert, '-extfile', ext, '-notext', ...dates]);
  return { cert, key };
}

/** Marks a certificate of `ca` revoked in its database (a CRL made after this lists it). */
export function revoke(ca: Ca, issued: Issued): void {
  ossl(['ca', '-config', join(ca.dir, 'ca.cnf'), '-cert', ca.cert, '-keyfile', ca.key, '-revoke', issued.cert]);
}

/** A PEM CRL of `ca` listing what it has revoked: valid for 30 days, long past its nextUpdate, or until `nextUpdate` (YYYYMMDDHHMMSSZ). */
export function makeCrl(ca: Ca, out: string, validity: 'current' | 'expired' | { nextUpdate: string } = 'current'): string {
  const dates =
    validity === 'current' ? ['-crldays', '30'] : validity === 'expired' ? ['-crl_lastupdate', '20250101000000Z', '-crl_nextupdate', '20250201000000Z'] : ['-crl_nextupdate', validity.nextUpdate];
  ossl(['ca', '-config', join(ca.dir, 'ca.cnf'), '-cert', ca.cert, '-keyfile', ca.key, '-gencrl', '-out', out, ...dates]);
  return out;
}

/** The usual set: a CA for clients and server, a stranger CA, and the server's certificate for localhost. */
export function testPki(root = pkiDir()) {
  const ca = makeCa(root, 'clients-ca');
  const stranger = makeCa(root, 'stranger-ca');
  const server = issue(ca, { cn: 'localhost', dns: ['localhost'], ip: ['127.0.0.1'], server: true, file: 'server' });
  return { root, ca, stranger, server };
}
