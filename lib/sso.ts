/**
 * The Keycloak single sign-on service behind the routes and decorators: starts a login, completes a
 * callback (SPEC section 5 steps 1–10), verifies sessions and logs out. Routes stay thin; this class
 * wires the single-purpose modules together in the order the SPEC gives.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { JWTPayload } from 'jose'
import { settingName, type KeycloakConfig } from './config/settings.js'
import type { Company, DirectoryUser, UserDirectory } from './directory/user-directory.js'
import { observeLogin } from './diagnostics.js'
import { ProviderEndpoints } from './keycloak/discovery.js'
import { SsoError } from './errors.js'
import { looksLikeIdentity, mapClaims, type Claims, type Identity } from './rules/identity.js'
import { RemoteKeySet } from './keycloak/key-set.js'
import { PROVIDER, runLogin, type LoginResult } from './rules/login.js'
import type { BearerUser } from './keycloak/bearer.js'
import { ID_TOKEN_COOKIE } from './session/cookies.js'
import { describeOAuthError, exchangeCode, fetchUserinfo, userinfoMismatch } from './keycloak/oidc-client.js'
import { pkceChallenge, randomToken, timingSafeEqualText } from './crypto.js'
import { MemoryRevocationStore, OnceClaims, type RevocationStore } from './session/revocations.js'
import { Sealer } from './session/sealed.js'
import { keycloakSessionKey } from './session/claims.js'
import { refreshKey } from './session/follow-store.js'
import { SessionTokens, type VerifiedSession } from './session/sessions.js'
import { slotForNewLogin, TransactionCodec, type LoginTransaction } from './session/transaction.js'
import { verifyAccessToken, verifyIdToken, verifyLogoutToken, type VerifyOptions } from './keycloak/tokens.js'
import { KeycloakFollowing, withoutProtocolClaims } from './follow-keycloak.js'

export interface IssueTokenContext {
  company: Company
  identity: Identity
  sessionId: string
  expiresAt: number
  /** Keycloak's session id (`sid`), when the ID token has one. */
  sid?: string
}

export type IssueToken = (user: DirectoryUser, context: IssueTokenContext) => string | Promise<string>

export interface SsoServiceOptions {
  config: KeycloakConfig
  directory: UserDirectory
  webappUrl: string
  log: FastifyBaseLogger
  revocations: RevocationStore
  issueToken?: IssueToken
  sessionCacheMax?: number
}

export interface CallbackParams {
  code?: string
  state?: string
  iss?: string
  error?: string
}

export interface CompletedLogin {
  transaction: LoginTransaction
  result: LoginResult
  token: string
  sessionId: string
  expiresAt: number
  /** Value of the ID-token cookie for RP-initiated logout, when `idp_logout` is on. */
  idTokenCookie?: string
}

type CookieJar = Record<string, string | undefined>
type ValueStore = Required<Pick<RevocationStore, 'setValue' | 'takeValue'>>

function hasValues (store: RevocationStore): store is RevocationStore & ValueStore {
  return typeof store.setValue === 'function' && typeof store.takeValue === 'function'
}

export interface StartedLogin {
  url: string
  cookieName: string
  cookieValue: string
}

const ID_TOKEN_PURPOSE = 'id-token-for-logout'
/**
 * Largest ID-token cookie (`name=value`) kept in the browser. A Keycloak ID token listing many group
 * paths passes 4 KB once sealed, and a browser silently drops such a cookie, which would silently
 * skip the Keycloak logout; larger ones are kept server-side and the cookie holds a reference.
 */
export const MAX_ID_TOKEN_COOKIE_BYTES = 3072
const ID_TOKEN_REFERENCE = 'ref.'
const idTokenKey = (reference: string): string => `id-token:${reference}`

