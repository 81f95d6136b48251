/**
 * Keycloak's refresh tokens, for the Keycloak-like provider: its user sessions (online, and offline
 * for `offline_access`), the client sessions inside them, the refresh tokens they issue, rotation and
 * reuse detection, and the refusals with Keycloak's own `error_description` texts. No HTTP here: the
 * provider authenticates the client and mints the access and ID tokens; this module decides whether a
 * refresh token is good and issues the next one.
 *
 * What it mirrors, read from Keycloak's source (services/…/protocol/oidc/TokenManager.java:
 * `verifyRefreshToken`, `validateToken`, `validateTokenReuse`; refresh/AbstractRefreshTokenProvider
 * and DefaultRefreshTokenProvider: `refreshAccessToken`, `validateTokenReuseForRefresh`,
 * `generateRefreshToken`, `revokeToken`; endpoints/TokenRevocationEndpoint.java;
 * AuthenticationManager.isSessionValid; the user session providers' `onUserRemoved`;
 * admin/UserResource.updateUser), in this order:
 *
 * 1. the token's signature and shape, then its `typ` (`Refresh` or `Offline`): "Invalid refresh token";
 *    issued before the realm's not-before: "Stale token"; past `exp`: "Token is not active"; issued to
 *    another client: "Invalid refresh token. Token client and authorized client don't match".
 * 2. its session: an offline token's offline session missing, "Offline user session not found", or
 *    idle or past its maximum (it is then removed), "Offline session not active"; an online token's
 *    SSO session missing or idle or past its maximum, "Session not active".
 * 3. the user: gone, "Invalid refresh token"; disabled, "User disabled". Deleting a user removes its
 *    sessions, so a deleted user's tokens meet step 2 first. Disabling keeps them: enabling the user
 *    again makes the same tokens work again.
 * 4. the client session: missing (revoked, or detached after a reuse), "Session doesn't have required
 *    client"; a token older than the session or client session: Keycloak's two "… issued before the
 *    … session started" texts.
 * 5. with "Revoke Refresh Token" on, per client session and per login (the token's `reuse_id`): a
 *    token older than the last refresh while another is current, "Stale token"; the current one used
 *    more than "Refresh Token Max Reuse" times, "Maximum allowed refresh token reuse exceeded". Either
 *    refusal detaches the client session, so the newest token of that login stops working too.
 *    Keycloak compares whole seconds: an older token presented in the same second as the last refresh
 *    passes, as in Keycloak.
 * 6. success counts as activity for the session's idle timer; the next token has the same type,
 *    scope and `reuse_id`; an online one expires at the session's idle or maximum time, whichever
 *    comes first, an offline one only when the realm limits offline sessions.
 *
 * Keycloak 26 keeps user sessions persistent by default and then checks idle times without the 120 s
 * window older versions added; this module has no window either.
 *
 * Not Keycloak: `revokeFamilyOnReuse`, a stricter provider for tests: each refresh token works once
 * (by id, whatever the second), and presenting one that was already used is refused ("Stale token")
 * and also revokes the newest token of its login ("Invalid refresh token" from then on).
 */
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto'

export interface RefreshRealmSettings {
  /** Keycloak's "Revoke Refresh Token" (off by default): each refresh token works once (see max reuse). */
  revokeRefreshToken: boolean
  /** Keycloak's "Refresh Token Max Reuse" (0): how many more times the current token may be used. */
  refreshTokenMaxReuse: number
  /** Not Keycloak: a reused refresh token also revokes the newest token of its login. */
  revokeFamilyOnReuse: boolean
  ssoSessionIdleSec: number
  ssoSessionMaxSec: number
  offlineSessionIdleSec: number
  /** Keycloak's "Offline Session Max Limited" is off by default: `undefined`. */
  offlineSessionMaxSec?: number
}

export type UserStanding = 'enabled' | 'disabled' | 'unknown'

export interface LoginGrant {
  /** The browser's SSO session (oidc-provider's session uid): one per login, shared by its clients. */
  sessionId: string
  /** The session id the login's ID and access tokens carry (`sid`). */
  sid: string
  sub: string
  clientId: string
  scope: string
  nonce?: string
}

