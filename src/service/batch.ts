/**
 * `POST /v1/batch`: several calls in one request, for the data-plane methods. An HTTP round trip
 * costs client and daemon together ~100 µs of CPU, twice what SoftHSM2 takes for an ECDSA
 * signature, so the remote client sends the calls its callers make in the same turn of its event
 * loop as one batch, and the daemon answers all of them in one response: each call still has its
 * own schema check, policy, rate-limit token, audit record, metrics and typed error. The calls of
 * a batch run concurrently (as separate requests would) and share the request's deadline header
 * and its connection: closing it aborts every call not yet at the token.
 */
import { z } from 'zod';
import { ProblemSchema, type Problem } from './problem.js';
import type { RouteName } from './routes.js';

/** The methods a batch may carry: those that neither change the token nor depend on another call's effect. */
export const BATCHABLE = ['sign', 'verify', 'signJws', 'encrypt', 'decrypt', 'mac', 'verifyMac', 'getPublicKey', 'generateRandom'] as const satisfies readonly RouteName[];
export type BatchableName = (typeof BATCHABLE)[number];
const batchable: ReadonlySet<string> = new Set(BATCHABLE);
export const isBatchable = (name: string): name is BatchableName => batchable.has(name);

export const BATCH_PATH = '/v1/batch';
/** Calls in one batch: as many as the mailbox hands a session thread at once. */
export const MAX_BATCH_CALLS = 256;
/**
 * The most request JSON the remote client puts in one batch; a call larger than this goes alone.
 * Below the daemon's smallest body limit (64 KiB beyond a slot's largest input), so a batch is
 * never refused for its size where its calls alone would not be.
 */
export const MAX_BATCH_BYTES = 48 * 1024;

export const BatchRequestWire = z.strictObject({
  calls: z
    .array(
      z.strictObject({
        method: z.enum(BATCHABLE),
        request: z.record(z.string(), z.unknown()).describe("the method's request, as its own route takes it"),
      }),
    )
    .min(1)
    .max(MAX_BATCH_CALLS),
});

/** Each call's answer, in the order of the calls: its route's result, or the problem document it would have been answered with. */
export const BatchResultWire = z.object({
  results: z.array(z.union([z.strictObject({ result: z.unknown().describe("the method's result, as its own route answers it") }), z.strictObject({ problem: ProblemSchema })])),
});

export type BatchAnswer = { result: unknown } | { problem: Problem };
