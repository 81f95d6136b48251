/**
 * The two calls the login makes to Keycloak on the back channel: the authorization-code exchange
 * (RFC 6749 4.1.3 with PKCE, RFC 7636) and, when configured, the userinfo request.
 */
import { settingName } from '../config/settings.js'
import { SsoError } from '../errors.js'
import { callJson, isJsonObject, type HttpAnswer } from './http.js'

export interface TokenSet {
  idToken: string
  accessToken: string
  /** Absent when the client's "Use refresh tokens" is off (SPEC section 12: the login still works). */
  refreshToken?: string
}

/** RFC 6749 2.3.1: client_secret_basic encodes id and secret as form values before base64. */
export function basicAuthorization (clientId: string, clientSecret: string): string {
  const encode = (value: string): string => encodeURIComponent(value).replace(/%20/g, '+')
  return 'Basic ' + Buffer.from(`${encode(clientId)}:${encode(clientSecret)}`).toString('base64')
}

/** How the plugin authenticates to Keycloak's endpoints, and how long it waits for them. */
export interface ClientCredentials {
  clientId: string
  clientSecret: string
  timeoutMs: number
}

/** A form POST to one of Keycloak's endpoints, authenticated as the client (client_secret_basic). */
export async function postClientForm (url: string, what: string, client: ClientCredentials, form: Record<string, string>): Promise<HttpAnswer> {
  return await callJson(url, {
    method: 'POST',
    timeoutMs: client.timeoutMs,
    what,
    headers: {
      authorization: basicAuthorization(client.clientId, client.clientSecret),
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json'
    },
    body: new URLSearchParams(form).toString()
  })
}

/** An OAuth `error` value for the log: kept only when it looks like an OAuth error code. */
export function loggableOAuthError (error: unknown): string {
  return typeof error === 'string' && /^[a-z_]{1,64}$/.test(error) ? error : '(absent or malformed)'
}

/** What an OAuth error from Keycloak usually means here, and what to change (RFC 6749 4.1.2.1, 5.2). */
const OAUTH_ERROR_HINTS: Readonly<Record<string, string>> = {
  access_denied: 'the user cancelled at Keycloak, or Keycloak denied them this client',
  invalid_scope: `the client lacks a scope this server asks for: add it to the client's client scopes in Keycloak, or remove it from ${settingName('scope')}`,
  unauthorized_client: 'the client may not use the authorization code flow: turn on "Standard flow" for the client in Keycloak',
  invalid_client: `Keycloak does not accept the client's credentials: compare ${settingName('clientId')} and ${settingName('clientSecret')} with the client's Credentials tab (Client authentication on)`,
  invalid_grant: 'the code expired or was already used, or was issued for another redirect_uri or client: a slow or replayed login; the user logs in again',
  server_error: 'Keycloak failed: see its log',
  temporarily_unavailable: 'Keycloak is overloaded or restarting'
}

/** An OAuth error for the log, with its usual cause and fix when it has a known one. */
export function describeOAuthError (error: unknown): string {
  const code = loggableOAuthError(error)
  const hint = Object.hasOwn(OAUTH_ERROR_HINTS, code) ? OAUTH_ERROR_HINTS[code] : undefined
  return hint === undefined ? code : `${code} (${hint})`
}

export async function exchangeCode (options: {
  tokenEndpoint: string
  clientId: string
  clientSecret: string
  code: string
  redirectUri: string
  verifier: string
  timeoutMs: number
}): Promise<TokenSet> {
  const answer = await postClientForm(options.tokenEndpoint, 'token endpoint', options, {
    grant_type: 'authorization_code',
    code: options.code,
    redirect_uri: options.redirectUri,
    code_verifier: options.verifier
  })
  if (answer.status >= 500) throw new SsoError('idp_unavailable', `token endpoint answered HTTP ${answer.status}`)
  if (answer.status !== 200) throw new SsoError('token_exchange_failed', `token endpoint refused the code: HTTP ${answer.status}, error ${describeOAuthError(isJsonObject(answer.body) ? answer.body.error : undefined)}`)
  if (!isJsonObject(answer.body)) throw new SsoError('token_exchange_failed', `token endpoint answered without a JSON token set: is ${settingName('accessTokenUrl')} (or discovery's token_endpoint) Keycloak's token endpoint?`)
  const { id_token: idToken, access_token: accessToken, token_type: tokenType, refresh_token: refreshToken } = answer.body
  if (typeof idToken !== 'string' || typeof accessToken !== 'string') {
    throw new SsoError('token_exchange_failed', 'token endpoint answered without an id_token and an access_token (is "openid" in the scope?)')
  }
  if (typeof tokenType === 'string' && tokenType.toLowerCase() !== 'bearer') {
    throw new SsoError('token_exchange_failed', 'token endpoint answered a token_type other than Bearer')
  }
  return typeof refreshToken === 'string' && refreshToken !== '' ? { idToken, accessToken, refreshToken } : { idToken, accessToken }
}

export async function fetchUserinfo (options: { endpoint: string, accessToken: string, timeoutMs: number }): Promise<Record<string, unknown>> {
  const answer = await callJson(options.endpoint, {
    timeoutMs: options.timeoutMs,
    what: 'userinfo endpoint',
    headers: { authorization: `Bearer ${options.accessToken}`, accept: 'application/json' }
  })
  if (answer.status >= 500) throw new SsoError('idp_unavailable', `userinfo endpoint answered HTTP ${answer.status}`)
  if (answer.status !== 200 || !isJsonObject(answer.body)) {
    throw new SsoError('invalid_token', `userinfo endpoint refused the access token: HTTP ${answer.status}; is ${settingName('userinfoUrl')} (or discovery's userinfo_endpoint) this realm's userinfo endpoint?`)
  }
  return answer.body
}

/** Why a userinfo answer about someone else is refused, and what to check. */
export function userinfoMismatch (): string {
  return `userinfo's sub differs from the token's: ${settingName('userinfoUrl')} (or discovery's userinfo_endpoint) must be this realm's userinfo endpoint`
}
