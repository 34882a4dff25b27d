import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { IvRegistry } from '../dist/src/iv-registry.js';

describe('the AES-GCM IV record', () => {
  it('is bounded for the token, however many keys are named; past the bound only the daemon\'s own IVs are taken', () => {
    const ivs = new IvRegistry();
    for (let i = 0; i < 1_000_000; i++) expect(ivs.claim({ label: `key-${i % 5_000}` }, randomBytes(12), i % 2 === 0)).toBe(true);
    expect(ivs.size).toBe(1_000_000);
    expect(ivs.claim({ label: 'key-1' }, randomBytes(12), true)).toBe(false);
    expect(ivs.claim({ label: 'another key' }, randomBytes(12), false)).toBe(true);
    expect(ivs.size).toBe(1_000_000);
  });

  it('a released IV may be claimed again; a release of one never claimed changes nothing', () => {
    const ivs = new IvRegistry();
    const iv = randomBytes(12);
    const k = { label: 'k', id: '01' };
    const other = { label: 'other' };
    expect(ivs.claim(k, iv, true)).toBe(true);
    expect(ivs.claim(k, iv, true)).toBe(false);
    ivs.release(k, iv);
    ivs.release(k, iv);
    ivs.release(other, iv);
    expect(ivs.size).toBe(0);
    expect(ivs.claim(k, iv, true)).toBe(true);
    expect(ivs.claim(other, iv, true)).toBe(true);
    expect(ivs.size).toBe(2);
  });

  it('an IV used under one name of a key is refused under every name that could be that key', () => {
    const ivs = new IvRegistry();
    const iv = randomBytes(12);
    expect(ivs.claim({ label: 'k', id: '01' }, iv, true)).toBe(true);
    for (const name of [{ label: 'k' }, { id: '01' }, { label: 'k', id: '01', on: { token: 't' } }]) expect(ivs.claim(name, iv, true), JSON.stringify(name)).toBe(false);
    for (const name of [{ label: 'j', id: '03' }, { label: 'k', id: '02' }]) expect(ivs.claim(name, iv, true), JSON.stringify(name)).toBe(true);
    // A record a slot kept before it knew its token joins the token's.
    const token = new IvRegistry();
    token.absorb(ivs);
    expect(token.size).toBe(ivs.size);
    expect(token.claim({ id: '01' }, iv, true)).toBe(false);
  });
});
