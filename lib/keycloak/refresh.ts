/**
 * The two calls that let a session follow Keycloak after its login (SPEC section 12): the refresh
 * grant (RFC 6749 section 6), which is how Keycloak tells a client that a user was disabled, deleted
 * or signed out, and token revocation (RFC 7009), which ends the offline session a logout leaves
 * behind. Both authenticate the client as the code exchange does.
 *
 * A refresh answer is sorted into what the caller must do with the session, because Keycloak's
 * answers mean different things: `invalid_grant` is Keycloak refusing *this session* (end it); a
 * refused *client* (`invalid_client`, `unauthorized_client`, a 4xx without a grant error) is a
 * misconfiguration that says nothing about the user (keep the session, tell the operator); no answer
 * or a 5xx says nothing at all (keep the session, try again later).
 */
import { SsoError } from '../errors.js'
import type { RefreshAnswer } from '../session/revalidation.js'
import { loggableOAuthError, postClientForm, type ClientCredentials } from './oidc-client.js'
import { isJsonObject } from './http.js'

export type { ClientCredentials, RefreshAnswer }

/** Keycloak's `error_description` for the log: bounded, on one line. It names a condition, never a token. */
export function loggableDescription (description: unknown): string {
  if (typeof description !== 'string' || description === '') return '(no description)'
  // eslint-disable-next-line no-control-regex
  return JSON.stringify(description.replace(/[\u0000-\u001f\u007f]/g, ' ').slice(0, 200))
}

/** `grant_type=refresh_token` at the token endpoint. Never throws: every outcome is an answer. */
export async function refreshTokens (tokenEndpoint: string, refreshToken: string, client: ClientCredentials): Promise<RefreshAnswer> {
  let answer
  try {
    answer = await postClientForm(tokenEndpoint, 'token endpoint', client, { grant_type: 'refresh_token', refresh_token: refreshToken })
  } catch (err) {
    // callJson throws only `idp_unavailable`: unreachable, timed out, or an answer over the size cap.
    return { kind: 'unavailable', reason: (err as SsoError).message, answered: false }
  }
  const body = isJsonObject(answer.body) ? answer.body : undefined
  if (answer.status >= 500) return { kind: 'unavailable', reason: `token endpoint answered HTTP ${answer.status}`, answered: true }
  if (answer.status === 200) {
    const { access_token: accessToken, id_token: idToken, refresh_token: next, token_type: tokenType } = body ?? {}
    if (typeof accessToken !== 'string' || (typeof tokenType === 'string' && tokenType.toLowerCase() !== 'bearer')) {
      return { kind: 'misconfigured', reason: 'token endpoint answered a refresh without a Bearer access_token' }
    }
    return {
      kind: 'ok',
      accessToken,
      ...(typeof idToken === 'string' ? { idToken } : {}),
      ...(typeof next === 'string' && next !== '' ? { refreshToken: next } : {})
    }
  }
  const error = loggableOAuthError(body?.error)
  if (error === 'invalid_grant') return { kind: 'refused', reason: loggableDescription(body?.error_description) }
  return { kind: 'misconfigured', reason: `token endpoint refused the refresh: HTTP ${answer.status}, error ${error}` }
}

/**
 * RFC 7009 revocation of a refresh token. Keycloak ends the token's session with it (an offline
 * token's offline session), so a logout leaves nothing behind. Throws `idp_unavailable` when
 * Keycloak does not take it; the caller logs and moves on, as a logout must not wait on Keycloak.
 */
export async function revokeRefreshToken (revocationEndpoint: string, refreshToken: string, client: ClientCredentials): Promise<void> {
  const answer = await postClientForm(revocationEndpoint, 'revocation endpoint', client, { token: refreshToken, token_type_hint: 'refresh_token' })
  // RFC 7009 2.2: 200 whether or not the token was known; anything else did not revoke it.
  if (answer.status !== 200) {
    const error = loggableOAuthError(isJsonObject(answer.body) ? answer.body.error : undefined)
    throw new SsoError('idp_unavailable', `revocation endpoint answered HTTP ${answer.status}, error ${error}`)
  }
}
