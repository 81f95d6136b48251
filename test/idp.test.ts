/**
 * The Keycloak-like provider's refresh tokens, over HTTP against the real provider: what a client
 * sees of Keycloak's refresh grant, its refusals (Keycloak's own texts, in their situations), the
 * realm's rotation settings, an administrator's changes, the revocation endpoint, the faults tests
 * inject, and the demo's admin page. Logins go through the real login form.
 */
import t, { type Test } from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JWTPayload } from 'jose'
import { startKeycloakLikeIdp, type KeycloakLikeIdp, type KeycloakLikeIdpOptions, type RealmClient, type RealmUser } from '../examples/idp/keycloak-like-idp.js'
import { UserAgent, type Page } from './helpers/user-agent.js'

const REDIRECT = 'http://127.0.0.1:9/callback'
const CLIENT: RealmClient = { clientId: 'clearml', clientSecret: 'kc-secret', redirectUris: [REDIRECT], postLogoutRedirectUris: [`${REDIRECT}/bye`] }
const OTHER_CLIENT: RealmClient = { clientId: 'other-app', clientSecret: 'other-secret', redirectUris: [REDIRECT] }
const USERS: RealmUser[] = [
  { username: 'alice', password: 'alice-pw', email: 'alice@acme.com', emailVerified: true, givenName: 'Alice', familyName: 'Admin', groups: ['/ml-team'], realmRoles: ['admin'] },
  { username: 'bob', password: 'bob-pw', email: 'bob@acme.com', emailVerified: true, givenName: 'Bob', familyName: 'Builder', groups: ['/ml-team'] }
]
const ONLINE = 'openid profile email'
const OFFLINE = 'openid profile email offline_access'

type TokenAnswer = Record<string, unknown> & { refresh_token?: string, access_token?: string, id_token?: string, error?: string, error_description?: string }

async function realm (t: Test, options: Partial<KeycloakLikeIdpOptions> = {}): Promise<KeycloakLikeIdp> {
  const idp = await startKeycloakLikeIdp({ users: USERS, clients: [CLIENT, OTHER_CLIENT], ...options })
  t.teardown(idp.close)
  return idp
}

const basic = (client: RealmClient): string => `Basic ${Buffer.from(`${client.clientId}:${client.clientSecret}`).toString('base64')}`

async function post (url: string, form: Record<string, string>, authorization?: string): Promise<{ status: number, body: TokenAnswer, text: string }> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...(authorization === undefined ? {} : { authorization }) },
    body: new URLSearchParams(form)
  })
  const text = await response.text()
  return { status: response.status, body: text === '' ? {} : JSON.parse(text) as TokenAnswer, text }
}

const tokenEndpoint = (idp: KeycloakLikeIdp): string => `${idp.issuer}/protocol/openid-connect/token`
const revocationEndpoint = (idp: KeycloakLikeIdp): string => `${idp.issuer}/protocol/openid-connect/revoke`

async function refresh (idp: KeycloakLikeIdp, refreshToken: string, client = CLIENT): Promise<{ status: number, body: TokenAnswer }> {
  return await post(tokenEndpoint(idp), { grant_type: 'refresh_token', refresh_token: refreshToken }, basic(client))
}

/** The refresh token a successful refresh returned (failing the test when there is none). */
function nextToken (t: Test, answer: { status: number, body: TokenAnswer }): string {
  t.equal(answer.status, 200, `refreshed${answer.body.error_description === undefined ? '' : ` (refused: ${answer.body.error_description})`}`)
  return answer.body.refresh_token!
}

async function expectRefused (t: Test, idp: KeycloakLikeIdp, refreshToken: string, description: string, client = CLIENT): Promise<void> {
  const answer = await refresh(idp, refreshToken, client)
  t.equal(answer.status, 400, `refused: ${description}`)
  t.strictSame(answer.body, { error: 'invalid_grant', error_description: description })
}

interface Login {
  agent: UserAgent
  tokens: TokenAnswer
  /** Whether the browser was shown the login form (false: its SSO session signed it in). */
  askedForPassword: boolean
  /** Every page the browser was shown on the way (not the redirects). */
  pages: Page[]
  nonce: string
}

/** A browser login through the real form, then the code exchange a client makes. */
async function login (idp: KeycloakLikeIdp, username: string, options: { scope?: string, agent?: UserAgent, client?: RealmClient } = {}): Promise<Login> {
  const agent = options.agent ?? new UserAgent()
  const client = options.client ?? CLIENT
  const verifier = randomBytes(32).toString('base64url')
  const nonce = randomBytes(8).toString('hex')
  const authorize = `${idp.issuer}/protocol/openid-connect/auth?${new URLSearchParams({
    client_id: client.clientId,
    redirect_uri: REDIRECT,
    response_type: 'code',
    scope: options.scope ?? ONLINE,
    state: 'st',
    nonce,
    code_challenge: createHash('sha256').update(verifier).digest('base64url'),
    code_challenge_method: 'S256'
  })}`
  const isCallback = (url: string): boolean => url.startsWith(REDIRECT)
  const first = await agent.navigate(authorize, { stopAt: isCallback })
  const pages: Page[] = []
  let callback = first
  if (!isCallback(first.url)) {
    pages.push(first)
    const user = USERS.find((candidate) => candidate.username === username)!
    callback = await agent.submitLogin(first, user.username, user.password, { stopAt: isCallback })
    if (!isCallback(callback.url)) pages.push(callback)
  }
  const code = isCallback(callback.url) ? new URL(callback.url).searchParams.get('code') : null
  if (code === null) return { agent, tokens: {}, askedForPassword: pages.length > 0, pages, nonce }
  const exchange = await post(tokenEndpoint(idp), { grant_type: 'authorization_code', code, redirect_uri: REDIRECT, code_verifier: verifier }, basic(client))
  return { agent, tokens: exchange.body, askedForPassword: pages.length > 0, pages, nonce }
}

