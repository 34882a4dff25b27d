/**
 * The in-process client API. Applications sign and verify through it without touching a
 * session, a PIN prompt or a retry loop. Input is checked here, before anything is queued.
 */
import { AuditLog, verifyAuditFile, type AuditVerdict } from './audit.js';
import { AccessPolicy, parsePrincipal, type Operation, type Principal } from './access-policy.js';
import { createHash, createPublicKey, X509Certificate, type JsonWebKey, type KeyObject } from 'node:crypto';
import { fromPkcs12, fromPem, importObjectsFor, certificateDer, certificateFields } from './key-import.js';
import { JWS_ALGS, JWS_CURVE, isJwsAlg, b64url, type JwsAlg } from './jws.js';
import { MECHANISMS } from './model/mechanisms.js';
import { verifiableInSoftware, verifyInSoftware } from './software-verify.js';
import type { Logger } from 'pino';
import { loadConfigFile, parseConfig } from './config.js';
import type { Config, ConfigInput } from './config-schema.js';
import { Pkcs11SupervisorError } from './model/errors.js';
import type { SupervisorEvents } from './events.js';
import { createLogger } from './logger.js';
import type { PinCallback } from './pin-chain.js';
import type { Slot } from './slot.js';
import { Supervisor } from './supervisor.js';
import * as check from './validate.js';
import type { KeyRef } from './validate.js';
import type { MechanismName } from './model/mechanisms.js';
import type { KeyType } from './model/mechanisms.js';
import { KEY_ALGORITHMS } from './model/protocol.js';
import type {
  FoundPage,
  KeyAlgorithm,
  ObjectClass,
  ObjectDescriptor,
  ObjectQuery,
  PublicKeyReport,
  SessionInfo,
  SessionReport,
  SignatureFormat,
  WorkerFault,
  WorkerReply,
  WorkerTask,
} from './model/protocol.js';

export interface PrincipalInput {
  id: string;
  roles: readonly string[];
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
  spki: Buffer;
  pem: string;
  jwk: JsonWebKey;
  keyObject: KeyObject;
}

export interface SlotRequest extends CallOptions {
  slot: string;
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
}

export interface ImportCertificateRequest extends CallOptions {
  slot: string;
  certificate: string | Uint8Array;
  label: string;
  id: string;
}

export interface CertificateInfo {
  der: Buffer;
  pem: string;
  x509: X509Certificate;
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
  /** Extra protected header fields; `alg` is set from the request, `kid` defaults to the key's CKA_ID. */
  header?: Record<string, unknown>;
  /** Put the key's certificate in the header (x5c). */
  x5c?: boolean;
}

export class Pkcs11Supervisor {
  private readonly keyInfoCache = new Map<string, PublicKeyInfo & { id: string }>();
  private readonly policy: AccessPolicy;
  /** Set on a scoped client (see `as`): the principal of every call it makes. */
  private scope: Principal | undefined;

  constructor(
    private readonly sup: Supervisor,
    private readonly audit: AuditLog | null = null,
  ) {
    this.policy = new AccessPolicy(sup.config.policy);
    // A re-opened session may face another token (or one re-provisioned): read keys again.
    sup.events.on('stateChange', (e) => {
      if (e.to === 'opening') this.forgetKeyInfo(e.slot);
    });
    if (!audit) return;
    sup.events.on('login', (e) => audit.append({ event: 'login', slot: e.slot, result: e.outcome, detail: `${e.userType === 'so' ? 'Security Officer, ' : ''}PIN from ${e.origin}` }));
    sup.events.on('stateChange', (e) => {
      if (e.from === 'logging_out' && e.to === 'open') {
        const by = sup.slots.get(e.slot)?.workers[e.worker]?.context.loggedOutBy ?? 'request';
        audit.append({ event: 'logout', slot: e.slot, result: 'ok', detail: by });
      }
    });
  }

  get config(): Config {
    return this.sup.config;
  }

  /** Opens the slots (see startSupervisor). */
  async start(): Promise<this> {
    await this.sup.start();
    return this;
  }

  private slotOf(name: unknown): Slot {
    if (this.sup.closed) throw new Pkcs11SupervisorError('CLOSED', 'the supervisor is closed');
    const slot = typeof name === 'string' && this.sup.slots.has(name) ? this.sup.slots.get(name) : undefined;
    if (!slot) {
      throw new Pkcs11SupervisorError('SLOT_NOT_FOUND', `no slot named ${JSON.stringify(name)} (configured: ${[...this.sup.slots.keys()].join(', ')})`);
    }
    return slot;
  }

  /**
   * A client whose every call is made as `principal`. The principal is the application's word
   * for who is asking: this process cannot authenticate its own callers.
   */
  as(principal: PrincipalInput | string): Pkcs11Supervisor {
    const scoped = Object.create(this) as Pkcs11Supervisor;
    scoped.scope = parsePrincipal(principal);
    return scoped;
  }

