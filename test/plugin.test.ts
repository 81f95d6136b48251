import t from 'tap'
import Fastify from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { decodeJwt } from 'jose'
import clearmlKeycloak, { ConfigError, MemoryDirectory, MemoryRevocationStore, type ClearmlKeycloakOptions } from '../index.js'
import { KC, seedAcme, startStack, TOKEN_SECRET } from './helpers/stack.js'
import { obtainTokens } from './helpers/tokens.js'

const env = {
  [`${KC}base_url`]: 'http://127.0.0.1:9/realms/clearml',
  CLEARML__secure__login__sso__oauth_client__keycloak__client_id: 'clearml',
  CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: 'secret',
  CLEARML__secure__auth__token_secret: 'token-secret'
}

async function build (options: Partial<ClearmlKeycloakOptions> = {}) {
  const app = Fastify()
  const directory = new MemoryDirectory()
  seedAcme(directory)
  await app.register(clearmlKeycloak, { directory, webappUrl: 'https://clearml.example.com', env, ...options })
  return app
}

t.test('register-time validation names what is missing', async (t) => {
  const rows: Array<[string, unknown, RegExp | Error | { name?: string, message?: RegExp } | typeof ConfigError]> = [
    ['no directory', { webappUrl: 'https://x', env }, /"directory" option is required/],
    ['a directory lacking methods', { directory: { getCompany: async () => null }, webappUrl: 'https://x', env }, /lacks the UserDirectory method\(s\) findUserByIdentity, findUserByEmail/],
    ['no webappUrl', { directory: new MemoryDirectory(), env }, /"webappUrl" option is required/],
    ['webappUrl not a URL', { directory: new MemoryDirectory(), webappUrl: 'clearml.example.com', env }, /absolute http\(s\) URL/],
    ['webappUrl with another scheme', { directory: new MemoryDirectory(), webappUrl: 'ftp://clearml.example.com', env }, /absolute http\(s\) URL/],
    ['no token secret and no issueToken', { directory: new MemoryDirectory(), webappUrl: 'https://x', env: { ...env, CLEARML__secure__auth__token_secret: '' } }, { name: 'ConfigError', message: /CLEARML__secure__auth__token_secret is required to sign session tokens/ }],
    ['bad environment', { directory: new MemoryDirectory(), webappUrl: 'https://x', env: {} }, ConfigError],
    ['bearer not an object', { directory: new MemoryDirectory(), webappUrl: 'https://x', env, bearer: true }, /"bearer" must be an object/],
    ['bearer null', { directory: new MemoryDirectory(), webappUrl: 'https://x', env, bearer: null }, /"bearer" must be an object/],
    ['bearer.keycloak not a boolean', { directory: new MemoryDirectory(), webappUrl: 'https://x', env, bearer: { keycloak: 'yes' } }, /"bearer.keycloak" must be true or false/],
    ['bearer.provision not a boolean', { directory: new MemoryDirectory(), webappUrl: 'https://x', env, bearer: { provision: 1 } }, /"bearer.provision" must be true or false/],
    ['bearer.audiences not a list', { directory: new MemoryDirectory(), webappUrl: 'https://x', env, bearer: { audiences: 'clearml-api' } }, /"bearer.audiences" must be a list of client ids/],
    ['bearer.audiences with an empty name', { directory: new MemoryDirectory(), webappUrl: 'https://x', env, bearer: { audiences: [''] } }, /"bearer.audiences" must be a list/],
    ['bearer.cacheMax zero', { directory: new MemoryDirectory(), webappUrl: 'https://x', env, bearer: { cacheMax: 0 } }, /"bearer.cacheMax" must be a positive whole number/]
  ]
  for (const [name, options, expected] of rows) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(clearmlKeycloak, options as ClearmlKeycloakOptions) }, expected as Error, name)
  }
})

t.test('without env, process.env is read', async (t) => {
  const app = Fastify()
  await t.rejects(async () => { await app.register(clearmlKeycloak, { directory: new MemoryDirectory(), webappUrl: 'https://x.example' }) }, { name: 'ConfigError', message: /client_id is required/ })
})

t.test('decorators, redacted config, and unknown-key warnings in the log', async (t) => {
  const lines: string[] = []
  const app = Fastify({ logger: { stream: { write: (l: string) => { lines.push(l) } } } })
  await app.register(clearmlKeycloak, { directory: new MemoryDirectory(), webappUrl: 'https://clearml.example.com', env: { ...env, [`${KC}colour`]: 'blue' } })
  await app.ready()
  t.match(lines.join(''), `${KC}colour is not a known Keycloak setting`)
  t.equal(app.keycloak.config.clientId, 'clearml')
  t.notMatch(JSON.stringify(app.keycloak.config), 'token-secret')
  t.strictSame(await app.keycloak.supportedModes(), {
    authenticated: false,
    sso: { keycloak: '/login/keycloak' },
    sso_providers: [{ name: 'keycloak', display_name: 'Keycloak', url: '/login/keycloak' }],
    basic: { enabled: false, guest: { enabled: false } },
    server_errors: { missed_es_upgrade: false, es_connection_error: false }
  })
  t.match(app.keycloak.mapClaims({ sub: 'x', preferred_username: 'u' }), { subject: 'x', name: 'u' })
  await app.close()
})

