/**
 * A Keycloak-compatible OpenID provider for the demo and the tests: `oidc-provider` configured with
 * Keycloak's realm paths (`/realms/<realm>/protocol/openid-connect/...`) and Keycloak's token shapes
 * (access token: `typ: "Bearer"`, `azp`, `aud: "account"`, `realm_access`, `resource_access`,
 * `preferred_username`, `sid`; ID token: `typ: "ID"`, `azp`, `sid`; the Group Membership mapper's
 * `groups` claim with or without full paths). Its login page is a real HTML form.
 *
 * It runs on its own HTTP server, and its provider instance can be replaced in place (`rotateKeys`)
 * to rotate signing keys the way Keycloak does: the new key signs, the old one is still published.
 *
 * It also answers as Keycloak does where an operator's tools look (the doctor, `doctor/`): the
 * `client_credentials` grant for clients with service accounts on, Keycloak's token-endpoint errors
 * for wrong client credentials and for service accounts off, Keycloak's error page for an
 * unregistered `redirect_uri`, and, for clock tests, a `Date` header from a skewed clock.
 *
 * Refresh tokens are Keycloak's, not oidc-provider's (`refresh-tokens.ts`): every code grant returns
 * one (offline with `offline_access`, which needs no consent page, as a Keycloak client whose
 * "Consent required" is off), this server answers `grant_type=refresh_token` and the revocation
 * endpoint itself, and the handle changes the realm as an administrator would (disable, delete, end
 * SSO sessions, change groups and roles), none of it sending a back-channel logout, as in Keycloak.
 * Tests can make the token endpoint hang, fail or drop the connection, and read every refresh and
 * revocation it received. `admin-console.ts` is the same operations as a page, for the demo.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { compactVerify, createLocalJWKSet, exportJWK, generateKeyPair, importJWK, jwtVerify, SignJWT, type JWK } from 'jose'
import Provider, { type AdapterConstructor, type Configuration, type KoaContextWithOIDC } from 'oidc-provider'
import { KeycloakSessions, presentedTokenId } from './refresh-tokens.js'
import { adminConsoleAnswer, adminConsolePath } from './admin-console.js'
import { escapeHtml } from './html.js'

export interface RealmUser {
  username: string
  password: string
  /** Keycloak subjects are UUIDs; a stable one is derived from the username when absent. */
  sub?: string
  email?: string
  emailVerified?: boolean
  givenName?: string
  familyName?: string
  /** Group paths as Keycloak stores them, e.g. `/ml-team` or `/research/vision`. */
  groups?: string[]
  realmRoles?: string[]
  /** Client roles, by client id. */
  clientRoles?: Record<string, string[]>
  /** Keycloak's "Enabled" (on by default): a disabled user cannot sign in and its tokens do not refresh. */
  enabled?: boolean
}

export interface RealmClient {
  clientId: string
  clientSecret: string
  redirectUris: string[]
  postLogoutRedirectUris?: string[]
  /** Keycloak's "Backchannel logout URL"; "Backchannel logout session required" is on. */
  backchannelLogoutUri?: string
  /**
   * Keycloak's "Service accounts roles" (off by default): the token endpoint then grants
   * `client_credentials` to this client, with a token for its service-account user.
   */
  serviceAccountsEnabled?: boolean
  /** Keycloak's advanced setting "Use refresh tokens" (on by default): off, no grant returns a refresh token. */
  useRefreshTokens?: boolean
}

export interface KeycloakLikeIdpOptions {
  realm?: string
  host?: string
  port?: number
  clients: RealmClient[]
  users: RealmUser[]
  /** The Group Membership mapper's "Full group path" (Keycloak's default is on). */
  fullGroupPath?: boolean
  /** Put `realm_access`/`resource_access` into the ID token too (Keycloak: access token only). */
  rolesInIdToken?: boolean
  /** Serve opaque access tokens (only usable at userinfo) instead of Keycloak's JWTs. */
  opaqueAccessTokens?: boolean
  /** Seconds added to the clock the provider shows in its `Date` header (tokens are unaffected). */
  clockSkewSec?: number
  /** Keycloak's realm setting "Revoke Refresh Token" (off: older refresh tokens keep working after a refresh). */
  revokeRefreshToken?: boolean
  /** Keycloak's "Refresh Token Max Reuse" (0): with `revokeRefreshToken`, extra uses allowed per token. */
  refreshTokenMaxReuse?: number
  /**
   * Not Keycloak: a stricter provider in which each refresh token works once and presenting a used one
   * also revokes the newest token of its login. Tests use it to prove a client never presents a token twice.
   */
  revokeFamilyOnReuse?: boolean
  /** Access (and ID) token lifespan, Keycloak's default 300 s. */
  accessTokenLifespanSec?: number
  /** Keycloak's SSO Session Idle (1800 s): an online session not refreshed for this long ends. */
  ssoSessionIdleSec?: number
  /** Keycloak's SSO Session Max (36000 s). */
  ssoSessionMaxSec?: number
  /** Keycloak's Offline Session Idle (2592000 s, 30 days). */
  offlineSessionIdleSec?: number
  /** Keycloak's Offline Session Max, when "Offline Session Max Limited" is on (off by default). */
  offlineSessionMaxSec?: number
}

/** How the token endpoint fails on request: never answers, answers 503, or drops the connection. */
export type TokenEndpointFault = 'hang' | 503 | 'reset'

export interface RefreshLogEntry {
  /** When it arrived, in milliseconds on the realm's clock (`advanceClock` moves it). */
  at: number
  /** The presented refresh token's `jti`, read without checking it (undefined when it has none). */
  tokenId?: string
  username?: string
  /** `ok`, Keycloak's `error_description` of the refusal, `invalid_client` (401), or `fault` for an injected failure. */
  outcome: string
}

export interface RevocationLogEntry {
  at: number
  tokenId?: string
  hint?: string
  /** `revoked`, `invalid_token` (200, nothing to revoke), `invalid_client`, `fault`, or the 400's description. */
  outcome: string
}

