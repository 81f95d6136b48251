/**
 * Sessions follow Keycloak (SPEC section 12, issue #20), against the Keycloak-like provider over
 * HTTP: a user disabled, deleted or demoted in Keycloak loses ClearML within the period; an
 * outage logs no one out; rotating refresh tokens are never presented twice.
 */
import t, { type Test } from 'tap'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { diagnosticsChannels, MemoryRevocationStore, type RevalidateEvent } from '../index.js'
import { CountingDirectory } from './helpers/counting-directory.js'
import { KC, seedAcme, startStack, type Stack, type StackOptions } from './helpers/stack.js'
import type { UserAgent } from './helpers/user-agent.js'

const PERIOD = 1
const followEnv = (extra: Record<string, string> = {}): Record<string, string> => ({ [`${KC}session__revalidate_sec`]: String(PERIOD), ...extra })
const ADMIN_GROUPS = { [`${KC}groups__enabled`]: 'true', [`${KC}groups__admins`]: '["kc-admins"]' }

async function followStack (t: Test, options: StackOptions = {}): Promise<Stack> {
  const stack = await startStack({ protectedRoute: true, ...options, env: followEnv(options.env as Record<string, string> | undefined) })
  t.teardown(stack.close)
  return stack
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const session = (stack: Stack, agent: UserAgent): string => agent.cookies(stack.appUrl).get('clearml_token_basic')!

interface Answer { status: number, body: Record<string, any>, ms: number }

async function me (stack: Stack, agent: UserAgent, headers: Record<string, string> = {}): Promise<Answer> {
  const started = performance.now()
  const answer = await agent.request(`${stack.appUrl}/me`, { headers })
  return { status: answer.status, body: JSON.parse(answer.body), ms: performance.now() - started }
}

async function bearer (stack: Stack, token: string): Promise<Answer> {
  const started = performance.now()
  const answer = await fetch(`${stack.appUrl}/me`, { headers: { authorization: `Bearer ${token}` } })
  return { status: answer.status, body: await answer.json() as Record<string, any>, ms: performance.now() - started }
}

/** Requests every 100 ms until `until` holds; the answers on the way. Fails after `limitSec` (a deadline, not a measurement). */
async function poll (ask: () => Promise<Answer>, until: (answer: Answer) => boolean, limitSec = 10 * PERIOD): Promise<Answer[]> {
  const answers: Answer[] = []
  const deadline = Date.now() + limitSec * 1000
  for (;;) {
    const answer = await ask()
    answers.push(answer)
    if (until(answer)) return answers
    if (Date.now() > deadline) throw new Error(`still ${answer.status} after ${limitSec} s: ${JSON.stringify(answer.body).slice(0, 200)}`)
    await sleep(100)
  }
}

const ended = (answer: Answer): boolean => answer.status === 401
const isSessionEnded = (answer: Answer): boolean => answer.status === 401 && answer.body.meta?.result_msg === 'session_ended' && answer.body.data?.error === 'session_ended'

function revalidations (t: Test): RevalidateEvent[] {
  const events: RevalidateEvent[] = []
  const listener = (message: unknown): void => { events.push(message as RevalidateEvent) }
  subscribe(diagnosticsChannels.revalidate, listener)
  t.teardown(() => { unsubscribe(diagnosticsChannels.revalidate, listener) })
  return events
}

t.test('a user disabled in Keycloak: 401 session_ended within the period; re-enabled, the session stays ended; the directory untouched', async (t) => {
  const stack = await followStack(t)
  const events = revalidations(t)
  const { agent } = await stack.login('bob')
  t.equal((await me(stack, agent)).status, 200)
  const usersBefore = JSON.stringify(stack.directory.listUsers())
  stack.idp.disableUser('bob')
  const answers = await poll(async () => await me(stack, agent), ended)
  t.ok(isSessionEnded(answers.at(-1)!), '401 with code session_ended in the envelope')
  t.ok(answers.slice(0, -1).every((answer) => answer.status === 200), 'until then the session kept working')
  t.match(stack.logs.join(''), /"reason":"Keycloak refused its refresh token: \\"User disabled\\""/, 'Keycloak\'s reason in the log, at info')
  t.equal(stack.logs.filter((line) => line.includes('Keycloak ended the session')).length, 1, 'once')
  t.ok(events.some((event) => event.outcome === 'ended' && event.reason === '"User disabled"'), 'and on the revalidate channel')
  t.equal(JSON.stringify(stack.directory.listUsers()), usersBefore, 'nothing changed in the directory')
  stack.idp.enableUser('bob')
  await sleep(2 * PERIOD * 1000)
  t.ok(isSessionEnded(await me(stack, agent)), 're-enabling bob in Keycloak does not revive the ended session')
  const again = await stack.login('bob')
  t.equal((await me(stack, again.agent)).status, 200, 'he logs in again')
  t.notMatch(stack.logs.join(''), /eyJ[\w-]+\.[\w-]+\./, 'no token in any log line')
})

t.test('a user deleted in Keycloak: the same, on the very first request after a long idle', async (t) => {
  const stack = await followStack(t)
  const { agent } = await stack.login('dave')
  t.equal((await me(stack, agent)).status, 200)
  stack.idp.deleteUser('dave')
  // Idle for more than twice the period: the first request waits for the check and is refused.
  await sleep(2.5 * PERIOD * 1000)
  const first = await me(stack, agent)
  t.ok(isSessionEnded(first), 'refused on its first request')
  // Keycloak removes a deleted user's sessions: its offline token is refused for that.
  t.match(stack.logs.join(''), /Offline user session not found/)
})

t.test('a user idle for longer than twice the period, disabled meanwhile, is refused on the first request', async (t) => {
  const stack = await followStack(t)
  const { agent } = await stack.login('bob')
  t.equal((await me(stack, agent)).status, 200)
  await sleep(600)
  stack.idp.disableUser('bob')
  await sleep(2 * PERIOD * 1000)
  t.ok(isSessionEnded(await me(stack, agent)), 'no answer in between: the very first request is refused')
})

t.test('demoted in Keycloak: role user within the period, groups synced, and the earlier token never again admin; promoted too', async (t) => {
  const stack = await followStack(t, { env: ADMIN_GROUPS })
  const events = revalidations(t)
  const { agent } = await stack.login('carol')
  const token = session(stack, agent)
  t.match((await me(stack, agent)).body, { role: 'admin' }, 'carol is admin through /kc-admins')
  const carol = stack.directory.listUsers().find((user) => user.email === 'carol@acme.com')!
  stack.idp.setGroups('carol', ['/ml-team'])
  const answers = await poll(async () => await me(stack, agent), (answer) => answer.body.role === 'user')
  t.ok(answers.every((answer) => answer.status === 200), 'the session continues while it changes')
  t.match(answers.at(-1)!.body, { role: 'user', user: carol.id }, 'request.clearmlIdentity.role is user')
  t.strictSame(stack.directory.groupsOf(carol.id), ['ml-team'], 'groups synced')
  t.equal(stack.directory.listUsers().find((user) => user.id === carol.id)!.role, 'user', 'the directory follows')
  t.match((await bearer(stack, token)).body, { role: 'user' }, 'the token that still says admin, as a Bearer: not admin')
  t.ok(events.some((event) => event.outcome === 'ok' && event.changed?.includes('role') && event.changed.includes('groups')), 'the event names what followed')
  t.match(stack.logs.join(''), /"changed":\["role","groups"\]/)

  stack.idp.setGroups('carol', ['/kc-admins'])
  const promoted = await poll(async () => await bearer(stack, token), (answer) => answer.body.role === 'admin')
  t.match(promoted.at(-1)!.body, { role: 'admin' }, 'promoted again, the same token is admin again')
})

t.test('follows user survives the end of the Keycloak SSO session; follows sso_session does not', async (t) => {
  const user = await followStack(t)
  const sso = await followStack(t, { env: { [`${KC}session__follows`]: 'sso_session' } })
  const onUser = (await user.login('bob')).agent
  const onSso = (await sso.login('bob')).agent
  user.idp.endSsoSessions('bob')
  sso.idp.endSsoSessions('bob')
  const ssoAnswers = await poll(async () => await me(sso, onSso), ended)
  t.ok(isSessionEnded(ssoAnswers.at(-1)!), 'sso_session: ended with the SSO session ("Session not active")')
  t.match(sso.logs.join(''), /Session not active/)
  // By now the other stack's session has been checked at least once since the SSO session ended.
  await sleep(2 * PERIOD * 1000)
  const kept = await poll(async () => await me(user, onUser), () => true)
  t.equal(kept[0].status, 200, 'user: the offline token keeps the session')
  t.ok(user.idp.refreshLog.some((entry) => entry.outcome === 'ok'), 'after refreshes that Keycloak answered')
})

t.test('Keycloak hung, then answering 503, for several periods: every request 200, at most one slow; a user disabled meanwhile is cut once it is back', async (t) => {
  const stack = await followStack(t, { env: { [`${KC}http_timeout_ms`]: '1500' } })
  const { agent } = await stack.login('bob')
  t.equal((await me(stack, agent)).status, 200)
  stack.idp.setTokenEndpointFault('hang')
  const answers: Answer[] = []
  // Idle past twice the period first, so that the first request must wait for a check.
  await sleep(2.2 * PERIOD * 1000)
  const outageEnds = Date.now() + 5 * PERIOD * 1000
  while (Date.now() < outageEnds) {
    if (Date.now() > outageEnds - 2.5 * PERIOD * 1000) stack.idp.setTokenEndpointFault(503)
    answers.push(await me(stack, agent))
    await sleep(150)
  }
  stack.idp.disableUser('bob')
  t.ok(answers.every((answer) => answer.status === 200), `every request answered 200 (${answers.length})`)
  const slow = answers.filter((answer) => answer.ms > 1000)
  t.ok(slow.length <= 1, `at most one slow (${slow.length}: ${slow.map((answer) => Math.round(answer.ms)).join(', ')} ms)`)
  t.equal(stack.logs.filter((line) => line.includes('Keycloak does not answer refreshes')).length, 1, 'the outage logged once')
  stack.idp.setTokenEndpointFault(undefined)
  const after = await poll(async () => await me(stack, agent), ended, 120)
  t.ok(isSessionEnded(after.at(-1)!), 'back: the user disabled during the outage is cut')
  t.match(stack.logs.join(''), /Keycloak answers refreshes again/)
})

t.test('logout revokes the refresh token at Keycloak; revalidate_sec 0 makes no refresh call at all', async (t) => {
  const stack = await followStack(t)
  const { agent } = await stack.login('bob')
  t.same(stack.idp.sessionsOf('bob'), { online: 1, offline: 1 }, 'follows user: an offline session at Keycloak')
  await agent.request(`${stack.appUrl}/login.logout`, { json: {} })
  await poll(async () => ({ status: stack.idp.revocationLog.length, body: {}, ms: 0 }), (answer) => answer.status > 0)
  t.match(stack.idp.revocationLog, [{ hint: 'refresh_token', outcome: 'revoked' }], 'revoked at the revocation endpoint')
  t.equal(stack.idp.sessionsOf('bob').offline, 0, 'no offline session left behind in Keycloak')

  const off = await startStack({ protectedRoute: true, env: { [`${KC}session__revalidate_sec`]: '0' } })
  t.teardown(off.close)
  const offAgent = (await off.login('bob')).agent
  const authorize = off.idp.hits
  t.ok(authorize.size > 0)
  off.idp.disableUser('bob')
  for (let i = 0; i < 15; i++) {
    t.equal((await me(off, offAgent)).status, 200, 'revalidate_sec 0: the session is independent of Keycloak after login')
    await sleep(200)
  }
  t.strictSame(off.idp.refreshLog, [], 'no refresh call at all')
  await offAgent.request(`${off.appUrl}/login.logout`, { json: {} })
  await sleep(200)
  t.strictSame(off.idp.revocationLog, [], 'and nothing to revoke')
})

t.test('a back-channel logout revokes the refresh tokens of that Keycloak session', async (t) => {
  const stack = await followStack(t, { env: { [`${KC}idp_logout`]: 'true' } })
  const { agent } = await stack.login('bob')
  const logout = await agent.request(`${stack.appUrl}/login.logout`, { json: { redirect_url: `${stack.appUrl}/login` } })
  const redirectUrl = JSON.parse(logout.body).data.redirect_url as string
  await agent.confirmIdpLogout(redirectUrl)
  await poll(async () => ({ status: stack.idp.revocationLog.length, body: {}, ms: 0 }), (answer) => answer.status > 0)
  t.match(stack.idp.revocationLog, [{ hint: 'refresh_token' }], 'the logout revoked it')
})

t.test('rotating refresh tokens, a provider that revokes the family on reuse: bursts of concurrent requests keep the session, one refresh per period', async (t) => {
  const stack = await followStack(t, { idp: { revokeRefreshToken: true, revokeFamilyOnReuse: true } })
  const { agent } = await stack.login('bob')
  const token = session(stack, agent)
  const started = Date.now()
  const statuses = new Map<number, number>()
  for (let burst = 0; burst < 12; burst++) {
    const answers = await Promise.all(Array.from({ length: 25 }, async (_, i) => i % 2 === 0 ? await me(stack, agent) : await bearer(stack, token)))
    for (const answer of answers) statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1)
    await sleep(400)
  }
  const seconds = (Date.now() - started) / 1000
  t.strictSame([...statuses], [[200, 300]], 'every one of 300 requests kept its session')
  const presented = stack.idp.refreshLog.map((entry) => entry.tokenId)
  t.equal(new Set(presented).size, presented.length, `no refresh token presented twice (${presented.length} refreshes)`)
  t.ok(stack.idp.refreshLog.every((entry) => entry.outcome === 'ok'), 'every refresh answered ok')
  t.ok(presented.length >= 2 && presented.length <= Math.ceil(seconds / PERIOD) + 1, `about one refresh per period (${presented.length} in ${seconds.toFixed(1)} s)`)
})

