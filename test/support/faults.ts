/** Steering the fault-injecting module (test/fault-module) and reading its call counts. */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { configFor, type TokenDir } from './softhsm.js';

export const FAULT_MODULE = resolve('var/test/fault-pkcs11.so');

export class Faults {
  readonly dir: string;
  private gen = 0;

  constructor(td: TokenDir) {
    this.dir = join(td.dir, 'faults');
    mkdirSync(this.dir, { recursive: true });
  }

  /** Replaces every rule (and their progress) at once. */
  set(...rules: string[]): void {
    const tmp = join(this.dir, `control.${++this.gen}`);
    writeFileSync(tmp, `# ${this.gen}\n${rules.join('\n')}\n`);
    renameSync(tmp, join(this.dir, 'control'));
  }

  clear(): void {
    this.set();
  }

  counts(): Record<string, number> {
    try {
      return Object.fromEntries(
        readFileSync(join(this.dir, 'counts'), 'utf8')
          .trim()
          .split('\n')
          .map((l) => l.trim().split(/\s+/))
          .map(([k, v]) => [k!, Number(v)]),
      );
    } catch {
      return {};
    }
  }
}

/** Slots on the fault module (module name "fault"); `direct` slots go straight to SoftHSM2. */
export function faultConfig(td: TokenDir, faults: Faults, slots: Record<string, Record<string, unknown>>, direct: Record<string, Record<string, unknown>> = {}) {
  const base = configFor(td, { ...slots, ...direct });
  const env = { SOFTHSM2_CONF: td.conf, FAULT_PKCS11_DIR: faults.dir };
  for (const name of Object.keys(slots)) (base.slots[name] as Record<string, unknown>).module = 'fault';
  return { ...base, modules: { ...base.modules, soft: { ...base.modules.soft, env }, fault: { path: FAULT_MODULE, env } } };
}
