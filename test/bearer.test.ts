/**
 * Keycloak access tokens as bearer credentials (SPEC section 10), and key rotation that tokens from
 * unauthenticated channels cannot hold off: real tokens from the Keycloak-like provider over HTTP,
 * and, for what a real Keycloak never signs, the scriptable hostile provider.
 */
import t, { type Test } from 'tap'
import { decodeJwt, SignJWT } from 'jose'
import { MemoryDirectory } from '../index.js'
import { KC, seedAcme, startStack, type Stack } from './helpers/stack.js'
import { obtainTokens } from './helpers/tokens.js'
import { harness, login, type Harness } from './helpers/hostile-harness.js'
import { newKey } from './helpers/hostile-idp.js'
import { KeycloakBearerTokens } from '../lib/keycloak/bearer.js'
import { recordUnhandledRejections } from './helpers/unhandled.js'

const bearerStack = async (t: Test, bearer: Record<string, unknown> = {}, env: Record<string, string> = {}): Promise<Stack> => {
  const stack = await startStack({ protectedRoute: true, env, plugin: { bearer: { keycloak: true, ...bearer } } })
  t.teardown(stack.close)
  return stack
}

const me = async (stack: Stack, headers: Record<string, string>): Promise<{ status: number, body: Record<string, any> }> => {
  const answer = await fetch(`${stack.appUrl}/me`, { headers })
  return { status: answer.status, body: await answer.json() as Record<string, any> }
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

t.test('a known user\'s Keycloak access token is accepted, and says so; a ClearML session keeps saying session', async (t) => {
  const stack = await bearerStack(t)
  const { agent } = await stack.login('bob')
  const session = agent.cookies(stack.appUrl).get('clearml_token_basic')!
  const [user] = stack.directory.listUsers()
  const { access_token: accessToken } = await obtainTokens(stack, 'bob')

  const viaKeycloak = await me(stack, bearer(accessToken))
  t.equal(viaKeycloak.status, 200)
  t.match(viaKeycloak.body, { credential: 'keycloak', user: user.id, company: 'c-acme', company_name: 'Acme', user_name: 'Bob Builder', role: 'user', exp: decodeJwt(accessToken).exp })
  t.equal(viaKeycloak.body.session_id, decodeJwt(accessToken).sid, 'session_id is the token\'s Keycloak session')
  t.match((await me(stack, bearer(accessToken))).body, { credential: 'keycloak' }, 'again, from the cache')
  t.match((await me(stack, bearer(session))).body, { credential: 'session', user: user.id }, 'the ClearML session token as a bearer')
  t.match((await me(stack, { cookie: `clearml_token_basic=${session}` })).body, { credential: 'session' }, 'and as the cookie')
  t.equal(stack.directory.listUsers().length, 1, 'nobody created')
})

t.test('refused: unknown user, a Keycloak token in the session cookie, an ID token, bearer off', async (t) => {
  const stack = await bearerStack(t)
  const tokens = await obtainTokens(stack, 'alice')
  const unknown = await me(stack, bearer(tokens.access_token))
  t.equal(unknown.status, 401, 'alice never logged in to ClearML and provision is off')
  t.match(unknown.body, { meta: { result_code: 401, result_msg: 'invalid_token' }, data: { error: 'invalid_token' } })
  t.match(stack.logs.join(''), /no ClearML user is linked to Keycloak subject/, 'the log says what to do')
  t.strictSame(stack.directory.listUsers(), [], 'nothing created')

  await stack.login('alice')
  t.equal((await me(stack, bearer(tokens.access_token))).status, 200, 'after her first browser login the same token is accepted')
  t.equal((await me(stack, { cookie: `clearml_token_basic=${tokens.access_token}` })).status, 401, 'a Keycloak token in the session cookie is refused')
  t.equal((await me(stack, bearer(tokens.id_token))).status, 401, 'an ID token is not an access token')
  t.match(stack.logs.join(''), /typ is not Bearer/)

  const off = await startStack({ protectedRoute: true })
  t.teardown(off.close)
  await off.login('alice')
  t.equal((await me(off, bearer((await obtainTokens(off, 'alice')).access_token))).status, 401, 'without bearer.keycloak only ClearML sessions are accepted')
})

t.test('envelopes of refusals are each their own', async (t) => {
  const stack = await bearerStack(t)
  const first = await me(stack, {})
  const second = await me(stack, { authorization: 'Bearer     ' })
  t.equal(first.status, 401)
  t.equal(second.status, 401, 'an empty bearer is no credential')
  t.not(first.body.meta.id, second.body.meta.id, 'every 401 has its own meta.id')
  t.not(first.body.meta.trx, second.body.meta.trx)
})

t.test('a token of a Keycloak session logged out through the back channel is refused, even once cached', async (t) => {
  const stack = await bearerStack(t, {}, { [`${KC}idp_logout`]: 'true' })
  const { agent } = await stack.login('carol')
  const { access_token: accessToken, id_token: idToken } = await obtainTokens(stack, 'carol', { agent })
  t.equal((await me(stack, bearer(accessToken))).status, 200, 'accepted and cached')

  // Carol logs out at Keycloak itself (another application's logout): Keycloak calls the back channel.
  const endSession = new URL(`${stack.idp.issuer}/protocol/openid-connect/logout`)
  endSession.search = new URLSearchParams({ id_token_hint: idToken, post_logout_redirect_uri: `${stack.appUrl}/login` }).toString()
  await agent.confirmIdpLogout(endSession.href, { stopAt: (u) => u.startsWith(stack.appUrl) })
  t.match(stack.logs.join(''), 'Keycloak back-channel logout')
  t.equal((await me(stack, bearer(accessToken))).status, 401, 'the same token, refused: its Keycloak session ended')
})

t.test('a logout of ClearML with idp_logout ends the Keycloak session\'s tokens at once, back channel or not', async (t) => {
  const stack = await bearerStack(t, {}, { [`${KC}idp_logout`]: 'true' })
  const { agent } = await stack.login('carol')
  const { access_token: accessToken } = await obtainTokens(stack, 'carol', { agent })
  t.equal((await me(stack, bearer(accessToken))).status, 200)
  const logout = JSON.parse((await agent.request(`${stack.appUrl}/login.logout`, { json: {} })).body)
  t.equal((await me(stack, bearer(accessToken))).status, 401, 'refused before the browser even reaches Keycloak\'s end-session page')
  t.match(logout, { data: { redirect_url: /\/protocol\/openid-connect\/logout\?/ } })
})

t.test('provision: the login rules run once per new token, concurrent first requests make one user', async (t) => {
  const stack = await bearerStack(t, { provision: true }, { [`${KC}groups__enabled`]: 'true' })
  const { access_token: accessToken } = await obtainTokens(stack, 'bob')
  const answers = await Promise.all(Array.from({ length: 20 }, async () => await me(stack, bearer(accessToken))))
  t.ok(answers.every((answer) => answer.status === 200 && answer.body.credential === 'keycloak'), '20 concurrent first requests accepted')
  const users = stack.directory.listUsers()
  t.equal(users.length, 1, 'one user created')
  t.strictSame(stack.directory.groupsOf(users[0].id), ['data-science', 'ml-team'], 'with the groups of the login rules')
  t.equal(stack.logs.join('').split('"Keycloak login"').length - 1, 0, 'no browser login was involved')

  const refused = await me(stack, bearer((await obtainTokens(stack, 'mallory')).access_token))
  t.equal(refused.status, 403, 'a policy refusal answers 403 with its code')
  t.match(refused.body, { meta: { result_msg: 'not_whitelisted' }, data: { error: 'not_whitelisted' } })
  t.equal(stack.directory.listUsers().length, 1, 'and creates nobody')
})

// What a real Keycloak never signs: the scriptable provider, with the token's claims set per case.
const access = (h: Harness, claims: Record<string, unknown> = {}): Promise<string> => h.idp.sign({ ...h.idp.accessClaims(), ...claims })

async function withKnownUser (t: Test, bearerOptions: Record<string, unknown> = {}): Promise<Harness> {
  const h = await harness(t, {}, undefined, { bearer: { keycloak: true, ...bearerOptions } })
  t.equal((await login(h)).location, '/', 'Ann logged in once through the browser')
  return h
}

const status = async (h: Harness, token: string): Promise<number> =>
  (await h.app.inject({ method: 'GET', url: '/me', headers: { authorization: `Bearer ${token}` } })).statusCode

t.test('refused: every token a check must stop', async (t) => {
  const h = await withKnownUser(t)
  const now = Math.floor(Date.now() / 1000)
  t.equal(await status(h, await access(h)), 200, 'the well-formed token of a known user')
  const foreign = await newKey('not-published')
  const cases: Array<[string, Promise<string> | string]> = [
    ['expired', access(h, { iat: now - 600, exp: now - 300 })],
    ['iat in the future', access(h, { iat: now + 3600, exp: now + 7200 })],
    ['nbf in the future', access(h, { nbf: now + 3600 })],
    ['azp of another client', access(h, { azp: 'another-client' })],
    ['wrong issuer', access(h, { iss: 'https://evil.example/realms/test' })],
    ['signed by a key the realm does not publish', h.idp.sign(h.idp.accessClaims(), { key: foreign })],
    ['typ ID (an ID token)', access(h, { typ: 'ID', aud: 'clearml' })],
    ['typ Refresh (a refresh token)', access(h, { typ: 'Refresh' })],
    ['alg none', `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url')}.${Buffer.from(JSON.stringify(h.idp.accessClaims())).toString('base64url')}.`],
    ['HS256 with the client secret', new SignJWT(h.idp.accessClaims()).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode('secret'))],
    ['HS256 with the ClearML token secret, Keycloak-shaped', new SignJWT(h.idp.accessClaims()).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode('token-secret'))],
    ['not a JWT', 'hello']
  ]
  for (const [name, token] of cases) t.equal(await status(h, await token), 401, name)
  t.equal(h.directory.listUsers().length, 1, 'nothing created by any of them')
})

