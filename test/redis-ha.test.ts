/**
 * Redis high availability (SPEC section 14, issue #24), with real redis-server processes on
 * loopback: a Sentinel set (a primary, a replica, three Sentinels, down-after-milliseconds 1000) and
 * a Cluster (three primaries with a replica each, cluster-node-timeout 1000). For each, three
 * stores on clients of their own (three apiserver replicas) ride through a SIGKILL of the primary
 * holding the store's keys while logouts, logins and refreshes go on; then every logout is in effect
 * on every store, a store started later sees every revocation, claims, values and refresh states
 * work, and `isRevoked` answered every call synchronously throughout. What the failover cost is
 * printed (`# ...` lines), never asserted.
 */
import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { Cluster, Redis } from 'ioredis'
import { startRedisCluster, startSentinelSet, type RedisCluster, type SentinelSet } from './helpers/redis-topology.js'
import type { RedisServer } from './helpers/redis-server.js'
import { followStoreContract } from './helpers/follow-store-contract.js'
import { recordUnhandledRejections } from './helpers/unhandled.js'
import { RedisRevocationStore, DEFAULT_KEY_PREFIX, type RedisRevocationStoreOptions } from '../redis/index.js'
import { redisNames, STORE_SLOT } from '../redis/layout.js'
import type { RefreshKey } from '../lib/session/follow-store.js'

const NAMES = redisNames(DEFAULT_KEY_PREFIX)
const nowSec = (): number => Date.now() / 1000
const inAnHour = (): number => nowSec() + 3600
const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

interface Topology {
  name: string
  client: () => Redis | Cluster
  /** SIGKILLs the primary of the store's keys; resolves once a replica is promoted. */
  failover: () => Promise<unknown>
}

interface Replica { store: RedisRevocationStore, warnings: string[] }

async function replica (t: Test, topology: Topology, options: Partial<RedisRevocationStoreOptions> = {}): Promise<Replica> {
  const redis = topology.client()
  const warnings: string[] = []
  const store = new RedisRevocationStore({
    redis,
    retryIntervalMs: 200,
    log: { warn: (object, message) => { warnings.push(`${message} ${JSON.stringify(object)}`) }, info: () => {} },
    ...options
  })
  t.teardown(async () => {
    await store.close()
    redis.disconnect()
  })
  await store.ready()
  return { store, warnings }
}

async function until (what: string, check: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(20)
  }
}

const percentile = (values: number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0
}

/**
 * The failover every topology must survive: three stores, a primary SIGKILLed while logouts (every
 * 20 ms), logins (a claim every 100 ms) and refreshes (lease, then release with the rotated token,
 * on one session, store after store) go on, and `isRevoked` asked of every store every 2 ms.
 */