t.test('a login without a refresh token works, is not revalidated, and the setup problem is logged once', async (t) => {
  const stack = await followStack(t, { client: { useRefreshTokens: false } })
  const first = (await stack.login('bob')).agent
  const second = (await stack.login('alice')).agent
  t.equal((await me(stack, first)).status, 200, 'the login works')
  const warnings = stack.logs.filter((line) => line.includes('"code":"no_refresh_token"'))
  t.equal(warnings.length, 1, 'logged once, however many logins')
  t.match(warnings[0], /Use refresh tokens/, 'naming what to turn on in Keycloak')
  stack.idp.disableUser('bob')
  await sleep(2.5 * PERIOD * 1000)
  t.equal((await me(stack, first)).status, 200, 'its session keeps ClearML\'s own lifetime')
  t.equal((await me(stack, second)).status, 200)
  t.strictSame(stack.idp.refreshLog, [], 'no refresh is ever attempted')
})

t.test('with get_info_from_access_token off, the check reads userinfo, and a demotion follows the same way', async (t) => {
  const stack = await followStack(t, { env: { ...ADMIN_GROUPS, [`${KC}get_info_from_access_token`]: 'false' } })
  const { agent } = await stack.login('carol')
  t.match((await me(stack, agent)).body, { role: 'admin' })
  const userinfo = '/realms/clearml/protocol/openid-connect/userinfo'
  const asked = stack.idp.hits.get(userinfo) ?? 0
  stack.idp.setGroups('carol', ['/ml-team'])
  await poll(async () => await me(stack, agent), (answer) => answer.body.role === 'user')
  t.ok((stack.idp.hits.get(userinfo) ?? 0) > asked, 'userinfo was asked at the check')
})