t.test('bearer.audiences: another client\'s token is accepted when its aud names an allowed audience', async (t) => {
  const h = await withKnownUser(t, { audiences: ['clearml-api'] })
  t.equal(await status(h, await access(h, { azp: 'clearml-cli', aud: ['clearml-api', 'account'] })), 200, 'a CLI client\'s token for the ClearML API')
  t.equal(await status(h, await access(h, { azp: 'clearml-cli', aud: 'account' })), 401, 'the same client without the audience')
  t.equal(await status(h, await access(h, { azp: 'clearml-cli', aud: undefined })), 401, 'or without any aud')
  const strict = await withKnownUser(t)
  t.equal(await status(strict, await access(strict, { azp: 'clearml-cli', aud: 'clearml-api' })), 401, 'no audiences configured: only this client')
})

t.test('key rotation: forged tokens on unauthenticated channels cannot hold off the reload a login needs', async (t) => {
  const h = await withKnownUser(t)
  const certs = (): number => h.idp.hits.get('/realms/test/protocol/openid-connect/certs') ?? 0
  const fetchesBefore = certs()
  const forger = await newKey()
  const forged = async (): Promise<string> => await h.idp.sign({
    iss: h.idp.issuer,
    aud: 'clearml',
    iat: Math.floor(Date.now() / 1000),
    jti: String(Math.random()),
    sid: 'kc-session-1',
    events: { 'http://schemas.openid.net/event/backchannel-logout': {} }
  }, { key: { ...forger, kid: `made-up-${Math.random()}` }, header: { typ: 'logout+jwt' } })
  const answers = await Promise.all(Array.from({ length: 50 }, async () =>
    (await h.app.inject({ method: 'POST', url: '/logout/backchannel', payload: `logout_token=${await forged()}`, headers: { 'content-type': 'application/x-www-form-urlencoded' } })).statusCode))
  t.ok(answers.every((code) => code === 400), '50 forged logout tokens under made-up kids: 400 each')
  t.ok(certs() - fetchesBefore <= 1, `they cost at most one key-set fetch (${certs() - fetchesBefore})`)
  const bearerFlood = await Promise.all(Array.from({ length: 50 }, async () => await status(h, await h.idp.sign(h.idp.accessClaims(), { key: { ...forger, kid: `made-up-${Math.random()}` } }))))
  t.ok(bearerFlood.every((code) => code === 401), 'forged bearer tokens under made-up kids: 401 each')
  t.ok(certs() - fetchesBefore <= 1, 'and no more fetches: the cooldown is shared by the unauthenticated channels')

  h.idp.keys.unshift(await newKey('rotated'))
  const next = await login(h)
  t.equal(next.location, '/', 'Keycloak rotates its keys: the next login succeeds at once')
  t.equal(certs() - fetchesBefore, 2, 'with the one reload it needed')
  t.equal(await status(h, await access(h)), 200, 'and bearer tokens under the new key verify with the reloaded set')
})

