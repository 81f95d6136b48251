import t from 'tap'
import { MemoryDirectory, testDirectory } from '../index.js'

await testDirectory((fixture) => MemoryDirectory.fromFixture(fixture), { t, name: 'MemoryDirectory meets the UserDirectory contract' })

// As a host calls it: no tap object, no name.
await testDirectory((fixture) => MemoryDirectory.fromFixture(fixture))

t.test('MemoryDirectory refuses inconsistent seeds and writes', async (t) => {
  const directory = new MemoryDirectory()
  directory.addCompany({ id: 'c', name: 'C' })
  t.throws(() => directory.addGroup('nope', 'g'), /unknown company/)
  t.throws(() => directory.addWhitelistEntry({ company: 'c' }), /email or a domain/)
  await t.rejects(directory.createUser({ company: 'nope', name: 'x', role: 'user', identity: { provider: 'keycloak', subject: 's' } }), /unknown company/)
  const a = directory.addUser({ company: 'c', name: 'A', role: 'user' }, { provider: 'keycloak', subject: 'a' })
  const b = directory.addUser({ company: 'c', name: 'B', role: 'user', id: 'fixed-id' })
  t.equal(b.id, 'fixed-id')
  await t.rejects(directory.updateUser(b.id, { linkIdentity: { provider: 'keycloak', subject: 'a' } }), /linked to another user/)
  await t.rejects(directory.updateUserGroups('nope', { add: [], remove: [] }), /unknown user/)
  await t.rejects(directory.updateUserGroups(a.id, { add: ['g-nope'], remove: [] }), /unknown group/)
  t.strictSame(directory.groupsOf(a.id), [])
  const copy = directory.listUsers()[0]
  copy.name = 'changed outside'
  t.equal(directory.listUsers()[0].name, 'A', 'callers get copies, not the stored records')
})
