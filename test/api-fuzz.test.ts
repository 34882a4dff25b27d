/**
 * Property-based fuzzing driven by the daemon's own OpenAPI document: for every route,
 * fast-check generates request bodies from the documented request schema (well-formed ones,
 * ones with a field replaced by arbitrary JSON, and arbitrary JSON), sends them over the
 * socket, and checks that no answer is a 5xx and every answer is what the document says:
 * the 200 schema, or a problem document under the status it names. Afterwards the slot still
 * signs correctly.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verify as nodeVerify } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Validator } from '@seriousme/openapi-schema-validator';
import fc from 'fast-check';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { Client } from 'undici';
import { connect, MECHANISM_NAMES, startDaemon, type Daemon } from '../dist/src/index.js';
import { configFor, createToken, DEMO_KEYS, tokenDir, type TokenDir } from './support/softhsm.js';

type Schema = Record<string, unknown>;
interface Operation {
  requestBody?: { content: { 'application/json': { schema: Schema } } };
  responses: Record<string, { content?: Record<string, { schema: Schema }> }>;
}

let td: TokenDir;
let daemon: Daemon;
let http: Client;
let doc: { paths: Record<string, { post?: Operation }>; components?: { schemas?: Record<string, Schema> } };
const ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: false });

/** Values a user would send, so generated requests also reach the token, not only the first check. */
const LIKELY: Record<string, fc.Arbitrary<unknown>> = {
  slot: fc.constantFrom('s', 's', 'nope'),
  key: fc.constantFrom('ec', 'rsa', { label: 'ec' }, { id: '02' }, { label: 'fuzz' }),
  mechanism: fc.constantFrom(...MECHANISM_NAMES),
  alg: fc.constantFrom('ES256', 'RS256', 'PS256', 'EdDSA', 'HS256'),
  label: fc.constantFrom('fuzz', 'ec'),
  length: fc.integer({ min: -2, max: 70_000 }),
  // A deadline too short to meet is answered 504 TIMEOUT, as it should be: not what this run looks for.
  timeoutMs: fc.constantFrom(undefined, 30_000),
};

function resolve(schema: Schema): Schema {
  const ref = schema.$ref as string | undefined;
  return ref ? resolve(doc.components!.schemas![ref.split('/').pop()!]!) : schema;
}

/** An arbitrary of values the JSON schema describes (the subset zod emits). */
function fromSchema(raw: Schema, name = '', depth = 0): fc.Arbitrary<unknown> {
  const schema = resolve(raw);
  if (name === 'timeoutMs') return LIKELY.timeoutMs!;
  const likely = LIKELY[name];
  const own = ownArbitrary(schema, depth);
  return likely ? fc.oneof(likely, own) : own;
}

function ownArbitrary(schema: Schema, depth: number): fc.Arbitrary<unknown> {
  if (schema.const !== undefined) return fc.constant(schema.const);
  if (Array.isArray(schema.enum)) return fc.constantFrom(...(schema.enum as unknown[]));
  const union = (schema.anyOf ?? schema.oneOf) as Schema[] | undefined;
  if (union) return fc.oneof(...union.map((s) => fromSchema(s, '', depth + 1)));
  switch (schema.type) {
    case 'string':
      if (schema.contentEncoding === 'base64' || schema.format === 'byte' || String(schema.pattern ?? '').includes('A-Za-z0-9+/') || String(schema.pattern ?? '').includes('a-zA-Z+/')) {
        return fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString('base64'));
      }
      return fc.string({ maxLength: Math.min(Number(schema.maxLength ?? 40), 80) });
    case 'integer':
      return fc.integer({ min: -5, max: 5_000 });
    case 'number':
      return fc.oneof(fc.integer({ min: -5, max: 60_000 }), fc.double({ noNaN: true }));
    case 'boolean':
      return fc.boolean();
    case 'array':
      return depth > 3 ? fc.constant([]) : fc.array(fromSchema((schema.items as Schema) ?? {}, '', depth + 1), { maxLength: 3 });
    case 'object': {
      const props = (schema.properties ?? {}) as Record<string, Schema>;
      const required = (schema.required ?? []) as string[];
      if (depth > 3 || Object.keys(props).length === 0) return fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 2 });
      return fc.record(Object.fromEntries(Object.entries(props).map(([k, s]) => [k, fromSchema(s, k, depth + 1)])), { requiredKeys: required });
    }
    default:
      return fc.jsonValue({ maxDepth: 2 });
  }
}

