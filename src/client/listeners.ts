/**
 * An application's event listeners, kept from the supervisor's own work. The events are emitted
 * from inside a call's completion, a state change or a login: a listener that threw there made
 * signed calls reject with its error and crashed the process from inside the slot machine. A
 * listener's failure is logged, and the call, the slot and the other listeners go on.
 */
import type { Logger } from 'pino';
import type { SupervisorEmitter, SupervisorEvents } from '../events.js';

type Event = keyof SupervisorEvents;
type Listener<E extends Event> = (...args: SupervisorEvents[E]) => void;

/**
 * Registers `listener` behind a guard. The guard carries the listener as `.listener`, the
 * property EventEmitter's own `once` wrappers use: `off(event, listener)` finds it there, so
 * nothing here keeps a table of who wraps whom.
 */
export function addListener<E extends Event>(events: SupervisorEmitter, log: Logger, event: E, listener: Listener<E>, once: boolean): void {
  if (typeof listener !== 'function') throw new TypeError(`the listener of "${event}" must be a function`);
  const guard = Object.assign(
    (...args: SupervisorEvents[E]) => {
      if (once) events.off(event, guard as never);
      try {
        listener(...args);
      } catch (e) {
        log.error({ event, err: e }, 'an event listener threw; the supervisor goes on');
      }
    },
    { listener },
  );
  events.on(event, guard as never);
}