export class KeycloakSso {
  readonly config: KeycloakConfig
  readonly endpoints: ProviderEndpoints
  readonly keys: RemoteKeySet
  readonly sessions: SessionTokens
  readonly redirectUri: string
  readonly #directory: UserDirectory
  readonly #transactions: TransactionCodec
  readonly #idTokens: Sealer
  readonly #revocations: RevocationStore
  /** Where ID tokens too large for a cookie are kept: the shared store when it can, else this process. */
  readonly #values: ValueStore
  readonly #issueToken: IssueToken | undefined
  readonly #log: FastifyBaseLogger
  /** Tokens the token endpoint handed to a login: an unknown `kid` reloads the key set at once. */
  readonly #verifyOptions: VerifyOptions
  /** Tokens anyone could have sent: unknown `kid`s force at most one reload per cooldown. */
  readonly #untrustedVerifyOptions: VerifyOptions
  /** Sessions that follow Keycloak (SPEC section 12); absent when `revalidate_sec` is 0. */
  readonly following: KeycloakFollowing | undefined

  constructor (options: SsoServiceOptions) {
    const { config } = options
    this.config = config
    this.#directory = options.directory
    this.#log = options.log
    this.#revocations = options.revocations
    this.#values = hasValues(options.revocations) ? options.revocations : new MemoryRevocationStore()
    this.#issueToken = options.issueToken
    // `webappUrl` arrives as an origin (the plugin checked it), so there is no trailing slash to trim.
    this.redirectUri = `${options.webappUrl}/callback_keycloak`
    this.endpoints = new ProviderEndpoints(config, options.log)
    this.keys = new RemoteKeySet({ url: async () => (await this.endpoints.get()).jwks, timeoutMs: config.httpTimeoutMs })
    this.#verifyOptions = {
      issuer: this.endpoints.issuer,
      clientId: config.clientId,
      algorithms: config.algorithms,
      clockToleranceSec: config.clockToleranceSec,
      getKey: this.keys.getKey
    }
    this.#untrustedVerifyOptions = { ...this.#verifyOptions, getKey: this.keys.getUntrustedKey }
    // Both secrets go into the sealing key: the client secret is always there, and the token secret
    // makes the key change when an operator rotates it.
    const sealingSecret = `${config.clientSecret}\u0000${config.tokenSecret ?? ''}`
    const localClaims = new OnceClaims()
    const claimOnce = options.revocations.claimOnce?.bind(options.revocations) ??
      (async (key: string, expiresAt: number) => localClaims.claim(key, expiresAt))
    this.#transactions = new TransactionCodec(sealingSecret, claimOnce)
    this.#idTokens = new Sealer(sealingSecret, ID_TOKEN_PURPOSE)
    // Sessions follow Keycloak (SPEC section 12) unless `revalidate_sec` is 0, and only the plugin's
    // own session tokens: a host's `issueToken` tokens are verified by the host.
    this.following = config.session.revalidateSec > 0 && options.issueToken === undefined
      ? new KeycloakFollowing({ config, directory: options.directory, endpoints: this.endpoints, verifyOptions: this.#verifyOptions, revocations: options.revocations, sealingSecret, log: options.log, memoryMax: options.sessionCacheMax })
      : undefined
    this.sessions = new SessionTokens({
      secret: config.tokenSecret,
      lifetimeSec: config.sessionExpirationSec,
      revocations: options.revocations,
      cacheMax: options.sessionCacheMax,
      follow: this.following?.sessions
    })
  }

  /**
   * A new login transaction, the cookie that keeps it, and the Keycloak authorization URL that starts it.
   * `stateShowsReturnPath`: the state is also the return path (ClearML Enterprise's web app reads it
   * so); `keepSlotOf`: the state of a login this one must not evict from the browser's slots.
   */
  async startLogin (options: { returnTo: string, redirectUri?: string, appState?: string, stateShowsReturnPath?: boolean, keepSlotOf?: string }, cookies: CookieJar): Promise<StartedLogin> {
    const endpoints = await this.endpoints.get({ retry: true })
    const transaction = this.#transactions.create({
      redirectUri: options.redirectUri ?? this.redirectUri,
      returnTo: options.returnTo,
      appState: options.appState
    }, options.stateShowsReturnPath)
    const url = new URL(endpoints.authorization)
    url.searchParams.set('response_type', 'code')
    url.searchParams.set('client_id', this.config.clientId)
    url.searchParams.set('redirect_uri', transaction.redirectUri)
    url.searchParams.set('scope', this.following?.scope(this.config.scope) ?? this.config.scope)
    url.searchParams.set('state', transaction.state)
    url.searchParams.set('nonce', transaction.nonce)
    url.searchParams.set('code_challenge', pkceChallenge(transaction.verifier))
    url.searchParams.set('code_challenge_method', 'S256')
    const cookieName = slotForNewLogin(cookies, options.keepSlotOf)
    return { url: url.href, cookieName, cookieValue: await this.#transactions.seal(transaction, cookieName) }
  }

