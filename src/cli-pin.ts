/**
 * The CLI's login and PIN commands. Every PIN comes from an environment variable the command
 * names (`--pin-env VAR`) or a hidden prompt, never from an argument: arguments end up in shell
 * history and `ps`. Over the daemon's socket they act on the daemon's sessions, so a Security
 * Officer's session holds the token only for the length of the command.
 */
import type { Pkcs11Client } from './client/pkcs11-client.js';
import { promptHidden } from './cli-io.js';
import { Usage } from './cli-usage.js';
import { pinText } from './file-text.js';

export const PIN_COMMANDS = ['login', 'logout', 'pin init', 'pin change'];

export interface PinCommandOptions {
  slot: string;
  /** pin change: the Security Officer's PIN, not the user's. */
  so: boolean;
  pinEnv: string | undefined;
  soPinEnv: string | undefined;
  newPinEnv: string | undefined;
}

/** A PIN from the variable `--option` names, else from a hidden prompt (twice for a new one). */
async function pinFrom(envName: string | undefined, option: string, what: string, confirm = false): Promise<string> {
  if (envName !== undefined) {
    const value = pinText(process.env[envName] ?? '');
    if (!value) throw new Usage(`--${option} ${envName}: the variable ${envName} is not set`);
    return value;
  }
  const value = await promptHidden(`${what}: `);
  if (value === null) throw new Usage(`the ${what} comes from --${option} VAR or a terminal prompt`);
  if (confirm && (await promptHidden(`${what} again: `)) !== value) throw new Usage(`the two entries of the ${what} differ`);
  return value;
}

export async function pinCommand(client: Pkcs11Client, command: string, o: PinCommandOptions): Promise<string> {
  const { slot } = o;
  switch (command) {
    case 'login':
      await client.login({ slot, pin: await pinFrom(o.pinEnv, 'pin-env', `user PIN of slot "${slot}"`) });
      return `slot "${slot}" is logged in`;
    case 'logout':
      await client.logout({ slot });
      return `slot "${slot}" is logged out`;
    case 'pin init': {
      const soPin = await pinFrom(o.soPinEnv, 'so-pin-env', `Security Officer PIN of slot "${slot}"`);
      const newPin = await pinFrom(o.newPinEnv, 'new-pin-env', 'new user PIN', true);
      await asSecurityOfficer(client, slot, soPin, () => client.initPin({ slot, newPin }));
      return `the user PIN of slot "${slot}" is set; put it in the slot's PIN source before the daemon restarts`;
    }
    case 'pin change': {
      const who = o.so ? 'Security Officer' : 'user';
      const oldPin = await pinFrom(o.so ? o.soPinEnv : o.pinEnv, o.so ? 'so-pin-env' : 'pin-env', `current ${who} PIN of slot "${slot}"`);
      const newPin = await pinFrom(o.newPinEnv, 'new-pin-env', `new ${who} PIN`, true);
      if (o.so) {
        await asSecurityOfficer(client, slot, oldPin, () => client.setPin({ slot, oldPin, newPin }));
        return `the Security Officer PIN of slot "${slot}" is changed`;
      }
      await client.setPin({ slot, oldPin, newPin, pin: oldPin }); // logs in with it if the slot is not (an idle logout under "fail", --direct without a source)
      return `the user PIN of slot "${slot}" is changed; put it in the slot's PIN source before the daemon restarts`;
    }
  }
  throw new Usage(`unknown command ${command}`);
}

/** Logs the Security Officer in for one operation and out again, whatever the operation's outcome. */
async function asSecurityOfficer(client: Pkcs11Client, slot: string, soPin: string, operation: () => Promise<void>): Promise<void> {
  await client.login(slot, soPin, { userType: 'so' });
  try {
    await operation();
  } catch (e) {
    // The operation's error is the one to report; were the logout to fail too, soIdleTimeoutMs ends the session.
    await client.logout({ slot }).catch(() => undefined);
    throw e;
  }
  await client.logout({ slot });
}
