/** SoftHSM2: a token directory of the suite's own, as in every other test file. */
import { existsSync, rmSync } from 'node:fs';
import { createToken, MODULE, tokenDir } from '../softhsm.js';
import type { Vendor } from './vendor.js';

export const softhsm: Vendor = {
  name: 'SoftHSM2',
  packages: 'softhsm2',
  unavailable: () => (existsSync(MODULE) ? null : `${MODULE} is missing (apt-get install softhsm2)`),
  provision() {
    const td = tokenDir();
    const tok = createToken(td, 'p11sup-soft');
    return {
      module: MODULE,
      env: { SOFTHSM2_CONF: td.conf },
      label: tok.label,
      pin: tok.pin,
      soPin: tok.soPin,
      keys: { rsa: { label: 'rsa', id: '01' }, ec: { label: 'ec', id: '02' } },
      close: () => rmSync(td.dir, { recursive: true, force: true }),
    };
  },
};
