/**
 * Refusal logs an operator can act on (SPEC section 11): every refusal of SPEC section 8, caused the
 * way it happens in production, is logged exactly once, at `warn`, with its `code` and a `reason`
 * that names the thing to change (the claim, the setting, the groups and company, the endpoint), and
 * never a token, an authorization code, a secret or a user's address.
 */
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import clearmlKeycloak, { MemoryDirectory } from '../index.js'
import { startHostileIdp } from './helpers/hostile-idp.js'
import { CLIENT_SECRET, KC, KC_SECURE, seedAcme, startStack, TOKEN_SECRET, USERS, type Stack, type StackOptions } from './helpers/stack.js'
import { UserAgent } from './helpers/user-agent.js'

const VARIABLE = (key: string): string => `CLEARML__(?:services|secure)__login__sso__oauth_client__keycloak__${key}`

async function stackFor (t: Test, options: StackOptions = {}): Promise<Stack> {
  const stack = await startStack(options)
  t.teardown(stack.close)
  return stack
}

/** Up to Keycloak's redirect back to the callback; the callback itself is left to the test. */
async function reachCallback (stack: Stack, username: string): Promise<{ agent: UserAgent, callbackUrl: string, code: string }> {
  const agent = new UserAgent()
  const user = USERS.find((u) => u.username === username)!
  const page = await agent.navigate(`${stack.appUrl}/login/keycloak`)
  const stopped = await agent.submitLogin(page, user.username, user.password, { stopAt: (url) => url.startsWith(`${stack.appUrl}/callback_keycloak`) })
  return { agent, callbackUrl: stopped.url, code: new URL(stopped.url).searchParams.get('code') ?? '' }
}

/**
 * What `trigger` logs: exactly one refusal, at warn, with `code` and a reason matching `reason`; and
 * none of the secrets anywhere in the log.
 */
async function refusedOnce (t: Test, logs: string[], code: string, reason: RegExp, trigger: () => Promise<unknown>, secrets: string[] = []): Promise<void> {
  const from = logs.length
  await trigger()
  const lines = logs.slice(from).map((line) => JSON.parse(line) as { level: number, code?: string, reason?: string })
  const refusals = lines.filter((line) => line.code !== undefined)
  t.equal(refusals.length, 1, `${code}: one refusal logged`)
  t.match(refusals[0], { level: 40, code, reason }, `${code}: at warn, the reason names what to change`)
  const everything = logs.join('')
  for (const secret of [CLIENT_SECRET, TOKEN_SECRET, ...secrets].filter((s) => s !== '')) t.notMatch(everything, secret, `${code}: no secret, token, code or address in the log`)
}

t.test('refusals of the signup rules name the domain, the company, the groups and the setting', async (t) => {
  const stack = await stackFor(t)
  const mallory = await reachCallback(stack, 'mallory')
  await refusedOnce(t, stack.logs, 'not_whitelisted',
    new RegExp(`^no whitelist entry for the address or the domain "evil\\.example": add one to the whitelist, or set ${VARIABLE('default_company')}`),
    async () => await mallory.agent.request(mallory.callbackUrl), ['mallory@evil.example', mallory.code])
  const eve = await reachCallback(stack, 'eve')
  await refusedOnce(t, stack.logs, 'email_not_verified',
    new RegExp(`not verified this new user's email \\(domain "acme\\.com"\\).*${VARIABLE('trust_unverified_email')}=true`),
    async () => await eve.agent.request(eve.callbackUrl), ['bob@acme.com', eve.code])

  const typo = await stackFor(t, { env: { [`${KC_SECURE}default_company`]: 'c-typo' } })
  const alice = await reachCallback(typo, 'alice')
  await refusedOnce(t, typo.logs, 'unknown_company', new RegExp(`^${VARIABLE('default_company')} names company "c-typo", which the directory does not have`),
    async () => await alice.agent.request(alice.callbackUrl))

  const prohibit = await stackFor(t, {
    env: { [`${KC}groups__enabled`]: 'true', [`${KC}groups__prohibit_user_signup_if_not_in_group`]: 'true' },
    // Acme without its ClearML groups: bob's Keycloak groups match nothing there.
    seed: (directory) => { directory.addCompany({ id: 'c-acme', name: 'Acme' }); directory.addWhitelistEntry({ domain: 'acme.com', company: 'c-acme' }) }
  })
  const bob = await reachCallback(prohibit, 'bob')
  await refusedOnce(t, prohibit.logs, 'no_matching_group',
    new RegExp(`^${VARIABLE('groups__prohibit_user_signup_if_not_in_group')} is on and none of the user's Keycloak groups "/ml-team", "/research/data-science" is a ClearML group of "Acme" \\(c-acme\\)`),
    async () => await bob.agent.request(bob.callbackUrl))
  const dave = await reachCallback(prohibit, 'dave')
  await refusedOnce(t, prohibit.logs, 'no_matching_group', /the user has no Keycloak groups in the "groups" claim .*Group Membership mapper/,
    async () => await dave.agent.request(dave.callbackUrl))
})

t.test('missing_claim names the claim and the setting that asks for it', async (t) => {
  const stack = await stackFor(t, { env: { [`${KC}claims__user_id`]: 'employee_number' } })
  const { agent, callbackUrl } = await reachCallback(stack, 'alice')
  await refusedOnce(t, stack.logs, 'missing_claim', new RegExp(`^the token has no "employee_number" claim, which ${VARIABLE('claims__user_id')} names as the user id`),
    async () => await agent.request(callbackUrl))
})

