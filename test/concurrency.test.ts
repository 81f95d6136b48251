/**
 * 50 concurrent browser logins for 10 new users (five transactions each, each in its own browser
 * session at the provider) create exactly 10 users, each with the right groups, and all succeed.
 */
import t from 'tap'
import { KC, startStack } from './helpers/stack.js'
import { UserAgent } from './helpers/user-agent.js'

const users = Array.from({ length: 10 }, (_, i) => ({
  username: `user${i}`,
  password: `pw${i}`,
  email: `user${i}@acme.com`,
  emailVerified: true,
  givenName: `User ${i}`,
  groups: i % 2 === 0 ? ['/ml-team'] : ['/ml-team', '/research/data-science']
}))

t.test('50 concurrent logins of 10 new users', async (t) => {
  const stack = await startStack({ idp: { users }, env: { [`${KC}groups__enabled`]: 'true' } })
  t.teardown(stack.close)
  const logins = users.flatMap((user) => Array.from({ length: 5 }, async () => {
    const agent = new UserAgent()
    const page = await agent.navigate(`${stack.appUrl}/login/keycloak`)
    return await agent.submitLogin(page, user.username, user.password)
  }))
  const pages = await Promise.all(logins)
  t.equal(pages.filter((p) => p.url === `${stack.appUrl}/` && p.body === 'home').length, 50, 'every login lands logged in')
  const created = stack.directory.listUsers()
  t.equal(created.length, 10, 'exactly one ClearML user per Keycloak user')
  for (const [i, user] of users.entries()) {
    const record = created.find((c) => c.email === user.email)!
    t.strictSame(stack.directory.groupsOf(record.id), i % 2 === 0 ? ['ml-team'] : ['data-science', 'ml-team'], `${user.username}: groups`)
  }
  t.notMatch(stack.logs.join(''), '"level":50', 'no error logged')
})
