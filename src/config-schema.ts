/**
 * The one schema for the config file: it validates at start-up and its inferred type is
 * the type the rest of the code uses. `npm run schema` writes config/schema.json from it.
 */
import { isWellFormed } from './model/token-match.js';
import type { DeviceMatch } from './model/device-match.js';
import { isPkcs11Uri, keyOfUri, parsePkcs11Uri, tokenOfUri, type Pkcs11Uri } from './model/pkcs11-uri.js';
import { z } from 'zod';
import { MECHANISM_NAMES } from './model/mechanisms.js';
import { fitsSocketPath, SOCKET_PATH_MESSAGE } from './model/socket-path.js';
import { CRYPTO_MECHANISM_NAMES, type AnyMechanismName } from './model/crypto-mechanisms.js';

const hex = z.string().regex(/^([0-9a-fA-F]{2})+$/, 'must be hex bytes, e.g. "01" or "a1b2"');

export const PinSourceSchema = z.union([z.strictObject({ env: z.string().min(1) }), z.strictObject({ file: z.string().min(1) })], {
  error: 'pin must be {"env": "VAR"} or {"file": "path"}; a PIN itself never goes in the config',
});

/** A string that encodes to UTF-8 as it is (no lone surrogate, which would be stored as U+FFFD) in at most `max` bytes. */
const utf8Text = (max: number) =>
  z
    .string()
    .min(1)
    .refine((v) => isWellFormed(v), { message: 'must be well-formed text (it has a lone surrogate, which a token would store as U+FFFD)' })
    .refine((v) => Buffer.byteLength(v) <= max, { message: `must be at most ${max} bytes in UTF-8` });

/** A PKCS#11 URI (RFC 7512) in the config, read once here by `read` (pkcs11-uri.ts: a PIN in it is refused). */
function uriIn<T>(read: (uri: Pkcs11Uri) => T) {
  // Any string takes this branch, so its own message (not the union's) is the one reported.
  return z.string().transform((uri, ctx): T => {
    if (!isPkcs11Uri(uri)) {
      ctx.addIssue({ code: 'custom', message: 'must be a PKCS#11 URI ("pkcs11:…"), or an object' });
      return z.NEVER;
    }
    try {
      return read(parsePkcs11Uri(uri));
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
      return z.NEVER;
    }
  });
}

const TokenSelectorObjectSchema = z.union(
  [
    // CK_TOKEN_INFO's label and serial are blank-padded to 32 and 16 bytes.
    z.strictObject({ label: utf8Text(32) }),
    z.strictObject({ serial: utf8Text(16) }),
    z.strictObject({ slotIndex: z.number().int().min(0) }),
  ],
  { error: 'token must be one of {"label": "..."}, {"serial": "..."}, {"slotIndex": n} or a PKCS#11 URI' },
);

export const TokenSelectorSchema = z.union([
  uriIn(tokenOfUri),
  TokenSelectorObjectSchema,
]);

const MechanismNameSchema = z.enum([...MECHANISM_NAMES, ...CRYPTO_MECHANISM_NAMES] as [AnyMechanismName, ...AnyMechanismName[]]);
const AllowListSchema = z.array(MechanismNameSchema).min(1);

const KeyRefObjectSchema = z
  .strictObject({
    label: utf8Text(256).optional(),
    id: hex.optional(),
    /** The key's certificate, by its own label or id (not both); getCertificate and signJws (x5c) use it. */
    certLabel: utf8Text(256).optional(),
    certId: hex.optional(),
    allowedMechanisms: AllowListSchema.optional(),
  })
  .refine((k) => k.label !== undefined || k.id !== undefined, { message: 'a key names its label, its id, or both' })
  .refine((k) => k.certLabel === undefined || k.certId === undefined, { message: 'name the certificate by certLabel or certId, not both', path: ['certId'] });

/**
 * A key ref: `{ label?, id?, … }`, or the key's PKCS#11 URI (`object` is the label, `id` the
 * CKA_ID, `on` what else it names: the slot's token, slot and library must match it).
 */