export interface IssuedRefreshToken {
  token: string
  tokenId: string
  type: 'Refresh' | 'Offline'
  /** Seconds until it expires; 0 for an offline token in a realm without an offline maximum. */
  expiresIn: number
}

export type RefreshOutcome =
  | { ok: false, description: string, tokenId?: string, sub?: string }
  | { ok: true, tokenId: string, sub: string, sid: string, scope: string, nonce?: string, next?: IssuedRefreshToken }

export type RevocationOutcome =
  | { kind: 'revoked', tokenId: string, sub: string, endedSessionId?: string }
  /** RFC 7009: Keycloak answers 200 (with an `invalid_token` body) for a token it cannot use. */
  | { kind: 'invalid_token', tokenId?: string }
  | { kind: 'unmatching_clients', tokenId: string }
  /** Not a refresh token of this realm (the caller may know it as another kind of token). */
  | { kind: 'not_refresh_token' }

interface RefreshClaims {
  exp?: number
  iat: number
  jti: string
  iss: string
  aud: string
  sub: string
  typ: string
  azp: string
  nonce?: string
  sid: string
  scope: string
  reuse_id?: string
}

/** Keycloak's bookkeeping per login with "Revoke Refresh Token" on (its `reuse_id`). */
interface ReuseState { current?: string, lastRefresh: number, useCount: number }

interface ClientSession {
  clientId: string
  started: number
  /** The last login or refresh through this client session (Keycloak's client session timestamp). */
  timestamp: number
  reuse: Map<string, ReuseState>
}

interface UserSession {
  id: string
  sub: string
  started: number
  lastRefresh: number
  offline: boolean
  clients: Map<string, ClientSession>
}

/** Not Keycloak: one login's chain of refresh tokens, for `revokeFamilyOnReuse`. */
interface TokenFamily { current?: string, revoked: boolean }

const base64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url')

/** Refresh tokens are opaque to clients: JWTs only this realm verifies (HS256, a key of its own). */
class RefreshTokenCodec {
  readonly #key = randomBytes(32)
  readonly #kid = randomUUID()

  encode (claims: RefreshClaims): string {
    const signingInput = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT', kid: this.#kid }))}.${base64url(JSON.stringify(claims))}`
    return `${signingInput}.${base64url(createHmac('sha256', this.#key).update(signingInput).digest())}`
  }

  /** The claims of a token this realm signed, or undefined for anything else. */
  decode (token: string): RefreshClaims | undefined {
    const parts = token.split('.')
    if (parts.length !== 3) return undefined
    const expected = createHmac('sha256', this.#key).update(`${parts[0]}.${parts[1]}`).digest()
    const given = Buffer.from(parts[2], 'base64url')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined
    try {
      const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8')) as { alg?: unknown }
      const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8')) as RefreshClaims
      return header.alg === 'HS256' && typeof claims === 'object' && claims !== null ? claims : undefined
    } catch {
      return undefined
    }
  }
}

/** The id (`jti`) a refresh token says it has, without checking it: for logs of what was presented. */
export function presentedTokenId (token: string | undefined): string | undefined {
  try {
    const claims = JSON.parse(Buffer.from(token?.split('.')[1] ?? '', 'base64url').toString('utf8')) as { jti?: unknown }
    return typeof claims.jti === 'string' ? claims.jti : undefined
  } catch {
    return undefined
  }
}

const refused = (description: string, claims?: RefreshClaims): RefreshOutcome =>
  ({ ok: false, description, tokenId: claims?.jti, sub: claims?.sub })

const hasScope = (scope: string, name: string): boolean => scope.split(' ').includes(name)

export class KeycloakSessions {
  readonly #issuer: string
  readonly #settings: RefreshRealmSettings
  readonly #now: () => number
  readonly #standing: (sub: string) => UserStanding
  readonly #codec = new RefreshTokenCodec()
  readonly #online = new Map<string, UserSession>()
  /** Keycloak gives an offline session the id of the online session it came from. */
  readonly #offline = new Map<string, UserSession>()
  /** The provider's `sid` is per browser session and client; it leads back to the session. */
  readonly #sessionOfSid = new Map<string, string>()
  readonly #families = new Map<string, TokenFamily>()
  #realmNotBefore = 0

