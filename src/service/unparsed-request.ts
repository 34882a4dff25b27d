/**
 * Requests Node's HTTP parser refuses before any route sees them: a header block over the
 * limit, bytes that are not HTTP/1.1, a request that has not arrived by its deadline. They get
 * what every other refusal gets, a problem document with a stable code (Node's and Fastify's
 * own answers are a bare status line or a JSON shape of their own), and are counted; then the
 * connection is closed, as the parser cannot find where the next request would start.
 */
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { Pkcs11SupervisorError } from '../model/errors.js';
import { PROBLEM_TYPE, problemOf } from './problem.js';

const REFUSALS: Record<string, { status: number; detail: string }> = {
  HPE_HEADER_OVERFLOW: { status: 431, detail: 'the request headers are larger than the service takes' },
  HPE_CHUNK_EXTENSIONS_OVERFLOW: { status: 413, detail: 'the chunk extensions are larger than the service takes' },
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, detail: 'the request did not arrive within api.requestTimeoutMs' },
};
const MALFORMED = { status: 400, detail: 'the request is not valid HTTP/1.1' };

/** A `clientError` handler for the API's HTTP servers; `refused` is told each refusal (to count and audit it). */
export function answerUnparsed(refused: (status: number, reason: string, socket: Duplex) => void): (err: Error & { code?: string }, socket: Duplex) => void {
  return (err, socket) => {
    if (err.code === 'ECONNRESET' || socket.destroyed) return; // the client is gone: no one to answer
    const { status, detail } = REFUSALS[err.code ?? ''] ?? MALFORMED;
    refused(status, `${status} ${err.code ?? err.message}`, socket);
    // Not into the middle of an answer already on its way (Node's own rule): the client would read it as part of that one.
    const answering = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
    if (socket.writable && !answering) {
      const body = JSON.stringify({ ...problemOf(new Pkcs11SupervisorError('BAD_INPUT', detail)), status });
      socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: ${PROBLEM_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    }
    socket.destroy();
  };
}