async function failoverWhileBusy (t: Test, topology: Topology): Promise<void> {
  const unhandled = recordUnhandledRejections(t)
  const replicas = await Promise.all([0, 1, 2].map(async () => await replica(t, topology)))
  const stores = replicas.map((r) => r.store)
  const expiresAt = inAnHour()
  await stores[0].revoke('revoked-before', expiresAt)
  await stores[1].setValue('idt:before', 'sealed-id-token', expiresAt)
  const refreshKey: RefreshKey = { session: `refreshing-${randomUUID()}`, keycloakSession: 'kc-refreshing' }
  await stores[2].saveRefresh(refreshKey, { sealed: 'gen-1', checkedAt: nowSec(), generation: 1 }, expiresAt)
  await until('the first revocation everywhere', () => stores.every((s) => s.isRevoked('revoked-before')))

  // authenticate's question, asked the whole time: a revoked and a live session on every store.
  const answers = { calls: 0, refusedRevoked: 0, acceptedLive: 0, notBoolean: 0 }
  const probe = setInterval(() => {
    for (const store of stores) {
      const revoked = store.isRevoked('revoked-before')
      const live = store.isRevoked('never-revoked')
      answers.calls += 2
      if (typeof revoked !== 'boolean' || typeof live !== 'boolean') answers.notBoolean++
      if (revoked) answers.refusedRevoked++
      if (!live) answers.acceptedLive++
    }
  }, 2)

  const load = { running: true }
  const logouts: string[] = []
  const logoutMs: number[] = []
  const logoutLoad = (async () => {
    for (let i = 0; load.running; i++) {
      const id = `logout-${i}`
      logouts.push(id)
      const started = performance.now()
      stores[i % 3].revoke(id, expiresAt).then(() => logoutMs.push(performance.now() - started), t.threw)
      await sleep(20)
    }
  })()
  const claims = { made: 0, won: 0, refused: 0, ms: [] as number[] }
  const claimLoad = (async () => {
    for (let i = 0; load.running; i++) {
      const started = performance.now()
      try {
        if (await stores[i % 3].claimOnce(`state-${randomUUID()}`, nowSec() + 600)) claims.won++
      } catch {
        claims.refused++
      }
      claims.made++
      claims.ms.push(performance.now() - started)
      await sleep(100)
    }
  })()
  // One session refreshed again and again, each time by the next store: the highest generation whose
  // release returned must be the one the next lease reads, whatever the failover lost.
  let released = 1
  const refreshes = { leased: 0, unavailable: 0 }
  const refreshLoad = (async () => {
    for (let i = 0; load.running; i++) {
      const store = stores[i % 3]
      try {
        const lease = await store.leaseRefresh(refreshKey, { dueBefore: nowSec() + 60, leaseMs: 10_000 })
        if (lease.status === 'leased') {
          refreshes.leased++
          t.equal(lease.state.generation, released, `lease ${refreshes.leased} reads the last rotation`)
          const next = lease.state.generation + 1
          await store.releaseRefresh(refreshKey, lease.lease, { sealed: `gen-${next}`, checkedAt: nowSec(), generation: next })
          released = next
        }
      } catch {
        refreshes.unavailable++
      }
      await sleep(30)
    }
  })()

  await sleep(500)
  const killedAt = performance.now()
  // When each store is in touch again: loaded, subscribed, and what it queued written.
  const recovered = Promise.all(stores.map(async (store) => {
    await once(store, 'stale')
    while (!store.synced) await Promise.race([once(store, 'synced'), once(store, 'flushed')])
    return performance.now() - killedAt
  }))
  const logoutsBefore = logouts.length
  await topology.failover()
  const promotedMs = performance.now() - killedAt
  await sleep(1500)
  load.running = false
  await Promise.all([logoutLoad, claimLoad, refreshLoad])
  const duringFailover = logouts.length - logoutsBefore

  await until('every store in sync, every queue written, every logout everywhere', () =>
    stores.every((store) => store.synced && store.queued === 0 && logouts.every((id) => store.isRevoked(id))) && logoutMs.length === logouts.length)
  const recoveredMs = Math.max(...await recovered)
  clearInterval(probe)

  for (const [i, store] of stores.entries()) t.ok(logouts.every((id) => store.isRevoked(id)), `every one of ${logouts.length} logouts is in effect on store ${i + 1}`)
  t.equal(answers.notBoolean, 0, 'isRevoked answered synchronously every time')
  t.equal(answers.refusedRevoked, answers.calls / 2, 'the session revoked before the failover was refused every time')
  t.equal(answers.acceptedLive, answers.calls / 2, 'a live session was accepted every time (the outage is shorter than maxStaleMs)')

  const late = await replica(t, topology)
  t.ok([...logouts, 'revoked-before'].every((id) => late.store.isRevoked(id)), 'a store started after the failover sees every revocation')
  t.equal(await stores[0].claimOnce('state-after', nowSec() + 600), true, 'claimOnce after the failover: the first claim wins')
  t.equal(await stores[1].claimOnce('state-after', nowSec() + 600), false, 'and a replay on another store loses')
  t.equal(await late.store.claimOnce('state-after', nowSec() + 600), false)
  await stores[2].setValue('idt:after', 'sealed-after', inAnHour())
  t.equal(await stores[0].takeValue('idt:after'), 'sealed-after', 'a value set after the failover is read once')
  t.equal(await stores[1].takeValue('idt:after'), undefined)
  t.equal(claims.won, claims.made - claims.refused, 'every login during the failover was claimed (locally while Redis was away)')
  t.equal(claims.refused, 0, 'none refused: the outage is shorter than maxStaleMs')
  const after = await late.store.leaseRefresh(refreshKey, { dueBefore: nowSec() + 60, leaseMs: 10_000 })
  t.equal(after.status === 'leased' && after.state.generation, released, `the last rotated token (generation ${released}) survived the failover`)
  t.equal(after.status === 'leased' && after.state.sealed, `gen-${released}`)
  t.ok(refreshes.leased > 2, 'refreshes went on')
  t.strictSame(unhandled, [], 'nothing left unhandled')
  t.notMatch(replicas.flatMap((r) => r.warnings).join('\n'), /logout-\d|gen-\d|sealed|state-/, 'no id, state or token in any warning')

  t.comment(`${topology.name}: replica promoted ${(promotedMs / 1000).toFixed(1)} s after the SIGKILL; ` +
    `every store in sync again (subscribed, loaded, its queue written) ${(recoveredMs / 1000).toFixed(1)} s after it`)
  t.comment(`${topology.name}: ${duringFailover} logouts from the SIGKILL on, revoke() p50 ${percentile(logoutMs, 50).toFixed(1)} ms, max ${Math.max(...logoutMs).toFixed(0)} ms (writeTimeoutMs 1000); ` +
    `${claims.made} login claims, max ${Math.max(...claims.ms).toFixed(0)} ms; ${refreshes.leased} refreshes, ${refreshes.unavailable} leases refused while out of touch; ` +
    `${answers.calls} isRevoked answers, all synchronous`)
}