  private principalOf(req: Record<string, unknown>, slot?: string): Principal | undefined {
    const perCall = parsePrincipal(req.principal, slot);
    if (this.scope && perCall && perCall.id !== this.scope.id) throw check.badInput(`a client scoped to "${this.scope.id}" cannot call as "${perCall.id}"`, slot);
    return this.scope ?? perCall;
  }

  /** The slot named by the request, once the caller may do `op` there (FORBIDDEN otherwise). */
  private slotFor(req: Record<string, unknown>, op: Operation, key?: unknown): Slot {
    const slot = this.slotOf(req.slot);
    this.authorize(req, slot.name, op, key);
    return slot;
  }

  private authorize(req: Record<string, unknown>, slot: string, op: Operation, key?: unknown): void {
    if (!this.policy.enforced) return;
    const principal = this.principalOf(req, slot);
    const denial = this.policy.denial(principal, slot, op, key);
    if (!denial) return;
    this.sup.events.emit('accessDenied', { slot, op, principal: principal?.id ?? null });
    this.sup.log.warn({ slot, op, principal: principal?.id, code: 'FORBIDDEN' }, 'access denied');
    const keyName = key === undefined ? undefined : typeof key === 'string' ? key : JSON.stringify(key);
    this.audit?.append({ event: 'denied', slot, key: keyName, result: 'FORBIDDEN', principal: principal?.id, detail: op });
    throw new Pkcs11SupervisorError('FORBIDDEN', denial, { slot });
  }

  /** For operations not on one slot: the slots where the caller may do `op`; FORBIDDEN (counted, audited) when none. */
  private authorizeSomeSlot(req: Record<string, unknown>, op: Operation): string[] {
    const names = [...this.sup.slots.keys()];
    if (!this.policy.enforced) return names;
    const allowed = this.policy.slotsAllowing(this.principalOf(req), names, op);
    if (allowed.length === 0) this.authorize(req, names[0]!, op);
    return allowed;
  }

  /** Key material and SO state change only on a slot that may write. */
  private writable(slot: Slot, what: string): void {
    if (slot.config.readOnly) throw new Pkcs11SupervisorError('READ_ONLY', `slot "${slot.name}" is read-only (readOnly: true): ${what} is refused`, { slot: slot.name });
  }

  private request(req: unknown): Record<string, unknown> {
    if (!req || typeof req !== 'object') throw check.badInput('a request object is required');
    return req as Record<string, unknown>;
  }

