/**
 * The audit trail, as HSMs keep one: an append-only JSON-lines file of logins, logouts, key
 * generation/import/destruction and every sign and verify. Each record carries the SHA-256
 * of the previous one, so a changed, removed or reordered record breaks the chain at that
 * point. Records are written and fsynced in batches off the call path: a call pays for one
 * hash of its data and one array push.
 *
 * What a hash chain cannot show by itself: records cut off the end. Ship the `hash` of the
 * last record somewhere else (the daemon logs it at every flush) to catch truncation.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import type { Logger } from 'pino';

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

const GENESIS = '0'.repeat(64);

/** The record's hash covers every field but `hash`, in a fixed order. */
export function recordHash(r: Omit<AuditRecord, 'hash'>): string {
  const canonical = JSON.stringify([r.seq, r.time, r.prev, r.event, r.slot, r.key ?? null, r.mechanism ?? null, r.dataSha256 ?? null, r.result, r.principal ?? null, r.detail ?? null]);
  return createHash('sha256').update(canonical).digest('hex');
}

export class AuditLog {
  private fd: number;
  private seq = 0;
  private prev = GENESIS;
  private pending: string[] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(
    readonly path: string,
    private readonly log: Logger,
    private readonly flushMs = 200,
  ) {
    // Continue the chain of an existing trail.
    if (existsSync(path)) {
      const lines = readFileSync(path, 'utf8').split('\n').filter(Boolean);
      const last = lines.at(-1);
      if (last) {
        const r = JSON.parse(last) as AuditRecord;
        this.seq = r.seq;
        this.prev = r.hash;
      }
    }
    this.fd = openSync(path, 'a', 0o600);
  }

  append(entry: AuditEntry): void {
    if (this.fd < 0) {
      this.log.warn({ audit: this.path, event: entry.event, slot: entry.slot }, 'audit record after the trail was closed; not written');
      return;
    }
    const body = { seq: ++this.seq, time: new Date().toISOString(), prev: this.prev, ...entry };
    const hash = recordHash(body);
    this.prev = hash;
    this.pending.push(JSON.stringify({ ...body, hash }));
    this.timer ??= setTimeout(() => this.flush(), this.flushMs);
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.pending.length === 0) return;
    const text = this.pending.join('\n') + '\n';
    this.pending = [];
    writeSync(this.fd, text);
    fsyncSync(this.fd);
    this.log.debug({ audit: this.path, seq: this.seq, head: this.prev }, 'audit flushed');
  }

  /** Idempotent: a second close (or a close racing a signal handler's) finds nothing to do. */
  close(): void {
    if (this.fd < 0) return;
    this.flush();
    closeSync(this.fd);
    this.fd = -1;
  }
}

export type AuditVerdict = { ok: true; records: number; head: string } | { ok: false; line: number; seq: number | null; reason: string };

/** Walks the chain; the first record that does not follow from the one before is reported. */
export function verifyAuditFile(path: string): AuditVerdict {
  const lines = readFileSync(path, 'utf8').split('\n');
  if (lines.at(-1) === '') lines.pop();
  let prev = GENESIS;
  let seq = 0;
  for (let i = 0; i < lines.length; i++) {
    let r: AuditRecord;
    try {
      r = JSON.parse(lines[i]!) as AuditRecord;
    } catch {
      return { ok: false, line: i + 1, seq: null, reason: 'not a JSON record' };
    }
    const { hash, ...body } = r;
    if (recordHash(body) !== hash) return { ok: false, line: i + 1, seq: r.seq, reason: 'record was changed (its hash does not match its content)' };
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
      return { ok: false, line: i + 1, seq: r.seq, reason };
    }
    if (r.seq !== seq + 1) return { ok: false, line: i + 1, seq: r.seq, reason: `sequence jumps from ${seq} to ${r.seq}` };
    prev = hash;
    seq = r.seq;
  }
  return { ok: true, records: lines.length, head: prev };
}
