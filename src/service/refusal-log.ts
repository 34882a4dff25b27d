/**
 * Audit records of refusals that come before any request (a failed TLS handshake, bytes the HTTP
 * parser cannot read), per client address: the first few each minute are written as they come,
 * the rest counted and written as one record when the minute is over (or the next refusal comes
 * after it). A client that retries a bad certificate in a loop, or a flood meant to fill the
 * disk, then costs one record a minute, and no refusal goes uncounted.
 */
import type { AuditEntry } from '../audit-record.js';
import type { ErrorCode } from '../model/errors.js';

/** What is refused: the records' `result`, and the words their detail starts with. */
export interface RefusalKind {
  result: ErrorCode;
  what: string;
}

const WINDOW_MS = 60_000;
const PER_WINDOW = 10;
/** Addresses tracked before the oldest windows are summarized and dropped. */
const MAX_ADDRESSES = 10_000;

interface Window {
  start: number;
  written: number;
  suppressed: number;
  last: string;
}

export class RefusalLog {
  private readonly windows = new Map<string, Window>();

  constructor(
    private readonly write: (entry: AuditEntry) => void,
    private readonly kind: RefusalKind,
  ) {}

  /** `principal`: who the connection is, where that is known before a request (the socket's, a client certificate's). */
  refused(peer: string, reason: string, now = Date.now(), principal?: string): void {
    const address = peer.replace(/:\d+$/, '');
    let w = this.windows.get(address);
    if (w && now - w.start >= WINDOW_MS) {
      this.summarize(address, w);
      w = undefined;
    }
    if (!w) {
      if (this.windows.size >= MAX_ADDRESSES) this.flush();
      w = { start: now, written: 0, suppressed: 0, last: reason };
      this.windows.set(address, w);
    }
    w.last = reason;
    if (w.written < PER_WINDOW) {
      w.written++;
      this.write({ event: 'denied', slot: '', result: this.kind.result, principal, peer, detail: `${this.kind.what}: ${reason}` });
    } else {
      w.suppressed++;
    }
  }

  /** Writes the pending summaries (at shutdown, or when too many addresses are tracked). */
  flush(): void {
    for (const [address, w] of this.windows) this.summarize(address, w);
  }

  private summarize(address: string, w: Window): void {
    this.windows.delete(address);
    if (w.suppressed === 0) return;
    this.write({ event: 'denied', slot: '', result: this.kind.result, peer: address, detail: `${this.kind.what}: ${w.suppressed} more refused in the minute from ${new Date(w.start).toISOString()} (last: ${w.last})` });
  }
}
