import { describe, expect, it } from 'vitest';
import { MAX_PACKED_BYTES, packBatch, ReplyPacker, unpackBatch, unpackReplies } from '../dist/workers/handover/batch-codec.js';
import type { WorkerReply, WorkerTask } from '../dist/src/model/protocol.js';

const sign = (label: string, data: string, mechanism = 'ECDSA-SHA256'): WorkerTask =>
  ({ op: 'sign', key: { label, id: undefined }, mechanism, data: Buffer.from(data), prehashed: false, format: 'der' }) as WorkerTask;

describe('batch codec', () => {
  it('a batch of signs round-trips: every call keeps its own key, mechanism and bytes, in order', () => {
    const tasks = [sign('ec', 'one'), sign('rsa', 'two', 'RSA-PKCS1-SHA256'), sign('ec', 'three'), sign('ec', '')];
    const claims = new Int32Array(new SharedArrayBuffer(16));
    const packed = packBatch(tasks, claims)!;
    expect(packed.shapes).toHaveLength(2); // ec/ECDSA twice: one shape
    expect(packed.data.byteLength).toBe(11);
    const back = unpackBatch(structuredClone(packed));
    expect(back.map((t) => ({ ...t, data: Buffer.from((t as { data: Uint8Array }).data).toString() }))).toEqual(
      tasks.map((t) => ({ ...t, data: Buffer.from((t as { data: Uint8Array }).data).toString() })),
    );
  });

  it('a batch is packed up to exactly what its offsets address, and refused past it', () => {
    expect(MAX_PACKED_BYTES).toBe(2 ** 31 - 1);
    const tasks = [sign('ec', 'abcd'), sign('ec', 'efgh')];
    const claims = new Int32Array(new SharedArrayBuffer(8));
    expect(packBatch(tasks, claims, 8)!.data.byteLength).toBe(8);
    expect(() => packBatch(tasks, claims, 7)).toThrow(RangeError);
  });

  it('decryptions, encryptions and MACs pack with signs: each keeps its own IV, AAD and label, and a field it lacks stays absent', () => {
    const decrypt = (iv: string, data: string, aad?: string): WorkerTask =>
      ({ op: 'decrypt', key: { label: 'aes', id: '10' }, mechanism: 'AES-GCM', data: Buffer.from(data), iv: Buffer.from(iv), ...(aad === undefined ? {} : { aad: Buffer.from(aad) }) }) as WorkerTask;
    const tasks = [
      decrypt('iv-one------', 'first', 'header'),
      sign('ec', 'signed'),
      decrypt('iv-two------', 'second'),
      { op: 'encrypt', key: { label: 'rsa', id: undefined }, mechanism: 'RSA-OAEP-SHA1', data: Buffer.from('k'), oaepLabel: Buffer.from('') } as WorkerTask,
      { op: 'mac', key: { label: 'h', id: undefined }, mechanism: 'HMAC-SHA256', data: Buffer.from('body') } as WorkerTask,
    ];
    const packed = packBatch(tasks, new Int32Array(new SharedArrayBuffer(20)))!;
    expect(packed.shapes).toHaveLength(4); // the two decryptions share one
    const text = (t: WorkerTask) => Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v instanceof Uint8Array ? `bytes:${Buffer.from(v).toString()}` : v]));
    expect(unpackBatch(structuredClone(packed)).map(text)).toEqual(tasks.map(text));
  });

  it('a batch holding anything but calls answered with bytes is not packed', () => {
    const verify = { op: 'verify', key: { label: 'ec' }, mechanism: 'ECDSA-SHA256', data: Buffer.from('x'), signature: Buffer.from('y'), prehashed: false, format: 'der' } as WorkerTask;
    expect(packBatch([sign('ec', 'a'), verify], new Int32Array(2))).toBeNull();
  });

  it('replies round-trip: values, per-call errors and calls not run, with their timings; values own their bytes', () => {
    const replies: (WorkerReply | null)[] = [
      { ok: true, value: new Uint8Array([1, 2, 3]), startedAt: 10.25, endedAt: 10.5 },
      { ok: false, error: { code: 'KEY_NOT_FOUND', message: 'no key' }, startedAt: 10.5, endedAt: 10.75 },
      null,
      { ok: true, value: new Uint8Array([4, 5]), startedAt: 11, endedAt: 12 },
      { ok: false, error: { code: 'TOKEN_ERROR', message: 'lost', ckr: 'CKR_SESSION_HANDLE_INVALID', fn: 'C_Sign' }, startedAt: 12, endedAt: 13 },
    ];
    // As the session does: every signature is a view on one buffer that the next call overwrites.
    const sessionBuffer = new Uint8Array(8);
    const packer = new ReplyPacker(replies.length);
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
    expect(first.value.buffer.byteLength).not.toBe(5); // not a view on the batch's 5-byte buffer
  });

  it('signatures larger than the room set aside (RSA-4096 and up) grow the reply buffer and stay whole', () => {
    const big = Uint8Array.from({ length: 512 }, (_v, i) => i % 251);
    const packer = new ReplyPacker(2);
    packer.add(0, { ok: true, value: big, startedAt: 1, endedAt: 2 });
    packer.add(1, { ok: true, value: big.subarray(0, 300), startedAt: 2, endedAt: 3 });
    const packed = packer.finish();
    expect(packed.values.byteLength).toBe(812); // exact: a message carries its whole buffer
    const back = unpackReplies(structuredClone(packed));
    expect([...(back[0] as { value: Buffer }).value]).toEqual([...big]);
    expect([...(back[1] as { value: Buffer }).value]).toEqual([...big.subarray(0, 300)]);
  });
});
