/**
 * The plugin: validates its options and the configuration at register time, decorates
 * `fastify.keycloak` and `request.clearmlIdentity`, and registers the routes in their own context.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import fastifyCookie from '@fastify/cookie'
import type { JWTPayload } from 'jose'
import { readConfig, settingName, weakSettings, type KeycloakConfig, type KeycloakConfigOverrides } from '../lib/config/settings.js'
import type { UserDirectory } from '../lib/directory/user-directory.js'
import { DIRECTORY_METHODS } from '../lib/directory/user-directory.js'
import { ConfigError } from '../lib/errors.js'
import { explainLogin, explainSourceOf, type Explanation, type ExplainInput, type ExplainScope } from '../lib/rules/explain.js'
import type { Claims, Identity } from '../lib/rules/identity.js'
import type { LoginResult } from '../lib/rules/login.js'
import { MemoryRevocationStore, type RevocationStore } from '../lib/session/revocations.js'
import type { ClearmlIdentity } from '../lib/session/claims.js'
import { KeycloakSso, type IssueToken } from '../lib/sso.js'
import { loginStarter, routeLogSerializers, routes } from './routes.js'
import { authenticator, type AuthenticateHook } from './authenticate.js'
import { requireLoginHook, type RequireLoginHook } from './require-login.js'
import { checkBasicOption, supportedModesOf, type BasicLoginOption, type SupportedModes } from './supported-modes.js'
import { cookiePolicy } from '../lib/session/cookies.js'
import { KeycloakBearerTokens, type BearerOptions } from '../lib/keycloak/bearer.js'

export interface ClearmlKeycloakOptions {
  /** The host's users and groups; `MemoryDirectory` for demos and tests. */
  directory: UserDirectory
  /** Public origin of the ClearML web app; the callback is `<webappUrl>/callback_keycloak`. */
  webappUrl: string
  /** Where `CLEARML__...` variables are read; default `process.env`. */
  env?: Record<string, string | undefined>
  /** Settings from code, merged over what `env` gives. */
  config?: KeycloakConfigOverrides
  /** Prefix of the plugin's routes. */
  prefix?: string
  /**
   * `supportedModes: false` leaves `login.supported_modes` to the host; `explain: true` adds the
   * admin-only `POST /login.sso_explain` (off by default).
   */
  routes?: { supportedModes?: boolean, explain?: boolean }
  /** Issue the session token yourself instead of the ClearML-compatible HS256 token. */
  issueToken?: IssueToken
  /** Where logouts are remembered; default in memory. Share one across apiserver instances. */
  revocations?: RevocationStore
  /** How many verified session tokens are kept for fast `authenticate`; default 100,000 (about 0.1 GB at most; docs/performance.md). */
  sessionCacheMax?: number
  /** Keycloak access tokens as `Authorization: Bearer` credentials for API clients (SPEC section 10). */
  bearer?: BearerOptions
  /** The host's own password login, as `login.supported_modes` announces it (`data.basic`); default off. */
  basic?: BasicLoginOption
}

export type { SupportedModes, BasicLoginOption }

export interface ClearmlKeycloakDecorator {
  config: KeycloakConfig
  /** `login.supported_modes`' data; with `reply`, ClearML Enterprise's `callback_url_prefix` protocol too (sets the login cookie). */
  supportedModes(request?: FastifyRequest, reply?: FastifyReply): Promise<SupportedModes>
  /** A Keycloak access token issued to this client, verified with jose; its claims. */
  verifyAccessToken(token: string): Promise<JWTPayload>
  mapClaims(claims: Claims): Identity
  login(input: Claims | Identity): Promise<LoginResult>
  /**
   * What a login would do for these claims, this identity or this access token, and why; writes
   * nothing. With `{ company }`, as `login.sso_explain` asks for an admin: only logins into that
   * company, every other company invisible; without it, the whole directory.
   */
  explain(input: ExplainInput, options?: ExplainScope): Promise<Explanation>
  /**
   * A preHandler hook; or `await fastify.keycloak.authenticate(request, reply)` from a hook of yours.
   * Accepts a ClearML session (cookie or `Authorization: Bearer`) and, with `bearer.keycloak`, a
   * Keycloak access token; sets `request.clearmlIdentity` (its `credential` says which).
   */
  authenticate: AuthenticateHook
  /** The request's valid session, or `null`: for pages that change when someone is logged in. */
  sessionOf(request: FastifyRequest): Promise<Readonly<ClearmlIdentity> | null>
  /**
   * A preHandler for the host's pages (a served web app's `index.html` fallback): a browser navigation
   * without a session goes to Keycloak and comes back to the same page; other requests as `authenticate`.
   */
  requireLogin: RequireLoginHook
  /** The service behind the routes; for tests, benchmarks and advanced hosts. */
  sso: KeycloakSso
}

export type { ClearmlIdentity }

declare module 'fastify' {
  interface FastifyInstance {
    keycloak: ClearmlKeycloakDecorator
  }
  interface FastifyRequest {
    clearmlIdentity: Readonly<ClearmlIdentity> | null
  }
}

