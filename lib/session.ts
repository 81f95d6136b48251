/**
 * The ClearML-compatible session token (SPEC section 5 step 10) and its verification on every
 * authenticated request. Verified tokens are cached with the identity already built (least recently
 * used evicted first; see `SessionCache`), so a hit costs one map look-up, an expiry comparison and
 * the revocation check.
 * A token not in the cache is verified synchronously (`session-token.ts`), so the cost of a request
 * hardly depends on how many sessions are active (docs/performance.md, "Many sessions").
 */
import { webcrypto } from 'node:crypto'
import { SignJWT } from 'jose'
import type { Company, DirectoryUser, Role } from './directory.js'
import { randomToken } from './crypto.js'
import type { RevocationStore } from './revocations.js'
import { epochSeconds, SessionTokenVerifier } from './session-token.js'

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
  readonly #cache: SessionCache

  constructor (options: SessionOptions) {
    const cacheMax = options.cacheMax ?? DEFAULT_SESSION_CACHE_MAX
    if (!Number.isSafeInteger(cacheMax) || cacheMax < 0) throw new TypeError('fastify-clearml-keycloak: "sessionCacheMax" must be a whole number, 0 or more')
    this.#signingKey = options.secret === undefined
      ? undefined
      : webcrypto.subtle.importKey('raw', new TextEncoder().encode(options.secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
    this.#verifier = options.secret === undefined ? undefined : new SessionTokenVerifier(options.secret)
    this.#lifetimeSec = options.lifetimeSec
    this.#revocations = options.revocations
    this.#cache = new SessionCache(cacheMax)
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
      sso: sid === undefined ? { provider: 'keycloak' } : { provider: 'keycloak', sid }
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

/**
 * An asynchronous answer the synchronous path does not wait for (the slow path asks again): its
 * failure must not become an unhandled rejection, which ends the process.
 */
function undecided (answer: Promise<boolean>): undefined {
  answer.catch(() => {})
  return undefined
}

/** A cached session in the recency list. */
interface CacheNode {
  token: string
  session: VerifiedSession
  /** Value of the admission counter when the node was last moved to the newest end. */
  movedAt: number
  newer: CacheNode | undefined
  older: CacheNode | undefined
}

/** When the cache is full, the share of sessions not in it that are admitted (see `SessionCache`). */
export const ADMISSION_WHEN_FULL = 1 / 16

/**
 * Verified sessions by token (the whole token: a key made of part of it would let a forged payload
 * borrow a genuine signature): a map to find a session, a list in order of use to find the one to
 * evict, the least recently used. (Evicting the first key of a `Map` instead, as this cache once
 * did, makes V8 walk over the slots of every key deleted before it since the table was last
 * rebuilt: microseconds per admission with 10,000 sessions, tens with 100,000.)
 *
 * Better than LRU when there are more active sessions than room: once full, a session not in the
 * cache is admitted (evicting the least recently used) only one time in 16, at random, and is
 * otherwise verified and served without being kept. Under round-robin traffic (agents polling, each
 * request from the next session) strict LRU evicts every session just before its next request and
 * hits never; this keeps a stable share of them, close to the best possible hit rate of room /
 * sessions, and a hot session still gets in after 16 requests on average (bimodal insertion,
 * Qureshi et al., "Adaptive insertion policies for high performance caching", ISCA 2007).
 *
 * A session is moved to the newest end at most once per half cache of admissions, so a hit on a
 * session in steady use costs one look-up and no writes (memcached bumps an item at most once a
 * minute for the same reason). The price: a session stays until `max` other sessions have been
 * admitted or moved since it was itself admitted or last moved, where strict LRU counts from its
 * last use.
 */
export class SessionCache {
  readonly #nodes = new Map<string, CacheNode>()
  readonly #max: number
  readonly #moveAfter: number
  readonly #random: () => number
  #admissions = 0
  #newest: CacheNode | undefined
  #oldest: CacheNode | undefined

  /** `random` is for tests: a seeded source makes the admissions of a full cache reproducible. */
  constructor (max: number, random: () => number = Math.random) {
    this.#max = max
    this.#moveAfter = Math.floor(max / 2)
    this.#random = random
  }

  get size (): number {
    return this.#nodes.size
  }

  get (token: string): VerifiedSession | undefined {
    const node = this.#nodes.get(token)
    if (node === undefined) return undefined
    if (this.#admissions - node.movedAt >= this.#moveAfter) {
      this.#unlink(node)
      this.#pushNewest(node)
      node.movedAt = this.#admissions
    }
    return node.session
  }

  has (token: string): boolean {
    return this.#nodes.has(token)
  }

  /** Caches the session of a verified token, unless the cache is full and the draw says no. */
  add (token: string, session: VerifiedSession): void {
    if (this.#max === 0) return
    if (this.#nodes.size >= this.#max) {
      if (this.#random() >= ADMISSION_WHEN_FULL) return
      this.#remove(this.#oldest!)
    }
    // A copy as the key: the token is usually a slice of the request's Cookie header, which the cache
    // would otherwise keep whole (other cookies included) for as long as it keeps the session. A
    // verified token is ASCII, so the latin1 round trip is exact.
    const key = Buffer.from(token, 'latin1').toString('latin1')
    const node: CacheNode = { token: key, session, movedAt: ++this.#admissions, newer: undefined, older: undefined }
    this.#nodes.set(key, node)
    this.#pushNewest(node)
  }

  delete (token: string): void {
    const node = this.#nodes.get(token)
    if (node !== undefined) this.#remove(node)
  }

  #remove (node: CacheNode): void {
    this.#unlink(node)
    this.#nodes.delete(node.token)
  }

  #unlink (node: CacheNode): void {
    if (node.newer === undefined) this.#newest = node.older
    else node.newer.older = node.older
    if (node.older === undefined) this.#oldest = node.newer
    else node.older.newer = node.newer
    node.newer = undefined
    node.older = undefined
  }

  #pushNewest (node: CacheNode): void {
    node.older = this.#newest
    if (this.#newest === undefined) this.#oldest = node
    else this.#newest.newer = node
    this.#newest = node
  }
}
