import { operationSuite } from './support/operation-suite.js';

// The operation suite, unchanged, through connect({ socket }) to a daemon.
operationSuite('socket');
