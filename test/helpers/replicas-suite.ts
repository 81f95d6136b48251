/**
 * Several replicas, proven with real processes (issue #10): three apiserver processes
 * (`examples/replicas/apiserver.ts`) sharing one Redis (a single redis-server, or a Cluster) and one
 * PostgreSQL, behind a small round-robin proxy, so that the start of a login, its callback and the
 * requests after it land on different replicas, against the Keycloak-like provider over HTTP.
 * `test/replicas.test.ts` runs it on a single redis-server, `test/replicas-cluster.test.ts` on a
 * Cluster; the Redis under test says how its replicas reach it and what its outage is.
 */
import type { Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer, request, type Server } from 'node:http'
import { createInterface } from 'node:readline'
import pg from 'pg'
import { PostgresDirectory } from '../../postgres/index.js'
import { startKeycloakLikeIdp, type KeycloakLikeIdp, type KeycloakLikeIdpOptions, type RealmUser } from '../../examples/idp/keycloak-like-idp.js'
import { freePort } from '../../examples/free-port.js'
import { startPostgres } from './postgres-server.js'
import { UserAgent } from './user-agent.js'

export interface RedisUnderTest {
  /** How the replicas reach it (REDIS_URL, or REDIS_CLUSTER_NODES). */
  env: Record<string, string>
  /** What the outage subtest calls it, e.g. 'redis-server killed and started again (empty)'. */
  outage: string
  /** Takes Redis away, runs `during` while it is away, brings it back (or fails over to a replica). */
  interrupt: (during: () => Promise<void>) => Promise<void>
  stop: () => Promise<void>
}

export interface ReplicasSuiteOptions {
  /** Also stop and start PostgreSQL under the replicas (once is enough: it does not depend on Redis). */
  postgresOutage?: boolean
}

const KC = 'CLEARML__services__login__sso__oauth_client__keycloak__'
const KC_SECURE = 'CLEARML__secure__login__sso__oauth_client__keycloak__'
const CLIENT = { clientId: 'clearml', clientSecret: 'replicas-client-secret' }

// Ten new subjects, every one in ml-team, the odd ones in data-science too.
const people: RealmUser[] = Array.from({ length: 10 }, (_, i) => ({
  username: `user${i}`,
  password: `pw${i}`,
  email: `user${i}@acme.example`,
  emailVerified: true,
  givenName: `User ${i}`,
  groups: i % 2 === 0 ? ['/ml-team'] : ['/ml-team', '/research/data-science']
}))
const late = { username: 'late', password: 'late-pw', email: 'late@acme.example', emailVerified: true, givenName: 'Late', groups: ['/ml-team'] }

/** A round-robin proxy: every request goes to the next replica, as a load balancer without stickiness. */
async function roundRobinProxy (port: number, upstreams: () => number[]): Promise<Server> {
  let next = 0
  const proxy = createServer((incoming, outgoing) => {
    const ports = upstreams()
    const upstream = request({ host: '127.0.0.1', port: ports[next++ % ports.length], method: incoming.method, path: incoming.url, headers: incoming.headers }, (answer) => {
      outgoing.writeHead(answer.statusCode!, answer.headers)
      answer.pipe(outgoing)
    })
    upstream.once('error', () => { outgoing.writeHead(502).end() })
    incoming.pipe(upstream)
  })
  await new Promise<void>((resolve) => proxy.listen(port, '127.0.0.1', resolve))
  return proxy
}

export interface Replica { port: number, child: ChildProcess, url: string }

async function startReplica (env: Record<string, string>): Promise<Replica> {
  const port = await freePort()
  const child = spawn(process.execPath, ['--import', 'tsx', new URL('../../examples/replicas/apiserver.ts', import.meta.url).pathname], {
    // A child's coverage would be merged into this file's and could hide what the suite misses.
    env: { ...process.env, ...env, PORT: String(port), HOST: '127.0.0.1', _TAPJS_PROCESSINFO_COVERAGE_: '0' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  await new Promise<void>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! })
    lines.on('line', (line) => { if (line.includes('"listening"')) resolve() })
    child.once('exit', (code) => { reject(new Error(`replica exited with ${String(code)} before listening`)) })
  })
  child.stdout!.resume()
  return { port, child, url: `http://127.0.0.1:${port}` }
}

export interface ReplicaSetOptions {
  /** The provider's realm settings (e.g. rotating refresh tokens). */
  idp?: Partial<KeycloakLikeIdpOptions>
  /** More CLEARML__ variables, identical on every replica. */
  env?: Record<string, string>
  users?: RealmUser[]
}

