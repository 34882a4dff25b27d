/**
 * The network listener as a boundary: mutual TLS 1.3 with client certificates from one CA,
 * the principal read from the certificate (SPIFFE ID, else DNS name, else CN), its roles from
 * the policy, JWTs as an alternative identity, rate limits per principal, and files that
 * rotate without a restart. Every refusal is audited and none reaches the token (the fault
 * module counts C_Sign). The HTTP client is curl; signatures are checked by OpenSSL.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import * as jose from 'jose';
import { connect, startDaemon, type Daemon } from '../dist/src/index.js';
import { curl } from './support/curl.js';
import { Faults, faultConfig } from './support/faults.js';
import { logLines } from './support/log-lines.js';
import { exportPublicKey, opensslDate, opensslVerifies } from './support/openssl.js';
import { issue, makeCrl, revoke, testPki, type Issued } from './support/pki.js';
import { createToken, tokenDir, type TokenDir } from './support/softhsm.js';

const INVOICER = 'spiffe://test.example/ns/billing/sa/invoicer';
const AUDITOR = 'spiffe://test.example/ns/audit/sa/reader';
const NOISY = 'spiffe://test.example/ns/batch/sa/noisy';

let td: TokenDir;
let faults: Faults;
let daemon: Daemon;
let pki: ReturnType<typeof testPki>;
let live: { cert: string; key: string; ca: string };
const certs: Record<string, Issued> = {};
let jwk: { privateKey: CryptoKey; jwks: string };
let daemonConfig: Record<string, unknown>;
const data = Buffer.from('an e-invoice, signed in the HSM');

const signBody = (key = 'ec') => ({ slot: 's', key, mechanism: key === 'ec' ? 'ECDSA-SHA256' : 'RSA-PKCS1-SHA256', data: data.toString('base64') });
const tlsArgs = (who: Issued | null) => ['--cacert', pki.ca.cert, ...(who ? ['--cert', who.cert, '--key', who.key] : [])];
const url = (route: string) => `${daemon.api!.tlsUrl}/v1/${route}`;
const signs = () => faults.counts().C_Sign ?? 0;

/** A config file for a second daemon beside the main one: its own trail, no metrics port, its API changed by `api` and `tls`. */
function variant(name: string, api: Record<string, unknown>, tls: Record<string, unknown> = {}): string {
  const base = daemonConfig.api as { tls: Record<string, unknown> };
  const file = join(td.dir, `${name}.json`);
  writeFileSync(file, JSON.stringify({ ...daemonConfig, metrics: { enabled: false }, audit: { path: join(td.dir, `${name}-audit.jsonl`) }, api: { ...base, ...api, tls: { ...base.tls, ...tls } } }));
  return file;
}

