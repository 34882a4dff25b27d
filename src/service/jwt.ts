/**
 * Bearer tokens: JWTs verified with jose against a local JWKS file (read again when it
 * changes), with the configured issuer and audience. The subject is the principal and the
 * roles claim its roles. No network fetch of keys: the daemon trusts what its operator put on
 * disk.
 */
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose';
import type { ApiConfig, Role } from '../config-schema.js';
import { fieldRefused, Pkcs11SupervisorError } from '../model/errors.js';
import { rolesFromClaim } from './caller.js';
import { withoutBom } from '../file-text.js';
import { fileStamp } from './file-stamp.js';

type JwtConfig = NonNullable<ApiConfig['jwt']>;

/**
 * Seconds a token's nbf may lie ahead of this clock: an issuer whose clock runs a little ahead
 * (a Kubernetes service account token is used the moment it is minted, nbf at that second)
 * would otherwise see its fresh tokens refused.
 */
const NOT_BEFORE_LEEWAY_S = 5;

export class JwtVerifier {
  private keys: ReturnType<typeof createLocalJWKSet>;
  private stamp: string;
  private checkedAt = 0;

  constructor(private readonly config: JwtConfig) {
    this.stamp = fileStamp([config.jwks]);
    this.keys = this.load();
  }

  private load(): ReturnType<typeof createLocalJWKSet> {
    try {
      return createLocalJWKSet(JSON.parse(withoutBom(readFileSync(this.config.jwks, 'utf8'))) as JSONWebKeySet);
    } catch (e) {
      throw fieldRefused('api.jwt.jwks', (e as Error).message);
    }
  }

  /** At most once a second: a bearer request need not pay a stat() each. */
  private refresh(): void {
    const now = Date.now();
    if (now - this.checkedAt < 1000) return;
    this.checkedAt = now;
    const stamp = fileStamp([this.config.jwks]);
    if (stamp === this.stamp) return;
    try {
      this.keys = this.load();
      this.stamp = stamp;
    } catch {
      // a JWKS being replaced: keep the keys we have
    }
  }

  async verify(token: string): Promise<{ id: string; roles: Role[] }> {
    this.refresh();
    try {
      const { payload } = await jwtVerify(token, this.keys, { issuer: this.config.issuer, audience: this.config.audience, requiredClaims: ['sub', 'exp'], clockTolerance: NOT_BEFORE_LEEWAY_S });
      // The leeway is for a token just issued by a clock a little ahead; an expired one gets none.
      if (payload.exp! <= Math.floor(Date.now() / 1000)) throw new Error('"exp" claim timestamp check failed');
      return { id: payload.sub!, roles: rolesFromClaim(payload[this.config.rolesClaim]) };
    } catch (e) {
      throw new Pkcs11SupervisorError('UNAUTHENTICATED', `the bearer token is not valid: ${(e as Error).message}`);
    }
  }
}