  /** Steps 1–10 for one callback; `cookies` are the browser's, where its transaction is. Published on the `login` channel. */
  async completeLogin (params: CallbackParams, cookies: CookieJar): Promise<CompletedLogin> {
    return await observeLogin(async () => await this.#completeLogin(params, cookies), (login) => login.result.created)
  }

  async #completeLogin (params: CallbackParams, cookies: CookieJar): Promise<CompletedLogin> {
    const { state, code, iss, error } = params
    if (typeof state !== 'string' || state === '') {
      if (typeof error === 'string') throw new SsoError('idp_error', `Keycloak answered error ${describeOAuthError(error)}`)
      throw new SsoError('invalid_state', 'the callback has no state: it did not come from a login this server started (a bookmarked or hand-made callback URL)')
    }
    // 1. Transaction
    const transaction = await this.#transactions.consume(cookies, state)
    if (typeof error === 'string') throw new SsoError('idp_error', `Keycloak answered error ${describeOAuthError(error)}`)
    if (iss !== undefined && !timingSafeEqualText(iss, this.endpoints.issuer)) {
      // RFC 9207: a response naming another issuer is a mix-up attack, or a misconfiguration.
      throw new SsoError('invalid_state', `the callback's iss parameter is not ${settingName('baseUrl')} (${this.endpoints.issuer}): if every login fails so, set it to the issuer Keycloak announces (its frontend URL); otherwise a response from another provider was refused`)
    }
    if (typeof code !== 'string' || code === '') throw new SsoError('invalid_state', 'the callback has neither a code nor an error: it was not sent by Keycloak as a login answer')

    // 2. Code exchange
    const endpoints = await this.endpoints.get()
    const tokens = await exchangeCode({
      tokenEndpoint: endpoints.token,
      clientId: this.config.clientId,
      clientSecret: this.config.clientSecret,
      code,
      redirectUri: transaction.redirectUri,
      verifier: transaction.verifier,
      timeoutMs: this.config.httpTimeoutMs
    })

    // 3. Verification
    const options = this.#verifyOptions
    const idClaims = await verifyIdToken(tokens.idToken, { ...options, nonce: transaction.nonce })
    let infoClaims: Claims
    if (this.config.getInfoFromAccessToken) {
      infoClaims = await verifyAccessToken(tokens.accessToken, { ...options, subject: idClaims.sub })
    } else {
      infoClaims = await fetchUserinfo({ endpoint: endpoints.userinfo!, accessToken: tokens.accessToken, timeoutMs: this.config.httpTimeoutMs })
      if (infoClaims.sub !== idClaims.sub) throw new SsoError('userinfo_mismatch', userinfoMismatch())
    }

    // 4–9. Identity, user, signup, role, groups, profile. The chosen source wins over the ID token,
    // which fills in what a lightweight access token may leave out.
    const identity = this.mapClaims({ ...withoutProtocolClaims(idClaims), ...infoClaims })
    const result = await runLogin(this.config, this.#directory, identity)

    // 10. Session, with its refresh token kept first when it follows Keycloak (SPEC section 12)
    const sid = typeof idClaims.sid === 'string' ? idClaims.sid : undefined
    const session = await this.#issueSession(result, identity, sid, tokens.refreshToken, idClaims.sub!)
    const idTokenCookie = this.config.idpLogout ? await this.#keepIdToken(tokens.idToken, session.expiresAt) : undefined
    this.#log.info({ user: result.user.id, company: result.company.id, created: result.created, role: result.role, groups: result.groups }, 'Keycloak login')
    return { transaction, result, ...session, idTokenCookie }
  }

  /**
   * The ID-token cookie's value: the sealed token when it fits a cookie, else a reference to it kept
   * server-side. A store that fails here costs only the `id_token_hint` at logout (Keycloak then asks
   * the user to confirm), never the login; the log says so.
   */
  async #keepIdToken (idToken: string, expiresAt: number): Promise<string | undefined> {
    const sealed = await this.#idTokens.seal({ idt: idToken }, this.config.sessionExpirationSec)
    if (Buffer.byteLength(ID_TOKEN_COOKIE) + 1 + sealed.length <= MAX_ID_TOKEN_COOKIE_BYTES) return sealed
    const reference = randomToken(16)
    try {
      await this.#values.setValue(idTokenKey(reference), sealed, expiresAt)
    } catch (err) {
      this.#log.warn({ code: 'directory_error', reason: 'the revocation store could not keep the ID token; logout will ask the user to confirm at Keycloak', err: { message: (err as Error).message } }, 'Keycloak ID token not kept')
      return undefined
    }
    return ID_TOKEN_REFERENCE + reference
  }

