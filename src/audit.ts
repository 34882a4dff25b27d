/**
 * The audit trail, as HSMs keep one: an append-only JSON-lines file of logins, logouts, key
 * changes and every sign and verify. Each record carries the SHA-256 of the previous one, so a
 * changed, removed or reordered record breaks the chain there (audit-record.ts checks it).
 *
 * Two modes. `batched`: records are written and fsynced every flushMs, off the call path.
 * `durable`: a call's result is returned only once its record is on disk; the records of the
 * calls that wait together share one write and one fsync (group commit). Either way a failed
 * write is never a process exit: the records stay queued, in order, and are written again; the
 * trail reports itself unhealthy (not ready, a metric, a log line) until a write succeeds, and
 * in durable mode, or with failClosed, audited calls are refused (AUDIT_UNAVAILABLE) meanwhile.
 * A write cut short is cut back off the file, so the chain never holds half a record.
 *
 * What a hash chain cannot show by itself: records cut off the end. Ship the `hash` of the
 * last record somewhere else (the daemon logs it at every flush) to catch truncation.
 */
import { closeSync, constants, fdatasync, fstatSync, ftruncateSync, openSync, readdirSync, readSync, renameSync, write } from 'node:fs';
import { basename, dirname } from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { GENESIS, MAX_RECORD_BYTES, recordHash, type AuditEntry, type AuditRecord } from './audit-record.js';
import { fieldRefused, Pkcs11SupervisorError } from './model/errors.js';
import { lockAuditTrail, type AuditLock } from './audit-lock.js';

export type { AuditEntry, AuditRecord, AuditVerdict } from './audit-record.js';
export { verifyAuditFile, verifyAuditFiles, recordHash } from './audit-record.js';

const writeAt = promisify(write);
const fsyncFd = promisify(fdatasync);

export interface AuditOptions {
  flushMs: number;
  /** A call's result only once its record is durable. */
  durable: boolean;
  /** Refuse audited calls while the trail cannot be written (always so when durable). */
  failClosed: boolean;
  /** Past this size the file is renamed to `<path>.<n>` and a new one continues the chain. */
  maxBytes?: number | undefined;
  /** Records waiting in memory for a disk with room, past which audited calls are refused even in batched mode. */
  maxQueuedBytes?: number;
}

export interface AuditHealth {
  path: string;
  healthy: boolean;
  /** Records not yet on disk. */
  pending: number;
  error: string | null;
}

interface Waiter {
  resolve(): void;
  reject(e: Error): void;
}

export class AuditLog {
  private fd: number;
  private readonly lock: AuditLock;
  private seq = 0;
  private prev = GENESIS;
  /** Bytes of the file that hold whole, fsynced records: a failed write is cut back to here. */
  private size: number;
  private pending: string[] = [];
  /** Of the records not on disk yet: those queued and those being written. */
  private queuedBytes = 0;
  private waiters: Waiter[] = [];
  private writing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private failure: Error | null = null;
  /** Told of every failed write (the metrics count them). */
  onWriteError: ((e: Error) => void) | null = null;

  constructor(
    readonly path: string,
    private readonly log: Logger,
    private readonly options: AuditOptions = { flushMs: 200, durable: false, failClosed: false },
  ) {
    this.lock = lockAuditTrail(path, (message) => this.log.warn({ audit: path }, message));
    let repaired: number;
    try {
      this.fd = openSync(path, 'a+', 0o600);
      repaired = this.continueChain(); // closes the file if it refuses it
    } catch (e) {
      this.lock.release();
      throw e;
    }
    if (options.durable) {
      closeSync(this.fd);
      this.fd = this.openForWriting();
    }
    this.size = fstatSync(this.fd).size;
    if (repaired > 0) {
      this.log.warn({ audit: path, bytes: repaired }, 'audit trail: removed a torn tail (an interrupted write) at start');
      this.append({ event: 'auditRepaired', slot: '', result: 'ok', detail: `removed a torn tail of ${repaired} bytes (an interrupted write) at start` });
    }
  }

  /**
   * In durable mode each write returns once it is on disk (O_DSYNC): one trip to the thread
   * pool per group of records, where a write and then an fdatasync took two.
   */
  private openForWriting(): number {
    if (!this.options.durable) return openSync(this.path, 'a+', 0o600);
    return openSync(this.path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC, 0o600);
  }

