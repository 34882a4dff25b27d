/**
 * Who may do what. Roles are fixed (the table below is the contract the README documents);
 * the config's `policy` block says which roles a slot admits and, per role, which key refs.
 * Without a policy block every caller may do everything, as for one trusted application.
 */
import { ROLES, type Policy, type Role } from './config-schema.js';
import { badInput, shown } from './validate.js';

/**
 * Every operation of the client API by its one name: the method, the policy operation, the
 * audit event and the metrics' `op` label. `soLogin` is `login` with `userType: 'so'`.
 */
export const OPERATIONS = [
  'sign',
  'verify',
  'encrypt',
  'decrypt',
  'mac',
  'verifyMac',
  'deriveKey',
  'wrapKey',
  'unwrapKey',
  'generateSecretKey',
  'getPublicKey',
  'getCertificate',
  'generateRandom',
  'findObjects',
  'findObjectsPage',
  'probe',
  'generateKeyPair',
  'importKeyPair',
  'importCertificate',
  'destroyObject',
  'login',
  'logout',
  'soLogin',
  'initPin',
  'setPin',
  'reset',
  'status',
  'verifyAudit',
] as const;

export type Operation = (typeof OPERATIONS)[number];

export interface Principal {
  id: string;
  roles: readonly Role[];
  /** Where the caller is, as the service API saw it (for the audit trail). */
  peer?: string;
}

const SERVICE: Operation[] = ['sign', 'verify', 'encrypt', 'decrypt', 'mac', 'verifyMac', 'deriveKey', 'getPublicKey', 'getCertificate', 'generateRandom'];
const OPERATOR: Operation[] = [
  ...SERVICE,
  'findObjects',
  'findObjectsPage',
  'probe',
  'generateKeyPair',
  'generateSecretKey',
  'wrapKey',
  'unwrapKey',
  'importKeyPair',
  'importCertificate',
  'login',
  'logout',
  'status',
];

/** The roles' operations: the contract the README documents. */
export const ROLE_OPERATIONS: Record<Role, ReadonlySet<Operation>> = {
  service: new Set(SERVICE),
  operator: new Set(OPERATOR),
  administrator: new Set([...OPERATOR, 'destroyObject', 'soLogin', 'initPin', 'setPin', 'reset', 'verifyAudit']),
  auditor: new Set(['status', 'findObjects', 'findObjectsPage', 'probe', 'verifyAudit']),
};

/** Operations on one key: a grant that lists keys allows them on those key refs only. */
const KEY_SCOPED: ReadonlySet<Operation> = new Set(['sign', 'verify', 'encrypt', 'decrypt', 'mac', 'verifyMac', 'deriveKey', 'wrapKey', 'unwrapKey', 'getPublicKey', 'getCertificate', 'destroyObject']);

export class AccessPolicy {
  /** `current` returns the policy in force: a config reload may replace it. */
  constructor(private readonly current: () => Policy | undefined) {}

  private get policy(): Policy | undefined {
    return this.current();
  }

  get enforced(): boolean {
    return this.policy !== undefined;
  }

  /** Why the principal may not do `op` on the slot (with this key), or null when it may. */
  denial(principal: Principal | undefined, slot: string, op: Operation, key?: unknown): string | null {
    if (!this.policy) return null;
    if (!principal) return `a policy is configured: ${op} on slot "${slot}" needs a caller principal`;
    const grants = this.policy.slots[slot] ?? {};
    for (const role of principal.roles) {
      const grant = grants[role];
      if (!grant || !ROLE_OPERATIONS[role].has(op)) continue;
      if (!KEY_SCOPED.has(op) || !grant.keys || (typeof key === 'string' && grant.keys.includes(key))) return null;
    }
    const roles = principal.roles.length > 0 ? principal.roles.join(', ') : 'no role';
    const keyPart = KEY_SCOPED.has(op) && key !== undefined ? ` with key ${shown(key)}` : '';
    return `principal "${principal.id}" (${roles}) may not ${op} on slot "${slot}"${keyPart}`;
  }

  /** Slots on which the principal may do `op` (every slot without a policy). */
  slotsAllowing(principal: Principal | undefined, slots: Iterable<string>, op: Operation): string[] {
    return [...slots].filter((s) => this.denial(principal, s, op) === null);
  }
}

/** A caller principal from the API: a bare id (no roles) or `{ id, roles }`. */
export function parsePrincipal(value: unknown, slot?: string): Principal | undefined {
  if (value === undefined) return undefined;
  const id = typeof value === 'string' ? value : value && typeof value === 'object' ? (value as { id?: unknown }).id : undefined;
  if (typeof id !== 'string' || id.length === 0 || id.length > 256) throw badInput('principal must be an id (a non-empty string of at most 256 characters) or { id, roles }', slot);
  if (typeof value === 'string') return { id, roles: [] };
  const roles = (value as { roles?: unknown }).roles ?? [];
  if (!Array.isArray(roles) || !roles.every((r) => (ROLES as readonly unknown[]).includes(r))) {
    throw badInput(`principal.roles must be a list of ${ROLES.join(', ')}`, slot);
  }
  const peer = (value as { peer?: unknown }).peer;
  return typeof peer === 'string' ? { id, roles: roles as Role[], peer } : { id, roles: roles as Role[] };
}
