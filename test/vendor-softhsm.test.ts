import { conformanceSuite } from './support/conformance.js';
import { softhsm } from './support/vendors/softhsm.js';

conformanceSuite(softhsm);