function checkOptions (options: ClearmlKeycloakOptions): string {
  const { directory, webappUrl } = options
  const missing = directory == null ? [] : DIRECTORY_METHODS.filter((method) => typeof (directory as unknown as Record<string, unknown>)[method] !== 'function')
  if (directory == null) throw new TypeError('fastify-clearml-keycloak: the "directory" option is required (a UserDirectory, e.g. new MemoryDirectory())')
  if (missing.length > 0) throw new TypeError(`fastify-clearml-keycloak: "directory" lacks the UserDirectory method(s) ${missing.join(', ')}`)
  if (typeof webappUrl !== 'string' || webappUrl === '') throw new TypeError('fastify-clearml-keycloak: the "webappUrl" option is required (the public origin of the ClearML web app)')
  let url: URL
  try {
    url = new URL(webappUrl)
  } catch {
    throw new TypeError('fastify-clearml-keycloak: "webappUrl" must be an absolute http(s) URL')
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new TypeError('fastify-clearml-keycloak: "webappUrl" must be an absolute http(s) URL')
  checkBearerOptions(options.bearer)
  return url.origin
}

function checkBearerOptions (bearer: BearerOptions | undefined): void {
  if (bearer === undefined) return
  const fail = (message: string): never => { throw new TypeError(`fastify-clearml-keycloak: ${message}`) }
  if (bearer === null || typeof bearer !== 'object') fail('"bearer" must be an object, e.g. { keycloak: true }')
  for (const flag of ['keycloak', 'provision'] as const) if (bearer[flag] !== undefined && typeof bearer[flag] !== 'boolean') fail(`"bearer.${flag}" must be true or false`)
  if (bearer.audiences !== undefined && (!Array.isArray(bearer.audiences) || !bearer.audiences.every((a) => typeof a === 'string' && a !== ''))) fail('"bearer.audiences" must be a list of client ids')
  if (bearer.cacheMax !== undefined && !(Number.isInteger(bearer.cacheMax) && bearer.cacheMax > 0)) fail('"bearer.cacheMax" must be a positive whole number')
}

async function clearmlKeycloakPlugin (fastify: FastifyInstance, options: ClearmlKeycloakOptions): Promise<void> {
  const webappUrl = checkOptions(options)
  const { config, warnings } = readConfig(options.env ?? process.env, options.config)
  if (config.tokenSecret === undefined && options.issueToken === undefined) {
    throw new ConfigError([{ variable: settingName('tokenSecret'), message: 'is required to sign session tokens (or pass the issueToken option)' }])
  }
  for (const warning of [...warnings, ...weakSettings(config)]) fastify.log.warn(`fastify-clearml-keycloak: ${warning.variable} ${warning.message}`)

  if (!fastify.hasDecorator('parseCookie')) await fastify.register(fastifyCookie)

  const revocations = options.revocations ?? new MemoryRevocationStore()
  revocations.useLog?.(fastify.log)
  const sso = new KeycloakSso({
    config,
    directory: options.directory,
    webappUrl,
    log: fastify.log,
    revocations,
    issueToken: options.issueToken,
    sessionCacheMax: options.sessionCacheMax
  })

  const bearerOptions = options.bearer ?? {}
  const bearer = bearerOptions.keycloak === true
    ? new KeycloakBearerTokens({
      verify: async (token) => await sso.verifyAccessToken(token, { audiences: bearerOptions.audiences }),
      userOf: async (claims) => await sso.userOfAccessToken(claims, bearerOptions.provision === true),
      revocations,
      cacheMax: bearerOptions.cacheMax
    })
    : undefined
  const { authenticate, sessionOf, tokenOf } = authenticator({ sso, bearer, cookieName: config.sessionCookieName })

  const prefix = (options.prefix ?? '').replace(/\/+$/, '')
  // The host's own prefix too, when it registers the plugin in a prefixed context.
  const loginUrl = `${fastify.prefix}${prefix}/login/keycloak`
  const cookies = cookiePolicy(webappUrl)
  const startLogin = loginStarter(sso, cookies)
  const supportedModes = supportedModesOf({ sso, sessionOf, loginUrl, webappUrl, startLogin, basic: checkBasicOption(options.basic) })
  const requireLogin = requireLoginHook({ authenticate, sessionOf, loginStart: loginUrl })

  const explainContext = { config, directory: options.directory, sso }
  fastify.decorateRequest('clearmlIdentity', null)
  fastify.decorate('keycloak', {
    config,
    supportedModes,
    verifyAccessToken: async (token: string) => await sso.verifyAccessToken(token),
    mapClaims: (claims: Claims) => sso.mapClaims(claims),
    login: async (input: Claims | Identity) => await sso.login(input),
    explain: async (input: ExplainInput, scope?: ExplainScope) => await explainLogin(explainSourceOf(input), explainContext, scope),
    authenticate,
    sessionOf,
    requireLogin,
    sso
  } satisfies ClearmlKeycloakDecorator)

  await fastify.register(routes, {
    prefix,
    logSerializers: routeLogSerializers,
    sso,
    webappUrl,
    cookies,
    startLogin,
    supportedModes: options.routes?.supportedModes !== false,
    tokenOf,
    supportedModesData: supportedModes,
    explain: options.routes?.explain === true ? async (source, scope) => await explainLogin(source, explainContext, scope) : undefined,
    authenticate
  })
}

export const clearmlKeycloak = fp(clearmlKeycloakPlugin, { fastify: '5.x', name: 'fastify-clearml-keycloak' })
