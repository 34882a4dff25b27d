/**
 * A batch of calls whose answers are bytes (signatures, encryptions, decryptions, MACs) crosses
 * between the threads as a few flat buffers instead of one structured-cloned object per call.
 * Cloning ~16 sign tasks and their replies cost ~5 µs a call, split between the two threads: on
 * a 2-core machine that is CPU taken from signatures that take ~70 µs each (ECDSA P-256 on
 * SoftHSM2), and more than an AES-GCM decryption takes. Anything else travels as it is.
 */
import type { WorkerError, WorkerReply, WorkerTask } from '../../src/model/protocol.js';

export type PackableTask = Extract<WorkerTask, { op: 'sign' | 'encrypt' | 'decrypt' | 'mac' }>;
const PACKABLE: ReadonlySet<string> = new Set(['sign', 'encrypt', 'decrypt', 'mac']);

/** The byte fields a packable task may carry, each in the batch's one buffer. */
const BYTE_FIELDS = ['data', 'iv', 'aad', 'oaepLabel'] as const;
type ByteField = (typeof BYTE_FIELDS)[number];
/** A task without its bytes: what calls of a batch usually share. */
type Shape = Omit<PackableTask, ByteField>;
/** Per call in `index`: its shape, then offset and length of each byte field (length -1: absent). */
const STRIDE = 1 + 2 * BYTE_FIELDS.length;

export interface PackedBatch {
  op: 'packed';
  /** The distinct shapes of the batch's calls (op, key, mechanism, …): usually one. */
  shapes: Shape[];
  index: Int32Array;
  data: Uint8Array;
  claims: Int32Array;
}

export interface PackedReplies {
  /** Per call: NOT_RUN, VALUE or ERROR, then offset and length of its answer in `values`. */
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

const bytesOf = (t: PackableTask, f: ByteField): Uint8Array | undefined => (t as Partial<Record<ByteField, Uint8Array>>)[f];

/** Everything but the bytes, as one string: calls with equal strings share a shape. */
function shapeKey(t: PackableTask): string {
  const s = t as Partial<Extract<PackableTask, { op: 'sign' }>>;
  return `${t.op}\0${t.key.label ?? ''}\0${t.key.id ?? ''}\0${t.mechanism}\0${s.prehashed ?? ''}\0${s.format ?? ''}`;
}

function shapeOf(t: PackableTask): Shape {
  const shape = { ...t } as Record<string, unknown>;
  for (const f of BYTE_FIELDS) delete shape[f];
  delete shape.contextPin; // never batched: a call with a PIN runs alone
  return shape as Shape;
}

/**
 * Packs a batch made only of packable tasks; null for any other batch. A batch whose bytes would
 * not be addressable is refused outright: a wrapped offset would hand one call another's bytes.
 */
export function packBatch(tasks: readonly WorkerTask[], claims: Int32Array, limit = MAX_PACKED_BYTES): PackedBatch | null {
  let size = 0;
  for (const t of tasks) {
    if (!PACKABLE.has(t.op)) return null;
    for (const f of BYTE_FIELDS) size += bytesOf(t as PackableTask, f)?.byteLength ?? 0;
  }
  if (size > limit) throw new RangeError(`a packed batch holds at most ${limit} bytes of data, not ${size}`);
  const keys: string[] = [];
  const shapes: Shape[] = [];
  const index = new Int32Array(STRIDE * tasks.length);
  const data = new Uint8Array(size);
  let at = 0;
  tasks.forEach((task, i) => {
    const t = task as PackableTask;
    const key = shapeKey(t);
    let shape = keys.indexOf(key);
    if (shape < 0) {
      shape = keys.push(key) - 1;
      shapes.push(shapeOf(t));
    }
    index[STRIDE * i] = shape;
    BYTE_FIELDS.forEach((f, k) => {
      const bytes = bytesOf(t, f);
      index[STRIDE * i + 1 + 2 * k] = at;
      index[STRIDE * i + 2 + 2 * k] = bytes ? bytes.byteLength : -1;
      if (!bytes) return;
      data.set(bytes, at);
      at += bytes.byteLength;
    });
  });
  return { op: 'packed', shapes, index, data, claims };
}

export function unpackBatch(p: PackedBatch): PackableTask[] {
  const tasks: PackableTask[] = new Array(p.index.length / STRIDE);
  for (let i = 0; i < tasks.length; i++) {
    const task = { ...p.shapes[p.index[STRIDE * i]!]! } as Record<string, unknown>;
    BYTE_FIELDS.forEach((f, k) => {
      const at = p.index[STRIDE * i + 1 + 2 * k]!;
      const length = p.index[STRIDE * i + 2 + 2 * k]!;
      if (length >= 0) task[f] = p.data.subarray(at, at + length);
    });
    tasks[i] = task as PackableTask;
  }
  return tasks;
}

/**
 * Packs a batch's replies as the calls end. Each answer is copied in at once, so the session
 * can hand back a view on its own buffer, valid until its next call, instead of a fresh buffer
 * per call. Calls never added stay NOT_RUN.
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

  /** Adds call i's reply: its bytes are copied now. */
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

  /** The replies, with the answers in a buffer of their exact size: a message carries its whole buffer. */
  finish(): PackedReplies {
    return { index: this.index, times: this.times, values: this.values.slice(0, this.at), errors: this.errors };
  }
}

/** Each answer is copied out into a Buffer of its own: a caller keeping one must not keep the batch's buffer alive. */
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
