/**
 * A batch of signatures crosses between the threads as a few flat buffers instead of one
 * structured-cloned object per call. Cloning ~16 sign tasks and their replies cost ~5 µs a
 * call, split between the two threads: on a 2-core machine that is CPU taken from signatures
 * that take ~70 µs each (ECDSA P-256 on SoftHSM2). Anything else travels as it is.
 */
import type { WorkerError, WorkerReply, WorkerTask } from '../../src/model/protocol.js';

type SignTask = Extract<WorkerTask, { op: 'sign' }>;
type SignShape = Omit<SignTask, 'op' | 'data'>;

export interface PackedBatch {
  op: 'packedSigns';
  /** The distinct key, mechanism and format of the batch's calls: usually one. */
  shapes: SignShape[];
  /** Per call: shape, offset and length of its data in `data`. */
  index: Int32Array;
  data: Uint8Array;
  claims: Int32Array;
}

export interface PackedReplies {
  /** Per call: NOT_RUN, VALUE or ERROR, then offset and length of its signature in `values`. */
  index: Int32Array;
  /** Per call: startedAt, endedAt. */
  times: Float64Array;
  values: Uint8Array;
  /** The errors, in the order of the calls that failed. */
  errors: WorkerError[];
}

const NOT_RUN = 0;
const VALUE = 1;
const ERROR = 2;

/** What the 32-bit offsets of a packed batch address. */
export const MAX_PACKED_BYTES = 2 ** 31 - 1;

/**
 * Packs a batch made only of sign tasks; null for any other batch. A batch whose data would
 * not be addressable is refused outright: a wrapped offset would sign another call's bytes.
 */
export function packBatch(tasks: readonly WorkerTask[], claims: Int32Array, limit = MAX_PACKED_BYTES): PackedBatch | null {
  let size = 0;
  for (const t of tasks) {
    if (t.op !== 'sign') return null;
    size += t.data.byteLength;
  }
  if (size > limit) throw new RangeError(`a packed batch holds at most ${limit} bytes of data, not ${size}`);
  const shapes: SignShape[] = [];
  const index = new Int32Array(3 * tasks.length);
  const data = new Uint8Array(size);
  let at = 0;
  tasks.forEach((t, i) => {
    const { key, mechanism, prehashed, format, data: bytes } = t as SignTask;
    let shape = shapes.findIndex((s) => s.key.label === key.label && s.key.id === key.id && s.mechanism === mechanism && s.prehashed === prehashed && s.format === format);
    if (shape < 0) shape = shapes.push({ key, mechanism, prehashed, format }) - 1;
    data.set(bytes, at);
    index[3 * i] = shape;
    index[3 * i + 1] = at;
    index[3 * i + 2] = bytes.byteLength;
    at += bytes.byteLength;
  });
  return { op: 'packedSigns', shapes, index, data, claims };
}

export function unpackBatch(p: PackedBatch): SignTask[] {
  const tasks: SignTask[] = new Array(p.index.length / 3);
  for (let i = 0; i < tasks.length; i++) {
    const at = p.index[3 * i + 1]!;
    tasks[i] = { op: 'sign', ...p.shapes[p.index[3 * i]!]!, data: p.data.subarray(at, at + p.index[3 * i + 2]!) };
  }
  return tasks;
}

/**
 * Packs a batch's replies as the calls end. Each signature is copied in at once, so the session
 * can hand back a view on its own buffer, valid until its next call, instead of a fresh buffer
 * per signature. Calls never added stay NOT_RUN.
 */
export class ReplyPacker {
  private readonly index: Int32Array;
  private readonly times: Float64Array;
  private values: Uint8Array;
  private at = 0;
  private readonly errors: WorkerError[] = [];

  constructor(calls: number) {
    this.index = new Int32Array(3 * calls);
    this.times = new Float64Array(2 * calls);
    this.values = new Uint8Array(128 * calls);
  }

  /** Adds call i's reply: its signature is copied now. */
  add(i: number, reply: WorkerReply): void {
    this.times[2 * i] = reply.startedAt;
    this.times[2 * i + 1] = reply.endedAt;
    if (!reply.ok) {
      this.index[3 * i] = ERROR;
      this.errors.push(reply.error);
      return;
    }
    const bytes = reply.value as Uint8Array;
    if (this.at + bytes.byteLength > this.values.byteLength) {
      const grown = new Uint8Array(2 * (this.at + bytes.byteLength));
      grown.set(this.values.subarray(0, this.at));
      this.values = grown;
    }
    this.values.set(bytes, this.at);
    this.index[3 * i] = VALUE;
    this.index[3 * i + 1] = this.at;
    this.index[3 * i + 2] = bytes.byteLength;
    this.at += bytes.byteLength;
  }

  /** The replies, with the signatures in a buffer of their exact size: a message carries its whole buffer. */
  finish(): PackedReplies {
    return { index: this.index, times: this.times, values: this.values.slice(0, this.at), errors: this.errors };
  }
}

/** Each signature is copied out into a Buffer of its own: a caller keeping one must not keep the batch's buffer alive. */
export function unpackReplies(p: PackedReplies): (WorkerReply | null)[] {
  const replies: (WorkerReply | null)[] = new Array(p.index.length / 3);
  let failed = 0;
  for (let i = 0; i < replies.length; i++) {
    const kind = p.index[3 * i];
    const startedAt = p.times[2 * i]!;
    const endedAt = p.times[2 * i + 1]!;
    if (kind === NOT_RUN) replies[i] = null;
    else if (kind === ERROR) replies[i] = { ok: false, error: p.errors[failed++]!, startedAt, endedAt };
    else {
      const at = p.index[3 * i + 1]!;
      replies[i] = { ok: true, value: Buffer.from(p.values.subarray(at, at + p.index[3 * i + 2]!)), startedAt, endedAt };
    }
  }
  return replies;
}
