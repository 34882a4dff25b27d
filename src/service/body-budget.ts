/**
 * What the large request bodies being read and answered may add up to, `api.maxBodyBytesInFlight`.
 * A request holds about three times its body in memory until it is answered (the bytes, the JSON
 * text, the decoded data), so ten clients sending the largest input at once took the daemon past
 * 600 MB, and a pod with a 512 MiB limit would have been killed with every slot's login. Past the
 * budget a request is answered 429 QUEUE_FULL before its body is read (the call did not run). One
 * request is always let in, however large, so the largest input still works alone; bodies under
 * 64 KiB (every signature of a digest or a small document) are not counted.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Pkcs11SupervisorError } from '../model/errors.js';

const UNCOUNTED = 64 * 1024;
const mib = (n: number) => (n / 2 ** 20).toFixed(1);

/** The check for each request: a refusal, or undefined once the body's bytes are reserved until its answer is sent. */
export function bodyBudget(max: number, largest: number): (request: FastifyRequest, reply: FastifyReply) => Pkcs11SupervisorError | undefined {
  let inFlight = 0;
  return (request, reply) => {
    const declared = request.headers['content-length'];
    // Chunked (no length): the most it may be.
    const bytes = declared === undefined ? (request.headers['transfer-encoding'] === undefined ? 0 : largest) : Number(declared);
    if (!(bytes >= UNCOUNTED)) return undefined;
    if (inFlight > 0 && inFlight + bytes > max) {
      reply.header('retry-after', '1');
      return new Pkcs11SupervisorError('QUEUE_FULL', `${mib(inFlight)} MiB of request bodies are being read or answered (api.maxBodyBytesInFlight: ${mib(max)} MiB) and this one is ${mib(bytes)} MiB: the call did not run; retry, or send large inputs one at a time`);
    }
    inFlight += bytes;
    reply.raw.once('close', () => (inFlight -= bytes));
    return undefined;
  };
}