  /** Renames the full file to the next `<path>.<n>` and continues the chain in a new one. */
  private rotate(): void {
    const dir = dirname(this.path);
    const base = basename(this.path);
    const taken = readdirSync(dir).flatMap((f) => (f.startsWith(`${base}.`) && /^\d+$/.test(f.slice(base.length + 1)) ? [Number(f.slice(base.length + 1))] : []));
    const rotated = `${this.path}.${Math.max(0, ...taken) + 1}`;
    closeSync(this.fd);
    renameSync(this.path, rotated);
    this.fd = this.openForWriting();
    this.size = 0;
    this.log.info({ audit: this.path, rotated, seq: this.seq, head: this.prev }, 'audit trail rotated; the chain continues in the new file');
  }

  /**
   * Takes the chain up where the file ends; an unfinished last record is cut off (returns its
   * bytes). Reads the end of the file only: a trail can be larger than any string.
   */
  private continueChain(): number {
    const size = fstatSync(this.fd).size;
    const lastNewline = newlineBefore(this.fd, size);
    if (lastNewline >= 0) {
      const start = newlineBefore(this.fd, lastNewline) + 1;
      let r: AuditRecord;
      try {
        if (lastNewline - start > MAX_RECORD_BYTES) throw new Error(`a line of ${lastNewline - start} bytes`);
        const last = Buffer.alloc(lastNewline - start);
        readSync(this.fd, last, 0, last.length, start);
        r = JSON.parse(last.toString('utf8')) as AuditRecord;
      } catch (e) {
        closeSync(this.fd);
        throw fieldRefused('audit.path', `the last complete record of ${this.path} is not JSON (${(e as Error).message}): the trail was changed; check it with "audit verify" and move it aside`);
      }
      this.seq = r.seq;
      this.prev = r.hash;
    }
    const torn = size - (lastNewline + 1);
    if (torn > 0) ftruncateSync(this.fd, lastNewline + 1);
    return torn;
  }

  get health(): AuditHealth {
    return { path: this.path, healthy: this.failure === null, pending: this.pending.length, error: this.failure?.message ?? null };
  }

  /**
   * Refuses an audited call up front while the trail cannot be written, if the mode says so; in
   * batched mode too once its records would hold more memory than maxQueuedBytes: a full disk
   * that lasts must cost calls, not the process (and with it every record still queued).
   */
  checkWritable(slot: string): void {
    if (!this.failure) return;
    const full = this.queuedBytes >= (this.options.maxQueuedBytes ?? Infinity);
    if (!(this.options.durable || this.options.failClosed || full)) return;
    const waiting = full ? ` and ${this.pending.length} records wait in memory already` : '';
    throw new Pkcs11SupervisorError('AUDIT_UNAVAILABLE', `the audit trail ${this.path} cannot be written (${this.failure.message})${waiting}; audited calls are refused until it can`, { slot });
  }

  /** Adds a record, to be written with the next batch (or group) of records. */
  append(entry: AuditEntry): void {
    this.commit(entry)?.catch(() => undefined); // a failed write is logged, counted and retried in kick()
  }

