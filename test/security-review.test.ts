/**
 * The findings of the security review (issue #13, docs/security.md "Review findings"), each shown
 * through the real flow against the Keycloak-like provider over HTTP: the attack as the reviewer ran
 * it, refused now, and the legitimate use beside it still working.
 */
import t from 'tap'
import Fastify from 'fastify'
import { decodeJwt } from 'jose'
import clearmlKeycloak, { MemoryDirectory } from '../index.js'
import { KC, KC_SECURE, startStack, USERS, type Stack } from './helpers/stack.js'
import { UserAgent } from './helpers/user-agent.js'

const isCallback = (stack: Stack) => (url: string) => url.startsWith(`${stack.appUrl}/callback_keycloak`)
const cookieHeaderBytes = (agent: UserAgent, url: string): number =>
  [...agent.cookies(url)].map(([name, value]) => `${name}=${value}`).join('; ').length

t.test('1. the whitelist admits only emails Keycloak verified', async (t) => {
  // Eve typed bob@acme.com into her Keycloak profile; the whitelist admits the domain acme.com.
  const stack = await startStack()
  t.teardown(stack.close)
  const { final } = await stack.login('eve')
  t.equal(final.url, `${stack.appUrl}/login?sso_error=email_not_verified`, 'refused with email_not_verified')
  t.strictSame(stack.directory.listUsers(), [], 'nobody created')
  t.match(stack.logs.join(''), /"code":"email_not_verified"/)

  const trusting = await startStack({ env: { [`${KC}trust_unverified_email`]: 'true' } })
  t.teardown(trusting.close)
  const admitted = await trusting.login('eve')
  t.equal(admitted.final.url, `${trusting.appUrl}/`, 'with trust_unverified_email=true the realm\'s word is taken')
  t.match(trusting.directory.listUsers(), [{ email: 'bob@acme.com', role: 'user' }])
})

t.test('2. no sequence of login starts locks a browser out, and the newest login completes', async (t) => {
  const stack = await startStack({ protectedRoute: true })
  t.teardown(stack.close)
  const { agent } = await stack.login('alice')
  t.equal((await agent.request(`${stack.appUrl}/me`)).status, 200, 'logged in')

  // The longest inputs the routes accept: a same-origin callback_url with the longest state.
  const state = 's'.repeat(512)
  let callbackLength = 2048
  const authorize = async (length: number) => await agent.request(`${stack.appUrl}/login.sso_authorize`, {
    json: { provider: 'keycloak', state, callback_url: `${stack.appUrl}/callback_keycloak?${'x'.repeat(length)}` }
  })
  let answer = await authorize(callbackLength)
  t.equal(answer.status, 400, 'a callback_url too long for the login cookie is refused')
  t.match(JSON.parse(answer.body), { meta: { result_msg: 'bad_request' } })
  while (answer.status !== 200) answer = await authorize(callbackLength -= 16)
  t.ok(callbackLength > 256, `the longest accepted callback_url query: ${callbackLength} characters`)
  for (let i = 0; i < 49; i++) {
    const start = i % 2 === 0
      ? await authorize(callbackLength)
      : await agent.request(`${stack.appUrl}/login/keycloak?redirect=/${'p'.repeat(1000)}`)
    t.ok(start.status === 200 || start.status === 302, `login start ${i + 2} answered`)
    for (const cookie of start.setCookies) t.ok(cookie.split(';')[0].length <= 2048, 'each transaction cookie stays under its bound')
  }
  const transactions = [...agent.cookies(stack.appUrl).keys()].filter((name) => name.startsWith('clearml_kc_tx_'))
  t.equal(transactions.length, 3, 'at most three logins in progress are kept')
  t.ok(cookieHeaderBytes(agent, stack.appUrl) < 10_000, `the Cookie header stays small (${cookieHeaderBytes(agent, stack.appUrl)} bytes)`)
  t.equal((await agent.request(`${stack.appUrl}/me`)).status, 200, 'the logged-in browser is still served (no 431)')

  // Alice's Keycloak session answers at once, as Keycloak does for a browser that is logged in there.
  const done = await agent.navigate(`${stack.appUrl}/login/keycloak?redirect=/${'q'.repeat(1000)}`, { stopAt: (u) => u.startsWith(`${stack.appUrl}/`) && !isCallback(stack)(u) })
  t.equal(done.url, `${stack.appUrl}/${'q'.repeat(1000)}`, 'the newest login completes and lands on its long return path')
  t.equal((await agent.request(`${stack.appUrl}/me`)).status, 200)
})

