/**
 * The HTTP surface of SPEC section 4. Handlers are thin: they read the request, call the SSO service,
 * and set cookies; refusals are thrown and answered by `ssoErrorHandler`. Registered in its own
 * encapsulated context so its error handler, validator and log serializers stay out of the host's.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { TypeBoxValidatorCompiler, type TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { Static } from 'typebox'
import { ID_TOKEN_COOKIE, type CookiePolicy } from '../lib/session/cookies.js'
import { publishAuthRefused } from '../lib/diagnostics.js'
import { envelope, errorEnvelope } from '../lib/envelope.js'
import { SsoError } from '../lib/errors.js'
import type { ExplainSource, Explanation } from '../lib/rules/explain.js'
import { safeReturnPath, sameOriginUrl } from '../lib/redirects.js'
import type { CompletedLogin, KeycloakSso } from '../lib/sso.js'
import { slotOfState } from '../lib/session/transaction.js'
import {
  AuthorizeData, AuthorizeInput, BackchannelLogoutInput, BrowserLoginQuery, CallbackQuery, Envelope, ExplainInput, ExplanationData,
  LogoutData, LogoutInput, SsoCallbackData, SsoCallbackInput, SupportedModesData, SupportedModesInput
} from '../schemas/routes.js'
import { logRefusal, ssoErrorHandler, type RouteMeta } from './error-handler.js'
import { addRouteAliases } from './route-aliases.js'

/** Starts a login at Keycloak for this browser: sets its transaction cookie and answers the authorization URL. */
export type LoginStart = (request: FastifyRequest, reply: FastifyReply, input: Parameters<KeycloakSso['startLogin']>[0]) => Promise<string>

export function loginStarter (sso: KeycloakSso, cookies: CookiePolicy): LoginStart {
  return async (request, reply, input) => {
    const started = await sso.startLogin(input, request.cookies)
    reply.setCookie(started.cookieName, started.cookieValue, cookies.transaction())
    return started.url
  }
}

export interface RoutesOptions {
  sso: KeycloakSso
  webappUrl: string
  cookies: CookiePolicy
  startLogin: LoginStart
  supportedModes: boolean
  /** The session token of a request: the session cookie, else `Authorization: Bearer`. */
  tokenOf: (request: FastifyRequest) => string | undefined
  /** `login.supported_modes`' data; shared with the `supportedModes()` decorator. */
  supportedModesData: (request?: FastifyRequest, reply?: FastifyReply) => Promise<Static<typeof SupportedModesData>>
  /** Registers the admin-only `login.sso_explain` when given; it explains logins into the admin's company only. */
  explain?: (source: ExplainSource, scope: { company: string }) => Promise<Explanation>
  /** The `authenticate` hook: the explain route needs a session. */
  authenticate: (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => void
}

/** ClearML roles that administer a company: admin and the roles above it. */
const ADMIN_ROLES = new Set(['admin', 'superuser', 'root', 'system'])

const REDACTED_PARAMS = new Set(['code', 'state', 'session_state', 'id_token_hint', 'iss'])

/** Request log line without the callback's secrets: the authorization code lives in the query. */
function redactedRequest (request: FastifyRequest): Record<string, unknown> {
  const [path, query] = request.url.split('?', 2)
  let url = path
  if (query !== undefined) {
    const params = new URLSearchParams(query)
    for (const key of params.keys()) if (REDACTED_PARAMS.has(key)) params.set(key, '[redacted]')
    url += '?' + params.toString()
  }
  return { method: request.method, url, host: request.host, remoteAddress: request.ip }
}

/**
 * Why a logout request is refused as one a page of another site made the browser send, if it is: a
 * top-level navigation or form post carries `SameSite=Lax` cookies, so without this check any site
 * could log a user out of ClearML (and, with `idp_logout`, of the whole realm). `Sec-Fetch-Site` says
 * it in every current browser; without it, a foreign `Origin` (sent on posts) does. A request with
 * neither (a script, curl, an old browser's plain GET) is not a cross-site navigation we can see.
 */
function crossSiteLogout (request: FastifyRequest, webappUrl: string): string | undefined {
  const site = request.headers['sec-fetch-site']
  const origin = request.headers.origin
  const foreign = site !== undefined ? site === 'cross-site' : origin !== undefined && origin !== webappUrl
  if (!foreign) return undefined
  // An origin says where a request came from and nothing secret; bounded for the log.
  const from = origin === undefined ? 'no Origin' : `Origin ${JSON.stringify(origin.slice(0, 200))}`
  return `cross-site logout refused (Sec-Fetch-Site ${site ?? 'absent'}, ${from}): a page of another site cannot log the user out`
}

const meta = (endpoint: string, browser = false, refusalStatus?: number): { config: RouteMeta } => ({ config: { endpoint, browser, refusalStatus } })

export async function routes (fastify: FastifyInstance, options: RoutesOptions): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const { sso, webappUrl, cookies, startLogin } = options
  const loginPage = new URL('/login', webappUrl).href

