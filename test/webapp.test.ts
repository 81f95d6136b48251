/**
 * ClearML's own web app as the client (issue #21, SPEC 13): its requests replayed as FACTS ("The
 * ClearML web app") describes them, against the Keycloak-like provider over HTTP. The open-source web
 * app 2.0 calls `/v999.0/<endpoint>` with cookies only; ClearML Enterprise's web app adds the
 * `callback_url_prefix` protocol and completes the login on its own `/callback_keycloak` page.
 */
import t, { type Test } from 'tap'
import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import clearmlKeycloak, { MemoryDirectory, SsoError, type ClearmlKeycloakOptions } from '../index.js'
import { CLIENT_SECRET, KC, seedAcme, startStack, TOKEN_SECRET, type Stack } from './helpers/stack.js'
import { UserAgent } from './helpers/user-agent.js'
import { fakeWebappBuild } from './helpers/fake-webapp.js'
import { startWebappHost, webappBuild, withScript } from '../examples/clearml-webapp/server.js'

/** The web app's version segment; the SDK's is `/v2.31`. */
const WEBAPP = '/v999.0'
const SDK = '/v2.31'
/** What Chromium sends on a page load. */
const NAVIGATION = { accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' }

interface Answer { status: number, body: any, setCookies: string[], location?: string, headers: Headers }

/** A JSON call as the web app makes it: POST, JSON body, the browser's cookies. */
async function call (agent: UserAgent, url: string, body: unknown = {}): Promise<Answer> {
  const answer = await agent.request(url, { json: body })
  return { ...answer, body: answer.body === '' ? undefined : JSON.parse(answer.body) }
}

const transactionCookies = (answer: { setCookies: string[] }): string[] => answer.setCookies.filter((c) => /^clearml_kc_tx_\d=[^;]/.test(c))

/** Follows an authorization URL to Keycloak, logs in when it asks, and stops at the redirect back to the web app. */
async function toCallback (stack: Stack, agent: UserAgent, authorizationUrl: string, username = 'bob'): Promise<URL> {
  const atCallback = (url: string): boolean => url.startsWith(`${stack.appUrl}/callback_keycloak`)
  let page = await agent.navigate(authorizationUrl, { stopAt: atCallback })
  if (!atCallback(page.url)) page = await agent.submitLogin(page, username, `${username}-pw`, { stopAt: atCallback })
  return new URL(page.url)
}

function assertNoSecretsLogged (t: Test, stack: Stack, extra: string[] = []): void {
  const logs = stack.logs.join('')
  for (const secret of [CLIENT_SECRET, TOKEN_SECRET, ...extra]) t.notMatch(logs, secret, 'no secret, token or code in the log')
}

t.test('every JSON route also answers at /v<major>.<minor>/, echoing the version; refusals too, in the envelope', async (t) => {
  const stack = await startStack({ plugin: { routes: { explain: true } }, env: { [`${KC}idp_logout`]: 'true' } })
  t.teardown(stack.close)
  const agent = new UserAgent()
  const url = (path: string): string => `${stack.appUrl}${path}`

  const modes = await call(agent, url(`${WEBAPP}/login.supported_modes`))
  t.equal(modes.status, 200)
  t.match(modes.body.meta, { result_code: 200, endpoint: { name: 'login.supported_modes', requested_version: '999.0', actual_version: '2.30' } })
  t.equal((await call(agent, url('/login.supported_modes'))).body.meta.endpoint.requested_version, '2.30', 'unversioned calls keep today\'s value')
  const viaGet = await agent.request(url(`${SDK}/login.supported_modes`))
  t.equal(JSON.parse(viaGet.body).meta.endpoint.requested_version, '2.31', 'GET with a query string, as ClearML accepts')
  t.equal((await fetch(url(`${SDK}/login.supported_modes`), { method: 'HEAD' })).status, 200, 'HEAD, as for every GET route')

  // A whole JSON login on versioned paths: sso_authorize, Keycloak, sso_callback.
  const authorize = await call(agent, url(`${SDK}/login.sso_authorize`), { provider: 'keycloak' })
  t.match(authorize.body.meta.endpoint, { name: 'login.sso_authorize', requested_version: '2.31' })
  const viaQuery = await agent.request(url(`${WEBAPP}/login.sso_authorize?provider=keycloak`))
  t.match(JSON.parse(viaQuery.body).meta.endpoint, { name: 'login.sso_authorize', requested_version: '999.0' })
  const callback = await toCallback(stack, agent, authorize.body.data.redirect_url, 'alice')
  const args = Object.fromEntries(callback.searchParams)
  const login = await call(agent, url(`${WEBAPP}/login.sso_callback`), { provider: 'keycloak', args, callback_url: `${stack.appUrl}/callback_keycloak` })
  t.equal(login.status, 200)
  t.match(login.body, { meta: { endpoint: { name: 'login.sso_callback', requested_version: '999.0' } }, data: { login_status: 'logged_in', company_id: 'c-acme' } })
  t.equal((await call(agent, url(`${WEBAPP}/login.supported_modes`))).body.data.authenticated, true, 'the session cookie counts on versioned paths')

  // Refusals keep the envelope and the version.
  const replay = await call(agent, url(`${SDK}/login.sso_callback`), { provider: 'keycloak', args })
  t.match(replay, { status: 400, body: { meta: { result_code: 400, result_msg: 'invalid_state', endpoint: { name: 'login.sso_callback', requested_version: '2.31' } }, data: { error: 'invalid_state' } } })
  const provider = await call(agent, url(`${SDK}/login.sso_authorize`), { provider: 'google' })
  t.match(provider, { status: 400, body: { meta: { endpoint: { name: 'login.sso_authorize', requested_version: '2.31' } }, data: { error: 'bad_request' } } })
  const malformed = await fetch(url(`${WEBAPP}/login.logout`), { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"redirect_url":' })
  t.match({ status: malformed.status, body: await malformed.json() }, { status: 400, body: { meta: { endpoint: { requested_version: '999.0' } }, data: { error: 'bad_request' } } }, 'malformed JSON')
  const anonymous = await call(new UserAgent(), url(`${SDK}/login.sso_explain`), { claims: { sub: 'x' } })
  t.match(anonymous, { status: 401, body: { meta: { endpoint: { name: 'authenticate', requested_version: '2.31' } }, data: { error: 'invalid_token' } } }, 'authenticate\'s own refusal')
  const explained = await call(agent, url(`${WEBAPP}/login.sso_explain`), { claims: { sub: 'new', email: 'zoe@acme.com', email_verified: true } })
  t.match(explained, { status: 200, body: { meta: { endpoint: { name: 'login.sso_explain', requested_version: '999.0' } }, data: { outcome: 'ok' } } })

  const logoutViaGet = await agent.request(url(`${SDK}/login.logout`))
  t.match(JSON.parse(logoutViaGet.body), { meta: { endpoint: { name: 'login.logout', requested_version: '2.31' } }, data: { redirect_url: `${stack.idp.issuer}/protocol/openid-connect/logout?` } })

  // Only ClearML endpoints are versioned, and only with a version of ClearML's shape.
  for (const path of ['/v2/login.logout', '/vx.1/login.logout', '/v1234.0/login.logout', `${WEBAPP}/login/keycloak`, `${WEBAPP}/callback_keycloak`, `${WEBAPP}/logout`, `${WEBAPP}/logout/backchannel`]) {
    t.equal((await fetch(url(path), { method: path.endsWith('backchannel') ? 'POST' : 'GET' })).status, 404, `${path} is not a route`)
  }
  assertNoSecretsLogged(t, stack, [args.code])
})

t.test('login.supported_modes carries basic and server_errors; the basic option says what the host has', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const modes = await call(new UserAgent(), `${stack.appUrl}${WEBAPP}/login.supported_modes`)
  t.strictSame(modes.body.data, {
    authenticated: false,
    sso: { keycloak: '/login/keycloak' },
    sso_providers: [{ name: 'keycloak', display_name: 'Keycloak', url: '/login/keycloak' }],
    basic: { enabled: false, guest: { enabled: false } },
    server_errors: { missed_es_upgrade: false, es_connection_error: false }
  })

  const env = { ...stack.env }
  const withBasic = async (basic: ClearmlKeycloakOptions['basic']): Promise<FastifyInstance> => {
    const app = Fastify()
    await app.register(clearmlKeycloak, { directory: stack.directory, webappUrl: stack.appUrl, env, basic })
    return app
  }
  const host = await withBasic({ enabled: true, guest: { enabled: true, username: 'guest', password: 'guest-pw' } })
  const answer = await host.inject({ method: 'POST', url: `${WEBAPP}/login.supported_modes`, payload: {} })
  t.strictSame(answer.json().data.basic, { enabled: true, guest: { enabled: true, username: 'guest', password: 'guest-pw' } }, 'a host with its own password login and guest mode')
  t.strictSame((await host.keycloak.supportedModes()).basic, answer.json().data.basic, 'the decorator says the same')
  await host.close()
  const basicOnly = await withBasic({ enabled: true })
  t.strictSame((await basicOnly.keycloak.supportedModes()).basic, { enabled: true, guest: { enabled: false } })
  await basicOnly.close()

  const rows: Array<[string, unknown, RegExp]> = [
    ['basic not an object', true, /"basic" must be an object/],
    ['basic a list', [], /"basic" must be an object/],
    ['basic.enabled not a boolean', { enabled: 'yes' }, /"basic.enabled" must be true or false/],
    ['basic.guest not an object', { guest: 'on' }, /"basic.guest" must be an object/],
    ['basic.guest.enabled not a boolean', { guest: { enabled: 1 } }, /"basic.guest.enabled" must be true or false/],
    ['basic.guest.password not a string', { guest: { enabled: true, password: 7 } }, /"basic.guest.password" must be a string/]
  ]
  for (const [name, basic, expected] of rows) {
    await t.rejects(withBasic(basic as ClearmlKeycloakOptions['basic']), expected, name)
  }
})

t.test('ClearML Enterprise\'s protocol: callback_url_prefix and state, two tabs, the web app\'s callback page, a replay refused', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const agent = new UserAgent() // one browser, two tabs: one cookie jar
  const modesUrl = `${stack.appUrl}${WEBAPP}/login.supported_modes`
  const callbackUrlPrefix = `${stack.appUrl}/callback_`
  /** What the web app's `/callback_keycloak` page does: supported_modes with the callback's state, then sso_callback. */
  const callbackPage = async (callback: URL): Promise<Answer> => {
    const state = callback.searchParams.get('state')!
    const again = await call(agent, modesUrl, { callback_url_prefix: callbackUrlPrefix, state })
    t.equal(again.status, 200, 'the callback page starts the web app, which asks for the login modes again')
    return await call(agent, `${stack.appUrl}${WEBAPP}/login.sso_callback`, { provider: 'keycloak', args: Object.fromEntries(callback.searchParams), callback_url: `${stack.appUrl}/callback_keycloak` })
  }

  const tabA = await call(agent, modesUrl, { callback_url_prefix: callbackUrlPrefix, state: '/projects/p1?tab=x' })
  t.equal(tabA.status, 200)
  const urlA = new URL(tabA.body.data.sso.keycloak)
  t.equal(urlA.origin + urlA.pathname, `${stack.idp.issuer}/protocol/openid-connect/auth`, 'a Keycloak authorization URL')
  t.equal(tabA.body.data.sso_providers[0].url, urlA.href, 'the same in sso_providers, which the button follows')
  t.match(Object.fromEntries(urlA.searchParams), { redirect_uri: `${stack.appUrl}/callback_keycloak`, code_challenge_method: 'S256', client_id: 'clearml' })
  t.ok(urlA.searchParams.get('nonce'), 'a nonce')
  const stateA = new URL(urlA.searchParams.get('state')!, stack.appUrl)
  t.equal(stateA.pathname + stateA.search, '/projects/p1?tab=x', 'the state, read as the web app reads it, is the path and query asked for')
  t.match(stateA.hash, /^#[0-9a-f]{64}$/, 'then 256 random bits')
  t.equal(transactionCookies(tabA).length, 1, 'and the answer sets the login-transaction cookie')

  const tabB = await call(agent, modesUrl, { callback_url_prefix: callbackUrlPrefix, state: '/models' })
  const callbackB = await toCallback(stack, agent, tabB.body.data.sso.keycloak)
  const loginB = await callbackPage(callbackB)
  t.equal(loginB.status, 200)
  t.match(loginB.body.data, { login_status: 'logged_in', company_id: 'c-acme' })
  t.equal(new URL(callbackB.searchParams.get('state')!, stack.appUrl).pathname, '/models', 'tab B returns to its page')

  const callbackA = await toCallback(stack, agent, urlA.href)
  t.equal(callbackA.searchParams.get('state'), urlA.searchParams.get('state'), 'Keycloak sends the state back as it was')
  const loginA = await callbackPage(callbackA)
  t.equal(loginA.status, 200, 'tab A, started first and finished last, logs in too')
  const back = new URL(callbackA.searchParams.get('state')!, stack.appUrl)
  t.equal(back.pathname + back.search, '/projects/p1?tab=x')

  const replay = await call(agent, `${stack.appUrl}${WEBAPP}/login.sso_callback`, { provider: 'keycloak', args: Object.fromEntries(callbackA.searchParams) })
  t.match(replay, { status: 400, body: { data: { error: 'invalid_state' } } }, 'the callback is single use')
  const otherBrowser = await call(new UserAgent(), `${stack.appUrl}${WEBAPP}/login.sso_callback`, { provider: 'keycloak', args: Object.fromEntries(callbackA.searchParams) })
  t.match(otherBrowser, { status: 400, body: { data: { error: 'invalid_state' } } }, 'and bound to this browser: knowing the state is not enough')
  t.equal(stack.directory.listUsers().length, 1)

  // The path the state gives: `/` by default, and for anything not a path of the web app.
  const resolved = async (state?: unknown): Promise<string> => {
    const answer = await call(new UserAgent(), modesUrl, { callback_url_prefix: callbackUrlPrefix, state })
    const back = new URL(new URL(answer.body.data.sso.keycloak).searchParams.get('state')!, stack.appUrl)
    return back.origin === stack.appUrl ? back.pathname + back.search : back.href
  }
  t.equal(await resolved(), '/')
  t.equal(await resolved('//evil.example/phish'), '/')
  t.equal(await resolved('https://evil.example/phish'), '/')
  t.equal(await resolved('/a#section'), '/a', 'the web app\'s own fragment gives way to the random one')
  t.equal(await resolved('/p?' + 'q'.repeat(2000)), '/', 'a path too long to keep: `/`, and the web app still starts')
  t.equal(await resolved('/p?q=' + 'é'.repeat(500)), '/', 'one that percent-encoding makes too long, too')
  const long = '/projects/' + 'p'.repeat(480) + '?filter=' + 'f'.repeat(500)
  t.equal(await resolved(long), long, 'a thousand-character path is kept: it is in the cookie once')

  // The prefix must give the registered redirect URI.
  for (const prefix of ['https://evil.example/callback_', `${stack.appUrl}/other_`, `${stack.appUrl}/callback_keycloak/`, 'javascript:alert(1)//']) {
    const refused = await call(new UserAgent(), modesUrl, { callback_url_prefix: prefix, state: '/' })
    t.match(refused, { status: 400, body: { meta: { endpoint: { name: 'login.supported_modes' } }, data: { error: 'bad_request' } } }, `${prefix} refused`)
    t.strictSame(transactionCookies(refused), [], 'and no login started')
  }
  t.match(await call(new UserAgent(), modesUrl, { callback_url_prefix: 42 }), { status: 400, body: { data: { error: 'bad_request' } } })
  t.match(stack.logs.join(''), /callback_url_prefix \+ \\"keycloak\\" must be the web app's registered callback/, 'the log says what the prefix must give')
  assertNoSecretsLogged(t, stack, [callbackA.searchParams.get('code')!, callbackB.searchParams.get('code')!])
})

t.test('three logins in progress: the callback page\'s own call never evicts the login it is completing', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const agent = new UserAgent()
  const modesUrl = `${stack.appUrl}${WEBAPP}/login.supported_modes`
  const start = async (state: string): Promise<string> => (await call(agent, modesUrl, { callback_url_prefix: `${stack.appUrl}/callback_`, state })).body.data.sso.keycloak
  const [a, b, c] = [await start('/a'), await start('/b'), await start('/c')]
  t.equal(agent.cookies(stack.appUrl).size, 3, 'three slots in use')
  const complete = async (callback: URL): Promise<Answer> => {
    await call(agent, modesUrl, { callback_url_prefix: `${stack.appUrl}/callback_`, state: callback.searchParams.get('state') })
    return await call(agent, `${stack.appUrl}${WEBAPP}/login.sso_callback`, { provider: 'keycloak', args: Object.fromEntries(callback.searchParams) })
  }
  const callbackA = await toCallback(stack, agent, a)
  t.equal((await complete(callbackA)).status, 200, 'A logs in: its slot was kept, the oldest other one replaced')
  t.match(await complete(await toCallback(stack, agent, b)), { status: 400, body: { data: { error: 'invalid_state' } } }, 'B, the one replaced, logs in again from the start')
  t.equal((await complete(await toCallback(stack, agent, c))).status, 200, 'C logs in')
  t.ok(agent.cookies(stack.appUrl).size <= 4, 'never more than three transactions and the session')
})

t.test('a prefix: \'/api\' mount logs in end to end with no glue in the host', async (t) => {
  const stack = await startStack({ plugin: { prefix: '/api' } })
  t.teardown(stack.close)
  const agent = new UserAgent()
  const form = await agent.navigate(`${stack.appUrl}/api/login/keycloak`)
  t.equal(new URL(form.hops[0].location!).searchParams.get('redirect_uri'), `${stack.appUrl}/callback_keycloak`, 'Keycloak gets the registered redirect URI')
  const final = await agent.submitLogin(form, 'alice', 'alice-pw')
  t.equal(final.url, `${stack.appUrl}/`, 'back at the web app')
  t.equal(final.body, 'home')
  const callbackHop = final.hops.find((hop) => hop.url.startsWith(`${stack.appUrl}/callback_keycloak?`))
  t.equal(callbackHop?.status, 302, 'and the plugin serves it there')
  t.ok(agent.cookies(stack.appUrl).get('clearml_token_basic'), 'logged in')
  t.match(stack.logs.join(''), /"url":"\/callback_keycloak\?code=%5Bredacted%5D&/, 'its request line keeps the code out of the log')

  // The Enterprise protocol through the same mount.
  const second = new UserAgent()
  const modes = await call(second, `${stack.appUrl}/api${WEBAPP}/login.supported_modes`, { callback_url_prefix: `${stack.appUrl}/callback_`, state: '/models' })
  const callback = await toCallback(stack, second, modes.body.data.sso.keycloak)
  const login = await call(second, `${stack.appUrl}/api${WEBAPP}/login.sso_callback`, { provider: 'keycloak', args: Object.fromEntries(callback.searchParams) })
  t.equal(login.status, 200)
  // Served here, the plugin's own callback completes an Enterprise login and follows the state's path.
  const third = new UserAgent()
  const started = await call(third, `${stack.appUrl}/api${WEBAPP}/login.supported_modes`, { callback_url_prefix: `${stack.appUrl}/callback_`, state: '/models?view=table' })
  const done = await third.submitLogin(await third.navigate(started.body.data.sso.keycloak), 'carol', 'carol-pw')
  t.equal(done.url, `${stack.appUrl}/models?view=table`, 'the browser lands on the path the web app asked for')
  t.ok(third.cookies(stack.appUrl).get('clearml_token_basic'), 'logged in')
  t.equal((await fetch(`${stack.appUrl}/api/callback_keycloak?error=access_denied`, { redirect: 'manual' })).headers.get('location'), '/login?sso_error=idp_error', 'the prefixed path still answers too')
})

t.test('the plugin in a host\'s prefixed context: login URLs and the callback follow', async (t) => {
  const stack = await startStack({
    mount: async (app, options) => { await app.register(async (api) => { await api.register(clearmlKeycloak, options) }, { prefix: '/api' }) }
  })
  t.teardown(stack.close)
  const agent = new UserAgent()
  const modes = await call(agent, `${stack.appUrl}/api${WEBAPP}/login.supported_modes`)
  t.equal(modes.body.data.sso.keycloak, '/api/login/keycloak', 'the host\'s prefix is in the URL the web app follows')
  const { final } = await stack.login('bob', { start: '/api/login/keycloak' })
  t.equal(final.body, 'home')
})

t.test('requireLogin on the web app\'s index.html fallback: navigations go to Keycloak and come back; other requests get 401', async (t) => {
  const stack = await startStack({
    plugin: { prefix: '/api' },
    env: { [`${KC}idp_logout`]: 'true' },
    host: (app) => {
      app.setNotFoundHandler({ preHandler: app.keycloak.requireLogin }, async (request, reply) =>
        await reply.type('text/html').send(`<html>web app at ${request.url} for ${request.clearmlIdentity?.user ?? 'nobody'}</html>`))
    }
  })
  t.teardown(stack.close)
  const agent = new UserAgent({ browser: true })
  const page = `${stack.appUrl}/projects/p1?tab=x`

  const first = await agent.request(page, { headers: NAVIGATION })
  t.equal(first.status, 302)
  t.equal(first.location, `${stack.appUrl}/api/login/keycloak?redirect=%2Fprojects%2Fp1%3Ftab%3Dx`, 'to the login start, with the path and query')
  t.equal(first.headers.get('cache-control'), 'no-store')
  const form = await agent.navigate(page, { headers: NAVIGATION })
  t.equal(new URL(form.url).origin, new URL(stack.idp.issuer).origin, 'at Keycloak')
  t.match(form.body, /<form/)
  const landed = await agent.submitLogin(form, 'bob', 'bob-pw', { headers: NAVIGATION })
  t.equal(landed.url, page, 'back on the page asked for, with its query')
  const [user] = stack.directory.listUsers()
  t.equal(landed.body, `<html>web app at /projects/p1?tab=x for ${user.id}</html>`, 'served, with the session\'s identity')
  t.equal((await agent.request(page, { headers: NAVIGATION })).status, 200, 'a session: the page')
  t.equal((await agent.request(page, { headers: { accept: 'application/json' } })).status, 200, 'a session: a script\'s request too')

  // A browser's HEAD is answered as its GET; the web app's own `/login?redirect=` keeps its target.
  const anonymous = new UserAgent({ browser: true })
  t.match(await anonymous.request(page, { method: 'HEAD', headers: NAVIGATION }), { status: 302, location: `${stack.appUrl}/api/login/keycloak?redirect=%2Fprojects%2Fp1%3Ftab%3Dx` })
  t.equal((await anonymous.request(`${stack.appUrl}/login?redirect=%2Fmodels%3Fa%3D1`, { headers: NAVIGATION })).location, `${stack.appUrl}/api/login/keycloak?redirect=%2Fmodels%3Fa%3D1`)
  t.equal((await anonymous.request(`${stack.appUrl}/login`, { headers: NAVIGATION })).location, `${stack.appUrl}/api/login/keycloak?redirect=%2F`)
  t.equal((await anonymous.request(`${stack.appUrl}/login?redirect=//evil.example`, { headers: NAVIGATION })).location, `${stack.appUrl}/api/login/keycloak?redirect=%2F`)
  t.equal((await anonymous.request(`${stack.appUrl}//evil.example/x`, { headers: NAVIGATION })).location, `${stack.appUrl}/api/login/keycloak?redirect=%2F`, 'never a redirect off the origin')

  // Not navigations: the envelope's 401, never a redirect a script would follow to Keycloak.
  const notNavigations: Array<[string, { method?: string, headers: Record<string, string> }]> = [
    ['a script asking for JSON', { headers: { accept: 'application/json' } }],
    ['no Accept header', { headers: {} }],
    ['*/* only', { headers: { accept: '*/*' } }],
    ['HTML refused (q=0)', { headers: { accept: 'text/html;q=0, application/json' } }],
    ['fetch() asking for HTML (Sec-Fetch-Mode: cors)', { headers: { ...NAVIGATION, 'sec-fetch-mode': 'cors' } }],
    ['a POST', { method: 'POST', headers: NAVIGATION }]
  ]
  for (const [name, init] of notNavigations) {
    const answer = await anonymous.request(page, init)
    t.equal(answer.status, 401, name)
    t.match(JSON.parse(answer.body), { meta: { result_code: 401, result_msg: 'invalid_token' }, data: { error: 'invalid_token' } }, `${name}: in the envelope`)
  }
  t.equal((await anonymous.request(page, { headers: { accept: 'text/html', 'sec-fetch-mode': 'navigate' } })).status, 302, 'a navigation without the other headers')
  t.equal((await anonymous.request(page, { headers: { accept: 'application/xhtml+xml;q=0.5' } })).status, 302, 'an old browser without fetch metadata')

  // A refused login lands on /login?sso_error=..., shown once, never sent to Keycloak again.
  const mallory = new UserAgent({ browser: true })
  const kc = await mallory.navigate(page, { headers: NAVIGATION })
  const refused = await mallory.submitLogin(kc, 'mallory', 'mallory-pw', { headers: NAVIGATION })
  t.equal(refused.url, `${stack.appUrl}/login?sso_error=not_whitelisted`)
  t.equal(refused.status, 200, 'the page is served: no loop')
  t.equal(refused.body, '<html>web app at /login?sso_error=not_whitelisted for nobody</html>')
  t.equal(kc.hops.filter((hop) => hop.url.includes('/api/login/keycloak')).length, 1, 'the page load went to Keycloak')
  t.notOk(refused.hops.some((hop) => hop.url.includes('/api/login/keycloak')), 'the refusal did not')
  t.equal((await mallory.request(`${stack.appUrl}/login?sso_error=not_whitelisted`, { headers: { accept: 'application/json' } })).status, 401, 'a script on that page still needs a session')

  // The web app's logout: `login.logout { redirect_url: <origin>/login, provider }` on its version path; it follows data.redirect_url.
  const logout = await call(agent, `${stack.appUrl}/api${WEBAPP}/login.logout`, { redirect_url: `${stack.appUrl}/login`, provider: 'keycloak' })
  t.equal(logout.status, 200)
  const endSession = new URL(logout.body.data.redirect_url)
  t.equal(endSession.origin + endSession.pathname, `${stack.idp.issuer}/protocol/openid-connect/logout`, 'Keycloak\'s end-session URL (idp_logout)')
  t.equal(endSession.searchParams.get('post_logout_redirect_uri'), `${stack.appUrl}/login`)
  t.ok(endSession.searchParams.get('id_token_hint'), 'with the ID token, so Keycloak ends its session at once')
  const afterLogout = await agent.confirmIdpLogout(endSession.href, { stopAt: (url) => url.startsWith(stack.appUrl) })
  t.equal(afterLogout.url, `${stack.appUrl}/login`, 'Keycloak sends the browser back to the web app\'s /login')
  const again = await agent.navigate(afterLogout.url, { headers: NAVIGATION })
  t.match(again.body, /<form/, 'which sends it to Keycloak, whose session ended: the password is asked again')
  const badProvider = await call(agent, `${stack.appUrl}/api${WEBAPP}/login.logout`, { redirect_url: `${stack.appUrl}/login`, provider: 7 })
  t.match(badProvider, { status: 400, body: { data: { error: 'bad_request' } } }, 'a provider that is not a string is a malformed request')
})

t.test('login.logout without idp_logout: no redirect_url, and the web app goes to its /login', async (t) => {
  const stack = await startStack({ plugin: { prefix: '/api' } })
  t.teardown(stack.close)
  const { agent } = await stack.login('bob', { start: '/api/login/keycloak' })
  const logout = await call(agent, `${stack.appUrl}/api${WEBAPP}/login.logout`, { redirect_url: `${stack.appUrl}/login`, provider: 'keycloak' })
  t.strictSame(logout.body.data, {})
  t.notOk(agent.cookies(stack.appUrl).get('clearml_token_basic'), 'the session cookie is cleared')
})

t.test('the supportedModes() decorator on a host\'s own login.supported_modes, with the Enterprise protocol', async (t) => {
  const stack = await startStack({
    plugin: { routes: { supportedModes: false } },
    host: (app) => {
      app.setErrorHandler(async (error: SsoError, request, reply) => await reply.code(error.statusCode).send({ error: error.code }))
      app.post('/login.supported_modes', async (request, reply) => ({ data: await app.keycloak.supportedModes(request, reply) }))
      app.get('/login.supported_modes', async (request, reply) => ({ data: await app.keycloak.supportedModes(request, reply) }))
    }
  })
  t.teardown(stack.close)
  const agent = new UserAgent()
  const url = `${stack.appUrl}/login.supported_modes`
  const enterprise = await call(agent, url, { callback_url_prefix: `${stack.appUrl}/callback_`, state: '/models' })
  t.equal(new URL(enterprise.body.data.sso.keycloak).searchParams.get('redirect_uri'), `${stack.appUrl}/callback_keycloak`)
  t.equal(transactionCookies(enterprise).length, 1, 'the decorator sets the cookie on the reply it is given')
  const callback = await toCallback(stack, agent, enterprise.body.data.sso.keycloak)
  t.equal((await call(agent, `${stack.appUrl}/login.sso_callback`, { provider: 'keycloak', args: Object.fromEntries(callback.searchParams) })).status, 200)
  const viaQuery = await agent.request(`${url}?callback_url_prefix=${encodeURIComponent(`${stack.appUrl}/callback_`)}`)
  t.match(JSON.parse(viaQuery.body).data.sso.keycloak, stack.idp.issuer, 'a GET with the query string')
  t.match(await call(agent, url, { callback_url_prefix: 'https://evil.example/callback_' }), { status: 400, body: { error: 'bad_request' } })
  t.match(await call(agent, url, { callback_url_prefix: ['x'] }), { status: 400, body: { error: 'bad_request' } }, 'no schema in front: the decorator checks types')
  t.match(await call(agent, url, { callback_url_prefix: `${stack.appUrl}/callback_`, state: { path: '/' } }), { status: 400, body: { error: 'bad_request' } })
  const text = await agent.request(url, { method: 'POST', headers: { 'content-type': 'text/plain' } })
  t.equal(JSON.parse(text.body).data.sso.keycloak, '/login/keycloak', 'a body that is no object: the plain login start')
})

t.test('without reply the decorator cannot set a cookie: it gives the plain login start', async (t) => {
  const directory = new MemoryDirectory()
  seedAcme(directory)
  const app = Fastify()
  await app.register(clearmlKeycloak, {
    directory,
    webappUrl: 'https://clearml.example.com',
    routes: { supportedModes: false },
    env: { [`${KC}base_url`]: 'http://127.0.0.1:9/realms/clearml', CLEARML__secure__login__sso__oauth_client__keycloak__client_id: 'clearml', CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: 'secret', CLEARML__secure__auth__token_secret: TOKEN_SECRET }
  })
  app.post('/modes', async (request) => await app.keycloak.supportedModes(request))
  const answer = await app.inject({ method: 'POST', url: '/modes', payload: { callback_url_prefix: 'https://clearml.example.com/callback_' } })
  t.equal(answer.json().sso.keycloak, '/login/keycloak')
  t.equal(answer.headers['set-cookie'], undefined)
  await app.close()
})

t.test('the example host: a web app build behind requireLogin, its configuration, its few endpoints', async (t) => {
  const build = fakeWebappBuild({ apiBaseUrl: 'https://elsewhere.example/api', branding: { logo: 'logo.svg' } })
  t.teardown(build.remove)
  const host = await startWebappHost({ webappDir: build.dir, logger: false })
  t.teardown(host.close)
  const browser = new UserAgent({ browser: true })

  const asset = await browser.request(`${host.url}/assets/app.js`)
  t.equal(asset.status, 200, 'the build\'s files are public')
  t.match(asset.body, /login\.supported_modes/)
  t.strictSame(JSON.parse((await browser.request(`${host.url}/configuration.json`)).body), { apiBaseUrl: '/api', branding: { logo: 'logo.svg' } }, 'the build\'s configuration, with the API here')
  for (const path of ['/', '/index.html', '/projects/p1?tab=x']) {
    const answer = await browser.request(`${host.url}${path}`, { headers: NAVIGATION })
    t.equal(answer.status, 302, `${path}: no page without a session`)
  }
  const anonymousCall = await call(browser, `${host.url}/api${WEBAPP}/users.get_current_user`, { get_supported_features: true })
  t.match(anonymousCall, { status: 401, body: { data: { error: 'invalid_token' } } })
  t.match(await call(browser, `${host.url}/api${WEBAPP}/projects.get_all_ex`), { status: 401 }, 'an endpoint it lacks: 401 first, so the web app goes to log in')

  const form = await browser.navigate(`${host.url}/projects/p1?tab=x`, { headers: NAVIGATION })
  const landed = await browser.submitLogin(form, 'alice', 'alice', { headers: NAVIGATION })
  t.equal(landed.url, `${host.url}/projects/p1?tab=x`)
  t.match(landed.body, /<script src="assets\/app.js">/, 'the web app\'s index.html')
  t.match(landed.body, /<script src="\/sso-reload.js"><\/script><\/head>/, 'with the host\'s script at the end of its head, before the web app\'s own')
  const reloadScript = await new UserAgent({ browser: true }).request(`${host.url}/sso-reload.js`)
  t.equal(reloadScript.status, 200, 'the host\'s script is public: it runs on the web app\'s login page')
  t.match(reloadScript.headers.get('content-type'), /^text\/javascript/)
  t.match(reloadScript.body, /history\[method\]/)
  t.equal(withScript('<p>no head</p>', '/s.js'), '<script src="/s.js"></script><p>no head</p>', 'a page without a head gets it first')
  t.equal(landed.hops.at(-1)?.setCookies.length, 0)

  const modes = await call(browser, `${host.url}/api${WEBAPP}/login.supported_modes`)
  t.match(modes.body.data, { authenticated: true, basic: { enabled: false }, server_errors: { missed_es_upgrade: false, es_connection_error: false } })
  const current = await call(browser, `${host.url}/api${WEBAPP}/users.get_current_user`, { get_supported_features: true })
  t.match(current.body, { meta: { result_code: 200, endpoint: { name: 'users.get_current_user', requested_version: '999.0' } }, data: { user: { name: 'Alice Anderson', email: 'alice@acme.example', role: 'admin', company: { id: 'acme', name: 'Acme ML' } } } })
  t.match((await call(browser, `${host.url}/api${WEBAPP}/users.get_preferences`)).body, { data: { preferences: {} } })
  t.match((await call(browser, `${host.url}/api/server.report_stats_option`)).body, { meta: { endpoint: { requested_version: '2.30' } }, data: { enabled: false } })
  t.match(await call(browser, `${host.url}/api${WEBAPP}/projects.get_all_ex`), { status: 404, body: { meta: { result_code: 404, endpoint: { name: 'projects.get_all_ex', requested_version: '999.0' } } } })
  t.equal((await browser.request(`${host.url}/projects`, { method: 'POST', headers: NAVIGATION })).status, 404, 'pages are GET only')

  const refusedPage = await new UserAgent({ browser: true }).request(`${host.url}/login?sso_error=not_whitelisted<b>`, { headers: NAVIGATION })
  t.equal(refusedPage.status, 403, 'a refused login: the host shows why')
  t.match(refusedPage.body, /Login refused: <code>not_whitelisted&#60;b&#62;<\/code>/)
  t.match(refusedPage.body, /href="\/api\/login\/keycloak"/)
  t.match((await browser.request(`${host.url}/login?sso_error=x`, { headers: NAVIGATION })).body, /assets\/app.js/, 'with a session, /login is the web app\'s')

  t.throws(() => webappBuild(undefined), /Point the host at a ClearML web app build/)
  t.throws(() => webappBuild(join(build.dir, 'missing')), /is not a directory/)
  t.throws(() => webappBuild(join(build.dir, 'assets')), /has no index.html/)
  await t.rejects(startWebappHost({ webappDir: join(build.dir, 'assets') }), /has no index.html/)
})
