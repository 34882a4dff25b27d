/**
 * A batch of calls whose answers are bytes (signatures, encryptions, decryptions, MACs) crosses
 * between the threads in one shared buffer instead of one structured-cloned object per call.
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
/** Per call in the index: its shape, then offset and length of each byte field (length -1: absent). */
const STRIDE = 1 + 2 * BYTE_FIELDS.length;

/**
 * Everything of a batch but its shapes lives in one SharedArrayBuffer: the calls' index and
 * bytes one way, the replies' index, timings and bytes the other. The thread that owns the
 * buffer reuses it for a later batch once this one's replies are read, so a batch costs no
 * typed-array copies on either side: a message carrying three cloned arrays cost 10-30 µs to
 * post, a tenth of the session thread's time on 128 AES-GCM decryptions.
 */
export interface PackedBatch {
  op: 'packed';
  /** The distinct shapes of the batch's calls (op, key, mechanism, …): usually one. */
  shapes: Shape[];
  shared: SharedArrayBuffer;
  calls: number;
  dataBytes: number;
  claims: Int32Array;
}

export interface PackedReplies {
  shared: SharedArrayBuffer;
  calls: number;
  dataBytes: number;
  /** The errors, in the order of the calls that failed. */
  errors: WorkerError[];
  /** Answers that did not fit the room set aside (a signature by a key larger than RSA-4096), in the order of their calls. */
  overflow: Uint8Array[];
}

/** Where each part of a batch's shared buffer starts, in bytes; the reply room runs to the buffer's end. */
function layout(calls: number, dataBytes: number) {
  const replyIndex = 4 * STRIDE * calls;
  const times = Math.ceil((replyIndex + 4 * 3 * calls) / 8) * 8; // a Float64Array starts on 8 bytes
  const data = times + 8 * 2 * calls;
  return { index: 0, replyIndex, times, data, room: data + dataBytes };
}

/** The bytes a call carries: its data, IV, AAD and label. */
function bytesOf(t: PackableTask): number {
  const b = t as Partial<Record<ByteField, Uint8Array>>;
  return (b.data?.byteLength ?? 0) + (b.iv?.byteLength ?? 0) + (b.aad?.byteLength ?? 0) + (b.oaepLabel?.byteLength ?? 0);
}

/** Room for one call's answer: a signature up to RSA-4096, a MAC, or a ciphertext with its tag or padding. */
function answerRoom(t: PackableTask): number {
  return t.op === 'sign' ? 512 : t.op === 'mac' ? 64 : t.data.byteLength + 32;
}

/** The shared buffer a batch of these calls needs. */
export function sharedBytes(tasks: readonly PackableTask[]): number {
  let data = 0;
  let room = 0;
  for (const t of tasks) {
    data += bytesOf(t);
    room += answerRoom(t);
  }
  return layout(tasks.length, data).room + room;
}

const NOT_RUN = 0;
const VALUE = 1;
const ERROR = 2;
const OVERFLOW = 3;

/** What the 32-bit offsets of a packed batch address. */
export const MAX_PACKED_BYTES = 2 ** 31 - 1;

/**
 * Whether call `t` has shape `s`: compared field by field, no key string built per call. The key's
 * `on` (what its URI names of the token) by identity: a config ref's is one object, and calls
 * naming a key by URI each keep their own, so a URI for another token never borrows the shape of
 * a plain call on the same label, nor lends it its check.
 */