export interface ReplicaSet {
  webapp: string
  idp: KeycloakLikeIdp
  replicas: Replica[]
  directory: PostgresDirectory
  /** A whole browser login through the proxy; the final page. */
  login: (user: RealmUser, agent?: UserAgent) => Promise<{ agent: UserAgent, url: string, body: string }>
  /** The session cookie's answer on every replica, asked directly, not through the proxy. */
  everywhere: (cookie: string) => Promise<number[]>
  /** Polls until every replica answers `status` for the session (propagation takes milliseconds). */
  untilEverywhere: (cookie: string, status: number, timeoutMs?: number) => Promise<number[]>
  sessionOf: (agent: UserAgent) => string
  postgres: Awaited<ReturnType<typeof startPostgres>>
}

/** PostgreSQL, the provider, three replicas and the proxy on `redis`, all stopped when `t` ends. */
export async function startReplicaSet (t: Test, redis: RedisUnderTest, options: ReplicaSetOptions = {}): Promise<ReplicaSet> {
  const postgres = await startPostgres()
  const proxyPort = await freePort()
  const webapp = `http://127.0.0.1:${proxyPort}`
  const idp = await startKeycloakLikeIdp({
    users: options.users ?? [...people, late],
    clients: [{ ...CLIENT, redirectUris: [`${webapp}/callback_keycloak`], postLogoutRedirectUris: [`${webapp}/login`], backchannelLogoutUri: `${webapp}/logout/backchannel` }],
    ...options.idp
  })
  const env = {
    [`${KC}base_url`]: idp.issuer,
    [`${KC_SECURE}client_id`]: `"${CLIENT.clientId}"`,
    [`${KC_SECURE}client_secret`]: `"${CLIENT.clientSecret}"`,
    [`${KC}idp_logout`]: 'true',
    [`${KC}groups__enabled`]: 'true',
    CLEARML__secure__auth__token_secret: 'replicas-token-secret-of-at-least-32-bytes',
    WEBAPP_URL: webapp,
    ...redis.env,
    DATABASE_URL: postgres.connectionString,
    ...options.env
  }
  // The first replica creates the schema; the others start together, as behind a load balancer.
  const replicas: Replica[] = [await startReplica(env)]
  replicas.push(...await Promise.all([startReplica(env), startReplica(env)]))
  const proxy = await roundRobinProxy(proxyPort, () => replicas.map((replica) => replica.port))
  const pool = new pg.Pool({ connectionString: postgres.connectionString })
  pool.on('error', () => {})
  const directory = new PostgresDirectory({ pool })

  t.teardown(async () => {
    await Promise.all(replicas.map(async ({ child }) => {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      await exited
    }))
    await new Promise((resolve) => proxy.close(resolve))
    await pool.end()
    await idp.close()
    await redis.stop()
    await postgres.close()
  })

  const login: ReplicaSet['login'] = async (user, agent = new UserAgent()) => {
    const page = await agent.navigate(`${webapp}/login/keycloak`)
    const final = page.url.startsWith(webapp) ? page : await agent.submitLogin(page, user.username, user.password)
    return { agent, url: final.url, body: final.body }
  }
  const everywhere: ReplicaSet['everywhere'] = async (cookie) =>
    await Promise.all(replicas.map(async ({ url }) => (await fetch(`${url}/users.get_current_user`, { headers: { cookie: `clearml_token_basic=${cookie}` } })).status))
  const untilEverywhere: ReplicaSet['untilEverywhere'] = async (cookie, status, timeoutMs = 15_000) => {
    const deadline = Date.now() + timeoutMs
    let statuses = await everywhere(cookie)
    while (statuses.some((s) => s !== status) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50))
      statuses = await everywhere(cookie)
    }
    return statuses
  }
  const sessionOf = (agent: UserAgent): string => agent.cookies(webapp).get('clearml_token_basic')!
  return { webapp, idp, replicas, directory, login, everywhere, untilEverywhere, sessionOf, postgres }
}