t.test('Sentinel: a primary, a replica, three Sentinels', async (t) => {
  let set: SentinelSet | undefined
  let killed: RedisServer | undefined
  t.before(async () => {
    set = await startSentinelSet()
  })
  t.teardown(async () => { await set?.stop() })
  const topology: Topology = {
    name: 'Sentinel',
    client: () => {
      const redis = new Redis({ sentinels: set!.sentinels, name: set!.name, retryStrategy: () => 50, sentinelRetryStrategy: () => 50 })
      redis.on('error', () => {})
      return redis
    },
    failover: async () => {
      killed = (await set!.failover()).killed
    }
  }
  await t.test('the primary SIGKILLed while logouts, logins and refreshes go on', async (t) => { await failoverWhileBusy(t, topology) })
  await t.test('the SessionFollowStore contract', async (t) => {
    const stores = await Promise.all([0, 1, 2].map(async () => (await replica(t, topology)).store))
    await followStoreContract(t, async () => stores)
  })
  await t.test('a manual failover (SENTINEL FAILOVER) with failoverDetector: both connections follow the new primary', async (t) => {
    // Without failoverDetector the demoted primary keeps the store's subscriber (Sentinel does not
    // close pub/sub connections): it still receives, through replication, but would not notice the
    // next primary failing. With it, ioredis reconnects when the Sentinels announce the switch.
    const follows: Topology = {
      ...topology,
      client: () => {
        const redis = new Redis({ sentinels: set!.sentinels, name: set!.name, failoverDetector: true, retryStrategy: () => 50, sentinelRetryStrategy: () => 50 })
        redis.on('error', () => {})
        return redis
      }
    }
    // The primary SIGKILLed above comes back empty; the Sentinels make it a replica of the new one.
    await killed!.start()
    await set!.settled()
    const [a, b] = await Promise.all([0, 1].map(async () => await replica(t, follows)))
    const resynced = Promise.all([once(a.store, 'synced'), once(b.store, 'synced')])
    const { promoted } = await set!.manualFailover()
    await resynced
    t.pass('both stores lost their subscription with the old primary and loaded again')
    await a.store.revoke('after-manual-failover', inAnHour())
    await until('the revocation on B', () => b.store.isRevoked('after-manual-failover'))
    t.equal(a.store.queued, 0, 'written to the new primary')
    t.equal((await set!.primary()).port, promoted.port)
  })
})

