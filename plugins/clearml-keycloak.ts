/**
 * The plugin: validates its options and the configuration at register time, decorates
 * `fastify.keycloak` and `request.clearmlIdentity`, and registers the routes in their own context.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import fastifyCookie from '@fastify/cookie'
import type { JWTPayload } from 'jose'
import { readConfig, settingName, weakSettings, type KeycloakConfig, type KeycloakConfigOverrides } from '../lib/config.js'
import type { UserDirectory } from '../lib/directory.js'
import { DIRECTORY_METHODS } from '../lib/directory.js'
import { errorEnvelope } from '../lib/envelope.js'
import { ConfigError } from '../lib/errors.js'
import { publishAuthRefused } from '../lib/diagnostics.js'
import { explainLogin, explainSourceOf, type Explanation, type ExplainInput } from '../lib/explain.js'
import type { Claims, Identity } from '../lib/identity.js'
import type { LoginResult } from '../lib/login.js'
import { MemoryRevocationStore, type RevocationStore } from '../lib/revocations.js'
import type { ClearmlIdentity } from '../lib/session.js'
import { KeycloakSso, type IssueToken } from '../lib/sso.js'
import { routeLogSerializers, routes } from './routes.js'

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
  /** How many verified session tokens are kept for fast `authenticate`; default 10,000. */
  sessionCacheMax?: number
}

export interface SupportedModes {
  authenticated: boolean
  sso: Record<string, string>
  sso_providers: Array<{ name: string, display_name: string, url: string }>
}

export interface ClearmlKeycloakDecorator {
  config: KeycloakConfig
  supportedModes(request?: FastifyRequest): Promise<SupportedModes>
  verifyAccessToken(token: string): Promise<JWTPayload>
  mapClaims(claims: Claims): Identity
  login(input: Claims | Identity): Promise<LoginResult>
  /** What a login would do for these claims, this identity or this access token, and why; writes nothing. */
  explain(input: ExplainInput): Promise<Explanation>
  /** A preHandler hook; or `await fastify.keycloak.authenticate(request, reply)` from a hook of yours. */
  authenticate(request: FastifyRequest, reply: FastifyReply, done?: (err?: Error) => void): Promise<void> | undefined
  /** The request's valid session, or `null`: for pages that change when someone is logged in. */
  sessionOf(request: FastifyRequest): Promise<Readonly<ClearmlIdentity> | null>
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
  return url.origin
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
  if (revocations instanceof MemoryRevocationStore) revocations.useLog(fastify.log)
  const sso = new KeycloakSso({
    config,
    directory: options.directory,
    webappUrl,
    log: fastify.log,
    revocations,
    issueToken: options.issueToken,
    sessionCacheMax: options.sessionCacheMax
  })

  const cookieName = config.sessionCookieName
  const tokenOf = (request: FastifyRequest): string | undefined => {
    const fromCookie = request.cookies[cookieName]
    if (fromCookie !== undefined && fromCookie !== '') return fromCookie
    const header = request.headers.authorization
    if (header !== undefined && header.length > 7 && header.slice(0, 7).toLowerCase() === 'bearer ') return header.slice(7).trim()
    return undefined
  }

  const prefix = (options.prefix ?? '').replace(/\/+$/, '')
  const loginUrl = `${prefix}/login/keycloak`
  const sessionOf = async (request: FastifyRequest): Promise<Readonly<ClearmlIdentity> | null> =>
    (await sso.verifySession(tokenOf(request)))?.identity ?? null
  const supportedModes = async (request?: FastifyRequest): Promise<SupportedModes> => ({
    authenticated: request === undefined ? false : (await sessionOf(request)) !== null,
    sso: { keycloak: loginUrl },
    sso_providers: [{ name: 'keycloak', display_name: config.displayName, url: loginUrl }]
  })
  const unauthorized = errorEnvelope('authenticate', 401, 'invalid_token')
  const refuse = async (reply: FastifyReply): Promise<void> => {
    publishAuthRefused('invalid_token', tokenOf(reply.request) === undefined ? undefined : 'session')
    await reply.code(401).send(unauthorized)
  }
  const slowAuthenticate = async (request: FastifyRequest, reply: FastifyReply, token: string | undefined): Promise<void> => {
    const session = await sso.verifySession(token)
    if (session === null) return await refuse(reply)
    request.clearmlIdentity = session.identity
  }
  /**
   * The hot path of every authenticated request. Used as a hook, Fastify passes `done` and a cached
   * session is accepted synchronously, without a promise; called directly, it returns a promise.
   */
  const authenticate = (request: FastifyRequest, reply: FastifyReply, done?: (err?: Error) => void): Promise<void> | undefined => {
    const token = tokenOf(request)
    const fast = token === undefined ? null : sso.sessions.cached(token)
    let pending: Promise<void>
    if (fast === undefined) {
      pending = slowAuthenticate(request, reply, token)
    } else if (fast === null) {
      pending = refuse(reply)
    } else {
      request.clearmlIdentity = fast.identity
      if (done === undefined) return Promise.resolve()
      done()
      return undefined
    }
    if (done === undefined) return pending
    pending.then(() => { done() }, done)
    return undefined
  }

  const explainContext = { config, directory: options.directory, sso }
  fastify.decorateRequest('clearmlIdentity', null)
  fastify.decorate('keycloak', {
    config,
    supportedModes,
    verifyAccessToken: async (token: string) => await sso.verifyAccessToken(token),
    mapClaims: (claims: Claims) => sso.mapClaims(claims),
    login: async (input: Claims | Identity) => await sso.login(input),
    explain: async (input: ExplainInput) => await explainLogin(explainSourceOf(input), explainContext),
    authenticate,
    sessionOf,
    sso
  } satisfies ClearmlKeycloakDecorator)

  await fastify.register(routes, {
    prefix,
    logSerializers: routeLogSerializers,
    sso,
    webappUrl,
    supportedModes: options.routes?.supportedModes !== false,
    tokenOf,
    supportedModesData: supportedModes,
    explain: options.routes?.explain === true ? async (source) => await explainLogin(source, explainContext) : undefined,
    authenticate
  })
}

export const clearmlKeycloak = fp(clearmlKeycloakPlugin, { fastify: '5.x', name: 'fastify-clearml-keycloak' })
