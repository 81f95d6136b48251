/**
 * Sessions that follow Keycloak (SPEC section 12), wired: the revalidation of `session/` with the
 * refresh grant and revocation of `keycloak/`, the token checks of a login, and the login's rules
 * (steps 4, 7, 8 and 9, never signup: the user exists). `KeycloakSso` keeps a session's refresh
 * token through it at login, and hands it the refresh tokens of a logout to revoke.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { JWTPayload } from 'jose'
import { settingName, type KeycloakConfig } from './config/settings.js'
import type { UserDirectory } from './directory/user-directory.js'
import { SsoError } from './errors.js'
import type { ProviderEndpoints } from './keycloak/discovery.js'
import { fetchUserinfo } from './keycloak/oidc-client.js'
import { refreshTokens, revokeRefreshToken, type ClientCredentials, type RefreshAnswer } from './keycloak/refresh.js'
import { SubjectMismatch, verifyAccessToken, verifyIdToken, type VerifyOptions } from './keycloak/tokens.js'
import { claimAt, mapClaims, type Claims } from './rules/identity.js'
import { applyLoginPlan, planLogin, PROVIDER } from './rules/login.js'
import { sessionEndedKey, sessionIdentity, type SessionFollows } from './session/claims.js'
import { followsSessions, type RefreshKey, type SessionFollowStore } from './session/follow-store.js'
import { MemoryFollowStore } from './session/memory-follow-store.js'
import { REFRESH_PURPOSE, SessionRevalidation, type Confirmation } from './session/revalidation.js'
import type { RevocationStore } from './session/revocations.js'
import { RevisionSigner, ServerSealer } from './session/sealed.js'
import type { SessionFollowing, VerifiedSession } from './session/sessions.js'

export interface FollowOptions {
  config: KeycloakConfig
  directory: UserDirectory
  endpoints: ProviderEndpoints
  /** Checks of tokens straight from the token endpoint (a login's). */
  verifyOptions: VerifyOptions
  revocations: RevocationStore
  sealingSecret: string
  log: FastifyBaseLogger
  memoryMax?: number
}

/** ID-token claims that describe the token, not the user, and must not shadow user claims. */
export function withoutProtocolClaims (claims: JWTPayload): Claims {
  const { aud, azp, nonce, typ, at_hash: atHash, c_hash: cHash, auth_time: authTime, exp, iat, ...rest } = claims
  return rest
}

export class KeycloakFollowing {
  readonly follows: SessionFollows
  readonly #options: FollowOptions
  readonly #store: SessionFollowStore
  readonly #revalidation: SessionRevalidation
  readonly #client: ClientCredentials
  readonly #signer: RevisionSigner
  #warnedNoRefreshToken = false

  constructor (options: FollowOptions) {
    const { config, revocations } = options
    this.#options = options
    this.follows = config.session.follows
    this.#client = { clientId: config.clientId, clientSecret: config.clientSecret, timeoutMs: config.httpTimeoutMs }
    this.#signer = new RevisionSigner(options.sealingSecret)
    // A host's store without the capability: refresh tokens stay in this process (SPEC 12.6).
    this.#store = followsSessions(revocations)
      ? revocations
      : new MemoryFollowStore({ maxStates: options.memoryMax, maxRevisions: options.memoryMax, revoke: revocations.revoke.bind(revocations) })
    this.#revalidation = new SessionRevalidation({
      periodSec: config.session.revalidateSec,
      store: this.#store,
      sealer: new ServerSealer(options.sealingSecret, REFRESH_PURPOSE),
      signer: this.#signer,
      refresh: async (refreshToken) => await refreshTokens((await options.endpoints.get()).token, refreshToken, this.#client),
      confirm: async (session, subject, tokens) => await this.#confirm(session, subject, tokens),
      end: async (session, reason, first) => { await this.#end(session, reason, first) },
      log: options.log,
      timeoutMs: config.httpTimeoutMs,
      memoryMax: options.memoryMax
    })
  }

