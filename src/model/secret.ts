import { inspect } from 'node:util';

/**
 * A PIN in transit. It prints as [REDACTED] however it is logged, stringified or inspected;
 * only the worker boundary calls `reveal()`.
 */
export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
  }
  toJSON(): string {
    return '[REDACTED]';
  }
  toString(): string {
    return '[REDACTED]';
  }
  [inspect.custom](): string {
    return 'Secret([REDACTED])';
  }
}
