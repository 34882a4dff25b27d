/**
 * Turns per slot for the calls that create objects under a label and id they check are free
 * (generation, import, unwrap): one at a time, so two sessions cannot both find a name free and
 * make it ambiguous. A call waiting for its turn keeps its deadline and its signal.
 */
import { Pkcs11SupervisorError } from '../model/errors.js';
import { unwatchAbort, watchAbort } from '../abort-watch.js';

export interface Turn {
  /** Resolves when the calls before this one are done, with the milliseconds that took; TIMEOUT or ABORTED if the call's deadline or signal comes first. */
  waited(timeoutMs: number, signal: AbortSignal | undefined): Promise<number>;
  /** The call is over (run, refused or given up): the next one may go once those before it are done too. */
  done(): void;
}

export class NamingTurns {
  /** Per slot, the last turn taken. */
  private readonly last = new Map<string, Promise<void>>();

  take(slot: string): Turn {
    const previous = this.last.get(slot) ?? Promise.resolve();
    let done!: () => void;
    const mine = new Promise<void>((r) => (done = r));
    const turn = previous.then(() => mine);
    this.last.set(slot, turn);
    // Forgotten once every call before it and it itself are done: a call that gave up waiting
    // is done at once, but the ones after it still wait for those before it.
    void turn.then(() => {
      if (this.last.get(slot) === turn) this.last.delete(slot);
    });
    return { waited: (timeoutMs, signal) => waitFor(previous, timeoutMs, signal, slot), done };
  }
}

function waitFor(previous: Promise<void>, timeoutMs: number, signal: AbortSignal | undefined, slot: string): Promise<number> {
  const from = Date.now();
  return new Promise<number>((resolve, reject) => {
    const end = () => {
      clearTimeout(timer);
      if (signal) unwatchAbort(signal, aborted);
    };
    const stop = (e: Pkcs11SupervisorError) => {
      end();
      reject(e);
    };
    const aborted = () => stop(new Pkcs11SupervisorError('ABORTED', "the call was aborted while it waited for the slot's key creation before it", { slot }));
    const timer = setTimeout(() => stop(new Pkcs11SupervisorError('TIMEOUT', `the call waited ${timeoutMs} ms for the slot's key creation before it, and never reached the token`, { slot })), timeoutMs);
    if (signal?.aborted) return aborted();
    // One listener per signal, however many calls share it (abort-watch.ts).
    if (signal) watchAbort(signal, aborted);
    void previous.then(() => {
      end();
      resolve(Date.now() - from);
    });
  });
}