async function auditRecords(): Promise<Record<string, unknown>[]> {
  await daemon.sup.as({ id: 'test-harness', roles: ['auditor'] }).verifyAudit(); // writes what is queued first
  return readFileSync(join(td.dir, 'audit.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

beforeAll(async () => {
  td = tokenDir();
  const tok = createToken(td, 'tls');
  faults = new Faults(td);
  process.env.TLS_PIN = tok.pin;
  pki = testPki();
  // The daemon reads its files from a directory of their own, so rotating them touches nothing else.
  live = { cert: join(td.dir, 'server.crt'), key: join(td.dir, 'server.key'), ca: join(td.dir, 'clients-ca.crt') };
  copyFileSync(pki.server.cert, live.cert);
  copyFileSync(pki.server.key, live.key);
  copyFileSync(pki.ca.cert, live.ca);
  certs.invoicer = issue(pki.ca, { cn: 'invoicer', uri: INVOICER });
  certs.auditor = issue(pki.ca, { cn: 'auditor', uri: AUDITOR });
  certs.noisy = issue(pki.ca, { cn: 'noisy', uri: NOISY });
  certs.dnsOnly = issue(pki.ca, { cn: 'ignored-cn', dns: ['billing.internal'] });
  certs.cnOnly = issue(pki.ca, { cn: 'legacy-billing' });
  certs.twoUris = issue(pki.ca, { cn: 'two-ids', uri: [NOISY, INVOICER] });
  // A CN chosen to look like the invoicer's SPIFFE ID, with no URI SAN.
  certs.cnSpiffe = issue(pki.ca, { cn: INVOICER, file: 'cn-spiffe' });
  certs.stranger = issue(pki.stranger, { cn: 'invoicer', uri: INVOICER, file: 'stranger-invoicer' });
  certs.expired = issue(pki.ca, { cn: 'expired', uri: INVOICER, notBefore: '20250101000000Z', notAfter: '20260101000000Z', file: 'expired' });
  certs.notYet = issue(pki.ca, { cn: 'not-yet', uri: INVOICER, notBefore: '20300101000000Z', notAfter: '20310101000000Z', file: 'not-yet' });
  // From the clients' CA, with the invoicer's SPIFFE ID, but for servers only (extendedKeyUsage=serverAuth).
  certs.serverOnly = issue(pki.ca, { cn: 'server-only', uri: INVOICER, server: true, file: 'server-only' });

  const { privateKey, publicKey } = await jose.generateKeyPair('ES256');
  const jwks = join(td.dir, 'jwks.json');
  writeFileSync(jwks, JSON.stringify({ keys: [{ ...(await jose.exportJWK(publicKey)), kid: 'k1', alg: 'ES256' }] }));
  jwk = { privateKey: privateKey as CryptoKey, jwks };

  const config = {
    ...faultConfig(td, faults, { s: { token: { label: 'tls' }, pin: { env: 'TLS_PIN' } } }),
    metrics: { enabled: true, host: '127.0.0.1', port: 0 },
    audit: { path: join(td.dir, 'audit.jsonl') },
    api: {
      tls: { host: '127.0.0.1', port: 0, cert: live.cert, key: live.key, clientCa: live.ca, reloadIntervalMs: 3_600_000 },
      jwt: { jwks, issuer: 'https://id.test.example', audience: 'pkcs11-supervisor' },
    },
    policy: {
      slots: { s: { service: { keys: ['ec', 'rsa'] }, auditor: {}, operator: {} } },
      principals: { [INVOICER]: ['service'], [AUDITOR]: ['auditor'], [NOISY]: ['operator'], 'billing.internal': ['service'], 'legacy-billing': ['service'] },
      rateLimits: { operator: { perSecond: 0.5, burst: 3 } },
    },
  };
  daemonConfig = config;
  const file = join(td.dir, 'config.json');
  writeFileSync(file, JSON.stringify(config));
  daemon = await startDaemon(file);
});

afterAll(() => daemon?.stop());

describe('mutual TLS', () => {
  it('curl with a client certificate signs with keys pkcs11-tool made; OpenSSL verifies each signature', async () => {
    for (const key of ['ec', 'rsa']) {
      const r = await curl(url('sign'), tlsArgs(certs.invoicer!), signBody(key));
      expect(r.status).toBe(200);
      const sig = Buffer.from(r.json!.signature as string, 'base64');
      expect(opensslVerifies(exportPublicKey(td, 'tls', key === 'ec' ? '02' : '01'), key === 'ec' ? 'ECDSA-SHA256' : 'RSA-PKCS1-SHA256', data, sig)).toBe(true);
    }
  });

  it('the principal falls back from the SPIFFE ID to the DNS name to the subject CN', async () => {
    for (const who of [certs.dnsOnly!, certs.cnOnly!]) expect((await curl(url('sign'), tlsArgs(who), signBody())).status).toBe(200);
    const principals = (await auditRecords()).filter((r) => r.event === 'sign').map((r) => r.principal);
    expect(principals).toEqual(expect.arrayContaining([INVOICER, 'billing.internal', 'legacy-billing']));
  });

  it('a certificate with two URI SANs, or a DNS name or CN in the form of a URI, names no principal: 401, audited, no C_Sign', async () => {
    const before = signs();
    for (const [who, detail] of [
      [certs.twoUris!, /has 2 URI SANs/],
      [certs.cnSpiffe!, /subject CN "spiffe:\/\/[^"]+" has the form of a URI/],
    ] as const) {
      const r = await curl(url('sign'), tlsArgs(who), signBody());
      expect(r.status).toBe(401);
      expect(r.json).toMatchObject({ code: 'UNAUTHENTICATED' });
      expect(r.json!.detail).toMatch(detail);
    }
    expect(signs()).toBe(before);
  });

  it('refuses another CA, an expired, a not-yet-valid, a server-only and a missing certificate in the handshake; audited; no C_Sign', async () => {
    const before = signs();
    for (const who of [certs.stranger!, certs.expired!, certs.notYet!, certs.serverOnly!, null]) {
      const r = await curl(url('sign'), tlsArgs(who), signBody());
      expect(r.status, `${who?.cert ?? 'no certificate'} got an HTTP answer`).toBe(0);
      expect(r.exit).not.toBe(0);
    }
    expect(signs()).toBe(before);
    const refused = (await auditRecords()).filter((r) => r.event === 'denied' && String(r.detail).startsWith('TLS handshake'));
    expect(refused.length).toBeGreaterThanOrEqual(5);
    // Each says why, as OpenSSL does, not that the connection closed.
    expect(refused.slice(-5).map((r) => r.detail)).toEqual(
      ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'INVALID_PURPOSE', 'NO_CLIENT_CERTIFICATE'].map((why) => `TLS handshake: ${why}`),
    );
    expect(refused.map((r) => [r.result, r.peer])).toEqual(refused.map(() => ['UNAUTHENTICATED', expect.stringMatching(/^127\.0\.0\.1:\d+$/)]));
    // The remote client reports the refusal as a typed error: the alert if it read it, else the closed connection.
    const client = connect({ url: daemon.api!.tlsUrl!, tls: { cert: certs.expired!.cert, key: certs.expired!.key, ca: pki.ca.cert } });
    const err = await client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data }).catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'Pkcs11SupervisorError', code: expect.stringMatching(/^(UNAUTHENTICATED|CLOSED)$/), message: expect.stringMatching(/certificate/) });
    await client.close();
  });

  it('TLS 1.2 and plain HTTP are refused before any request, even with a valid certificate; no C_Sign', async () => {
    const before = signs();
    const tls12 = await curl(url('sign'), [...tlsArgs(certs.invoicer!), '--tls-max', '1.2'], signBody());
    expect(tls12.status).toBe(0);
    expect(tls12.exit).not.toBe(0);
    const plain = await curl(url('sign').replace(/^https:/, 'http:'), [], signBody());
    expect(plain.status).toBe(0);
    expect(plain.exit).not.toBe(0);
    expect(signs()).toBe(before);
    // The same valid certificate over TLS 1.3 signs.
    expect((await curl(url('sign'), tlsArgs(certs.invoicer!), signBody())).status).toBe(200);
  });

  it('a valid certificate whose principal lacks the role gets 403 FORBIDDEN, audited with principal and peer; no C_Sign', async () => {
    const before = signs();
    const r = await curl(url('sign'), tlsArgs(certs.auditor!), signBody());
    expect(r.status).toBe(403);
    expect(r.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(r.json).toMatchObject({ code: 'FORBIDDEN', status: 403, slot: 's' });
    expect(signs()).toBe(before);
    const denied = (await auditRecords()).find((r) => r.event === 'denied' && r.principal === AUDITOR && r.result === 'FORBIDDEN');
    expect(denied).toMatchObject({ detail: 'sign', peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
    // What the auditor may do, it may.
    expect((await curl(url('status'), [...tlsArgs(certs.auditor!), '-X', 'POST'])).status).toBe(200);
  });

  it('a principal cannot be claimed in the body', async () => {
    const r = await curl(url('sign'), tlsArgs(certs.auditor!), { ...signBody(), principal: { id: INVOICER, roles: ['administrator'] } });
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ code: 'BAD_INPUT' });
  });
});

