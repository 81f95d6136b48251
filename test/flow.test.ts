/**
 * The login flow end to end: a user agent, the Keycloak-like provider over HTTP, and the apiserver
 * with the plugin, configured through ClearML's environment variables.
 */
import t, { type Test } from 'tap'
import { decodeJwt } from 'jose'
import { CLIENT_SECRET, KC, KC_SECURE, startStack, TOKEN_SECRET, USERS, type Stack } from './helpers/stack.js'
import { UserAgent } from './helpers/user-agent.js'
import { obtainTokens } from './helpers/tokens.js'

const isCallback = (stack: Stack) => (url: string) => url.startsWith(`${stack.appUrl}/callback_keycloak`)

/** Runs the browser up to Keycloak's redirect back to the callback, without following it. */
async function reachCallback (stack: Stack, username: string, start = '/login/keycloak'): Promise<{ agent: UserAgent, callbackUrl: string }> {
  const agent = new UserAgent()
  const user = USERS.find((u) => u.username === username)!
  const page = await agent.navigate(`${stack.appUrl}${start}`)
  const stopped = await agent.submitLogin(page, user.username, user.password, { stopAt: isCallback(stack) })
  return { agent, callbackUrl: stopped.url }
}

function assertNoSecretsLogged (t: Test, stack: Stack, extra: string[] = []): void {
  const logs = stack.logs.join('')
  for (const secret of [CLIENT_SECRET, TOKEN_SECRET, ...extra]) t.notMatch(logs, secret, 'no secret, token or code in the log')
}

t.test('a new user logs in through Keycloak and lands where they started, with a ClearML session', async (t) => {
  const stack = await startStack({ protectedRoute: true })
  t.teardown(stack.close)
  const { agent, callbackUrl } = await reachCallback(stack, 'alice', '/login/keycloak?redirect=%2Fprojects%3Fview%3Dall')
  const code = new URL(callbackUrl).searchParams.get('code')!
  t.ok(new URL(callbackUrl).searchParams.get('iss'), 'Keycloak-style provider sends the RFC 9207 iss parameter')
  const landing = await agent.request(callbackUrl)
  t.equal(landing.status, 302)
  t.equal(landing.location, `${stack.appUrl}/projects?view=all`)
  const sessionCookie = landing.setCookies.find((c) => c.startsWith('clearml_token_basic='))!
  t.match(sessionCookie, /HttpOnly/i)
  t.match(sessionCookie, /SameSite=Lax/i)
  t.notMatch(sessionCookie, /Secure/i, 'http web app: not Secure')
  t.ok(landing.setCookies.some((c) => /^clearml_kc_tx_[^=]+=;/.test(c)), 'the transaction cookie is cleared')

  const token = agent.cookies(stack.appUrl).get('clearml_token_basic')!
  const claims = decodeJwt(token)
  const [user] = stack.directory.listUsers()
  t.match(claims, {
    auth_type: 'Bearer',
    identity: { company: 'c-acme', user: user.id, user_name: 'Alice Admin', role: 'admin', company_name: 'Acme' },
    sso: { provider: 'keycloak' }
  })
  t.equal(typeof claims.session_id, 'string')
  t.equal((claims.exp as number) - (claims.iat as number), 2592000, 'services.auth.default_expiration_sec')
  t.match(user, { name: 'Alice Admin', email: 'alice@acme.com', role: 'admin', givenName: 'Alice', familyName: 'Admin' })

  const me = await agent.request(`${stack.appUrl}/me`)
  t.equal(me.status, 200)
  t.match(JSON.parse(me.body), { user: user.id, role: 'admin' })
  const bearer = await fetch(`${stack.appUrl}/me`, { headers: { authorization: `Bearer ${token}` } })
  t.equal(bearer.status, 200, 'the same token works as Authorization: Bearer')
  assertNoSecretsLogged(t, stack, [code, token])
})

