/** An audit record, its hash, and the check of a trail's chain (the `audit verify` command). */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';

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

/** Records are a few hundred bytes: a longer line is not one, and is never held in memory whole. */
export const MAX_RECORD_BYTES = 1 << 20;
const CHUNK_BYTES = 1 << 20;

type TrailLine = string | null | { tailBytes: number };

/**
 * A trail's complete lines, read a chunk at a time (a trail has no size limit; a string of it
 * would, at 512 MiB), each as text, or null for a line over MAX_RECORD_BYTES; and last, the
 * number of bytes after the last newline (an unfinished record).
 */
function* trailLines(path: string): Generator<TrailLine> {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK_BYTES);
    let parts: Buffer[] = [];
    let partBytes = 0;
    for (let n = readSync(fd, buf); n > 0; n = readSync(fd, buf)) {
      const chunk = buf.subarray(0, n);
      let start = 0;
      for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, start)) {
        const end = chunk.subarray(start, nl);
        if (partBytes + end.length > MAX_RECORD_BYTES) yield null;
        else yield (partBytes === 0 ? end : Buffer.concat([...parts, end])).toString('utf8');
        parts = [];
        partBytes = 0;
        start = nl + 1;
      }
      const rest = chunk.subarray(start);
      // The buffer is read into again: keep a copy of what the next chunk continues.
      if (partBytes + rest.length <= MAX_RECORD_BYTES) parts.push(Buffer.from(rest));
      else parts = [];
      partBytes += rest.length;
    }
    yield { tailBytes: partBytes };
  } finally {
    closeSync(fd);
  }
}

/** A line as a record; null if it is not JSON (or was too long to read). */
function parseRecord(text: string | null): AuditRecord | null {
  if (text === null) return null;
  try {
    return JSON.parse(text) as AuditRecord;
  } catch {
    return null;
  }
}

/** Whether a record with sequence number `seq` comes among the lines still to be read. */
function comesLater(lines: Iterable<TrailLine>, seq: number): boolean {
  for (const text of lines) if (typeof text !== 'object' && parseRecord(text)?.seq === seq) return true;
  return false;
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
    const lines = trailLines(path);
    let line = 0;
    for (const text of lines) {
      line++;
      if (typeof text === 'object' && text !== null) {
        if (text.tailBytes === 0) break;
        const bytes = text.tailBytes;
        const last = f === paths.length - 1;
        const reason = `torn tail: the last ${bytes} bytes are an unfinished record (a write cut short), not a changed one; every record before them is intact${last ? '. The daemon removes it at its next start and records that it did' : ''}`;
        return { ok: false, kind: 'torn', records, head: prev ?? GENESIS, file: path, line, bytes, reason };
      }
      const broken = (reason: string, at: number | null) => ({ ok: false as const, kind: 'broken' as const, file: path, line, seq: at, reason });
      const r = parseRecord(text);
      if (!r) return broken('not a JSON record', null);
      const { hash, ...body } = r;
      if (recordHash(body) !== hash) return broken('record was changed (its hash does not match its content)', r.seq);
      if (prev === null && r.prev !== GENESIS) {
        // The trail's first file here starts inside the chain: it was rotated from an earlier one.
        continues = r.prev;
      } else if (r.prev !== (prev ?? GENESIS)) {
        const later = r.seq <= seq || comesLater(lines, seq + 1);
        return broken(later ? `records are out of order (expected seq ${seq + 1} here)` : r.seq > seq + 1 ? `record(s) before it were removed (expected seq ${seq + 1})` : 'the chain is broken before this record', r.seq);
      } else if (r.seq !== seq + 1) {
        return broken(`sequence jumps from ${seq} to ${r.seq}`, r.seq);
      }
      prev = hash;
      seq = r.seq;
      records++;
    }
  }
  return { ok: true, records, head: prev ?? GENESIS, ...(continues ? { continues } : {}) };
}