function sameShape(s: Shape, t: PackableTask): boolean {
  if (s.op !== t.op || s.mechanism !== t.mechanism || s.key.label !== t.key.label || s.key.id !== t.key.id || s.key.on !== t.key.on) return false;
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

/** The calls of a batch that can be packed; null if any cannot. */
export function packable(tasks: readonly WorkerTask[]): PackableTask[] | null {
  for (const t of tasks) if (!PACKABLE.has(t.op)) return null;
  return tasks as PackableTask[];
}

/**
 * Packs a batch of packable tasks into `shared` (at least sharedBytes(tasks) long). A batch whose
 * bytes would not be addressable is refused outright: a wrapped offset would hand one call
 * another's bytes.
 */
export function packBatch(tasks: readonly PackableTask[], claims: Int32Array, shared: SharedArrayBuffer, limit = MAX_PACKED_BYTES): PackedBatch {
  let size = 0;
  for (const t of tasks) size += bytesOf(t);
  if (size > limit) throw new RangeError(`a packed batch holds at most ${limit} bytes of data, not ${size}`);
  const at0 = layout(tasks.length, size);
  const shapes: Shape[] = [];
  const index = new Int32Array(shared, at0.index, STRIDE * tasks.length);
  const data = new Uint8Array(shared, at0.data, size);
  let at = 0;
  for (let i = 0; i < tasks.length; i++) {
    const t = tasks[i]!;
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
  return { op: 'packed', shapes, shared, calls: tasks.length, dataBytes: size, claims };
}

export function unpackBatch(p: PackedBatch): PackableTask[] {
  const tasks: PackableTask[] = new Array(p.calls);
  const at0 = layout(p.calls, p.dataBytes);
  const index = new Int32Array(p.shared, at0.index, STRIDE * p.calls);
  const bytes = (i: number, k: number): Buffer | undefined => {
    const length = index[STRIDE * i + 2 + 2 * k]!;
    if (length < 0) return undefined;
    // A Buffer view: the session hands it to pkcs11js as it is, with no second wrapper per call.
    return Buffer.from(p.shared, at0.data + index[STRIDE * i + 1 + 2 * k]!, length);
  };
  // Each task as one literal of fixed fields: objects spread from cloned shapes came out ten
  // times slower to make, and slower to read on every call.
  for (let i = 0; i < tasks.length; i++) {
    const shape = p.shapes[index[STRIDE * i]!]!;
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
 * Writes a batch's replies into its shared buffer as the calls end. Each answer is copied in at
 * once, so the session can hand back a view on its own buffer, valid until its next call,
 * instead of a fresh buffer per call. Calls never added stay NOT_RUN: the reply index is
 * cleared first, as the buffer held an earlier batch's replies.
 */
export class ReplyPacker {
  private readonly index: Int32Array;
  private readonly times: Float64Array;
  private readonly room: Uint8Array;
  private at = 0;
  private readonly errors: WorkerError[] = [];
  private readonly overflow: Uint8Array[] = [];

  constructor(private readonly batch: Pick<PackedBatch, 'shared' | 'calls' | 'dataBytes'>) {
    const at0 = layout(batch.calls, batch.dataBytes);
    this.index = new Int32Array(batch.shared, at0.replyIndex, 3 * batch.calls).fill(NOT_RUN);
    this.times = new Float64Array(batch.shared, at0.times, 2 * batch.calls);
    this.room = new Uint8Array(batch.shared, at0.room);
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
    if (this.at + bytes.byteLength > this.room.byteLength) {
      this.index[3 * i] = OVERFLOW;
      this.overflow.push(bytes.slice());
      return;
    }
    this.room.set(bytes, this.at);
    this.index[3 * i] = VALUE;
    this.index[3 * i + 1] = this.at;
    this.index[3 * i + 2] = bytes.byteLength;
    this.at += bytes.byteLength;
  }

  finish(): PackedReplies {
    const { shared, calls, dataBytes } = this.batch;
    return { shared, calls, dataBytes, errors: this.errors, overflow: this.overflow };
  }
}

/** Each answer is copied out into a Buffer of its own: the shared buffer is reused for the next batch. */
export function unpackReplies(p: PackedReplies): (WorkerReply | null)[] {
  const at0 = layout(p.calls, p.dataBytes);
  const index = new Int32Array(p.shared, at0.replyIndex, 3 * p.calls);
  const times = new Float64Array(p.shared, at0.times, 2 * p.calls);
  const replies: (WorkerReply | null)[] = new Array(p.calls);
  let failed = 0;
  let overflowed = 0;
  for (let i = 0; i < replies.length; i++) {
    const kind = index[3 * i];
    const startedAt = times[2 * i]!;
    const endedAt = times[2 * i + 1]!;
    if (kind === VALUE) {
      const value = Buffer.allocUnsafe(index[3 * i + 2]!);
      value.set(new Uint8Array(p.shared, at0.room + index[3 * i + 1]!, value.byteLength));
      replies[i] = { ok: true, value, startedAt, endedAt };
    } else if (kind === ERROR) replies[i] = { ok: false, error: p.errors[failed++]!, startedAt, endedAt };
    else if (kind === OVERFLOW) replies[i] = { ok: true, value: Buffer.from(p.overflow[overflowed++]!), startedAt, endedAt };
    else replies[i] = null;
  }
  return replies;
}