t.test('a returning user gets the same ClearML user, updated from Keycloak', async (t) => {
  const stack = await startStack({ env: { [`${KC}groups__enabled`]: 'true' } })
  t.teardown(stack.close)
  await stack.login('bob')
  const [first] = stack.directory.listUsers()
  t.strictSame(stack.directory.groupsOf(first.id), ['data-science', 'ml-team'], 'full paths /ml-team and /research/data-science matched')
  stack.directory.updateUser(first.id, { name: 'Renamed in ClearML' })
  const { final } = await stack.login('bob')
  t.equal(final.body, 'home')
  const users = stack.directory.listUsers()
  t.equal(users.length, 1)
  t.equal(users[0].id, first.id)
  t.equal(users[0].name, 'Bob Builder', 'profile follows Keycloak again')
})

t.test('user info from the userinfo endpoint (get_info_from_access_token=false)', async (t) => {
  for (const opaque of [false, true]) {
    const stack = await startStack({
      env: { [`${KC}get_info_from_access_token`]: 'false' },
      idp: { opaqueAccessTokens: opaque }
    })
    t.teardown(stack.close)
    await stack.login('alice')
    const [user] = stack.directory.listUsers()
    t.match(user, { name: 'Alice Admin', email: 'alice@acme.com' }, `${opaque ? 'opaque' : 'JWT'} access token`)
    // Keycloak's userinfo carries no realm_access unless mapped: Keycloak does not manage the role.
    t.equal(user.role, 'user')
    t.ok((stack.idp.hits.get('/realms/clearml/protocol/openid-connect/userinfo') ?? 0) >= 1, 'userinfo was called')
  }
})

t.test('login.sso_authorize and login.sso_callback, the JSON flow the ClearML web app uses', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const agent = new UserAgent()
  const authorize = await agent.request(`${stack.appUrl}/login.sso_authorize`, { json: { provider: 'keycloak', state: 'webapp-opaque' } })
  t.equal(authorize.status, 200)
  const body = JSON.parse(authorize.body)
  t.match(body.meta, { result_code: 200, endpoint: { name: 'login.sso_authorize' } })
  const redirectUrl = new URL(body.data.redirect_url)
  t.equal(redirectUrl.origin + redirectUrl.pathname, `${stack.idp.issuer}/protocol/openid-connect/auth`)
  t.match(Object.fromEntries(redirectUrl.searchParams), {
    response_type: 'code', client_id: 'clearml', redirect_uri: `${stack.appUrl}/callback_keycloak`, scope: 'openid profile email', code_challenge_method: 'S256'
  })
  const page = await agent.navigate(body.data.redirect_url)
  const stopped = await agent.submitLogin(page, 'bob', 'bob-pw', { stopAt: isCallback(stack) })
  const args = Object.fromEntries(new URL(stopped.url).searchParams)
  const callback = await agent.request(`${stack.appUrl}/login.sso_callback`, { json: { provider: 'keycloak', callback_url: stopped.url, args, return_token: true } })
  t.equal(callback.status, 200)
  const data = JSON.parse(callback.body).data
  const [user] = stack.directory.listUsers()
  t.match(data, { login_status: 'logged_in', user_id: user.id, company_id: 'c-acme', state: 'webapp-opaque' })
  t.equal(decodeJwt(data.token).session_id !== undefined, true, 'return_token gives the session token')
  t.equal(agent.cookies(stack.appUrl).get('clearml_token_basic'), data.token, 'and sets it as the cookie')

  const modes = await agent.request(`${stack.appUrl}/login.supported_modes`, { method: 'POST' })
  t.match(JSON.parse(modes.body).data, { authenticated: true, sso: { keycloak: '/login/keycloak' }, sso_providers: [{ name: 'keycloak', display_name: 'Keycloak', url: '/login/keycloak' }] })
  const second = new UserAgent()
  const plain = JSON.parse((await second.request(`${stack.appUrl}/login.sso_authorize`, { json: {} })).body)
  const secondStop = await second.submitLogin(await second.navigate(plain.data.redirect_url), 'alice', 'alice-pw', { stopAt: isCallback(stack) })
  const plainCallback = await second.request(`${stack.appUrl}/login.sso_callback`, { json: { args: Object.fromEntries(new URL(secondStop.url).searchParams) } })
  const plainData = JSON.parse(plainCallback.body).data
  t.strictSame(Object.keys(plainData).sort(), ['company_id', 'login_status', 'user_id'], 'no token unless return_token, no state unless one was given')

  const anonymous = await fetch(`${stack.appUrl}/login.supported_modes`)
  t.equal(((await anonymous.json()) as { data: { authenticated: boolean } }).data.authenticated, false)
})

