/**
 * An application's event listeners, kept from the supervisor's own work. The events are emitted
 * from inside a call's completion, a state change or a login: a listener that threw there made
 * signed calls reject with its error and crashed the process from inside the slot machine. A
 * listener's failure is logged, and the call, the slot and the other listeners go on.
 */
import type { Logger } from 'pino';
import type { SupervisorEmitter, SupervisorEvents } from '../events.js';

type Event = keyof SupervisorEvents;
type Listener<E extends Event = Event> = (...args: SupervisorEvents[E]) => void;

/** Per emitter: each event's listeners and the guarded wrappers registered for them (in order, for `off`). */
const registered = new WeakMap<SupervisorEmitter, Map<Event, Map<Listener, Listener[]>>>();

function wrappersOf(events: SupervisorEmitter, event: Event): Map<Listener, Listener[]> {
  let byEvent = registered.get(events);
  if (!byEvent) registered.set(events, (byEvent = new Map()));
  let byListener = byEvent.get(event);
  if (!byListener) byEvent.set(event, (byListener = new Map()));
  return byListener;
}

function forget(events: SupervisorEmitter, event: Event, listener: Listener, wrapper: Listener): void {
  const wrappers = wrappersOf(events, event);
  const list = wrappers.get(listener) ?? [];
  const at = list.lastIndexOf(wrapper);
  if (at >= 0) list.splice(at, 1);
  if (list.length === 0) wrappers.delete(listener);
}

export function addListener<E extends Event>(events: SupervisorEmitter, log: Logger, event: E, listener: Listener<E>, once: boolean): void {
  if (typeof listener !== 'function') throw new TypeError(`the listener of "${event}" must be a function`);
  const wrapper: Listener<E> = (...args) => {
    if (once) forget(events, event, listener as Listener, wrapper as Listener);
    try {
      listener(...args);
    } catch (e) {
      log.error({ event, err: e }, 'an event listener threw; the supervisor goes on');
    }
  };
  const wrappers = wrappersOf(events, event);
  wrappers.set(listener as Listener, [...(wrappers.get(listener as Listener) ?? []), wrapper as Listener]);
  if (once) events.once(event, wrapper as never);
  else events.on(event, wrapper as never);
}

/** Removes the listener's most recent registration, as EventEmitter's `off` does. */
export function removeListener<E extends Event>(events: SupervisorEmitter, event: E, listener: Listener<E>): void {
  const wrapper = wrappersOf(events, event).get(listener as Listener)?.at(-1);
  if (!wrapper) return;
  forget(events, event, listener as Listener, wrapper);
  events.off(event, wrapper as never);
}
