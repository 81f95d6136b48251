/**
 * `fastify.keycloak.explain` and `POST /login.sso_explain` (SPEC section 11): for every refusal of
 * steps 5–8 and for promotion, demotion, linking and group sync, the explanation is the decision the
 * login then makes (same outcome, reason, role, groups and user), explain reads exactly what the login
 * reads and writes nothing, and the route answers admins only.
 */
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import clearmlKeycloak, { SsoError, type Claims, type Identity, type LoginResult } from '../index.js'
import type { Explanation, ExplainInput } from '../lib/rules/explain.js'
import { companyView } from '../lib/directory/company-view.js'
import { CountingDirectory, WRITES } from './helpers/counting-directory.js'
import { startHostileIdp } from './helpers/hostile-idp.js'
import { KC, KC_SECURE, seedAcme, startStack, type Stack } from './helpers/stack.js'
import { obtainTokens } from './helpers/tokens.js'

const BASE_ENV = {
  [`${KC}base_url`]: 'https://kc.example.com/realms/clearml',
  [`${KC_SECURE}client_id`]: 'clearml',
  [`${KC_SECURE}client_secret`]: 'explain-client-secret',
  CLEARML__secure__auth__token_secret: 'explain-token-secret-of-at-least-32-bytes',
  [`${KC}groups__enabled`]: 'true',
  [`${KC}groups__admins`]: '["kc-admins"]'
}

type Env = Record<string, string | undefined>

function acme (seed?: (directory: CountingDirectory) => void | Promise<void>): () => Promise<CountingDirectory> {
  return async () => {
    const directory = new CountingDirectory()
    seedAcme(directory)
    await seed?.(directory)
    directory.calls = []
    return directory
  }
}

async function withPlugin (t: Test, env: Env, directory: CountingDirectory): Promise<FastifyInstance> {
  const merged: Record<string, string> = {}
  for (const [name, value] of Object.entries({ ...BASE_ENV, ...env })) if (value !== undefined) merged[name] = value
  const app = Fastify()
  await app.register(clearmlKeycloak, { directory, webappUrl: 'https://clearml.example.com', env: merged })
  t.teardown(async () => { await app.close() })
  return app
}

const claims = (over: Claims = {}): Claims => ({
  sub: 'kc-ann', email: 'ann@acme.com', email_verified: true, preferred_username: 'ann', given_name: 'Ann', family_name: 'Example', name: 'Ann Example', groups: ['/ml-team'], ...over
})

/**
 * Explains `input`, then logs it in on the same directory, and checks they agree: the login's
 * outcome, reason, user, role and group changes are the explanation's, explain read exactly what the
 * login read, and wrote nothing.
 */
async function explainThenLogin (t: Test, app: FastifyInstance, directory: CountingDirectory, input: ExplainInput, label: string): Promise<{ explanation: Explanation, result?: LoginResult }> {
  directory.calls = []
  const explanation = await app.keycloak.explain(input)
  const explainCalls = directory.calls
  t.strictSame(explainCalls.filter((method) => WRITES.includes(method)), [], `${label}: explain writes nothing`)
  directory.calls = []
  let result: LoginResult | undefined
  let error: unknown
  try {
    result = await app.keycloak.login(input as Claims)
  } catch (err) {
    error = err
  }
  t.strictSame(explainCalls, directory.calls.filter((method) => !WRITES.includes(method)), `${label}: explain reads what the login reads`)
  if (explanation.outcome === 'ok') {
    t.equal(error, undefined, `${label}: the login goes through`)
    t.equal(result!.created, explanation.user.status === 'new', `${label}: created as explained`)
    if (explanation.user.id !== undefined) t.equal(result!.user.id, explanation.user.id, `${label}: the user explained`)
    t.equal(result!.role, explanation.role.after, `${label}: role as explained`)
    t.strictSame(result!.groups, { added: explanation.groups.add, removed: explanation.groups.remove }, `${label}: groups as explained`)
  } else {
    t.ok(error instanceof SsoError, `${label}: the login is refused`)
    t.equal((error as SsoError).code, explanation.outcome, `${label}: with the explained code`)
    t.equal((error as SsoError).message, explanation.reason, `${label}: and the explained reason`)
    t.strictSame(directory.writes(), [], `${label}: the refused login writes nothing either`)
  }
  return { explanation, result }
}

interface Row {
  name: string
  env?: Env
  seed?: (directory: CountingDirectory) => void | Promise<void>
  input: Claims
  expect: (t: Test, explanation: Explanation, directory: CountingDirectory) => void | Promise<void>
}