t.test('security review #22, 4: forged tokens against a failing key-set endpoint cost a couple of requests; a login still loads the set at once', async (t) => {
  // No login yet: the key set has never been loaded, and the certs endpoint fails.
  const h = await harness(t, {}, undefined, { bearer: { keycloak: true } })
  const certs = (): number => h.idp.hits.get('/realms/test/protocol/openid-connect/certs') ?? 0
  h.idp.override.certs = () => ({ status: 503, body: { error: 'down' } })
  const forger = await newKey()
  const forgedKey = (): typeof forger => ({ ...forger, kid: `made-up-${Math.random()}` })
  const logoutClaims = () => ({ iss: h.idp.issuer, aud: 'clearml', iat: Math.floor(Date.now() / 1000), jti: String(Math.random()), sid: 'kc-session-1', events: { 'http://schemas.openid.net/event/backchannel-logout': {} } })
  const statuses = { bearer: new Set<number>(), backchannel: new Set<number>() }
  // One after the other: concurrent ones would share one fetch anyway; sequential ones each found no set.
  for (let i = 0; i < 100; i++) {
    statuses.bearer.add(await status(h, await h.idp.sign(h.idp.accessClaims(), { key: forgedKey() })))
    const logout = await h.idp.sign(logoutClaims(), { key: forgedKey(), header: { typ: 'logout+jwt' } })
    statuses.backchannel.add((await h.app.inject({ method: 'POST', url: '/logout/backchannel', payload: `logout_token=${logout}`, headers: { 'content-type': 'application/x-www-form-urlencoded' } })).statusCode)
  }
  t.ok(certs() <= 2, `200 forged tokens on the bearer and back-channel channels: ${certs()} key-set request(s)`)
  t.strictSame([...statuses.bearer], [502], 'bearer: each refused as Keycloak being unavailable (idp_unavailable)')
  t.strictSame([...statuses.backchannel], [400], 'back-channel: each refused with 400, as that route refuses everything')

  // Keycloak answers again: a login's key-set load is not held off by the back-off the forged tokens met.
  delete h.idp.override.certs
  t.equal((await login(h)).location, '/', 'the next login succeeds at once')
  t.equal(await status(h, await access(h)), 200, 'and genuine bearer tokens verify with the set it loaded')
  t.equal(await status(h, await h.idp.sign(h.idp.accessClaims(), { key: forgedKey() })), 401, 'forged ones are invalid_token again')
})

