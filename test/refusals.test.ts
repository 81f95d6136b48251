/**
 * The refusals of SPEC section 8 that a user can reach through the real flow: each with its code,
 * and with no user, no group change and no session cookie as a result.
 */
import t, { type Test } from 'tap'
import { KC, startStack, type Stack, USERS } from './helpers/stack.js'
import { UserAgent } from './helpers/user-agent.js'

const isCallback = (stack: Stack) => (url: string) => url.startsWith(`${stack.appUrl}/callback_keycloak`)

async function reachCallback (stack: Stack, username: string, agent = new UserAgent()): Promise<{ agent: UserAgent, callbackUrl: string }> {
  const user = USERS.find((u) => u.username === username)!
  const page = await agent.navigate(`${stack.appUrl}/login/keycloak`)
  const stopped = await agent.submitLogin(page, user.username, user.password, { stopAt: isCallback(stack) })
  return { agent, callbackUrl: stopped.url }
}

/** The callback answer must be the login page with the code, and must leave no trace. */
function assertRefused (t: Test, stack: Stack, answer: { status: number, location?: string, setCookies: string[] }, code: string): void {
  t.equal(answer.status, 302)
  t.equal(answer.location, `${stack.appUrl}/login?sso_error=${code}`, `refused with ${code}`)
  t.notOk(answer.setCookies.some((c) => /^clearml_token_basic=[^;]/.test(c)), 'no session cookie')
  t.strictSame(stack.directory.listUsers(), [], 'no user created')
  t.match(stack.logs.join(''), `"code":"${code}"`, 'the reason is in the log')
}

t.test('not whitelisted: a user from another domain is refused', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const { agent, callbackUrl } = await reachCallback(stack, 'mallory')
  assertRefused(t, stack, await agent.request(callbackUrl), 'not_whitelisted')
})

t.test('unknown company: default_company names no company', async (t) => {
  const stack = await startStack({ env: { CLEARML__secure__login__sso__oauth_client__keycloak__default_company: 'c-typo' } })
  t.teardown(stack.close)
  const { agent, callbackUrl } = await reachCallback(stack, 'alice')
  assertRefused(t, stack, await agent.request(callbackUrl), 'unknown_company')
})

t.test('no matching group: prohibit flag and a user in no ClearML group', async (t) => {
  const stack = await startStack({ env: { [`${KC}groups__enabled`]: 'true', [`${KC}groups__prohibit_user_signup_if_not_in_group`]: 'true' } })
  t.teardown(stack.close)
  const { agent, callbackUrl } = await reachCallback(stack, 'dave')
  assertRefused(t, stack, await agent.request(callbackUrl), 'no_matching_group')
  const bob = await reachCallback(stack, 'bob')
  t.equal((await bob.agent.request(bob.callbackUrl)).location, `${stack.appUrl}/`, 'a user in ml-team is admitted')
})

t.test('missing claim: claims.user_id names a claim Keycloak does not send', async (t) => {
  const stack = await startStack({ env: { [`${KC}claims__user_id`]: 'employee_number' } })
  t.teardown(stack.close)
  const { agent, callbackUrl } = await reachCallback(stack, 'alice')
  assertRefused(t, stack, await agent.request(callbackUrl), 'missing_claim')
})

t.test('invalid state: replayed callback, tampered or missing state, no transaction cookie', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const { agent, callbackUrl } = await reachCallback(stack, 'alice')
  const cookieName = [...agent.cookies(stack.appUrl).keys()].find((n) => n.startsWith('clearml_kc_tx_'))!
  const sealed = agent.cookies(stack.appUrl).get(cookieName)!

  const tampered = new URL(callbackUrl)
  tampered.searchParams.set('state', 'x' + tampered.searchParams.get('state')!.slice(1))
  assertRefused(t, stack, await agent.request(tampered.href), 'invalid_state')

  const noState = new URL(callbackUrl)
  noState.searchParams.delete('state')
  assertRefused(t, stack, await agent.request(noState.href), 'invalid_state')

  const stranger = new UserAgent()
  assertRefused(t, stack, await stranger.request(callbackUrl), 'invalid_state')

  t.equal((await agent.request(callbackUrl)).location, `${stack.appUrl}/`, 'the real callback still works once')
  const [user] = stack.directory.listUsers()
  // Replay: the same callback with the same (re-sent) transaction cookie.
  const replayer = new UserAgent()
  replayer.setCookie(stack.appUrl, cookieName, sealed)
  const replay = await replayer.request(callbackUrl)
  t.equal(replay.location, `${stack.appUrl}/login?sso_error=invalid_state`)
  t.notOk(replay.setCookies.some((c) => /^clearml_token_basic=[^;]/.test(c)))
  t.strictSame(stack.directory.listUsers(), [user])

  const garbled = new UserAgent()
  garbled.setCookie(stack.appUrl, cookieName, sealed.slice(0, -4) + 'AAAA')
  t.equal((await garbled.request(callbackUrl)).location, `${stack.appUrl}/login?sso_error=invalid_state`, 'a tampered cookie')

  const bob = await reachCallback(stack, 'bob')
  const noCode = new URL(bob.callbackUrl)
  noCode.searchParams.delete('code')
  t.equal((await bob.agent.request(noCode.href)).location, `${stack.appUrl}/login?sso_error=invalid_state`, 'a callback without a code')
  t.strictSame(stack.directory.listUsers(), [user])
})

