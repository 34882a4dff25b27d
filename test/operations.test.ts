import { operationSuite } from './support/operation-suite.js';

operationSuite('in-process');