t.test('2. two tabs still log in side by side', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const agent = new UserAgent()
  const atKeycloak = (u: string) => u.startsWith(stack.idp.origin)
  const atWebapp = (u: string) => u.startsWith(`${stack.appUrl}/`) && !isCallback(stack)(u)
  // Both tabs are sent to Keycloak before either comes back.
  const first = await agent.navigate(`${stack.appUrl}/login/keycloak?redirect=/first`, { stopAt: atKeycloak })
  const second = await agent.navigate(`${stack.appUrl}/login/keycloak?redirect=/second`, { stopAt: atKeycloak })
  t.equal((await agent.submitLogin(await agent.navigate(second.url), 'bob', 'bob-pw', { stopAt: atWebapp })).url, `${stack.appUrl}/second`)
  // The first tab comes back through Keycloak's session, with its own state.
  t.equal((await agent.navigate(first.url, { stopAt: atWebapp })).url, `${stack.appUrl}/first`, 'the older tab\'s login is not broken by the newer one')
})

// A user in 60 groups: Keycloak's ID token lists every group path, far past what a cookie holds.
const crowded = { username: 'erin', password: 'erin-pw', email: 'erin@acme.com', emailVerified: true, givenName: 'Erin', groups: ['/ml-team', ...Array.from({ length: 59 }, (_, i) => `/projects/research-team-${i}`)] }

t.test('3. idp_logout survives an ID token too large for a cookie', async (t) => {
  const stack = await startStack({ env: { [`${KC}idp_logout`]: 'true' }, idp: { users: [...USERS, crowded] } })
  t.teardown(stack.close)
  const agent = new UserAgent()
  const login = await agent.submitLogin(await agent.navigate(`${stack.appUrl}/login/keycloak`), 'erin', 'erin-pw')
  t.equal(login.url, `${stack.appUrl}/`)
  const kept = agent.cookies(stack.appUrl).get('clearml_kc_idt')!
  t.ok(kept.length < 100, `the cookie holds a reference (${kept.length} bytes), the token is kept server-side`)

  const logout = JSON.parse((await agent.request(`${stack.appUrl}/login.logout`, { json: {} })).body)
  const hint = new URL(logout.data.redirect_url).searchParams.get('id_token_hint')!
  t.ok(hint.length > 3072, `the whole ID token is back for Keycloak (${hint.length} bytes; sealed it would pass 4 KB)`)
  t.match(decodeJwt(hint), { typ: 'ID', preferred_username: 'erin', groups: crowded.groups })
  const done = await agent.confirmIdpLogout(logout.data.redirect_url, { stopAt: (u) => u.startsWith(stack.appUrl) })
  t.equal(done.url, `${stack.appUrl}/login`)
  t.match((await agent.navigate(`${stack.appUrl}/login/keycloak`)).body, /<form/, 'Keycloak asks for the password again')

  // Without the token (taken already, or its copy lost), logout still reaches Keycloak: it asks to confirm.
  const again = await stack.login('erin')
  const reference = again.agent.cookies(stack.appUrl).get('clearml_kc_idt')!
  const replayed = new UserAgent()
  replayed.setCookie(stack.appUrl, 'clearml_kc_idt', reference)
  await again.agent.request(`${stack.appUrl}/login.logout`, { json: {} })
  const lost = JSON.parse((await replayed.request(`${stack.appUrl}/login.logout`, { json: {} })).body)
  const confirm = new URL(lost.data.redirect_url)
  t.equal(confirm.searchParams.get('id_token_hint'), null, 'the reference was used once')
  t.equal(confirm.searchParams.get('client_id'), 'clearml', 'Keycloak\'s confirmation page, never a silent skip')
})