export const KeyRefSchema = z.union([
  uriIn((uri): z.output<typeof KeyRefObjectSchema> & { on?: DeviceMatch | undefined } => ({ ...keyOfUri(uri), certLabel: undefined, certId: undefined, allowedMechanisms: undefined })),
  KeyRefObjectSchema,
]);

export const RestartPolicySchema = z.strictObject({
  /** At most this many restarts of the slot's workers within `windowMs`; one more marks the slot failed. */
  maxRestarts: z.number().int().min(0).default(5),
  windowMs: z.number().int().min(1).default(60_000),
  backoffInitialMs: z.number().int().min(0).default(100),
  backoffMaxMs: z.number().int().min(0).default(5_000),
});

export const SlotSchema = z
  .strictObject({
    module: z.string().min(1),
    token: TokenSelectorSchema,
    /**
     * token: a PIN-protected USB token or smart card: one worker, a PIN source, lazy by default.
     * hsm: a network or soft HSM: pools allowed. cloud: a cloud HSM module that authenticates
     * with cloud credentials: pools allowed, no login, no PIN source.
     */
    type: z.enum(['token', 'hsm', 'cloud']).default('token'),
    poolSize: z.number().int().min(1).max(64).default(1),
    pin: PinSourceSchema.optional(),
    keys: z.record(z.string().min(1), KeyRefSchema).default({}),
    /** Log out after this long without a call; 0 keeps the login. Default: the global sessionTimeoutMs. */
    idleTimeoutMs: z.number().int().min(0).optional(),
    /** Log the Security Officer out after this long without a call (user calls are refused while it is logged in); 0 keeps the login. */
    soIdleTimeoutMs: z.number().int().min(0).default(60_000),
    /** After an idle logout: `prompt` asks the PIN chain again; `fail` waits for an explicit login(). */
    reauthentication: z.enum(['prompt', 'fail']).default('prompt'),
    queueLimit: z.number().int().min(1).max(1_000_000).default(1000),
    callTimeoutMs: z.number().int().min(1).default(30_000),
    /** Default deadline of generateKeyPair: TPMs and smart cards take seconds to minutes for an RSA key, and the hung-call watchdog must not take that for a wedge. */
    keyGenTimeoutMs: z.number().int().min(1).default(300_000),
    /**
     * How long a worker thread spins for its next call, and the main thread keeps turning for a
     * lone call's reply beyond the call's usual time, before sleeping: waking a sleeping thread
     * costs tens of µs on a VM. Only while the busy threads fit on the cores, and only for calls
     * of up to 2 ms (not a network HSM's); a lightly loaded slot spends CPU on it with every
     * call; 0 never spins.
     */
    idleSpinMs: z.number().min(0).max(100).default(1),
    /** How long past its deadline a call may keep the worker before the worker is declared wedged and replaced. */
    hungCallGraceMs: z.number().int().min(0).default(1_000),
    /** Open on first use. Default: true for a token (the daemon starts without it plugged in), false otherwise. */
    lazy: z.boolean().optional(),
    allowedMechanisms: AllowListSchema.optional(),
    /**
     * Health probe period: C_GetSessionInfo on idle workers (keepalive), token presence for a
     * failed slot. 0 turns polling off (cards that dislike it): the module's slot events, where
     * it has them, still make the probe look at once.
     */
    probeIntervalMs: z.number().int().min(0).default(30_000),
    /** Larger inputs are refused with BAD_INPUT before they are copied to a worker; hash big documents first. */
    maxDataBytes: z.number().int().min(1).max(2 ** 30).default(16 * 1024 * 1024),
    /** R/O sessions; key generation, import, destruction and SO operations are refused with READ_ONLY. */
    readOnly: z.boolean().default(false),
    /** verify runs in Node with the token's public key, so it never queues behind signatures. */
    softwareVerify: z.boolean().default(true),
    /**
     * How long a public key the token confirmed may answer a software verify (or a JWS header)
     * without asking the token again. 0: every verify waits for a confirmation that began after
     * it arrived (one for all the verifies waiting together), so a replaced key is never trusted.
     */
    keyCheckMs: z.number().int().min(0).max(3_600_000).default(0),
    restart: RestartPolicySchema.default(() => RestartPolicySchema.parse({})),
  })
  .superRefine((slot, ctx) => {
    if (slot.type === 'cloud' && slot.pin !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['pin'], message: 'a "cloud" slot authenticates with cloud credentials: it takes no PIN source' });
    }
    if (slot.type === 'token' && slot.poolSize !== 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['poolSize'],
        message: 'a "token" slot has exactly one worker (USB tokens and smart cards serialize everything); use type "hsm" for a pool',
      });
    }
  });

