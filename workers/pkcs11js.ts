/**
 * pkcs11js is CommonJS and sets its constants on module.exports at run time, so an ESM
 * namespace import sees only `PKCS11`: every CK* constant would be undefined. Import it here,
 * once, through the default export.
 */
import pkcs11jsModule from 'pkcs11js';

export const pkcs11js = pkcs11jsModule;
