/**
 * The `UserDirectory` contract as a test suite. A host runs it against its own implementation:
 *
 *   import t from 'tap'
 *   import { testDirectory } from 'fastify-clearml-keycloak'
 *   await testDirectory(async (fixture) => await seedMyDatabase(fixture), { t })
 *
 * The factory gets a fresh fixture per test and must return a directory holding exactly it.
 * tap is loaded only when this function runs without `t`, so it stays out of production imports,
 * and its types stay out of this package's declarations (see `DirectoryContractTest`).
 */
import type { UserDirectory } from './user-directory.js'
import type { DirectoryFixture } from './memory-directory.js'

export type { DirectoryFixture }

export type DirectoryFactory = (fixture: DirectoryFixture) => UserDirectory | Promise<UserDirectory>

/**
 * The part of a tap `Test` the suite uses. It is declared here, not imported from tap, so that a
 * host compiles this package's declarations strictly (`skipLibCheck` off) without tap installed:
 * importing tap's `Test` type would drag tap's own declarations, which need newer `@types/node`
 * than Node 20 hosts have, into every host's type-check. tap 21's `Test` fits it.
 */
export interface DirectoryContractTest {
  test(name: string, fn: (t: DirectoryContractTest) => Promise<void>): Promise<unknown>
  equal(found: unknown, wanted: unknown, ...message: [] | [message: string]): unknown
  same(found: unknown, wanted: unknown, ...message: [] | [message: string]): unknown
  ok(value: unknown, ...message: [] | [message: string]): unknown
  rejects(promise: Promise<unknown>, ...message: [] | [message: string]): Promise<unknown>
}

export interface TestDirectoryOptions {
  /** The tap test to run under; default tap's root test, imported when needed. */
  t?: DirectoryContractTest
  /** Name of the suite's parent test; default "UserDirectory contract". */
  name?: string
}

function newFixture (): DirectoryFixture {
  return {
    companies: [{ id: 'c-acme', name: 'Acme' }, { id: 'c-other', name: 'Other' }],
    groups: { 'c-acme': ['ml-team', 'data-science', 'ops'], 'c-other': ['ml-team'] },
    whitelist: [
      { email: 'boss@partner.io', company: 'c-acme', role: 'admin' },
      { domain: 'partner.io', company: 'c-other' },
      { domain: 'acme.com', company: 'c-acme', role: 'annotator' }
    ]
  }
}

const identity = (subject: string) => ({ provider: 'keycloak', subject })