t.test('4. a cross-site navigation never logs anyone out', async (t) => {
  const stack = await startStack({ env: { [`${KC}idp_logout`]: 'true' }, protectedRoute: true })
  t.teardown(stack.close)
  const { agent } = await stack.login('alice')
  const me = async () => (await agent.request(`${stack.appUrl}/me`)).status

  const fromEvil = await agent.request(`${stack.appUrl}/logout`, { headers: { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate' } })
  t.equal(fromEvil.status, 302)
  t.equal(fromEvil.location, `${stack.appUrl}/`, 'a link on another site lands on the web app')
  t.strictSame(fromEvil.setCookies, [], 'no cookie cleared')
  t.equal(await me(), 200, 'still logged in')
  const jsonGet = await agent.request(`${stack.appUrl}/login.logout`, { headers: { 'sec-fetch-site': 'cross-site' } })
  t.equal(jsonGet.status, 400)
  t.match(JSON.parse(jsonGet.body), { meta: { result_msg: 'bad_request' } })
  const formPost = await agent.request(`${stack.appUrl}/login.logout`, { form: { redirect_url: '/' }, headers: { origin: 'https://evil.example' } })
  t.equal(formPost.status, 400, 'a form posted from another origin (no Sec-Fetch-Site) is refused too')
  t.equal(await me(), 200, 'still logged in')
  t.match(stack.logs.join(''), /cross-site logout refused/, 'the refusal is in the log')

  const sameSite = await agent.request(`${stack.appUrl}/logout`, { headers: { 'sec-fetch-site': 'same-origin', 'sec-fetch-mode': 'navigate' } })
  t.equal(new URL(sameSite.location!).pathname, '/realms/clearml/protocol/openid-connect/logout', 'the web app\'s own logout link works, on to Keycloak')
  t.equal(await me(), 401, 'logged out')
  const typed = await stack.login('alice')
  const byHand = await typed.agent.request(`${stack.appUrl}/logout`, { headers: { 'sec-fetch-site': 'none' } })
  t.equal(new URL(byHand.location!).pathname, '/realms/clearml/protocol/openid-connect/logout', 'a URL typed by the user logs out')
})

t.test('5. admin by the exact group, never by the last segment of a path', async (t) => {
  const contractor = { username: 'casey', password: 'casey-pw', email: 'casey@acme.com', emailVerified: true, givenName: 'Casey', groups: ['/contractors/kc-admins'] }
  const stack = await startStack({
    env: { [`${KC}groups__enabled`]: 'true', [`${KC}groups__admins`]: '["kc-admins"]' },
    idp: { users: [...USERS, contractor] }
  })
  t.teardown(stack.close)
  await stack.login('casey')
  await stack.login('carol')
  const roles = Object.fromEntries(stack.directory.listUsers().map((user) => [user.email, user.role]))
  t.equal(roles['casey@acme.com'], 'user', 'a member of /contractors/kc-admins is not admin')
  t.equal(roles['carol@acme.com'], 'admin', 'a member of /kc-admins is')
})

t.test('6. the return path after login never leaves the web app', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  for (const redirect of ['/..//evil.com', '/.//evil.com', '/%2e//evil.com']) {
    const { final } = await stack.login('alice', { start: `/login/keycloak?redirect=${encodeURIComponent(redirect)}` })
    t.equal(final.url, `${stack.appUrl}/`, `${redirect} lands on /`)
  }
})

t.test('7. a short token_secret is a warning at register time, its value never shown', async (t) => {
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(line) } } } })
  t.teardown(async () => { await app.close() })
  await app.register(clearmlKeycloak, {
    directory: new MemoryDirectory(),
    webappUrl: 'https://clearml.example.com',
    env: { [`${KC}base_url`]: 'https://kc.example.com/realms/clearml', [`${KC_SECURE}client_id`]: 'clearml', [`${KC_SECURE}client_secret`]: 'secret', CLEARML__secure__auth__token_secret: 'hunter2' }
  })
  await app.ready()
  const warning = lines.map((line) => JSON.parse(line)).find((line) => /token_secret/.test(line.msg))
  t.match(warning, { level: 40, msg: /CLEARML__secure__auth__token_secret is 7 bytes; use at least 32/ })
  t.notMatch(lines.join(''), 'hunter2', 'the secret itself is not logged')

  const strong = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(line) } } } })
  t.teardown(async () => { await strong.close() })
  lines.length = 0
  await strong.register(clearmlKeycloak, {
    directory: new MemoryDirectory(),
    webappUrl: 'https://clearml.example.com',
    env: { [`${KC}base_url`]: 'https://kc.example.com/realms/clearml', [`${KC_SECURE}client_id`]: 'clearml', [`${KC_SECURE}client_secret`]: 'secret', CLEARML__secure__auth__token_secret: 'x'.repeat(32) }
  })
  await strong.ready()
  t.strictSame(lines, [], 'a 32-byte secret loads silently')
})

