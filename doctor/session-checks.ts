/**
 * What sessions that follow Keycloak (SPEC section 12) need of the realm, read from its discovery
 * document: `revocation` (a logout revokes the session's refresh token at the revocation endpoint,
 * RFC 7009, so no offline session is left behind) and `offline_access` (with `session.follows=user`
 * the login asks for that scope, and the offline token it brings outlives Keycloak's SSO session).
 * Both apply only while `session.revalidate_sec` is above 0, like `end_session` only with
 * `idp_logout`: with revalidation off a session is independent of Keycloak after login.
 */
import { isAbsoluteHttpUrl, settingName } from '../lib/config/settings.js'
import { shown, type DoctorContext } from './context.js'
import { fail, pass, type Verdict } from './report.js'

const REVALIDATE = settingName('session.revalidateSec')
const FOLLOWS = settingName('session.follows')

/** Every endpoint explicit: no document to read, said plainly (as `issuer`, `endpoints` and `clock` do), with what to check by hand. */
const notRead = (byHand: string): string => `not read: ${settingName('baseUrl')} is unset, so there is no discovery document (${byHand})`

export async function checkRevocation ({ document, issuer }: DoctorContext): Promise<Verdict> {
  const found = await document()
  if (found === undefined) return pass(notRead(`Keycloak serves revocation at ${shown(issuer)}/protocol/openid-connect/revoke`))
  const endpoint = found.revocation_endpoint
  if (typeof endpoint === 'string' && isAbsoluteHttpUrl(endpoint)) return pass(`the realm advertises its revocation endpoint ${shown(endpoint)}: a logout revokes the session's refresh token there`)
  return fail(
    `discovery advertises ${endpoint === undefined ? 'no revocation_endpoint' : `a revocation_endpoint that is not an http(s) URL (${shown(endpoint)})`}: a logout cannot revoke the session's refresh token, so each one leaves a Keycloak session (an offline one with ${FOLLOWS}=user) behind`,
    // Keycloak serves RFC 7009 at <realm>/protocol/openid-connect/revoke and advertises it since 2020.
    `upgrade Keycloak to a release that serves token revocation (every current one does), or set ${REVALIDATE}=0 to keep sessions independent of Keycloak`
  )
}

export async function checkOfflineAccess ({ config, document }: DoctorContext): Promise<Verdict> {
  const found = await document()
  if (found === undefined) return pass(notRead(`check by hand that Clients → ${config.clientId} → Client scopes lists offline_access`))
  const scopes = found.scopes_supported
  if (Array.isArray(scopes) && scopes.includes('offline_access')) {
    return pass(`the realm offers the offline_access scope, which the login asks for (${FOLLOWS}=user)`)
  }
  return fail(
    `the realm's scopes_supported ${Array.isArray(scopes) ? 'does not list' : 'is missing, so it does not list'} offline_access, which the login asks for with ${FOLLOWS}=user: Keycloak then refuses the login (invalid_scope) or issues no offline token to revalidate the session with`,
    // Keycloak lists every client scope of the realm in discovery; 26.4.4 added a switch to hide one.
    'in the Keycloak console, Client scopes must have offline_access (every new realm does; recreate it if it was deleted, and turn on "Include in OpenID Provider Metadata" where Keycloak has that switch) ' +
      `and Clients → ${config.clientId} → Client scopes must list it; or set ${FOLLOWS}=sso_session`
  )
}