export async function testDirectory (factory: DirectoryFactory, options: TestDirectoryOptions = {}): Promise<void> {
  const root: DirectoryContractTest = options.t ?? (await import('tap')).default
  const make = async (): Promise<UserDirectory> => await factory(newFixture())

  await root.test(options.name ?? 'UserDirectory contract', async (t) => {
    await t.test('getCompany finds a company by id, null when unknown', async (t) => {
      const directory = await make()
      t.same(await directory.getCompany('c-acme'), { id: 'c-acme', name: 'Acme' })
      t.equal(await directory.getCompany('c-nope'), null)
    })

    await t.test('findWhitelistEntry: exact email before domain, case-insensitive, null otherwise', async (t) => {
      const directory = await make()
      t.same(await directory.findWhitelistEntry('boss@partner.io'), { company: 'c-acme', role: 'admin' })
      t.same(await directory.findWhitelistEntry('Someone@Partner.IO'), { company: 'c-other' })
      t.same(await directory.findWhitelistEntry('ann@acme.com'), { company: 'c-acme', role: 'annotator' })
      t.equal(await directory.findWhitelistEntry('eve@evil.example'), null)
      t.equal(await directory.findWhitelistEntry('eve@sub.acme.com'), null, 'a subdomain is another domain')
    })

    await t.test('createUser stores the user and links the identity', async (t) => {
      const directory = await make()
      const user = await directory.createUser({ company: 'c-acme', name: 'Ann', email: 'ann@acme.com', role: 'user', identity: identity('s-ann') })
      t.ok(typeof user.id === 'string' && user.id !== '', 'has an id')
      t.same({ ...user, id: undefined }, { id: undefined, company: 'c-acme', name: 'Ann', email: 'ann@acme.com', role: 'user' })
      t.same(await directory.findUserByIdentity('keycloak', 's-ann'), user)
      t.same(await directory.findUserByEmail('ANN@acme.com'), user, 'email look-up ignores case')
      t.equal(await directory.findUserByIdentity('keycloak', 's-nobody'), null)
      t.equal(await directory.findUserByIdentity('github', 's-ann'), null, 'identities are per provider')
      t.equal(await directory.findUserByEmail('nobody@acme.com'), null)
    })

    await t.test('createUser is idempotent on the identity, also under concurrent calls', async (t) => {
      const directory = await make()
      const attempts = await Promise.all(Array.from({ length: 20 }, async (_, i) =>
        await directory.createUser({ company: 'c-acme', name: `Bob ${i}`, role: 'user', identity: identity('s-bob') })))
      t.equal(new Set(attempts.map((user) => user.id)).size, 1, 'one user for one identity')
      t.equal((await directory.findUserByIdentity('keycloak', 's-bob'))?.id, attempts[0].id)
    })

    await t.test('updateUser changes the given fields, links identities, never moves the company', async (t) => {
      const directory = await make()
      const user = await directory.createUser({ company: 'c-acme', name: 'Cid', role: 'user', identity: identity('s-cid') })
      const updated = await directory.updateUser(user.id, { name: 'Cid C.', role: 'admin', avatar: 'https://img/c.png', linkIdentity: identity('s-cid-2') })
      t.same(updated, { ...user, name: 'Cid C.', role: 'admin', avatar: 'https://img/c.png' })
      t.equal((await directory.findUserByIdentity('keycloak', 's-cid-2'))?.id, user.id, 'second identity linked')
      t.equal((await directory.findUserByIdentity('keycloak', 's-cid'))?.id, user.id, 'first identity kept')
      await t.rejects(directory.updateUser('u-missing', { name: 'x' }), 'an unknown user is an error')
    })

    await t.test('findGroupsByName: only that company, exact or case-folded, unknown names ignored', async (t) => {
      const directory = await make()
      const names = (groups: Array<{ name: string }>) => groups.map((g) => g.name).sort()
      t.same(names(await directory.findGroupsByName('c-acme', ['ml-team', 'nope'], { caseSensitive: true })), ['ml-team'])
      t.same(names(await directory.findGroupsByName('c-acme', ['ML-Team', 'OPS'], { caseSensitive: true })), [])
      t.same(names(await directory.findGroupsByName('c-acme', ['ML-Team', 'OPS'], { caseSensitive: false })), ['ml-team', 'ops'])
      const other = await directory.findGroupsByName('c-other', ['ml-team'], { caseSensitive: true })
      t.same(other.map((g) => g.company), ['c-other'])
      t.same(await directory.findGroupsByName('c-acme', [], { caseSensitive: true }), [])
    })

    await t.test('updateUserGroups adds and removes memberships; repeating is harmless', async (t) => {
      const directory = await make()
      const user = await directory.createUser({ company: 'c-acme', name: 'Dee', role: 'user', identity: identity('s-dee') })
      const [ml, ds, ops] = ['ml-team', 'data-science', 'ops'].map(async (name) => (await directory.findGroupsByName('c-acme', [name], { caseSensitive: true }))[0])
      const ids = await Promise.all([ml, ds, ops]).then((groups) => groups.map((g) => g.id))
      t.same(await directory.listUserGroups('c-acme', user.id), [])
      await directory.updateUserGroups(user.id, { add: [ids[0], ids[1]], remove: [] })
      await directory.updateUserGroups(user.id, { add: [ids[0]], remove: [ids[2]] })
      const names = async () => (await directory.listUserGroups('c-acme', user.id)).map((g) => g.name).sort()
      t.same(await names(), ['data-science', 'ml-team'])
      await directory.updateUserGroups(user.id, { add: [ids[2]], remove: [ids[0]] })
      t.same(await names(), ['data-science', 'ops'])
      t.same(await directory.listUserGroups('c-other', user.id), [], 'memberships are listed per company')
    })
  })
}
