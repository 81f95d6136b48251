/**
 * The client registration, tried the way the plugin and a browser use it, without any user:
 * `client` (the id and secret, by a `client_credentials` request), `redirect_uri` (the authorization
 * endpoint accepts `<webapp>/callback_keycloak`) and `end_session` (with `idp_logout`, an end-session
 * endpoint that accepts the client and the page after logout).
 */
import { createHash, randomBytes } from 'node:crypto'
import { settingName } from '../lib/config/settings.js'
import { isJsonObject } from '../lib/keycloak/http.js'
// The client authenticates exactly as the plugin's code exchange does.
import { basicAuthorization, loggableOAuthError } from '../lib/keycloak/oidc-client.js'
import { shown, type DoctorContext } from './context.js'
import { fail, pass, type Verdict } from './report.js'

/** Where a client setting is in the Keycloak admin console. */
const inConsole = (clientId: string, tab: string): string => `Clients → ${clientId} → ${tab} (Keycloak console)`

/**
 * A `client_credentials` request authenticates the client before anything else, so Keycloak's answer
 * tells right credentials from wrong ones without a user. The token a service-account client gets is
 * dropped unread.
 */
export async function checkClient ({ config, endpoints, probe }: DoctorContext): Promise<Verdict> {
  const { clientId } = config
  const asked = await probe((await endpoints()).token, {
    method: 'POST',
    what: 'token endpoint',
    headers: { authorization: basicAuthorization(clientId, config.clientSecret), 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: 'grant_type=client_credentials'
  })
  if ('failure' in asked) return fail(asked.failure, `check ${settingName('accessTokenUrl')} (or remove it to use the realm's) and that this host reaches Keycloak`)
  const { status, body } = asked.answer
  if (status === 200) return pass(`Keycloak accepts client "${clientId}" and its secret (service accounts are on; the token it sent was dropped unread)`)
  const error = isJsonObject(body) && typeof body.error === 'string' ? body.error : undefined
  const description = isJsonObject(body) && typeof body.error_description === 'string' ? body.error_description : ''
  // Matched on Keycloak's texts, not on the status: Keycloak has answered these with 400 and with 401.
  if (/Client not enabled to retrieve service account/i.test(description)) {
    return pass(`Keycloak accepts client "${clientId}" and its secret (service accounts are off, which a login client does not need)`)
  }
  if (/bearer-only/i.test(description)) {
    return fail(`client "${clientId}" is bearer-only: it cannot log users in`, `in ${inConsole(clientId, 'Settings')}, turn on Client authentication and Standard flow`)
  }
  if (/public client/i.test(description)) {
    return fail(`client "${clientId}" is public: Keycloak checks no secret for it`, `in ${inConsole(clientId, 'Settings')}, turn on Client authentication, then copy the secret from its Credentials tab into ${settingName('clientSecret')}`)
  }
  if (error === 'invalid_client' || /Invalid client or Invalid client credentials/i.test(description)) {
    return fail(
      `Keycloak refuses client "${clientId}" with the configured secret (${loggableOAuthError(error)})`,
      `copy the secret from ${inConsole(clientId, 'Credentials')} into ${settingName('clientSecret')}, and check ${settingName('clientId')}`
    )
  }
  return fail(
    `the token endpoint answered HTTP ${status}${error === undefined ? '' : ` ${loggableOAuthError(error)}`}, so the credentials could not be tried`,
    status >= 500 ? 'Keycloak is failing: see its log' : `check ${settingName('accessTokenUrl')} (or remove it to use the realm's)`
  )
}

/** What to change when Keycloak accepts the callback but sends the browser back with an error. */
function fixForAuthorizationError (error: string, clientId: string): string {
  if (error === 'unauthorized_client') return `turn on Standard flow in ${inConsole(clientId, 'Settings')}`
  if (error === 'invalid_scope') return `every scope in ${settingName('scope')} must be a client scope of ${clientId}: see ${inConsole(clientId, 'Client scopes')}`
  return 'see Keycloak\'s log (Realm settings → Events) for why it refused the request'
}

/**
 * Asks the authorization endpoint as a browser starting a login would, and reads Keycloak's answer:
 * its login page (or a redirect to it) means the callback is registered; a 400 page saying "Invalid
 * parameter: redirect_uri" means it is not.
 */
export async function checkRedirectUri ({ config, webapp, endpoints, probe }: DoctorContext): Promise<Verdict> {
  if (webapp.problem !== undefined) return fail(webapp.problem, 'pass the web app\'s public URL, e.g. --webapp-url https://clearml.example.com')
  if (webapp.url === undefined) {
    return fail('the web app\'s URL is unknown, so its callback could not be tried', 'pass --webapp-url https://<the ClearML web app> (or set CLEARML_WEB_HOST)')
  }
  const { clientId } = config
  const callback = `${webapp.url}/callback_keycloak`
  const url = new URL((await endpoints()).authorization)
  const verifier = randomBytes(32).toString('base64url')
  for (const [name, value] of Object.entries({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: callback,
    scope: config.scope,
    state: randomBytes(16).toString('base64url'),
    nonce: randomBytes(16).toString('base64url'),
    code_challenge: createHash('sha256').update(verifier).digest('base64url'),
    code_challenge_method: 'S256'
  })) url.searchParams.set(name, value)
  const asked = await probe(url.href, { what: 'authorization endpoint', headers: { accept: 'text/html' } })
  if ('failure' in asked) return fail(asked.failure, `check ${settingName('authorizeUrl')} (or remove it to use the realm's) and that this host reaches Keycloak`)
  const { status, body, headers } = asked.answer
  const page = String(body)
  if (status === 400 && page.includes('Invalid parameter: redirect_uri')) {
    return fail(`Keycloak refuses ${callback} ("Invalid parameter: redirect_uri")`, `add ${callback} to Valid redirect URIs in ${inConsole(clientId, 'Settings')}, or pass the web app's public URL with --webapp-url`)
  }
  if (status === 400 && page.includes('Client not found')) {
    return fail(`the realm has no client "${clientId}" ("Client not found")`, `set ${settingName('clientId')} to the Client ID shown under Clients in the Keycloak console`)
  }
  const location = headers!.location
  if (status >= 300 && status < 400 && location !== undefined) {
    const target = new URL(location, url)
    const error = target.searchParams.get('error')
    if (`${target.origin}${target.pathname}` === callback && error !== null) {
      return fail(`Keycloak accepts ${callback} but refuses the login request (${loggableOAuthError(error)})`, fixForAuthorizationError(error, clientId))
    }
  }
  if (status < 400) return pass(`Keycloak accepts ${callback} as client "${clientId}"'s redirect URI`)
  return fail(
    `the authorization endpoint answered HTTP ${status}`,
    status >= 500 ? 'Keycloak is failing: see its log' : `check ${settingName('authorizeUrl')} (or remove it to use the realm's)`
  )
}

/**
 * With `idp_logout`, ClearML's logout sends the browser to Keycloak's end-session endpoint with the
 * client id and `<webapp>/login` as the page after logout; Keycloak refuses an unregistered one with
 * a page saying "Invalid redirect uri".
 */
export async function checkEndSession ({ config, webapp, endpoints, probe }: DoctorContext): Promise<Verdict> {
  const { clientId } = config
  const endpoint = (await endpoints()).endSession
  if (endpoint === undefined) {
    return fail(`${settingName('idpLogout')} is on but the realm advertises no end_session_endpoint`, `set ${settingName('logoutUrl')} to the realm's logout endpoint, or turn ${settingName('idpLogout')} off`)
  }
  const url = new URL(endpoint)
  url.searchParams.set('client_id', clientId)
  const afterLogout = webapp.url === undefined ? undefined : `${webapp.url}/login`
  if (afterLogout !== undefined) url.searchParams.set('post_logout_redirect_uri', afterLogout)
  const asked = await probe(url.href, { what: 'end-session endpoint', headers: { accept: 'text/html' } })
  if ('failure' in asked) return fail(asked.failure, `check ${settingName('logoutUrl')} (or remove it to use the realm's) and that this host reaches Keycloak`)
  const { status, body } = asked.answer
  if (status < 400) {
    return pass(`${shown(endpoint)} answers${afterLogout === undefined ? ' (the page after logout was not tried: no web app URL)' : ` and accepts ${afterLogout} after logout`}`)
  }
  if (status === 400 && afterLogout !== undefined && String(body).includes('Invalid redirect uri')) {
    return fail(`Keycloak refuses ${afterLogout} as the page after logout ("Invalid redirect uri")`, `add ${afterLogout} to Valid post logout redirect URIs in ${inConsole(clientId, 'Settings')}`)
  }
  return fail(`${shown(endpoint)} answered HTTP ${status}`, status >= 500
    ? 'Keycloak is failing: see its log'
    : status === 400
      ? `check ${settingName('clientId')}; Realm settings → Events (Keycloak console) says what Keycloak refused`
      : `set ${settingName('logoutUrl')} to the realm's logout endpoint, or turn ${settingName('idpLogout')} off`)
}