/** Well-formed bodies, bodies with one field replaced by arbitrary JSON, and arbitrary JSON. */
function bodies(schema: Schema): fc.Arbitrary<unknown> {
  const good = fromSchema(schema);
  const broken = fc.tuple(good, fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 2 })).map(([b, k, v]) => {
    if (!b || typeof b !== 'object' || Array.isArray(b)) return v;
    // Never the deadline: a deadline too short to meet is rightly a 504.
    const keys = Object.keys(b).filter((key) => key !== 'timeoutMs');
    const field = keys.length > 0 && k.length % 2 === 0 ? keys[k.length % keys.length]! : k;
    return field === 'timeoutMs' ? b : { ...b, [field]: v };
  });
  return fc.oneof({ arbitrary: good, weight: 3 }, { arbitrary: broken, weight: 2 }, { arbitrary: fc.jsonValue({ maxDepth: 3 }), weight: 1 });
}

beforeAll(async () => {
  td = tokenDir();
  process.env.FUZZ_PIN = createToken(td, 'fuzz', [...DEMO_KEYS, { kind: 'EC:prime256v1', label: 'kept', id: '99' }]).pin;
  const file = join(td.dir, 'config.json');
  const sock = join(td.dir, 'api.sock');
  writeFileSync(file, JSON.stringify({ ...configFor(td, { s: { token: { label: 'fuzz' }, pin: { env: 'FUZZ_PIN' }, keys: { rsa: { label: 'rsa', id: '01' }, ec: { label: 'ec', id: '02' }, kept: { label: 'kept', id: '99' } }, maxDataBytes: 4096, keyGenTimeoutMs: 20_000 } }), api: { unix: { path: sock } } }));
  daemon = await startDaemon(file);
  http = new Client('http://localhost', { socketPath: sock });
  const res = await http.request({ method: 'GET', path: '/v1/openapi.json' });
  doc = (await res.body.json()) as typeof doc;
});

afterAll(async () => {
  await http?.close();
  await daemon?.stop();
});

describe('fuzzing from the OpenAPI document', () => {
  it('documents every method as POST /v1/<method>, with its request, its result and problem documents', () => {
    const routes = Object.keys(doc.paths).filter((p) => doc.paths[p]!.post);
    expect(routes.length).toBeGreaterThanOrEqual(20);
    for (const p of routes) {
      const op = doc.paths[p]!.post!;
      expect(op.responses['200']?.content?.['application/json']?.schema, p).toBeDefined();
      expect(op.responses['4XX']?.content?.['application/problem+json']?.schema, p).toBeDefined();
    }
  });

  it('is a valid OpenAPI 3.1 document, as code generators for other languages read it (the official schema)', async () => {
    const validator = new Validator();
    const result = await validator.validate(doc as never);
    expect([validator.version, result.errors ?? []]).toEqual(['3.1', []]);
    expect(result.valid).toBe(true);
  });

  it('no request makes a 5xx, and every answer matches the document', async () => {
    const seen = new Map<number, number>();
    for (const [path, item] of Object.entries(doc.paths)) {
      const op = item.post;
      if (!op) continue;
      const runs = /generateKeyPair|importKeyPair|reset/.test(path) ? 12 : 150;
      const schema = op.requestBody?.content['application/json'].schema ?? { type: 'object' };
      await fc.assert(
        fc.asyncProperty(bodies(schema), async (body) => {
          const res = await http.request({ method: 'POST', path, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
          const text = await res.body.text();
          seen.set(res.statusCode, (seen.get(res.statusCode) ?? 0) + 1);
          if (res.statusCode >= 500) throw new Error(`${path} answered ${res.statusCode}: ${text}`);
          const json = JSON.parse(text) as Record<string, unknown>;
          if (res.statusCode === 200) {
            const validate = ajv.compile(op.responses['200']!.content!['application/json']!.schema);
            if (!validate(json)) throw new Error(`${path}: a 200 that breaks the document: ${ajv.errorsText(validate.errors)}`);
            return;
          }
          expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
          const problem = ajv.compile(op.responses['4XX']!.content!['application/problem+json']!.schema);
          if (!problem(json)) throw new Error(`${path}: a problem document that breaks the document: ${ajv.errorsText(problem.errors)}`);
          expect(json.status).toBe(res.statusCode);
        }),
        { numRuns: runs },
      );
    }
    expect(seen.get(200)).toBeGreaterThan(0);
  }, 240_000);

  it('the slot still signs, and correctly', async () => {
    const client = connect({ socket: daemon.api!.socketPath! });
    try {
      await client.login({ slot: 's' }); // a fuzzed logout may have logged it out
      const data = Buffer.from('after the fuzzing');
      // The fuzzer may destroy the keys it is told of (destroyObject with force is an operation like any other): not this one.
      const sig = await client.sign({ slot: 's', key: 'kept', mechanism: 'ECDSA-SHA256', data });
      const { keyObject } = await client.getPublicKey({ slot: 's', key: 'kept' });
      expect(nodeVerify('sha256', data, keyObject, sig)).toBe(true);
    } finally {
      await client.close();
    }
  });
});