  /**
   * @param now the realm's clock, in seconds
   * @param standing whether the user behind a session still exists and is enabled
   */
  constructor (options: { issuer: string, settings: RefreshRealmSettings, now: () => number, standing: (sub: string) => UserStanding }) {
    this.#issuer = options.issuer
    this.#settings = options.settings
    this.#now = options.now
    this.#standing = options.standing
  }

  /** The refresh token of an authorization-code grant: offline with `offline_access` in the scope. */
  issueAtLogin (login: LoginGrant): IssuedRefreshToken {
    const now = this.#now()
    const online = this.#joinSession(this.#online, login, now, false)
    this.#sessionOfSid.set(login.sid, login.sessionId)
    const offline = hasScope(login.scope, 'offline_access')
    const session = offline ? this.#joinSession(this.#offline, login, now, true) : online
    const reuseId = this.#settings.revokeRefreshToken || this.#settings.revokeFamilyOnReuse ? randomUUID() : undefined
    const issued = this.#issue(session, session.clients.get(login.clientId)!, {
      sid: login.sid, sub: login.sub, azp: login.clientId, scope: login.scope, nonce: login.nonce, reuse_id: reuseId
    }, now)
    if (reuseId !== undefined && this.#settings.revokeFamilyOnReuse) this.#families.set(reuseId, { current: issued.tokenId, revoked: false })
    return issued
  }

