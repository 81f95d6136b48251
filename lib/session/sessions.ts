/**
 * The ClearML-compatible session token (SPEC section 5 step 10) and its verification on every
 * authenticated request. Verified tokens are cached with the identity already built (least recently
 * used evicted first; see `CredentialCache`), so a hit costs one map look-up, an expiry comparison and
 * the revocation check.
 * A token not in the cache is verified synchronously (`token-verifier.ts`), so the cost of a request
 * hardly depends on how many sessions are active (docs/performance.md, "Many sessions").
 */
import { webcrypto } from 'node:crypto'
import { SignJWT } from 'jose'
import type { Company, DirectoryUser } from '../directory/user-directory.js'
import { randomToken } from '../crypto.js'
import type { RevocationStore } from './revocations.js'
import { epochSeconds, SessionTokenVerifier } from './token-verifier.js'
import { CredentialCache, undecided } from './credential-cache.js'
import { keycloakSessionKey, type ClearmlIdentity, type SessionClaims, type SessionIdentity } from './claims.js'

/** A verified session: the token's claims, and the identity built from them once. */
export interface VerifiedSession {
  claims: SessionClaims
  /** Frozen and shared by every request that presents the same token. */
  identity: Readonly<ClearmlIdentity>
  /** Revocation key of its Keycloak session, when it has one (back-channel logout). */
  keycloakSessionKey?: string
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
  /** How many verified sessions are kept; 0 keeps none. Default `DEFAULT_SESSION_CACHE_MAX`. */
  cacheMax?: number
}

/**
 * Room for 100,000 active sessions: about 100 MB of heap (measured per cached session by
 * `npm run bench`; docs/performance.md). Past it, a request whose session was evicted pays a
 * synchronous HS256 verification, a few microseconds.
 */
export const DEFAULT_SESSION_CACHE_MAX = 100_000

export class SessionTokens {
  // Imported once: jose would otherwise import the raw secret into WebCrypto on every signature.
  readonly #signingKey: Promise<webcrypto.CryptoKey> | undefined
  readonly #verifier: SessionTokenVerifier | undefined
  readonly #lifetimeSec: number
  readonly #revocations: RevocationStore
  readonly #cache: CredentialCache<VerifiedSession>

  constructor (options: SessionOptions) {
    const cacheMax = options.cacheMax ?? DEFAULT_SESSION_CACHE_MAX
    if (!Number.isSafeInteger(cacheMax) || cacheMax < 0) throw new TypeError('fastify-clearml-keycloak: "sessionCacheMax" must be a whole number, 0 or more')
    this.#signingKey = options.secret === undefined
      ? undefined
      : webcrypto.subtle.importKey('raw', new TextEncoder().encode(options.secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
    this.#verifier = options.secret === undefined ? undefined : new SessionTokenVerifier(options.secret)
    this.#lifetimeSec = options.lifetimeSec
    this.#revocations = options.revocations
    this.#cache = new CredentialCache<VerifiedSession>(cacheMax)
  }

  /** How many verified tokens are cached; for tests and benchmarks. */
  get cacheSize (): number {
    return this.#cache.size
  }

  /** Whether the token's session is cached (asking does not count as a use); for tests and benchmarks. */
  isCached (token: string): boolean {
    return this.#cache.has(token)
  }

  newSessionId (): string {
    return randomToken(16)
  }

  expiresAt (now = Math.floor(Date.now() / 1000)): number {
    return now + this.#lifetimeSec
  }

  async issue (user: DirectoryUser, company: Company, sessionId: string, sid: string | undefined): Promise<IssuedSession> {
    if (this.#signingKey === undefined) throw new Error('token_secret is not configured')
    const iat = Math.floor(Date.now() / 1000)
    const exp = iat + this.#lifetimeSec
    const identity: SessionIdentity = { company: company.id, user: user.id, user_name: user.name, role: user.role, company_name: company.name }
    const token = await new SignJWT({
      auth_type: 'Bearer',
      identity,
      session_id: sessionId,
      // Without a Keycloak session, `sid: undefined` is left out of the JSON: `{ provider: 'keycloak' }`.
      sso: { provider: 'keycloak', sid }
    }).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt(iat).setExpirationTime(exp).sign(await this.#signingKey)
    return { token, sessionId, expiresAt: exp }
  }

  /**
   * The synchronous path: the session when the token is valid, unexpired and not revoked; `null`
   * when a cached token has expired or is revoked; `undefined` when only the slow path can tell: a
   * token that is not a valid session token (it may be another kind of credential), or a revocation
   * store that answers asynchronously. A valid token not cached yet is verified and cached here.
   */
  cached (token: string): VerifiedSession | null | undefined {
    const session = this.#cache.get(token) ?? this.#admit(token)
    return session === undefined ? undefined : this.#check(token, session)
  }

  /** The session when the token is valid, unexpired and not revoked; otherwise `null`. */
  async verify (token: string): Promise<VerifiedSession | null> {
    const session = this.#cache.get(token) ?? this.#admit(token)
    if (session === undefined) return null
    const fast = this.#check(token, session)
    if (fast !== undefined) return fast
    const { session_id: sessionId, iat } = session.claims
    if (await this.#revocations.isRevoked(sessionId, iat)) return null
    return session.keycloakSessionKey !== undefined && await this.#revocations.isRevoked(session.keycloakSessionKey, iat) ? null : session
  }

  /** Verifies a token that is not cached and caches it; `undefined` when it is not a valid session token. */
  #admit (token: string): VerifiedSession | undefined {
    const claims = this.#verifier?.verify(token) ?? null
    if (claims === null) return undefined
    const { company, user, user_name: userName, role, company_name: companyName } = claims.identity
    const session: VerifiedSession = {
      claims,
      // Field by field, not spread from the claims: on Node 20, once the copy site is warm, every
      // spread copy of parsed JSON gets a hidden class of its own, about 300 bytes more per cached
      // session, and the handlers that read the identity see a new shape each time.
      identity: Object.freeze({ company, user, user_name: userName, role, company_name: companyName, session_id: claims.session_id, exp: claims.exp, credential: 'session' }),
      keycloakSessionKey: typeof claims.sso?.sid === 'string' ? keycloakSessionKey(claims.sso.sid) : undefined
    }
    this.#cache.add(token, session)
    return session
  }

  /** Expiry and revocation of a verified session; `undefined` when the revocation store answers later. */
  #check (token: string, session: VerifiedSession): VerifiedSession | null | undefined {
    const { exp, iat, session_id: sessionId } = session.claims
    // The verifier's rule (jose's): expired from the second `exp` names.
    if (exp <= epochSeconds()) {
      this.#cache.delete(token)
      return null
    }
    const revoked = this.#revocations.isRevoked(sessionId, iat)
    if (revoked !== false) return revoked === true ? null : undecided(revoked)
    if (session.keycloakSessionKey === undefined) return session
    const ended = this.#revocations.isRevoked(session.keycloakSessionKey, iat)
    if (ended === false) return session
    return ended === true ? null : undecided(ended)
  }
}