t.test('logout without idp_logout: session revoked and cleared, no Keycloak URL', async (t) => {
  const stack = await startStack({ protectedRoute: true })
  t.teardown(stack.close)
  const { agent } = await stack.login('alice')
  const token = agent.cookies(stack.appUrl).get('clearml_token_basic')!
  const logout = await agent.request(`${stack.appUrl}/login.logout`, { json: {} })
  t.equal(logout.status, 200)
  t.strictSame(JSON.parse(logout.body).data, {})
  t.ok(logout.setCookies.some((c) => /^clearml_token_basic=;/.test(c)), 'session cookie cleared')
  const replay = await fetch(`${stack.appUrl}/me`, { headers: { authorization: `Bearer ${token}` } })
  t.equal(replay.status, 401, 'the revoked token is refused even when replayed')
  t.match(await replay.json(), { meta: { result_code: 401, result_msg: 'invalid_token' }, data: { error: 'invalid_token' } })

  const browser = await stack.login('alice')
  const page = await browser.agent.navigate(`${stack.appUrl}/logout`, { stopAt: () => true })
  t.equal(page.hops[0].location, `${stack.appUrl}/login`, 'GET /logout sends the browser to /login')
})

t.test('logout with idp_logout: the browser ends its Keycloak session too', async (t) => {
  const stack = await startStack({ env: { [`${KC}idp_logout`]: 'true' }, protectedRoute: true })
  t.teardown(stack.close)
  const { agent } = await stack.login('alice')
  const sealed = agent.cookies(stack.appUrl).get('clearml_kc_idt')!
  t.ok(sealed, 'the ID token is kept in a cookie')
  t.equal(sealed.split('.').length, 5, 'sealed (JWE), not a readable JWT')

  const logout = await agent.request(`${stack.appUrl}/login.logout`, { json: { redirect_url: `${stack.appUrl}/bye` } })
  const { redirect_url: redirectUrl } = JSON.parse(logout.body).data
  const url = new URL(redirectUrl)
  t.equal(url.origin + url.pathname, `${stack.idp.issuer}/protocol/openid-connect/logout`)
  t.equal(url.searchParams.get('client_id'), 'clearml')
  t.equal(url.searchParams.get('post_logout_redirect_uri'), `${stack.appUrl}/bye`)
  t.match(decodeJwt(url.searchParams.get('id_token_hint')!), { iss: stack.idp.issuer, aud: 'clearml', typ: 'ID' })
  t.ok(logout.setCookies.some((c) => /^clearml_kc_idt=;/.test(c)), 'the ID token cookie is cleared')

  const done = await agent.confirmIdpLogout(redirectUrl, { stopAt: (u) => u.startsWith(stack.appUrl) })
  t.equal(done.url, `${stack.appUrl}/bye`, 'back at the web app after Keycloak logged out')

  const again = await agent.navigate(`${stack.appUrl}/login/keycloak`)
  t.match(again.body, /<form/, 'Keycloak asks for the password again: its session ended')

  const foreign = await (await stack.login('alice')).agent.request(`${stack.appUrl}/login.logout`, { json: { redirect_url: 'https://evil.example/phish' } })
  t.equal(new URL(JSON.parse(foreign.body).data.redirect_url).searchParams.get('post_logout_redirect_uri'), `${stack.appUrl}/login`, 'a foreign redirect_url becomes <webapp>/login')
})

