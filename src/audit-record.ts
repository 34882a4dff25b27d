/** An audit record, its hash, and the check of a trail's chain (the `audit verify` command). */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

export interface AuditEntry {
  event: string;
  slot: string;
  /** The key as the caller named it (a ref, or label/id). */
  key?: string | undefined;
  mechanism?: string | undefined;
  /** SHA-256 of the data signed or verified, hex. Never the data. */
  dataSha256?: string | undefined;
  result: string;
  principal?: string | undefined;
  detail?: string | undefined;
}

export interface AuditRecord extends AuditEntry {
  seq: number;
  time: string;
  prev: string;
  hash: string;
}

export const GENESIS = '0'.repeat(64);

/** The record's hash covers every field but `hash`, in a fixed order. */
export function recordHash(r: Omit<AuditRecord, 'hash'>): string {
  const canonical = JSON.stringify([r.seq, r.time, r.prev, r.event, r.slot, r.key ?? null, r.mechanism ?? null, r.dataSha256 ?? null, r.result, r.principal ?? null, r.detail ?? null]);
  return createHash('sha256').update(canonical).digest('hex');
}

/**
 * ok; or `torn`: the last bytes are an unfinished record (a write cut short: a crash, a full
 * disk), everything before them intact; or `broken`: a record changed, removed or reordered.
 */
export type AuditVerdict =
  | { ok: true; records: number; head: string }
  | { ok: false; kind: 'torn'; records: number; head: string; line: number; bytes: number; reason: string }
  | { ok: false; kind: 'broken'; line: number; seq: number | null; reason: string };

/** Splits a trail into its complete lines and the unfinished bytes after the last newline. */
export function splitTrail(text: string): { lines: string[]; tail: string } {
  const end = text.lastIndexOf('\n') + 1;
  const lines = text.slice(0, end).split('\n');
  lines.pop();
  return { lines, tail: text.slice(end) };
}

/** Walks the chain; the first record that does not follow from the one before is reported. */
export function verifyAuditFile(path: string): AuditVerdict {
  const { lines, tail } = splitTrail(readFileSync(path, 'utf8'));
  let prev = GENESIS;
  let seq = 0;
  for (let i = 0; i < lines.length; i++) {
    let r: AuditRecord;
    try {
      r = JSON.parse(lines[i]!) as AuditRecord;
    } catch {
      return { ok: false, kind: 'broken', line: i + 1, seq: null, reason: 'not a JSON record' };
    }
    const { hash, ...body } = r;
    if (recordHash(body) !== hash) return { ok: false, kind: 'broken', line: i + 1, seq: r.seq, reason: 'record was changed (its hash does not match its content)' };
    if (r.prev !== prev) {
      const later = lines.slice(i + 1).some((l) => {
        try {
          return (JSON.parse(l) as AuditRecord).seq === seq + 1;
        } catch {
          return false;
        }
      });
      const reason =
        r.seq <= seq || later ? `records are out of order (expected seq ${seq + 1} here)` : r.seq > seq + 1 ? `record(s) before it were removed (expected seq ${seq + 1})` : 'the chain is broken before this record';
      return { ok: false, kind: 'broken', line: i + 1, seq: r.seq, reason };
    }
    if (r.seq !== seq + 1) return { ok: false, kind: 'broken', line: i + 1, seq: r.seq, reason: `sequence jumps from ${seq} to ${r.seq}` };
    prev = hash;
    seq = r.seq;
  }
  if (tail.length > 0) {
    const bytes = Buffer.byteLength(tail);
    const reason = `torn tail: the last ${bytes} bytes are an unfinished record (a write cut short), not a changed one; every record before them is intact. The daemon removes it at its next start and records that it did`;
    return { ok: false, kind: 'torn', records: lines.length, head: prev, line: lines.length + 1, bytes, reason };
  }
  return { ok: true, records: lines.length, head: prev };
}
