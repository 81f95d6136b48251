/**
 * `login.supported_modes` (SPEC 4, 13.2 and 13.3): what the route answers and what the
 * `supportedModes()` decorator returns, one function for both.
 *
 * - `basic` and `server_errors` are always there: the open-source web app reads `data.basic.enabled`
 *   without a guard and stops at start without them. `basic` says what the `basic` option says (the
 *   host's own password login; off by default); `server_errors` are ClearML's database alarms, which
 *   a plugin without ClearML's database never raises.
 * - ClearML Enterprise's protocol: called with `callback_url_prefix` (and the web app's path as
 *   `state`), the providers' URLs are Keycloak authorization URLs for `callback_url_prefix +
 *   "keycloak"`, and the answer sets the login-transaction cookie. This makes the call change state:
 *   each one takes a transaction slot of the browser (at most three, the oldest replaced), and never
 *   the slot of the login whose callback page is calling (the web app calls it there too, with that
 *   callback's state, before it completes the login).
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import { SsoError } from '../lib/errors.js'
import { MAX_RETURN_PATH, safeReturnPath, sameOriginUrl } from '../lib/redirects.js'
import type { ClearmlIdentity } from '../lib/session/claims.js'
import type { KeycloakSso } from '../lib/sso.js'
import type { LoginStart } from './routes.js'

/** The `basic` option: the host's own password login, as `login.supported_modes` announces it. */
export interface BasicLoginOption {
  enabled?: boolean
  /** ClearML's guest mode: the web app logs in with these credentials on a page that needs a user. */
  guest?: { enabled?: boolean, username?: string, password?: string }
}

export interface SupportedModes {
  authenticated: boolean
  sso: Record<string, string>
  sso_providers: Array<{ name: string, display_name: string, url: string }>
  basic: { enabled: boolean, guest: { enabled: boolean, username?: string, password?: string } }
  server_errors: { missed_es_upgrade: boolean, es_connection_error: boolean }
}

/**
 * Without `reply` (or without `callback_url_prefix`), the URLs are the plugin's login start, which
 * sets its own cookie when followed; with both, ClearML Enterprise's protocol.
 */
export type SupportedModesOf = (request?: FastifyRequest, reply?: FastifyReply) => Promise<SupportedModes>

/** The `basic` option, checked at register time: a mistyped flag would announce a login that is not there. */
export function checkBasicOption (basic: BasicLoginOption | undefined): SupportedModes['basic'] {
  const fail = (message: string): never => { throw new TypeError(`fastify-clearml-keycloak: ${message}`) }
  const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)
  const flag = (value: unknown, name: string): boolean => {
    if (value !== undefined && typeof value !== 'boolean') fail(`"${name}" must be true or false`)
    return value === true
  }
  if (basic === undefined) return { enabled: false, guest: { enabled: false } }
  if (!isObject(basic)) return fail('"basic" must be an object, e.g. { enabled: true }')
  const guest = basic.guest ?? {}
  if (!isObject(guest)) return fail('"basic.guest" must be an object, e.g. { enabled: false }')
  const credentials: { username?: string, password?: string } = {}
  for (const field of ['username', 'password'] as const) {
    const value = guest[field]
    if (typeof value === 'string') credentials[field] = value
    else if (value !== undefined) fail(`"basic.guest.${field}" must be a string`)
  }
  return { enabled: flag(basic.enabled, 'basic.enabled'), guest: { enabled: flag(guest.enabled, 'basic.guest.enabled'), ...credentials } }
}

export function supportedModesOf (options: {
  sso: KeycloakSso
  sessionOf: (request: FastifyRequest) => Promise<Readonly<ClearmlIdentity> | null>
  /** The plugin's `GET /login/keycloak`, prefix included. */
  loginUrl: string
  webappUrl: string
  startLogin: LoginStart
  basic: SupportedModes['basic']
}): SupportedModesOf {
  const { sso, sessionOf, loginUrl, webappUrl, startLogin, basic } = options

  /** The Keycloak authorization URL of ClearML Enterprise's protocol, or `undefined` when not asked for. */
  const enterpriseLogin = async (request: FastifyRequest, reply: FastifyReply): Promise<string | undefined> => {
    // The route validated these; a host's own route hands the decorator whatever it received (Fastify
    // always has a query object; a body may be any JSON value, or text).
    const input = (request.body ?? request.query) as Record<string, unknown>
    const prefix = input.callback_url_prefix
    const state = input.state
    if (prefix === undefined) return undefined
    if (typeof prefix !== 'string' || (state !== undefined && typeof state !== 'string')) {
      throw new SsoError('bad_request', 'callback_url_prefix and state must be strings')
    }
    // The authorization code must only ever travel to the redirect URI registered for the web app.
    const redirectUri = sameOriginUrl(`${prefix}keycloak`, webappUrl, '')
    if (redirectUri !== sso.redirectUri) {
      throw new SsoError('bad_request', `callback_url_prefix + "keycloak" must be the web app's registered callback ${sso.redirectUri}`)
    }
    // Percent-encoding can make a path longer than the one asked for; one too long for the login
    // cookie is answered as `/` rather than refused, which would stop the web app at start.
    const path = safeReturnPath(state)
    const returnTo = path.length <= MAX_RETURN_PATH ? path : '/'
    return await startLogin(request, reply, { returnTo, redirectUri, stateShowsReturnPath: true, keepSlotOf: state })
  }

  return async (request, reply) => {
    const authenticated = request === undefined ? false : (await sessionOf(request)) !== null
    const url = request === undefined || reply === undefined ? loginUrl : (await enterpriseLogin(request, reply)) ?? loginUrl
    return {
      authenticated,
      sso: { keycloak: url },
      sso_providers: [{ name: 'keycloak', display_name: sso.config.displayName, url }],
      basic: { enabled: basic.enabled, guest: { ...basic.guest } },
      server_errors: { missed_es_upgrade: false, es_connection_error: false }
    }
  }
}