  async sign(request: SignRequest): Promise<Buffer> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'sign', req.key);
    const mechanism = check.mechanism(req.mechanism, slot.name);
    this.checkMechanism(slot, req.key, mechanism, req.prehashed === true);
    const task: WorkerTask = {
      op: 'sign',
      key: check.keySelector(slot, req.key),
      mechanism,
      data: check.bytes(req.data, 'data', slot),
      prehashed: check.flag(req.prehashed, 'prehashed', slot.name),
      format: check.signatureFormat(req.signatureFormat, slot.name),
    };
    const sig = await this.run<Uint8Array>(slot, task, mechanism, req, true);
    return Buffer.from(sig.buffer, sig.byteOffset, sig.byteLength);
  }

  /** Refuses, before queueing, a mechanism the token cannot do or one for another key type. */
  private checkMechanism(slot: Slot, key: unknown, mechanism: MechanismName, prehashed: boolean): void {
    // On the sign path: no lists built per call, a message only when refusing.
    const keyRef = typeof key === 'string' && Object.hasOwn(slot.config.keys, key) ? slot.config.keys[key] : undefined;
    const refuse = (where: string, list: readonly MechanismName[]) =>
      new Pkcs11SupervisorError('MECHANISM_NOT_ALLOWED', `${mechanism} is not in ${where} (${list.join(', ')})`, { slot: slot.name });
    const global = this.sup.config.allowedMechanisms;
    if (global && !global.includes(mechanism)) throw refuse('allowedMechanisms', global);
    const perSlot = slot.config.allowedMechanisms;
    if (perSlot && !perSlot.includes(mechanism)) throw refuse(`slots.${slot.name}.allowedMechanisms`, perSlot);
    const perKey = keyRef?.allowedMechanisms;
    if (perKey && !perKey.includes(mechanism)) throw refuse(`slots.${slot.name}.keys.${String(key)}.allowedMechanisms`, perKey);
    const { mechanisms, keyTypes } = slot.capabilities;
    if (!prehashed && mechanisms.size > 0 && !mechanisms.has(mechanism)) {
      throw new Pkcs11SupervisorError('MECHANISM_INVALID', `the token of slot "${slot.name}" cannot do ${mechanism}; it can do: ${[...mechanisms].join(', ')}`, { slot: slot.name });
    }
    const keyType = typeof key === 'string' ? keyTypes.get(key) : undefined;
    if (keyType && keyType !== MECHANISMS[mechanism].keyType) {
      throw new Pkcs11SupervisorError('MECHANISM_INVALID', `${mechanism} needs an ${MECHANISMS[mechanism].keyType} key; key "${String(key)}" is ${keyType}`, { slot: slot.name });
    }
  }

  /**
   * Verifies a signature. With `softwareVerify` (the default) public-key mechanisms are checked
   * in Node with the token's public key, so a verify never queues behind signatures.
   */
  async verify(request: VerifyRequest): Promise<boolean> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'verify', req.key);
    const mechanism = check.mechanism(req.mechanism, slot.name);
    this.checkMechanism(slot, req.key, mechanism, req.prehashed === true);
    const prehashed = check.flag(req.prehashed, 'prehashed', slot.name);
    if (slot.config.softwareVerify && verifiableInSoftware(mechanism, prehashed)) return this.verifyHere(slot, mechanism, req);
    const task: WorkerTask = {
      op: 'verify',
      key: check.keySelector(slot, req.key),
      mechanism,
      data: check.bytes(req.data, 'data', slot),
      signature: check.bytes(req.signature, 'signature', slot),
      prehashed: check.flag(req.prehashed, 'prehashed', slot.name),
      format: check.signatureFormat(req.signatureFormat, slot.name),
    };
    return this.run<boolean>(slot, task, mechanism, req, false);
  }

  private async verifyHere(slot: Slot, mechanism: MechanismName, req: Record<string, unknown>): Promise<boolean> {
    const data = check.bytes(req.data, 'data', slot);
    const signature = check.bytes(req.signature, 'signature', slot);
    const format = check.signatureFormat(req.signatureFormat, slot.name);
    const info = await this.keyInfo(slot, req.key, req);
    if (info.keyType !== MECHANISMS[mechanism].keyType) {
      throw new Pkcs11SupervisorError('MECHANISM_INVALID', `${mechanism} needs an ${MECHANISMS[mechanism].keyType} key; key "${String(req.key)}" is ${info.keyType}`, { slot: slot.name });
    }
    const startedAt = performance.timeOrigin + performance.now();
    const valid = verifyInSoftware(mechanism, info.keyObject, data, signature, format);
    const endedAt = performance.timeOrigin + performance.now();
    if (this.audit) this.record('verify', slot, mechanism, req, this.principalOf(req, slot.name)?.id, valid ? 'valid' : 'invalid');
    if (this.sup.events.listenerCount('callCompleted') > 0) {
      this.sup.events.emit('callCompleted', { slot: slot.name, worker: null, op: 'verify', mechanism, outcome: 'ok', queuedMs: 0, execMs: endedAt - startedAt, startedAt, endedAt });
    }
    return valid;
  }

  async getPublicKey(request: PublicKeyRequest): Promise<PublicKeyInfo> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'publicKey', req.key);
    const report = await this.run<PublicKeyReport>(slot, { op: 'publicKey', key: check.keySelector(slot, req.key) }, null, req, false);
    const spki = Buffer.from(report.spkiDer);
    const keyObject = createPublicKey({ key: spki, format: 'der', type: 'spki' });
    return {
      keyType: report.keyType,
      label: report.label,
      id: report.id,
      spki,
      pem: keyObject.export({ type: 'spki', format: 'pem' }).toString(),
      jwk: keyObject.export({ format: 'jwk' }),
      keyObject,
    };
  }

  /** Objects as plain descriptors. A session that is not logged in sees only public objects. */
  async findObjects(request: FindObjectsRequest): Promise<ObjectDescriptor[]> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'findObjects');
    const limit = req.limit === undefined ? 1000 : check.count(req.limit, 'limit', 1, 100_000, slot.name);
    return this.run<ObjectDescriptor[]>(slot, { op: 'findObjects', query: check.objectQuery(req.template, slot.name), limit }, null, req, false);
  }

  /**
   * One page of a search over a large token. Pass the returned `cursor` to get the next page;
   * no cursor means the last page. Nothing stays open on the token between pages (each page
   * is one find operation, finalized before the call returns), so an abandoned cursor costs
   * nothing. Pages follow the token's own order; objects created or destroyed between pages
   * may shift it, as with any offset paging.
   */
  async findObjectsPage(request: FindObjectsPageRequest): Promise<ObjectsPage> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'findObjects');
    const query = check.objectQuery(req.template, slot.name);
    const pageSize = req.pageSize === undefined ? 100 : check.count(req.pageSize, 'pageSize', 1, 1000, slot.name);
    const scope = createHash('sha256').update(JSON.stringify([slot.name, query])).digest('base64url').slice(0, 16);
    const offset = req.cursor === undefined ? 0 : readCursor(req.cursor, scope, slot.name);
    const page = await this.run<FoundPage>(slot, { op: 'findObjectsPage', query, offset, pageSize }, null, req, false);
    const next = offset + page.objects.length;
    return { objects: page.objects, cursor: page.more ? Buffer.from(JSON.stringify({ o: next, s: scope })).toString('base64url') : undefined };
  }

  async generateKeyPair(request: GenerateKeyPairRequest): Promise<ObjectDescriptor> {
    const asked = this.request(request);
    const slot = this.slotFor(asked, 'generateKeyPair');
    const req = asked.timeoutMs === undefined ? { ...asked, timeoutMs: slot.config.keyGenTimeoutMs } : asked;
    this.writable(slot, 'key generation');
    if (!(KEY_ALGORITHMS as readonly unknown[]).includes(req.algorithm)) throw check.badInput(`algorithm must be one of ${KEY_ALGORITHMS.join(', ')}`, slot.name);
    this.checkKeyGen(slot, req.algorithm as KeyAlgorithm);
    const spec = {
      algorithm: req.algorithm as KeyAlgorithm,
      label: check.label(req.label, slot.name),
      id: check.hexId(req.id, slot.name),
      extractable: check.flag(req.extractable, 'extractable', slot.name),
    };
    this.forgetKeyInfo(slot.name);
    return this.run<ObjectDescriptor>(slot, { op: 'generateKeyPair', spec }, null, req, true);
  }

  /** Refuses, before queueing, a key type or size the token said (C_GetMechanismInfo) it cannot generate. */
  private checkKeyGen(slot: Slot, algorithm: KeyAlgorithm): void {
    if (!slot.token) return; // not opened yet (lazy): the token decides
    const { keyGen } = slot.token;
    const [type, sizes] = KEYGEN_SIZES[algorithm];
    const range = keyGen[type];
    const can = Object.entries(keyGen).map(([t, r]) => `${t} ${r!.min}-${r!.max}`).join(', ') || 'none';
    if (!range || !sizes.some((n) => n >= range.min && n <= range.max)) {
      throw new Pkcs11SupervisorError('MECHANISM_INVALID', `the token of slot "${slot.name}" cannot generate ${algorithm}; it generates (key type, sizes in bits): ${can}`, { slot: slot.name });
    }
  }

  async generateRandom(request: SlotRequest & { length: number }): Promise<Buffer> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'generateRandom');
    const bytes = await this.run<Uint8Array>(slot, { op: 'generateRandom', length: check.count(req.length, 'length', 1, 65536, slot.name) }, null, req, false);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /**
   * Provisioning, not a request-path API: stores a private key, its public key and its
   * certificate(s) under one label and id, all or nothing.
   */
  async importKeyPair(request: ImportKeyPairRequest): Promise<ObjectDescriptor[]> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'importObjects');
    this.writable(slot, 'key import');
    const label = check.label(req.label, slot.name);
    let material;
    if (req.pkcs12 !== undefined) {
      if (!(req.pkcs12 instanceof Uint8Array)) throw check.badInput('pkcs12 must be the file contents as a Buffer', slot.name);
      if (typeof req.password !== 'string') throw check.badInput('a PKCS#12 import needs its password', slot.name);
      material = fromPkcs12(req.pkcs12, req.password);
    } else if (req.privateKeyPem !== undefined) {
      material = fromPem(req.privateKeyPem as string, (req.certificates as (string | Uint8Array)[] | undefined) ?? []);
    } else {
      throw check.badInput('importKeyPair needs pkcs12 + password, or privateKeyPem (+ certificates)', slot.name);
    }
    const objects = importObjectsFor(material, label, check.hexId(req.id, slot.name), check.flag(req.extractable, 'extractable', slot.name));
    this.forgetKeyInfo(slot.name);
    return this.run<ObjectDescriptor[]>(slot, { op: 'importObjects', objects }, null, req, true);
  }

  async importCertificate(request: ImportCertificateRequest): Promise<ObjectDescriptor> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'importObjects');
    this.writable(slot, 'certificate import');
    const der = certificateDer(req.certificate as string);
    const id = check.hexId(req.id, slot.name);
    if (id === undefined) throw check.badInput('importCertificate needs the id of the key it certifies', slot.name);
    const objects = [{ kind: 'certificate' as const, der, ...certificateFields(der), label: check.label(req.label, slot.name), id }];
    const [d] = await this.run<ObjectDescriptor[]>(slot, { op: 'importObjects', objects }, null, req, true);
    return d!;
  }

  /** The key's certificate: the one its ref names by certLabel/certId, else the one stored under the key's own label/id. */
  async getCertificate(request: PublicKeyRequest): Promise<CertificateInfo> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'certificate', req.key);
    const ref = typeof req.key === 'string' && Object.hasOwn(slot.config.keys, req.key) ? slot.config.keys[req.key] : undefined;
    const sel = ref?.certLabel !== undefined ? { label: ref.certLabel } : ref?.certId !== undefined ? { id: ref.certId.toLowerCase() } : check.keySelector(slot, req.key);
    const der = Buffer.from(await this.run<Uint8Array>(slot, { op: 'certificate', key: sel }, null, req, false));
    const x509 = new X509Certificate(der);
    return { der, pem: x509.toString(), x509 };
  }

  /** Destroys every object with the key's label/id (of one class if given). Returns how many. */
  async destroyObject(request: DestroyObjectRequest): Promise<number> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'destroyObjects', req.key);
    this.writable(slot, 'object destruction');
    const sel = check.keySelector(slot, req.key);
    // Err towards refusing: sharing a label or an id with a configured key is enough.
    const configured = Object.entries(slot.config.keys).find(
      ([, k]) => (sel.label !== undefined && k.label === sel.label) || (sel.id !== undefined && k.id?.toLowerCase() === sel.id),
    );
    if (configured && req.force !== true) {
      throw new Pkcs11SupervisorError('KEY_IN_USE', `key "${configured[0]}" is configured for slot "${slot.name}"; pass force: true to destroy it`, { slot: slot.name });
    }
    const query = { ...check.objectQuery({ class: req.class }, slot.name), label: sel.label, id: sel.id };
    this.forgetKeyInfo(slot.name);
    return this.run<number>(slot, { op: 'destroyObjects', query }, null, req, true);
  }

  /** A compact JWS signed on the token; `kid` defaults to the key's CKA_ID (hex). */
  async signJws(request: SignJwsRequest): Promise<string> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'sign', req.key);
    if (!isJwsAlg(req.alg)) throw new Pkcs11SupervisorError('MECHANISM_INVALID', `alg must be one of ${Object.keys(JWS_ALGS).join(', ')}`, { slot: slot.name });
    const alg = req.alg;
    const info = await this.keyInfo(slot, req.key, req);
    const curve = JWS_CURVE[alg];
    if (curve && info.jwk.crv !== curve) {
      throw new Pkcs11SupervisorError('MECHANISM_INVALID', `${alg} needs a ${curve} key; key is ${info.jwk.crv ?? info.keyType}`, { slot: slot.name });
    }
    const payload = req.payload;
    const body =
      typeof payload === 'string' ? payload : payload instanceof Uint8Array ? payload : payload && typeof payload === 'object' ? JSON.stringify(payload) : undefined;
    if (body === undefined) throw check.badInput('payload must be a string, bytes or an object', slot.name);
    const header: Record<string, unknown> = { ...(req.header as Record<string, unknown> | undefined), alg, kid: (req.header as { kid?: unknown } | undefined)?.kid ?? info.id };
    if (req.x5c === true) header.x5c = [(await this.getCertificate({ ...(req as object), slot: slot.name, key: req.key as KeyRef })).der.toString('base64')];
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(body)}`;
    const sig = await this.sign({ ...(req as object), slot: slot.name, key: req.key as KeyRef, mechanism: JWS_ALGS[alg], data: Buffer.from(signingInput), signatureFormat: 'raw' });
    return `${signingInput}.${b64url(sig)}`;
  }

  private record(op: string, slot: Slot, mechanism: MechanismName | null, req: Record<string, unknown>, principal: string | undefined, result: string): void {
    const data = req.data instanceof Uint8Array ? req.data : undefined;
    const key = req.key === undefined ? (typeof req.label === 'string' ? `label:${req.label}` : undefined) : typeof req.key === 'string' ? req.key : JSON.stringify(req.key);
    this.audit!.append({
      event: op === 'importObjects' ? 'importKeys' : op === 'destroyObjects' ? 'destroyObject' : op,
      slot: slot.name,
      key,
      mechanism: mechanism ?? undefined,
      dataSha256: data ? createHash('sha256').update(data).digest('hex') : undefined,
      result,
      principal,
    });
  }

  private forgetKeyInfo(slot: string): void {
    for (const k of this.keyInfoCache.keys()) if (k.startsWith(`${slot}\0`)) this.keyInfoCache.delete(k);
  }

  /** Public key and CKA_ID of a key, read from the token once and kept (they never change while the key exists). */
  private async keyInfo(slot: Slot, key: unknown, req: Record<string, unknown>): Promise<PublicKeyInfo & { id: string }> {
    const sel = check.keySelector(slot, key);
    const cacheKey = `${slot.name}\0${sel.label ?? ''}\0${sel.id ?? ''}`;
    const hit = this.keyInfoCache.get(cacheKey);
    if (hit) return hit;
    const info = await this.getPublicKey({ ...(req as object), slot: slot.name, key: key as KeyRef });
    this.keyInfoCache.set(cacheKey, info);
    return info;
  }

  /**
   * Logs the slot's token in. An explicit login is the operator's decision, so it may retry a
   * PIN the token refused before (automatic sources never do).
   */
  async login(request: (SlotRequest & { userType?: 'user' | 'so' }) | string, pin?: string, options: LoginOptions = {}): Promise<void> {
    const req = typeof request === 'string' ? { ...options, slot: request, pin } : this.request(request);
    const so = req.userType === 'so';
    if (req.userType !== undefined && req.userType !== 'user' && !so) throw check.badInput('userType must be "user" or "so"', typeof req.slot === 'string' ? req.slot : undefined);
    const slot = this.slotFor(req, so ? 'soLogin' : 'login');
    const perCall = check.pin(req.pin, slot.name);
    if (slot.config.type === 'cloud') {
      if (so) throw check.badInput(`slot "${slot.name}" is a cloud HSM: it has no Security Officer login`, slot.name);
      return; // login is a no-op for a cloud HSM
    }
    if (!so) {
      if (slot.soActive) throw this.soActive(slot);
      await this.submit(slot, 'login', null, req, false, (w, call) => w.logIn(perCall, call.deadline, 'login', true));
      return;
    }
    this.writable(slot, 'a Security Officer login');
    // The SO PIN only ever comes from the call: no automatic source is kept for it.
    if (!perCall) throw new Pkcs11SupervisorError('PIN_REQUIRED', 'a Security Officer login needs the SO PIN in the call', { slot: slot.name });
    await this.submit(slot, 'soLogin', null, req, false, (w, call) => w.soLogIn(perCall, call.deadline), undefined, true);
  }

  /** Logs the token out; after a Security Officer session, the slot logs its user in again from its PIN source. */
  async logout(request: SlotRequest | string): Promise<void> {
    const req = typeof request === 'string' ? { slot: request } : this.request(request);
    const slot = this.slotFor(req, 'logout');
    if (slot.config.type === 'cloud') return;
    if (!slot.soActive) {
      await this.submit(slot, 'logout', null, req, false, (w, call) => w.logOut(call.deadline));
      return;
    }
    await this.submit(slot, 'logout', null, req, false, (_w, call) => slot.soHolder!.logOut(call.deadline), undefined, true);
    await slot.userLogin();
  }

  /** Sets the user PIN (C_InitPIN): the Security Officer's operation, so the slot must be logged in as SO. */
  async initPin(request: InitPinRequest): Promise<void> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'initPin');
    this.writable(slot, 'initPin');
    const newPin = check.pin(req.newPin, slot.name, 'newPin');
    if (!newPin) throw check.badInput('initPin needs newPin', slot.name);
    await this.submit(slot, 'initPin', null, req, false, (_w, call) => this.asSo(slot, { op: 'initPin', pin: newPin.reveal() }, call.deadline), undefined, true);
    slot.pins.accepted(); // a PIN refused before may be the one just set
  }

  /**
   * Changes a PIN (C_SetPIN): the user's own on a user session, or the Security Officer's own
   * while the slot is logged in as SO. Update the slot's PIN source afterwards.
   */
  async setPin(request: SetPinRequest): Promise<void> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'setPin');
    this.writable(slot, 'setPin');
    const oldPin = check.pin(req.oldPin, slot.name, 'oldPin');
    const newPin = check.pin(req.newPin, slot.name, 'newPin');
    if (!oldPin || !newPin) throw check.badInput('setPin needs oldPin and newPin', slot.name);
    const task: WorkerTask = { op: 'setPin', oldPin: oldPin.reveal(), newPin: newPin.reveal() };
    if (slot.soActive) {
      await this.submit(slot, 'setPin', null, req, false, (_w, call) => this.asSo(slot, task, call.deadline), undefined, true);
      return;
    }
    await this.run<SessionReport>(slot, task, null, req, true);
    slot.pins.accepted();
  }

  /** Runs an SO task on the session that holds the SO login (exclusive: nothing else runs on the slot). */
  private async asSo(slot: Slot, task: WorkerTask, deadline: number): Promise<SessionReport> {
    const holder = slot.soHolder;
    if (!holder) throw new Pkcs11SupervisorError('SO_LOGIN_REQUIRED', `slot "${slot.name}" is not logged in as its Security Officer: login(slot, soPin, { userType: 'so' }) first`, { slot: slot.name });
    const reply = await holder.runTask<SessionReport>(task, deadline);
    if (!reply.ok) throw new Pkcs11SupervisorError(reply.error.code, reply.error.message, { slot: slot.name, ckr: reply.error.ckr });
    return reply.value;
  }

  private soActive(slot: Slot): Pkcs11SupervisorError {
    return new Pkcs11SupervisorError('SO_SESSION_ACTIVE', `slot "${slot.name}" is logged in as its Security Officer; log it out first`, { slot: slot.name });
  }

  /**
   * Asks the token (C_GetSessionInfo) for the session state of the worker that takes the call,
   * through the mailbox like any call. Includes the PKCS#11 calls that worker thread has made.
   */
  async probe(request: SlotRequest): Promise<SessionInfo> {
    const req = this.request(request);
    const slot = this.slotFor(req, 'sessionInfo');
    return this.run<SessionInfo>(slot, { op: 'sessionInfo' }, null, req, false);
  }

  /** Every slot's state; under a policy, the slots the caller may see. */
  status(options: { principal?: string | PrincipalInput } = {}) {
    const all = this.snapshot();
    if (!this.policy.enforced) return all;
    const visible = this.authorizeSomeSlot(options as Record<string, unknown>, 'status');
    return { closed: all.closed, slots: Object.fromEntries(visible.map((n) => [n, all.slots[n]!])) };
  }

  /** @internal Status for the daemon's own /metrics and /readyz: not subject to the policy. */
  snapshot() {
    const slots: Record<string, ReturnType<Slot['status']>> = {};
    for (const [name, slot] of this.sup.slots) slots[name] = slot.status();
    return { closed: this.sup.closed, slots };
  }

  /** Checks the audit trail's hash chain (see `pkcs11-supervisor audit verify`). */
  verifyAudit(options: { principal?: string | PrincipalInput } = {}): AuditVerdict {
    const path = this.sup.config.audit?.path;
    if (!path) throw check.badInput('no audit trail is configured');
    this.authorizeSomeSlot(options as Record<string, unknown>, 'auditVerify');
    this.audit?.flush();
    return verifyAuditFile(path);
  }

  /** Operator action: bring a failed slot back and give it a fresh restart budget. */
  reset(slotName: string, options: { principal?: string | PrincipalInput } = {}): void {
    this.sup.reset(this.slotFor({ ...options, slot: slotName }, 'reset'));
  }

  on<E extends keyof SupervisorEvents>(event: E, listener: (...args: SupervisorEvents[E]) => void): this {
    this.sup.events.on(event, listener as never);
    return this;
  }

  once<E extends keyof SupervisorEvents>(event: E, listener: (...args: SupervisorEvents[E]) => void): this {
    this.sup.events.once(event, listener as never);
    return this;
  }

  off<E extends keyof SupervisorEvents>(event: E, listener: (...args: SupervisorEvents[E]) => void): this {
    this.sup.events.off(event, listener as never);
    return this;
  }

  /** Queued calls fail with CLOSED, running ones finish; then logout, close sessions, finalize modules. */
  async close(): Promise<void> {
    await this.sup.close();
    this.audit?.close();
  }

  /**
   * Test hook: makes one worker thread crash, exit or block like a hung native call. Refused
   * unless the process runs with PKCS11_SUPERVISOR_FAULTS=1.
   */
  async injectWorkerFault(slotName: string, worker: number, fault: WorkerFault): Promise<void> {
    const slot = this.slotOf(slotName);
    const w = slot.workers[worker];
    if (!w) throw check.badInput(`slot "${slot.name}" has no worker ${worker}`, slot.name);
    const reply = await w.runTask({ op: 'fault', fault }, Date.now() + 24 * 3600_000).catch(() => null);
    if (reply && !reply.ok) throw new Pkcs11SupervisorError('BAD_INPUT', reply.error.message, { slot: slot.name });
  }

  private async run<T>(slot: Slot, task: WorkerTask, mechanism: MechanismName | null, req: Record<string, unknown>, needsLogin: boolean): Promise<T> {
    const reply = await this.submit<WorkerReply<T>>(slot, task.op, mechanism, req, needsLogin, (w, call) => w.execute<T>(task, call), BATCHABLE.has(task.op) ? task : undefined);
    if (!reply.ok) throw new Pkcs11SupervisorError(reply.error.code, reply.error.message, { slot: slot.name, ckr: reply.error.ckr });
    return reply.value;
  }

  private async submit<T>(
    slot: Slot,
    op: string,
    mechanism: MechanismName | null,
    req: Record<string, unknown>,
    needsLogin: boolean,
    run: Parameters<Slot['call']>[0]['run'],
    task?: WorkerTask,
    exclusive = false,
  ): Promise<T> {
    const spec = {
      task,
      exclusive,
      // A cloud HSM authenticates with cloud credentials: there is no login to wait for.
      needsLogin: needsLogin && slot.config.type !== 'cloud',
      pin: check.pin(req.pin, slot.name),
      timeoutMs: check.timeoutMs(req.timeoutMs, slot),
      signal: check.signal(req.signal, slot.name),
      run,
    };
    const events = this.sup.events;
    const submittedAt = Date.now();
    const principal = this.principalOf(req, slot.name)?.id;
    try {
      const d = await slot.call(spec);
      const result = auditResult(op, d.value);
      if (result !== 'ok' && result !== 'valid' && result !== 'invalid') this.sup.log.warn({ slot: slot.name, op, mechanism, code: result, ckr: (d.value as { error?: { ckr?: string } }).error?.ckr }, 'call failed');
      if (this.audit && AUDITED.has(op)) this.record(op, slot, mechanism, req, principal, result);
      const value = d.value as T & Partial<WorkerReply<unknown>>;
      if (events.listenerCount('callCompleted') > 0) {
        const timed = typeof value === 'object' && value !== null && 'startedAt' in value;
        const startedAt = timed ? (value.startedAt as number) : null;
        const endedAt = timed ? (value.endedAt as number) : null;
        events.emit('callCompleted', {
          slot: slot.name,
          worker: d.worker,
          op,
          mechanism,
          outcome: timed && value.ok === false ? value.error!.code : 'ok',
          queuedMs: d.startedAt - d.enqueuedAt,
          execMs: startedAt !== null && endedAt !== null ? endedAt - startedAt : 0,
          startedAt,
          endedAt,
        });
      }
      return d.value as T;
    } catch (raw) {
      // Whatever escapes below is reported as a typed error; nothing untyped reaches a caller.
      const e = raw instanceof Pkcs11SupervisorError ? raw : new Pkcs11SupervisorError('WORKER_CRASHED', `slot "${slot.name}": ${(raw as Error).message}`, { slot: slot.name, cause: raw });
      const err = e;
      this.sup.log.warn({ slot: slot.name, op, mechanism, code: err.code, ckr: err.ckr, err: err.message }, 'call failed');
      if (this.audit && AUDITED.has(op)) this.record(op, slot, mechanism, req, principal, err.code ?? 'PKCS11_ERROR');
      if (events.listenerCount('callCompleted') > 0) {
        const code = e instanceof Pkcs11SupervisorError ? e.code : 'PKCS11_ERROR';
        events.emit('callCompleted', { slot: slot.name, worker: null, op, mechanism, outcome: code, queuedMs: Date.now() - submittedAt, execMs: 0, startedAt: null, endedAt: null });
      }
      throw e;
    }
  }
}

/** The offset a cursor continues from; a cursor from another search or slot is refused. */
function readCursor(cursor: unknown, scope: string, slot: string): number {
  const parsed = ((): { o?: unknown; s?: unknown } | null => {
    try {
      return typeof cursor === 'string' ? (JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as { o?: unknown; s?: unknown }) : null;
    } catch {
      return null;
    }
  })();
  if (!parsed || typeof parsed.o !== 'number' || !Number.isSafeInteger(parsed.o) || parsed.o < 0) throw check.badInput('cursor is not one findObjectsPage returned', slot);
  if (parsed.s !== scope) throw check.badInput('cursor belongs to another search (slot or template differ)', slot);
  return parsed.o;
}

/** Key type and size (bits, as C_GetMechanismInfo counts them) of each algorithm; Ed25519 is 255 or 256 depending on the vendor. */
const KEYGEN_SIZES: Record<KeyAlgorithm, [KeyType, number[]]> = {
  'RSA-2048': ['RSA', [2048]],
  'RSA-3072': ['RSA', [3072]],
  'RSA-4096': ['RSA', [4096]],
  'EC-P256': ['EC', [256]],
  'EC-P384': ['EC', [384]],
  'EC-P521': ['EC', [521]],
  Ed25519: ['EC_EDWARDS', [255, 256]],
};

/** Request-path operations that may share a message to the worker with other queued calls. */
const BATCHABLE = new Set(['sign', 'verify']);

/** Calls recorded by the client, with their principal. Logins and logouts are recorded from the workers' events, automatic ones included. */
const AUDITED = new Set(['sign', 'verify', 'generateKeyPair', 'importObjects', 'destroyObjects', 'initPin', 'setPin']);

/** ok / valid / invalid for a completed call, or the error code the token gave. */
function auditResult(op: string, value: unknown): string {
  if (!value || typeof value !== 'object' || !('ok' in value)) return 'ok';
  const reply = value as WorkerReply<unknown>;
  if (!reply.ok) return reply.error.code;
  return op === 'verify' ? (reply.value ? 'valid' : 'invalid') : 'ok';
}

/**
 * Validates the config and loads the modules, but opens nothing yet: subscribe to events
 * (metrics, audit) first, then `start()`.
 */
export function createSupervisor(options: StartOptions): Pkcs11Supervisor {
  if (!options || (options.config === undefined) === (options.configFile === undefined)) {
    throw new Pkcs11SupervisorError('CONFIG_INVALID', 'startSupervisor needs exactly one of { config } or { configFile }');
  }
  const config = options.configFile !== undefined ? loadConfigFile(options.configFile) : parseConfig(options.config);
  const logger = options.logger ?? createLogger(config.log.level);
  const audit = config.audit ? new AuditLog(config.audit.path, logger, config.audit.flushMs) : null;
  return new Pkcs11Supervisor(new Supervisor(config, logger, options.pinCallback), audit);
}

/**
 * Starts every configured slot and resolves once each non-lazy slot has opened its sessions
 * (and logged in where a PIN source is configured) or has failed cleanly.
 */
export async function startSupervisor(options: StartOptions): Promise<Pkcs11Supervisor> {
  return createSupervisor(options).start();
}