t.test('the ClearML side changed: a user unlinked or a company gone ends the session; a failing directory keeps it', async (t) => {
  const directory = new CountingDirectory()
  seedAcme(directory)
  const stack = await followStack(t, { directory })
  const { agent: bob } = await stack.login('bob')
  const { agent: dave } = await stack.login('dave')
  t.equal((await me(stack, bob)).status, 200)

  // The database fails during the checks: the sessions continue as they were, and the operator is told.
  directory.failing = 'findUserByIdentity'
  await sleep(2.2 * PERIOD * 1000)
  const during = await me(stack, bob)
  t.equal(during.status, 200, 'a failing directory logs no one out')
  await poll(async () => ({ status: stack.logs.filter((line) => line.includes('"code":"revalidation_unconfirmed"')).length, body: {}, ms: 0 }), (answer) => answer.status > 0)
  directory.failing = undefined

  // Dave's ClearML user is linked to another Keycloak subject now (an administrator relinked it).
  const daveUser = directory.listUsers().find((user) => user.email === 'dave@acme.com')!
  const original = directory.findUserByIdentity.bind(directory)
  directory.findUserByIdentity = async (provider, subject) => {
    const found = await original(provider, subject)
    return found?.id === daveUser.id ? null : found
  }
  const daveAnswers = await poll(async () => await me(stack, dave), ended)
  t.ok(isSessionEnded(daveAnswers.at(-1)!), 'unlinked in ClearML: the session ends')
  t.match(stack.logs.join(''), /is no longer linked to Keycloak subject/)

  // Bob's company is gone from the directory.
  const bobUser = directory.listUsers().find((user) => user.email === 'bob@acme.com')!
  const getCompany = directory.getCompany.bind(directory)
  directory.getCompany = async (id) => id === bobUser.company ? null : await getCompany(id)
  const bobAnswers = await poll(async () => await me(stack, bob), ended)
  t.ok(isSessionEnded(bobAnswers.at(-1)!), 'its company gone: the session ends')
})