  app.setValidatorCompiler(TypeBoxValidatorCompiler)
  app.setErrorHandler(ssoErrorHandler)
  // Versioned endpoints, and the callback where the redirect URI points when there is a prefix (SPEC 13).
  addRouteAliases(app, { callbackPath: new URL(sso.redirectUri).pathname })
  // A POST without a body is an empty request, as ClearML's clients send for parameterless calls.
  app.addHook('preValidation', async (request) => {
    if (request.method === 'POST' && (request.body === undefined || request.body === null)) request.body = {}
  })

  // Only this callback's transaction: another tab may be in the middle of its own login.
  const clearTransactionCookie = (request: FastifyRequest, reply: FastifyReply, state: string | undefined): void => {
    const slot = slotOfState(request.cookies, state)
    if (slot !== undefined) reply.clearCookie(slot, cookies.clear())
  }

  const setSessionCookies = (reply: FastifyReply, login: CompletedLogin): void => {
    const maxAge = Math.max(0, login.expiresAt - Math.floor(Date.now() / 1000))
    reply.setCookie(sso.config.sessionCookieName, login.token, cookies.session(maxAge))
    if (login.idTokenCookie !== undefined) reply.setCookie(ID_TOKEN_COOKIE, login.idTokenCookie, cookies.session(maxAge))
  }

  const callbackParams = (query: Static<typeof CallbackQuery>) => ({ code: query.code, state: query.state, iss: query.iss, error: query.error })

  const requireKeycloak = (provider: string | undefined): void => {
    if (provider !== undefined && provider !== 'keycloak') throw new SsoError('bad_request', 'provider must be "keycloak"')
  }

  // login.supported_modes ---------------------------------------------------------------------
  if (options.supportedModes) {
    const handler = async (request: FastifyRequest, reply: FastifyReply) => envelope('login.supported_modes', await options.supportedModesData(request, reply))
    const response = { 200: Envelope(SupportedModesData) }
    app.post('/login.supported_modes', { ...meta('login.supported_modes'), schema: { body: SupportedModesInput, response } }, handler)
    app.get('/login.supported_modes', { ...meta('login.supported_modes'), schema: { querystring: SupportedModesInput, response } }, handler)
  }

  // login.sso_authorize -----------------------------------------------------------------------
  const authorize = async (request: FastifyRequest, reply: FastifyReply, input: Static<typeof AuthorizeInput>) => {
    requireKeycloak(input.provider)
    let redirectUri: string | undefined
    if (input.callback_url !== undefined) {
      // The code must only ever travel to the web app's own origin.
      redirectUri = sameOriginUrl(input.callback_url, webappUrl, '')
      if (redirectUri === '') throw new SsoError('bad_request', 'callback_url must be on the web app\'s origin')
    }
    const url = await startLogin(request, reply, { returnTo: '/', redirectUri, appState: input.state })
    return envelope('login.sso_authorize', { redirect_url: url })
  }
  const authorizeResponse = { 200: Envelope(AuthorizeData) }
  app.post('/login.sso_authorize', { ...meta('login.sso_authorize'), schema: { body: AuthorizeInput, response: authorizeResponse } },
    async (request, reply) => await authorize(request, reply, request.body))
  app.get('/login.sso_authorize', { ...meta('login.sso_authorize'), schema: { querystring: AuthorizeInput, response: authorizeResponse } },
    async (request, reply) => await authorize(request, reply, request.query))

  // Browser login -----------------------------------------------------------------------------
  app.get('/login/keycloak', { ...meta('login.keycloak', true), schema: { querystring: BrowserLoginQuery } }, async (request, reply) => {
    const url = await startLogin(request, reply, { returnTo: safeReturnPath(request.query.redirect) })
    return reply.redirect(url, 302)
  })

  app.get('/callback_keycloak', { ...meta('login.callback', true), schema: { querystring: CallbackQuery } }, async (request, reply) => {
    clearTransactionCookie(request, reply, request.query.state)
    const login = await sso.completeLogin(callbackParams(request.query), request.cookies)
    setSessionCookies(reply, login)
    return reply.redirect(safeReturnPath(login.transaction.returnTo), 302)
  })

  app.post('/login.sso_callback', { ...meta('login.sso_callback'), schema: { body: SsoCallbackInput, response: { 200: Envelope(SsoCallbackData) } } }, async (request, reply) => {
    requireKeycloak(request.body.provider)
    clearTransactionCookie(request, reply, request.body.args.state)
    const login = await sso.completeLogin(callbackParams(request.body.args), request.cookies)
    setSessionCookies(reply, login)
    return envelope('login.sso_callback', {
      login_status: 'logged_in' as const,
      user_id: login.result.user.id,
      company_id: login.result.company.id,
      ...(request.body.return_token === true ? { token: login.token } : {}),
      ...(login.transaction.appState !== undefined ? { state: login.transaction.appState } : {})
    })
  })