  /** The ID token behind an ID-token cookie, or `undefined` when it cannot be had any more. */
  async #recallIdToken (cookie: string): Promise<string | undefined> {
    let sealed: string | undefined = cookie
    if (cookie.startsWith(ID_TOKEN_REFERENCE)) {
      try {
        sealed = await this.#values.takeValue(idTokenKey(cookie.slice(ID_TOKEN_REFERENCE.length)))
      } catch {
        sealed = undefined
      }
    }
    if (sealed === undefined) return undefined
    try {
      // Only this plugin seals this cookie, with a string in it; a cookie that does not open is
      // simply not ours (tampered, or from before a secret rotation).
      return String((await this.#idTokens.open(sealed)).idt)
    } catch {
      return undefined
    }
  }

  async #issueSession (result: LoginResult, identity: Identity, sid: string | undefined, refreshToken: string | undefined, subject: string): Promise<{ token: string, sessionId: string, expiresAt: number }> {
    if (this.#issueToken !== undefined) {
      const sessionId = this.sessions.newSessionId()
      const expiresAt = this.sessions.expiresAt()
      let token: string
      try {
        token = await this.#issueToken(result.user, { company: result.company, identity, sessionId, expiresAt, sid })
      } catch (err) {
        // The host's session store is part of the host's side, like its directory.
        throw new SsoError('directory_error', 'the host\'s issueToken threw: check the host\'s session store', { cause: err })
      }
      return { token, sessionId, expiresAt }
    }
    const sessionId = this.sessions.newSessionId()
    const follows = await this.following?.keep(refreshKey(sessionId, sid), subject, refreshToken, this.sessions.expiresAt())
    return await this.sessions.issue(result.user, result.company, sessionId, sid, follows)
  }

  mapClaims (claims: Claims): Identity {
    return mapClaims(this.config, claims)
  }

