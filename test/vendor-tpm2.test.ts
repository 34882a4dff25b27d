import { conformanceSuite } from './support/conformance.js';
import { tpm2 } from './support/vendors/tpm2.js';

conformanceSuite(tpm2);
