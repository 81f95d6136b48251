import t from 'tap'
import { SsoError, type Identity } from '../index.js'
import { runLogin } from '../lib/rules/login.js'
import { DIRECTORY_METHODS } from '../lib/directory/user-directory.js'
import { testConfig } from './helpers/config.js'
import { CountingDirectory, type Method } from './helpers/counting-directory.js'

const groupsOn = testConfig({ groups: { enabled: true, admins: ['kc-admins'] } })

function acme (): CountingDirectory {
  const directory = new CountingDirectory()
  directory.addCompany({ id: 'c-acme', name: 'Acme' })
  directory.addGroup('c-acme', 'ml-team')
  directory.addGroup('c-acme', 'data-science')
  directory.addWhitelistEntry({ domain: 'acme.com', company: 'c-acme' })
  directory.calls = []
  return directory
}

const identity = (fields: Partial<Identity> = {}): Identity => ({
  subject: 'kc-ann', email: 'ann@acme.com', emailVerified: true, name: 'Ann', givenName: 'Ann', groups: ['/ml-team'], roles: [], rolesClaimPresent: false, ...fields
})

t.test('a whitelisted new user is created in the company with the groups Keycloak lists', async (t) => {
  const directory = acme()
  const result = await runLogin(groupsOn, directory, identity({ groups: ['/ml-team', '/data-science', '/not-in-clearml'] }))
  t.match(result, { created: true, role: 'user', company: { id: 'c-acme', name: 'Acme' }, groups: { added: ['ml-team', 'data-science'], removed: [] } })
  t.strictSame(directory.listUsers().map((u) => [u.name, u.email, u.company, u.role, u.givenName]), [['Ann', 'ann@acme.com', 'c-acme', 'user', 'Ann']])
  t.strictSame(directory.groupsOf(result.user.id), ['data-science', 'ml-team'])
  t.equal((await directory.findUserByIdentity('keycloak', 'kc-ann'))?.id, result.user.id, 'the Keycloak identity is linked')
})

t.test('a returning user: role, groups and profile follow Keycloak', async (t) => {
  const directory = acme()
  const first = await runLogin(groupsOn, directory, identity({ groups: ['/ml-team'] }))
  const again = await runLogin(groupsOn, directory, identity({ name: 'Ann B.', avatar: 'https://img/ann.png', groups: ['/kc-admins', '/data-science'] }))
  t.equal(again.user.id, first.user.id)
  t.match(again, { created: false, role: 'admin', groups: { added: ['data-science'], removed: ['ml-team'] } })
  t.match(directory.listUsers()[0], { name: 'Ann B.', avatar: 'https://img/ann.png', role: 'admin', givenName: 'Ann' })
})

t.test('existing user whose groups vanished: logs in, memberships removed', async (t) => {
  const directory = acme()
  const first = await runLogin(groupsOn, directory, identity({ groups: ['/ml-team', '/data-science'] }))
  const again = await runLogin(groupsOn, directory, identity({ groups: [] }))
  t.strictSame(again.groups, { added: [], removed: ['ml-team', 'data-science'] })
  t.strictSame(directory.groupsOf(first.user.id), [])
})

t.test('an absent claim does not erase what ClearML has', async (t) => {
  const directory = acme()
  await runLogin(groupsOn, directory, identity({ avatar: 'https://img/a.png' }))
  directory.calls = []
  await runLogin(groupsOn, directory, identity({ avatar: undefined }))
  t.equal(directory.listUsers()[0].avatar, 'https://img/a.png')
  t.notOk(directory.calls.includes('updateUser'), 'nothing changed, nothing written')
})

t.test('verified email links the Keycloak identity to the existing ClearML user', async (t) => {
  const directory = acme()
  const existing = directory.addUser({ company: 'c-acme', name: 'Ann (local)', email: 'Ann@Acme.com', role: 'annotator' })
  const result = await runLogin(groupsOn, directory, identity())
  t.equal(result.user.id, existing.id)
  t.equal(result.created, false)
  t.equal(result.role, 'annotator', 'a role Keycloak does not manage is kept')
  t.equal((await directory.findUserByIdentity('keycloak', 'kc-ann'))?.id, existing.id)
  t.equal(directory.listUsers().length, 1)
})

t.test('an unverified email neither links to an existing user nor passes the whitelist', async (t) => {
  const directory = acme()
  directory.addWhitelistEntry({ email: 'boss@acme.com', company: 'c-acme', role: 'admin' })
  const victim = directory.addUser({ company: 'c-acme', name: 'Ann', email: 'ann@acme.com', role: 'admin' })
  await t.rejects(runLogin(groupsOn, directory, identity({ subject: 'kc-attacker', emailVerified: false })), { code: 'email_not_verified' },
    'someone else\'s address, unverified: refused')
  await t.rejects(runLogin(groupsOn, directory, identity({ subject: 'kc-attacker', email: 'boss@acme.com', emailVerified: false })), { code: 'email_not_verified' },
    'a whitelisted admin address, unverified: refused, not created as admin')
  t.equal(directory.listUsers().length, 1, 'nobody created')
  t.equal(await directory.findUserByIdentity('keycloak', 'kc-attacker'), null, 'nothing linked')

  const trusting = testConfig({ groups: { enabled: true }, trustUnverifiedEmail: true })
  const result = await runLogin(trusting, directory, identity({ subject: 'kc-new', email: 'new@acme.com', emailVerified: false }))
  t.equal(result.created, true, 'with trust_unverified_email the whitelist admits it')
  t.not(result.user.id, victim.id, 'as a separate user: linking still needs a verified email')
  t.equal(result.role, 'user')
})

