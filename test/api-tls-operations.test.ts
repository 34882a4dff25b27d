import { operationSuite } from './support/operation-suite.js';

// The operation suite, unchanged, through connect({ url, tls }) with a client certificate.
operationSuite('tls');
