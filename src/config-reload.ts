/**
 * A new config for a running supervisor (SIGHUP): what can change without dropping a session
 * (key refs, policy, allow-lists, call deadlines, idle timeouts, queue limits, verify settings, log level) is applied in one synchronous step, between two turns of the event loop, so every call
 * sees either the old config or the new one, never a mix; calls already queued keep the
 * deadline they were given. Anything else (modules, slots, tokens, pools, PIN sources, input
 * limits, which size the listeners' bodies, the listeners, the audit trail) needs a restart: a config that changes it is refused whole, and
 * the old one stays.
 */
import { createHash } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import type { Config, SlotConfig } from './config-schema.js';

/** What a running slot can take from a new config. */
const RELOADABLE_SLOT_FIELDS = [
  'keys',
  'allowedMechanisms',
  'callTimeoutMs',
  'keyGenTimeoutMs',
  'hungCallGraceMs',
  'queueLimit',
  'softwareVerify',
  'keyCheckMs',
  'reauthentication',
  'idleTimeoutMs',
  'soIdleTimeoutMs',
] as const satisfies readonly (keyof SlotConfig)[];

/** What the whole config can take; the rest of it must stay as it is. */
const RELOADABLE_FIELDS = ['slots', 'allowedMechanisms', 'policy', 'log', 'sessionTimeoutMs'] as const satisfies readonly (keyof Config)[];

export interface ReloadIssue {
  path: string;
  message: string;
}

/** The changes `next` makes that need a restart; none: it can be applied. */
export function restartNeeded(current: Config, next: Config): ReloadIssue[] {
  const issues: ReloadIssue[] = [];
  const restart = (path: string) => issues.push({ path, message: 'changes only with a restart' });
  for (const key of new Set([...Object.keys(current), ...Object.keys(next)]) as Set<keyof Config>) {
    if ((RELOADABLE_FIELDS as readonly string[]).includes(key)) continue;
    if (!isDeepStrictEqual(current[key], next[key])) restart(key);
  }
  const names = new Set([...Object.keys(current.slots), ...Object.keys(next.slots)]);
  for (const name of names) {
    const a = current.slots[name];
    const b = next.slots[name];
    if (!a || !b) {
      issues.push({ path: `slots.${name}`, message: `${a ? 'removing' : 'adding'} a slot needs a restart` });
      continue;
    }
    for (const field of new Set([...Object.keys(a), ...Object.keys(b)]) as Set<keyof SlotConfig>) {
      if ((RELOADABLE_SLOT_FIELDS as readonly string[]).includes(field)) continue;
      if (!isDeepStrictEqual(a[field], b[field])) restart(`slots.${name}.${field}`);
    }
  }
  return issues;
}

/**
 * Applies `next` to `current` in place, so everything holding the config or a slot's config sees
 * the new values at once. Returns the slots whose key refs changed.
 */
export function applyConfig(current: Config, next: Config): string[] {
  const rekeyed: string[] = [];
  for (const [name, slot] of Object.entries(current.slots)) {
    const incoming = next.slots[name]!;
    if (!isDeepStrictEqual(slot.keys, incoming.keys)) rekeyed.push(name);
    for (const field of RELOADABLE_SLOT_FIELDS) (slot as Record<string, unknown>)[field] = incoming[field];
  }
  for (const field of RELOADABLE_FIELDS) if (field !== 'slots') (current as Record<string, unknown>)[field] = next[field];
  return rekeyed;
}

/** A short, stable name for a config's content (the metric's label, the reload's log line). */
export function configHash(config: Config): string {
  return createHash('sha256').update(JSON.stringify(config)).digest('hex').slice(0, 16);
}