  /**
   * Adds a record. In durable mode the promise resolves once it is on disk and rejects with
   * AUDIT_UNAVAILABLE if the write failed (the record stays queued and is written later); in
   * batched mode there is nothing to wait for.
   */
  commit(entry: AuditEntry): Promise<void> | undefined {
    if (this.fd < 0) {
      this.log.warn({ audit: this.path, event: entry.event, slot: entry.slot }, 'audit record after the trail was closed; not written');
      return undefined;
    }
    const body = { seq: ++this.seq, time: new Date().toISOString(), prev: this.prev, ...entry };
    const hash = recordHash(body);
    this.prev = hash;
    const line = JSON.stringify({ ...body, hash });
    this.pending.push(line);
    this.queuedBytes += line.length + 1;
    if (!this.options.durable) {
      this.timer ??= setTimeout(() => this.kick(), this.options.flushMs);
      return undefined;
    }
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.kick();
    });
  }

  /** Starts a write of everything queued, unless one is under way: what queues meanwhile goes in the next. */
  private kick(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.writing || this.pending.length === 0 || this.fd < 0) return;
    const lines = this.pending;
    const waiters = this.waiters;

    this.pending = [];
    this.waiters = [];
    this.writing = this.writeOut(lines).then(
      (written) => {
        this.queuedBytes -= written;
        if (this.failure) this.log.info({ audit: this.path }, 'audit trail writable again');
        this.failure = null;
        if (this.options.maxBytes && this.size >= this.options.maxBytes) {
          try {
            this.rotate();
          } catch (e) {
            // The records are written; the file just grows on until a rotation succeeds.
            this.log.error({ audit: this.path, err: (e as Error).message }, 'audit trail rotation failed');
          }
        }
        for (const w of waiters) w.resolve();
        this.log.debug({ audit: this.path, seq: this.seq, head: this.prev }, 'audit flushed');
      },
      (e: Error) => {
        // Nothing is lost: the records go back to the front of the queue, in order.
        this.pending = [...lines, ...this.pending];
        this.failure = e;
        this.onWriteError?.(e);
        this.log.error({ audit: this.path, err: e.message, pending: this.pending.length }, 'audit trail write failed; retrying');
        const refused = new Pkcs11SupervisorError('AUDIT_UNAVAILABLE', `the audit record could not be written to ${this.path}: ${e.message}`);
        for (const w of waiters) w.reject(refused);
      },
    );
    void this.writing.finally(() => {
      this.writing = null;
      if (this.pending.length === 0 || this.fd < 0) return;
      // After a failure, wait before the next try; otherwise go on with what queued meanwhile.
      if (this.failure) this.timer ??= setTimeout(() => this.kick(), Math.max(this.options.flushMs, 1000));
      else if (this.options.durable) this.kick();
      else this.timer ??= setTimeout(() => this.kick(), this.options.flushMs);
    });
  }

  /** Writes at the end of the whole records, through short writes, then fsyncs; a failure is cut back off. */
  private async writeOut(lines: string[]): Promise<number> {
    const text = `${lines.join('\n')}\n`;
    const buf = Buffer.from(text);
    try {
      for (let done = 0; done < buf.length; ) {
        const { bytesWritten } = await writeAt(this.fd, buf, done, buf.length - done, this.size + done);
        if (bytesWritten === 0) throw new Error('the write made no progress');
        done += bytesWritten;
      }
      if (!this.options.durable) await fsyncFd(this.fd);
      this.size += buf.length;
      return text.length;
    } catch (e) {
      try {
        ftruncateSync(this.fd, this.size);
      } catch {
        // The file stays longer than its whole records; the next write overwrites the rest.
      }
      throw e;
    }
  }

  /** Writes what is queued; waits for a write under way. Rejects if the trail cannot be written. */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
    if (this.pending.length === 0) return;
    this.kick();
    await this.writing;
    if (this.failure) throw this.failure;
  }

  /** Idempotent: a second close (or a close racing a signal handler's) finds nothing to do. */
  async close(): Promise<void> {
    if (this.fd < 0) return;
    await this.flush().catch((e: Error) => this.spill(e));
    this.abandon();
  }

  /**
   * The records a trail that cannot be written still holds at close (a disk full as the daemon
   * stops, as when Kubernetes evicts a pod for disk pressure) go to stderr, one line each as in
   * the file: appended to the trail before the next start, they complete its chain.
   */
  private spill(e: Error): void {
    const count = this.pending.length;
    this.log.error({ audit: this.path, err: e.message, records: count }, `audit trail could not be written at close: its last ${count} records follow on stderr (lines starting {"seq":); append them to the trail before the daemon starts again`);
    try {
      process.stderr.write(this.pending.map((line) => `${line}\n`).join(''));
    } catch {
      // stderr is gone too: nothing is left to write them to
    }
    this.pending = [];
  }

  /** Closes the file and frees the trail for the next writer, writing nothing more (close() writes first; a supervisor that could not be made has nothing). */
  abandon(): void {
    if (this.fd < 0) return;
    closeSync(this.fd);
    this.fd = -1;
    this.lock.release();
  }
}

/** Where the last newline before byte `end` of the file is (-1: none), read backwards a chunk at a time. */
function newlineBefore(fd: number, end: number): number {
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (let to = end; to > 0; ) {
    const from = Math.max(0, to - buf.length);
    const n = readSync(fd, buf, 0, to - from, from);
    const at = buf.subarray(0, n).lastIndexOf(10);
    if (at !== -1) return from + at;
    to = from;
  }
  return -1;
}