/** Starts PostgreSQL, the provider, three replicas and the proxy on `redis`, runs the subtests on `t`, and stops it all. */
export async function replicasSuite (t: Test, redis: RedisUnderTest, options: ReplicasSuiteOptions = {}): Promise<void> {
  const { webapp, idp, replicas, directory, login, everywhere, untilEverywhere, sessionOf, postgres } = await startReplicaSet(t, redis)

  await t.test('30 concurrent first logins of 10 new subjects over three replicas: exactly 10 users, each in the right groups', async (t) => {
    const logins = await Promise.all(people.flatMap((person) => [0, 1, 2].map(async () => await login(person))))
    t.equal(logins.filter((l) => l.url === `${webapp}/` && l.body.includes('Welcome')).length, 30, 'every login lands logged in')
    const users = await directory.listUsers()
    t.equal(users.length, 10, 'one user per subject')
    for (const [i, person] of people.entries()) {
      const user = users.find((candidate) => candidate.email === person.email)!
      t.strictSame(await directory.groupsOf(user.id), i % 2 === 0 ? ['ml-team'] : ['data-science', 'ml-team'], `${person.username}'s groups`)
    }
  })

  await t.test('a logout on one replica is refused on the others; back-channel logout reaches all three', async (t) => {
    const { agent } = await login(people[0])
    const cookie = sessionOf(agent)
    t.strictSame(await everywhere(cookie), [200, 200, 200], 'the session works on every replica')
    const logout = await fetch(`${replicas[0].url}/login.logout`, { method: 'POST', headers: { cookie: `clearml_token_basic=${cookie}`, 'content-type': 'application/json' }, body: '{}' })
    t.equal(logout.status, 200, 'logged out on replica 1')
    t.strictSame(await untilEverywhere(cookie, 401), [401, 401, 401], 'refused on all three')

    // Two ClearML sessions on one Keycloak session; the user logs out at Keycloak itself (another
    // application's logout), and Keycloak calls back one replica.
    const first = await login(people[1])
    const firstCookie = sessionOf(first.agent)
    await login(people[1], first.agent)
    const secondCookie = sessionOf(first.agent)
    t.not(secondCookie, firstCookie, 'a second ClearML session, same Keycloak session')
    await first.agent.confirmIdpLogout(`${idp.issuer}/protocol/openid-connect/logout?client_id=${CLIENT.clientId}&post_logout_redirect_uri=${encodeURIComponent(`${webapp}/login`)}`, { stopAt: (url) => url.startsWith(webapp) })
    t.strictSame(await untilEverywhere(firstCookie, 401), [401, 401, 401], 'the first session is refused everywhere')
    t.strictSame(await untilEverywhere(secondCookie, 401), [401, 401, 401], 'and the second: neither was logged out at ClearML')
  })

  await t.test(`${redis.outage}: logouts made meanwhile take effect everywhere, nothing revoked comes back`, async (t) => {
    const revokedBefore = await login(people[2])
    const before = sessionOf(revokedBefore.agent)
    await fetch(`${replicas[1].url}/login.logout`, { method: 'POST', headers: { cookie: `clearml_token_basic=${before}`, 'content-type': 'application/json' }, body: '{}' })
    t.strictSame(await untilEverywhere(before, 401), [401, 401, 401], 'revoked before the outage')
    const during = sessionOf((await login(people[3])).agent)
    const kept = sessionOf((await login(people[4])).agent)

    await redis.interrupt(async () => {
      const started = Date.now()
      const logout = await fetch(`${replicas[2].url}/login.logout`, { method: 'POST', headers: { cookie: `clearml_token_basic=${during}`, 'content-type': 'application/json' }, body: '{}' })
      t.equal(logout.status, 200, 'a logout while Redis is down answers')
      t.ok(Date.now() - started < 5000, `without waiting on Redis (${Date.now() - started} ms)`)
      t.equal((await everywhere(during))[2], 401, 'and takes effect on its replica at once')
    })
    t.strictSame(await untilEverywhere(during, 401), [401, 401, 401], 'the logout made during the outage reaches every replica')
    t.strictSame(await untilEverywhere(before, 401), [401, 401, 401], 'the revocation from before the outage is still in effect everywhere')
    t.strictSame(await untilEverywhere(kept, 200), [200, 200, 200], 'a session nobody revoked still works everywhere')
  })

  if (options.postgresOutage === true) {
    await t.test('PostgreSQL stopped: logins answer directory_error and write nothing; back, logins work without restarting the replicas', async (t) => {
      await postgres.stop()
      const refused = await login(late)
      t.equal(refused.url, `${webapp}/login?sso_error=directory_error`, 'a new user\'s login is refused with directory_error')
      const returning = await login(people[5])
      t.equal(returning.url, `${webapp}/login?sso_error=directory_error`, 'so is a returning user\'s')
      await postgres.start()
      t.equal((await directory.findUserByEmail(late.email)), null, 'nothing was half-written')
      const again = await login(late, refused.agent)
      t.equal(again.url, `${webapp}/`, 'the same browser logs in once PostgreSQL is back')
      const user = await directory.findUserByEmail(late.email)
      t.ok(user !== null, 'the user exists now')
      t.strictSame(await directory.groupsOf(user!.id), ['ml-team'])
    })
  }
}