const existingUser = (fields: { role: string, name?: string, company?: string }) => (directory: CountingDirectory) => {
  directory.addUser({ company: fields.company ?? 'c-acme', name: fields.name ?? 'Ann Example', email: 'ann@acme.com', role: fields.role, givenName: 'Ann', familyName: 'Example' }, { provider: 'keycloak', subject: 'kc-ann' })
}

const refusals: Row[] = [
  {
    name: 'not_whitelisted: a domain without a whitelist entry',
    input: claims({ sub: 'kc-mallory', email: 'mallory@evil.example' }),
    expect: (t, e) => {
      t.match(e, { outcome: 'not_whitelisted', user: { status: 'refused' }, signup: { admit: false, code: 'not_whitelisted' }, role: { after: null } })
      t.match(e.reason, /no whitelist entry for the address or the domain "evil\.example".*default_company/)
      t.notMatch(e.reason, 'mallory@', 'the domain, not the address')
      t.match(e.user.reason, /no user has Keycloak subject "kc-mallory" or the verified email/)
    }
  },
  {
    name: 'not_whitelisted: no email claim',
    input: claims({ email: undefined }),
    expect: (t, e) => {
      t.match(e, { outcome: 'not_whitelisted', user: { status: 'refused', reason: /no email to link by/ } })
      t.match(e.reason, /no "email" claim \(CLEARML__services__login__sso__oauth_client__keycloak__claims__email\)/)
    }
  },
  {
    name: 'email_not_verified: an unverified email is not looked up',
    input: claims({ email_verified: false }),
    expect: (t, e) => {
      t.match(e, { outcome: 'email_not_verified', user: { status: 'refused', reason: /email is not verified/ }, signup: { admit: false } })
      t.match(e.reason, /not verified this new user's email \(domain "acme\.com"\).*trust_unverified_email=true/)
    }
  },
  {
    name: 'unknown_company: default_company names no company',
    env: { [`${KC_SECURE}default_company`]: 'c-typo' },
    input: claims(),
    expect: (t, e) => {
      t.match(e, { outcome: 'unknown_company', signup: { admit: false, company: 'c-typo', code: 'unknown_company' } })
      t.match(e.reason, /default_company names company "c-typo", which the directory does not have: create it, or correct the setting/)
    }
  },
  {
    name: 'unknown_company: a whitelist entry names a company that is gone',
    seed: (d) => { d.addWhitelistEntry({ domain: 'ghost.com', company: 'c-ghost' }) },
    input: claims({ email: 'casper@ghost.com' }),
    expect: (t, e) => {
      t.match(e, { outcome: 'unknown_company', signup: { company: 'c-ghost' } })
      t.match(e.reason, /the whitelist entry for the address or the domain "ghost\.com" names company "c-ghost".*correct the entry/)
    }
  },
  {
    name: 'unknown_company: a returning user whose company is gone',
    seed: existingUser({ role: 'admin', company: 'c-gone' }),
    input: claims(),
    expect: (t, e) => {
      t.match(e, { outcome: 'unknown_company', user: { status: 'found' }, role: { before: 'admin', after: 'admin' } })
      t.notOk('signup' in e, 'no signup for a returning user')
      t.match(e.reason, /belongs to company "c-gone", which the directory does not have/)
    }
  },
  {
    name: 'no_matching_group: none of the claimed groups is a ClearML group',
    env: { [`${KC}groups__prohibit_user_signup_if_not_in_group`]: 'true' },
    input: claims({ groups: ['/marketing', '/sales/emea'] }),
    expect: (t, e) => {
      t.match(e, { outcome: 'no_matching_group', signup: { admit: false, company: 'c-acme' }, groups: { add: [], unknown: ['/marketing', '/sales/emea'] } })
      t.match(e.reason, /prohibit_user_signup_if_not_in_group is on and none of the user's Keycloak groups "\/marketing", "\/sales\/emea" is a ClearML group of "Acme" \(c-acme\)/)
    }
  },
  {
    name: 'no_matching_group: a user in many groups, named in part',
    env: { [`${KC}groups__prohibit_user_signup_if_not_in_group`]: 'true' },
    input: claims({ groups: Array.from({ length: 11 }, (_, i) => `/projects/p${i}`) }),
    expect: (t, e) => {
      t.equal(e.groups.unknown.length, 11, 'every unknown group in the explanation')
      t.match(e.reason, /"\/projects\/p0", .*"\/projects\/p7" and 3 more is a ClearML group/, 'eight of them in the reason')
    }
  },
  {
    name: 'no_matching_group: no groups at all',
    env: { [`${KC}groups__prohibit_user_signup_if_not_in_group`]: 'true' },
    input: claims({ groups: [] }),
    expect: (t, e) => {
      t.match(e, { outcome: 'no_matching_group' })
      t.match(e.reason, /no Keycloak groups in the "groups" claim .*Group Membership mapper/)
    }
  }
]

const decisions: Row[] = [
  {
    name: 'a new user: admitted by the whitelist, groups synced, groups unknown to ClearML named',
    input: claims({ groups: ['/ml-team', '/research/data-science', '/not-in-clearml'] }),
    expect: (t, e) => {
      t.match(e, {
        outcome: 'ok',
        user: { status: 'new' },
        signup: { admit: true, company: 'c-acme', reason: /admitted into "Acme" \(c-acme\) by the whitelist entry for the address or the domain "acme\.com", as "user"/ },
        role: { after: 'user', rule: /kept "user"/ },
        groups: { remove: [], unknown: ['/not-in-clearml'], reason: /memberships in "Acme" \(c-acme\) become the claimed groups/ },
        profile: { name: { after: 'Ann Example' }, email: { after: 'ann@acme.com' }, givenName: { after: 'Ann' } }
      })
      t.strictSame([...e.groups.add].sort(), ['data-science', 'ml-team'])
      t.match(e.reason, /^creates a user in company c-acme; joins/)
      t.notOk('id' in e.user, 'no id before the user exists')
    }
  },
  {
    name: 'default_company admits a new user',
    env: { [`${KC_SECURE}default_company`]: 'c-acme', [`${KC}groups__admins`]: undefined },
    input: claims({ sub: 'kc-zed', email: 'zed@anywhere.org', groups: [] }),
    expect: (t, e) => {
      t.match(e, { outcome: 'ok', signup: { admit: true, company: 'c-acme', reason: /by CLEARML__secure__login__sso__oauth_client__keycloak__default_company/ } })
      t.match(e.role.rule, /Keycloak does not manage the role: the claims carry no roles .*groups__admins is empty; a new user gets "user" \(every new user starts as "user"\)/)
    }
  },
  {
    name: 'group names matched without case when groups.case_sensitive is off',
    env: { [`${KC}groups__case_sensitive`]: 'false' },
    input: claims({ groups: ['/ML-Team', '/Data-Science', '/Sales'] }),
    expect: (t, e) => {
      t.strictSame([...e.groups.add].sort(), ['data-science', 'ml-team'])
      t.strictSame(e.groups.unknown, ['/Sales'])
    }
  },
  {
    name: 'promotion by the realm role',
    seed: existingUser({ role: 'user' }),
    input: claims({ realm_access: { roles: ['offline_access', 'admin'] } }),
    expect: (t, e) => {
      t.match(e, { outcome: 'ok', user: { status: 'found', reason: /found by Keycloak subject "kc-ann"/ }, role: { before: 'user', after: 'admin', rule: /^promoted to admin: the roles claim lists "admin" \(CLEARML__\S+__admin_role\)/ } })
      t.match(e.reason, /role user → admin/)
    }
  },
  {
    name: 'promotion by an admin group',
    seed: existingUser({ role: 'user' }),
    input: claims({ groups: ['/kc-admins'] }),
    expect: (t, e) => { t.match(e.role, { before: 'user', after: 'admin', rule: /promoted to admin: member of "kc-admins", listed in CLEARML__\S+__groups__admins/ }) }
  },
  {
    name: 'an admin stays admin',
    seed: existingUser({ role: 'admin' }),
    input: claims({ realm_access: { roles: ['admin'] }, groups: [] }),
    expect: (t, e) => {
      t.match(e.role, { before: 'admin', after: 'admin', rule: /^admin: the roles claim lists "admin"/ })
      t.equal(e.reason, `logs in as user ${e.user.id}`, 'nothing changes')
    }
  },
  {
    name: 'demotion: Keycloak manages the role and the user is no longer admin',
    seed: existingUser({ role: 'admin' }),
    input: claims({ realm_access: { roles: ['offline_access'] } }),
    expect: (t, e) => { t.match(e.role, { before: 'admin', after: 'user', rule: /^demoted to "user": Keycloak manages the role and the user has neither the role "admin" among the roles nor a group of/ }) }
  },
  {
    name: 'demotion when only groups.admins manages the role',
    env: { [`${KC}admin_role`]: '' },
    seed: existingUser({ role: 'admin' }),
    input: claims({ realm_access: { roles: ['admin'] } }),
    expect: (t, e) => { t.match(e.role, { after: 'user', rule: /has neither a roles claim nor a group of/ }) }
  },
  {
    name: 'a role other than admin is kept',
    seed: existingUser({ role: 'annotator' }),
    input: claims({ realm_access: { roles: [] } }),
    expect: (t, e) => { t.match(e.role, { before: 'annotator', after: 'annotator', rule: /^kept "annotator": .* Keycloak grants or removes only admin/ }) }
  },
  {
    name: 'a role above admin is ClearML\'s own',
    seed: existingUser({ role: 'superuser' }),
    input: claims({ realm_access: { roles: ['admin'] } }),
    expect: (t, e) => { t.match(e.role, { before: 'superuser', after: 'superuser', rule: /kept "superuser", though the roles claim lists "admin" .*roles above admin are ClearML's own/ }) }
  },
  {
    name: 'Keycloak does not manage the role: admin_role empty, group sync off',
    env: { [`${KC}admin_role`]: '', [`${KC}groups__enabled`]: 'false' },
    seed: existingUser({ role: 'admin' }),
    input: claims({ realm_access: { roles: ['offline_access'] } }),
    expect: (t, e) => {
      t.match(e.role, { before: 'admin', after: 'admin', rule: /admin_role is empty, and group sync is off .*; ClearML's role is kept/ })
      t.match(e.groups, { add: [], remove: [], unknown: [], reason: /^group sync is off/ })
    }
  },
  {
    name: 'linking: no user has the subject, one has the verified email',
    seed: (d) => { d.addUser({ company: 'c-acme', name: 'Ann (local)', email: 'Ann@Acme.com', role: 'annotator' }) },
    input: claims(),
    expect: async (t, e, directory) => {
      const [local] = directory.listUsers()
      t.match(e, { outcome: 'ok', user: { status: 'linked', id: local.id, reason: /linked to the user with the same verified email \(domain "acme\.com"\)/ }, profile: { name: { before: 'Ann (local)', after: 'Ann Example' } } })
      t.match(e.reason, `links the Keycloak identity to user ${local.id}`)
    }
  },
  {
    name: 'group sync of a returning user: joins what Keycloak lists, leaves the rest',
    seed: async (d) => {
      existingUser({ role: 'user' })(d)
      const [user] = d.listUsers()
      const [mlTeam] = await d.findGroupsByName('c-acme', ['ml-team'], { caseSensitive: true })
      await d.updateUserGroups(user.id, { add: [mlTeam.id], remove: [] })
    },
    input: claims({ groups: ['/research/data-science', '/ghost-team'] }),
    expect: (t, e) => {
      t.match(e, { outcome: 'ok', groups: { add: ['data-science'], remove: ['ml-team'], unknown: ['/ghost-team'] } })
      t.strictSame(e.profile, {}, 'the profile is unchanged')
      t.match(e.reason, /joins data-science; leaves ml-team$/)
    }
  },
  {
    name: 'profile: changed fields with before and after, absent claims leave ClearML alone',
    seed: existingUser({ role: 'user', name: 'Old Name' }),
    input: claims({ family_name: undefined, picture: 'https://img.example/ann.png' }),
    expect: (t, e) => {
      t.strictSame(e.profile, { name: { before: 'Old Name', after: 'Ann Example' }, avatar: { before: undefined, after: 'https://img.example/ann.png' } })
      t.match(e.reason, /updates name, avatar$/)
    }
  }
]

for (const row of [...refusals, ...decisions]) {
  t.test(row.name, async (t) => {
    const directory = await acme(row.seed)()
    const app = await withPlugin(t, row.env ?? {}, directory)
    const { explanation } = await explainThenLogin(t, app, directory, row.input, row.name)
    await row.expect(t, explanation, directory)
  })
}

t.test('an Identity is explained as given', async (t) => {
  const directory = await acme()()
  const app = await withPlugin(t, {}, directory)
  const identity: Identity = { subject: 'kc-ida', email: 'ida@acme.com', emailVerified: true, name: 'Ida', groups: ['/data-science'], roles: [] }
  const { explanation } = await explainThenLogin(t, app, directory, identity, 'identity')
  t.match(explanation, { outcome: 'ok', identity: { subject: 'kc-ida' }, user: { status: 'new' }, groups: { add: ['data-science'] } })
})

t.test('claims without the user id: missing_claim, explained without an identity', async (t) => {
  const directory = await acme()()
  const app = await withPlugin(t, {}, directory)
  const { explanation } = await explainThenLogin(t, app, directory, claims({ sub: undefined }), 'missing sub')
  t.match(explanation, { outcome: 'missing_claim', identity: null, user: { status: 'refused' }, role: { after: null }, groups: { add: [], remove: [], unknown: [] }, profile: {} })
  t.match(explanation.reason, /no "sub" claim, which CLEARML__services__login__sso__oauth_client__keycloak__claims__user_id names/)
  t.strictSame(directory.calls, [], 'the directory is not asked')
})

t.test('input explain cannot read, and a failing directory, are errors, and write nothing', async (t) => {
  const directory = await acme()()
  const app = await withPlugin(t, {}, directory)
  for (const input of [null, 'claims', 42, ['sub']]) {
    await t.rejects(app.keycloak.explain(input as unknown as Claims), { code: 'bad_request' }, `${JSON.stringify(input)}: bad_request`)
  }
  directory.failing = 'findWhitelistEntry'
  await t.rejects(app.keycloak.explain(claims()), { code: 'directory_error', message: /directory\.findWhitelistEntry failed/ })
  t.strictSame(directory.writes(), [])
})

// Access tokens, verified as a login verifies them, against the Keycloak-like provider ---------------

async function explainStack (t: Test, env: Env = {}): Promise<{ stack: Stack, directory: CountingDirectory }> {
  const directory = await acme()()
  const stack = await startStack({ env: { [`${KC}groups__enabled`]: 'true', ...env }, plugin: { directory, routes: { explain: true } } })
  t.teardown(stack.close)
  return { stack, directory }
}

t.test('an access token: explained, then the browser login does what was explained', async (t) => {
  const { stack, directory } = await explainStack(t)
  const bob = await obtainTokens(stack, 'bob')
  directory.calls = []
  const explanation = await stack.app.keycloak.explain({ accessToken: bob.access_token })
  t.strictSame(directory.writes(), [], 'explain writes nothing')
  t.match(explanation, { outcome: 'ok', identity: { username: 'bob', email: 'bob@acme.com' }, user: { status: 'new' }, role: { after: 'user' } })

  const { final } = await stack.login('bob')
  t.equal(final.body, 'home')
  const [user] = directory.listUsers()
  t.equal(user.role, explanation.role.after)
  t.strictSame(directory.groupsOf(user.id), [...explanation.groups.add].sort(), 'the groups explained')
  const again = await stack.app.keycloak.explain({ accessToken: bob.access_token })
  t.match(again, { outcome: 'ok', user: { status: 'found', id: user.id }, groups: { add: [], remove: [] }, profile: {} }, 'and now nothing would change')

  const mallory = await obtainTokens(stack, 'mallory')
  const refused = await stack.app.keycloak.explain({ accessToken: mallory.access_token })
  t.equal(refused.outcome, 'not_whitelisted')
  const { final: page } = await stack.login('mallory')
  t.match(page.url, /\/login\?sso_error=not_whitelisted$/, 'the login refuses as explained')
  const warned = stack.logs.map((line) => JSON.parse(line)).filter((line) => line.code === 'not_whitelisted')
  t.strictSame(warned.map((line) => line.reason), [refused.reason], 'and logs the explained reason, once')
})

t.test('a token that fails verification is explained as the login would refuse it', async (t) => {
  const { stack } = await explainStack(t)
  const { access_token: accessToken, id_token: idToken } = await obtainTokens(stack, 'alice')
  const tampered = accessToken.slice(0, -6) + (accessToken.endsWith('AAAAAA') ? 'BBBBBB' : 'AAAAAA')
  const forged = await stack.app.keycloak.explain({ accessToken: tampered })
  t.match(forged, { outcome: 'invalid_token', identity: null, reason: /^access token rejected: ERR_JWS_SIGNATURE_VERIFICATION_FAILED: its signature does not verify/ })
  const wrongKind = await stack.app.keycloak.explain({ accessToken: idToken })
  t.match(wrongKind, { outcome: 'invalid_token', reason: /typ is not Bearer/ }, 'an ID token is not an access token')
  t.notMatch(JSON.stringify([forged, wrongKind]), accessToken.split('.')[2], 'no token in the explanation')
})

t.test('get_info_from_access_token=false: the claims come from userinfo, as in the login', async (t) => {
  const { stack } = await explainStack(t, { [`${KC}get_info_from_access_token`]: 'false' })
  const { access_token: accessToken } = await obtainTokens(stack, 'alice')
  const before = stack.idp.hits.get('/realms/clearml/protocol/openid-connect/userinfo') ?? 0
  const explanation = await stack.app.keycloak.explain({ accessToken })
  t.equal(stack.idp.hits.get('/realms/clearml/protocol/openid-connect/userinfo'), before + 1, 'userinfo was asked')
  // Keycloak's userinfo carries no roles unless mapped: the login would not make alice admin.
  t.match(explanation, { outcome: 'ok', identity: { username: 'alice', roles: [], rolesClaimPresent: false }, role: { after: 'user', rule: /does not manage the role/ } })
})

t.test('userinfo about another subject, and Keycloak unreachable', async (t) => {
  const idp = await startHostileIdp()
  const directory = await acme()()
  const app = Fastify()
  await app.register(clearmlKeycloak, {
    directory,
    webappUrl: 'https://clearml.example.com',
    env: { ...BASE_ENV, [`${KC}base_url`]: idp.issuer, [`${KC}get_info_from_access_token`]: 'false', [`${KC}http_timeout_ms`]: '1000' }
  })
  t.teardown(async () => { await app.close(); await idp.close() })
  idp.userinfo = () => ({ sub: 'someone-else', email: 'x@acme.com' })
  const mismatch = await app.keycloak.explain({ accessToken: await idp.sign(idp.accessClaims()) })
  t.match(mismatch, { outcome: 'userinfo_mismatch', identity: null, reason: /userinfo_url \(or discovery's userinfo_endpoint\) must be this realm's/ })

  const token = await idp.sign({ ...idp.accessClaims() }, { header: { kid: 'rotated-away' } })
  await idp.close()
  await t.rejects(app.keycloak.explain({ accessToken: token }), { code: 'idp_unavailable' }, 'explain cannot tell: an error, not an explanation')
  t.strictSame(directory.writes(), [])
})

// The route ----------------------------------------------------------------------------------------

async function post (url: string, body: unknown, cookie?: string): Promise<{ status: number, json: any }> {
  const response = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...(cookie === undefined ? {} : { cookie }) }, body: JSON.stringify(body) })
  return { status: response.status, json: await response.json() }
}

t.test('POST /login.sso_explain is off unless the host enables it', async (t) => {
  const stack = await startStack()
  t.teardown(stack.close)
  t.equal((await post(`${stack.appUrl}/login.sso_explain`, { claims: claims() })).status, 404)
})

t.test('POST /login.sso_explain: admins only, the decorator\'s answer in the envelope, no write', async (t) => {
  const { stack, directory } = await explainStack(t)
  const url = `${stack.appUrl}/login.sso_explain`
  const sessionOf = async (username: string): Promise<string> => {
    const { agent } = await stack.login(username)
    return `clearml_token_basic=${agent.cookies(stack.appUrl).get('clearml_token_basic')!}`
  }

  const anonymous = await post(url, { claims: claims() })
  t.equal(anonymous.status, 401)
  t.match(anonymous.json, { meta: { result_code: 401, result_msg: 'invalid_token' }, data: { error: 'invalid_token' } })
  t.equal((await post(url, { claims: 'not an object' })).status, 401, 'no session: 401 before the body is even read')

  const bob = await sessionOf('bob')
  const user = await post(url, { claims: claims() }, bob)
  t.equal(user.status, 403)
  t.match(user.json, { meta: { result_code: 403, result_msg: 'admin_required', endpoint: { name: 'login.sso_explain' } }, data: { error: 'admin_required' } })
  const refusals = stack.logs.map((line) => JSON.parse(line)).filter((line) => line.code === 'admin_required')
  t.equal(refusals.length, 1, 'the refusal is logged once')
  t.match(refusals[0], { level: 40, reason: /needs an admin session; user \w+ has role "user"/ })

  const alice = await sessionOf('alice')
  directory.calls = []
  const answer = await post(url, { claims: claims({ sub: 'kc-mallory', email: 'mallory@evil.example' }) }, alice)
  t.equal(answer.status, 200)
  t.match(answer.json.meta, { result_code: 200, endpoint: { name: 'login.sso_explain' } })
  const direct = await stack.app.keycloak.explain(claims({ sub: 'kc-mallory', email: 'mallory@evil.example' }))
  t.strictSame(answer.json.data, JSON.parse(JSON.stringify(direct)), 'the decorator\'s explanation')
  t.match(answer.json.data, { outcome: 'not_whitelisted', user: { status: 'refused' }, role: { after: null } })

  const dave = await obtainTokens(stack, 'dave')
  const byToken = await post(url, { access_token: dave.access_token }, alice)
  t.match(byToken, { status: 200, json: { data: { outcome: 'ok', identity: { username: 'dave' }, user: { status: 'new' } } } })
  const forged = await post(url, { access_token: 'not-a-token' }, alice)
  t.match(forged, { status: 200, json: { data: { outcome: 'invalid_token', identity: null } } })
  t.strictSame(directory.writes(), [], 'no write through the route')
  t.notMatch(stack.logs.join(''), dave.access_token, 'the token is not logged')

  for (const [name, body] of [['neither', {}], ['both', { claims: claims(), access_token: 'x' }], ['claims not an object', { claims: ['sub'] }], ['an empty token', { access_token: '' }]] as const) {
    const bad = await post(url, body, alice)
    t.equal(bad.status, 400, `${name}: 400`)
    t.match(bad.json, { data: { error: 'bad_request' } }, `${name}: bad_request`)
  }
  const get = await fetch(`${url}?access_token=x`, { headers: { cookie: alice } })
  t.equal(get.status, 404, 'no GET: a token never travels in a URL')
})

// Security review, issue #22, finding 3 -------------------------------------------------------------

/** Globex, a second tenant: a user with a group and an avatar, a whitelisted domain, and an address of Acme's domain whitelisted into Globex. */
async function seedGlobex (directory: CountingDirectory): Promise<string> {
  directory.addCompany({ id: 'c-globex', name: 'Globex' })
  const group = directory.addGroup('c-globex', 'globex-ml')
  directory.addWhitelistEntry({ domain: 'globex.com', company: 'c-globex', role: 'admin' })
  directory.addWhitelistEntry({ email: 'hank@acme.com', company: 'c-globex', role: 'admin' })
  const gus = directory.addUser({ company: 'c-globex', name: 'Gus of Globex', email: 'gus@globex.com', role: 'admin', avatar: 'https://img.globex.example/gus.png' }, { provider: 'keycloak', subject: 'kc-gus' })
  await directory.updateUserGroups(gus.id, { add: [group.id], remove: [] })
  return gus.id
}

t.test('security review #22, 3: an admin explains logins into their own company; another company\'s are answered as unknown', async (t) => {
  const { stack, directory } = await explainStack(t)
  const gus = await seedGlobex(directory)
  const { agent } = await stack.login('alice')
  const alice = `clearml_token_basic=${agent.cookies(stack.appUrl).get('clearml_token_basic')!}`
  directory.calls = []
  const explainAsAcmeAdmin = async (body: Claims): Promise<Explanation> => {
    const answer = await post(`${stack.appUrl}/login.sso_explain`, { claims: body }, alice)
    t.equal(answer.status, 200)
    return answer.json.data
  }
  // The same directory as Acme has it, in a world where Globex never existed: the answer it gives is
  // what "unknown" looks like, whatever the claims.
  const acmeOnly = await withPlugin(t, { [`${KC}groups__enabled`]: 'true', [`${KC}groups__admins`]: undefined }, await acme()())
  const unknownAnswer = async (body: Claims): Promise<Explanation> => JSON.parse(JSON.stringify(await acmeOnly.keycloak.explain(body)))

  const cases: Array<[string, Claims]> = [
    ['a Globex user\'s subject and email', claims({ sub: 'kc-gus', email: 'gus@globex.com', name: 'Gus', groups: [] })],
    ['a Globex user\'s email under a new subject', claims({ sub: 'kc-gus-2', email: 'gus@globex.com', name: 'Gus', groups: [] })],
    ['a new address in a domain Globex whitelists (as admin)', claims({ sub: 'kc-gina', email: 'gina@globex.com', name: 'Gina', groups: [] })],
    ['an address of Acme\'s domain Globex whitelists by itself', claims({ sub: 'kc-hank', email: 'hank@acme.com', name: 'Hank', groups: [] })]
  ]
  const globexTraces = [gus, 'c-globex', 'Globex', 'Gus of Globex', 'img.globex.example', 'globex-ml', '"admin"']
  for (const [name, body] of cases) {
    const seen = await explainAsAcmeAdmin(body)
    t.strictSame(seen, await unknownAnswer(body), `${name}: the answer is exactly the one for a directory without Globex`)
    const text = JSON.stringify(seen)
    for (const trace of globexTraces) t.notOk(text.includes(trace), `${name}: nothing of Globex (${trace})`)
  }

  // Same stack, same answer for "exists in Globex" and "exists nowhere", the address aside.
  const globexUser = JSON.stringify(await explainAsAcmeAdmin(claims({ sub: 'kc-gus', email: 'gus@globex.com', name: 'Gus', groups: [] })))
  const nobody = JSON.stringify(await explainAsAcmeAdmin(claims({ sub: 'kc-nobody', email: 'gus@nowhere.example', name: 'Gus', groups: [] })))
  t.equal(globexUser, nobody.replaceAll('kc-nobody', 'kc-gus').replaceAll('nowhere.example', 'globex.com'), 'a Globex user reads as an unknown address')

  // The admin's own company is explained as before.
  const own = await explainAsAcmeAdmin(claims())
  t.match(own, { outcome: 'ok', user: { status: 'new' }, signup: { admit: true, company: 'c-acme' } })
  const [aliceUser] = directory.listUsers().filter((user) => user.company === 'c-acme')
  t.match(await explainAsAcmeAdmin(claims({ sub: 'kc-x', email: 'alice@acme.com' })), { user: { status: 'linked', id: aliceUser.id } }, 'an Acme user is found')

  // The host's own decorator: unscoped by default, as before; `{ company }` gives the route's view.
  t.match(await stack.app.keycloak.explain(cases[0][1]), { user: { status: 'found', id: gus } }, 'the decorator, by default, sees the whole directory')
  t.strictSame(JSON.parse(JSON.stringify(await stack.app.keycloak.explain(cases[0][1], { company: 'c-acme' }))), await unknownAnswer(cases[0][1]), 'explain(input, { company }) is the route\'s view')
  for (const scope of [{ company: '' }, { company: 42 }, null, 'c-acme', ['c-acme']]) {
    await t.rejects(stack.app.keycloak.explain(cases[0][1], scope as never), { code: 'bad_request' }, `options ${JSON.stringify(scope)}: bad_request`)
  }
  t.strictSame(directory.writes(), [], 'nothing written')
})

t.test('companyView: one company\'s directory, every other company absent from it', async (t) => {
  const directory = await acme()()
  const gus = await seedGlobex(directory)
  const ann = directory.addUser({ company: 'c-acme', name: 'Ann', email: 'ann@acme.com', role: 'user' }, { provider: 'keycloak', subject: 'kc-ann' })
  directory.addWhitelistEntry({ email: 'ann.private@globex.com', company: 'c-acme' })
  const [mlTeam] = await directory.findGroupsByName('c-acme', ['ml-team'], { caseSensitive: true })
  await directory.updateUserGroups(ann.id, { add: [mlTeam.id], remove: [] })
  const view = companyView(directory, 'c-acme')

  t.strictSame(await view.getCompany('c-acme'), { id: 'c-acme', name: 'Acme' })
  t.equal(await view.getCompany('c-globex'), null, 'another company does not exist')
  t.match(await view.findUserByIdentity('keycloak', 'kc-ann'), { id: ann.id })
  t.equal(await view.findUserByIdentity('keycloak', 'kc-gus'), null, 'nor its users, by subject')
  t.equal(await view.findUserByIdentity('keycloak', 'kc-nobody'), null)
  t.match(await view.findUserByEmail('ANN@acme.com'), { id: ann.id })
  t.equal(await view.findUserByEmail('gus@globex.com'), null, 'or by email')
  t.not(gus, ann.id)
  for (const [email, entry, why] of [
    ['someone@acme.com', { company: 'c-acme' }, 'the company\'s domain'],
    ['gina@globex.com', null, 'another company\'s domain'],
    ['hank@acme.com', { company: 'c-acme' }, 'an address of the company\'s domain whitelisted into another company: the domain\'s entry, as if that entry did not exist'],
    ['ann.private@globex.com', { company: 'c-acme' }, 'an address the company whitelists in another company\'s domain'],
    ['nobody@nowhere.example', null, 'an address nobody whitelists'],
    ['acme.com', null, 'no @, no domain']
  ] as const) t.strictSame(await view.findWhitelistEntry(email), entry, why)
  t.strictSame((await view.findGroupsByName('c-acme', ['ml-team'], { caseSensitive: true })).map((group) => group.name), ['ml-team'])
  t.strictSame(await view.findGroupsByName('c-globex', ['globex-ml'], { caseSensitive: true }), [], 'nor its groups')
  t.strictSame((await view.listUserGroups('c-acme', ann.id)).map((group) => group.name), ['ml-team'])
  t.strictSame(await view.listUserGroups('c-globex', gus), [], 'nor memberships in them')
  t.strictSame(Object.keys(view).filter((method) => WRITES.includes(method as never)), [], 'and it cannot write')
})
