/**
 * The ClearML-compatible session token (SPEC section 5 step 10) and its verification on every
 * authenticated request. Verifying an HS256 JWT costs more than the rest of a small request, so
 * verified tokens are cached (bounded, insertion-ordered eviction) and a hit costs one map look-up,
 * an expiry comparison and the revocation check.
 */
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
  readonly #key: Uint8Array | undefined
  readonly #lifetimeSec: number
  readonly #revocations: RevocationStore
  readonly #cache = new Map<string, SessionClaims>()
  readonly #cacheMax: number

  constructor (options: SessionOptions) {
    this.#key = options.secret === undefined ? undefined : new TextEncoder().encode(options.secret)
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
    }).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt(iat).setExpirationTime(exp).sign(this.#key)
    return { token, sessionId, expiresAt: exp }
  }

  /** The token's claims when it is valid, unexpired and not revoked; otherwise `null`. */
  async verify (token: string): Promise<SessionClaims | null> {
    let claims = this.#cache.get(token)
    if (claims === undefined) {
      if (this.#key === undefined) return null
      try {
        const { payload } = await jwtVerify(token, this.#key, { algorithms: ['HS256'], requiredClaims: ['exp', 'iat'] })
        if (!isSessionClaims(payload)) return null
        claims = payload
      } catch {
        return null
      }
      if (this.#cache.size >= this.#cacheMax) this.#cache.delete(this.#cache.keys().next().value!)
      this.#cache.set(token, claims)
    }
    if (claims.exp <= Date.now() / 1000) {
      this.#cache.delete(token)
      return null
    }
    const revoked = this.#revocations.isRevoked(claims.session_id)
    if (revoked === true || (revoked !== false && await revoked)) return null
    return claims
  }
}

function isSessionClaims (payload: Record<string, unknown>): payload is SessionClaims & Record<string, unknown> {
  const identity = payload.identity as Record<string, unknown> | undefined
  return payload.auth_type === 'Bearer' && typeof payload.session_id === 'string' &&
    typeof identity === 'object' && identity !== null && typeof identity.user === 'string' && typeof identity.company === 'string'
}
