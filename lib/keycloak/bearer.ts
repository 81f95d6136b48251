/**
 * Keycloak access tokens as bearer credentials for API clients (SPEC section 10): scripts, CLIs and
 * service accounts that hold a Keycloak token rather than a ClearML session.
 *
 * A token is verified once with jose (signature, `iss`, `exp`, `iat`, `typ` Bearer, `azp` or an
 * allowed audience), its ClearML user found (or, with `provision`, admitted by the login rules), and
 * the resulting identity cached until the token expires. A repeated token then costs one map look-up,
 * an expiry comparison and the revocation check of its Keycloak session, synchronously: the same as a
 * cached ClearML session. Concurrent first requests with one token share one verification, so a new
 * token never runs the login rules twice at once. Past `cacheMax` tokens, a token not cached is
 * kept one time in 16 and otherwise verified again on its next request (`CredentialCache`).
 */
import type { JWTPayload } from 'jose'
import { CredentialCache, undecided } from '../session/credential-cache.js'
import { isCanonicalCompactJws } from '../crypto.js'
import type { Company, DirectoryUser } from '../directory/user-directory.js'
import { SsoError } from '../errors.js'
import type { RevocationStore } from '../session/revocations.js'
import { keycloakSessionKey, type ClearmlIdentity } from '../session/claims.js'

export interface BearerOptions {
  /** Accept Keycloak access tokens in `Authorization: Bearer` (default false). */
  keycloak?: boolean
  /** Audiences accepted besides this client as `azp` (another client's token, Audience mapper). */
  audiences?: string[]
  /** Run the login rules (steps 5–9) for a token whose user ClearML does not have yet (default false). */
  provision?: boolean
  /** How many verified tokens are kept (default 10,000). */
  cacheMax?: number
}

/** The ClearML user and company a verified token stands for. */
export type BearerUser = { user: DirectoryUser, company: Company }

export interface KeycloakBearerDeps {
  verify: (token: string) => Promise<JWTPayload>
  /** Finds (or admits) the token's user; throws `SsoError` with the refusal's code. */
  userOf: (claims: JWTPayload) => Promise<BearerUser>
  revocations: RevocationStore
  cacheMax?: number
}

interface VerifiedBearer {
  identity: Readonly<ClearmlIdentity>
  iat: number
  /** Revocation key of its Keycloak session (back-channel logout), when the token names one. */
  keycloakSessionKey?: string
}

export class KeycloakBearerTokens {
  readonly #deps: KeycloakBearerDeps
  readonly #cache: CredentialCache<VerifiedBearer>
  readonly #pending = new Map<string, Promise<VerifiedBearer>>()

  constructor (deps: KeycloakBearerDeps) {
    this.#deps = deps
    this.#cache = new CredentialCache<VerifiedBearer>(deps.cacheMax ?? 10_000)
  }

  /**
   * The fast path: the identity of a cached token, or `null` when it expired or its Keycloak session
   * ended; `undefined` when only the slow path can tell (not cached, or an asynchronous store).
   */
  cached (token: string): Readonly<ClearmlIdentity> | null | undefined {
    const verified = this.#cache.get(token)
    if (verified === undefined) return undefined
    if (verified.identity.exp <= Date.now() / 1000) {
      this.#cache.delete(token)
      return null
    }
    if (verified.keycloakSessionKey === undefined) return verified.identity
    const ended = this.#deps.revocations.isRevoked(verified.keycloakSessionKey, verified.iat, verified.identity.user)
    if (ended === false) return verified.identity
    return ended === true ? null : undecided(ended)
  }

  /**
   * The slow path, for a token `cached` could not decide: the identity of a valid token; throws
   * `SsoError` (`invalid_token`, or a policy code) otherwise. A token `cached` found (its store
   * answering asynchronously) is not verified again: only its revocation is awaited.
   */
  async verify (token: string): Promise<Readonly<ClearmlIdentity>> {
    // Decoders accept other spellings of one token (whitespace, padding, trailing bits): each would
    // be a new cache entry and a new directory look-up. Keycloak writes the canonical one only.
    if (!isCanonicalCompactJws(token)) throw new SsoError('invalid_token', 'the bearer token is not a JWT in its compact, canonical form')
    const verified = this.#cache.get(token) ?? await this.#verifyShared(token)
    if (verified.keycloakSessionKey !== undefined && await this.#deps.revocations.isRevoked(verified.keycloakSessionKey, verified.iat, verified.identity.user)) {
      throw new SsoError('invalid_token', 'the Keycloak session of this token was logged out (back-channel logout)')
    }
    // Cached only once it passed: a logged-out token is never admitted.
    if (!this.#cache.has(token)) this.#cache.add(token, verified)
    return verified.identity
  }

  /** One verification per token at a time, whatever the number of requests waiting on it. */
  #verifyShared (token: string): Promise<VerifiedBearer> {
    let pending = this.#pending.get(token)
    if (pending === undefined) {
      pending = this.#verifyOnce(token).finally(() => { this.#pending.delete(token) })
      this.#pending.set(token, pending)
    }
    return pending
  }

  async #verifyOnce (token: string): Promise<VerifiedBearer> {
    const claims = await this.#deps.verify(token)
    const { user, company } = await this.#deps.userOf(claims)
    const sid = typeof claims.sid === 'string' && claims.sid !== '' ? claims.sid : undefined
    const verified: VerifiedBearer = {
      identity: Object.freeze({
        company: company.id,
        user: user.id,
        user_name: user.name,
        role: user.role,
        company_name: company.name,
        // Keycloak's session id when the token has one; a service account's token has none.
        session_id: sid ?? (typeof claims.jti === 'string' ? claims.jti : ''),
        exp: claims.exp!,
        credential: 'keycloak' as const
      }),
      iat: claims.iat!,
      keycloakSessionKey: sid === undefined ? undefined : keycloakSessionKey(sid)
    }
    return verified
  }
}