t.test('RFC 9207: an iss parameter naming another issuer is refused', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const { agent, callbackUrl } = await reachCallback(stack, 'alice')
  const mixedUp = new URL(callbackUrl)
  mixedUp.searchParams.set('iss', 'https://evil.example/realms/clearml')
  assertRefused(t, stack, await agent.request(mixedUp.href), 'invalid_state')
})

t.test('Keycloak reports an error (the user cancelled): idp_error', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const agent = new UserAgent()
  const start = await agent.request(`${stack.appUrl}/login/keycloak`)
  const state = new URL(start.location!).searchParams.get('state')!
  const cancelled = `${stack.appUrl}/callback_keycloak?error=access_denied&error_description=User+cancelled&state=${state}`
  assertRefused(t, stack, await agent.request(cancelled), 'idp_error')
  assertRefused(t, stack, await agent.request(`${stack.appUrl}/callback_keycloak?error=<script>`), 'idp_error')
  t.notMatch(stack.logs.join(''), '<script>', 'an odd error value is not logged as is')
})

t.test('token exchange refused: a code redeemed twice', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const first = await reachCallback(stack, 'alice')
  t.equal((await first.agent.request(first.callbackUrl)).location, `${stack.appUrl}/`)
  const usedCode = new URL(first.callbackUrl).searchParams.get('code')!
  const before = stack.directory.listUsers()
  // A fresh transaction, but the old code: Keycloak refuses it (invalid_grant).
  const second = await reachCallback(stack, 'bob')
  const forged = new URL(second.callbackUrl)
  forged.searchParams.set('code', usedCode)
  const answer = await second.agent.request(forged.href)
  t.equal(answer.location, `${stack.appUrl}/login?sso_error=token_exchange_failed`)
  t.notOk(answer.setCookies.some((c) => /^clearml_token_basic=[^;]/.test(c)))
  t.strictSame(stack.directory.listUsers(), before, 'bob was not created')
  t.notMatch(stack.logs.join(''), usedCode, 'the code is not logged')
})

t.test('Keycloak down at the callback: idp_unavailable, and the server keeps answering', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const { agent, callbackUrl } = await reachCallback(stack, 'alice')
  await stack.idp.close()
  assertRefused(t, stack, await agent.request(callbackUrl), 'idp_unavailable')
  const modes = await fetch(`${stack.appUrl}/login.supported_modes`, { method: 'POST' })
  t.equal(modes.status, 200)
})

t.test('JSON routes answer refusals in the envelope with the HTTP status of SPEC 8', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  const post = async (path: string, body: unknown): Promise<{ status: number, body: any }> => {
    const response = await fetch(`${stack.appUrl}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    return { status: response.status, body: await response.json() }
  }
  const rows: Array<[string, string, unknown, number, string]> = [
    ['callback without a transaction', '/login.sso_callback', { provider: 'keycloak', args: { code: 'c', state: 's' } }, 400, 'invalid_state'],
    ['callback with Keycloak\'s error', '/login.sso_callback', { provider: 'keycloak', args: { error: 'access_denied' } }, 401, 'idp_error'],
    ['callback without args', '/login.sso_callback', { provider: 'keycloak' }, 400, 'bad_request'],
    ['another provider', '/login.sso_authorize', { provider: 'github' }, 400, 'bad_request'],
    ['callback_url on another origin', '/login.sso_authorize', { provider: 'keycloak', callback_url: 'https://evil.example/callback_keycloak' }, 400, 'bad_request'],
    ['a wrongly typed field', '/login.sso_callback', { provider: 'keycloak', args: { code: 42 } }, 400, 'bad_request']
  ]
  for (const [name, path, body, status, code] of rows) {
    const answer = await post(path, body)
    t.equal(answer.status, status, `${name}: HTTP ${status}`)
    t.match(answer.body, { meta: { result_code: status, result_msg: code }, data: { error: code } }, `${name}: ${code}`)
  }
  const notJson = await fetch(`${stack.appUrl}/login.sso_callback`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"args":' })
  t.equal(notJson.status, 400)
  t.match(await notJson.json(), { data: { error: 'bad_request' } })
  t.strictSame(stack.directory.listUsers(), [])
})
