/** Refused TLS handshakes in the audit trail: the first ten a minute from an address as they come, the rest as one counted record. */
import { describe, expect, it } from 'vitest';
import { RefusalLog } from '../dist/src/service/refusal-log.js';

describe('refused handshakes', () => {
  it('a flood from one address costs ten records and a summary a minute; every refusal is counted; other addresses are not held back', () => {
    const written: { peer?: string; detail?: string }[] = [];
    const log = new RefusalLog((e) => written.push(e), { result: 'UNAUTHENTICATED', what: 'TLS handshake' });
    const t0 = Date.parse('2026-12-02T03:00:00Z');
    for (let i = 0; i < 500; i++) log.refused(`10.0.0.9:${40000 + i}`, 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', t0 + i * 100);
    log.refused('10.0.0.7:5000', 'CERT_HAS_EXPIRED', t0 + 1000);
    log.flush();
    const from9 = written.filter((e) => e.peer?.startsWith('10.0.0.9'));
    // 500 refusals over 50 s: one window: ten written, 490 summarized.
    expect(from9).toHaveLength(11);
    expect(from9.slice(0, 10).every((e) => /^10\.0\.0\.9:\d+$/.test(e.peer!))).toBe(true);
    expect(from9[10]).toMatchObject({ peer: '10.0.0.9', detail: expect.stringMatching(/490 more refused in the minute from 2026-12-02T03:00:00.000Z/) });
    expect(written.filter((e) => e.peer === '10.0.0.7:5000')).toHaveLength(1);
  });

  it('a new minute writes the last one\'s summary and starts again', () => {
    const written: { detail?: string }[] = [];
    const log = new RefusalLog((e) => written.push(e), { result: 'UNAUTHENTICATED', what: 'TLS handshake' });
    for (let i = 0; i < 12; i++) log.refused('10.0.0.9:1', 'x', i);
    log.refused('10.0.0.9:1', 'x', 61_000);
    expect(written.map((e) => e.detail)).toEqual([...Array(10).fill('TLS handshake: x'), expect.stringMatching(/^TLS handshake: 2 more refused/), 'TLS handshake: x']);
  });
});
