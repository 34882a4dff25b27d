/** PKCS#11 v3.0 values pkcs11js 2.1 does not export. */
export const CKM_EDDSA = 0x1057;
export const CKK_EC_EDWARDS = 0x40;
export const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
