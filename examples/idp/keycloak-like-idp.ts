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
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import { randomUUID } from 'node:crypto'
import { createLocalJWKSet, exportJWK, generateKeyPair, importJWK, jwtVerify, SignJWT, type JWK } from 'jose'
import Provider, { type AdapterConstructor, type Configuration, type KoaContextWithOIDC } from 'oidc-provider'

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
  close(): Promise<void>
}

const REALM_DEFAULT_ROLES = (realm: string): string[] => ['offline_access', 'uma_authorization', `default-roles-${realm}`]

/**
 * The provider's storage, in memory and per instance. oidc-provider ships one too but warns on every
 * start that it is for development; this one is the same thing, said once, here.
 */
function memoryAdapter (): AdapterConstructor {
  const store = new Map<string, { payload: Record<string, unknown>, expiresAt: number }>()
  const live = (key: string): Record<string, unknown> | undefined => {
    const entry = store.get(key)
    if (entry === undefined || entry.expiresAt < Date.now()) return undefined
    return entry.payload
  }
  return class MemoryAdapter {
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
}

function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
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

export async function startKeycloakLikeIdp (options: KeycloakLikeIdpOptions): Promise<KeycloakLikeIdp> {
  const realm = options.realm ?? 'clearml'
  const host = options.host ?? '127.0.0.1'
  const mount = `/realms/${realm}`
  const fullGroupPath = options.fullGroupPath ?? true
  const users = options.users.map((user) => ({ ...user, sub: user.sub ?? randomUUID() }))
  const hits = new Map<string, number>()
  let keys: JWK[] = [await newSigningKey()]
  let provider: Provider
  // One store for the realm, kept when keys rotate, as Keycloak keeps sessions across a rotation.
  const storage = memoryAdapter()
  // Keycloak creates the service-account user when "Service accounts roles" is switched on.
  const serviceAccounts = new Map(options.clients.filter((client) => client.serviceAccountsEnabled === true).map((client) => [client.clientId, randomUUID()]))

  const server: Server = createServer((req, res) => { handle(req, res).catch(() => res.destroy()) })
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, host, resolve))
  const origin = `http://${host}:${(server.address() as AddressInfo).port}`
  const issuer = `${origin}${mount}`

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

  const configuration = (): Configuration => ({
    clients: options.clients.map((client) => ({
      client_id: client.clientId,
      client_secret: client.clientSecret,
      redirect_uris: client.redirectUris,
      post_logout_redirect_uris: client.postLogoutRedirectUris ?? [],
      ...(client.backchannelLogoutUri === undefined ? {} : { backchannel_logout_uri: client.backchannelLogoutUri, backchannel_logout_session_required: true }),
      grant_types: ['authorization_code'],
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
    scopes: ['openid', 'profile', 'email', 'roles', 'groups'],
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
    features: {
      devInteractions: { enabled: false },
      backchannelLogout: { enabled: true },
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
        jwt: async (_ctx, token, jwt) => {
          const user = users.find((candidate) => candidate.sub === (token as { accountId?: string }).accountId)
          const clientId = (token as { clientId?: string }).clientId ?? ''
          const { client_id: _client, ...standard } = jwt.payload
          jwt.payload = {
            ...standard,
            typ: 'Bearer',
            azp: clientId,
            // The same per-client session id the ID token and the logout token carry.
            sid: (token as { sid?: string }).sid ?? (token as { sessionUid?: string }).sessionUid,
            scope: 'openid profile email',
            ...(user === undefined ? {} : { ...userClaims(user), ...roleClaims(user, clientId) })
          }
        }
      }
    },
    findAccount: async (_ctx, sub) => {
      const user = users.find((candidate) => candidate.sub === sub)
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
      const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId! })
      grant.addOIDCScope('openid profile email roles groups')
      grant.addOIDCClaims(['sub', 'name', 'preferred_username', 'given_name', 'family_name', 'picture', 'email', 'email_verified', 'groups', 'realm_access', 'resource_access'])
      grant.addResourceScope('urn:keycloak:account', 'openid profile email roles groups')
      await grant.save()
      return grant
    },
    interactions: { url: async (_ctx, interaction) => `${mount}/login-actions/authenticate/${interaction.uid}` },
    cookies: { keys: [randomUUID()] },
    adapter: storage,
    // oidc-provider refuses outgoing calls to special-use addresses (SSRF protection); this realm's
    // clients, like a Keycloak's on a private network, are on such addresses: its back-channel logout
    // must reach them.
    fetch: async (url: string | URL | Request, init?: RequestInit) => {
      const { dispatcher, ...rest } = (init ?? {}) as RequestInit & { dispatcher?: unknown }
      return await fetch(url, rest)
    },
    ttl: { AccessToken: 300, IdToken: 300, Interaction: 600, Session: 3600, Grant: 3600, AuthorizationCode: 60 },
    renderError: async (ctx, out) => {
      ctx.type = 'html'
      const keycloakText = keycloakErrorText(ctx.oidc?.route, out)
      ctx.body = keycloakText !== undefined
        ? keycloakErrorPage(realm, keycloakText)
        : `<!doctype html><title>Error</title><h1>${escapeHtml(String(out.error))}</h1><p>${escapeHtml(String(out.error_description ?? ''))}</p>`
    }
  })

  const build = (): Provider => {
    const next = new Provider(issuer, configuration())
    next.proxy = false
    next.use(async (ctx, nextMiddleware) => {
      await nextMiddleware()
      // oidc-provider says "client authentication failed"; Keycloak words it its own way.
      if (ctx.oidc?.route === 'token' && ctx.status === 401 && (ctx.body as { error?: unknown } | undefined)?.error === 'invalid_client') ctx.body = INVALID_CLIENT
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

  async function interaction (req: IncomingMessage, res: ServerResponse, uid: string): Promise<void> {
    const details = await provider.interactionDetails(req, res)
    if (details.uid !== uid) throw new Error('interaction mismatch')
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
    await provider.interactionFinished(req, res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false })
  }

  /**
   * Keycloak's userinfo accepts its own JWT access tokens (audience "account"); oidc-provider only
   * accepts tokens without a resource audience there, so this endpoint answers them itself.
   */
  async function jwtUserinfo (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const header = req.headers.authorization ?? ''
    const publicKeys = keys.map(({ d, p, q, dp, dq, qi, ...publicPart }) => publicPart)
    try {
      const { payload } = await jwtVerify(header.replace(/^Bearer /i, ''), createLocalJWKSet({ keys: publicKeys }), { issuer })
      const user = users.find((candidate) => candidate.sub === payload.sub)
      if (user === undefined) throw new Error('unknown user')
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(userClaims(user)))
    } catch {
      res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"', 'content-type': 'application/json' })
        .end(JSON.stringify({ error: 'invalid_token', error_description: 'Token verification failed' }))
    }
  }

  /**
   * Keycloak's client credentials grant: the client authenticates (Basic or form) and receives an
   * access token for its service-account user, shaped like Keycloak's. No refresh token (Keycloak's
   * default for this grant) and no ID token, which Keycloak adds when the scope has openid.
   */
  async function clientCredentialsGrant (req: IncomingMessage, res: ServerResponse, form: URLSearchParams): Promise<void> {
    const { clientId, secret } = clientCredentials(req, form)
    const client = options.clients.find((candidate) => candidate.clientId === clientId)
    if (client === undefined || secret !== client.clientSecret) {
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

  async function handle (incoming: IncomingMessage, res: ServerResponse): Promise<void> {
    let req = incoming
    const path = (req.url ?? '/').split('?')[0]
    hits.set(path, (hits.get(path) ?? 0) + 1)
    if (options.clockSkewSec !== undefined) showSkewedDate(res, options.clockSkewSec)
    try {
      if (req.method === 'POST' && path === `${mount}/protocol/openid-connect/token`) {
        const body = await readBody(req)
        const form = new URLSearchParams(body.toString('utf8'))
        if (form.get('grant_type') === 'client_credentials') {
          await clientCredentialsGrant(req, res, form)
          return
        }
        req = withBody(req, body)
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

  return {
    issuer,
    origin,
    users: users as KeycloakLikeIdp['users'],
    hits,
    serviceAccountSubject (clientId: string) {
      const subject = serviceAccounts.get(clientId)
      if (subject === undefined) throw new Error(`client ${clientId} has no service account (serviceAccountsEnabled is off or the client is unknown)`)
      return subject
    },
    async rotateKeys () {
      keys = [await newSigningKey(), ...keys]
      provider = build()
    },
    async close () {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