t.test('uses the host\'s @fastify/cookie when already registered', async (t) => {
  const app = Fastify()
  await app.register(fastifyCookie)
  await app.register(clearmlKeycloak, { directory: new MemoryDirectory(), webappUrl: 'https://x.example', env })
  await t.resolves(async () => { await app.ready() })
  await app.close()
})

t.test('prefix: every route moves under it, and supported_modes points there', async (t) => {
  const app = await build({ prefix: '/api/' })
  const modes = await app.inject({ method: 'POST', url: '/api/login.supported_modes', payload: {} })
  t.equal(modes.statusCode, 200)
  t.equal(modes.json().data.sso.keycloak, '/api/login/keycloak')
  t.equal((await app.inject({ method: 'POST', url: '/login.supported_modes' })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: '/api/logout' })).statusCode, 302)
  await app.close()
})

t.test('routes.supportedModes=false leaves login.supported_modes to the host', async (t) => {
  const app = await build({ routes: { supportedModes: false } })
  app.post('/login.supported_modes', async (request) => ({ data: { mine: true, ...await app.keycloak.supportedModes(request) } }))
  const modes = await app.inject({ method: 'POST', url: '/login.supported_modes' })
  t.match(modes.json(), { data: { mine: true, authenticated: false, sso: { keycloak: '/login/keycloak' } } })
  await app.close()
})

t.test('the login start: Secure transaction cookie on an https web app, redirect parameters', async (t) => {
  const app = await build({ config: { authorizeUrl: 'https://kc.example.com/realms/clearml/protocol/openid-connect/auth' } })
  const answer = await app.inject({ method: 'GET', url: '/login/keycloak?redirect=//evil.example/x' })
  t.equal(answer.statusCode, 302)
  const location = new URL(answer.headers.location as string)
  t.equal(location.origin + location.pathname, 'https://kc.example.com/realms/clearml/protocol/openid-connect/auth')
  t.equal(location.searchParams.get('redirect_uri'), 'https://clearml.example.com/callback_keycloak')
  const cookie = answer.headers['set-cookie'] as string
  t.match(cookie, /^clearml_kc_tx_0=/, 'the first free slot')
  t.match(cookie, /Max-Age=600/)
  t.match(cookie, /HttpOnly/)
  t.match(cookie, /Secure/)
  t.match(cookie, /SameSite=Lax/)
  const viaGet = await app.inject({ method: 'GET', url: '/login.sso_authorize?provider=keycloak&callback_url=/callback_keycloak' })
  t.equal(new URL(viaGet.json().data.redirect_url).searchParams.get('redirect_uri'), 'https://clearml.example.com/callback_keycloak', 'a relative callback_url on the web app is accepted')
  await app.close()
})

t.test('authenticate: cookie or Bearer, 401 envelope otherwise, revoked sessions refused', async (t) => {
  const revocations = new MemoryRevocationStore()
  const stack = await startStack({ protectedRoute: true, plugin: { revocations } })
  t.teardown(stack.close)
  const { agent } = await stack.login('carol')
  const token = agent.cookies(stack.appUrl).get('clearml_token_basic')!
  const get = async (headers: Record<string, string>) => await stack.app.inject({ method: 'GET', url: '/me', headers })
  t.equal((await get({ cookie: `clearml_token_basic=${token}` })).statusCode, 200)
  t.equal((await get({ authorization: `bearer ${token}` })).statusCode, 200, 'scheme is case-insensitive')
  for (const [name, headers] of Object.entries({
    'no token': {},
    'empty bearer': { authorization: 'Bearer ' },
    'Basic scheme': { authorization: `Basic ${token}` },
    garbage: { authorization: 'Bearer not.a.jwt' },
    'signed with another secret': { authorization: 'Bearer eyJhbGciOiJIUzI1NiJ9.eyJhdXRoX3R5cGUiOiJCZWFyZXIifQ.c2lnbmF0dXJl' }
  })) {
    const answer = await get(headers as Record<string, string>)
    t.equal(answer.statusCode, 401, name)
    t.match(answer.json(), { meta: { result_code: 401, result_msg: 'invalid_token' }, data: { error: 'invalid_token' } }, name)
  }
  const direct = async (headers: Record<string, string>) => await stack.app.inject({ method: 'GET', url: '/me-direct', headers })
  t.equal((await direct({})).statusCode, 401, 'awaited from a hook of the host: refusal')
  t.equal((await direct({ cookie: `clearml_token_basic=${token}` })).json().user, decodeJwt(token).identity && (decodeJwt(token).identity as { user: string }).user, 'awaited: accepted')
  await revocations.revoke(decodeJwt(token).session_id as string, Math.floor(Date.now() / 1000) + 60)
  t.equal((await get({ cookie: `clearml_token_basic=${token}` })).statusCode, 401, 'revoked by another instance sharing the store')
})

