/**
 * Every request and result of the client API, as the in-process client takes them. Binary
 * fields are Uint8Array (Buffer); a remote client carries the same objects.
 */
import type { JsonWebKey, KeyObject, X509Certificate } from 'node:crypto';
import type { Logger } from 'pino';
import type { ConfigInput } from '../config-schema.js';
import type { JwsAlg } from './jws-algorithms.js';
import type { KeyType, MechanismName } from '../model/mechanisms.js';
import type { CryptoMechanismName, SecretKeyAlgorithm } from '../model/crypto-mechanisms.js';
import type { PinCallback } from '../pin-chain.js';
import type { KeyAlgorithm, KeyUsage, ObjectClass, ObjectDescriptor, ObjectQuery, SignatureFormat } from '../model/protocol.js';
import type { RestartPolicyFactory } from '../restart-policy.js';

/** A key by its ref in the slot's `keys`, by a PKCS#11 URI (`pkcs11:object=…;id=%02`), or directly by label and/or id (hex). */
export type KeyRef = string | { label?: string; id?: string };

export interface PrincipalInput {
  id: string;
  roles: readonly string[];
  /** Where the caller is (an address), recorded in the audit trail. */
  peer?: string;
}

export interface LoginOptions extends CallOptions {
  /** `so` logs in the token's Security Officer (for initPin and its own setPin); the user login ends meanwhile. */
  userType?: 'user' | 'so';
}

export interface InitPinRequest extends CallOptions {
  slot: string;
  /** The new user PIN; needs the slot logged in as its Security Officer. */
  newPin: string;
}

export interface SetPinRequest extends CallOptions {
  slot: string;
  oldPin: string;
  newPin: string;
}

export interface StartOptions {
  config?: ConfigInput;
  configFile?: string;
  pinCallback?: PinCallback;
  logger?: Logger;
  /** The restart strategy of every slot (default: restart-policy.ts with the slot's `restart` config). */
  restartPolicy?: RestartPolicyFactory;
}

export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
  /**
   * Who is asking: an id for the audit trail, or `{ id, roles }` checked against the config's
   * policy (never a secret). A scoped client (`sup.as(principal)`) supplies it for every call.
   */
  principal?: string | PrincipalInput;
  /** A PIN for this call's login if the slot needs one; never stored. */
  pin?: string;
}

export interface SignRequest extends CallOptions {
  slot: string;
  key: KeyRef;
  mechanism: MechanismName;
  data: Uint8Array;
  /** ECDSA only: DER (X.509, CMS, OpenSSL, Node's default) or raw r‖s (JOSE). Default DER. */
  signatureFormat?: SignatureFormat;
  /** `data` is already the digest the mechanism names. */
  prehashed?: boolean;
}

export interface VerifyRequest extends SignRequest {
  signature: Uint8Array;
}

export interface PublicKeyRequest extends CallOptions {
  slot: string;
  key: KeyRef;
}

export interface PublicKeyInfo {
  keyType: KeyType;
  label: string;
  /** CKA_ID, hex. */
  id: string;
  /** The public key's PKCS#11 URI (RFC 7512). */
  uri: string;
  spki: Buffer;
  pem: string;
  jwk: JsonWebKey;
  keyObject: KeyObject;
}

export interface SlotRequest extends CallOptions {
  slot: string;
}

export interface GenerateRandomRequest extends SlotRequest {
  /** Bytes, 1 to 65536. */
  length: number;
}

/** For the calls that are not on one slot (status, verifyAudit, reset): who is asking. */
export interface PrincipalOptions {
  principal?: string | PrincipalInput;
}

export interface FindObjectsRequest extends CallOptions {
  slot: string;
  template?: ObjectQuery;
  /** At most this many objects (default 1000). */
  limit?: number;
}

export interface FindObjectsPageRequest extends CallOptions {
  slot: string;
  template?: ObjectQuery;
  /** Objects per page, 1 to 1000 (default 100). */
  pageSize?: number;
  /** From the previous page; absent for the first. */
  cursor?: string;
}

export interface ObjectsPage {
  objects: ObjectDescriptor[];
  /** Absent on the last page. */
  cursor: string | undefined;
}

export interface GenerateKeyPairRequest extends CallOptions {
  slot: string;
  algorithm: KeyAlgorithm;
  label: string;
  /** Hex CKA_ID; default the SHA-1 of the public key. */
  id?: string;
  /** Default false: the private key can never leave the token. */
  extractable?: boolean;
  /** CKA_ALWAYS_AUTHENTICATE: every signature with the key logs in for itself (C_Login(CKU_CONTEXT_SPECIFIC)) with a PIN from the chain. */
  alwaysAuthenticate?: boolean;
  /** What the pair is for (default ['sign']): 'decrypt' (RSA: decrypt and unwrap), 'derive' (EC: ECDH). Every other use is off. */
  usage?: KeyUsage[];
}

export interface ImportKeyPairRequest extends CallOptions {
  slot: string;
  label: string;
  id?: string;
  /** A PKCS#12 file and its password, or a PEM private key with its certificates. */
  pkcs12?: Uint8Array;
  password?: string;
  privateKeyPem?: string | Uint8Array;
  certificates?: (string | Uint8Array)[];
  extractable?: boolean;
  /** As in generateKeyPair. */
  alwaysAuthenticate?: boolean;
  /** As in generateKeyPair. */
  usage?: KeyUsage[];
  /** Objects of the same kind under this label or id are refused (KEY_IN_USE) unless this is set; then they are replaced, the new ones created first. */
  replace?: boolean;
}

