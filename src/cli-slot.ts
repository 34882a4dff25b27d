/** The CLI's reset: an operator's reset, followed by a look at what came back. */
import type { Pkcs11Client } from './client/pkcs11-client.js';
import type { SessionInfo } from './model/protocol.js';
import { OPERATOR_RESET_GAP_MS } from './supervisor.js';

const AT_REST = new Set(['logged_in', 'so_logged_in', 'open', 'failed']);
/**
 * A reset asked for within OPERATOR_RESET_GAP_MS of the module's last runs at the end of it: a
 * slot seen at rest before then is the one from before the reset.
 */
const RESET_GAP_MS = OPERATOR_RESET_GAP_MS + 500;
const WAIT_MS = 30_000;

/**
 * Resets the slot, waits until it is at rest after the reset (logged in again, or open, or
 * failed), then probes it: the token's own answer, or the typed error that says why not.
 */
export async function resetSlot(client: Pkcs11Client, slot: string): Promise<SessionInfo> {
  await client.reset(slot);
  const since = Date.now();
  for (;;) {
    const state = (await client.status()).slots[slot]?.state;
    const waited = Date.now() - since;
    if (state === undefined || waited >= WAIT_MS || (waited >= RESET_GAP_MS && AT_REST.has(state))) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return client.probe({ slot });
}
