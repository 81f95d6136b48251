/**
 * Findings 1 and 5 of the third security review (issue #22, docs/security.md "Review findings
 * (issue #22)"), each through the real flow against the Keycloak-like provider over HTTP: the attack
 * as the reviewer ran it, refused now, and the legitimate use beside it still working. (Findings 2
 * and 6 are in test/redis.test.ts, 3 in test/explain.test.ts, 4 in test/units.test.ts, 7 in
 * test/doctor.test.ts.)
 */
import t from 'tap'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { MemoryRevocationStore } from '../index.js'
import { CountingDirectory } from './helpers/counting-directory.js'
import { seedAcme, startStack, type Stack } from './helpers/stack.js'
import { obtainTokens } from './helpers/tokens.js'
import type { UserAgent } from './helpers/user-agent.js'

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

/** Heap in use once the collector has run: what the process retains. */
function retainedHeap (): number {
  gc()
  gc()
  return process.memoryUsage().heapUsed
}

/** `count` spellings of a compact JWS that decoders read as the same token: spaces placed differently inside its signature. */
function spellings (token: string, count: number, spaces: number): string[] {
  const dot = token.lastIndexOf('.')
  const [head, signature] = [token.slice(0, dot + 1), token.slice(dot + 1)]
  return Array.from({ length: count }, (_, i) => {
    // A different spread of the spaces for each spelling: `i + 1` of them after the first character, the
    // rest evenly after the others but the last.
    const rest = Math.floor(Math.max(0, spaces - i) / (signature.length - 2))
    return head + [...signature].map((char, at) => char + ' '.repeat(at === 0 ? i + 1 : at === signature.length - 1 ? 0 : rest)).join('')
  })
}

const sessionCookie = (stack: Stack, agent: UserAgent): string => agent.cookies(stack.appUrl).get('clearml_token_basic')!

/**
 * Another login of a browser that logged in before: straight back while Keycloak's SSO session
 * lasts, else through the password form (a logout revokes the session's refresh token, and Keycloak
 * removes an SSO session left without clients).
 */
async function loginAgain (stack: Stack, agent: UserAgent, username: string): Promise<void> {
  const page = await agent.navigate(`${stack.appUrl}/login/keycloak`)
  if (page.url.startsWith(stack.appUrl)) return
  const user = stack.idp.users.find((candidate) => candidate.username === username)!
  await agent.submitLogin(page, user.username, user.password)
}

async function status (stack: Stack, token: string): Promise<number> {
  return (await fetch(`${stack.appUrl}/me`, { headers: { authorization: `Bearer ${token}` } })).status
}

t.test('1. one session token has one spelling: other spellings are refused and cost the cache nothing', async (t) => {
  const stack = await startStack({ protectedRoute: true })
  t.teardown(stack.close)
  const live = sessionCookie(stack, (await stack.login('alice')).agent)
  const { agent: leaving } = await stack.login('bob')
  const loggedOut = sessionCookie(stack, leaving)
  t.equal((await leaving.request(`${stack.appUrl}/login.logout`, { json: {} })).status, 200, 'bob logs out')
  t.equal(await status(stack, loggedOut), 401, 'his session is refused')
  t.equal(await status(stack, live), 200, 'alice\'s is accepted')

  const sessions = stack.app.keycloak.sso.sessions
  // Warmed up first (connections, compiled code), so that what is measured is what the spellings leave.
  for (const spelling of spellings(live, 200, 4000)) await status(stack, spelling)
  stack.logs.length = 0
  const cachedBefore = sessions.cacheSize
  const heapBefore = retainedHeap()
  for (const token of [live, loggedOut]) {
    const answers = new Set<number>()
    // 1,500 spellings each, 4,000 spaces inside the signature: every one a token jose would decode.
    for (const spelling of spellings(token, 1500, 4000)) answers.add(await status(stack, spelling))
    t.strictSame([...answers], [401], `every spelling of the ${token === live ? 'live' : 'logged-out'} token is refused`)
  }
  // The refusals' log lines are the test's own record of them, not the plugin's.
  stack.logs.length = 0
  const grown = retainedHeap() - heapBefore
  t.equal(sessions.cacheSize, cachedBefore, 'and none of them entered the session cache')
  t.ok(grown < 8 * 1024 * 1024, `the process retains under 8 MB more after 3,000 of them (before the fix: 2,800 cache entries, 16 MB) (${(grown / 1024 / 1024).toFixed(2)} MB)`)
  t.equal(await status(stack, live), 200, 'the token as issued still works')
  t.equal(await status(stack, loggedOut), 401, 'the logged-out one is still refused')
})