t.test('invalid_state and idp_error say where the callback went wrong', async (t) => {
  const stack = await stackFor(t)
  const { callbackUrl, code } = await reachCallback(stack, 'alice')
  await refusedOnce(t, stack.logs, 'invalid_state', /^no login transaction for this state in this browser/,
    async () => await new UserAgent().request(callbackUrl), [code])

  const mixedUp = await reachCallback(stack, 'alice')
  const url = new URL(mixedUp.callbackUrl)
  url.searchParams.set('iss', 'https://evil.example/realms/clearml')
  await refusedOnce(t, stack.logs, 'invalid_state',
    new RegExp(`iss parameter is not ${VARIABLE('base_url')} \\(${stack.idp.issuer.replace(/\./g, '\\.')}\\): if every login fails so, set it to the issuer Keycloak announces`),
    async () => await mixedUp.agent.request(url.href))

  const agent = new UserAgent()
  const state = new URL((await agent.request(`${stack.appUrl}/login/keycloak`)).location!).searchParams.get('state')!
  await refusedOnce(t, stack.logs, 'idp_error', /^Keycloak answered error access_denied \(the user cancelled at Keycloak/,
    async () => await agent.request(`${stack.appUrl}/callback_keycloak?error=access_denied&state=${state}`), [state])
})

t.test('token_exchange_failed names the client credentials to compare, not the secret', async (t) => {
  const wrongSecret = 'a-client-secret-keycloak-does-not-know'
  const stack = await stackFor(t, { env: { [`${KC_SECURE}client_secret`]: `"${wrongSecret}"` } })
  const { agent, callbackUrl, code } = await reachCallback(stack, 'alice')
  await refusedOnce(t, stack.logs, 'token_exchange_failed',
    new RegExp(`HTTP 401, error invalid_client \\(Keycloak does not accept the client's credentials: compare ${VARIABLE('client_id')} and ${VARIABLE('client_secret')}`),
    async () => await agent.request(callbackUrl), [wrongSecret, code])
})

t.test('invalid_token names the check and the setting', async (t) => {
  const stack = await stackFor(t, { env: { [`${KC}algorithms`]: '["ES256"]' } })
  const { agent, callbackUrl, code } = await reachCallback(stack, 'alice')
  await refusedOnce(t, stack.logs, 'invalid_token',
    new RegExp(`^ID token rejected: ERR_JOSE_ALG_NOT_ALLOWED: it is signed with an algorithm not in ${VARIABLE('algorithms')} \\(ES256\\)`),
    async () => await agent.request(callbackUrl), [code])
})

t.test('userinfo_mismatch names the userinfo endpoint setting', async (t) => {
  const idp = await startHostileIdp()
  const logs: string[] = []
  const app = Fastify({ logger: { level: 'info', stream: { write: (line: string) => { logs.push(line) } } } })
  const directory = new MemoryDirectory()
  seedAcme(directory)
  await app.register(clearmlKeycloak, {
    directory,
    webappUrl: 'https://clearml.example.com',
    env: {
      [`${KC}base_url`]: idp.issuer,
      [`${KC}get_info_from_access_token`]: 'false',
      [`${KC_SECURE}client_id`]: 'clearml',
      [`${KC_SECURE}client_secret`]: CLIENT_SECRET,
      CLEARML__secure__auth__token_secret: TOKEN_SECRET
    }
  })
  t.teardown(async () => { await app.close(); await idp.close() })
  idp.userinfo = () => ({ sub: 'someone-else', email: 'ann@acme.com' })
  const start = await app.inject({ method: 'GET', url: '/login/keycloak' })
  const authorize = new URL(start.headers.location as string)
  idp.nonce = authorize.searchParams.get('nonce')!
  const cookie = (start.headers['set-cookie'] as string).split(';')[0]
  await refusedOnce(t, logs, 'userinfo_mismatch', new RegExp(`^userinfo's sub differs from the token's: ${VARIABLE('userinfo_url')} \\(or discovery's userinfo_endpoint\\) must be this realm's`),
    async () => await app.inject({ method: 'GET', url: `/callback_keycloak?code=the-code&state=${authorize.searchParams.get('state')!}`, headers: { cookie } }), ['the-code'])
})

t.test('idp_unavailable names the endpoint it could not reach', async (t) => {
  const stack = await stackFor(t)
  const { agent, callbackUrl, code } = await reachCallback(stack, 'alice')
  await stack.idp.close()
  await refusedOnce(t, stack.logs, 'idp_unavailable',
    new RegExp(`^token endpoint could not be reached at ${stack.idp.issuer.replace(/\./g, '\\.')}/protocol/openid-connect/token: check that this server resolves and reaches`),
    async () => await agent.request(callbackUrl), [code])
})

t.test('directory_error names the method and the database\'s error code, never its message', async (t) => {
  const directory = new MemoryDirectory()
  seedAcme(directory)
  directory.findUserByIdentity = async () => {
    throw Object.assign(new Error('connect ECONNREFUSED db.internal:5432 (postgres://clearml:hunter2@db.internal)'), { code: 'ECONNREFUSED' })
  }
  const stack = await stackFor(t, { plugin: { directory } })
  const { agent, callbackUrl } = await reachCallback(stack, 'alice')
  await refusedOnce(t, stack.logs, 'directory_error', /^directory\.findUserByIdentity failed \(ECONNREFUSED\): the host's UserDirectory threw; check its database/,
    async () => await agent.request(callbackUrl), ['hunter2', 'db.internal'])
})

t.test('bad_request says what was wrong with the request', async (t) => {
  const stack = await stackFor(t)
  await refusedOnce(t, stack.logs, 'bad_request', /^provider must be "keycloak"/, async () => await fetch(`${stack.appUrl}/login.sso_authorize`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ provider: 'github' })
  }))
})
