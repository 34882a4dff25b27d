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
  /** Where a service API request came from: `unix`, or the TLS peer's address:port. */
  peer?: string | undefined;
  detail?: string | undefined;
}

export interface AuditRecord extends AuditEntry {
  seq: number;
  time: string;
  prev: string;
  hash: string;
}

export const GENESIS = '0'.repeat(64);

/** The record's hash covers every field but `hash`, in a fixed order (`peer` only where present, so older trails still verify). */
export function recordHash(r: Omit<AuditRecord, 'hash'>): string {
  const fields = [r.seq, r.time, r.prev, r.event, r.slot, r.key ?? null, r.mechanism ?? null, r.dataSha256 ?? null, r.result, r.principal ?? null, r.detail ?? null];
  if (r.peer !== undefined) fields.push(r.peer);
  const canonical = JSON.stringify(fields);
  return createHash('sha256').update(canonical).digest('hex');
}

/**
 * ok; or `torn`: the last bytes are an unfinished record (a write cut short: a crash, a full
 * disk), everything before them intact; or `broken`: a record changed, removed or reordered.
 * `continues`: the first record follows one in an earlier file (a rotated trail) whose link
 * was not checked here: verify the files together, oldest first.
 */
export type AuditVerdict =
  | { ok: true; records: number; head: string; continues?: string }
  | { ok: false; kind: 'torn'; records: number; head: string; file: string; line: number; bytes: number; reason: string }
  | { ok: false; kind: 'broken'; file: string; line: number; seq: number | null; reason: string };

/** Splits a trail into its complete lines and the unfinished bytes after the last newline. */
export function splitTrail(text: string): { lines: string[]; tail: string } {
  const end = text.lastIndexOf('\n') + 1;
  const lines = text.slice(0, end).split('\n');
  lines.pop();
  return { lines, tail: text.slice(end) };
}

export function verifyAuditFile(path: string): AuditVerdict {
  return verifyAuditFiles([path]);
}

/**
 * Walks the chain through the files, oldest first (a rotated trail: `audit.jsonl.1`, `.2`, …,
 * then `audit.jsonl`); the first record that does not follow from the one before is reported.
 */
export function verifyAuditFiles(paths: string[]): AuditVerdict {
  let prev: string | null = null;
  let seq = 0;
  let records = 0;
  let continues: string | undefined;
  for (const [f, path] of paths.entries()) {
    const { lines, tail } = splitTrail(readFileSync(path, 'utf8'));
    for (let i = 0; i < lines.length; i++) {
      const broken = (reason: string, at: number | null) => ({ ok: false as const, kind: 'broken' as const, file: path, line: i + 1, seq: at, reason });
      let r: AuditRecord;
      try {
        r = JSON.parse(lines[i]!) as AuditRecord;
      } catch {
        return broken('not a JSON record', null);
      }
      const { hash, ...body } = r;
      if (recordHash(body) !== hash) return broken('record was changed (its hash does not match its content)', r.seq);
      if (prev === null && r.prev !== GENESIS) {
        // The trail's first file here starts inside the chain: it was rotated from an earlier one.
        continues = r.prev;
      } else if (r.prev !== (prev ?? GENESIS)) {
        const later = lines.slice(i + 1).some((l) => {
          try {
            return (JSON.parse(l) as AuditRecord).seq === seq + 1;
          } catch {
            return false;
          }
        });
        return broken(r.seq <= seq || later ? `records are out of order (expected seq ${seq + 1} here)` : r.seq > seq + 1 ? `record(s) before it were removed (expected seq ${seq + 1})` : 'the chain is broken before this record', r.seq);
      } else if (r.seq !== seq + 1) {
        return broken(`sequence jumps from ${seq} to ${r.seq}`, r.seq);
      }
      prev = hash;
      seq = r.seq;
      records++;
    }
    if (tail.length > 0) {
      const bytes = Buffer.byteLength(tail);
      const last = f === paths.length - 1;
      const reason = `torn tail: the last ${bytes} bytes are an unfinished record (a write cut short), not a changed one; every record before them is intact${last ? '. The daemon removes it at its next start and records that it did' : ''}`;
      return { ok: false, kind: 'torn', records, head: prev ?? GENESIS, file: path, line: lines.length + 1, bytes, reason };
    }
  }
  return { ok: true, records, head: prev ?? GENESIS, ...(continues ? { continues } : {}) };
}