  /** Steps 4–9 for claims already verified, or an `Identity` the host built. Published on the `login` channel. */
  async login (input: Claims | Identity): Promise<LoginResult> {
    return await observeLogin(async () => {
      const identity = looksLikeIdentity(input) ? input : this.mapClaims(input)
      return await runLogin(this.config, this.#directory, identity)
    }, (result) => result.created)
  }

  /**
   * A Keycloak access token from outside a login (a host's call, an `Authorization` header), verified:
   * issued to this client, or (with `audiences`) to a client whose token names one of them in `aud`.
   */
  async verifyAccessToken (token: string, options: { audiences?: readonly string[] } = {}): Promise<JWTPayload> {
    return await verifyAccessToken(token, { ...this.#untrustedVerifyOptions, audiences: options.audiences })
  }

  /**
   * The ClearML user of a verified Keycloak access token: found by its Keycloak subject, or, with
   * `provision`, found or admitted by the login rules (steps 5–9), whose refusals keep their codes.
   */
  async userOfAccessToken (claims: JWTPayload, provision: boolean): Promise<BearerUser> {
    const identity = this.mapClaims(claims)
    if (provision) {
      const { user, company } = await this.login(identity)
      return { user, company }
    }
    let user: DirectoryUser | null
    let company: Company | null
    try {
      user = await this.#directory.findUserByIdentity(PROVIDER, identity.subject)
      company = user === null ? null : await this.#directory.getCompany(user.company)
    } catch (err) {
      throw new SsoError('directory_error', 'the directory failed to find the user of a Keycloak bearer token', { cause: err })
    }
    if (user === null) {
      throw new SsoError('invalid_token', `no ClearML user is linked to Keycloak subject ${identity.subject}: the user logs in through the browser once, or the host enables bearer.provision`)
    }
    if (company === null) throw new SsoError('unknown_company', `user ${user.id} belongs to a company the directory does not know`)
    return { user, company }
  }

  async verifySession (token: string | undefined): Promise<VerifiedSession | null> {
    return token === undefined || token === '' ? null : await this.sessions.verify(token)
  }

  /**
   * Keycloak's back-channel logout: every ClearML session of that Keycloak session is revoked, on
   * every instance that shares the revocation store, until it would have expired anyway.
   */
  async backchannelLogout (logoutToken: string): Promise<void> {
    // Anyone can post to this route: its tokens must not force key-set reloads at will.
    const claims = await verifyLogoutToken(logoutToken, this.#untrustedVerifyOptions)
    await this.#revocations.revoke(keycloakSessionKey(claims.sid), this.sessions.expiresAt(), await this.#ownerOf(claims.sub))
    this.#log.info({ keycloak_sid: claims.sid }, 'Keycloak back-channel logout')
    await this.following?.forgetKeycloakSession(claims.sid)
  }

  /**
   * The ClearML user of a Keycloak subject, as the owner of a revocation (a bounded store then fails
   * closed for that user alone); `undefined` when the logout token names none or the directory fails.
   */
  async #ownerOf (subject: string | undefined): Promise<string | undefined> {
    if (subject === undefined) return undefined
    try {
      return (await this.#directory.findUserByIdentity(PROVIDER, subject))?.id
    } catch {
      return undefined
    }
  }

  /**
   * Revokes the session and, when `idp_logout` is on and the browser had a Keycloak login here, gives
   * Keycloak's end-session URL to send the browser to. With the ID token it carries `id_token_hint`
   * and Keycloak ends the session at once; without it (lost, expired, unreadable) Keycloak still ends
   * it after asking the user to confirm, so the Keycloak logout is never skipped silently.
   */
  async logout (token: string | undefined, idTokenCookie: string | undefined, postLogoutRedirectUri: string): Promise<{ redirectUrl?: string }> {
    const session = await this.verifySession(token)
    if (session !== null) {
      const { session_id: sessionId, exp, sso } = session.claims
      const owner = session.identity.user
      await this.#revocations.revoke(sessionId, exp, owner)
      if (sso?.follows !== undefined) await this.following?.forget(refreshKey(sessionId, sso.sid))
      if (this.config.idpLogout && sso?.sid !== undefined) {
        // The user ends the Keycloak session: every ClearML session and Keycloak token of it ends
        // here at once, as Keycloak's back-channel call would do. That call may never come: revoking
        // the refresh token above detaches this client from the Keycloak session, which Keycloak then
        // removes when no client is left, before the browser reaches its end-session page.
        await this.#revocations.revoke(keycloakSessionKey(sso.sid), this.sessions.expiresAt(), owner)
        await this.following?.forgetKeycloakSession(sso.sid)
      }
    }
    const hadIdToken = idTokenCookie !== undefined && idTokenCookie !== ''
    if (!this.config.idpLogout || (session === null && !hadIdToken)) return {}
    const idToken = hadIdToken ? await this.#recallIdToken(idTokenCookie) : undefined
    if (idToken === undefined) {
      this.#log.warn({ code: 'idp_logout_without_id_token', reason: 'the ID token of this login is not at hand (cookie missing, expired, or its server-side copy gone); Keycloak will ask the user to confirm the logout' }, 'Keycloak logout without id_token_hint')
    }
    const endpoints = await this.endpoints.get()
    const url = new URL(endpoints.endSession!)
    if (idToken !== undefined) url.searchParams.set('id_token_hint', idToken)
    url.searchParams.set('client_id', this.config.clientId)
    url.searchParams.set('post_logout_redirect_uri', postLogoutRedirectUri)
    return { redirectUrl: url.href }
  }
}