t.test('3. a host\'s own revocation store: without the optional methods, or with failing ones', async (t) => {
  const revoked = new Set<string>()
  const minimal = { revoke: async (id: string) => { revoked.add(id) }, isRevoked: (id: string) => revoked.has(id) }
  const stack = await startStack({ env: { [`${KC}idp_logout`]: 'true' }, idp: { users: [...USERS, crowded] }, plugin: { revocations: minimal } })
  t.teardown(stack.close)
  const agent = new UserAgent()
  const stopAtCallback = isCallback(stack)
  const stopped = await agent.submitLogin(await agent.navigate(`${stack.appUrl}/login/keycloak`), 'erin', 'erin-pw', { stopAt: stopAtCallback })
  const slot = [...agent.cookies(stack.appUrl)].find(([name]) => name.startsWith('clearml_kc_tx_'))!
  t.equal((await agent.request(stopped.url)).location, `${stack.appUrl}/`, 'logged in: the transaction was claimed in this process')
  const replayer = new UserAgent()
  replayer.setCookie(stack.appUrl, slot[0], slot[1])
  t.equal((await replayer.request(stopped.url)).location, `${stack.appUrl}/login?sso_error=invalid_state`, 'and a replay is refused')
  const logout = JSON.parse((await agent.request(`${stack.appUrl}/login.logout`, { json: {} })).body)
  t.ok(new URL(logout.data.redirect_url).searchParams.get('id_token_hint'), 'the large ID token was kept in this process')

  const failing = {
    revoke: async () => {},
    isRevoked: () => false,
    setValue: async () => { throw new Error('store down') },
    takeValue: async () => { throw new Error('store down') }
  }
  const down = await startStack({ env: { [`${KC}idp_logout`]: 'true' }, idp: { users: [...USERS, crowded] }, plugin: { revocations: failing } })
  t.teardown(down.close)
  const { agent: erin, final } = await down.login('erin')
  t.equal(final.url, `${down.appUrl}/`, 'a store that cannot keep the ID token does not cost the login')
  t.equal(erin.cookies(down.appUrl).get('clearml_kc_idt'), undefined)
  t.match(down.logs.join(''), /could not keep the ID token/)
  const confirm = new URL(JSON.parse((await erin.request(`${down.appUrl}/login.logout`, { json: {} })).body).data.redirect_url)
  t.equal(confirm.searchParams.get('client_id'), 'clearml', 'logout still goes to Keycloak, which asks to confirm')
  erin.setCookie(down.appUrl, 'clearml_kc_idt', 'ref.abcdefghijklmnopqrstuv')
  const unreadable = new URL(JSON.parse((await erin.request(`${down.appUrl}/login.logout`, { json: {} })).body).data.redirect_url)
  t.equal(unreadable.searchParams.get('id_token_hint'), null, 'a store that cannot answer at logout: the same')
})