export interface KeycloakLikeIdp {
  issuer: string
  origin: string
  users: Required<Pick<RealmUser, 'sub'>> & RealmUser extends infer U ? U[] : never
  /** Requests received per path (without query), for tests that count fetches. */
  hits: Map<string, number>
  /** The `sub` of a client's service-account user (`service-account-<clientId>`), stable while the realm runs. */
  serviceAccountSubject(clientId: string): string
  /** Generate a new signing key; the previous key stays published, as after a Keycloak rotation. */
  rotateKeys(): Promise<void>
  /** The demo's admin page (`admin-console.ts`). */
  adminConsoleUrl: string
  /** Keycloak's "Enabled" off: refreshes answer "User disabled", the login form refuses; sessions are kept. */
  disableUser(username: string): void
  /** "Enabled" on again: the refresh tokens of sessions still alive work again, as in Keycloak. */
  enableUser(username: string): void
  /** The user and its online and offline sessions go; its name no longer signs in. */
  deleteUser(username: string): void
  /** The user's group paths from now on (tokens issued before keep theirs). */
  setGroups(username: string, groups: string[]): void
  /** The user's realm roles besides the defaults, from now on. */
  setRealmRoles(username: string, roles: string[]): void
  /**
   * The user's SSO sessions end as at an idle or maximum timeout: online refresh tokens answer
   * "Session not active", offline ones keep working, the browser must type the password again.
   */
  endSsoSessions(username: string): void
  /** The realm's "Revocation: not before" set to now: every token issued before answers "Stale token". */
  pushNotBefore(): void
  /**
   * Moves the realm's session clock forward (session timers and refresh tokens' `iat`/`exp`), to
   * reach idle and maximum times without waiting. Access and ID tokens keep the real time, so they
   * verify anywhere.
   */
  advanceClock(seconds: number): void
  /**
   * Makes the token endpoint fail (`undefined` restores it). By default only `refresh_token` grants
   * fail, so logins keep working; `grants` lists the grant types that fail instead (`revocation` for
   * the revocation endpoint). A hanging request is answered by destroying its connection once the
   * fault is cleared or changed.
   */
  setTokenEndpointFault(fault: TokenEndpointFault | undefined, options?: { grants?: string[] }): void
  /** Every `refresh_token` grant received, in order. */
  refreshLog: RefreshLogEntry[]
  /** Every revocation request received, in order. */
  revocationLog: RevocationLogEntry[]
  /** The user's sessions that a refresh would still accept. */
  sessionsOf(username: string): { online: number, offline: number }
  close(): Promise<void>
}

const REALM_DEFAULT_ROLES = (realm: string): string[] => ['offline_access', 'uma_authorization', `default-roles-${realm}`]

/**
 * The provider's storage, in memory and per instance. oidc-provider ships one too but warns on every
 * start that it is for development; this one is the same thing, said once, here. `destroyWhere`
 * removes records of one model, as an administrator ending sessions removes them in Keycloak.
 */