t.test('Cluster: three primaries with a replica each', async (t) => {
  let cluster: RedisCluster | undefined
  t.before(async () => {
    cluster = await startRedisCluster()
  })
  t.teardown(async () => { await cluster?.stop() })
  const client = (options: ConstructorParameters<typeof Cluster>[1] = {}): Cluster => {
    const redis = new Cluster(cluster!.startupNodes, options)
    redis.on('error', () => {})
    return redis
  }
  const topology: Topology = { name: 'Cluster', client, failover: async () => await cluster!.failover(NAMES.epoch) }

  await t.test('every key of the store and its channel are in one slot', async (t) => {
    const redis = client()
    t.teardown(() => redis.disconnect())
    const names = [NAMES.epoch, NAMES.revoked, NAMES.revisions, NAMES.revisionExpiry, NAMES.channel, NAMES.claim('x'), NAMES.value('y'), NAMES.refresh('{s}'), NAMES.keycloakSession('k')]
    for (const name of names) t.equal(Number(await redis.cluster('KEYSLOT', name)), STORE_SLOT, name)
  })

  await t.test('a manual failover (CLUSTER FAILOVER): Redis unsubscribes the store, which follows the slot and loads again', async (t) => {
    const [a, b] = await Promise.all([0, 1].map(async () => await replica(t, topology)))
    const resynced = Promise.all([once(a.store, 'synced'), once(b.store, 'synced')])
    const { promoted } = await cluster!.manualFailover(NAMES.epoch)
    await resynced
    t.equal((await cluster!.primaryOf(NAMES.epoch)).port, promoted.port, 'the slot moved')
    await a.store.revoke('after-manual-failover', inAnHour())
    await until('the revocation on B', () => b.store.isRevoked('after-manual-failover'))
    t.pass('both stores followed the slot: a revocation on A reaches B')
  })

  await t.test('the primary SIGKILLed while logouts, logins and refreshes go on', async (t) => { await failoverWhileBusy(t, topology) })

  await t.test('a Cluster client with lazyConnect', async (t) => {
    const { store } = await replica(t, { ...topology, client: () => client({ lazyConnect: true }) })
    t.equal(store.synced, true)
    const lazy = client({ lazyConnect: true })
    t.teardown(() => lazy.disconnect())
    const early = new RedisRevocationStore({ redis: lazy, log: { warn: () => {} } })
    const pending = early.ready()
    await early.close()
    await t.rejects(pending, { code: 'ERR_CLEARML_KEYCLOAK_REDIS_CLOSED' }, 'closed before it knew a node: nothing left running')
  })

  await t.test('an ACL user without a command the store needs: ready() rejects, naming the refusal', async (t) => {
    const nodes = cluster!.servers.filter((server) => server.running)
    await Promise.all(nodes.map(async (server) => {
      const admin = new Redis(server.port, server.host)
      await admin.acl('SETUSER', 'no-exists', 'on', '>no-exists-password', '~*', '&*', '+@all', '-exists')
      admin.disconnect()
    }))
    const limited = client({ redisOptions: { username: 'no-exists', password: 'no-exists-password' } })
    t.teardown(() => limited.disconnect())
    const store = new RedisRevocationStore({ redis: limited, readyTimeoutMs: 1500, retryIntervalMs: 100, log: { warn: () => {} } })
    t.teardown(async () => { await store.close() })
    await t.rejects(store.ready(), { code: 'ERR_CLEARML_KEYCLOAK_REDIS_NOT_READY', message: /NOPERM/ }, 'the subscriber checks the node with EXISTS before it subscribes')
  })

  await t.test('the SessionFollowStore contract', async (t) => {
    const stores = await Promise.all([0, 1, 2].map(async () => (await replica(t, topology)).store))
    await followStoreContract(t, async () => stores)
  })
})
