import { conformanceSuite } from './support/conformance.js';
import { opencryptoki } from './support/vendors/opencryptoki.js';

conformanceSuite(opencryptoki);