  /** What `SessionTokens` asks on every request of a session that follows Keycloak. */
  get sessions (): SessionFollowing {
    const signer = this.#signer
    return { gate: this.#revalidation, revisions: this.#store, genuine: (sessionId, revision) => signer.verify(sessionId, revision) }
  }

  /** The scope of the authorization request: `offline_access` added when sessions follow the user (SPEC 12). */
  scope (scope: string): string {
    if (this.follows !== 'user' || scope.split(' ').includes('offline_access')) return scope
    return `${scope} offline_access`
  }

  /**
   * Keeps a login's refresh token (`checkedAt`: when Keycloak last confirmed the session, if not
   * now: a benchmark's sessions, logged in over the last period); `undefined` when Keycloak gave none (the session then keeps
   * ClearML's own lifetime, and the operator is told once how to fix the setup).
   */
  async keep (key: RefreshKey, subject: string, refreshToken: string | undefined, expiresAt: number, checkedAt?: number): Promise<SessionFollows | undefined> {
    if (refreshToken === undefined) {
      if (!this.#warnedNoRefreshToken) {
        this.#warnedNoRefreshToken = true
        this.#options.log.warn({ code: 'no_refresh_token', reason: this.#noRefreshTokenFix() }, 'Keycloak gave no refresh token at login: sessions cannot follow Keycloak')
      }
      return undefined
    }
    try {
      await this.#revalidation.keep(key, subject, refreshToken, expiresAt, checkedAt)
    } catch (err) {
      // A session whose token cannot be kept would end at its first check: refused now instead.
      throw new SsoError('directory_error', 'the shared store could not keep the session\'s refresh token', { cause: err })
    }
    return this.follows
  }

  /** A logout of one session: its refresh token removed and revoked at Keycloak, without making the logout wait. */
  async forget (key: RefreshKey): Promise<void> {
    let token: string | undefined
    try {
      token = await this.#revalidation.forget(key)
    } catch (err) {
      this.#options.log.warn({ code: 'directory_error', reason: `the store could not remove the session's refresh token (${(err as Error).message}); it expires with the session` }, 'Keycloak refresh token not removed')
      return
    }
    if (token !== undefined) this.#revokeAtKeycloak([token])
  }

  /** A back-channel logout: the refresh tokens of every session of that Keycloak session, removed and revoked. */
  async forgetKeycloakSession (keycloakSession: string): Promise<void> {
    let tokens: string[]
    try {
      tokens = await this.#revalidation.forgetKeycloakSession(keycloakSession)
    } catch (err) {
      this.#options.log.warn({ code: 'directory_error', reason: `the store could not remove the Keycloak session's refresh tokens (${(err as Error).message}); they expire with their sessions` }, 'Keycloak refresh tokens not removed')
      return
    }
    this.#revokeAtKeycloak(tokens)
  }

  #revokeAtKeycloak (tokens: string[]): void {
    const revokeAll = async (): Promise<void> => {
      const endpoint = (await this.#options.endpoints.get()).revocation
      for (const token of tokens) await revokeRefreshToken(endpoint, token, this.#client)
    }
    revokeAll().catch((err: unknown) => {
      this.#options.log.warn({ code: 'idp_unavailable', reason: `${(err as Error).message}: the offline session stays in Keycloak until it idles out (Offline Session Idle) or an administrator revokes it` }, 'Keycloak refresh token not revoked')
    })
  }

  #noRefreshTokenFix (): string {
    const offline = this.follows === 'user'
      ? `, and give it the optional client scope "offline_access" (the user needs the realm role offline_access), or set ${settingName('session.follows')}="sso_session"`
      : ''
    return `turn on "Use refresh tokens" in the client's Advanced settings${offline}; until then sessions keep ClearML's own lifetime`
  }

  /** Keycloak's new tokens, checked as at a login for the session's Keycloak user, then the login's rules but signup. */
  async #confirm (session: VerifiedSession, subject: string, tokens: Extract<RefreshAnswer, { kind: 'ok' }>): Promise<Confirmation> {
    const { config, directory } = this.#options
    let claims: Claims
    try {
      const options = this.#options.verifyOptions
      const idClaims = async (): Promise<Claims> => tokens.idToken === undefined ? {} : withoutProtocolClaims(await verifyIdToken(tokens.idToken, { ...options, subject }))
      const accessClaims = await verifyAccessToken(tokens.accessToken, { ...options, subject })
      if (config.getInfoFromAccessToken) {
        // Keycloak's access token carries the user's claims unless the client makes it lightweight;
        // only then is the ID token read to fill them in, as at the login. (Its verification is a third
        // of a check's CPU.)
        const carriesUser = claimAt(accessClaims, config.claims.name) !== undefined || claimAt(accessClaims, config.claims.username) !== undefined
        claims = carriesUser ? accessClaims : { ...await idClaims(), ...accessClaims }
      } else {
        const info = await fetchUserinfo({ endpoint: (await this.#options.endpoints.get()).userinfo!, accessToken: tokens.accessToken, timeoutMs: config.httpTimeoutMs })
        if (info.sub !== subject) return { kind: 'ended', reason: 'userinfo answered for another Keycloak user' }
        claims = { ...await idClaims(), ...info }
      }
    } catch (err) {
      if (err instanceof SubjectMismatch) return { kind: 'ended', reason: 'Keycloak answered the refresh for another user' }
      return { kind: 'unconfirmed', reason: (err as Error).message }
    }
    try {
      const identity = mapClaims(config, claims)
      const plan = await planLogin(config, directory, identity)
      if (plan.status !== 'found' || plan.user!.id !== session.identity.user) {
        return { kind: 'ended', reason: `the ClearML user of this session is no longer linked to Keycloak subject ${JSON.stringify(subject)} (${plan.userReason})` }
      }
      if (plan.refusal !== undefined) return { kind: 'ended', reason: plan.refusal.reason }
      const result = await applyLoginPlan(directory, plan)
      const next = sessionIdentity(result.user, result.company)
      // What followed Keycloak, for the log and the event: the role, the groups, the profile fields.
      const changed: string[] = []
      if (next.role !== session.identity.role) changed.push('role')
      if (plan.groups.add.length > 0 || plan.groups.remove.length > 0) changed.push('groups')
      changed.push(...Object.keys(plan.profile))
      return { kind: 'confirmed', identity: next, changed }
    } catch (err) {
      if (err instanceof SsoError && err.code === 'missing_claim') return { kind: 'ended', reason: err.message }
      return { kind: 'unconfirmed', reason: (err as Error).message }
    }
  }

  /** A session Keycloak refused: revoked on every replica as by a logout, and marked so its refusal says `session_ended`. */
  async #end (session: VerifiedSession, reason: string, first: boolean): Promise<void> {
    const { session_id: sessionId, exp } = session.claims
    const owner = session.identity.user
    const revocations = this.#options.revocations
    await revocations.revoke(sessionEndedKey(sessionId), exp, owner)
    await revocations.revoke(sessionId, exp, owner)
    if (first) this.#options.log.info({ user: owner, provider: PROVIDER, reason }, 'Keycloak ended the session: its user logs in again')
  }
}
