/** Checks on what a caller passes, made before a call is queued. Each failure is a typed error. */
import { isWellFormed } from './model/token-match.js';
import { isPkcs11Uri, keyOfUri, parsePkcs11Uri, URI_TYPES } from './model/pkcs11-uri.js';
import { Pkcs11SupervisorError } from './model/errors.js';
import { isMechanismName, KEY_TYPES, MECHANISM_NAMES, type KeyType, type MechanismName } from './model/mechanisms.js';
import { Secret } from './model/secret.js';
import type { Slot } from './slot.js';
import type { KeyRefConfig } from './config-schema.js';
import { KEY_USAGES, OBJECT_CLASSES, type KeySelector, type KeyUsage, type ObjectClass, type ObjectQuery, type SignatureFormat } from './model/protocol.js';

/** A caller's value as a message shows it: JSON where it can be, cut at `max`, and never a throw (a BigInt, a cycle, a hostile toJSON). */
export function shown(value: unknown, max = 100): string {
  if (typeof value === 'bigint') return `${value}n`;
  if (value === undefined || typeof value === 'symbol' || typeof value === 'function') return typeof value;
  try {
    const text = JSON.stringify(value) ?? typeof value;
    return text.length > max ? `${text.slice(0, max)}…` : text;
  } catch {
    return Object.prototype.toString.call(value);
  }
}

export function badInput(message: string, slot?: string): Pkcs11SupervisorError {
  return new Pkcs11SupervisorError('BAD_INPUT', message, { slot });
}

export function keySelector(slot: Slot, key: unknown): KeySelector {
  if (isPkcs11Uri(key)) return uriSelector(slot, key);
  if (typeof key === 'string') {
    const ref = Object.hasOwn(slot.config.keys, key) ? slot.config.keys[key] : undefined;
    if (!ref) {
      const known = Object.keys(slot.config.keys);
      throw new Pkcs11SupervisorError('KEY_NOT_FOUND', `slot "${slot.name}" has no key ref "${key}" (configured: ${known.join(', ') || 'none'})`, { slot: slot.name });
    }
    return refSelector(ref);
  }
  if (key && typeof key === 'object') {
    const { label, id } = key as { label?: unknown; id?: unknown };
    if (label !== undefined && (typeof label !== 'string' || label.length === 0)) throw badInput('key.label must be a non-empty string', slot.name);
    if (id !== undefined && (typeof id !== 'string' || !/^([0-9a-fA-F]{2})+$/.test(id))) throw badInput('key.id must be hex bytes, e.g. "01"', slot.name);
    if (label === undefined && id === undefined) throw badInput('key must name a ref, or { label } and/or { id }', slot.name);
    return { label: label as string | undefined, id: (id as string | undefined)?.toLowerCase() };
  }
  throw badInput('key must be a key ref (string) or { label, id }', slot.name);
}

/** A configured key ref as the token is asked for it. */
export function refSelector(ref: KeyRefConfig): KeySelector {
  const sel: KeySelector = { label: ref.label, id: ref.id?.toLowerCase() };
  if ('on' in ref && ref.on) sel.on = ref.on;
  return sel;
}

export function mechanism(name: unknown, slot: string): MechanismName {
  if (isMechanismName(name)) return name;
  throw new Pkcs11SupervisorError('MECHANISM_INVALID', `unknown mechanism ${shown(name)}; known: ${MECHANISM_NAMES.join(', ')}`, { slot });
}

export function bytes(value: unknown, what: string, slot: Slot): Uint8Array {
  if (!(value instanceof Uint8Array)) throw badInput(`${what} must be a Buffer or Uint8Array, got ${value === null ? 'null' : typeof value}`, slot.name);
  if (value.byteLength === 0) throw badInput(`${what} is empty`, slot.name);
  if (value.byteLength > slot.config.maxDataBytes) {
    throw badInput(`${what} is ${value.byteLength} bytes; slot "${slot.name}" accepts at most ${slot.config.maxDataBytes} (maxDataBytes). Hash large documents and sign with prehashed: true`, slot.name);
  }
  return value;
}

export function timeoutMs(value: unknown, slot: Slot): number {
  if (value === undefined) return slot.config.callTimeoutMs;
  // Under a millisecond no call can finish: that is a mistake, not a deadline.
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 1 || value > 2 ** 31 - 1) {
    throw badInput(`timeoutMs must be a number of milliseconds from 1 to 2147483647, got ${shown(value)}`, slot.name);
  }
  return value;
}

export function signal(value: unknown, slot: string): AbortSignal | undefined {
  if (value === undefined) return undefined;
  if (value instanceof AbortSignal) return value;
  throw badInput('signal must be an AbortSignal', slot);
}