describe('JWT bearer tokens', () => {
  const b64url = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const token = (claims: Record<string, unknown>, exp = '5m') =>
    new jose.SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer('https://id.test.example').setAudience('pkcs11-supervisor').setSubject('jwt-invoicer').setIssuedAt().setExpirationTime(exp).sign(jwk.privateKey);

  it('a valid token acts as its subject with the roles it carries', async () => {
    const bearer = await token({ roles: ['service'] });
    const r = await curl(url('sign'), [...tlsArgs(certs.auditor!), '-H', `authorization: Bearer ${bearer}`], signBody());
    expect(r.status).toBe(200);
    expect((await auditRecords()).some((x) => x.event === 'sign' && x.principal === 'jwt-invoicer')).toBe(true);
  });

  it('an expired, not yet valid, wrongly signed, unsigned (alg none), HMAC-confused or wrong-audience token is 401 UNAUTHENTICATED; no C_Sign', async () => {
    const before = signs();
    const other = await jose.generateKeyPair('ES256');
    const bad = [
      await token({ roles: ['service'] }, '-1m'),
      await new jose.SignJWT({ roles: ['service'] }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer('https://id.test.example').setAudience('pkcs11-supervisor').setSubject('x').setExpirationTime('5m').sign(other.privateKey),
      await new jose.SignJWT({ roles: ['service'] }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer('https://id.test.example').setAudience('another-service').setSubject('x').setExpirationTime('5m').sign(jwk.privateKey),
      'not-a-jwt',
      // Unsigned (alg none), and HMAC keyed with the JWKS's public key: the classic confusions.
      `${b64url({ alg: 'none', kid: 'k1' })}.${b64url({ iss: 'https://id.test.example', aud: 'pkcs11-supervisor', sub: 'x', exp: Math.floor(Date.now() / 1000) + 300, roles: ['administrator'] })}.`,
      await new jose.SignJWT({ roles: ['administrator'] })
        .setProtectedHeader({ alg: 'HS256', kid: 'k1' })
        .setIssuer('https://id.test.example')
        .setAudience('pkcs11-supervisor')
        .setSubject('x')
        .setExpirationTime('5m')
        .sign(Buffer.from(readFileSync(jwk.jwks, 'utf8'))),
      // Not yet valid.
      await new jose.SignJWT({ roles: ['service'] }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer('https://id.test.example').setAudience('pkcs11-supervisor').setSubject('x').setNotBefore('10m').setExpirationTime('20m').sign(jwk.privateKey),
    ];
    for (const b of bad) {
      const r = await curl(url('sign'), [...tlsArgs(certs.invoicer!), '-H', `authorization: Bearer ${b}`], signBody());
      expect(r.status).toBe(401);
      expect(r.json).toMatchObject({ code: 'UNAUTHENTICATED' });
    }
    expect(signs()).toBe(before);
  });
});

describe('JWT clocks', () => {
  const at = (nbf: number, exp: number) =>
    new jose.SignJWT({ roles: ['service'] }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer('https://id.test.example').setAudience('pkcs11-supervisor').setSubject('jwt-clock').setNotBefore(nbf).setExpirationTime(exp).sign(jwk.privateKey);
  const status = async (bearer: string) => (await curl(url('sign'), [...tlsArgs(certs.auditor!), '-H', `authorization: Bearer ${bearer}`], signBody())).status;

  it("a token whose issuer's clock runs seconds ahead is taken; one not valid for a minute yet, or expired a second ago, is not", async () => {
    const now = Math.floor(Date.now() / 1000);
    expect(await status(await at(now + 3, now + 300))).toBe(200);
    expect(await status(await at(now + 60, now + 300))).toBe(401);
    expect(await status(await at(now - 300, now - 1))).toBe(401);
  });
});

describe('connect() with a bearer token', () => {
  const req = { slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256' as const, data };
  const asAuditor = () => ({ cert: certs.auditor!.cert, key: certs.auditor!.key, ca: pki.ca.cert }); // its certificate alone may not sign
  const jwt = () => new jose.SignJWT({ roles: ['service'] }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer('https://id.test.example').setAudience('pkcs11-supervisor').setSubject('jwt-client').setExpirationTime('5m').sign(jwk.privateKey);

  it('sends a token given once, or a fresh one per request from a function; the daemon acts as its subject', async () => {
    let minted = 0;
    const fixed = connect({ url: daemon.api!.tlsUrl!, tls: asAuditor(), bearer: await jwt() });
    const fresh = connect({ url: daemon.api!.tlsUrl!, tls: asAuditor(), bearer: async () => (minted++, jwt()) });
    try {
      for (const client of [fixed, fresh]) {
        const sig = await client.sign(req);
        expect(opensslVerifies(exportPublicKey(td, 'tls', '02'), 'ECDSA-SHA256', data, sig)).toBe(true);
      }
      expect(minted).toBe(1);
      expect((await auditRecords()).filter((x) => x.event === 'sign' && x.principal === 'jwt-client').length).toBeGreaterThanOrEqual(2);
    } finally {
      await fixed.close();
      await fresh.close();
    }
  });

  it('a bearer function that fails or returns no token is UNAUTHENTICATED, saying so, and nothing is sent; a bad static token is BAD_INPUT at connect()', async () => {
    const before = signs();
    const cases: [() => unknown, RegExp][] = [
      [() => { throw new Error('token service down'); }, /bearer function failed.*token service down/],
      [async () => Promise.reject(new Error('no credentials')), /bearer function failed.*no credentials/],
      [() => undefined, /returned undefined/],
      [() => '', /not a bearer token/],
      [() => 'eyJ0\r\nx-injected: 1', /not a bearer token/],
    ];
    for (const [bearer, message] of cases) {
      const client = connect({ url: daemon.api!.tlsUrl!, tls: asAuditor(), bearer: bearer as () => string });
      try {
        for (const call of [() => client.sign(req), () => client.sign({ ...req, signal: new AbortController().signal }), () => client.status()]) {
          const e = await call().then(() => null, (err: unknown) => err);
          expect(e).toMatchObject({ name: 'Pkcs11SupervisorError', code: 'UNAUTHENTICATED' });
          expect((e as Error).message).toMatch(message);
          expect((e as Error).message).not.toContain('x-injected');
        }
      } finally {
        await client.close();
      }
    }
    expect(signs()).toBe(before);
    for (const bearer of ['', 'two words', 'a\nb']) {
      expect(() => connect({ url: daemon.api!.tlsUrl!, tls: asAuditor(), bearer })).toThrow(expect.objectContaining({ code: 'BAD_INPUT' }));
    }
  });
});

describe('JWKS rotation', () => {
  it('a JWKS replaced on disk (a new file renamed over it, this one saved with a byte order mark) is read again: the new key is trusted, the removed one no longer', async () => {
    const next = await jose.generateKeyPair('ES256');
    const signed = (key: CryptoKey, kid: string) =>
      new jose.SignJWT({ roles: ['service'] }).setProtectedHeader({ alg: 'ES256', kid }).setIssuer('https://id.test.example').setAudience('pkcs11-supervisor').setSubject('jwt-rotated').setExpirationTime('5m').sign(key);
    const withBearer = async (b: string) => (await curl(url('sign'), [...tlsArgs(certs.auditor!), '-H', `authorization: Bearer ${b}`], signBody())).status;
    const oldToken = await signed(jwk.privateKey, 'k1');
    const newToken = await signed(next.privateKey as CryptoKey, 'k2');
    expect([await withBearer(oldToken), await withBearer(newToken)]).toEqual([200, 401]);
    const original = readFileSync(jwk.jwks);
    try {
      const tmp = `${jwk.jwks}.new`;
      writeFileSync(tmp, `\uFEFF${JSON.stringify({ keys: [{ ...(await jose.exportJWK(next.publicKey)), kid: 'k2', alg: 'ES256' }] })}`);
      renameSync(tmp, jwk.jwks);
      const until = Date.now() + 5_000;
      while ((await withBearer(newToken)) !== 200 && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
      expect([await withBearer(newToken), await withBearer(oldToken)]).toEqual([200, 401]);
    } finally {
      writeFileSync(`${jwk.jwks}.back`, original);
      renameSync(`${jwk.jwks}.back`, jwk.jwks);
    }
    await new Promise((r) => setTimeout(r, 1_100)); // the next look at the file (at most once a second) takes the first key back
    expect(await withBearer(oldToken)).toBe(200);
  });
});

describe('rate limits', () => {
  it('a principal over its bucket gets 429 RATE_LIMITED with Retry-After; others are unaffected', async () => {
    const statuses: number[] = [];
    let limited: Awaited<ReturnType<typeof curl>> | null = null;
    for (let i = 0; i < 5; i++) {
      const r = await curl(url('status'), [...tlsArgs(certs.noisy!), '-X', 'POST']);
      statuses.push(r.status);
      if (r.status === 429) limited = r;
    }
    expect(statuses.slice(0, 3)).toEqual([200, 200, 200]);
    expect(limited?.json).toMatchObject({ code: 'RATE_LIMITED', status: 429 });
    expect(Number(limited?.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect((await curl(url('sign'), tlsArgs(certs.invoicer!), signBody())).status).toBe(200);
    const client = connect({ url: daemon.api!.tlsUrl!, tls: { cert: certs.noisy!.cert, key: certs.noisy!.key, ca: pki.ca.cert } });
    await expect(client.status()).rejects.toMatchObject({ code: 'RATE_LIMITED' });
    await client.close();
  });
});

describe('the connection limit', () => {
  it('a TLS connection over maxConnections gets 429 QUEUE_FULL once its handshake is done, then is closed; no C_Sign', async () => {
    const capped = await startDaemon(variant('capped', { maxConnections: 1 }));
    const addr = new URL(capped.api!.tlsUrl!);
    const held = await new Promise<ReturnType<typeof tlsConnect>>((resolve, reject) => {
      const s = tlsConnect({ host: addr.hostname, port: Number(addr.port), ca: readFileSync(pki.ca.cert), cert: readFileSync(certs.invoicer!.cert), key: readFileSync(certs.invoicer!.key) }, () => resolve(s));
      s.on('error', reject);
    });
    try {
      await new Promise((r) => setTimeout(r, 50));
      const before = signs();
      const r = await curl(`${capped.api!.tlsUrl}/v1/sign`, tlsArgs(certs.invoicer!), signBody());
      expect(r.status).toBe(429);
      expect(r.headers['retry-after']).toBe('1');
      expect(r.json).toMatchObject({ code: 'QUEUE_FULL', status: 429 });
      expect(signs()).toBe(before);
      held.destroy();
      await new Promise((r) => setTimeout(r, 100));
      const ok = await curl(`${capped.api!.tlsUrl}/v1/sign`, tlsArgs(certs.invoicer!), signBody());
      expect(ok.status).toBe(200);
      expect(opensslVerifies(exportPublicKey(td, 'tls', '02'), 'ECDSA-SHA256', data, Buffer.from(ok.json!.signature as string, 'base64'))).toBe(true);
    } finally {
      held.destroy();
      await capped.stop();
    }
  });
});

describe('a client that never finishes its handshake', () => {
  it('is closed after requestTimeoutMs, silent or halfway through its ClientHello; the listener serves others meanwhile', async () => {
    const slow = await startDaemon(variant('slow-handshake', { requestTimeoutMs: 500 }));
    const { hostname, port } = new URL(slow.api!.tlsUrl!);
    const closedAfter = (first: Buffer | null) =>
      new Promise<number>((resolve, reject) => {
        const t0 = Date.now();
        const s = netConnect({ host: hostname, port: Number(port) }, () => first && s.write(first));
        s.on('close', () => resolve(Date.now() - t0));
        s.on('error', () => undefined);
        setTimeout(() => (s.destroy(), reject(new Error('still open after 5 s'))), 5_000);
      });
    try {
      // A TLS record header announcing a 512-byte handshake message, then nothing more.
      const half = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
      const pending = [closedAfter(null), closedAfter(half)];
      const meanwhile = await curl(`${slow.api!.tlsUrl}/v1/sign`, tlsArgs(certs.invoicer!), signBody());
      expect(meanwhile.status).toBe(200);
      for (const ms of await Promise.all(pending)) expect(ms).toBeLessThan(3_000);
    } finally {
      await slow.stop();
    }
  });
});

describe('revoked client certificates (api.tls.crl)', () => {
  it('a revoked certificate is refused in the handshake and audited, no C_Sign; one revoked later is refused once its CRL is read again', async () => {
    const revoked = issue(pki.ca, { cn: 'revoked', uri: INVOICER, file: 'revoked' });
    const later = issue(pki.ca, { cn: 'revoked-later', uri: INVOICER, file: 'revoked-later' });
    revoke(pki.ca, revoked);
    const crl = makeCrl(pki.ca, join(td.dir, 'clients.crl'));
    const withCrl = await startDaemon(variant('crl', {}, { crl }));
    const auditPath = join(td.dir, 'crl-audit.jsonl');
    const at = `${withCrl.api!.tlsUrl}/v1/sign`;
    try {
      const before = signs();
      const refused = await curl(at, tlsArgs(revoked), signBody());
      expect(refused.status).toBe(0); // no HTTP answer: the handshake failed
      expect(signs()).toBe(before);
      for (const ok of [certs.invoicer!, later]) {
        const r = await curl(at, tlsArgs(ok), signBody());
        expect(r.status).toBe(200);
        expect(opensslVerifies(exportPublicKey(td, 'tls', '02'), 'ECDSA-SHA256', data, Buffer.from(r.json!.signature as string, 'base64'))).toBe(true);
      }
      await withCrl.sup.as({ id: 'test-harness', roles: ['auditor'] }).verifyAudit();
      const denied = readFileSync(auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { event: string; result: string; detail?: string });
      expect(denied.some((r) => r.event === 'denied' && r.result === 'UNAUTHENTICATED' && /revoked/i.test(r.detail ?? ''))).toBe(true);

      revoke(pki.ca, later);
      makeCrl(pki.ca, `${crl}.new`);
      renameSync(`${crl}.new`, crl);
      expect(await withCrl.reload()).toMatchObject({ ok: true }); // SIGHUP reads the TLS files at once
      expect((await curl(at, tlsArgs(later), signBody())).status).toBe(0);
      expect((await curl(at, tlsArgs(certs.invoicer!), signBody())).status).toBe(200);
      expect(signs()).toBe(before + 3);

      // A CRL past its nextUpdate refuses every client (as the docs warn), and says so.
      makeCrl(pki.ca, `${crl}.new`, 'expired');
      renameSync(`${crl}.new`, crl);
      await withCrl.reload();
      expect((await curl(at, tlsArgs(certs.invoicer!), signBody())).status).toBe(0);
      await withCrl.sup.as({ id: 'test-harness', roles: ['auditor'] }).verifyAudit();
      expect(readFileSync(auditPath, 'utf8')).toContain('TLS handshake: CRL_HAS_EXPIRED');
      expect(signs()).toBe(before + 3);
    } finally {
      await withCrl.stop();
    }
  });

  it('a CRL that is not one is CONFIG_INVALID naming api.tls at start', async () => {
    const notCrl = join(td.dir, 'not.crl');
    writeFileSync(notCrl, '-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n');
    await expect(startDaemon(variant('bad-crl', {}, { crl: notCrl }))).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [expect.objectContaining({ path: 'api.tls' })] });
    await expect(startDaemon(variant('bad-crl', {}, { crl: join(td.dir, 'missing.crl') }))).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [expect.objectContaining({ path: 'api.tls.crl' })] });
  });
});

describe('rotation without a restart', () => {
  const serialSeen = () =>
    new Promise<string>((resolve, reject) => {
      const addr = new URL(daemon.api!.tlsUrl!);
      const s = tlsConnect({ host: addr.hostname, port: Number(addr.port), ca: readFileSync(pki.ca.cert), cert: readFileSync(certs.invoicer!.cert), key: readFileSync(certs.invoicer!.key) }, () => {
        resolve(s.getPeerCertificate().serialNumber);
        s.destroy();
      });
      s.on('error', reject);
    });
  const replace = (from: string, to: string) => {
    copyFileSync(from, `${to}.new`);
    renameSync(`${to}.new`, to);
  };

  it('a new server certificate and a new client CA take effect for new connections, at SIGHUP or the next check', async () => {
    const before = await serialSeen();
    const next = issue(pki.ca, { cn: 'localhost', dns: ['localhost'], ip: ['127.0.0.1'], server: true, file: 'server-next' });
    replace(next.key, live.key);
    replace(next.cert, live.cert);
    // Checked every reloadIntervalMs (an hour here), or at once on SIGHUP, which calls reload().
    expect(await serialSeen()).toBe(before);
    expect(await daemon.reload()).toMatchObject({ ok: true });
    expect(await serialSeen()).not.toBe(before);

    replace(pki.stranger.cert, live.ca);
    await daemon.reload();
    await expect.poll(async () => (await curl(url('status'), [...tlsArgs(certs.auditor!), '-X', 'POST'])).status, { timeout: 5_000, interval: 100 }).toBe(0);
    replace(pki.ca.cert, live.ca);
    await daemon.reload();
    await expect.poll(async () => (await curl(url('status'), [...tlsArgs(certs.auditor!), '-X', 'POST'])).status, { timeout: 5_000, interval: 100 }).toBe(200);
  });
});

describe('metrics', () => {
  it('headers over the limit are 431 BAD_INPUT as a problem document, counted, and audited with the certificate\'s principal', async () => {
    const before = signs();
    const r = await curl(url('sign'), [...tlsArgs(certs.invoicer!), '-H', `x-padding: ${'a'.repeat(20_000)}`], signBody());
    expect(r.status).toBe(431);
    expect(r.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(r.json).toMatchObject({ code: 'BAD_INPUT', status: 431 });
    expect(signs()).toBe(before);
    const refused = (await auditRecords()).filter((e) => e.event === 'denied' && String(e.detail).startsWith('request the HTTP parser refused'));
    expect(refused).toEqual([expect.objectContaining({ result: 'BAD_INPUT', principal: INVOICER, peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/), detail: 'request the HTTP parser refused: 431 HPE_HEADER_OVERFLOW' })]);
  });

  it('/metrics counts requests by route and code, handshakes refused among them, and their durations', async () => {
    const text = (await curl(`${daemon.url}/metrics`, [])).body;
    expect(text).toMatch(/pkcs11_api_requests_total\{route="unknown",code="BAD_INPUT"\} [1-9]/);
    expect(text).toMatch(/pkcs11_api_requests_total\{route="sign",code="ok"\} [1-9]/);
    expect(text).toMatch(/pkcs11_api_requests_total\{route="sign",code="FORBIDDEN"\} [1-9]/);
    expect(text).toMatch(/pkcs11_api_requests_total\{route="tls-handshake",code="UNAUTHENTICATED"\} [1-9]/);
    expect(text).toMatch(/pkcs11_api_request_duration_seconds_count\{route="sign"\} [1-9]/);
  });
});

describe('expiry of the TLS files', () => {
  const seconds = (kind: 'notAfter' | 'nextUpdate', file: string) => opensslDate(kind, file).getTime() / 1000;
  const expiry = async (d: Daemon) => {
    const text = (await curl(`${d.url}/metrics`, [])).body;
    return Object.fromEntries([...text.matchAll(/^pkcs11_api_tls_expiry_timestamp_seconds\{file="(\w+)"\} (\d+)$/gm)].map((m) => [m[1], Number(m[2])]));
  };

  it('/metrics says when the server certificate, the client CA and the CRL stop working, as OpenSSL reads them, after each rotation; a CRL past its nextUpdate is warned of', async () => {
    // The main daemon: no CRL, and its certificate rotated by the test above.
    expect(await expiry(daemon)).toEqual({ cert: seconds('notAfter', live.cert), clientCa: seconds('notAfter', live.ca) });

    const crl = makeCrl(pki.ca, join(td.dir, 'expiry.crl'));
    const file = variant('expiry', {}, { crl });
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), metrics: { enabled: true, host: '127.0.0.1', port: 0 } }));
    const { logger, lines: warnings } = logLines<{ file?: string; msg: string }>('warn');
    const withCrl = await startDaemon(file, logger);
    try {
      expect((await expiry(withCrl)).crl).toBe(seconds('nextUpdate', crl));
      expect(warnings.filter((w) => w.file)).toEqual([]);
      makeCrl(pki.ca, `${crl}.new`, 'expired');
      renameSync(`${crl}.new`, crl);
      await withCrl.reload();
      expect((await expiry(withCrl)).crl).toBe(Date.parse('2025-02-01T00:00:00Z') / 1000);
      expect(warnings.filter((w) => w.file)).toEqual([expect.objectContaining({ file: 'api.tls.crl', msg: expect.stringMatching(/ended at 2025-02-01T00:00:00.000Z; the certificates of its CA are refused/) })]);
    } finally {
      await withCrl.stop();
    }
  });
});
