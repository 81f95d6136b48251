/**
 * The ClearML-compatible session token (SPEC section 5 step 10) and its verification on every
 * authenticated request. Verifying an HS256 JWT costs more than the rest of a small request, so
 * verified tokens are cached (bounded, insertion-ordered eviction) with the identity already built,
 * and a hit costs one map look-up, an expiry comparison and the revocation check, synchronously
 * when the revocation store answers synchronously (see `benchmarks` in docs/performance.md).
 */
import { webcrypto } from 'node:crypto'
import { jwtVerify, SignJWT } from 'jose'
import type { Company, DirectoryUser, Role } from './directory.js'
import { randomToken } from './crypto.js'
import type { RevocationStore } from './revocations.js'

export interface SessionIdentity {
  company: string
  user: string
  user_name: string
  role: Role
  company_name: string
}

export interface SessionClaims {
  auth_type: 'Bearer'
  identity: SessionIdentity
  session_id: string
  sso?: { provider: string, sid?: string }
  iat: number
  exp: number
}

/** Which kind of credential a request presented (SPEC section 10). */
export type CredentialKind = 'session' | 'keycloak'

/**
 * What `authenticate` puts on `request.clearmlIdentity`: the identity, the session id (a Keycloak
 * token's `sid`) and expiry, and which kind of credential it came from.
 */
export interface ClearmlIdentity extends SessionIdentity {
  session_id: string
  exp: number
  credential: CredentialKind
}

/** A verified session: the token's claims, and the identity built from them once. */
export interface VerifiedSession {
  claims: SessionClaims
  /** Frozen and shared by every request that presents the same token. */
  identity: Readonly<ClearmlIdentity>
  /** Revocation key of its Keycloak session, when it has one (back-channel logout). */
  keycloakSessionKey?: string
}

/** Revocation key under which a back-channel logout revokes every session of one Keycloak session. */
export function keycloakSessionKey (sid: string): string {
  return `keycloak-sid:${sid}`
}

export interface IssuedSession {
  token: string
  sessionId: string
  expiresAt: number
}

export interface SessionOptions {
  secret: string | undefined
  lifetimeSec: number
  revocations: RevocationStore
  cacheMax?: number
}

export class SessionTokens {
  // Imported once: jose would otherwise import the raw secret into WebCrypto on every operation.
  readonly #key: Promise<webcrypto.CryptoKey> | undefined
  readonly #lifetimeSec: number
  readonly #revocations: RevocationStore
  readonly #cache = new Map<string, VerifiedSession>()
  readonly #cacheMax: number

  constructor (options: SessionOptions) {
    this.#key = options.secret === undefined
      ? undefined
      : webcrypto.subtle.importKey('raw', new TextEncoder().encode(options.secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify'])
    this.#lifetimeSec = options.lifetimeSec
    this.#revocations = options.revocations
    this.#cacheMax = options.cacheMax ?? 10_000
  }

  /** How many verified tokens are cached; for tests and benchmarks. */
  get cacheSize (): number {
    return this.#cache.size
  }

  newSessionId (): string {
    return randomToken(16)
  }

  expiresAt (now = Math.floor(Date.now() / 1000)): number {
    return now + this.#lifetimeSec
  }

  async issue (user: DirectoryUser, company: Company, sessionId: string, sid: string | undefined): Promise<IssuedSession> {
    if (this.#key === undefined) throw new Error('token_secret is not configured')
    const iat = Math.floor(Date.now() / 1000)
    const exp = iat + this.#lifetimeSec
    const identity: SessionIdentity = { company: company.id, user: user.id, user_name: user.name, role: user.role, company_name: company.name }
    const token = await new SignJWT({
      auth_type: 'Bearer',
      identity,
      session_id: sessionId,
      sso: sid === undefined ? { provider: 'keycloak' } : { provider: 'keycloak', sid }
    }).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt(iat).setExpirationTime(exp).sign(await this.#key)
    return { token, sessionId, expiresAt: exp }
  }

  /**
   * The fast path: a cached session, or `null` when it expired or is revoked; `undefined` when only
   * the slow path can tell (not cached yet, or a revocation store that answers asynchronously).
   */
  cached (token: string): VerifiedSession | null | undefined {
    const session = this.#cache.get(token)
    if (session === undefined) return undefined
    if (session.claims.exp <= Date.now() / 1000) {
      this.#cache.delete(token)
      return null
    }
    const revoked = this.#revocations.isRevoked(session.claims.session_id, session.claims.iat)
    if (revoked !== false) return revoked === true ? null : undefined
    if (session.keycloakSessionKey === undefined) return session
    const ended = this.#revocations.isRevoked(session.keycloakSessionKey, session.claims.iat)
    if (ended === false) return session
    return ended === true ? null : undefined
  }

  /** The session when the token is valid, unexpired and not revoked; otherwise `null`. */
  async verify (token: string): Promise<VerifiedSession | null> {
    const fast = this.cached(token)
    if (fast !== undefined) return fast
    let session = this.#cache.get(token)
    if (session === undefined) {
      if (this.#key === undefined) return null
      let claims: SessionClaims
      try {
        const { payload } = await jwtVerify(token, await this.#key, { algorithms: ['HS256'], requiredClaims: ['exp', 'iat'] })
        if (!isSessionClaims(payload)) return null
        claims = payload
      } catch {
        return null
      }
      session = {
        claims,
        identity: Object.freeze({ ...claims.identity, session_id: claims.session_id, exp: claims.exp, credential: 'session' }),
        keycloakSessionKey: typeof claims.sso?.sid === 'string' ? keycloakSessionKey(claims.sso.sid) : undefined
      }
      if (this.#cache.size >= this.#cacheMax) this.#cache.delete(this.#cache.keys().next().value!)
      this.#cache.set(token, session)
      const again = this.cached(token)
      if (again !== undefined) return again
    }
    const { session_id: sessionId, iat } = session.claims
    if (await this.#revocations.isRevoked(sessionId, iat)) return null
    return session.keycloakSessionKey !== undefined && await this.#revocations.isRevoked(session.keycloakSessionKey, iat) ? null : session
  }
}

function isSessionClaims (payload: Record<string, unknown>): payload is SessionClaims & Record<string, unknown> {
  const identity = payload.identity as Record<string, unknown> | undefined
  return payload.auth_type === 'Bearer' && typeof payload.session_id === 'string' &&
    typeof identity === 'object' && identity !== null && typeof identity.user === 'string' && typeof identity.company === 'string'
}
