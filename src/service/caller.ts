/**
 * Who a service request comes from: the local socket's configured principal, the identity in
 * a verified client certificate, or the subject of a verified JWT; with the roles the policy's
 * `principals` map gives that identity (a JWT carries its own). Nothing the request body says
 * can change it.
 */
import type { TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import type { ApiConfig, Policy, Role } from '../config-schema.js';
import { ROLES } from '../config-schema.js';
import { Pkcs11SupervisorError } from '../model/errors.js';

export interface Caller {
  id: string;
  roles: Role[];
  /** Where the request came from, for the audit trail: `unix`, or the TLS peer's address and port. */
  peer: string;
}

type PrincipalFrom = NonNullable<ApiConfig['tls']>['principalFrom'];

const unauthenticated = (message: string) => new Pkcs11SupervisorError('UNAUTHENTICATED', message);

/** The entries of a certificate's subjectAltName as Node prints it: `URI:spiffe://…, DNS:"a,b"`. */
export function altNames(san: string | undefined): { type: string; value: string }[] {
  const out: { type: string; value: string }[] = [];
  for (const m of (san ?? '').matchAll(/([A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/g)) {
    const raw = m[2]!;
    out.push({ type: m[1]!.trim(), value: raw.startsWith('"') ? (JSON.parse(raw) as string) : raw });
  }
  return out;
}

/** A value in the form of a URI (`spiffe://…`, `https://…`): only a URI SAN may give one. */
const URI_FORM = /^[a-z][a-z0-9+.-]*:\/\//i;

/**
 * The principal a verified client certificate names: its URI SAN (a SPIFFE ID), else its DNS
 * SAN, else its subject CN, starting from `from`. A certificate with two URI SANs names no one
 * (an X.509-SVID has exactly one), and a DNS name or CN in the form of a URI is refused: a CA that
 * lets requesters choose their CN would otherwise issue `CN=spiffe://…/admin` as that identity.
 */
export function certificatePrincipal(socket: TLSSocket, from: PrincipalFrom): string {
  const cert = socket.getPeerCertificate();
  if (!socket.authorized || !cert || Object.keys(cert).length === 0) throw unauthenticated('a verified client certificate is required');
  const names = altNames(cert.subjectaltname);
  const order: PrincipalFrom[] = from === 'uri-san' ? ['uri-san', 'dns-san', 'cn'] : from === 'dns-san' ? ['dns-san', 'cn'] : ['cn'];
  const uris = names.filter((n) => n.type === 'URI');
  if (from === 'uri-san' && uris.length > 1) throw unauthenticated(`the client certificate has ${uris.length} URI SANs; a SPIFFE ID certificate has exactly one`);
  for (const source of order) {
    const found = source === 'uri-san' ? uris[0]?.value : source === 'dns-san' ? names.find((n) => n.type === 'DNS')?.value : [cert.subject?.CN].flat()[0];
    if (!found || found.length > 256) continue;
    if (source !== 'uri-san' && URI_FORM.test(found)) {
      throw unauthenticated(`the client certificate's ${source === 'cn' ? 'subject CN' : 'DNS SAN'} "${found}" has the form of a URI; a URI principal comes from a URI SAN only`);
    }
    return found;
  }
  throw unauthenticated(`the client certificate names no principal (${order.join(', then ')})`);
}

export function rolesOf(policy: Policy | undefined, id: string): Role[] {
  return policy?.principals[id] ?? [];
}

/** The roles a JWT claim lists (an array, or a space-separated string as in OAuth scopes); names that are not roles are ignored. */
export function rolesFromClaim(claim: unknown): Role[] {
  const names = Array.isArray(claim) ? claim : typeof claim === 'string' ? claim.split(' ') : [];
  return names.filter((r): r is Role => (ROLES as readonly unknown[]).includes(r));
}

export function peerOf(socket: Socket): string {
  return socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
}
