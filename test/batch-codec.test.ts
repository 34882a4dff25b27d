import { describe, expect, it } from 'vitest';
import { MAX_PACKED_BYTES, packable, packBatch, ReplyPacker, sharedBytes, unpackBatch, unpackReplies, type PackableTask } from '../dist/workers/handover/batch-codec.js';
import type { WorkerReply, WorkerTask } from '../dist/src/model/protocol.js';

const sign = (label: string, data: string, mechanism = 'ECDSA-SHA256'): PackableTask =>
  ({ op: 'sign', key: { label, id: undefined }, mechanism, data: Buffer.from(data), prehashed: false, format: 'der' }) as PackableTask;
const claimsFor = (n: number) => new Int32Array(new SharedArrayBuffer(4 * n));
/** A batch packed as a session thread's owner packs it, into a buffer of exactly the size asked for. */
const pack = (tasks: PackableTask[]) => packBatch(tasks, claimsFor(tasks.length), new SharedArrayBuffer(sharedBytes(tasks)));
const text = (t: WorkerTask) => Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v instanceof Uint8Array ? `bytes:${Buffer.from(v).toString()}` : v]));

describe('batch codec', () => {
  it('a batch of signs round-trips: every call keeps its own key, mechanism and bytes, in order', () => {
    const tasks = [sign('ec', 'one'), sign('rsa', 'two', 'RSA-PKCS1-SHA256'), sign('ec', 'three'), sign('ec', '')];
    const packed = pack(tasks);
    expect(packed.shapes).toHaveLength(2); // ec/ECDSA twice: one shape
    expect(packed.dataBytes).toBe(11);
    expect(unpackBatch(structuredClone(packed)).map(text)).toEqual(tasks.map(text));
  });

  it("a call naming its key by URI keeps what the URI says of the token: it shares no shape with a plain call on the same label", () => {
    const viaUri = { ...sign('ec', 'uri'), key: { label: 'ec', id: undefined, on: { token: 'far' } } } as PackableTask;
    const tasks = [sign('ec', 'plain'), viaUri, sign('ec', 'plain again')];
    const packed = pack(tasks);
    expect(packed.shapes).toHaveLength(2);
    expect(unpackBatch(structuredClone(packed)).map((t) => (t as PackableTask).key)).toEqual(tasks.map((t) => t.key));
  });

  it('a batch is packed up to exactly what its offsets address, and refused past it', () => {
    expect(MAX_PACKED_BYTES).toBe(2 ** 31 - 1);
    const tasks = [sign('ec', 'abcd'), sign('ec', 'efgh')];
    const shared = new SharedArrayBuffer(sharedBytes(tasks));
    expect(packBatch(tasks, claimsFor(2), shared, 8).dataBytes).toBe(8);
    expect(() => packBatch(tasks, claimsFor(2), shared, 7)).toThrow(RangeError);
  });

  it('decryptions, encryptions and MACs pack with signs: each keeps its own IV, AAD and label, and a field it lacks stays absent', () => {
    const decrypt = (iv: string, data: string, aad?: string): PackableTask =>
      ({ op: 'decrypt', key: { label: 'aes', id: '10' }, mechanism: 'AES-GCM', data: Buffer.from(data), iv: Buffer.from(iv), ...(aad === undefined ? {} : { aad: Buffer.from(aad) }) }) as PackableTask;
    const tasks = [
      decrypt('iv-one------', 'first', 'header'),
      sign('ec', 'signed'),
      decrypt('iv-two------', 'second'),
      { op: 'encrypt', key: { label: 'rsa', id: undefined }, mechanism: 'RSA-OAEP-SHA1', data: Buffer.from('k'), oaepLabel: Buffer.from('') } as PackableTask,
      { op: 'mac', key: { label: 'h', id: undefined }, mechanism: 'HMAC-SHA256', data: Buffer.from('body') } as PackableTask,
    ];
    const packed = pack(tasks);
    expect(packed.shapes).toHaveLength(4); // the two decryptions share one
    expect(unpackBatch(structuredClone(packed)).map(text)).toEqual(tasks.map(text));
  });

  it('a batch holding anything but calls answered with bytes is not packed', () => {
    const verify = { op: 'verify', key: { label: 'ec' }, mechanism: 'ECDSA-SHA256', data: Buffer.from('x'), signature: Buffer.from('y'), prehashed: false, format: 'der' } as WorkerTask;
    expect(packable([sign('ec', 'a'), verify])).toBeNull();
  });

  it('replies round-trip: values, per-call errors and calls not run, with their timings; values own their bytes', () => {
    const replies: (WorkerReply | null)[] = [
      { ok: true, value: new Uint8Array([1, 2, 3]), startedAt: 10.25, endedAt: 10.5 },
      { ok: false, error: { code: 'KEY_NOT_FOUND', message: 'no key' }, startedAt: 10.5, endedAt: 10.75 },
      null,
      { ok: true, value: new Uint8Array([4, 5]), startedAt: 11, endedAt: 12 },
      { ok: false, error: { code: 'TOKEN_ERROR', message: 'lost', ckr: 'CKR_SESSION_HANDLE_INVALID', fn: 'C_Sign' }, startedAt: 12, endedAt: 13 },
    ];
    const batch = pack(replies.map((_r, i) => sign('ec', `call ${i}`)));
    // As the session does: every signature is a view on one buffer that the next call overwrites.
    const sessionBuffer = new Uint8Array(8);
    const packer = new ReplyPacker(unpackedOnTheThread(batch));
    replies.forEach((r, i) => {
      if (!r) return;
      if (!r.ok) return packer.add(i, r);
      const v = r.value as Uint8Array;
      sessionBuffer.set(v);
      packer.add(i, { ...r, value: sessionBuffer.subarray(0, v.byteLength) });
    });
    sessionBuffer.fill(0xff);
    const back = unpackReplies(structuredClone(packer.finish()));
    expect(back.map((r) => (r && r.ok ? { ...r, value: [...(r.value as Uint8Array)] } : r))).toEqual(
      replies.map((r) => (r && r.ok ? { ...r, value: [...(r.value as Uint8Array)] } : r)),
    );
    const first = back[0] as { value: Buffer };
    expect(first.value.buffer).not.toBeInstanceOf(SharedArrayBuffer); // its own memory, not the reused batch buffer
  });

  it('a reused buffer carries nothing of the batch before: a call not run this time has no answer, whatever the last batch left there', () => {
    const tasks = [sign('ec', 'a'), sign('ec', 'b')];
    const shared = new SharedArrayBuffer(sharedBytes(tasks));
    const first = new ReplyPacker(unpackedOnTheThread(packBatch(tasks, claimsFor(2), shared)));
    first.add(0, { ok: true, value: new Uint8Array([1]), startedAt: 1, endedAt: 2 });
    first.add(1, { ok: true, value: new Uint8Array([2]), startedAt: 2, endedAt: 3 });
    unpackReplies(first.finish());
    const second = new ReplyPacker(unpackedOnTheThread(packBatch(tasks, claimsFor(2), shared)));
    second.add(1, { ok: true, value: new Uint8Array([9]), startedAt: 4, endedAt: 5 }); // call 0 cancelled: never run
    const back = unpackReplies(second.finish());
    expect(back[0]).toBeNull();
    expect([...((back[1] as { value: Buffer }).value)]).toEqual([9]);
  });

  it('answers larger than the room set aside (a signature by a key above RSA-4096) travel beside the buffer and stay whole', () => {
    const big = Uint8Array.from({ length: 2048 }, (_v, i) => i % 251);
    const packer = new ReplyPacker(unpackedOnTheThread(pack([sign('ec', 'x'), sign('ec', 'y'), sign('ec', 'z')])));
    packer.add(0, { ok: true, value: big, startedAt: 1, endedAt: 2 });
    packer.add(1, { ok: true, value: big.subarray(0, 300), startedAt: 2, endedAt: 3 });
    packer.add(2, { ok: true, value: big, startedAt: 3, endedAt: 4 });
    const back = unpackReplies(structuredClone(packer.finish()));
    expect([...(back[0] as { value: Buffer }).value]).toEqual([...big]);
    expect([...(back[1] as { value: Buffer }).value]).toEqual([...big.subarray(0, 300)]);
    expect([...(back[2] as { value: Buffer }).value]).toEqual([...big]);
  });
});

/** The batch as the session thread receives it: a structured clone sharing the same memory. */
function unpackedOnTheThread<T>(batch: T): T {
  return structuredClone(batch);
}