t.test('1. a logged-out session is never admitted into the cache', async (t) => {
  const stack = await startStack({ protectedRoute: true })
  t.teardown(stack.close)
  const { agent } = await stack.login('alice')
  const token = sessionCookie(stack, agent)
  await agent.request(`${stack.appUrl}/login.logout`, { json: {} })
  const sessions = stack.app.keycloak.sso.sessions
  t.equal(await status(stack, token), 401)
  t.notOk(sessions.isCached(token), 'refused, and not in the cache')
  t.equal(await status(stack, token), 401, 'refused again')
  t.notOk(sessions.isCached(token), 'and still not cached')
})

t.test('1. spellings of one Keycloak access token cost no directory look-up', async (t) => {
  const directory = new CountingDirectory()
  seedAcme(directory)
  const stack = await startStack({ protectedRoute: true, directory, plugin: { bearer: { keycloak: true, provision: true } } })
  t.teardown(stack.close)
  const { access_token: accessToken } = await obtainTokens(stack, 'bob')
  t.equal(await status(stack, accessToken), 200, 'the token as Keycloak wrote it is accepted (provisioned)')
  const lookups = directory.calls.length
  const answers = new Set<number>()
  for (const spelling of spellings(accessToken, 300, 8)) answers.add(await status(stack, spelling))
  t.strictSame([...answers], [401], 'every other spelling is refused')
  t.equal(directory.calls.length - lookups, 0, 'without asking the directory (before: one look-up and the login rules per spelling)')
  t.equal(await status(stack, accessToken), 200)
})

t.test('5. one user cycling through logins and logouts logs only themself out of a bounded memory store', async (t) => {
  const revocations = new MemoryRevocationStore({ max: 20 })
  const stack = await startStack({ protectedRoute: true, plugin: { revocations } })
  t.teardown(stack.close)
  const bob = sessionCookie(stack, (await stack.login('bob')).agent)
  const { agent } = await stack.login('alice')
  const revoked: string[] = []
  for (let cycle = 0; cycle < 60; cycle++) {
    if (cycle > 0) await loginAgain(stack, agent, 'alice')
    revoked.push(sessionCookie(stack, agent))
    await agent.request(`${stack.appUrl}/login.logout`, { json: {} })
  }
  t.equal(new Set(revoked).size, 60, '60 sessions, each logged out')
  t.ok(revocations.size <= 20, 'the store kept to its bound')
  const alice = stack.directory.listUsers().find((user) => user.email === 'alice@acme.com')!
  t.ok(revocations.refusedUntilFor(alice.id) > 0, 'it had to forget some of alice\'s revocations')
  t.equal(revocations.refusedUntil, Number.NEGATIVE_INFINITY, 'and never refused everyone')
  t.equal(await status(stack, bob), 200, 'bob is still logged in (before: everyone had to log in again)')
  const answers = new Set<number>()
  for (const token of revoked) answers.add(await status(stack, token))
  t.strictSame([...answers], [401], 'every one of alice\'s 60 logged-out sessions is refused')
  // Sessions are dated to the second: the one in which the store forgot is refused with what it forgot.
  const forgotAt = revocations.refusedUntilFor(alice.id)
  while (Date.now() / 1000 < forgotAt + 1) await new Promise((resolve) => setTimeout(resolve, 50))
  await loginAgain(stack, agent, 'alice')
  t.equal(await status(stack, sessionCookie(stack, agent)), 200, 'and alice logs in again')
})
