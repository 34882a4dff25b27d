/**
 * The remote client's half of `POST /v1/batch`: the data-plane calls its callers make in one
 * turn of the event loop are held until the turn ends (setImmediate) and sent together, as the
 * mailbox packs a slot's queued calls for its session thread. A lone call goes as its own route,
 * so one caller at a time sees no difference. Calls are grouped by slot (a batch is answered when
 * its slowest call is: a fast slot's calls must not wait for a slow one's) and by deadline (the
 * batch's header), and each gets its own answer: its result, or the problem document it would
 * have had alone.
 */
import { Pkcs11SupervisorError } from '../model/errors.js';
import { BATCH_PATH, MAX_BATCH_BYTES, type BatchableName } from './batch.js';

/**
 * Calls in one batch the client sends. Not all of a turn's calls in one: with two or more batches
 * in flight the daemon reads one while its token signs the other (one batch of 64 ECDSA calls left
 * the two waiting on each other: 0.55x the in-process rate, against 0.8x in batches of 32).
 */
const BATCH_CALLS = 32;

/** A daemon's answer to one call: the HTTP status it would have had alone, and its JSON body. */
export interface Answer {
  status: number;
  json: unknown;
}

type Post = (path: string, body: string, deadline: string | undefined) => Promise<Answer>;

interface Held {
  name: BatchableName;
  /** The call's request, as JSON. */
  body: string;
  resolve: (a: Answer) => void;
  reject: (e: unknown) => void;
}

export class CallBatcher {
  /** Held calls by slot and deadline header. */
  private held = new Map<string, { deadline: string | undefined; calls: Held[] }>();
  private scheduled = false;
  /** False once a daemon has answered that it has no batch route (an older version): every call then goes alone. */
  private supported = true;

  constructor(private readonly post: Post) {}

  add(name: BatchableName, slot: unknown, body: string, deadline: string | undefined): Promise<Answer> {
    if (!this.supported) return this.post(`/v1/${name}`, body, deadline);
    return new Promise((resolve, reject) => {
      const key = `${String(slot)}\0${deadline ?? ''}`;
      let group = this.held.get(key);
      if (!group) this.held.set(key, (group = { deadline, calls: [] }));
      group.calls.push({ name, body, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    const groups = this.held;
    this.held = new Map();
    for (const { deadline, calls } of groups.values()) {
      let batch: Held[] = [];
      let bytes = 0;
      for (const call of calls) {
        if (batch.length > 0 && (batch.length === BATCH_CALLS || bytes + call.body.length > MAX_BATCH_BYTES)) {
          this.send(batch, deadline);
          batch = [];
          bytes = 0;
        }
        batch.push(call);
        bytes += call.body.length + 32; // and its method's wrapping
      }
      this.send(batch, deadline);
    }
  }

  private send(batch: Held[], deadline: string | undefined): void {
    if (batch.length === 1) return this.alone(batch, deadline);
    const body = `{"calls":[${batch.map((c) => `{"method":"${c.name}","request":${c.body}}`).join(',')}]}`;
    this.post(BATCH_PATH, body, deadline).then(
      (answer) => this.answer(batch, deadline, answer),
      (e: unknown) => {
        for (const c of batch) c.reject(e);
      },
    );
  }

  private alone(calls: Held[], deadline: string | undefined): void {
    for (const c of calls) this.post(`/v1/${c.name}`, c.body, deadline).then(c.resolve, c.reject);
  }

  private answer(batch: Held[], deadline: string | undefined, { status, json }: Answer): void {
    const results = (json as { results?: unknown } | undefined)?.results;
    if (status === 200 && Array.isArray(results) && results.length === batch.length) {
      batch.forEach((call, i) => {
        const r = results[i] as { result?: unknown; problem?: { status?: unknown } } | null;
        if (r && typeof r === 'object' && 'problem' in r) call.resolve({ status: typeof r.problem?.status === 'number' ? r.problem.status : 500, json: r.problem });
        else call.resolve({ status: 200, json: r?.result });
      });
      return;
    }
    if (status === 404 && (json as { code?: unknown } | undefined)?.code === 'ROUTE_NOT_FOUND') {
      this.supported = false;
      return this.alone(batch, deadline);
    }
    // The batch as a whole was refused (its caller is not authenticated, the daemon is closing): so is each call.
    if (status !== 200) for (const c of batch) c.resolve({ status, json });
    else for (const c of batch) c.reject(new Pkcs11SupervisorError('INTERNAL', 'the daemon answered a batch with a document that is not the API\'s'));
  }
}