t.test('a cached token: refused once it expires; with an asynchronous store, verified once and checked every time', async (t) => {
  const h = await withKnownUser(t)
  const brief = await access(h, { exp: Math.floor(Date.now() / 1000) + 1 })
  t.equal(await status(h, brief), 200)
  await new Promise((resolve) => setTimeout(resolve, 1100))
  t.equal(await status(h, brief), 401, 'expired while cached')

  let ended = false
  const asyncStore = { revoke: async () => {}, isRevoked: async (id: string) => ended && id === 'keycloak-sid:kc-session-1' }
  const remote = await harness(t, {}, undefined, { bearer: { keycloak: true }, revocations: asyncStore })
  await login(remote)
  const token = await access(remote, { sid: 'kc-session-1' })
  const certsBefore = remote.idp.hits.get('/realms/test/protocol/openid-connect/certs')
  t.equal(await status(remote, token), 200)
  t.equal(await status(remote, token), 200, 'again: the store is asked, the token not verified twice')
  t.equal(remote.idp.hits.get('/realms/test/protocol/openid-connect/certs'), certsBefore)
  ended = true
  t.equal(await status(remote, token), 401, 'the store says its Keycloak session ended: refused')
})

t.test('a service account\'s token: no Keycloak session, its jti as session_id; repeated from the cache', async (t) => {
  const h = await withKnownUser(t)
  const token = await access(h, { jti: 'jti-42' })
  const first = await h.app.inject({ method: 'GET', url: '/me', headers: { authorization: `Bearer ${token}` } })
  t.match(first.json(), { credential: 'keycloak', session_id: 'jti-42' })
  t.equal(await status(h, token), 200, 'again')
  const bare = await h.app.inject({ method: 'GET', url: '/me', headers: { authorization: `Bearer ${await access(h)}` } })
  t.equal(bare.json().session_id, '', 'neither sid nor jti: empty')

  const small = await withKnownUser(t, { cacheMax: 1 })
  const [a, b] = [await access(small, { jti: 'a' }), await access(small, { jti: 'b' })]
  t.strictSame([await status(small, a), await status(small, b), await status(small, a)], [200, 200, 200], 'a bounded cache evicts, and an evicted token verifies again')
})

