/**
 * Sessions follow Keycloak across replicas (issue #20): three apiserver processes on one
 * redis-server and one PostgreSQL behind a round-robin proxy (test/helpers/replicas-suite.ts),
 * against a provider that rotates refresh tokens and revokes the whole family when a used one comes
 * back. One refresh per session per period in all, no token presented twice, and a user disabled or
 * demoted in Keycloak refused or demoted by every replica.
 */
import t from 'tap'
import type { RealmUser } from '../examples/idp/keycloak-like-idp.js'
import { startRedisServer } from './helpers/redis-server.js'
import { startReplicaSet } from './helpers/replicas-suite.js'

const KC = 'CLEARML__services__login__sso__oauth_client__keycloak__'
const PERIOD = 1
const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

const person = (username: string, groups: string[]): RealmUser => ({ username, password: `${username}-pw`, email: `${username}@acme.example`, emailVerified: true, givenName: username, groups })
const users = [person('ivy', ['/ml-team']), person('jack', ['/ml-team']), person('kim', ['/kc-admins']), person('leo', ['/ml-team'])]

const redis = await startRedisServer()
const set = await startReplicaSet(t, { env: { REDIS_URL: redis.url }, outage: '', interrupt: async () => {}, stop: redis.stop }, {
  users,
  idp: { revokeRefreshToken: true, revokeFamilyOnReuse: true },
  env: { [`${KC}session__revalidate_sec`]: String(PERIOD), [`${KC}groups__admins`]: '["kc-admins"]' }
})

/** `users.get_current_user` on one replica (the example apiserver's), as the web app asks it. */
async function currentUser (url: string, headers: Record<string, string>): Promise<{ status: number, body: Record<string, any> }> {
  const answer = await fetch(`${url}/users.get_current_user`, { headers })
  return { status: answer.status, body: await answer.json() as Record<string, any> }
}

t.test('rotating refresh tokens, bursts of concurrent requests over three replicas: every session kept, one refresh per period in all, no token twice', async (t) => {
  const sessions = await Promise.all([users[0], users[1]].map(async (user) => set.sessionOf((await set.login(user)).agent)))
  const started = Date.now()
  const statuses = new Map<number, number>()
  for (let burst = 0; burst < 15; burst++) {
    // Each burst: 30 requests at once, through the proxy (round robin) and straight to each replica.
    const answers = await Promise.all(Array.from({ length: 30 }, async (_, i) => {
      const cookie = `clearml_token_basic=${sessions[i % 2]}`
      const url = i % 3 === 0 ? set.webapp : set.replicas[i % 3].url
      return (await fetch(`${url}/users.get_current_user`, { headers: { cookie } })).status
    }))
    for (const status of answers) statuses.set(status, (statuses.get(status) ?? 0) + 1)
    await sleep(300)
  }
  const seconds = (Date.now() - started) / 1000
  t.strictSame([...statuses], [[200, 450]], 'every one of 450 requests kept its session')
  const presented = set.idp.refreshLog.map((entry) => entry.tokenId)
  t.equal(new Set(presented).size, presented.length, `no refresh token presented twice (${presented.length} refreshes)`)
  t.ok(set.idp.refreshLog.every((entry) => entry.outcome === 'ok'), 'every refresh answered ok: the family was never revoked')
  const perSessionPerPeriod = presented.length / 2 / (seconds / PERIOD)
  t.ok(presented.length >= 4 && perSessionPerPeriod <= 1.1, `about one refresh per session per period across the three replicas (${perSessionPerPeriod.toFixed(2)}: ${presented.length} for 2 sessions in ${seconds.toFixed(1)} s)`)
  t.comment(`refreshes per session per period across 3 replicas: ${perSessionPerPeriod.toFixed(2)}`)
})

t.test('a user disabled in Keycloak is refused by every replica within the period', async (t) => {
  const cookie = set.sessionOf((await set.login(users[3])).agent)
  t.strictSame(await set.everywhere(cookie), [200, 200, 200])
  set.idp.disableUser('leo')
  t.strictSame(await set.untilEverywhere(cookie, 401, 10_000 * PERIOD), [401, 401, 401], 'refused everywhere')
  for (const replica of set.replicas) {
    t.match((await currentUser(replica.url, { cookie: `clearml_token_basic=${cookie}` })).body, { meta: { result_msg: 'session_ended' } }, 'with session_ended on each')
  }
  const leo = await set.directory.findUserByEmail('leo@acme.example')
  t.equal(leo?.role, 'user', 'the directory is untouched')
})

t.test('a user demoted in Keycloak is demoted by every replica within the period, whichever token it sees', async (t) => {
  const { agent } = await set.login(users[2])
  const cookie = set.sessionOf(agent)
  for (const replica of set.replicas) t.match((await currentUser(replica.url, { cookie: `clearml_token_basic=${cookie}` })).body, { data: { user: { role: 'admin' } } }, 'admin through /kc-admins')
  set.idp.setGroups('kim', ['/ml-team'])
  const deadline = Date.now() + 10_000 * PERIOD
  let roles: string[] = []
  do {
    await sleep(100)
    roles = await Promise.all(set.replicas.map(async (replica) => (await currentUser(replica.url, { cookie: `clearml_token_basic=${cookie}` })).body.data?.user?.role as string))
  } while (roles.some((role) => role !== 'user') && Date.now() < deadline)
  t.strictSame(roles, ['user', 'user', 'user'], 'every replica answers with the new role')
  for (const replica of set.replicas) {
    t.match((await currentUser(replica.url, { authorization: `Bearer ${cookie}` })).body, { data: { user: { role: 'user' } } }, 'the token that says admin, as a Bearer: not admin')
  }
  const kim = await set.directory.findUserByEmail('kim@acme.example')
  t.strictSame(await set.directory.groupsOf(kim!.id), ['ml-team'], 'groups synced in PostgreSQL')
})