export const ModuleSchema = z.strictObject({
  /** An absolute path: a bare name would be found through the library search path. */
  path: z.string().min(1).refine((p) => p.startsWith('/'), { message: 'must be an absolute path to the library, not a name looked up on the search path' }),
  /** The library file's SHA-256 (hex): a library that differs is refused at start. */
  sha256: z.string().regex(/^[0-9a-fA-F]{64}$/, 'must be 64 hex digits').optional(),
  /** Process environment the module reads at C_Initialize (e.g. SOFTHSM2_CONF). */
  env: z.record(z.string().min(1), z.string()).default({}),
  /**
   * The embedding application initializes this module itself, with CKF_OS_LOCKING_OK. Without
   * it, a module found initialized by other code gets at most one session thread: the
   * supervisor cannot know the flags used, and a module without locks breaks under threads.
   */
  applicationInitializesWithOsLocking: z.boolean().default(false),
  /**
   * Wait for tokens inserted and removed in C_WaitForSlotEvent, on a thread of its own, where
   * the module can. false for a module whose wait misbehaves; the probe interval remains.
   */
  slotEvents: z.boolean().default(true),
});

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const ROLES = ['service', 'operator', 'administrator', 'auditor'] as const;
export type Role = (typeof ROLES)[number];

/** What one role may do on one slot: every key, or only the key refs listed. */
const GrantSchema = z.strictObject({ keys: z.array(z.string().min(1)).min(1).optional() });

/** A token bucket: `perSecond` requests refill it, `burst` is its size. */
const RateLimitSchema = z.strictObject({ perSecond: z.number().positive().max(1_000_000), burst: z.number().int().min(1).max(1_000_000) });

export const PolicySchema = z.strictObject({
  /** Per slot, the roles allowed on it. A slot not listed here refuses every caller. */
  slots: z.record(z.string().min(1), z.partialRecord(z.enum(ROLES), GrantSchema)),
  /** The roles of each authenticated principal of the service API (a SPIFFE ID, DNS name, CN, JWT subject or the socket's principal). */
  principals: z.record(z.string().min(1).max(256), z.array(z.enum(ROLES))).default({}),
  /** Service API requests per principal, by role (a principal with several roles gets the most generous). A role not listed is not limited. */
  rateLimits: z.partialRecord(z.enum(ROLES), RateLimitSchema).default({}),
});

/** A file the daemon reads (relative paths from the working directory). */
const filePath = z.string().min(1);

