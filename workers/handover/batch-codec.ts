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
type Shape = PackableTask extends infer T ? (T extends PackableTask ? Omit<T, ByteField> : never) : never;
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

/** Whether call `t` has shape `s`: compared field by field, no key string built per call. */
function sameShape(s: Shape, t: PackableTask): boolean {
  if (s.op !== t.op || s.mechanism !== t.mechanism || s.key.label !== t.key.label || s.key.id !== t.key.id) return false;
  if (t.op !== 'sign') return true;
  const sign = s as Omit<Extract<PackableTask, { op: 'sign' }>, 'data'>;
  return sign.prehashed === t.prehashed && sign.format === t.format;
}

/** The call without its bytes (nor a PIN: a call with one runs alone), as a fresh object with fast properties. */
function shapeOf(t: PackableTask): Shape {
  // Destructured, not deleted: an object that loses properties goes slow, and every call unpacked from it with it.
  const { data: _data, iv: _iv, aad: _aad, oaepLabel: _label, contextPin: _pin, ...shape } = t as PackableTask & Partial<Record<ByteField | 'contextPin', unknown>>;
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
    const b = t as Partial<Record<ByteField, Uint8Array>>;
    size += (b.data?.byteLength ?? 0) + (b.iv?.byteLength ?? 0) + (b.aad?.byteLength ?? 0) + (b.oaepLabel?.byteLength ?? 0);
  }
  if (size > limit) throw new RangeError(`a packed batch holds at most ${limit} bytes of data, not ${size}`);
  const shapes: Shape[] = [];
  const index = new Int32Array(STRIDE * tasks.length);
  const data = new Uint8Array(size);
  let at = 0;
  for (let i = 0; i < tasks.length; i++) {
    const t = tasks[i] as PackableTask;
    let shape = shapes.findIndex((s) => sameShape(s, t));
    if (shape < 0) shape = shapes.push(shapeOf(t)) - 1;
    index[STRIDE * i] = shape;
    for (let k = 0; k < BYTE_FIELDS.length; k++) {
      const bytes = (t as Partial<Record<ByteField, Uint8Array>>)[BYTE_FIELDS[k]!];
      index[STRIDE * i + 1 + 2 * k] = at;
      index[STRIDE * i + 2 + 2 * k] = bytes ? bytes.byteLength : -1;
      if (!bytes) continue;
      data.set(bytes, at);
      at += bytes.byteLength;
    }
  }
  return { op: 'packed', shapes, index, data, claims };
}

export function unpackBatch(p: PackedBatch): PackableTask[] {
  const tasks: PackableTask[] = new Array(p.index.length / STRIDE);
  const bytes = (i: number, k: number): Uint8Array | undefined => {
    const length = p.index[STRIDE * i + 2 + 2 * k]!;
    if (length < 0) return undefined;
    // A Buffer view, not a subarray: the session hands it to pkcs11js as it is, with no second wrapper per call.
    return Buffer.from(p.data.buffer, p.data.byteOffset + p.index[STRIDE * i + 1 + 2 * k]!, length);
  };
  // Each task as one literal of fixed fields: objects spread from cloned shapes came out ten
  // times slower to make, and slower to read on every call.
  for (let i = 0; i < tasks.length; i++) {
    const shape = p.shapes[p.index[STRIDE * i]!]!;
    const data = bytes(i, 0)!;
    if (shape.op === 'sign') {
      tasks[i] = { op: 'sign', key: shape.key, mechanism: shape.mechanism, prehashed: shape.prehashed, format: shape.format, data };
    } else if (shape.op === 'mac') {
      tasks[i] = { op: 'mac', key: shape.key, mechanism: shape.mechanism, data };
    } else {
      tasks[i] = { op: shape.op, key: shape.key, mechanism: shape.mechanism, data, iv: bytes(i, 1), aad: bytes(i, 2), oaepLabel: bytes(i, 3) } as PackableTask;
    }
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