t.test('refusals change nothing', async (t) => {
  const prohibit = testConfig({ groups: { enabled: true, prohibitUserSignupIfNotInGroup: true } })
  const rows: Array<[string, ReturnType<typeof testConfig>, Identity, string]> = [
    ['not whitelisted', groupsOn, identity({ email: 'x@elsewhere.org' }), 'not_whitelisted'],
    ['no email and no default company', groupsOn, identity({ email: undefined }), 'not_whitelisted'],
    ['default company unknown', testConfig({ defaultCompany: 'c-typo' }), identity(), 'unknown_company'],
    ['prohibit flag, only group unknown to ClearML', prohibit, identity({ groups: ['/marketing'] }), 'no_matching_group'],
    ['prohibit flag, no groups at all', prohibit, identity({ groups: [] }), 'no_matching_group']
  ]
  for (const [name, config, who, code] of rows) {
    const directory = acme()
    await t.rejects(runLogin(config, directory, who), { name: 'SsoError', code }, name)
    t.strictSame(directory.writes(), [], `${name}: no write`)
    t.strictSame(directory.listUsers(), [], `${name}: no user`)
  }
})

t.test('an existing user whose company vanished is refused, unchanged', async (t) => {
  const directory = acme()
  directory.addUser({ company: 'c-gone', name: 'Old', role: 'admin' }, { provider: 'keycloak', subject: 'kc-old' })
  await t.rejects(runLogin(groupsOn, directory, identity({ subject: 'kc-old' })), { code: 'unknown_company' })
  t.strictSame(directory.writes(), [])
})

t.test('the number of directory calls does not grow with the number of groups', async (t) => {
  const measure = async (groupCount: number, returning: boolean): Promise<Method[]> => {
    const directory = acme()
    const names = Array.from({ length: groupCount }, (_, i) => `team-${i}`)
    for (const name of names) directory.addGroup('c-acme', name)
    if (returning) await runLogin(groupsOn, directory, identity({ groups: names.slice(0, groupCount / 2).map((n) => `/${n}`) }))
    directory.calls = []
    const result = await runLogin(groupsOn, directory, identity({ groups: names.map((n) => `/org/${n}`) }))
    t.equal(result.groups.added.length, returning ? groupCount / 2 : groupCount)
    return directory.calls
  }
  for (const returning of [false, true]) {
    const small = await measure(2, returning)
    const large = await measure(200, returning)
    t.strictSame(large, small, `${returning ? 'returning' : 'new'} user: same calls for 2 and 200 groups`)
    t.ok(large.length <= 7, `${large.length} calls: ${large.join(', ')}`)
  }
})

t.test('concurrent first logins of the same subject create exactly one user', async (t) => {
  const directory = acme()
  const results = await Promise.all(Array.from({ length: 25 }, async () => await runLogin(groupsOn, directory, identity())))
  t.equal(new Set(results.map((r) => r.user.id)).size, 1)
  t.equal(directory.listUsers().length, 1)
  t.strictSame(directory.groupsOf(results[0].user.id), ['ml-team'])
})

t.test('a failing directory: directory_error, and no write after the failure', async (t) => {
  for (const returning of [false, true]) {
    for (const method of DIRECTORY_METHODS) {
      const directory = acme()
      if (returning) {
        directory.addUser({ company: 'c-acme', name: 'Ann', email: 'ann@acme.com', role: 'admin' }, { provider: 'keycloak', subject: 'kc-ann' })
      }
      directory.calls = []
      directory.failing = method
      // A login that changes everything, so that every method is on its path.
      const who = identity({ name: 'Ann New', groups: ['/data-science'], roles: [], rolesClaimPresent: true })
      let error: unknown
      try {
        await runLogin(groupsOn, directory, who)
      } catch (err) {
        error = err
      }
      const label = `${returning ? 'returning' : 'new'} user, ${method} fails`
      if (!directory.calls.includes(method)) {
        t.equal(error, undefined, `${label}: not on this path`)
        continue
      }
      t.ok(error instanceof SsoError && error.code === 'directory_error', `${label}: directory_error`)
      t.match((error as Error).message, `directory.${method} failed`, `${label}: names the method, not the data`)
      const afterFailure = directory.calls.slice(directory.calls.lastIndexOf(method) + 1)
      t.strictSame(afterFailure.filter((m) => ['createUser', 'updateUser', 'updateUserGroups'].includes(m)), [], `${label}: no write after it`)
    }
  }
})

t.test('errors thrown as SsoError by a directory pass through unchanged', async (t) => {
  const directory = acme()
  directory.getCompany = async () => { throw new SsoError('unknown_company', 'host says no') }
  await t.rejects(runLogin(groupsOn, directory, identity()), { code: 'unknown_company', message: 'host says no' })
})
