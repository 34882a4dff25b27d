/**
 * One 'abort' listener per signal, however many calls share it: a listener per call made Node
 * warn (MaxListenersExceededWarning) once a caller passed one signal to more than ten calls.
 */
const abortWatchers = new WeakMap<AbortSignal, Set<() => void>>();

export function watchAbort(signal: AbortSignal, onAbort: () => void): void {
  let watchers = abortWatchers.get(signal);
  if (!watchers) {
    const all = new Set<() => void>();
    abortWatchers.set(signal, all);
    signal.addEventListener('abort', () => {
      abortWatchers.delete(signal);
      for (const fn of all) fn();
    }, { once: true });
    watchers = all;
  }
  watchers.add(onAbort);
}

export function unwatchAbort(signal: AbortSignal, onAbort: () => void): void {
  abortWatchers.get(signal)?.delete(onAbort);
}