t.test('logout when the store or Keycloak cannot take it: the logout still answers, and the log says what was left', async (t) => {
  const revocations = new MemoryRevocationStore()
  const stack = await followStack(t, { plugin: { revocations } })
  const { agent } = await stack.login('bob')
  stack.idp.setTokenEndpointFault(503, { grants: ['revocation'] })
  t.equal((await agent.request(`${stack.appUrl}/login.logout`, { json: {} })).status, 200)
  await poll(async () => ({ status: stack.logs.filter((line) => line.includes('Keycloak refresh token not revoked')).length, body: {}, ms: 0 }), (answer) => answer.status > 0)
  t.match(stack.logs.join(''), /the offline session stays in Keycloak until it idles out/)
  stack.idp.setTokenEndpointFault(undefined)

  const again = (await stack.login('alice')).agent
  revocations.takeRefresh = async () => { throw new Error('store unreachable') }
  t.equal((await again.request(`${stack.appUrl}/login.logout`, { json: {} })).status, 200, 'a store that fails does not fail the logout')
  t.match(stack.logs.join(''), /Keycloak refresh token not removed/)
  t.equal((await me(stack, again)).status, 401, 'and the session is logged out')
})

t.test('a host store without the follow capability: refresh tokens stay in the process', async (t) => {
  const memory = new MemoryRevocationStore()
  // Only what every RevocationStore has.
  const bare = { revoke: memory.revoke.bind(memory), isRevoked: memory.isRevoked.bind(memory) }
  const stack = await followStack(t, { plugin: { revocations: bare } })
  const { agent } = await stack.login('bob')
  stack.idp.disableUser('bob')
  const answers = await poll(async () => await me(stack, agent), ended)
  t.ok(isSessionEnded(answers.at(-1)!), 'followed all the same')
})

t.test('the scope asked for: offline_access added once for follows user, not for sso_session', async (t) => {
  const user = await followStack(t, { env: { [`${KC}scope`]: 'openid profile email offline_access' } })
  const sso = await followStack(t, { env: { [`${KC}session__follows`]: 'sso_session' } })
  const scopeOf = async (stack: Stack): Promise<string> => new URL((await stack.browser().request(`${stack.appUrl}/login/keycloak`)).location!).searchParams.get('scope')!
  t.equal(await scopeOf(user), 'openid profile email offline_access', 'already there: not added twice')
  t.equal(await scopeOf(sso), 'openid profile email', 'sso_session: an online token')
  const none = await followStack(t, { env: { [`${KC}session__follows`]: 'sso_session' }, client: { useRefreshTokens: false } })
  await none.login('bob')
  t.notMatch(none.logs.find((line) => line.includes('no_refresh_token')) ?? '', /offline_access/, 'the fix for sso_session does not speak of offline_access')
  t.match(none.logs.find((line) => line.includes('no_refresh_token')) ?? '', /Use refresh tokens/)
})