function memoryAdapter (): { Adapter: AdapterConstructor, destroyWhere: (model: string, test: (payload: Record<string, unknown>) => boolean) => void } {
  const store = new Map<string, { payload: Record<string, unknown>, expiresAt: number }>()
  const destroyWhere = (model: string, test: (payload: Record<string, unknown>) => boolean): void => {
    for (const [key, entry] of store) if (key.startsWith(`${model}:`) && !key.startsWith(`${model}:uid:`) && test(entry.payload)) store.delete(key)
  }
  const live = (key: string): Record<string, unknown> | undefined => {
    const entry = store.get(key)
    if (entry === undefined || entry.expiresAt < Date.now()) return undefined
    return entry.payload
  }
  const Adapter = class MemoryAdapter {
    readonly #name: string
    constructor (name: string) { this.#name = name }
    async upsert (id: string, payload: Record<string, unknown>, expiresIn: number): Promise<void> {
      store.set(`${this.#name}:${id}`, { payload, expiresAt: Date.now() + expiresIn * 1000 })
      if (typeof payload.uid === 'string') store.set(`${this.#name}:uid:${payload.uid}`, { payload: { id }, expiresAt: Date.now() + expiresIn * 1000 })
    }

    async find (id: string): Promise<Record<string, unknown> | undefined> { return live(`${this.#name}:${id}`) }
    async findByUid (uid: string): Promise<Record<string, unknown> | undefined> {
      const ref = live(`${this.#name}:uid:${uid}`)
      return ref === undefined ? undefined : live(`${this.#name}:${ref.id as string}`)
    }

    async findByUserCode (): Promise<undefined> { return undefined }
    async consume (id: string): Promise<void> {
      const payload = live(`${this.#name}:${id}`)
      if (payload !== undefined) payload.consumed = Math.floor(Date.now() / 1000)
    }

    async destroy (id: string): Promise<void> { store.delete(`${this.#name}:${id}`) }
    async revokeByGrantId (grantId: string): Promise<void> {
      for (const [key, entry] of store) if (entry.payload.grantId === grantId) store.delete(key)
    }
  } as never
  return { Adapter, destroyWhere }
}

function loginPage (realm: string, uid: string, error?: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to ${escapeHtml(realm)}</title>
<style>body{font-family:system-ui,sans-serif;background:#f0f0f0;display:flex;justify-content:center;padding-top:8vh}
form{background:#fff;padding:2em 2.5em;border-radius:6px;box-shadow:0 2px 8px #0002;width:320px}
h1{font-size:1.3em;margin-top:0}label{display:block;margin:.8em 0 .3em}input{width:100%;padding:.5em;box-sizing:border-box}
button{margin-top:1.2em;width:100%;padding:.6em;background:#0066cc;color:#fff;border:0;border-radius:4px;font-size:1em}
.error{color:#b00020}</style></head>
<body><form method="post" action="/realms/${escapeHtml(realm)}/login-actions/authenticate/${escapeHtml(uid)}">
<h1>Sign in to your account</h1><p>Realm <b>${escapeHtml(realm)}</b> (Keycloak-compatible demo provider)</p>
${error === undefined ? '' : `<p class="error" id="input-error">${escapeHtml(error)}</p>`}
<label for="username">Username or email</label><input id="username" name="username" autofocus autocomplete="username">
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password">
<button id="kc-login" type="submit">Sign In</button></form></body></html>`
}

async function readBody (req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > 64 * 1024) throw new Error('form too large')
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

async function readForm (req: IncomingMessage): Promise<URLSearchParams> {
  return new URLSearchParams((await readBody(req)).toString('utf8'))
}

/**
 * The request again, for oidc-provider, after this server read its body to see the grant type:
 * oidc-provider reads the body from the request stream itself (and warns when given a parsed one).
 */
function withBody (req: IncomingMessage, body: Buffer): IncomingMessage {
  const replay = Readable.from([body], { objectMode: false })
  return Object.assign(replay, {
    method: req.method,
    url: req.url,
    headers: req.headers,
    rawHeaders: req.rawHeaders,
    httpVersion: req.httpVersion,
    httpVersionMajor: req.httpVersionMajor,
    httpVersionMinor: req.httpVersionMinor,
    socket: req.socket
  }) as unknown as IncomingMessage
}

/** Keycloak's answer to every failed client authentication, whatever failed (id, secret, method). */
const INVALID_CLIENT = { error: 'invalid_client', error_description: 'Invalid client or Invalid client credentials' }

function sendJson (res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', pragma: 'no-cache' }).end(JSON.stringify(body))
}

/**
 * The client's id and secret as Keycloak's "Client Id and Secret" authenticator reads them: HTTP
 * Basic (RFC 6749 2.3.1: form-encoded, then base64) or `client_id`/`client_secret` in the form.
 */
function clientCredentials (req: IncomingMessage, form: URLSearchParams): { clientId?: string, secret?: string } {
  const header = req.headers.authorization ?? ''
  if (/^Basic /i.test(header)) {
    const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    const formDecode = (value: string): string | undefined => {
      try {
        return decodeURIComponent(value.replace(/\+/g, ' '))
      } catch {
        return undefined
      }
    }
    return colon < 0 ? {} : { clientId: formDecode(decoded.slice(0, colon)), secret: formDecode(decoded.slice(colon + 1)) }
  }
  return { clientId: form.get('client_id') ?? undefined, secret: form.get('client_secret') ?? undefined }
}

/** What Keycloak's error page says where oidc-provider's would say something else (Keycloak's messages_en). */
function keycloakErrorText (route: string | undefined, out: { error?: unknown, error_description?: unknown }): string | undefined {
  if (out.error === 'invalid_redirect_uri') return 'Invalid parameter: redirect_uri'
  if (route === 'authorization' && out.error === 'invalid_client') return 'Client not found.'
  if (route === 'end_session' && out.error_description === 'post_logout_redirect_uri not registered') return 'Invalid redirect uri'
  return undefined
}

function keycloakErrorPage (realm: string, message: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to ${escapeHtml(realm)}</title></head>
<body><h1 id="kc-page-title">We are sorry...</h1>
<div id="kc-error-message"><p class="instruction">${escapeHtml(message)}</p></div></body></html>`
}

/** The `Date` header as a Keycloak host whose clock is `skewSec` ahead (behind, when negative) would send it. */
function showSkewedDate (res: ServerResponse, skewSec: number): void {
  const writeHead = res.writeHead
  // Node calls writeHead for implicit headers too (res.end without it), so every answer passes here.
  res.writeHead = function (this: ServerResponse, ...args: unknown[]) {
    this.setHeader('date', new Date(Date.now() + skewSec * 1000).toUTCString())
    return (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args)
  } as ServerResponse['writeHead']
}

async function newSigningKey (): Promise<JWK> {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true })
  return { ...await exportJWK(privateKey), kid: randomUUID(), alg: 'RS256', use: 'sig' }
}

const hasScope = (scope: string, name: string): boolean => scope.split(' ').includes(name)

/**
 * An authorization request asking for `offline_access`, with `consent` added to its `prompt`:
 * oidc-provider drops `offline_access` from any other request, Keycloak grants it. (With
 * `prompt=none`, which excludes consent, it stays dropped.)
 */
function withConsentForOfflineAccess (url: string): string {
  const parsed = new URL(url, 'http://localhost')
  const prompts = new Set((parsed.searchParams.get('prompt') ?? '').split(' ').filter(Boolean))
  if (!hasScope(parsed.searchParams.get('scope') ?? '', 'offline_access') || prompts.has('none') || prompts.has('consent')) return url
  parsed.searchParams.set('prompt', [...prompts, 'consent'].join(' '))
  return `${parsed.pathname}${parsed.search}`
}

/** The text Keycloak's login form shows a disabled user (messages_en `accountDisabledMessage`). */
const ACCOUNT_DISABLED = 'Account is disabled, contact your administrator.'

/** The `at_hash` of an access token: the left half of its SHA-256, as OpenID Connect defines it for RS256. */
function accessTokenHash (accessToken: string): string {
  return createHash('sha256').update(accessToken).digest().subarray(0, 16).toString('base64url')
}

/** The access token's `scope` claim, as Keycloak fills it for a login of this realm's clients. */
const accessTokenScope = (granted: string | undefined): string =>
  ['openid', 'profile', 'email', ...(hasScope(granted ?? '', 'offline_access') ? ['offline_access'] : [])].join(' ')

export async function startKeycloakLikeIdp (options: KeycloakLikeIdpOptions): Promise<KeycloakLikeIdp> {
  const realm = options.realm ?? 'clearml'
  const host = options.host ?? '127.0.0.1'
  const mount = `/realms/${realm}`
  const fullGroupPath = options.fullGroupPath ?? true
  const accessTokenLifespanSec = options.accessTokenLifespanSec ?? 300
  const ssoSessionMaxSec = options.ssoSessionMaxSec ?? 36000
  const users = options.users.map((user) => ({ ...user, sub: user.sub ?? randomUUID() }))
  const hits = new Map<string, number>()
  let keys: JWK[] = [await newSigningKey()]
  let provider: Provider
  // One store for the realm, kept when keys rotate, as Keycloak keeps sessions across a rotation.
  const storage = memoryAdapter()
  // Keycloak creates the service-account user when "Service accounts roles" is switched on.
  const serviceAccounts = new Map(options.clients.filter((client) => client.serviceAccountsEnabled === true).map((client) => [client.clientId, randomUUID()]))
  let clockOffsetSec = 0
  const realmNowMs = (): number => Date.now() + clockOffsetSec * 1000
  let fault: { kind: TokenEndpointFault, grants: Set<string> } | undefined
  const hanging = new Set<ServerResponse>()
  const refreshLog: RefreshLogEntry[] = []
  const revocationLog: RevocationLogEntry[] = []
  // Keycloak keeps revoked access-token ids until the tokens expire; userinfo refuses them.
  const revokedAccessTokens = new Set<string>()

  const server: Server = createServer((req, res) => { handle(req, res).catch(() => res.destroy()) })
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, host, resolve))
  const origin = `http://${host}:${(server.address() as AddressInfo).port}`
  const issuer = `${origin}${mount}`

  const userNamed = (username: string): typeof users[number] => {
    const user = users.find((candidate) => candidate.username === username)
    if (user === undefined) throw new Error(`realm ${realm} has no user ${username}`)
    return user
  }
  const enabledUser = (sub: unknown): typeof users[number] | undefined =>
    users.find((candidate) => candidate.sub === sub && candidate.enabled !== false)

  const sessions = new KeycloakSessions({
    issuer,
    now: () => Math.floor(realmNowMs() / 1000),
    standing: (sub) => {
      const user = users.find((candidate) => candidate.sub === sub)
      return user === undefined ? 'unknown' : user.enabled === false ? 'disabled' : 'enabled'
    },
    settings: {
      revokeRefreshToken: options.revokeRefreshToken ?? false,
      refreshTokenMaxReuse: options.refreshTokenMaxReuse ?? 0,
      revokeFamilyOnReuse: options.revokeFamilyOnReuse ?? false,
      ssoSessionIdleSec: options.ssoSessionIdleSec ?? 1800,
      ssoSessionMaxSec,
      offlineSessionIdleSec: options.offlineSessionIdleSec ?? 2592000,
      offlineSessionMaxSec: options.offlineSessionMaxSec
    }
  })

  /** Ends the browser sessions oidc-provider keeps for an account (or one of them): the next login asks for the password. */
  const endBrowserSessions = (test: (session: { accountId?: unknown, uid?: unknown }) => boolean): void => {
    storage.destroyWhere('Session', test)
  }

  const groupsClaim = (user: RealmUser): string[] =>
    (user.groups ?? []).map((path) => fullGroupPath ? path : path.slice(path.lastIndexOf('/') + 1))

  const roleClaims = (user: RealmUser, clientId: string): Record<string, unknown> => {
    const clientRoles = user.clientRoles ?? {}
    return {
      realm_access: { roles: [...REALM_DEFAULT_ROLES(realm), ...(user.realmRoles ?? [])] },
      resource_access: {
        ...Object.fromEntries(Object.entries(clientRoles).map(([client, roles]) => [client, { roles }])),
        account: { roles: ['manage-account', 'view-profile'] },
        ...(clientRoles[clientId] === undefined ? {} : { [clientId]: { roles: clientRoles[clientId] } })
      }
    }
  }

  const userClaims = (user: typeof users[number]): Record<string, unknown> => ({
    sub: user.sub,
    preferred_username: user.username,
    email: user.email,
    email_verified: user.emailVerified ?? false,
    name: [user.givenName, user.familyName].filter(Boolean).join(' ') || undefined,
    given_name: user.givenName,
    family_name: user.familyName,
    groups: groupsClaim(user)
  })

  /** What a first-party client of this realm is granted: everything it may ask for, offline_access included. */
  async function firstPartyGrant (oidc: Provider, clientId: string, accountId: string): Promise<InstanceType<Provider['Grant']>> {
    const grant = new oidc.Grant({ clientId, accountId })
    grant.addOIDCScope('openid profile email roles groups offline_access')
    grant.addOIDCClaims(['sub', 'name', 'preferred_username', 'given_name', 'family_name', 'picture', 'email', 'email_verified', 'groups', 'realm_access', 'resource_access'])
    grant.addResourceScope('urn:keycloak:account', 'openid profile email roles groups')
    await grant.save()
    return grant
  }

  const configuration = (): Configuration => ({
    clients: options.clients.map((client) => ({
      client_id: client.clientId,
      client_secret: client.clientSecret,
      redirect_uris: client.redirectUris,
      post_logout_redirect_uris: client.postLogoutRedirectUris ?? [],
      ...(client.backchannelLogoutUri === undefined ? {} : { backchannel_logout_uri: client.backchannelLogoutUri, backchannel_logout_session_required: true }),
      // refresh_token keeps offline_access in the authorization request (oidc-provider drops it
      // otherwise); this server answers the refresh grant itself.
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic'
    })),
    jwks: { keys },
    routes: {
      authorization: '/protocol/openid-connect/auth',
      token: '/protocol/openid-connect/token',
      userinfo: '/protocol/openid-connect/userinfo',
      jwks: '/protocol/openid-connect/certs',
      end_session: '/protocol/openid-connect/logout',
      revocation: '/protocol/openid-connect/revoke',
      introspection: '/protocol/openid-connect/token/introspect'
    },
    scopes: ['openid', 'profile', 'email', 'roles', 'groups', 'offline_access'],
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username', 'given_name', 'family_name', 'picture'],
      email: ['email', 'email_verified'],
      // Keycloak's Group Membership mapper puts groups into the ID token and userinfo as well.
      groups: ['groups'],
      roles: options.rolesInIdToken === true ? ['realm_access', 'resource_access'] : []
    },
    // Keycloak puts the profile claims into the ID token, not only into userinfo.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    // Keycloak's refresh tokens come from refresh-tokens.ts, never from oidc-provider.
    issueRefreshToken: async () => false,
    features: {
      devInteractions: { enabled: false },
      backchannelLogout: { enabled: true },
      // Enabled for discovery's revocation_endpoint; this server answers the endpoint itself.
      revocation: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        // Keycloak logs out without a confirmation page when id_token_hint is given.
        logoutSource: async (ctx: KoaContextWithOIDC, form: string) => {
          // A script's form.submit() sends no button value, so the "yes" travels as a hidden field.
          const confirmed = form.replace('</form>', '<input type="hidden" name="logout" value="yes"></form>')
          ctx.body = `<!doctype html><html><head><title>Logging out</title></head><body>${confirmed}
<p>Logging out of ${escapeHtml(realm)}…</p><script>document.forms[0].submit()</script>
<noscript><button form="op.logoutForm" name="logout" value="yes">Log out</button></noscript></body></html>`
        }
      },
      resourceIndicators: {
        enabled: options.opaqueAccessTokens !== true,
        // Keycloak's access token is a JWT whose audience is "account".
        defaultResource: async () => 'urn:keycloak:account',
        useGrantedResource: async () => true,
        getResourceServerInfo: async () => ({ scope: 'openid profile email roles groups', audience: 'account', accessTokenFormat: 'jwt' })
      }
    },
    formats: {
      customizers: {
        jwt: async (ctx, token, jwt) => {
          const user = users.find((candidate) => candidate.sub === (token as { accountId?: string }).accountId)
          const clientId = (token as { clientId?: string }).clientId ?? ''
          const { client_id: _client, ...standard } = jwt.payload
          jwt.payload = {
            ...standard,
            typ: 'Bearer',
            azp: clientId,
            // The same per-client session id the ID token and the logout token carry.
            sid: (token as { sid?: string }).sid ?? (token as { sessionUid?: string }).sessionUid,
            // The login's scope: the token's own is the resource's, which never lists offline_access.
            scope: accessTokenScope((ctx.oidc.entities.AuthorizationCode as { scope?: string } | undefined)?.scope ?? (token as { scope?: string }).scope),
            ...(user === undefined ? {} : { ...userClaims(user), ...roleClaims(user, clientId) })
          }
        }
      }
    },
    // A disabled user has no account here: the browser's session no longer signs it in, and a code
    // issued before the change is refused at the token endpoint, as Keycloak refuses both.
    findAccount: async (_ctx, sub) => {
      const user = enabledUser(sub)
      if (user === undefined) return undefined
      return {
        accountId: sub,
        claims: async (_use, _scope, _claims, _rejected) => {
          const claims: Record<string, unknown> = { ...userClaims(user) }
          if (options.rolesInIdToken === true) Object.assign(claims, roleClaims(user, options.clients[0]?.clientId ?? ''))
          return claims as { sub: string }
        }
      }
    },
    // First-party client: no consent screen, as a Keycloak client with "Consent required" off.
    loadExistingGrant: async (ctx) => {
      const session = ctx.oidc.session!
      const client = ctx.oidc.client!
      const existing = ctx.oidc.result?.consent?.grantId ?? session.grantIdFor(client.clientId)
      if (existing !== undefined) {
        const found = await ctx.oidc.provider.Grant.find(existing)
        if (found !== undefined) return found
      }
      return await firstPartyGrant(ctx.oidc.provider, client.clientId, session.accountId!)
    },
    interactions: { url: async (_ctx, interaction) => `${mount}/login-actions/authenticate/${interaction.uid}` },
    cookies: { keys: [randomUUID()] },
    adapter: storage.Adapter,
    // oidc-provider refuses outgoing calls to special-use addresses (SSRF protection); this realm's
    // clients, like a Keycloak's on a private network, are on such addresses: its back-channel logout
    // must reach them.
    fetch: async (url: string | URL | Request, init?: RequestInit) => {
      const { dispatcher, ...rest } = (init ?? {}) as RequestInit & { dispatcher?: unknown }
      return await fetch(url, rest)
    },
    // The browser's session lasts as long as Keycloak's SSO Session Max.
    ttl: { AccessToken: accessTokenLifespanSec, IdToken: accessTokenLifespanSec, Interaction: 600, Session: ssoSessionMaxSec, Grant: 3600, AuthorizationCode: 60 },
    renderError: async (ctx, out) => {
      ctx.type = 'html'
      const keycloakText = keycloakErrorText(ctx.oidc?.route, out)
      ctx.body = keycloakText !== undefined
        ? keycloakErrorPage(realm, keycloakText)
        : `<!doctype html><title>Error</title><h1>${escapeHtml(String(out.error))}</h1><p>${escapeHtml(String(out.error_description ?? ''))}</p>`
    }
  })

  /**
   * Keycloak's answer to an authorization-code grant carries a refresh token (unless the client's
   * "Use refresh tokens" is off) and the session's id and scope; oidc-provider's has none of them.
   */
  const addRefreshToken = (ctx: KoaContextWithOIDC): void => {
    const body = ctx.body as Record<string, unknown> | undefined
    const code = ctx.oidc.entities.AuthorizationCode as { accountId?: string, clientId?: string, scope?: string, sid?: string, sessionUid?: string, nonce?: string } | undefined
    if (typeof body?.access_token !== 'string' || code?.accountId === undefined || code.clientId === undefined || code.sessionUid === undefined) return
    const scope = code.scope ?? 'openid'
    const sid = code.sid ?? code.sessionUid
    body.scope = scope
    body['not-before-policy'] = 0
    body.session_state = sid
    const client = options.clients.find((candidate) => candidate.clientId === code.clientId)
    if (client?.useRefreshTokens === false) {
      body.refresh_expires_in = 0
      return
    }
    const issued = sessions.issueAtLogin({ sessionId: code.sessionUid, sid, sub: code.accountId, clientId: code.clientId, scope, nonce: code.nonce })
    body.refresh_token = issued.token
    body.refresh_expires_in = issued.expiresIn
  }

  const build = (): Provider => {
    const next = new Provider(issuer, configuration())
    next.proxy = false
    next.use(async (ctx, nextMiddleware) => {
      await nextMiddleware()
      if (ctx.oidc?.route !== 'token') return
      // oidc-provider says "client authentication failed"; Keycloak words it its own way.
      if (ctx.status === 401 && (ctx.body as { error?: unknown } | undefined)?.error === 'invalid_client') ctx.body = INVALID_CLIENT
      if (ctx.status === 200 && ctx.oidc.params?.grant_type === 'authorization_code') addRefreshToken(ctx as KoaContextWithOIDC)
    })
    // A logout at the provider ends the SSO session: its online refresh tokens stop working.
    next.on('end_session.success', (ctx: KoaContextWithOIDC) => {
      const uid = ctx.oidc.session?.uid
      if (uid !== undefined) sessions.endSession(uid)
    })
    // Keycloak's ID token says what it is and whom it was issued to, and carries the session id.
    // (Without this, an oidc-provider logout token would also pass for an ID token and vice versa.)
    const IdToken = next.IdToken as unknown as { prototype: { payload: () => Promise<Record<string, unknown>>, client?: { clientId: string } } }
    const payload = IdToken.prototype.payload
    IdToken.prototype.payload = async function (this: { client?: { clientId: string }, ctx?: KoaContextWithOIDC }) {
      const claims = await payload.call(this)
      // oidc-provider builds logout tokens with the same class; Keycloak types them "Logout".
      if (claims.events !== undefined) return { ...claims, typ: 'Logout' }
      const code = this.ctx?.oidc.entities.AuthorizationCode as { sessionUid?: string } | undefined
      // Keycloak's Group Membership mapper adds the groups to the ID token by default ("Add to ID
      // token" on), whatever scope was asked for: a user in many groups gets a large ID token.
      const user = users.find((candidate) => candidate.sub === claims.sub)
      const groups = user === undefined ? {} : { groups: groupsClaim(user) }
      return { ...claims, ...groups, typ: 'ID', azp: this.client?.clientId, sid: claims.sid ?? code?.sessionUid ?? this.ctx?.oidc.session?.uid }
    }
    return next
  }
  provider = build()

  /**
   * The login form. oidc-provider grants `offline_access` only with `prompt=consent` (this server adds
   * it to such requests); Keycloak asks no consent for it, so that consent is given here, unseen: with
   * the password, or at once when the browser already has a session.
   */
  async function interaction (req: IncomingMessage, res: ServerResponse, uid: string): Promise<void> {
    const details = await provider.interactionDetails(req, res)
    if (details.uid !== uid) throw new Error('interaction mismatch')
    const clientId = String(details.params.client_id)
    if (details.prompt.name === 'consent' && details.session?.accountId !== undefined) {
      const grant = await firstPartyGrant(provider, clientId, details.session.accountId)
      await provider.interactionFinished(req, res, { consent: { grantId: grant.jti } }, { mergeWithLastSubmission: true })
      return
    }
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(loginPage(realm, uid))
      return
    }
    const form = await readForm(req)
    const login = form.get('username') ?? ''
    const user = users.find((candidate) => candidate.username === login || candidate.email === login)
    if (user === undefined || user.password !== form.get('password')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(loginPage(realm, uid, 'Invalid username or password.'))
      return
    }
    if (user.enabled === false) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(loginPage(realm, uid, ACCOUNT_DISABLED))
      return
    }
    const grant = await firstPartyGrant(provider, clientId, user.sub)
    await provider.interactionFinished(req, res, { login: { accountId: user.sub }, consent: { grantId: grant.jti } }, { mergeWithLastSubmission: false })
  }

  const publicKeys = (): JWK[] => keys.map(({ d, p, q, dp, dq, qi, ...publicPart }) => publicPart)

  /**
   * Keycloak's userinfo accepts its own JWT access tokens (audience "account"); oidc-provider only
   * accepts tokens without a resource audience there, so this endpoint answers them itself.
   */
  async function jwtUserinfo (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const header = req.headers.authorization ?? ''
    try {
      const { payload } = await jwtVerify(header.replace(/^Bearer /i, ''), createLocalJWKSet({ keys: publicKeys() }), { issuer })
      const user = enabledUser(payload.sub)
      if (user === undefined || revokedAccessTokens.has(payload.jti ?? '')) throw new Error('no such user or token')
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(userClaims(user)))
    } catch {
      res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"', 'content-type': 'application/json' })
        .end(JSON.stringify({ error: 'invalid_token', error_description: 'Token verification failed' }))
    }
  }

  /** The realm's client for these credentials (Basic or form), or undefined when they are wrong. */
  const authenticatedClient = (req: IncomingMessage, form: URLSearchParams): RealmClient | undefined => {
    const { clientId, secret } = clientCredentials(req, form)
    const client = options.clients.find((candidate) => candidate.clientId === clientId)
    return client === undefined || secret !== client.clientSecret ? undefined : client
  }

  /**
   * Keycloak's client credentials grant: the client authenticates (Basic or form) and receives an
   * access token for its service-account user, shaped like Keycloak's. No refresh token (Keycloak's
   * default for this grant) and no ID token, which Keycloak adds when the scope has openid.
   */
  async function clientCredentialsGrant (req: IncomingMessage, res: ServerResponse, form: URLSearchParams): Promise<void> {
    const client = authenticatedClient(req, form)
    if (client === undefined) {
      sendJson(res, 401, INVALID_CLIENT)
      return
    }
    const subject = serviceAccounts.get(client.clientId)
    if (subject === undefined) {
      // Keycloak's own source answers this with 401; FACTS.md and the brief have 400. The doctor reads
      // the error and its description, not the status, so either works with it.
      sendJson(res, 400, { error: 'unauthorized_client', error_description: 'Client not enabled to retrieve service account' })
      return
    }
    const requested = (form.get('scope') ?? '').split(' ').filter((scope) => ['openid', 'profile', 'email', 'roles', 'groups'].includes(scope))
    const scope = [...new Set([...requested, 'profile', 'email'])].join(' ')
    const [key] = keys
    const now = Math.floor(Date.now() / 1000)
    const accessToken = await new SignJWT({
      typ: 'Bearer',
      azp: client.clientId,
      client_id: client.clientId,
      scope,
      email_verified: false,
      preferred_username: `service-account-${client.clientId}`,
      realm_access: { roles: REALM_DEFAULT_ROLES(realm) },
      resource_access: { account: { roles: ['manage-account', 'view-profile'] } }
    })
      .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: key.kid })
      .setIssuer(issuer)
      .setSubject(subject)
      .setAudience('account')
      .setIssuedAt(now)
      .setExpirationTime(now + 300)
      .setJti(randomUUID())
      .sign(await importJWK(key, 'RS256'))
    sendJson(res, 200, { access_token: accessToken, expires_in: 300, refresh_expires_in: 0, token_type: 'Bearer', 'not-before-policy': 0, scope })
  }

  /**
   * The access and ID tokens of a refresh, as the code grant's (same key, header and claims) but with
   * the user's current profile, groups and roles. The ID token carries `at_hash`, as Keycloak's
   * refreshed ID token does, and the login's nonce when it had one.
   */
  async function mintRefreshedTokens (user: typeof users[number], clientId: string, sid: string, scope: string, nonce: string | undefined): Promise<{ accessToken: string, idToken?: string }> {
    const [key] = keys
    const signingKey = await importJWK(key, 'RS256')
    const now = Math.floor(Date.now() / 1000)
    const exp = now + accessTokenLifespanSec
    const accessToken = await new SignJWT({
      jti: randomBytes(32).toString('base64url'),
      scope: accessTokenScope(scope),
      typ: 'Bearer',
      azp: clientId,
      sid,
      ...userClaims(user),
      ...roleClaims(user, clientId)
    })
      .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: key.kid })
      .setIssuer(issuer)
      .setSubject(user.sub)
      .setAudience('account')
      .setIssuedAt(now)
      .setExpirationTime(exp)
      .sign(signingKey)
    if (!hasScope(scope, 'openid')) return { accessToken }
    const { preferred_username: preferredUsername, name, given_name: givenName, family_name: familyName, email, email_verified: emailVerified } = userClaims(user)
    const idToken = await new SignJWT({
      sub: user.sub,
      ...(hasScope(scope, 'profile') ? { preferred_username: preferredUsername, name, given_name: givenName, family_name: familyName } : {}),
      ...(hasScope(scope, 'email') ? { email, email_verified: emailVerified } : {}),
      ...(nonce === undefined ? {} : { nonce }),
      at_hash: accessTokenHash(accessToken),
      groups: groupsClaim(user),
      ...(options.rolesInIdToken === true ? roleClaims(user, clientId) : {}),
      typ: 'ID',
      azp: clientId,
      sid
    })
      .setProtectedHeader({ alg: 'RS256', kid: key.kid })
      .setIssuer(issuer)
      .setAudience(clientId)
      .setIssuedAt(now)
      .setExpirationTime(exp)
      .sign(signingKey)
    return { accessToken, idToken }
  }

  /** Keycloak's `grant_type=refresh_token`: client authentication as for the code, then refresh-tokens.ts decides. */
  async function refreshTokenGrant (req: IncomingMessage, res: ServerResponse, form: URLSearchParams): Promise<void> {
    const presented = form.get('refresh_token') ?? undefined
    const log = (outcome: string, sub?: string): void => {
      refreshLog.push({ at: realmNowMs(), tokenId: presentedTokenId(presented), username: users.find((user) => user.sub === sub)?.username, outcome })
    }
    const client = authenticatedClient(req, form)
    if (client === undefined) {
      log('invalid_client')
      sendJson(res, 401, INVALID_CLIENT)
      return
    }
    if (presented === undefined) {
      log('No refresh token')
      sendJson(res, 400, { error: 'invalid_request', error_description: 'No refresh token' })
      return
    }
    const outcome = sessions.refresh(presented, client.clientId, client.useRefreshTokens !== false)
    const user = outcome.ok ? enabledUser(outcome.sub) : undefined
    if (!outcome.ok || user === undefined) {
      const description = outcome.ok ? 'User disabled' : outcome.description
      log(description, outcome.sub)
      sendJson(res, 400, { error: 'invalid_grant', error_description: description })
      return
    }
    const { accessToken, idToken } = await mintRefreshedTokens(user, client.clientId, outcome.sid, outcome.scope, outcome.nonce)
    log('ok', outcome.sub)
    sendJson(res, 200, {
      access_token: accessToken,
      expires_in: accessTokenLifespanSec,
      refresh_expires_in: outcome.next?.expiresIn ?? 0,
      ...(outcome.next === undefined ? {} : { refresh_token: outcome.next.token }),
      token_type: 'Bearer',
      ...(idToken === undefined ? {} : { id_token: idToken }),
      'not-before-policy': 0,
      session_state: outcome.sid,
      scope: outcome.scope
    })
  }

  /**
   * Keycloak's revocation endpoint (RFC 7009, TokenRevocationEndpoint.java): client authentication,
   * then `token`. A refresh token ends what refresh-tokens.ts says; an access token of this realm is
   * remembered as revoked; a token it cannot use is answered 200 with `invalid_token`, as Keycloak does.
   */
  async function revocation (req: IncomingMessage, res: ServerResponse, form: URLSearchParams): Promise<void> {
    const token = form.get('token') ?? undefined
    const log = (outcome: string, tokenId = presentedTokenId(token)): void => {
      revocationLog.push({ at: realmNowMs(), tokenId, hint: form.get('token_type_hint') ?? undefined, outcome })
    }
    const client = authenticatedClient(req, form)
    if (client === undefined) {
      log('invalid_client')
      sendJson(res, 401, INVALID_CLIENT)
      return
    }
    if (token === undefined) {
      log('Token not provided')
      sendJson(res, 400, { error: 'invalid_request', error_description: 'Token not provided' })
      return
    }
    const outcome = sessions.revoke(token, client.clientId)
    if (outcome.kind === 'revoked') {
      const endedSessionId = outcome.endedSessionId
      if (endedSessionId !== undefined) endBrowserSessions((session) => session.uid === endedSessionId)
      log('revoked', outcome.tokenId)
      res.writeHead(200, { 'cache-control': 'no-store' }).end()
      return
    }
    if (outcome.kind === 'unmatching_clients') {
      log('Unmatching clients', outcome.tokenId)
      sendJson(res, 400, { error: 'invalid_request', error_description: 'Unmatching clients' })
      return
    }
    if (outcome.kind === 'not_refresh_token') {
      const accessToken = await decodeSigned(token)
      if (accessToken !== undefined && accessToken.typ !== 'Bearer') {
        log('Unsupported token type')
        sendJson(res, 400, { error: 'unsupported_token_type', error_description: 'Unsupported token type' })
        return
      }
      if (accessToken !== undefined && accessToken.azp !== client.clientId) {
        log('Unmatching clients')
        sendJson(res, 400, { error: 'invalid_request', error_description: 'Unmatching clients' })
        return
      }
      if (accessToken !== undefined && typeof accessToken.jti === 'string') {
        revokedAccessTokens.add(accessToken.jti)
        log('revoked', accessToken.jti)
        res.writeHead(200, { 'cache-control': 'no-store' }).end()
        return
      }
    }
    log('invalid_token')
    sendJson(res, 200, { error: 'invalid_token', error_description: 'Invalid token' })
  }

  /** The payload of a JWT this realm signed with one of its keys (expired or not), else undefined. */
  async function decodeSigned (token: string): Promise<Record<string, unknown> | undefined> {
    try {
      const { payload } = await compactVerify(token, createLocalJWKSet({ keys: publicKeys() }))
      return JSON.parse(new TextDecoder().decode(payload)) as Record<string, unknown>
    } catch {
      return undefined
    }
  }

  /** An injected failure of the token endpoint (`setTokenEndpointFault`), after the request was read. */
  function injectFault (res: ServerResponse, kind: TokenEndpointFault): void {
    if (kind === 'hang') hanging.add(res)
    else if (kind === 'reset') res.socket?.destroy()
    else sendJson(res, 503, { error: 'temporarily_unavailable', error_description: 'Service Unavailable' })
  }

  /** Answers every hanging request the only way a hung server is noticed: its connection drops. */
  function releaseHanging (): void {
    for (const res of hanging) res.socket?.destroy()
    hanging.clear()
  }

  async function handle (incoming: IncomingMessage, res: ServerResponse): Promise<void> {
    let req = incoming
    const path = (req.url ?? '/').split('?')[0]
    hits.set(path, (hits.get(path) ?? 0) + 1)
    if (options.clockSkewSec !== undefined) showSkewedDate(res, options.clockSkewSec)
    try {
      if (req.method === 'POST' && path === `${mount}/protocol/openid-connect/token`) {
        const body = await readBody(req)
        const form = new URLSearchParams(body.toString('utf8'))
        const grantType = form.get('grant_type') ?? ''
        if (fault?.grants.has(grantType) === true) {
          if (grantType === 'refresh_token') refreshLog.push({ at: realmNowMs(), tokenId: presentedTokenId(form.get('refresh_token') ?? undefined), outcome: 'fault' })
          injectFault(res, fault.kind)
          return
        }
        if (grantType === 'client_credentials') {
          await clientCredentialsGrant(req, res, form)
          return
        }
        if (grantType === 'refresh_token') {
          await refreshTokenGrant(req, res, form)
          return
        }
        req = withBody(req, body)
      }
      if (req.method === 'POST' && path === `${mount}/protocol/openid-connect/revoke`) {
        const form = await readForm(req)
        if (fault?.grants.has('revocation') === true) {
          revocationLog.push({ at: realmNowMs(), tokenId: presentedTokenId(form.get('token') ?? undefined), hint: form.get('token_type_hint') ?? undefined, outcome: 'fault' })
          injectFault(res, fault.kind)
          return
        }
        await revocation(req, res, form)
        return
      }
      if (req.method === 'GET' && path === `${mount}/protocol/openid-connect/auth`) req.url = withConsentForOfflineAccess(req.url ?? '/')
      if (path === adminConsolePath(realm)) {
        const form = req.method === 'POST' ? await readForm(req) : undefined
        const answer = adminConsoleAnswer(realm, req.method ?? 'GET', new URL(req.url ?? '/', origin).searchParams, form, administration)
        res.writeHead(answer.status, answer.headers).end(answer.body)
        return
      }
      if (path === `${mount}/protocol/openid-connect/userinfo` && options.opaqueAccessTokens !== true) {
        await jwtUserinfo(req, res)
        return
      }
      const match = path.match(new RegExp(`^${mount}/login-actions/authenticate/([^/]+)$`))
      if (match !== null) {
        await interaction(req, res, match[1])
        return
      }
      if (path === mount || path.startsWith(mount + '/')) {
        // As Express's mounting does: oidc-provider derives its URLs from originalUrl minus url.
        ;(req as IncomingMessage & { originalUrl?: string }).originalUrl = req.url
        req.url = req.url!.slice(mount.length) || '/'
        provider.callback()(req, res)
        return
      }
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found')
    } catch (err) {
      if (!res.headersSent) res.writeHead(400, { 'content-type': 'text/plain' }).end(`error: ${(err as Error).message}`)
    }
  }

  // What an administrator does in Keycloak's admin console; none of it sends a back-channel logout.
  const administration = {
    users: () => users.map((user) => ({
      username: user.username,
      email: user.email,
      enabled: user.enabled !== false,
      groups: [...(user.groups ?? [])],
      sessions: sessions.sessionsOf(user.sub)
    })),
    disableUser (username: string) {
      // Keycloak keeps a disabled user's sessions (refreshes answer "User disabled"); its browser
      // session no longer signs it in, which here means ending oidc-provider's.
      const user = userNamed(username)
      user.enabled = false
      endBrowserSessions((session) => session.accountId === user.sub)
    },
    enableUser (username: string) {
      userNamed(username).enabled = true
    },
    deleteUser (username: string) {
      const user = userNamed(username)
      users.splice(users.indexOf(user), 1)
      sessions.forgetUser(user.sub)
      endBrowserSessions((session) => session.accountId === user.sub)
    },
    endSsoSessions (username: string) {
      const user = userNamed(username)
      sessions.endSessionsOf(user.sub)
      endBrowserSessions((session) => session.accountId === user.sub)
    },
    setGroups (username: string, groups: string[]) {
      userNamed(username).groups = [...groups]
    }
  }

  return {
    issuer,
    origin,
    users: users as KeycloakLikeIdp['users'],
    hits,
    adminConsoleUrl: `${origin}${adminConsolePath(realm)}`,
    refreshLog,
    revocationLog,
    serviceAccountSubject (clientId: string) {
      const subject = serviceAccounts.get(clientId)
      if (subject === undefined) throw new Error(`client ${clientId} has no service account (serviceAccountsEnabled is off or the client is unknown)`)
      return subject
    },
    async rotateKeys () {
      keys = [await newSigningKey(), ...keys]
      provider = build()
    },
    disableUser: administration.disableUser,
    enableUser: administration.enableUser,
    deleteUser: administration.deleteUser,
    endSsoSessions: administration.endSsoSessions,
    setGroups: administration.setGroups,
    setRealmRoles (username: string, roles: string[]) {
      userNamed(username).realmRoles = [...roles]
    },
    pushNotBefore () {
      sessions.pushNotBefore()
    },
    advanceClock (seconds: number) {
      clockOffsetSec += seconds
    },
    setTokenEndpointFault (kind: TokenEndpointFault | undefined, faultOptions: { grants?: string[] } = {}) {
      releaseHanging()
      fault = kind === undefined ? undefined : { kind, grants: new Set(faultOptions.grants ?? ['refresh_token']) }
    },
    sessionsOf (username: string) {
      return sessions.sessionsOf(userNamed(username).sub)
    },
    async close () {
      releaseHanging()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