export function pin(value: unknown, slot: string, field = 'pin'): Secret | undefined {
  if (value === undefined) return undefined;
  if (value instanceof Secret) return value;
  if (typeof value === 'string' && value.length > 0 && value.length <= 256) return new Secret(value);
  throw badInput(`${field} must be a string of 1 to 256 characters`, slot);
}

export function signatureFormat(value: unknown, slot: string): SignatureFormat {
  if (value === undefined || value === 'der') return 'der';
  if (value === 'raw') return 'raw';
  throw badInput(`signatureFormat must be "der" or "raw", got ${shown(value)}`, slot);
}

export function flag(value: unknown, what: string, slot: string): boolean {
  if (value === undefined) return false;
  if (typeof value === 'boolean') return value;
  throw badInput(`${what} must be a boolean`, slot);
}

export function count(value: unknown, what: string, min: number, max: number, slot: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) throw badInput(`${what} must be an integer from ${min} to ${max}`, slot);
  return value;
}

export function label(value: unknown, slot: string): string {
  if (typeof value !== 'string' || value.length === 0 || Buffer.byteLength(value) > 256) throw badInput('label must be a non-empty string of at most 256 bytes', slot);
  if (!isWellFormed(value)) throw badInput('label has a lone surrogate: the token would store it as U+FFFD, and it would never match again', slot);
  return value;
}

export function hexId(value: unknown, slot: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !/^([0-9a-fA-F]{2}){1,64}$/.test(value)) throw badInput('id must be hex bytes, e.g. "01"', slot);
  return value.toLowerCase();
}


export function objectQuery(value: unknown, slot: string): ObjectQuery {
  if (value === undefined) return {};
  if (!value || typeof value !== 'object') throw badInput('template must be an object', slot);
  const t = value as Record<string, unknown>;
  for (const k of Object.keys(t)) if (!['class', 'label', 'id', 'keyType'].includes(k)) throw badInput(`template has an unknown field "${k}" (class, label, id, keyType)`, slot);
  if (t.class !== undefined && !(OBJECT_CLASSES as readonly unknown[]).includes(t.class)) throw badInput(`template.class must be one of ${OBJECT_CLASSES.join(', ')}`, slot);
  if (t.keyType !== undefined && !(KEY_TYPES as readonly unknown[]).includes(t.keyType)) throw badInput(`template.keyType must be one of ${KEY_TYPES.join(', ')}`, slot);
  return {
    class: t.class as ObjectQuery['class'],
    label: t.label === undefined ? undefined : label(t.label, slot),
    id: hexId(t.id, slot),
    keyType: t.keyType as ObjectQuery['keyType'],
  };
}

/**
 * A key named by its PKCS#11 URI (pkcs11-uri.ts says what it may name). What it names of the
 * token, slot and library is checked by the session that looks the key up, against the token it
 * is on at that moment: a URI for another token is KEY_NOT_FOUND, never a key of this one, also
 * before the slot has first opened and after its token was swapped.
 */
function uriSelector(slot: Slot, uri: string): KeySelector {
  try {
    return keyOfUri(parsePkcs11Uri(uri));
  } catch (e) {
    throw badInput(`key is not a usable PKCS#11 URI: ${(e as Error).message}`, slot.name);
  }
}

/**
 * The object class a key URI's `type` names (`type=public`: the public key), or undefined. An
 * operation on a key decides the class it uses; one on objects of any class (destroying) takes
 * it, so a URI copied from one object names that object alone.
 */
export function uriObjectClass(key: unknown): ObjectClass | undefined {
  if (!isPkcs11Uri(key)) return undefined;
  const type = parsePkcs11Uri(key).path.type;
  return type !== undefined && Object.hasOwn(URI_TYPES, type) ? URI_TYPES[type as keyof typeof URI_TYPES] : undefined;
}

/** What a key pair is for (default: signing), within what its type can do. */
export function keyUsage(value: unknown, keyType: KeyType, slot: string): KeyUsage[] {
  if (value === undefined) return ['sign'];
  if (!Array.isArray(value) || value.length === 0 || !value.every((u) => (KEY_USAGES as readonly unknown[]).includes(u))) {
    throw badInput(`usage must be a non-empty list of ${KEY_USAGES.join(', ')}`, slot);
  }
  const can: Record<KeyType, readonly KeyUsage[]> = { RSA: ['sign', 'decrypt'], EC: ['sign', 'derive'], EC_EDWARDS: ['sign'], AES: [], GENERIC_SECRET: [] };
  const cannot = (value as KeyUsage[]).filter((u) => !can[keyType].includes(u));
  if (cannot.length > 0) throw badInput(`an ${keyType} key pair cannot be for ${cannot.join(', ')} (it can be for ${can[keyType].join(', ')})`, slot);
  return [...new Set(value as KeyUsage[])];
}
