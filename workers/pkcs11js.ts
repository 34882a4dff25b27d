/**
 * pkcs11js is CommonJS and sets its constants on module.exports at run time, so an ESM
 * namespace import sees only `PKCS11`: every CK* constant would be undefined. Import it here,
 * once, through the default export.
 */
import pkcs11jsModule from 'pkcs11js';

export const pkcs11js = pkcs11jsModule;

/** CK_ULONG in native byte order: 8 bytes on LP64 platforms, 4 on Windows and 32-bit ones. */
export function readUlong(b: Buffer): number {
  return b.length === 8 ? Number(b.readBigUInt64LE(0)) : b.readUInt32LE(0);
}

/** Bytes as pkcs11js takes them: a Buffer as it is, any other Uint8Array as a Buffer view of the same memory. */
export function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}