t.test('key rotation between two logins: one extra key-set fetch, both logins succeed', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const certs = '/realms/clearml/protocol/openid-connect/certs'
  await stack.login('alice')
  t.equal(stack.idp.hits.get(certs), 1)
  await stack.idp.rotateKeys()
  const { final } = await stack.login('bob')
  t.equal(final.body, 'home')
  t.equal(stack.idp.hits.get(certs), 2, 'the unknown kid caused exactly one reload')
  t.equal(stack.directory.listUsers().length, 2)
})

t.test('works with exactly the variables of ClearML\'s Keycloak documentation', async (t) => {
  const stack = await startStack({
    // As an operator writes them from the documentation, plus only the token secret.
    envFor: (issuer) => ({
      [`${KC}base_url`]: `${issuer}/`,
      [`${KC}authorize_url`]: `${issuer}/protocol/openid-connect/auth`,
      [`${KC}access_token_url`]: `${issuer}/protocol/openid-connect/token`,
      [`${KC_SECURE}client_id`]: '"clearml"',
      [`${KC_SECURE}client_secret`]: `"${CLIENT_SECRET}"`,
      [`${KC}idp_logout`]: 'true',
      CLEARML__secure__auth__token_secret: TOKEN_SECRET
    })
  })
  t.teardown(stack.close)
  const { agent, final } = await stack.login('alice')
  t.equal(final.body, 'home')
  t.match(stack.directory.listUsers(), [{ name: 'Alice Admin', role: 'admin' }])
  const logout = JSON.parse((await agent.request(`${stack.appUrl}/login.logout`, { json: {} })).body)
  t.match(logout.data.redirect_url, `${stack.idp.issuer}/protocol/openid-connect/logout?id_token_hint=`)
})

t.test('back-channel logout: ending the Keycloak session ends every ClearML session of it', async (t) => {
  const stack = await startStack({ env: { [`${KC}idp_logout`]: 'true' }, protectedRoute: true })
  t.teardown(stack.close)
  const { agent } = await stack.login('alice')
  const first = agent.cookies(stack.appUrl).get('clearml_token_basic')!
  // A second ClearML session on the same Keycloak session (single sign-on: no password asked).
  t.equal((await agent.navigate(`${stack.appUrl}/login/keycloak`)).body, 'home')
  const second = agent.cookies(stack.appUrl).get('clearml_token_basic')!
  t.not(first, second)
  t.equal(decodeJwt(first).sso && (decodeJwt(first).sso as { sid: string }).sid, (decodeJwt(second).sso as { sid: string }).sid, 'one Keycloak session id')
  const me = async (token: string): Promise<number> => (await fetch(`${stack.appUrl}/me`, { headers: { authorization: `Bearer ${token}` } })).status
  t.equal(await me(first), 200)

  // The user logs out at Keycloak itself (another application's logout, with its own ID token).
  const { id_token: idToken } = await obtainTokens(stack, 'alice', { agent })
  const endSession = new URL(`${stack.idp.issuer}/protocol/openid-connect/logout`)
  endSession.search = new URLSearchParams({ id_token_hint: idToken, post_logout_redirect_uri: `${stack.appUrl}/login` }).toString()
  await agent.confirmIdpLogout(endSession.href, { stopAt: (u) => u.startsWith(stack.appUrl) })

  t.equal(await me(first), 401, 'the first session, never logged out at ClearML, is revoked by Keycloak\'s back-channel call')
  t.equal(await me(second), 401, 'and the second')
  t.match(stack.logs.join(''), 'Keycloak back-channel logout')
})