t.test('issueToken: the host signs the session; authenticate then needs the host\'s own check', async (t) => {
  const issued: unknown[] = []
  const stack = await startStack({
    env: { CLEARML__secure__auth__token_secret: undefined },
    plugin: {
      issueToken: async (user, context) => {
        issued.push({ user: user.id, company: context.company.id, subject: context.identity.subject, sid: typeof context.sid })
        return `host-token-for-${user.id}`
      }
    },
    protectedRoute: true
  })
  t.teardown(stack.close)
  const { agent } = await stack.login('bob')
  const [user] = stack.directory.listUsers()
  t.equal(agent.cookies(stack.appUrl).get('clearml_token_basic'), `host-token-for-${user.id}`)
  t.match(issued, [{ user: user.id, company: 'c-acme', subject: stack.idp.users.find((u) => u.username === 'bob')!.sub, sid: 'string' }])
  t.equal((await agent.request(`${stack.appUrl}/me`)).status, 401, 'no token secret: the plugin cannot verify host tokens')
})

t.test('issueToken failing: directory_error, no session cookie', async (t) => {
  const stack = await startStack({ plugin: { issueToken: async () => { throw new Error('session store down') } } })
  t.teardown(stack.close)
  const { final } = await stack.login('bob')
  t.equal(final.url, `${stack.appUrl}/login?sso_error=directory_error`)
})

t.test('logout: GET login.logout, and an ID token cookie that does not open still ends the Keycloak session', async (t) => {
  const stack = await startStack({ env: { [`${KC}idp_logout`]: 'true' } })
  t.teardown(stack.close)
  const { agent } = await stack.login('alice')
  const valid = agent.cookies(stack.appUrl).get('clearml_kc_idt')!
  agent.setCookie(stack.appUrl, 'clearml_kc_idt', 'tampered.value.that.does.not')
  const answer = await agent.request(`${stack.appUrl}/login.logout?redirect_url=/bye`)
  t.equal(answer.status, 200)
  const endSession = new URL(JSON.parse(answer.body).data.redirect_url)
  t.equal(endSession.searchParams.get('id_token_hint'), null, 'no hint: the token cannot be had')
  t.equal(endSession.searchParams.get('client_id'), 'clearml', 'Keycloak\'s confirmation page, with the client named')
  t.match(stack.logs.join(''), /"code":"idp_logout_without_id_token"/, 'and the log says why Keycloak will ask')
  t.ok(answer.setCookies.some((c) => /^clearml_token_basic=;/.test(c)))
  agent.setCookie(stack.appUrl, 'clearml_kc_idt', valid)
  const viaGet = JSON.parse((await agent.request(`${stack.appUrl}/login.logout?redirect_url=/bye`)).body)
  t.equal(new URL(viaGet.data.redirect_url).searchParams.get('post_logout_redirect_uri'), `${stack.appUrl}/bye`, 'GET with a query string, as ClearML accepts')
})

t.test('verifyAccessToken and login decorators with real Keycloak-shaped tokens', async (t) => {
  const stack = await startStack({ env: { [`${KC}groups__enabled`]: 'true' } })
  t.teardown(stack.close)
  const tokens = await obtainTokens(stack, 'bob')
  const claims = await stack.app.keycloak.verifyAccessToken(tokens.access_token)
  t.match(claims, { typ: 'Bearer', azp: 'clearml', aud: 'account', preferred_username: 'bob', iss: stack.idp.issuer })
  const result = await stack.app.keycloak.login(claims)
  t.match(result, { created: true, role: 'user', groups: { added: ['ml-team', 'data-science'] } })
  const again = await stack.app.keycloak.login(stack.app.keycloak.mapClaims(claims))
  t.match(again, { created: false, user: { id: result.user.id } }, 'an Identity is accepted as well')
  await t.rejects(stack.app.keycloak.verifyAccessToken(tokens.id_token), { code: 'invalid_token', message: /typ is not Bearer/ }, 'an ID token is not an access token')
  await t.rejects(stack.app.keycloak.verifyAccessToken('garbage'), { code: 'invalid_token' })
  t.equal(TOKEN_SECRET.length > 0, true)
})