  /**
   * A `refresh_token` grant from `clientId` (already authenticated). `issueNext` is the client's "Use
   * refresh tokens": off, the answer has no new refresh token.
   */
  refresh (token: string, clientId: string, issueNext: boolean): RefreshOutcome {
    const now = this.#now()
    const claims = this.#codec.decode(token)
    if (claims === undefined || (claims.typ !== 'Refresh' && claims.typ !== 'Offline')) return refused('Invalid refresh token', claims)
    if (claims.iat < this.#realmNotBefore) return refused('Stale token', claims)
    if (claims.exp !== undefined && claims.exp !== 0 && now > claims.exp) return refused('Token is not active', claims)
    if (claims.azp !== clientId) return refused("Invalid refresh token. Token client and authorized client don't match", claims)

    const found = this.#sessionFor(claims, now)
    if (typeof found === 'string') return refused(found, claims)
    const { session, clientSession } = found

    const reuse = this.#checkReuse(claims, session, clientSession)
    if (reuse !== undefined) return refused(reuse, claims)

    clientSession.timestamp = now
    session.lastRefresh = now
    const next = issueNext
      ? this.#issue(session, clientSession, { sid: claims.sid, sub: claims.sub, azp: claims.azp, scope: claims.scope, nonce: claims.nonce, reuse_id: claims.reuse_id }, now)
      : undefined
    // Keycloak notes the time of the refresh when it issues the next token of the login.
    const state = clientSession.reuse.get(claims.reuse_id ?? '')
    if (state !== undefined && next !== undefined) state.lastRefresh = now
    const family = claims.reuse_id === undefined ? undefined : this.#families.get(claims.reuse_id)
    if (family !== undefined) family.current = next?.tokenId
    return { ok: true, tokenId: claims.jti, sub: claims.sub, sid: claims.sid, scope: claims.scope, nonce: claims.nonce, next }
  }

  /**
   * RFC 7009 revocation of a refresh token, as Keycloak's revocation endpoint: an offline token's
   * client leaves its offline session (gone when no client is left), and the online session of the
   * same id loses that client too, ending when no client is left in it (`endedSessionId`: the
   * browser must then sign in again).
   */
  revoke (token: string, clientId: string): RevocationOutcome {
    const claims = this.#codec.decode(token)
    if (claims === undefined) return { kind: 'not_refresh_token' }
    if (claims.azp !== clientId) return { kind: 'unmatching_clients', tokenId: claims.jti }
    const offline = claims.typ === 'Offline'
    const sessionId = this.#sessionOfSid.get(claims.sid) ?? ''
    const session = (offline ? this.#offline : this.#online).get(sessionId)
    if (session === undefined || !this.#isValid(session, this.#now()) || !session.clients.has(clientId)) return { kind: 'invalid_token', tokenId: claims.jti }
    if (offline) this.#leave(this.#offline, session, clientId)
    const online = this.#online.get(sessionId)
    const ended = online !== undefined && online.clients.has(clientId) && this.#leave(this.#online, online, clientId)
    if (claims.reuse_id !== undefined) this.#families.delete(claims.reuse_id)
    return { kind: 'revoked', tokenId: claims.jti, sub: claims.sub, endedSessionId: ended ? sessionId : undefined }
  }

  /** An RP-initiated logout ended the browser's SSO session: its online tokens stop, offline ones stay. */
  endSession (sessionId: string): void {
    this.#online.delete(sessionId)
  }

  /** Every SSO session of a user ends, as at an idle or maximum timeout (offline sessions stay). */
  endSessionsOf (sub: string): void {
    for (const [id, session] of this.#online) if (session.sub === sub) this.#online.delete(id)
  }

  /** A deleted user's online and offline sessions go with it, as Keycloak's `onUserRemoved`. */
  forgetUser (sub: string): void {
    this.endSessionsOf(sub)
    for (const [id, session] of this.#offline) if (session.sub === sub) this.#offline.delete(id)
  }

  /** The realm's "not before" set to now: every token issued before is refused ("Stale token"). */
  pushNotBefore (): void {
    // Keycloak compares whole seconds: a token of this second is not stale.
    this.#realmNotBefore = this.#now()
  }

  /** How many sessions a user has that a refresh would accept (for the admin page and tests). */
  sessionsOf (sub: string): { online: number, offline: number } {
    const now = this.#now()
    const count = (sessions: Map<string, UserSession>): number =>
      [...sessions.values()].filter((session) => session.sub === sub && this.#isValid(session, now)).length
    return { online: count(this.#online), offline: count(this.#offline) }
  }

  /** The session a login joins: the browser's current one, or a new one when it has none that is valid. */
  #joinSession (sessions: Map<string, UserSession>, login: LoginGrant, now: number, offline: boolean): UserSession {
    let session = sessions.get(login.sessionId)
    if (session === undefined || session.sub !== login.sub || !this.#isValid(session, now)) {
      session = { id: login.sessionId, sub: login.sub, started: now, lastRefresh: now, offline, clients: new Map() }
      sessions.set(login.sessionId, session)
    }
    session.lastRefresh = now
    let clientSession = session.clients.get(login.clientId)
    if (clientSession === undefined) {
      clientSession = { clientId: login.clientId, started: now, timestamp: now, reuse: new Map() }
      session.clients.set(login.clientId, clientSession)
    }
    clientSession.timestamp = now
    return session
  }

  /** Steps 2 to 4: the session and client session a token belongs to, or why there is none. */
  #sessionFor (claims: RefreshClaims, now: number): { session: UserSession, clientSession: ClientSession } | string {
    const sessionId = this.#sessionOfSid.get(claims.sid) ?? ''
    let session: UserSession | undefined
    if (claims.typ === 'Offline') {
      session = this.#offline.get(sessionId)
      if (session === undefined) return 'Offline user session not found'
      if (!this.#isValid(session, now)) {
        this.#offline.delete(sessionId)
        return 'Offline session not active'
      }
    } else {
      session = this.#online.get(sessionId)
      if (session === undefined || !this.#isValid(session, now)) return 'Session not active'
    }
    const standing = this.#standing(session.sub)
    if (standing === 'unknown') return 'Invalid refresh token'
    if (standing === 'disabled') return 'User disabled'
    if (claims.iat < session.started) return 'Refresh token issued before the user session started'
    const clientSession = session.clients.get(claims.azp)
    if (clientSession === undefined) return "Session doesn't have required client"
    if (claims.iat < clientSession.started) return 'refresh token issued before the client session started'
    return { session, clientSession }
  }

  /** Step 5, or the stricter family rule: the reason to refuse a token already used, if any. */
  #checkReuse (claims: RefreshClaims, session: UserSession, clientSession: ClientSession): string | undefined {
    if (this.#settings.revokeFamilyOnReuse) {
      const family = claims.reuse_id === undefined ? undefined : this.#families.get(claims.reuse_id)
      if (family === undefined || family.revoked) return 'Invalid refresh token'
      if (family.current !== claims.jti) {
        family.revoked = true
        return 'Stale token'
      }
      return undefined
    }
    if (!this.#settings.revokeRefreshToken) return undefined
    const key = claims.reuse_id ?? ''
    const state = clientSession.reuse.get(key) ?? { lastRefresh: 0, useCount: 0 }
    clientSession.reuse.set(key, state)
    let refusal: string | undefined
    if (state.current !== undefined && state.current !== claims.jti && claims.iat < state.lastRefresh) {
      refusal = 'Stale token'
    } else {
      if (state.current !== claims.jti) {
        state.current = claims.jti
        state.useCount = 0
      }
      if (state.useCount > this.#settings.refreshTokenMaxReuse) refusal = 'Maximum allowed refresh token reuse exceeded'
    }
    if (refusal !== undefined) {
      // Keycloak detaches the client session from its user session after a reuse.
      session.clients.delete(clientSession.clientId)
      return refusal
    }
    state.useCount++
    return undefined
  }

  #issue (session: UserSession, clientSession: ClientSession, claims: Omit<RefreshClaims, 'iat' | 'jti' | 'iss' | 'aud' | 'typ' | 'exp'>, now: number): IssuedRefreshToken {
    const type = session.offline ? 'Offline' : 'Refresh'
    const exp = this.#expiry(session, clientSession)
    const tokenId = randomUUID()
    const token = this.#codec.encode({
      ...(exp === undefined ? {} : { exp }),
      iat: now,
      jti: tokenId,
      iss: this.#issuer,
      aud: this.#issuer,
      sub: claims.sub,
      typ: type,
      azp: claims.azp,
      ...(claims.nonce === undefined ? {} : { nonce: claims.nonce }),
      sid: claims.sid,
      scope: claims.scope,
      ...(claims.reuse_id === undefined ? {} : { reuse_id: claims.reuse_id })
    })
    return { token, tokenId, type, expiresIn: exp === undefined ? 0 : exp - now }
  }

  /** When a token issued now expires: the session's idle time from now, capped by its maximum. */
  #expiry (session: UserSession, clientSession: ClientSession): number | undefined {
    const { ssoSessionIdleSec, ssoSessionMaxSec, offlineSessionIdleSec, offlineSessionMaxSec } = this.#settings
    if (!session.offline) return Math.min(clientSession.timestamp + ssoSessionIdleSec, session.started + ssoSessionMaxSec)
    if (offlineSessionMaxSec === undefined) return undefined
    return Math.min(clientSession.timestamp + offlineSessionIdleSec, session.started + offlineSessionMaxSec)
  }

  #isValid (session: UserSession, now: number): boolean {
    const { ssoSessionIdleSec, ssoSessionMaxSec, offlineSessionIdleSec, offlineSessionMaxSec } = this.#settings
    if (session.offline) {
      return session.lastRefresh + offlineSessionIdleSec > now && (offlineSessionMaxSec === undefined || session.started + offlineSessionMaxSec > now)
    }
    return session.lastRefresh + ssoSessionIdleSec > now && session.started + ssoSessionMaxSec > now
  }

  /** Removes a client from a session; true when that left the session empty (it is then removed). */
  #leave (sessions: Map<string, UserSession>, session: UserSession, clientId: string): boolean {
    session.clients.delete(clientId)
    if (session.clients.size > 0) return false
    sessions.delete(session.id)
    return true
  }
}