t.test('the directory behind a bearer token: failing is directory_error (503), a vanished company unknown_company (403)', async (t) => {
  let failing = false
  class FlakyDirectory extends MemoryDirectory {
    override async findUserByIdentity (provider: string, subject: string) {
      if (failing) throw new Error('database down')
      return await super.findUserByIdentity(provider, subject)
    }
  }
  const directory = new FlakyDirectory()
  seedAcme(directory)
  const stack = await startStack({ protectedRoute: true, directory, plugin: { bearer: { keycloak: true } } })
  t.teardown(stack.close)
  await stack.login('bob')
  const tokens = await obtainTokens(stack, 'bob')
  failing = true
  const down = await me(stack, bearer(tokens.access_token))
  t.equal(down.status, 503)
  t.match(down.body, { data: { error: 'directory_error' } })
  failing = false
  const lost = new MemoryDirectory()
  const orphan = await startStack({ protectedRoute: true, directory: lost, plugin: { bearer: { keycloak: true } } })
  t.teardown(orphan.close)
  lost.addUser({ company: 'c-gone', name: 'Bob', role: 'user' }, { provider: 'keycloak', subject: orphan.idp.users.find((u) => u.username === 'bob')!.sub })
  const orphaned = await me(orphan, bearer((await obtainTokens(orphan, 'bob')).access_token))
  t.equal(orphaned.status, 403)
  t.match(orphaned.body, { data: { error: 'unknown_company' } })
})

t.test('a revocation store that fails asynchronously: the request waits for it and fails, nothing is left unhandled', async (t) => {
  const unhandled = recordUnhandledRejections(t)
  const failing = { revoke: async () => {}, isRevoked: async () => { throw new Error('store unreachable') } }
  const tokens = new KeycloakBearerTokens({
    verify: async () => ({ sub: 'kc-1', sid: 'kc-session-1', iat: 1, exp: Math.floor(Date.now() / 1000) + 60 }),
    userOf: async () => ({ user: { id: 'u-1', company: 'c-acme', name: 'Alice', role: 'user' }, company: { id: 'c-acme', name: 'Acme' } }),
    revocations: failing
  })
  // A compact JWS in form: its checks are the stubbed ones above.
  const token = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJrYy0xIn0.c2lnbmF0dXJl'
  await t.rejects(tokens.verify(token), /store unreachable/, 'the slow path fails as the store does')
  t.equal(tokens.cached(token), undefined, 'the synchronous path leaves it to the slow path')
  await new Promise((resolve) => setTimeout(resolve, 10))
  t.strictSame(unhandled, [], 'no unhandled rejection')
})
