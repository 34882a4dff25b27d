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
      const { payload } = await jwtVerify(token, this.keys, { issuer: this.config.issuer, audience: this.config.audience, requiredClaims: ['sub', 'exp'] });
      return { id: payload.sub!, roles: rolesFromClaim(payload[this.config.rolesClaim]) };
    } catch (e) {
      throw new Pkcs11SupervisorError('UNAUTHENTICATED', `the bearer token is not valid: ${(e as Error).message}`);
    }
  }
}