export interface ImportCertificateRequest extends CallOptions {
  slot: string;
  certificate: string | Uint8Array;
  label: string;
  id: string;
  /** A certificate under this label or id is refused (KEY_IN_USE) unless this is set; then it is replaced. */
  replace?: boolean;
}

export interface CertificateInfo {
  der: Buffer;
  pem: string;
  x509: X509Certificate;
  /** The leaf first, then each issuer the token holds a certificate for, as far as it goes (each signature checked). */
  chain: { der: Buffer; pem: string; x509: X509Certificate }[];
}

export interface DestroyObjectRequest extends CallOptions {
  slot: string;
  key: KeyRef;
  /** Only objects of this class; default every object with that label/id. */
  class?: ObjectClass;
  /** Needed to destroy a key that the slot's config names. */
  force?: boolean;
}

export interface SignJwsRequest extends CallOptions {
  slot: string;
  key: KeyRef;
  alg: JwsAlg;
  /** A string, bytes, or an object (serialized as JSON). */
  payload: string | Uint8Array | Record<string, unknown>;
  /** Extra protected header fields, checked against the call (another `alg`, another key's `jwk` or `x5c` is BAD_INPUT); `kid` defaults to the key's CKA_ID. */
  header?: Record<string, unknown>;
  /** Put the key's certificate in the header (x5c). */
  x5c?: boolean;
}

/** Encryption, MACs, wrapping and key agreement (src/client/ciphers.ts). */
export interface CipherRequest extends CallOptions {
  slot: string;
  key: KeyRef;
  mechanism: CryptoMechanismName;
  data: Uint8Array;
  /** AES-GCM: 12 bytes; AES-CBC-PAD: 16. For encrypt, leave it out: the daemon makes a fresh one (and refuses one it used before with the key). */
  iv?: Uint8Array;
  /** AES-GCM only: data authenticated with the ciphertext, not encrypted. */
  aad?: Uint8Array;
  /** RSA-OAEP only: the label (often empty). */
  oaepLabel?: Uint8Array;
}

export interface EncryptResult {
  /** AES-GCM: the ciphertext with its 16-byte tag appended, as PKCS#11 and Node's update/final + getAuthTag give them. */
  ciphertext: Buffer;
  /** The IV used (AES); absent for RSA-OAEP. */
  iv?: Buffer;
}

export interface MacRequest extends CallOptions {
  slot: string;
  key: KeyRef;
  mechanism: CryptoMechanismName;
  data: Uint8Array;
}

export interface VerifyMacRequest extends MacRequest {
  mac: Uint8Array;
}

export interface WrapKeyRequest extends CallOptions {
  slot: string;
  /** The wrapping key: an AES key (AES-KEY-WRAP, -PAD) or an RSA public key (RSA-OAEP-*). */
  key: KeyRef;
  mechanism: CryptoMechanismName;
  /** The key to wrap; it must be extractable. */
  target: KeyRef;
  /** Default `secretKey`. */
  targetClass?: 'secretKey' | 'privateKey';
  oaepLabel?: Uint8Array;
}

export interface UnwrapKeyRequest extends CallOptions {
  slot: string;
  /** The unwrapping key: an AES key or an RSA private key. */
  key: KeyRef;
  mechanism: CryptoMechanismName;
  wrapped: Uint8Array;
  /** What the unwrapped key is, and where it goes: a secret key on the token, sensitive. */
  algorithm: SecretKeyAlgorithm;
  label: string;
  id?: string;
  extractable?: boolean;
  oaepLabel?: Uint8Array;
}

export interface GenerateSecretKeyRequest extends CallOptions {
  slot: string;
  algorithm: SecretKeyAlgorithm;
  label: string;
  /** Hex CKA_ID; random when absent. */
  id?: string;
  /** Default false: the key can never leave the token. */
  extractable?: boolean;
}

export interface DeriveKeyRequest extends CallOptions {
  slot: string;
  /** An EC private key on the token (P-256, P-384, P-521). */
  key: KeyRef;
  /** ECDH: a one-call AES-256 session key used by `then`. ECDH-SECRET: the raw shared secret, where an allow-list names it. */
  mechanism: 'ECDH' | 'ECDH-SECRET';
  /** The peer's public key: SPKI (PEM or DER) or an uncompressed point (0x04 ‖ x ‖ y). */
  publicKey: string | Uint8Array;
  /** ECDH: what to do with the session key, in the same call. */
  then?: { op: 'encrypt' | 'decrypt'; mechanism: 'AES-GCM' | 'AES-CBC-PAD'; data: Uint8Array; iv?: Uint8Array; aad?: Uint8Array };
}

export interface DeriveKeyResult {
  /** ECDH-SECRET: the shared secret (the x coordinate, field-sized). */
  secret?: Buffer;
  /** ECDH with `then: { op: 'encrypt' }`. */
  ciphertext?: Buffer;
  iv?: Buffer;
  /** ECDH with `then: { op: 'decrypt' }`. */
  plaintext?: Buffer;
}