/** Whether a browser that signed in before must type its password again for the next login. */
async function nextLoginAsksForPassword (idp: KeycloakLikeIdp, agent: UserAgent): Promise<boolean> {
  const again = await agent.navigate(`${idp.issuer}/protocol/openid-connect/auth?${new URLSearchParams({
    client_id: CLIENT.clientId, redirect_uri: REDIRECT, response_type: 'code', scope: ONLINE, code_challenge: 'x'.repeat(43), code_challenge_method: 'S256'
  })}`, { stopAt: (url) => url.startsWith(REDIRECT) })
  return /id="kc-login"/.test(again.body)
}

async function verifyWithRealmKeys (idp: KeycloakLikeIdp, token: string, audience: string): Promise<JWTPayload> {
  const { payload } = await jwtVerify(token, createRemoteJWKSet(new URL(`${idp.issuer}/protocol/openid-connect/certs`)), { issuer: idp.issuer, audience })
  return payload
}

/** Counts the back-channel logouts a client receives. */
async function backchannelReceiver (t: Test): Promise<{ url: string, received: () => number }> {
  let received = 0
  const server: Server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      if (req.method === 'POST') received++
      res.writeHead(200).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { await new Promise<void>((resolve) => server.close(() => resolve())) })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/logout/backchannel`, received: () => received }
}

async function eventually (condition: () => boolean, timeoutMs = 3000): Promise<boolean> {
  const until = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > until) return false
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return true
}

t.test('a login returns an online refresh token bound to the SSO session', async (t) => {
  const idp = await realm(t)
  const { tokens, askedForPassword } = await login(idp, 'alice')
  t.ok(askedForPassword, 'through the login form')
  t.type(tokens.refresh_token, 'string')
  t.match(tokens, { token_type: 'Bearer', expires_in: 300, refresh_expires_in: 1800, scope: ONLINE, 'not-before-policy': 0 })
  const refreshClaims = decodeJwt(tokens.refresh_token!)
  const idClaims = decodeJwt(tokens.id_token!)
  t.match(refreshClaims, { typ: 'Refresh', azp: 'clearml', sub: idClaims.sub, sid: idClaims.sid, iss: idp.issuer, scope: ONLINE })
  t.equal(tokens.session_state, idClaims.sid, 'session_state is the session id the tokens carry')
  t.equal((refreshClaims.exp as number) - (refreshClaims.iat as number), 1800, 'expires at SSO Session Idle')
  t.type(refreshClaims.jti, 'string')
})

t.test('offline_access: an offline token through the login form alone, no consent page, online or SSO', async (t) => {
  const idp = await realm(t)
  const first = await login(idp, 'alice', { scope: OFFLINE })
  t.equal(first.pages.length, 1, 'the browser saw one page: the login form')
  t.match(first.pages[0].body, /id="kc-login"/)
  t.notMatch(first.pages.map((page) => page.body).join(''), /consent/i, 'no consent page')
  t.match(first.tokens, { scope: OFFLINE, refresh_expires_in: 0 })
  const claims = decodeJwt(first.tokens.refresh_token!)
  t.equal(claims.typ, 'Offline')
  t.notOk('exp' in claims, 'no expiry: the realm does not limit offline sessions')
  t.equal(decodeJwt(first.tokens.access_token!).scope, OFFLINE, 'the access token lists offline_access')

  const again = await login(idp, 'alice', { scope: OFFLINE, agent: first.agent })
  t.notOk(again.askedForPassword, 'a browser with a session is signed in without any page')
  t.equal(again.pages.length, 0)
  t.equal(decodeJwt(again.tokens.refresh_token!).typ, 'Offline')
  t.strictSame(idp.sessionsOf('alice'), { online: 1, offline: 1 }, 'one SSO session and the offline session made from it')
})

t.test('a client whose "Use refresh tokens" is off gets no refresh token, online or offline', async (t) => {
  const noRefresh = { ...CLIENT, useRefreshTokens: false }
  const idp = await realm(t, { clients: [noRefresh] })
  for (const scope of [ONLINE, OFFLINE]) {
    const { tokens } = await login(idp, 'alice', { scope, client: noRefresh })
    t.type(tokens.access_token, 'string', `${scope}: logged in`)
    t.notOk('refresh_token' in tokens, `${scope}: no refresh token`)
    t.equal(tokens.refresh_expires_in, 0)
  }
})

t.test("a refresh answers the user's current groups, roles and profile, signed like the login's tokens", async (t) => {
  const idp = await realm(t)
  const { tokens, nonce } = await login(idp, 'bob')
  const loginAccess = decodeJwt(tokens.access_token!)
  t.notOk((loginAccess.groups as string[]).includes('/kc-admins'))

  idp.setGroups('bob', ['/ml-team', '/kc-admins'])
  idp.setRealmRoles('bob', ['annotator'])
  const answer = await refresh(idp, tokens.refresh_token!)
  t.equal(answer.status, 200)
  t.match(answer.body, { token_type: 'Bearer', expires_in: 300, refresh_expires_in: 1800, scope: ONLINE, session_state: loginAccess.sid, 'not-before-policy': 0 })
  t.not(answer.body.refresh_token, tokens.refresh_token, 'a new refresh token')

  const access = await verifyWithRealmKeys(idp, answer.body.access_token!, 'account')
  t.strictSame(decodeProtectedHeader(answer.body.access_token!), decodeProtectedHeader(tokens.access_token!), 'same header and key as the login access token')
  t.match(access, { typ: 'Bearer', azp: 'clearml', aud: 'account', sub: loginAccess.sub, sid: loginAccess.sid, scope: ONLINE })
  t.match(access, {
    preferred_username: 'bob',
    email: 'bob@acme.com',
    given_name: 'Bob',
    family_name: 'Builder',
    name: 'Bob Builder',
    groups: ['/ml-team', '/kc-admins'],
    resource_access: { account: { roles: ['manage-account', 'view-profile'] } }
  })
  t.strictSame((access.realm_access as { roles: string[] }).roles, ['offline_access', 'uma_authorization', 'default-roles-clearml', 'annotator'])
  t.strictSame(Object.keys(access).sort(), Object.keys(loginAccess).sort(), 'the same claims as the login access token')

  const id = await verifyWithRealmKeys(idp, answer.body.id_token!, 'clearml')
  t.strictSame(decodeProtectedHeader(answer.body.id_token!), decodeProtectedHeader(tokens.id_token!))
  t.match(id, { typ: 'ID', azp: 'clearml', sub: loginAccess.sub, sid: loginAccess.sid, groups: ['/ml-team', '/kc-admins'], preferred_username: 'bob', email: 'bob@acme.com', nonce })
  t.equal(id.at_hash, createHash('sha256').update(answer.body.access_token!).digest().subarray(0, 16).toString('base64url'), 'at_hash of the new access token')

  const userinfo = await fetch(`${idp.issuer}/protocol/openid-connect/userinfo`, { headers: { authorization: `Bearer ${answer.body.access_token}` } })
  t.equal(userinfo.status, 200, 'userinfo accepts the refreshed access token')

  await idp.rotateKeys()
  const afterRotation = await refresh(idp, answer.body.refresh_token!)
  t.equal(afterRotation.status, 200, 'refresh tokens survive a key rotation')
  t.not(decodeProtectedHeader(afterRotation.body.access_token!).kid, decodeProtectedHeader(tokens.access_token!).kid, 'the new key signs')
  await verifyWithRealmKeys(idp, afterRotation.body.access_token!, 'account')
})

t.test('without "Revoke Refresh Token" each refresh returns a new token and the older ones keep working', async (t) => {
  const idp = await realm(t)
  const { tokens } = await login(idp, 'alice')
  const first = tokens.refresh_token!
  const second = nextToken(t, await refresh(idp, first))
  nextToken(t, await refresh(idp, first))
  nextToken(t, await refresh(idp, second))
  t.strictSame(idp.refreshLog.map((entry) => entry.outcome), ['ok', 'ok', 'ok'])
})

t.test('refresh requests Keycloak refuses: malformed, forged or foreign tokens, a missing token, a wrong client', async (t) => {
  const idp = await realm(t, { clients: [CLIENT, OTHER_CLIENT, { ...OTHER_CLIENT, clientId: 'third', redirectUris: [REDIRECT] }] })
  const { tokens } = await login(idp, 'alice')
  const good = tokens.refresh_token!
  const [header, payload] = good.split('.')
  const forgedPayload = Buffer.from(JSON.stringify({ ...decodeJwt(good), sub: 'someone-else' })).toString('base64url')
  const cases: Array<[string, string, string]> = [
    ['not a JWT', 'garbage', 'Invalid refresh token'],
    ['a token with another signature', `${header}.${payload}.${Buffer.from('x'.repeat(32)).toString('base64url')}`, 'Invalid refresh token'],
    ['a token whose claims were changed', `${header}.${forgedPayload}.${good.split('.')[2]}`, 'Invalid refresh token'],
    ['the ID token', tokens.id_token!, 'Invalid refresh token'],
    ['the access token', tokens.access_token!, 'Invalid refresh token']
  ]
  for (const [what, token, description] of cases) {
    const answer = await refresh(idp, token)
    t.equal(answer.status, 400, what)
    t.strictSame(answer.body, { error: 'invalid_grant', error_description: description }, what)
  }

  await expectRefused(t, idp, good, "Invalid refresh token. Token client and authorized client don't match", OTHER_CLIENT)

  const missing = await post(tokenEndpoint(idp), { grant_type: 'refresh_token' }, basic(CLIENT))
  t.equal(missing.status, 400)
  t.strictSame(missing.body, { error: 'invalid_request', error_description: 'No refresh token' })

  for (const [what, authorization, form] of [
    ['wrong secret', basic({ ...CLIENT, clientSecret: 'nope' }), {}],
    ['unknown client', basic({ ...CLIENT, clientId: 'nobody' }), {}],
    ['no credentials', undefined, {}],
    ['wrong secret in the form', undefined, { client_id: 'clearml', client_secret: 'nope' }]
  ] as Array<[string, string | undefined, Record<string, string>]>) {
    const answer = await post(tokenEndpoint(idp), { grant_type: 'refresh_token', refresh_token: good, ...form }, authorization)
    t.equal(answer.status, 401, what)
    t.strictSame(answer.body, { error: 'invalid_client', error_description: 'Invalid client or Invalid client credentials' }, what)
  }
  const inForm = await post(tokenEndpoint(idp), { grant_type: 'refresh_token', refresh_token: good, client_id: 'clearml', client_secret: 'kc-secret' })
  t.equal(inForm.status, 200, 'client credentials in the form are accepted, as Keycloak accepts them')
  t.equal(idp.refreshLog.filter((entry) => entry.outcome === 'ok').length, 1, 'the refused ones refreshed nothing')
})

t.test('a disabled user: "User disabled" for online and offline tokens, sessions kept; enabled again, the same tokens work', async (t) => {
  const idp = await realm(t)
  const online = await login(idp, 'alice')
  const offline = await login(idp, 'alice', { scope: OFFLINE })
  idp.disableUser('alice')
  await expectRefused(t, idp, online.tokens.refresh_token!, 'User disabled')
  await expectRefused(t, idp, offline.tokens.refresh_token!, 'User disabled')
  t.strictSame(idp.sessionsOf('alice'), { online: 2, offline: 1 }, 'Keycloak keeps a disabled user\'s sessions')

  t.ok(await nextLoginAsksForPassword(idp, online.agent), 'the browser session no longer signs the user in')
  const attempt = await login(idp, 'alice')
  t.match(attempt.pages.at(-1)?.body, /Account is disabled, contact your administrator\./, 'the login form refuses a disabled user')
  t.notOk(attempt.tokens.access_token)

  idp.enableUser('alice')
  nextToken(t, await refresh(idp, online.tokens.refresh_token!))
  nextToken(t, await refresh(idp, offline.tokens.refresh_token!))
  t.ok((await login(idp, 'alice')).tokens.access_token, 'and the user can sign in again')
})

t.test('a deleted user: its sessions go with it, and its name no longer signs in', async (t) => {
  const idp = await realm(t)
  const online = await login(idp, 'alice')
  const offline = await login(idp, 'alice', { scope: OFFLINE })
  idp.deleteUser('alice')
  // Keycloak removes a deleted user's online and offline sessions (onUserRemoved), so its refresh
  // tokens fail on their session before the user is looked up.
  await expectRefused(t, idp, online.tokens.refresh_token!, 'Session not active')
  await expectRefused(t, idp, offline.tokens.refresh_token!, 'Offline user session not found')
  t.notOk(idp.users.some((user) => user.username === 'alice'))
  t.ok(await nextLoginAsksForPassword(idp, online.agent))
  const attempt = await login(idp, 'alice')
  t.match(attempt.pages.at(-1)?.body, /Invalid username or password\./)
  t.throws(() => idp.disableUser('alice'), /no user alice/)
  nextToken(t, await refresh(idp, (await login(idp, 'bob')).tokens.refresh_token!))
})

t.test('SSO sessions ended as by a timeout: online tokens "Session not active", offline ones work, the password is asked again', async (t) => {
  const idp = await realm(t)
  const online = await login(idp, 'alice')
  const offline = await login(idp, 'alice', { scope: OFFLINE })
  const bob = await login(idp, 'bob')
  idp.endSsoSessions('alice')
  await expectRefused(t, idp, online.tokens.refresh_token!, 'Session not active')
  const kept = nextToken(t, await refresh(idp, offline.tokens.refresh_token!))
  nextToken(t, await refresh(idp, kept))
  nextToken(t, await refresh(idp, bob.tokens.refresh_token!))
  t.strictSame(idp.sessionsOf('alice'), { online: 0, offline: 1 })
  t.ok(await nextLoginAsksForPassword(idp, online.agent), 'alice types her password again')
  t.notOk(await nextLoginAsksForPassword(idp, bob.agent), "bob's browser session is untouched")
})

t.test('a logout at the provider ends the online session, not the offline one', async (t) => {
  const idp = await realm(t)
  const online = await login(idp, 'alice')
  const offline = await login(idp, 'alice', { scope: OFFLINE, agent: online.agent })
  await online.agent.confirmIdpLogout(`${idp.issuer}/protocol/openid-connect/logout?${new URLSearchParams({
    id_token_hint: online.tokens.id_token!, post_logout_redirect_uri: `${REDIRECT}/bye`
  })}`, { stopAt: (url) => url.startsWith(REDIRECT) })
  await expectRefused(t, idp, online.tokens.refresh_token!, 'Session not active')
  nextToken(t, await refresh(idp, offline.tokens.refresh_token!))
  t.ok(await nextLoginAsksForPassword(idp, online.agent))
})

t.test('idle and maximum times, each refresh counting as activity', async (t) => {
  t.test('SSO Session Idle: a token not refreshed in time is no longer active', async (t) => {
    const idp = await realm(t)
    const { tokens } = await login(idp, 'alice')
    idp.advanceClock(1000)
    const second = nextToken(t, await refresh(idp, tokens.refresh_token!))
    idp.advanceClock(1000)
    const third = nextToken(t, await refresh(idp, second))
    t.ok(true, '2000 s after the login, the session lives on: each refresh was activity')
    await expectRefused(t, idp, tokens.refresh_token!, 'Token is not active')
    idp.advanceClock(1801)
    await expectRefused(t, idp, third, 'Token is not active')
    t.strictSame(idp.sessionsOf('alice'), { online: 0, offline: 0 })
  })

  t.test('SSO Session Max caps the tokens, whatever the activity', async (t) => {
    const idp = await realm(t, { ssoSessionIdleSec: 60, ssoSessionMaxSec: 100 })
    const { tokens } = await login(idp, 'alice')
    t.equal(tokens.refresh_expires_in, 60)
    idp.advanceClock(50)
    const answer = await refresh(idp, tokens.refresh_token!)
    t.equal(answer.body.refresh_expires_in, 50, 'idle would allow 60 s more; the maximum allows 50')
    idp.advanceClock(49)
    const last = nextToken(t, await refresh(idp, answer.body.refresh_token!))
    idp.advanceClock(2)
    await expectRefused(t, idp, last, 'Token is not active')
  })

  t.test('Offline Session Idle: the offline session is removed when it idled out', async (t) => {
    const idp = await realm(t)
    const { tokens } = await login(idp, 'alice', { scope: OFFLINE })
    idp.advanceClock(36001)
    const survivor = nextToken(t, await refresh(idp, tokens.refresh_token!))
    t.ok(true, 'an offline token outlives SSO Session Max')
    idp.advanceClock(2592000)
    await expectRefused(t, idp, survivor, 'Offline session not active')
    await expectRefused(t, idp, survivor, 'Offline user session not found')
  })

  t.test('Offline Session Max, when the realm limits offline sessions', async (t) => {
    const idp = await realm(t, { offlineSessionMaxSec: 3600 })
    const { tokens } = await login(idp, 'alice', { scope: OFFLINE })
    t.equal(tokens.refresh_expires_in, 3600)
    t.equal(decodeJwt(tokens.refresh_token!).typ, 'Offline')
    idp.advanceClock(3601)
    await expectRefused(t, idp, tokens.refresh_token!, 'Token is not active')
  })
})

t.test('"Revoke Refresh Token": a rotated token presented again is "Stale token", and the login\'s newest token dies with it', async (t) => {
  const idp = await realm(t, { revokeRefreshToken: true })
  const { tokens, agent } = await login(idp, 'alice')
  const first = tokens.refresh_token!
  const second = nextToken(t, await refresh(idp, first))
  // Keycloak compares whole seconds: a second later, the first token is older than the last refresh.
  idp.advanceClock(1)
  const third = nextToken(t, await refresh(idp, second))
  await expectRefused(t, idp, first, 'Stale token')
  // Keycloak detaches the client session after a reuse: every token of it is refused from then on.
  await expectRefused(t, idp, third, "Session doesn't have required client")
  t.notOk(await nextLoginAsksForPassword(idp, agent), 'the SSO session itself lives on')
  const relogin = await login(idp, 'alice', { agent })
  nextToken(t, await refresh(idp, relogin.tokens.refresh_token!))
})

t.test('"Revoke Refresh Token": the current token used twice exceeds "Refresh Token Max Reuse"', async (t) => {
  t.test('max reuse 0 (the default): each token works once', async (t) => {
    const idp = await realm(t, { revokeRefreshToken: true })
    const { tokens } = await login(idp, 'alice')
    nextToken(t, await refresh(idp, tokens.refresh_token!))
    await expectRefused(t, idp, tokens.refresh_token!, 'Maximum allowed refresh token reuse exceeded')
  })
  t.test('max reuse 1: twice', async (t) => {
    const idp = await realm(t, { revokeRefreshToken: true, refreshTokenMaxReuse: 1 })
    const { tokens } = await login(idp, 'alice')
    nextToken(t, await refresh(idp, tokens.refresh_token!))
    nextToken(t, await refresh(idp, tokens.refresh_token!))
    await expectRefused(t, idp, tokens.refresh_token!, 'Maximum allowed refresh token reuse exceeded')
  })
  t.test('each login of the same browser is a family of its own', async (t) => {
    const idp = await realm(t, { revokeRefreshToken: true })
    const first = await login(idp, 'alice')
    const second = await login(idp, 'alice', { agent: first.agent })
    t.notOk(second.askedForPassword)
    const a = nextToken(t, await refresh(idp, first.tokens.refresh_token!))
    const b = nextToken(t, await refresh(idp, second.tokens.refresh_token!))
    nextToken(t, await refresh(idp, a))
    nextToken(t, await refresh(idp, b))
  })
})

t.test('revokeFamilyOnReuse (stricter than Keycloak): a used token presented again revokes the newest of its login', async (t) => {
  const idp = await realm(t, { revokeFamilyOnReuse: true })
  const mine = await login(idp, 'alice')
  const other = await login(idp, 'bob')
  const first = mine.tokens.refresh_token!
  const second = nextToken(t, await refresh(idp, first))
  await expectRefused(t, idp, first, 'Stale token')
  await expectRefused(t, idp, second, 'Invalid refresh token')
  nextToken(t, await refresh(idp, other.tokens.refresh_token!))

  const racing = (await login(idp, 'bob')).tokens.refresh_token!
  const answers = await Promise.all([refresh(idp, racing), refresh(idp, racing), refresh(idp, racing)])
  t.strictSame(answers.map((answer) => answer.status).sort(), [200, 400, 400], 'three at once: exactly one refresh')
  const winner = answers.find((answer) => answer.status === 200)!
  await expectRefused(t, idp, winner.body.refresh_token!, 'Invalid refresh token')
})

t.test('the realm\'s "not before" pushed: every token issued before is "Stale token"', async (t) => {
  const idp = await realm(t)
  const online = await login(idp, 'alice')
  const offline = await login(idp, 'bob', { scope: OFFLINE })
  idp.advanceClock(1)
  idp.pushNotBefore()
  await expectRefused(t, idp, online.tokens.refresh_token!, 'Stale token')
  await expectRefused(t, idp, offline.tokens.refresh_token!, 'Stale token')
  idp.advanceClock(1)
  nextToken(t, await refresh(idp, (await login(idp, 'alice')).tokens.refresh_token!))
})

t.test('no back-channel logout for disabling, deleting, ending SSO sessions or changing groups; a provider logout sends one', async (t) => {
  const receiver = await backchannelReceiver(t)
  const client = { ...CLIENT, backchannelLogoutUri: receiver.url }
  const idp = await realm(t, { clients: [client] })
  const alice = await login(idp, 'alice', { client })
  const bob = await login(idp, 'bob', { client, scope: OFFLINE })
  idp.setGroups('alice', ['/kc-admins'])
  idp.setRealmRoles('alice', [])
  idp.disableUser('alice')
  idp.enableUser('alice')
  idp.endSsoSessions('alice')
  idp.deleteUser('bob')
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(receiver.received(), 0, 'the client was told nothing')
  await expectRefused(t, idp, alice.tokens.refresh_token!, 'Session not active')
  await expectRefused(t, idp, bob.tokens.refresh_token!, 'Offline user session not found')

  const carol = await login(idp, 'alice', { client })
  await carol.agent.confirmIdpLogout(`${idp.issuer}/protocol/openid-connect/logout?${new URLSearchParams({
    id_token_hint: carol.tokens.id_token!, post_logout_redirect_uri: `${REDIRECT}/bye`
  })}`, { stopAt: (url) => url.startsWith(REDIRECT) })
  t.ok(await eventually(() => receiver.received() === 1), 'a logout at the provider does send one (the receiver works)')
})

t.test('token endpoint faults: refreshes fail as a down Keycloak would, logins keep working', async (t) => {
  t.test('503', async (t) => {
    const idp = await realm(t)
    const { tokens } = await login(idp, 'alice')
    idp.setTokenEndpointFault(503)
    const answer = await refresh(idp, tokens.refresh_token!)
    t.equal(answer.status, 503)
    t.match(answer.body, { error: 'temporarily_unavailable' })
    t.ok((await login(idp, 'bob')).tokens.refresh_token, 'a login still works')
    idp.setTokenEndpointFault(undefined)
    nextToken(t, await refresh(idp, tokens.refresh_token!))
    t.strictSame(idp.refreshLog.map((entry) => entry.outcome), ['fault', 'ok'])
    t.equal(idp.refreshLog[0].tokenId, decodeJwt(tokens.refresh_token!).jti, 'the fault is logged with the token that was presented')
  })

  t.test('reset: the connection drops', async (t) => {
    const idp = await realm(t)
    const { tokens } = await login(idp, 'alice')
    idp.setTokenEndpointFault('reset')
    await t.rejects(refresh(idp, tokens.refresh_token!), 'the client sees a dropped connection')
    idp.setTokenEndpointFault(undefined)
    nextToken(t, await refresh(idp, tokens.refresh_token!))
  })

  t.test('hang: no answer until the fault is cleared, then the connection drops', async (t) => {
    const idp = await realm(t)
    const { tokens } = await login(idp, 'alice')
    idp.setTokenEndpointFault('hang')
    let settled = false
    const pending = refresh(idp, tokens.refresh_token!).finally(() => { settled = true })
    pending.catch(() => {})
    t.ok(await eventually(() => idp.refreshLog.length === 1), 'the request arrived')
    await new Promise((resolve) => setTimeout(resolve, 300))
    t.notOk(settled, 'and is not answered')
    idp.setTokenEndpointFault(undefined)
    await t.rejects(pending, 'cleared: its connection drops')
    nextToken(t, await refresh(idp, tokens.refresh_token!))
  })

  t.test('grants: the authorization-code grant fails instead', async (t) => {
    const idp = await realm(t)
    const before = await login(idp, 'alice')
    idp.setTokenEndpointFault(503, { grants: ['authorization_code'] })
    const during = await login(idp, 'bob')
    t.match(during.tokens, { error: 'temporarily_unavailable' }, 'the code exchange fails')
    nextToken(t, await refresh(idp, before.tokens.refresh_token!))
    t.strictSame(idp.refreshLog.map((entry) => entry.outcome), ['ok'], 'only refresh grants are in the refresh log')
  })
})

t.test('the revocation endpoint (RFC 7009) ends what Keycloak ends', async (t) => {
  t.test('an offline token: its offline session is gone, and the browser signs in again', async (t) => {
    const idp = await realm(t)
    const { tokens, agent } = await login(idp, 'alice', { scope: OFFLINE })
    const revoked = await post(revocationEndpoint(idp), { token: tokens.refresh_token!, token_type_hint: 'refresh_token' }, basic(CLIENT))
    t.equal(revoked.status, 200)
    t.equal(revoked.text, '', 'an empty 200')
    await expectRefused(t, idp, tokens.refresh_token!, 'Offline user session not found')
    t.strictSame(idp.sessionsOf('alice'), { online: 0, offline: 0 }, 'the online session it came from had no other client: it ended too')
    t.ok(await nextLoginAsksForPassword(idp, agent))
    t.match(idp.revocationLog, [{ tokenId: decodeJwt(tokens.refresh_token!).jti, hint: 'refresh_token', outcome: 'revoked' }])
  })

  t.test('an online token: the SSO session loses the client', async (t) => {
    const idp = await realm(t)
    const { tokens, agent } = await login(idp, 'alice')
    const second = nextToken(t, await refresh(idp, tokens.refresh_token!))
    t.equal((await post(revocationEndpoint(idp), { token: tokens.refresh_token! }, basic(CLIENT))).status, 200)
    await expectRefused(t, idp, second, 'Session not active')
    t.ok(await nextLoginAsksForPassword(idp, agent))
  })

  t.test('an online token when the SSO session has another client: only that client is revoked', async (t) => {
    const idp = await realm(t)
    const mine = await login(idp, 'alice')
    const theirs = await login(idp, 'alice', { agent: mine.agent, client: OTHER_CLIENT })
    t.equal((await post(revocationEndpoint(idp), { token: mine.tokens.refresh_token! }, basic(CLIENT))).status, 200)
    await expectRefused(t, idp, mine.tokens.refresh_token!, "Session doesn't have required client")
    nextToken(t, await refresh(idp, theirs.tokens.refresh_token!, OTHER_CLIENT))
    t.notOk(await nextLoginAsksForPassword(idp, mine.agent), 'the browser session lives on')
  })

  t.test('an access token: userinfo refuses it from then on', async (t) => {
    const idp = await realm(t)
    const { tokens } = await login(idp, 'alice')
    const userinfo = async (): Promise<number> => (await fetch(`${idp.issuer}/protocol/openid-connect/userinfo`, { headers: { authorization: `Bearer ${tokens.access_token}` } })).status
    t.equal(await userinfo(), 200)
    t.equal((await post(revocationEndpoint(idp), { token: tokens.access_token!, token_type_hint: 'access_token' }, basic(CLIENT))).status, 200)
    t.equal(await userinfo(), 401)
    nextToken(t, await refresh(idp, tokens.refresh_token!))
  })

  t.test('what it refuses, and the tokens it cannot use (200, as Keycloak)', async (t) => {
    const idp = await realm(t)
    const { tokens } = await login(idp, 'alice', { scope: OFFLINE })
    const unknown = await post(revocationEndpoint(idp), { token: 'not-a-token', token_type_hint: 'refresh_token' }, basic(CLIENT))
    t.equal(unknown.status, 200, 'an unknown token: 200')
    t.strictSame(unknown.body, { error: 'invalid_token', error_description: 'Invalid token' })
    const badClient = await post(revocationEndpoint(idp), { token: tokens.refresh_token! }, basic({ ...CLIENT, clientSecret: 'nope' }))
    t.equal(badClient.status, 401)
    t.strictSame(badClient.body, { error: 'invalid_client', error_description: 'Invalid client or Invalid client credentials' })
    const noToken = await post(revocationEndpoint(idp), {}, basic(CLIENT))
    t.equal(noToken.status, 400)
    t.strictSame(noToken.body, { error: 'invalid_request', error_description: 'Token not provided' })
    const foreign = await post(revocationEndpoint(idp), { token: tokens.refresh_token! }, basic(OTHER_CLIENT))
    t.equal(foreign.status, 400)
    t.strictSame(foreign.body, { error: 'invalid_request', error_description: 'Unmatching clients' })
    const idToken = await post(revocationEndpoint(idp), { token: tokens.id_token! }, basic(CLIENT))
    t.equal(idToken.status, 400)
    t.strictSame(idToken.body, { error: 'unsupported_token_type', error_description: 'Unsupported token type' })
    nextToken(t, await refresh(idp, tokens.refresh_token!))
    t.strictSame(idp.revocationLog.map((entry) => entry.outcome), ['invalid_token', 'invalid_client', 'Token not provided', 'Unmatching clients', 'Unsupported token type'])

    t.equal((await post(revocationEndpoint(idp), { token: tokens.refresh_token! }, basic(CLIENT))).status, 200)
    const twice = await post(revocationEndpoint(idp), { token: tokens.refresh_token! }, basic(CLIENT))
    t.equal(twice.status, 200, 'revoking again: 200')
    t.strictSame(twice.body, { error: 'invalid_token', error_description: 'Invalid token' })
  })

  t.test('faults reach the revocation endpoint when asked for', async (t) => {
    const idp = await realm(t)
    const { tokens } = await login(idp, 'alice', { scope: OFFLINE })
    idp.setTokenEndpointFault(503, { grants: ['revocation'] })
    t.equal((await post(revocationEndpoint(idp), { token: tokens.refresh_token! }, basic(CLIENT))).status, 503)
    nextToken(t, await refresh(idp, tokens.refresh_token!))
    t.strictSame(idp.revocationLog.map((entry) => entry.outcome), ['fault'])
  })
})

t.test('discovery advertises the revocation endpoint, offline_access and the refresh grant', async (t) => {
  const idp = await realm(t)
  const discovery = await (await fetch(`${idp.issuer}/.well-known/openid-configuration`)).json() as Record<string, unknown>
  t.equal(discovery.revocation_endpoint, `${idp.issuer}/protocol/openid-connect/revoke`)
  t.ok((discovery.scopes_supported as string[]).includes('offline_access'))
  t.ok((discovery.grant_types_supported as string[]).includes('refresh_token'))
  t.ok((discovery.grant_types_supported as string[]).includes('authorization_code'))
})

t.test('the refresh log: every refresh grant in order, with the presented token and what became of it', async (t) => {
  const idp = await realm(t, { revokeRefreshToken: true })
  const { tokens } = await login(idp, 'alice')
  const second = nextToken(t, await refresh(idp, tokens.refresh_token!))
  await refresh(idp, tokens.refresh_token!)
  await refresh(idp, 'garbage')
  t.match(idp.refreshLog, [
    { tokenId: decodeJwt(tokens.refresh_token!).jti, username: 'alice', outcome: 'ok' },
    { tokenId: decodeJwt(tokens.refresh_token!).jti, username: 'alice', outcome: 'Maximum allowed refresh token reuse exceeded' },
    { tokenId: undefined, username: undefined, outcome: 'Invalid refresh token' }
  ])
  t.ok(idp.refreshLog.every((entry, i) => i === 0 || entry.at >= idp.refreshLog[i - 1].at), 'in order of arrival')
  t.notOk(idp.refreshLog.some((entry) => entry.tokenId === decodeJwt(second).jti), 'the second token was never presented')
  t.notMatch(JSON.stringify(idp.refreshLog), tokens.refresh_token!, 'no token in the log')
})

t.test('the admin page: users and the buttons that change them', async (t) => {
  const idp = await realm(t)
  const browser = new UserAgent()
  const alice = await login(idp, 'alice')
  const aliceOffline = await login(idp, 'alice', { scope: OFFLINE })
  const bob = await login(idp, 'bob')

  const page = await browser.navigate(idp.adminConsoleUrl)
  t.equal(page.status, 200)
  t.notMatch(page.body, /<script/i, 'no script')
  for (const user of ['alice', 'bob']) t.match(page.body, new RegExp(`name="username" value="${user}"`))
  for (const button of ['disable', 'delete', 'end-sessions', 'add-admin-group']) t.match(page.body, new RegExp(`name="action" value="${button}"`))
  t.match(page.body, /2 online, 1 offline/, "alice's sessions")

  const press = async (username: string, action: string): Promise<Page> => await browser.navigate(idp.adminConsoleUrl, { method: 'POST', form: { username, action } })

  const disabled = await press('alice', 'disable')
  t.equal(disabled.url.split('?')[0], idp.adminConsoleUrl, 'back on the page')
  t.match(disabled.body, /alice is disabled/)
  t.match(disabled.body, /name="action" value="enable"/, 'alice now has an Enable button')
  await expectRefused(t, idp, alice.tokens.refresh_token!, 'User disabled')
  await press('alice', 'enable')
  const aliceNext = nextToken(t, await refresh(idp, alice.tokens.refresh_token!))

  const added = await press('bob', 'add-admin-group')
  t.match(added.body, /Remove from \/kc-admins/)
  const promoted = await refresh(idp, bob.tokens.refresh_token!)
  t.match(decodeJwt(promoted.body.access_token!), { groups: ['/ml-team', '/kc-admins'] })
  await press('bob', 'remove-admin-group')
  t.strictSame(decodeJwt((await refresh(idp, promoted.body.refresh_token!)).body.access_token!).groups, ['/ml-team'])

  await press('alice', 'end-sessions')
  await expectRefused(t, idp, aliceNext, 'Session not active')
  nextToken(t, await refresh(idp, aliceOffline.tokens.refresh_token!))

  const deleted = await press('bob', 'delete')
  t.notMatch(deleted.body, /value="bob"/, 'bob is gone from the list')
  await expectRefused(t, idp, promoted.body.refresh_token!, 'Session not active')

  const nonsense = await browser.request(idp.adminConsoleUrl, { form: { username: 'nobody', action: 'delete' } })
  t.equal(nonsense.status, 400)
  const notAnAction = await browser.request(idp.adminConsoleUrl, { form: { username: 'alice', action: 'constructor' } })
  t.equal(notAnAction.status, 400, 'only the page\'s own actions')
})