export const ApiSchema = z.strictObject({
  /** The local socket: callers act as `principal`; the file mode (octal) says who may connect. */
  unix: z
    .strictObject({
      path: filePath.refine(fitsSocketPath, SOCKET_PATH_MESSAGE),
      mode: z
        .string()
        .regex(/^0?[0-7]{3}$/, 'must be an octal file mode, e.g. "0660"')
        // Connecting takes write permission: "others" with it would be every local user, acting as the principal.
        .refine((m) => (parseInt(m, 8) & 0o002) === 0, 'lets every local user connect and act as api.unix.principal; share the socket through its group instead (e.g. "0660")')
        .default('0660'),
      principal: z.string().min(1).max(256).default('local'),
    })
    .optional(),
  /** The network listener: TLS 1.3 only, client certificates required and verified (mutual TLS). */
  tls: z
    .strictObject({
      host: z.string().min(1).default('0.0.0.0'),
      port: z.number().int().min(0).max(65535).default(9443),
      cert: filePath,
      key: filePath,
      /** The CA(s) whose client certificates are accepted. */
      clientCa: filePath,
      /**
       * PEM CRLs of the client CAs: a revoked client certificate is refused in the handshake. Once
       * given, every CA of a client's chain needs a current CRL in the file (OpenSSL checks them
       * all), and one past its nextUpdate refuses every client: replace it before then (it is
       * re-read like the other files; pkcs11_api_tls_expiry_timestamp_seconds says when).
       */
      crl: filePath.optional(),
      /** Which part of the client certificate names the principal; each falls back to the next: uri-san (SPIFFE ID), dns-san, cn. */
      principalFrom: z.enum(['uri-san', 'dns-san', 'cn']).default('uri-san'),
      /** How often the certificate, key and CA files are checked for a change (cert-manager rotates them). */
      reloadIntervalMs: z.number().int().min(100).max(3_600_000).default(10_000),
    })
    .optional(),
  /** Bearer tokens (optional): a request that carries one acts as its subject, with roles from `rolesClaim`. */
  jwt: z
    .strictObject({
      jwks: filePath,
      issuer: z.string().min(1),
      audience: z.string().min(1),
      rolesClaim: z.string().min(1).default('roles'),
    })
    .optional(),
  /** Connections past this, on each listener, are closed at once. */
  maxConnections: z.number().int().min(1).max(65_536).default(1024),
  /** Large request bodies (64 KiB and up) being read or answered at once, in bytes; past it a request is 429 QUEUE_FULL (one is always let in). */
  maxBodyBytesInFlight: z.number().int().min(2 ** 20).default(64 * 2 ** 20),
  /** A request whose headers, or whole body, take longer than this to arrive is closed (slowloris); so is a connection idle this long. */
  requestTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
});

