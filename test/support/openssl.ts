/** Outside verifiers: OpenSSL's command line, with public keys exported by OpenSC's pkcs11-tool. */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pkcs11Tool, type TokenDir } from './softhsm.js';

const work = mkdtempSync(join(tmpdir(), 'p11sup-ossl-'));
let n = 0;
const file = (name: string, data?: Uint8Array | string) => {
  const p = join(work, `${n++}-${name}`);
  if (data !== undefined) writeFileSync(p, data);
  return p;
};

/** The public key as pkcs11-tool reads it off the token, as a PEM file path. */
export function exportPublicKey(td: TokenDir, label: string, id: string): string {
  const out = file('pub.der');
  try {
    pkcs11Tool(td, label, null, ['--read-object', '--type', 'pubkey', '--id', id, '-o', out]);
  } catch (e) {
    // OpenSC 0.23 cannot export P-384 keys ("cannot create EVP_PKEY") but lists their point:
    // build the SPKI from pkcs11-tool's own listing.
    if (!String((e as { stderr?: unknown }).stderr).includes('cannot create EVP_PKEY')) throw e;
    writeFileSync(out, spkiFromListing(pkcs11Tool(td, label, null, ['--list-objects', '--type', 'pubkey']), id));
  }
  const raw = readFileSync(out);
  // OpenSC 0.23 writes Ed25519 keys as PEM even when asked for DER.
  const inform = raw.subarray(0, 10).toString().startsWith('-----') ? 'PEM' : 'DER';
  const pem = file('pub.pem');
  execFileSync('openssl', ['pkey', '-pubin', '-inform', inform, '-in', out, '-out', pem]);
  return pem;
}

/** True when `openssl dgst` (or pkeyutl for EdDSA) accepts the signature. */
export function opensslVerifies(pubPem: string, mechanism: string, data: Uint8Array, sig: Uint8Array): boolean {
  const d = file('data', data);
  const s = file('sig', sig);
  let args: string[];
  if (mechanism === 'EdDSA') {
    args = ['pkeyutl', '-verify', '-pubin', '-inkey', pubPem, '-rawin', '-in', d, '-sigfile', s];
  } else {
    const hash = /SHA(\d+)/.exec(mechanism)?.[1] ?? '256';
    const pss = mechanism.startsWith('RSA-PSS') ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', `rsa_pss_saltlen:${Number(hash) / 8}`] : [];
    args = ['dgst', `-sha${hash}`, ...pss, '-verify', pubPem, '-signature', s, d];
  }
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return r.status === 0 && /Verified OK|Signature Verified Successfully/.test(r.stdout);
}

/** Runs openssl; its stderr (key generation's progress dots) is kept out of the test log and shown in the error if it fails. */
export function openssl(args: string[], input?: string): Buffer {
  return execFileSync('openssl', args, { input, stdio: 'pipe' });
}

export const tmpFile = file;

const SPKI_EC_PREFIX: Record<string, string> = {
  '06052b81040022': '3076301006072a8648ce3d020106052b81040022036200', // P-384
  '06052b8104000a': '3056301006072a8648ce3d020106052b8104000a034200', // secp256k1
};

function spkiFromListing(listing: string, id: string): Buffer {
  const block = listing.split(/\n(?=Public Key Object)/).find((b) => new RegExp(`ID:\\s+${id}\\s*$`, 'm').test(b));
  const point = /EC_POINT:\s+([0-9a-f]+)/.exec(block ?? '')?.[1];
  const params = /EC_PARAMS:\s+([0-9a-f]+)/.exec(block ?? '')?.[1];
  const prefix = params ? SPKI_EC_PREFIX[params] : undefined;
  if (!point || !prefix) throw new Error(`pkcs11-tool neither exports nor lists public key ${id}`);
  // The listed EC_POINT is a DER OCTET STRING around the point; the SPKI wants the bare point.
  const der = Buffer.from(point, 'hex');
  const bare = der[1]! < 0x80 ? der.subarray(2) : der.subarray(2 + (der[1]! & 0x7f));
  return Buffer.concat([Buffer.from(prefix, 'hex'), bare]);
}

/** A certificate's notAfter (`openssl x509 -enddate`) or a CRL's nextUpdate (`openssl crl -nextupdate`), as OpenSSL reads the file. */
export function opensslDate(kind: 'notAfter' | 'nextUpdate', file: string): Date {
  const args = kind === 'notAfter' ? ['x509', '-in', file, '-noout', '-enddate'] : ['crl', '-in', file, '-noout', '-nextupdate'];
  return new Date(execFileSync('openssl', args, { encoding: 'utf8' }).trim().replace(/^\w+=/, ''));
}
