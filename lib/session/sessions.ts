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
import type { RevocationStore } from './revocations.js'
import { epochSeconds, SessionTokenVerifier } from './token-verifier.js'
import { CredentialCache, undecided } from './credential-cache.js'
import { keycloakSessionKey, sessionEndedKey, sessionIdentity, type ClearmlIdentity, type SessionClaims, type SessionFollows, type SessionIdentity } from './claims.js'
import type { SessionFollowStore, SessionRevision } from './follow-store.js'
import { isCanonicalCompactJws, randomToken } from '../crypto.js'

/** A verified session: the token's claims, and the identity built from them once. */
export interface VerifiedSession {
  claims: SessionClaims
  /** Frozen and shared by every request that presents the same token. */
  identity: Readonly<ClearmlIdentity>
  /** Revocation key of its Keycloak session, when it has one (back-channel logout). */
  keycloakSessionKey?: string
  /** The session as its newest revision has it, built once per revision (SPEC 12.3). */
  revised?: { version: number, view: VerifiedSession }
}

/** What `SessionTokens` asks of sessions that follow Keycloak (`revalidation.ts`, `follow-store.ts`). */
export interface SessionFollowing {
  gate: { admit: (session: VerifiedSession) => boolean, settle: (session: VerifiedSession) => Promise<void> }
  revisions: Pick<SessionFollowStore, 'revision'>
  /** Whether a revision is the plugin's own (its MAC verifies): any other is ignored. */
  genuine: (sessionId: string, revision: SessionRevision) => boolean
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
  /** Sessions that follow Keycloak (SPEC section 12); absent with `revalidate_sec` 0. */
  follow?: SessionFollowing
}

/**
 * Room for 100,000 active sessions: about 100 MB of heap (measured per cached session by
 * `npm run bench`; docs/performance.md). Past it, a request whose session was evicted pays a
 * synchronous HS256 verification, a few microseconds.
 */
export const DEFAULT_SESSION_CACHE_MAX = 100_000

/**
 * What `authenticate` yields for a session: `identity` (the token's, or a revision's) with the
 * session's id and expiry. Field by field, not spread from the claims, and from this one place: on
 * Node 20, once the copy site is warm, every spread copy of parsed JSON gets a hidden class of its
 * own, about 300 bytes more per cached session, and the handlers that read the identity see a new
 * shape each time.
 */
function clearmlIdentityOf (identity: SessionIdentity, claims: SessionClaims): Readonly<ClearmlIdentity> {
  const { company, user, user_name: userName, role, company_name: companyName } = identity
  return Object.freeze({ company, user, user_name: userName, role, company_name: companyName, session_id: claims.session_id, exp: claims.exp, credential: 'session' })
}

export class SessionTokens {
  // Imported once: jose would otherwise import the raw secret into WebCrypto on every signature.
  readonly #signingKey: Promise<webcrypto.CryptoKey> | undefined
  readonly #verifier: SessionTokenVerifier | undefined
  readonly #lifetimeSec: number
  readonly #revocations: RevocationStore
  readonly #cache: CredentialCache<VerifiedSession>
  readonly #follow: SessionFollowing | undefined

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
    this.#follow = options.follow
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