const ConfigObjectSchema = z
  .strictObject({
    modules: z.record(z.string().min(1), ModuleSchema),
    /** Mechanisms any slot may use; a slot's or key's own list narrows it. */
    allowedMechanisms: AllowListSchema.optional(),
    /** Idle logout that slots inherit unless they set idleTimeoutMs. */
    sessionTimeoutMs: z.number().int().min(0).default(300_000),
    slots: z.record(z.string().min(1), SlotSchema).refine((s) => Object.keys(s).length > 0, { message: 'configure at least one slot' }),
    metrics: z
      .strictObject({
        enabled: z.boolean().default(true),
        host: z.string().min(1).default('127.0.0.1'),
        port: z.number().int().min(0).max(65535).default(9464),
        /** Connections past this are closed at once: a flood cannot take the descriptors the tokens need. */
        maxConnections: z.number().int().min(1).max(65_536).default(64),
        /** A connection idle this long (or whose request takes longer) is closed. */
        idleTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
      })
      .default(() => ({ enabled: true, host: '127.0.0.1', port: 9464, maxConnections: 64, idleTimeoutMs: 10_000 })),
    /** Append-only, hash-chained JSON-lines audit trail of logins, key changes and every sign/verify. */
    audit: z
      .strictObject({
        path: z.string().min(1),
        /** batched: written every flushMs off the call path; durable: a call's result is returned only once its record is on disk. */
        mode: z.enum(['batched', 'durable']).default('batched'),
        flushMs: z.number().int().min(1).max(60_000).default(200),
        /** Refuse audited calls while the trail cannot be written (durable mode always does). */
        failClosed: z.boolean().default(false),
        /** Past this size the file is renamed to `<path>.<n>` (n = 1, 2, …) and a new file continues the chain. */
        maxBytes: z.number().int().min(4096).optional(),
        /** Records held in memory while the trail cannot be written; past this, audited calls are refused in batched mode too. */
        maxQueuedBytes: z.number().int().min(4096).default(64 * 2 ** 20),
      })
      .optional(),
    /** The service API: the client API for other processes, on a local socket and over mutual TLS. */
    api: ApiSchema.optional(),
    /** Callers and roles. Without it every caller may do everything (one trusted application). */
    policy: PolicySchema.optional(),
    /** Without a level: `info` for the daemon, `warn` for a library in someone else's process. `LOG_LEVEL` overrides either. */
    log: z.strictObject({ level: z.enum(LOG_LEVELS).optional() }).default(() => ({})),
  })
  .superRefine((cfg, ctx) => {
    for (const [name, slot] of Object.entries(cfg.slots)) {
      if (!Object.hasOwn(cfg.modules, slot.module)) {
        ctx.addIssue({
          code: 'custom',
          path: ['slots', name, 'module'],
          message: `names module "${slot.module}", which is not in "modules" (${Object.keys(cfg.modules).join(', ') || 'none defined'})`,
        });
      }
      const global = cfg.allowedMechanisms;
      if (global && slot.allowedMechanisms && !slot.allowedMechanisms.some((m) => global.includes(m))) {
        ctx.addIssue({ code: 'custom', path: ['slots', name, 'allowedMechanisms'], message: `shares no mechanism with the global allowedMechanisms (${global.join(', ')})` });
      }
    }
    for (const [name, roles] of Object.entries(cfg.policy?.slots ?? {})) {
      const slot = cfg.slots[name];
      if (!slot) {
        ctx.addIssue({ code: 'custom', path: ['policy', 'slots', name], message: `is not a configured slot (${Object.keys(cfg.slots).join(', ')})` });
        continue;
      }
      for (const [role, grant] of Object.entries(roles)) {
        grant?.keys?.forEach((ref, i) => {
          if (!Object.hasOwn(slot.keys, ref)) ctx.addIssue({ code: 'custom', path: ['policy', 'slots', name, role, 'keys', i], message: `"${ref}" is not a key ref of slot "${name}"` });
        });
      }
    }
    if (cfg.api?.tls && !cfg.policy) {
      ctx.addIssue({ code: 'custom', path: ['api', 'tls'], message: 'a network listener needs a policy: without one, every holder of a client certificate could do everything' });
    }
    if (cfg.api && !cfg.api.unix && !cfg.api.tls) ctx.addIssue({ code: 'custom', path: ['api'], message: 'names no listener: configure api.unix, api.tls or both' });
    // A library is initialized once per process: one library, one set of module settings.
    const byPath = new Map<string, string>();
    for (const [name, mod] of Object.entries(cfg.modules)) {
      const other = byPath.get(mod.path);
      if (other && JSON.stringify(cfg.modules[other]) !== JSON.stringify(mod)) {
        ctx.addIssue({ code: 'custom', path: ['modules', name], message: `loads the same library as module "${other}" with different settings; a library is initialized once per process` });
      }
      byPath.set(mod.path, other ?? name);
    }
  });

/** Cross-field defaults, resolved once here so the rest of the code reads plain values. */
export const ConfigSchema = ConfigObjectSchema.transform((cfg) => ({
  ...cfg,
  slots: Object.fromEntries(
    Object.entries(cfg.slots).map(([name, slot]) => [
      name,
      { ...slot, lazy: slot.lazy ?? slot.type === 'token', idleTimeoutMs: slot.idleTimeoutMs ?? cfg.sessionTimeoutMs },
    ]),
  ),
}));

export type Config = z.output<typeof ConfigSchema>;
export type ConfigObject = z.output<typeof ConfigObjectSchema>;
export type ConfigInput = z.input<typeof ConfigSchema>;
export type SlotConfig = Config['slots'][string];
export type ModuleConfig = z.output<typeof ModuleSchema>;
export type KeyRefConfig = z.output<typeof KeyRefSchema>;
export type PinSource = z.output<typeof PinSourceSchema>;
export type Policy = z.output<typeof PolicySchema>;
export type ApiConfig = z.output<typeof ApiSchema>;