  // Logout ------------------------------------------------------------------------------------
  const logout = async (request: FastifyRequest, reply: FastifyReply, redirectUrl: unknown): Promise<string | undefined> => {
    const crossSite = crossSiteLogout(request, webappUrl)
    if (crossSite !== undefined) throw new SsoError('bad_request', crossSite)
    const postLogout = sameOriginUrl(redirectUrl, webappUrl, loginPage)
    const result = await sso.logout(options.tokenOf(request), request.cookies[ID_TOKEN_COOKIE], postLogout)
    reply.clearCookie(sso.config.sessionCookieName, cookies.clear())
    reply.clearCookie(ID_TOKEN_COOKIE, cookies.clear())
    return result.redirectUrl
  }
  const logoutEnvelope = async (request: FastifyRequest, reply: FastifyReply, input: Static<typeof LogoutInput>) => {
    const redirectUrl = await logout(request, reply, input.redirect_url)
    return envelope('login.logout', redirectUrl === undefined ? {} : { redirect_url: redirectUrl })
  }
  const logoutResponse = { 200: Envelope(LogoutData) }
  app.post('/login.logout', { ...meta('login.logout'), schema: { body: LogoutInput, response: logoutResponse } },
    async (request, reply) => await logoutEnvelope(request, reply, request.body))
  app.get('/login.logout', { ...meta('login.logout'), schema: { querystring: LogoutInput, response: logoutResponse } },
    async (request, reply) => await logoutEnvelope(request, reply, request.query))
  app.get('/logout', { ...meta('logout', true), schema: { querystring: LogoutInput } }, async (request, reply) => {
    // A link on another site lands on the web app instead, still logged in; the log says why.
    const crossSite = crossSiteLogout(request, webappUrl)
    if (crossSite !== undefined) {
      request.log.warn({ code: 'bad_request', reason: crossSite }, 'Keycloak SSO refused')
      return reply.redirect('/', 302)
    }
    const redirectUrl = await logout(request, reply, request.query.redirect_url)
    return reply.redirect(redirectUrl ?? '/login', 302)
  })

  // login.sso_explain --------------------------------------------------------------------------
  if (options.explain !== undefined) {
    const explain = options.explain
    // An admin's own session says who may see how a login into their company is decided. POST only: an access token
    // never travels in a URL, where logs and browser history keep it.
    const requireAdmin = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
      const identity = request.clearmlIdentity!
      if (ADMIN_ROLES.has(identity.role)) return
      const refusal = new SsoError('admin_required', `login.sso_explain needs an admin session; user ${identity.user} has role ${JSON.stringify(identity.role)}`)
      logRefusal(request, refusal)
      publishAuthRefused(refusal.code, identity.credential)
      await reply.code(refusal.statusCode).send(errorEnvelope('login.sso_explain', refusal.statusCode, refusal.code))
    }
    app.post('/login.sso_explain', {
      ...meta('login.sso_explain'),
      // Before the body is validated: whoever has no admin session learns nothing, not even about the body.
      onRequest: [options.authenticate, requireAdmin],
      schema: { body: ExplainInput, response: { 200: Envelope(ExplanationData) } }
    }, async (request) => {
      const { claims, access_token: accessToken } = request.body
      if ((claims === undefined) === (accessToken === undefined)) throw new SsoError('bad_request', 'login.sso_explain takes either claims or access_token')
      // An admin administers one company: another tenant's users, whitelist and groups stay invisible,
      // so the answer for one of its users is the answer for an address nobody has.
      const scope = { company: request.clearmlIdentity!.company }
      return envelope('login.sso_explain', await explain(claims !== undefined ? { claims } : { accessToken: accessToken! }, scope))
    })
  }

  // Back-channel logout: Keycloak POSTs a form with `logout_token` to the client's "Backchannel logout
  // URL". The form parser is registered in this context only, leaving the host's parsers alone.
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 32 * 1024 }, (request, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)))
  })
  app.post('/logout/backchannel', { ...meta('logout.backchannel', false, 400), schema: { body: BackchannelLogoutInput } }, async (request, reply) => {
    await sso.backchannelLogout(request.body.logout_token)
    return await reply.header('cache-control', 'no-store').send(envelope('logout.backchannel', {}))
  })
}

// Fastify types serializers as returning strings; pino accepts objects, which is what its own do.
export const routeLogSerializers = { req: redactedRequest } as unknown as Record<string, (value: unknown) => string>