  /** `follows`: the session has a refresh token and follows Keycloak (SPEC section 12); its token says so. */
  async issue (user: DirectoryUser, company: Company, sessionId: string, sid: string | undefined, follows?: SessionFollows): Promise<IssuedSession> {
    if (this.#signingKey === undefined) throw new Error('token_secret is not configured')
    const iat = Math.floor(Date.now() / 1000)
    const exp = iat + this.#lifetimeSec
    const identity = sessionIdentity(user, company)
    const token = await new SignJWT({
      auth_type: 'Bearer',
      identity,
      session_id: sessionId,
      // Without a Keycloak session, `sid: undefined` is left out of the JSON: `{ provider: 'keycloak' }`;
      // so is `follows` for a session that does not follow Keycloak.
      sso: { provider: 'keycloak', sid, follows }
    }).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt(iat).setExpirationTime(exp).sign(await this.#signingKey)
    return { token, sessionId, expiresAt: exp }
  }

  /**
   * The synchronous path: the session when the token is valid, unexpired and not revoked; `null`
   * when it has expired or is revoked; `undefined` when only the slow path can tell: a token that is
   * not a valid session token (it may be another kind of credential), a revocation store that
   * answers asynchronously, or a session idle for so long that it must be revalidated at Keycloak
   * first. A valid token not cached yet is verified, checked, and cached only once it passed.
   */
  cached (token: string): VerifiedSession | null | undefined {
    const cached = this.#cache.get(token)
    const session = cached ?? this.#admissible(token)
    if (session === undefined) return undefined
    const { exp, iat, session_id: sessionId } = session.claims
    // The verifier's rule (jose's): expired from the second `exp` names.
    if (exp <= epochSeconds()) {
      if (cached !== undefined) this.#cache.delete(token)
      return null
    }
    const owner = session.identity.user
    let revoked = this.#revocations.isRevoked(sessionId, iat, owner)
    if (revoked === false && session.keycloakSessionKey !== undefined) revoked = this.#revocations.isRevoked(session.keycloakSessionKey, iat, owner)
    if (revoked !== false) {
      if (revoked !== true) return undecided(revoked)
      // A revoked session holds no place in the cache: it is refused, and stays refused.
      if (cached !== undefined) this.#cache.delete(token)
      return null
    }
    if (cached === undefined) this.#cache.add(token, session)
    const current = this.#current(session)
    return this.#follow === undefined || session.claims.sso?.follows === undefined || this.#follow.gate.admit(current) ? current : undefined
  }

  /** The session when the token is valid, unexpired and not revoked; otherwise `null`. Waits for what `cached` cannot. */
  async verify (token: string): Promise<VerifiedSession | null> {
    const cached = this.#cache.get(token)
    const session = cached ?? this.#admissible(token)
    if (session === undefined) return null
    if (session.claims.exp <= epochSeconds()) {
      if (cached !== undefined) this.#cache.delete(token)
      return null
    }
    if (await this.#revoked(session)) {
      if (cached !== undefined) this.#cache.delete(token)
      return null
    }
    if (cached === undefined) this.#cache.add(token, session)
    const current = this.#current(session)
    if (this.#follow === undefined || session.claims.sso?.follows === undefined || this.#follow.gate.admit(current)) return current
    await this.#follow.gate.settle(current)
    // The revalidation may have ended the session, or changed its identity.
    return await this.#revoked(session) ? null : this.#current(session)
  }

  /** Whether `token` is one of our session tokens (signed with our secret), valid or not any more. */
  isSessionToken (token: string): boolean {
    return this.#cache.has(token) || this.#admissible(token) !== undefined
  }

  /** Why a presented token is refused: `session_ended` when Keycloak ended its session (SPEC 12.3), else `invalid_token`. */
  async refusalOf (token: string): Promise<'session_ended' | 'invalid_token'> {
    const claims = (this.#cache.get(token) ?? this.#admissible(token))?.claims
    if (claims === undefined) return 'invalid_token'
    // With its owner, as the mark was made: a bounded store that forgot another user's revocations
    // must not make this session's refusal read as ended by Keycloak.
    return await this.#revocations.isRevoked(sessionEndedKey(claims.session_id), claims.iat, claims.identity.user) ? 'session_ended' : 'invalid_token'
  }

  async #revoked (session: VerifiedSession): Promise<boolean> {
    const { session_id: sessionId, iat } = session.claims
    const owner = session.identity.user
    if (await this.#revocations.isRevoked(sessionId, iat, owner)) return true
    return session.keycloakSessionKey !== undefined && await this.#revocations.isRevoked(session.keycloakSessionKey, iat, owner)
  }

  /** The session with the identity its newest revision gives it (SPEC 12.3: a token that says the old role is not accepted with it). */
  #current (session: VerifiedSession): VerifiedSession {
    const revision = this.#follow?.revisions.revision(session.claims.session_id)
    if (revision === undefined) return session
    const revised = session.revised
    if (revised !== undefined && revised.version === revision.version) return revised.view
    // Checked once per version: a revision the store made up (its MAC does not verify) changes nothing.
    if (!this.#follow!.genuine(session.claims.session_id, revision)) {
      session.revised = { version: revision.version, view: session }
      return session
    }
    const view: VerifiedSession = { claims: session.claims, identity: clearmlIdentityOf(revision.identity, session.claims), keycloakSessionKey: session.keycloakSessionKey }
    session.revised = { version: revision.version, view }
    return view
  }

  /**
   * A token not cached, verified; `undefined` when it is not a valid session token. Only the
   * compact form the plugin issues is read: other spellings that decoders accept (whitespace,
   * padding, non-zero trailing bits) are refused before any work, so one token is one cache entry.
   */
  #admissible (token: string): VerifiedSession | undefined {
    if (!isCanonicalCompactJws(token)) return undefined
    const claims = this.#verifier?.verify(token) ?? null
    if (claims === null) return undefined
    return {
      claims,
      identity: clearmlIdentityOf(claims.identity, claims),
      keycloakSessionKey: typeof claims.sso?.sid === 'string' ? keycloakSessionKey(claims.sso.sid) : undefined
    }
  }
}
