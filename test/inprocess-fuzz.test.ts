/**
 * Property-based fuzzing of the in-process client, which has no zod in front of it: every
 * method gets requests whose fields are values a caller could pass by mistake or on purpose
 * (wrong types, BigInts, cycles, symbols, functions, huge strings, hostile toJSON and toString,
 * odd call options, aborted signals, random principals under a policy). Each call must end in
 * a result or a Pkcs11SupervisorError with a documented code, never a TypeError or an internal
 * failure, and afterwards the slot still signs with a signature Node verifies.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verify as nodeVerify } from 'node:crypto';
import fc from 'fast-check';
import { ERROR_CODES, Pkcs11SupervisorError, startSupervisor, type Pkcs11Supervisor } from '../dist/src/index.js';
import { REQUEST_FIELDS } from '../dist/src/client/request-fields.js';
import { configFor, createToken, tokenDir, type TokenDir } from './support/softhsm.js';

let td: TokenDir;
let sup: Pkcs11Supervisor;
const cyclic: Record<string, unknown> = {};
cyclic.self = cyclic;

beforeAll(async () => {
  td = tokenDir();
  process.env.FUZZ_IN_PIN = createToken(td, 'fuzz-in').pin;
  const config = configFor(td, { s: { token: { label: 'fuzz-in' }, pin: { env: 'FUZZ_IN_PIN' }, type: 'hsm', poolSize: 2 } });
  sup = await startSupervisor({
    config: { ...config, policy: { principals: {}, slots: { s: { service: { keys: ['ec'] }, operator: {}, auditor: {}, administrator: {} } } } },
  });
});

afterAll(() => sup?.close());

const odd = fc.constantFrom<unknown>(
  undefined, null, 0, -1, 1.5, Number.NaN, Infinity, 2 ** 53, '', 'x', 's', 'ec', 'rsa', 'ECDSA-SHA256', 'RSA-OAEP-SHA1', 'AES-GCM', 'EC-P256', 'AES-256', 'ES256', 'der',
  'pkcs11:object=ec', 'pkcs11:', 'pkcs11:id=%zz', 'pkcs11:object=ec?pin-value=1', '\u0000', '\uDC00', 'x'.repeat(5000), true, false, [], [1], ['sign'], {}, { label: 'ec' }, { id: '02' },
  { id: 'zz' }, { label: 5 }, Buffer.alloc(0), Buffer.from('data'), Buffer.alloc(300), new Uint8Array(32), new ArrayBuffer(8), new Date(0), Symbol('s'), () => 1, 10n, cyclic,
  Object.create(null), { op: 'encrypt', mechanism: 'AES-GCM', data: Buffer.from('x') }, { toJSON: () => { throw new Error('toJSON'); } }, { toString: () => { throw new Error('toString'); } },
);
// Mostly a caller every operation is allowed to, so most calls get past the policy to the checks and the token.
const principal = fc.oneof(
  { weight: 6, arbitrary: fc.constant<unknown>({ id: 'adm', roles: ['administrator'] }) },
  { weight: 1, arbitrary: fc.constantFrom<unknown>(undefined, 'alice', { id: 'svc', roles: ['service'] }, { id: 'ops', roles: ['operator'] }, { id: 'x', roles: [10n] }, { id: cyclic, roles: [] }, 10n, cyclic) },
);
// setPin and initPin change the token's PINs; destroyObject is fuzzed with force kept away from the ec key below.
const METHODS = Object.keys(REQUEST_FIELDS).filter((m) => !['setPin', 'initPin'].includes(m)) as (keyof typeof REQUEST_FIELDS)[];
const CODES = new Set<string>(ERROR_CODES);

describe('the in-process client under arbitrary requests', () => {
  it('answers every call with a result or a typed error, and the slot keeps signing', async () => {
    const request = fc.record({
      method: fc.constantFrom(...METHODS),
      values: fc.array(odd, { minLength: 12, maxLength: 12 }),
      present: fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }),
      principal,
      aborted: fc.integer({ min: 0, max: 9 }),
      slot: fc.integer({ min: 0, max: 9 }),
      options: fc.record({ timeoutMs: odd, signal: odd, pin: odd, which: fc.integer({ min: 0, max: 9 }) }),
    });
    const untyped: string[] = [];
    const outcomes: Record<string, number> = {};
    await fc.assert(
      fc.asyncProperty(request, async ({ method, values, present, principal: who, aborted, slot, options }) => {
        const req: Record<string, unknown> = { timeoutMs: 10_000, principal: who };
        // One call in ten brings an odd call option too.
        if (options.which === 1) req.timeoutMs = options.timeoutMs;
        if (options.which === 2) req.signal = options.signal;
        if (options.which === 3) req.pin = options.pin;
        REQUEST_FIELDS[method].forEach((field, i) => present[i % 12] && (req[field] = values[i % 12]));
        // One call in ten names another slot (or none), one in ten comes already aborted.
        if (slot > 0) req.slot = 's';
        if (method === 'destroyObject' && req.force === true) req.key = { label: 'fuzz-made' };
        if (aborted === 0) req.signal = AbortSignal.abort();
        try {
          await (sup as unknown as Record<string, (r: unknown) => Promise<unknown>>)[method]!(req);
          outcomes.ok = (outcomes.ok ?? 0) + 1;
        } catch (e) {
          const code = (e as { code?: string }).code ?? 'untyped';
          outcomes[code] = (outcomes[code] ?? 0) + 1;
          if (!(e instanceof Pkcs11SupervisorError) || !CODES.has(e.code) || e.code === 'INTERNAL' || e.code === 'WORKER_CRASHED') untyped.push(`${method}: ${(e as Error).constructor.name} ${(e as { code?: string }).code ?? ''} ${(e as Error).message}`);
        }
      }),
      { numRuns: 3000 },
    );
    expect(untyped).toEqual([]);
    // The runs reached past the first checks: some calls succeeded, most failed for their input.
    expect(outcomes.ok).toBeGreaterThan(50);
    expect(outcomes.BAD_INPUT).toBeGreaterThan(500);
    expect(outcomes.FORBIDDEN ?? 0).toBeLessThan(1500);
    const data = Buffer.from('still signing');
    const admin = { id: 'adm', roles: ['administrator'] };
    await sup.login({ slot: 's', principal: admin });
    const sig = await sup.sign({ slot: 's', key: 'ec', mechanism: 'ECDSA-SHA256', data, principal: admin });
    const { keyObject } = await sup.getPublicKey({ slot: 's', key: 'ec', principal: admin });
    expect(nodeVerify('sha256', data, keyObject, sig)).toBe(true);
    expect(sup.status({ principal: admin }).slots.s!.state).toBe('logged_in');
  }, 120_000);
});
