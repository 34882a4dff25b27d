/**
 * Test support, not part of the package's API (index.ts does not export it): makes one worker
 * thread crash, exit or block like a hung native call. Refused unless the process runs with
 * PKCS11_SUPERVISOR_FAULTS=1.
 */
import { gateOf, type Pkcs11Supervisor } from './client/supervisor-client.js';
import { Pkcs11SupervisorError } from './model/errors.js';
import type { WorkerFault } from './model/protocol.js';
import { badInput } from './validate.js';

export async function injectWorkerFault(client: Pkcs11Supervisor, slotName: string, worker: number, fault: WorkerFault): Promise<void> {
  const slot = gateOf(client).slot(slotName);
  const w = slot.workers[worker];
  if (!w) throw badInput(`slot "${slot.name}" has no worker ${worker}`, slot.name);
  const reply = await w.runTask({ op: 'fault', fault }, Date.now() + 24 * 3600_000).catch(() => null);
  if (reply && !reply.ok) throw new Pkcs11SupervisorError('BAD_INPUT', reply.error.message, { slot: slot.name });
}
