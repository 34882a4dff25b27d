/**
 * POST /v1/batch and the remote client's batching: each call of a batch gets its own answer
 * (the right signature for its own data and key, or its own typed error), its own policy check,
 * rate-limit token, audit record and metric; a client that hangs up takes its queued calls with
 * it; and a daemon without the route is still served, one call at a time.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer } from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compactVerify, importSPKI } from 'jose';
import { connect, startDaemon, type Daemon, type Pkcs11Client } from '../dist/src/index.js';
import { curl } from './support/curl.js';
import { Faults, faultConfig } from './support/faults.js';
import { exportPublicKey, opensslVerifies } from './support/openssl.js';
import { createToken, tokenDir, type TokenDir } from './support/softhsm.js';

let td: TokenDir;
let faults: Faults;
let daemon: Daemon;
let client: Pkcs11Client;
let sock: string;
let pubs: { ec: string; rsa: string };
const viaSocket = () => ['--unix-socket', sock];
const BATCH = 'http://localhost/v1/batch';
const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');
const signs = () => faults.counts().C_Sign ?? 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function metric(line: RegExp): Promise<number> {
  const text = (await curl(`${daemon.url}/metrics`, [])).body;
  return Number(line.exec(text)?.[1] ?? 0);
}

async function auditRecords(): Promise<Record<string, unknown>[]> {
  await daemon.sup.as({ id: 'test-harness', roles: ['auditor'] }).verifyAudit();
  return readFileSync(join(td.dir, 'audit.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

beforeAll(async () => {
  td = tokenDir();
  process.env.BATCH_PIN = createToken(td, 'batch').pin;
  // Before the module is loaded: SoftHSM2 finds its tokens when it is initialized.
  process.env.OPEN_PIN = createToken(td, 'open').pin;
  faults = new Faults(td);
  sock = join(td.dir, 'api.sock');
  const file = join(td.dir, 'config.json');
  writeFileSync(
    file,
    JSON.stringify({
      ...faultConfig(
        td,
        faults,
        { s: { token: { label: 'batch' }, pin: { env: 'BATCH_PIN' }, maxDataBytes: 4096, keys: { rsa: { label: 'rsa', id: '01' }, ec: { label: 'ec', id: '02' }, gone: { label: 'gone' } } } },
        // The same token without the fault module: a slot the faults never slow down.
        { fast: { token: { label: 'batch' }, pin: { env: 'BATCH_PIN' } } },
      ),
      metrics: { enabled: true, host: '127.0.0.1', port: 0 },
      audit: { path: join(td.dir, 'audit.jsonl') },
      api: { unix: { path: sock, principal: 'local' } },
      policy: {
        principals: { local: ['service'] },
        slots: { s: { service: { keys: ['ec', 'rsa', 'gone'] }, auditor: {} }, fast: { service: {} } },
      },
    }),
  );
  daemon = await startDaemon(file);
  client = connect({ socket: sock });
  pubs = { ec: exportPublicKey(td, 'batch', '02'), rsa: exportPublicKey(td, 'batch', '01') };
});

afterAll(async () => {
  await client?.close();
  await daemon?.stop();
});

describe('POST /v1/batch with curl', () => {
  it('answers each call in order: signatures OpenSSL accepts for their own data and key, and each error as its own problem', async () => {
    const a = Buffer.from('invoice 1');
    const b = Buffer.from('invoice 2, signed by another key');
    const r = await curl(BATCH, viaSocket(), {
      calls: [
        { method: 'sign', request: { slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: b64(a) } },
        { method: 'sign', request: { slot: 's', key: 'rsa', mechanism: 'RSA-PSS-SHA256', data: b64(b) } },
        { method: 'sign', request: { slot: 's', key: 'gone', mechanism: 'ECDSA-SHA256', data: b64(a) } },
        { method: 'sign', request: { slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: b64(a), principal: 'someone-else' } },
        { method: 'sign', request: { slot: 's', key: 'ec', mechanism: 'RSA-PSS-SHA256', data: b64(a) } },
        { method: 'generateRandom', request: { slot: 's', length: 16 } },
      ],
    });
    expect(r.status).toBe(200);
    const results = r.json!.results as ({ result: Record<string, string> } | { problem: Record<string, unknown> })[];
    expect(results).toHaveLength(6);
    const sig = (i: number) => Buffer.from((results[i] as { result: { signature: string } }).result.signature, 'base64');
    expect(opensslVerifies(pubs.ec, 'ECDSA-SHA256', a, sig(0))).toBe(true);
    expect(opensslVerifies(pubs.rsa, 'RSA-PSS-SHA256', b, sig(1))).toBe(true);
    // Never the other call's answer: each signature fails for the other call's data and key.
    expect(opensslVerifies(pubs.ec, 'ECDSA-SHA256', b, sig(0))).toBe(false);
    expect(opensslVerifies(pubs.rsa, 'RSA-PSS-SHA256', a, sig(1))).toBe(false);
    expect(results[2]).toEqual({ problem: expect.objectContaining({ code: 'KEY_NOT_FOUND', status: 404, slot: 's' }) });
    expect(results[3]).toEqual({ problem: expect.objectContaining({ code: 'BAD_INPUT', status: 400, detail: expect.stringMatching(/principal/) }) });
    expect((results[4] as { problem: { code: string } }).problem.code).toMatch(/^MECHANISM_/);
    expect(Buffer.from((results[5] as { result: { bytes: string } }).result.bytes, 'base64')).toHaveLength(16);
  });

  it('refuses, as a whole, a batch that is not one: a method it cannot carry, no calls, too many, not JSON', async () => {
    const one = { method: 'sign', request: { slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: b64('x') } };
    for (const body of [{ calls: [{ method: 'destroyObject', request: { slot: 's', key: 'ec' } }] }, { calls: [] }, { calls: Array(257).fill(one) }, { calls: [one], extra: 1 }, '{"calls": [']) {
      const before = signs();
      const r = await curl(BATCH, viaSocket(), body);
      expect(r.status).toBe(400);
      expect(r.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(r.json).toMatchObject({ code: 'BAD_INPUT' });
      expect(signs()).toBe(before);
    }
  });

  it('the policy and the audit trail see each call: a key outside the role is FORBIDDEN, the others signed and recorded', async () => {
    const before = (await auditRecords()).length;
    const r = await curl(BATCH, viaSocket(), {
      calls: [
        { method: 'sign', request: { slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: b64('audited 1') } },
        { method: 'sign', request: { slot: 's', key: { label: 'ec', id: '02' }, mechanism: 'ECDSA-SHA256', data: b64('outside the role') } },
        { method: 'sign', request: { slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: b64('audited 2') } },
      ],
    });
    const codes = (r.json!.results as { problem?: { code: string } }[]).map((x) => x.problem?.code ?? 'ok');
    expect(codes).toEqual(['ok', 'FORBIDDEN', 'ok']);
    const added = (await auditRecords()).slice(before);
    expect(added.filter((a) => a.event === 'sign' && a.principal === 'local')).toHaveLength(2);
    expect(added.filter((a) => a.event === 'denied' && a.principal === 'local')).toHaveLength(1);
  });

  it('a client that hangs up takes its queued calls with it: none reaches the token', async () => {
    faults.set('delay C_Sign 300');
    try {
      await sleep(50);
      const before = signs();
      const running = client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from('takes the token'), signal: new AbortController().signal });
      await sleep(30);
      const calls = Array.from({ length: 5 }, (_, i) => ({ method: 'sign', request: { slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: b64(`queued ${i}`) } }));
      const gaveUp = await curl(BATCH, [...viaSocket(), '--max-time', '0.1'], { calls });
      expect(gaveUp.exit).toBe(28);
      await running;
      await sleep(400);
      expect(signs() - before).toBe(1);
    } finally {
      faults.clear();
    }
  });
});

describe('the remote client batches what its callers send together', () => {
  it('200 concurrent calls, ECDSA and RSA over different data, mostly in batches: each caller gets its own signature', async () => {
    const batchesBefore = await metric(/pkcs11_api_requests_total\{route="batch",code="ok"\} (\d+)/);
    const signsBefore = await metric(/pkcs11_api_requests_total\{route="sign",code="ok"\} (\d+)/);
    const jobs = Array.from({ length: 200 }, (_, i) => ({ key: i % 3 === 0 ? 'rsa' : 'ec', data: Buffer.from(`document ${i}`) }) as const);
    const sigs = await Promise.all(jobs.map((j) => client.sign({ slot: 's', key: j.key, mechanism: j.key === 'ec' ? 'ECDSA-SHA256' : 'RSA-PSS-SHA256', data: j.data })));
    const { keyObject: ec } = await client.getPublicKey({ slot: 's', key: 'ec' });
    const { keyObject: rsa } = await client.getPublicKey({ slot: 's', key: 'rsa' });
    const { verify } = await import('node:crypto');
    jobs.forEach((j, i) => {
      const ok = j.key === 'ec' ? verify('sha256', j.data, ec, sigs[i]!) : verify('sha256', j.data, { key: rsa, padding: 6, saltLength: 32 }, sigs[i]!);
      expect(ok, `call ${i}`).toBe(true);
    });
    // And OpenSSL, for one of each.
    expect(opensslVerifies(pubs.ec, 'ECDSA-SHA256', jobs[1]!.data, sigs[1]!)).toBe(true);
    expect(opensslVerifies(pubs.rsa, 'RSA-PSS-SHA256', jobs[0]!.data, sigs[0]!)).toBe(true);
    expect(await metric(/pkcs11_api_requests_total\{route="batch",code="ok"\} (\d+)/)).toBeGreaterThanOrEqual(batchesBefore + 2);
    expect(await metric(/pkcs11_api_requests_total\{route="sign",code="ok"\} (\d+)/)).toBe(signsBefore + 200);
  });

  it("each call's typed error comes back to its own caller; the others are answered", async () => {
    const outcomes = await Promise.all([
      client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from('fine') }).then(() => 'ok'),
      client.sign({ slot: 's', key: 'gone', mechanism: 'ECDSA-SHA256', data: Buffer.from('x') }).catch((e: { code: string }) => e.code),
      client.sign({ slot: 'nowhere', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from('x') }).catch((e: { code: string }) => e.code),
      client.verify({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from('x'), signature: Buffer.alloc(64) }),
      client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.alloc(4097) }).catch((e: { code: string }) => e.code),
    ]);
    expect(outcomes).toEqual(['ok', 'KEY_NOT_FOUND', 'SLOT_NOT_FOUND', false, 'BAD_INPUT']);
  });

  it("calls to different slots go in different requests: a slow slot's calls do not hold up a fast one's", async () => {
    faults.set('delay C_Sign 400');
    try {
      await sleep(50);
      const t0 = performance.now();
      const sign = (slot: string) => client.sign({ slot, key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from(slot) }).then(() => performance.now() - t0);
      const [slow, fast] = await Promise.all([Promise.all([sign('s'), sign('s'), sign('s')]), Promise.all([sign('fast'), sign('fast'), sign('fast')])]);
      expect(Math.min(...slow)).toBeGreaterThanOrEqual(400);
      expect(Math.max(...fast)).toBeLessThan(300);
    } finally {
      faults.clear();
    }
  });

  it('calls with different deadlines go in different requests, each with its own', async () => {
    faults.set('delay C_Sign 200');
    try {
      await sleep(50);
      const sign = (timeoutMs: number) => client.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: Buffer.from('deadline'), timeoutMs }).then(() => 'ok', (e: { code: string }) => e.code);
      const outcomes = await Promise.all([sign(50), sign(50), sign(5_000), sign(5_000)]);
      expect(outcomes.slice(0, 2)).toEqual(['TIMEOUT', 'TIMEOUT']);
      expect(outcomes.slice(2)).toEqual(['ok', 'ok']);
    } finally {
      faults.clear();
    }
  });
});

describe('every method a batch carries', () => {
  it('answers in a batch as on its own route: JWS, AES-GCM, HMAC, verify, public key, random', async () => {
    const file = join(td.dir, 'open.json');
    const path = join(td.dir, 'open.sock');
    // On a token of its own (see beforeAll): stopping this daemon logs its token out for the whole process.
    writeFileSync(file, JSON.stringify({ ...faultConfig(td, faults, {}, { o: { token: { label: 'open' }, pin: { env: 'OPEN_PIN' } } }), api: { unix: { path } } }));
    const d = await startDaemon(file);
    const c = connect({ socket: path });
    const routes: string[] = [];
    d.sup.on('apiRequest', (e) => routes.push(e.route));
    try {
      const aes = await c.generateSecretKey({ slot: 'o', algorithm: 'AES-256', label: 'batch-aes' });
      const hmac = await c.generateSecretKey({ slot: 'o', algorithm: 'HMAC-256', label: 'batch-hmac' });
      const o = 'o';
      const plain = [Buffer.from('first plaintext'), Buffer.from('second plaintext')];
      const data = Buffer.from('signed in a batch');
      routes.length = 0;
      const [enc1, enc2, jws, mac, sig, pub, random] = await Promise.all([
        c.encrypt({ slot: o, key: { label: aes.label }, mechanism: 'AES-GCM', data: plain[0]! }),
        c.encrypt({ slot: o, key: { label: aes.label }, mechanism: 'AES-GCM', data: plain[1]! }),
        c.signJws({ slot: o, key: 'ec', alg: 'ES256', payload: { sub: 'batch' } }),
        c.mac({ slot: o, key: { label: hmac.label }, mechanism: 'HMAC-SHA256', data }),
        c.sign({ slot: o, key: 'rsa', mechanism: 'RSA-PSS-SHA256', data }),
        c.getPublicKey({ slot: o, key: 'ec' }),
        c.generateRandom({ slot: o, length: 32 }),
      ]);
      expect(routes).toContain('batch');
      const [dec1, dec2, macOk, sigOk, macBad] = await Promise.all([
        c.decrypt({ slot: o, key: { label: aes.label }, mechanism: 'AES-GCM', data: enc1.ciphertext, iv: enc1.iv }),
        c.decrypt({ slot: o, key: { label: aes.label }, mechanism: 'AES-GCM', data: enc2.ciphertext, iv: enc2.iv }),
        c.verifyMac({ slot: o, key: { label: hmac.label }, mechanism: 'HMAC-SHA256', data, mac }),
        c.verify({ slot: o, key: 'rsa', mechanism: 'RSA-PSS-SHA256', data, signature: sig }),
        c.verifyMac({ slot: o, key: { label: hmac.label }, mechanism: 'HMAC-SHA256', data: Buffer.from('other data'), mac }),
      ]);
      expect([dec1.toString(), dec2.toString()]).toEqual(['first plaintext', 'second plaintext']);
      expect([macOk, sigOk, macBad]).toEqual([true, true, false]);
      const { payload } = await compactVerify(jws, await importSPKI(pub.pem, 'ES256'));
      expect(JSON.parse(Buffer.from(payload).toString())).toEqual({ sub: 'batch' });
      expect(opensslVerifies(exportPublicKey(td, 'open', '01'), 'RSA-PSS-SHA256', data, sig)).toBe(true);
      expect(random).toHaveLength(32);
    } finally {
      await c.close();
      await d.stop();
    }
  });
});

describe('a rate limit counts every call of a batch', () => {
  it('past the burst, the rest of the batch is RATE_LIMITED; the calls within it are signed', async () => {
    const file = join(td.dir, 'limited.json');
    const path = join(td.dir, 'limited.sock');
    writeFileSync(
      file,
      JSON.stringify({
        ...faultConfig(td, faults, { s: { token: { label: 'batch' }, pin: { env: 'BATCH_PIN' } } }),
        api: { unix: { path, principal: 'local' } },
        metrics: { enabled: true, host: '127.0.0.1', port: 0 },
        audit: { path: join(td.dir, 'limited-audit.jsonl') },
        policy: { principals: { local: ['service'] }, rateLimits: { service: { perSecond: 0.1, burst: 3 } }, slots: { s: { service: {}, auditor: {} } } },
      }),
    );
    const d = await startDaemon(file);
    try {
      const calls = Array.from({ length: 5 }, (_, i) => ({ method: 'sign', request: { slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data: b64(`limited ${i}`) } }));
      const r = await curl(BATCH, ['--unix-socket', path], { calls });
      expect(r.status).toBe(200);
      const codes = (r.json!.results as { problem?: { code: string } }[]).map((x) => x.problem?.code ?? 'ok');
      expect(codes).toEqual(['ok', 'ok', 'ok', 'RATE_LIMITED', 'RATE_LIMITED']);
      // Each refused call is counted and audited as a refused sign on its slot, as on its own route.
      const scrape = (await curl(`${d.url}/metrics`, [])).body;
      const count = (route: string, code: string) => Number(new RegExp(`^pkcs11_api_requests_total\\{route="${route}",code="${code}"\\} (\\d+)`, 'm').exec(scrape)?.[1] ?? 0);
      expect([count('sign', 'ok'), count('sign', 'RATE_LIMITED'), count('batch', 'ok'), count('batch', 'RATE_LIMITED')]).toEqual([3, 2, 1, 0]);
      await d.sup.as({ id: 'test-harness', roles: ['auditor'] }).verifyAudit();
      const denied = readFileSync(join(td.dir, 'limited-audit.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.result === 'RATE_LIMITED');
      expect(denied).toEqual([0, 1].map(() => expect.objectContaining({ event: 'denied', slot: 's', principal: 'local', detail: 'sign' })));
      const again = await curl('http://localhost/v1/sign', ['--unix-socket', path], calls[0]!.request);
      expect(again.status).toBe(429);
      expect(again.headers['retry-after']).toMatch(/^\d+$/);
    } finally {
      await d.stop();
    }
  });
});

describe('a daemon without the batch route', () => {
  it('is served one call at a time after its 404', async () => {
    const path = join(td.dir, 'old.sock');
    const seen: string[] = [];
    const old = createServer((req, res) => {
      seen.push(req.url!);
      req.resume();
      req.on('end', () => {
        if (req.url === '/v1/batch') {
          res.writeHead(404, { 'content-type': 'application/problem+json' });
          return res.end(JSON.stringify({ type: 'urn:pkcs11-supervisor:error:ROUTE_NOT_FOUND', title: 'ROUTE_NOT_FOUND', status: 404, detail: 'no route', code: 'ROUTE_NOT_FOUND' }));
        }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ bytes: b64('0123456789abcdef') }));
      });
    });
    await new Promise<void>((r) => old.listen(path, r));
    const c = connect({ socket: path });
    try {
      const first = await Promise.all([1, 2, 3].map(() => c.generateRandom({ slot: 's', length: 16 })));
      const second = await Promise.all([1, 2].map(() => c.generateRandom({ slot: 's', length: 16 })));
      expect([...first, ...second].map((b) => b.toString())).toEqual(Array(5).fill('0123456789abcdef'));
      expect(seen).toEqual(['/v1/batch', '/v1/generateRandom', '/v1/generateRandom', '/v1/generateRandom', '/v1/generateRandom', '/v1/generateRandom']);
    } finally {
      await c.close();
      old.close();
    }
  });
});
