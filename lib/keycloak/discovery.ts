/**
 * Where Keycloak's endpoints are. Explicit `*_url` settings win; then the realm's discovery document
 * (`base_url + /.well-known/openid-configuration`), fetched lazily once; then Keycloak's fixed realm
 * paths under `base_url`. A failed discovery is not cached: the next login tries again, and in the
 * meantime the fixed paths serve, so an unreachable Keycloak at start-up never stops the server.
 * A discovery document naming another issuer is refused outright: it is a misconfiguration.
 */
import type { FastifyBaseLogger } from 'fastify'
import { issuerOf, settingName, type KeycloakConfig } from '../config/settings.js'
import { SsoError } from '../errors.js'
import { callJson, isJsonObject } from './http.js'

export interface Endpoints {
  issuer: string
  authorization: string
  token: string
  userinfo?: string
  jwks: string
  endSession?: string
  /** RFC 7009 token revocation (Keycloak: `.../protocol/openid-connect/revoke`). */
  revocation: string
}

type EndpointConfig = Pick<KeycloakConfig, 'baseUrl' | 'authorizeUrl' | 'accessTokenUrl' | 'userinfoUrl' | 'jwksUrl' | 'logoutUrl' | 'httpTimeoutMs'>

interface Discovered {
  authorization_endpoint?: string
  token_endpoint?: string
  userinfo_endpoint?: string
  jwks_uri?: string
  end_session_endpoint?: string
  revocation_endpoint?: string
}

const pick = (document: Record<string, unknown>, key: keyof Discovered): string | undefined =>
  typeof document[key] === 'string' ? document[key] : undefined

export class ProviderEndpoints {
  readonly issuer: string
  readonly #config: EndpointConfig
  readonly #log: FastifyBaseLogger
  #discovered: Discovered | undefined
  #inFlight: Promise<Discovered | undefined> | undefined
  #attempted = false

  constructor (config: EndpointConfig, log: FastifyBaseLogger) {
    this.#config = config
    this.#log = log
    this.issuer = issuerOf(config)!
  }

  /** The fixed realm paths Keycloak serves under its issuer URL. */
  #derived (path: string): string {
    return `${this.issuer}/protocol/openid-connect/${path}`
  }

  #resolve (discovered: Discovered = {}): Endpoints {
    const c = this.#config
    return {
      issuer: this.issuer,
      authorization: c.authorizeUrl ?? discovered.authorization_endpoint ?? this.#derived('auth'),
      token: c.accessTokenUrl ?? discovered.token_endpoint ?? this.#derived('token'),
      userinfo: c.userinfoUrl ?? discovered.userinfo_endpoint ?? this.#derived('userinfo'),
      jwks: c.jwksUrl ?? discovered.jwks_uri ?? this.#derived('certs'),
      endSession: c.logoutUrl ?? discovered.end_session_endpoint ?? this.#derived('logout'),
      revocation: discovered.revocation_endpoint ?? this.#derived('revoke')
    }
  }

  async #discover (): Promise<Discovered | undefined> {
    const url = `${this.#config.baseUrl!}/.well-known/openid-configuration`
    try {
      const answer = await callJson(url, { timeoutMs: this.#config.httpTimeoutMs, what: 'discovery', headers: { accept: 'application/json' } })
      if (answer.status !== 200 || !isJsonObject(answer.body)) {
        throw new SsoError('idp_unavailable', `discovery answered HTTP ${answer.status}${isJsonObject(answer.body) ? '' : ' without a JSON document'} at ${url}: is ${settingName('baseUrl')} the realm URL (https://<host>/realms/<realm>, /auth/realms/<realm> before Keycloak 17)?`)
      }
      const document = answer.body
      if (document.issuer !== this.issuer) {
        // A realm that calls itself by another name would make every token fail the issuer check;
        // say so once, clearly, instead.
        throw new SsoError('idp_unavailable', `discovery issuer ${JSON.stringify(document.issuer)} is not base_url ${JSON.stringify(this.issuer)}: set ${settingName('baseUrl')} to the issuer the realm announces (Keycloak's frontend URL)`)
      }
      this.#discovered = {
        authorization_endpoint: pick(document, 'authorization_endpoint'),
        token_endpoint: pick(document, 'token_endpoint'),
        userinfo_endpoint: pick(document, 'userinfo_endpoint'),
        jwks_uri: pick(document, 'jwks_uri'),
        end_session_endpoint: pick(document, 'end_session_endpoint'),
        revocation_endpoint: pick(document, 'revocation_endpoint')
      }
      return this.#discovered
    } catch (err) {
      if (err instanceof SsoError && err.message.startsWith('discovery issuer')) throw err
      this.#log.warn({ err: { code: (err as SsoError).code, message: (err as Error).message } }, 'Keycloak discovery failed; using the realm\'s standard paths until it answers')
      return undefined
    }
  }

  /**
   * The endpoints. Discovery runs on first use and, after a failure, again when a login starts
   * (`retry`), so a failing realm costs each login one attempt rather than one per call.
   */
  async get (options: { retry?: boolean } = {}): Promise<Endpoints> {
    if (this.#discovered !== undefined || this.#config.baseUrl === undefined) return this.#resolve(this.#discovered)
    if (this.#inFlight === undefined && (!this.#attempted || options.retry === true)) {
      this.#attempted = true
      // Concurrent logins share one discovery request.
      this.#inFlight = this.#discover().finally(() => { this.#inFlight = undefined })
    }
    return this.#resolve(await this.#inFlight)
  }
}
