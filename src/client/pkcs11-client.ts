/**
 * The one client interface: what `startSupervisor` (in the process) and `connect` (over the
 * daemon's socket or mutual TLS) both return. The same methods, requests, results and errors;
 * an application moves between embedding and connecting by changing the line that makes its
 * client. `status` and `reset` answer at once in the process and after a round trip when
 * remote: `await` them either way.
 */
import type { AuditVerdict } from '../audit-record.js';
import type { PrincipalOptions } from './requests.js';
import type { Methods, SupervisorStatus } from './supervisor-client.js';

export interface Pkcs11Client extends Methods {
  status(options?: PrincipalOptions): SupervisorStatus | Promise<SupervisorStatus>;
  reset(slot: string, options?: PrincipalOptions): void | Promise<void>;
  verifyAudit(options?: PrincipalOptions): Promise<AuditVerdict>;
  close(): Promise<void>;
}
