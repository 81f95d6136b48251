/**
 * RedisRevocationStore against a real redis-server: each store has its own ioredis client and stands
 * for one apiserver replica. Redis is killed with SIGKILL and started again empty, as a crash or an
 * OOM kill leaves it; the plugin is exercised through two replicas and the Keycloak-like provider.
 */
import t, { type Test } from 'tap'
import { EventEmitter, once } from 'node:events'
import { Redis, type RedisOptions } from 'ioredis'
import { startRedisServer, type RedisServer } from './helpers/redis-server.js'
import { KC, startReplica, startStack, USERS, type Stack } from './helpers/stack.js'
import { UserAgent } from './helpers/user-agent.js'
import {
  RedisRevocationStore, REDIS_STORE_ERRORS, DEFAULT_KEY_PREFIX,
  type RedisRevocationStoreEvents, type RedisRevocationStoreOptions
} from '../redis/index.js'
import { decodeChanges, decodeStoredRevision, redisNames } from '../redis/layout.js'
import { recordUnhandledRejections } from './helpers/unhandled.js'

/** Clients that reconnect quickly, so a restarted Redis is found within a test's patience. */
const FAST_RECONNECT: RedisOptions = { retryStrategy: () => 50 }
const NAMES = redisNames(DEFAULT_KEY_PREFIX)
const REVOKED = NAMES.revoked
const CHANNEL = NAMES.channel

const nowSec = (): number => Math.floor(Date.now() / 1000)
const inAnHour = (): number => nowSec() + 3600
/** One second from now, to the millisecond (a whole second could be a few milliseconds away). */
const inASecond = (): number => Date.now() / 1000 + 1
const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

interface Replica {
  store: RedisRevocationStore
  redis: Redis
  warnings: string[]
  infos: string[]
  /** Emits 'warn' with each warning line. */
  logged: EventEmitter
}

/** Resolves once `replica` has logged a warning containing `text` (at once if it already has). */
async function warned (replica: Replica, text: string): Promise<void> {
  const signal = AbortSignal.timeout(10_000)
  while (!replica.warnings.some((line) => line.includes(text))) await once(replica.logged, 'warn', { signal })
}

function client (server: RedisServer, options: RedisOptions = {}): Redis {
  const redis = new Redis(server.port, server.host, { ...FAST_RECONNECT, ...options })
  // ioredis reports every failed reconnection; these tests watch the store instead.
  redis.on('error', () => {})
  return redis
}

/** A store on a client of its own, as one replica holds; closed and disconnected in teardown. */
async function replica (t: Test, server: RedisServer, options: Partial<RedisRevocationStoreOptions> = {}, clientOptions: RedisOptions = {}, ready = true): Promise<Replica> {
  const redis = client(server, clientOptions)
  const warnings: string[] = []
  const infos: string[] = []
  const logged = new EventEmitter()
  const store = new RedisRevocationStore({
    redis,
    log: {
      warn: (object, message) => {
        warnings.push(`${message} ${JSON.stringify(object)}`)
        logged.emit('warn')
      },
      info: (object, message) => { infos.push(`${message} ${JSON.stringify(object)}`) }
    },
    ...options
  })
  t.teardown(async () => {
    await store.close()
    redis.disconnect()
  })
  if (ready) await store.ready()
  return { store, redis, warnings, infos, logged }
}

async function redisServer (t: Test, args?: string[]): Promise<RedisServer> {
  const server = await startRedisServer({ args })
  t.teardown(server.stop)
  return server
}

/** Waits for `event` until `check` holds (checked first, then after each event). */
async function until<E extends keyof RedisRevocationStoreEvents> (store: RedisRevocationStore, event: E, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const signal = AbortSignal.timeout(timeoutMs)
  while (!check()) await once(store as never, event, { signal })
}

/** Resolves once `store` has loaded again (after a loss) and written what Redis lacked; call it before the loss. */
async function writtenBack (store: RedisRevocationStore): Promise<void> {
  await once(store, 'synced')
  await until(store, 'flushed', () => store.queued === 0)
}

t.test('options and inputs: refused with a stable code, nothing changed', async (t) => {
  const server = await redisServer(t)
  const redis = client(server)
  t.teardown(() => redis.disconnect())
  const refused = (options: unknown, name: string): void => {
    t.throws(() => new RedisRevocationStore(options as RedisRevocationStoreOptions), { name: 'RedisStoreError', code: REDIS_STORE_ERRORS.options, message: name }, name)
  }
  refused(undefined, '"redis" must be an ioredis client')
  refused({}, '"redis" must be an ioredis client')
  refused({ redis: { status: 'ready' } }, '"redis" must be an ioredis client')
  refused({ redis, keyPrefix: 7 }, '"keyPrefix" must be a string')
  for (const writeTimeoutMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, '100']) {
    refused({ redis, writeTimeoutMs }, '"writeTimeoutMs" must be a positive number of milliseconds')
  }
  for (const maxStaleMs of [-1, Number.NaN, '60000']) refused({ redis, maxStaleMs }, '"maxStaleMs" must be a positive number of milliseconds or Infinity')
  refused({ redis, readyTimeoutMs: 0 }, '"readyTimeoutMs"')
  refused({ redis, retryIntervalMs: -5 }, '"retryIntervalMs"')
  t.ok(new RedisRevocationStore({ redis, maxStaleMs: 0 }), 'maxStaleMs 0: refuse as soon as the subscription drops')
  t.ok(new RedisRevocationStore({ redis, maxStaleMs: Number.POSITIVE_INFINITY }), 'maxStaleMs Infinity: never refuse')

  const { store } = await replica(t, server)
  const input = { name: 'RedisStoreError', code: REDIS_STORE_ERRORS.input }
  await t.rejects(store.revoke('', inAnHour()), input, 'an empty session id')
  await t.rejects(store.revoke(42 as never, inAnHour()), input, 'a session id that is not a string')
  await t.rejects(store.revoke('s', Number.NaN), input, 'an expiry that is not a number')
  await t.rejects(store.revoke('s', '1999999999' as never), input, 'an expiry given as text')
  await t.rejects(store.claimOnce('', inAnHour()), input)
  await t.rejects(store.claimOnce('state', Number.POSITIVE_INFINITY), input)
  await t.rejects(store.setValue('', 'v', inAnHour()), input)
  await t.rejects(store.setValue('k', { id_token: 'x' } as never, inAnHour()), { ...input, message: 'a value must be a string' })
  await t.rejects(store.takeValue(undefined as never), input)
  t.equal(store.size, 0, 'nothing revoked')
  t.equal(store.queued, 0, 'nothing queued')
  t.strictSame(await redis.keys('*'), [NAMES.epoch], 'nothing written to Redis (but the loss marker)')
})

t.test('a revocation on one replica is refused on the other, kept in Redis until the session expires', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server)
  const b = await replica(t, server)
  t.ok(a.store.synced && b.store.synced, 'both loaded and subscribed')
  t.equal(a.store.isRevoked('session-1'), false)

  const expiresAt = inAnHour()
  const received = once(b.store, 'received')
  await a.store.revoke('session-1', expiresAt)
  t.equal(a.store.isRevoked('session-1'), true, 'refused on the replica that revoked it, at once')
  t.strictSame((await received)[0], ['session-1'], 'B was told by pub/sub')
  t.equal(b.store.isRevoked('session-1'), true, 'refused on the other replica')
  t.equal(b.store.isRevoked('session-2'), false, 'other sessions still accepted')

  t.equal(Number(await a.redis.zscore(REVOKED, 'session-1')), expiresAt, 'score: the session expiry')
  t.equal(await a.redis.pexpiretime(REVOKED), expiresAt * 1000, 'the set lives until its last session expires')

  // Revoked again with an earlier expiry (a second logout of the same session): the later one stays.
  await a.store.revoke('session-1', expiresAt - 600)
  t.equal(Number(await a.redis.zscore(REVOKED, 'session-1')), expiresAt)
  const later = expiresAt + 7200
  await b.store.revoke('keycloak-sid:kc-1', later)
  t.equal(await a.redis.pexpiretime(REVOKED), later * 1000, 'the set\'s expiry follows its latest member')
  await until(a.store, 'received', () => a.store.isRevoked('keycloak-sid:kc-1'))
  t.pass('a back-channel logout on B reaches A')

  await a.store.revoke('already-over', nowSec() - 1)
  t.equal(await a.redis.zscore(REVOKED, 'already-over'), null, 'a session that has expired is not written')
  t.equal(a.store.isRevoked('already-over'), false)
  t.strictSame(a.warnings, [], 'no warnings')
  t.strictSame(b.warnings, [])
})

t.test('ready() loads what is in Redis, page by page; other prefixes are not shared', async (t) => {
  const server = await redisServer(t)
  const seed = client(server)
  t.teardown(() => seed.disconnect())
  // 2,500 live revocations written by earlier replicas, and expired ones a load must skip.
  const expiresAt = inAnHour()
  const pairs: Array<string | number> = []
  for (let i = 0; i < 2500; i++) pairs.push(expiresAt, `live-${i}`)
  await seed.zadd(REVOKED, ...pairs)
  await seed.zadd(REVOKED, nowSec() - 10, 'expired-1', nowSec() - 1, 'expired-2')

  const synced = new Promise<RedisRevocationStoreEvents['synced'][0]>((resolve) => {
    const store = new RedisRevocationStore({ redis: seed })
    t.teardown(async () => await store.close())
    store.once('synced', resolve)
    t.equal(store.isRevoked('anything'), true, 'before its first load a store refuses every session')
    t.equal(store.isRefusingAll(), true)
    store.ready().then(() => {
      t.equal(store.size, 2500, 'every live revocation, none of the expired')
      t.equal(store.isRevoked('live-0') && store.isRevoked('live-2499'), true)
      t.equal(store.isRevoked('expired-1'), false)
      t.equal(store.isRevoked('never-revoked'), false, 'after it, only revoked sessions are refused')
    }, t.threw)
  })
  const report = await synced
  t.equal(report.loaded, 2500)
  t.equal(report.writtenBack, 0)
  t.type(report.durationMs, 'number')

  const other = await replica(t, server, { keyPrefix: 'other-app:' })
  t.equal(other.store.size, 0, 'a store with another prefix does not see them')
  await other.store.revoke('mine', expiresAt)
  t.equal(Number(await seed.zscore(redisNames('other-app:').revoked, 'mine')), expiresAt)
})

t.test('claimOnce: concurrent claims of one login across replicas, exactly one wins', async (t) => {
  const server = await redisServer(t)
  const stores = await Promise.all(Array.from({ length: 4 }, async () => await replica(t, server)))
  const expiresAt = nowSec() + 600
  const claims = await Promise.all(Array.from({ length: 40 }, async (_, i) => await stores[i % 4].store.claimOnce('state-abc', expiresAt)))
  t.equal(claims.filter(Boolean).length, 1, 'one of 40 concurrent claims on 4 replicas')
  t.equal(await stores[0].redis.pexpiretime(NAMES.claim('state-abc')), expiresAt * 1000, 'kept until the transaction expires')
  t.equal(await stores[1].store.claimOnce('state-def', expiresAt), true, 'another login is its own claim')
  t.equal(await stores[2].store.claimOnce('state-def', expiresAt), false)
  t.equal(await stores[3].store.claimOnce('state-old', nowSec() - 1), true, 'an expired transaction is not recorded (the codec refuses it first)')
  t.equal(await stores[0].redis.exists(NAMES.claim('state-old')), 0)
})

t.test('values: set on one replica, taken once on another', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server)
  const b = await replica(t, server)
  const expiresAt = inAnHour()
  await a.store.setValue('idt:1', 'sealed-id-token', expiresAt)
  t.equal(await a.redis.pexpiretime(NAMES.value('idt:1')), expiresAt * 1000, 'kept until its expiry')
  t.equal(await b.store.takeValue('idt:1'), 'sealed-id-token', 'read on the other replica')
  t.equal(await a.store.takeValue('idt:1'), undefined, 'and gone once read')
  t.equal(await b.store.takeValue('never-set'), undefined)
  await a.store.setValue('idt:2', 'too-late', nowSec() - 1)
  t.equal(await a.redis.exists(NAMES.value('idt:2')), 0, 'an expired value is not written')
})

t.test('Redis killed mid-run: writes queue within the bound, take effect at once, and reach everyone after the restart', async (t) => {
  const server = await redisServer(t)
  const writeTimeoutMs = 300
  const a = await replica(t, server, { writeTimeoutMs, maxStaleMs: 60_000, retryIntervalMs: 100 })
  const b = await replica(t, server, { writeTimeoutMs, maxStaleMs: 60_000, retryIntervalMs: 100 })
  await a.store.revoke('before-crash', inAnHour())
  await until(b.store, 'received', () => b.store.isRevoked('before-crash'))

  const stale = Promise.all([once(a.store, 'stale'), once(b.store, 'stale')])
  await server.kill()
  await stale
  t.equal(a.store.synced, false, 'A knows its copy may be behind')

  const expiresAt = inAnHour()
  const started = performance.now()
  await a.store.revoke('during-outage', expiresAt)
  t.ok(performance.now() - started < writeTimeoutMs + 200, 'the logout did not wait on Redis beyond the bound')
  t.equal(a.store.isRevoked('during-outage'), true, 'refused on A at once')
  t.equal(b.store.isRevoked('during-outage'), false, 'B cannot know yet')
  t.equal(b.store.isRevoked('before-crash'), true, 'B still answers from its copy')
  t.equal(await a.store.claimOnce('state-outage', nowSec() + 600), true, 'a login during the outage is claimed on A')
  t.equal(await a.store.claimOnce('state-outage', nowSec() + 600), false, 'and its replay on A refused')
  await a.store.setValue('idt:outage', 'sealed', expiresAt)
  await a.store.setValue('idt:taken-here', 'sealed-2', expiresAt)
  t.equal(await a.store.takeValue('idt:taken-here'), 'sealed-2', 'a queued value can be read on its replica')
  t.equal(await b.store.takeValue('idt:outage'), undefined, 'B cannot read Redis: no value')
  t.equal(a.store.queued, 3, 'a revocation, a claim and a value wait for Redis')
  t.equal(a.warnings.filter((w) => w.includes('it takes effect on this replica now')).length, 1, 'one warning for the outage, not one per write')

  const bothSynced = Promise.all([once(a.store, 'synced'), once(b.store, 'synced')])
  await server.start()
  await bothSynced
  await until(a.store, 'flushed', () => a.store.queued === 0)
  t.pass('A wrote its queue and its copy back')
  await until(b.store, 'received', () => b.store.isRevoked('during-outage'))
  t.pass('the revocation made during the outage reached B')
  t.equal(Number(await a.redis.zscore(REVOKED, 'during-outage')), expiresAt, 'and Redis')
  t.ok(await a.redis.zscore(REVOKED, 'before-crash'), 'the revocation Redis lost with the crash is back')
  t.equal(await b.store.claimOnce('state-outage', nowSec() + 600), false, 'the login claimed during the outage is refused on B')
  t.equal(await b.store.takeValue('idt:outage'), 'sealed', 'the value kept during the outage is readable on B')
  t.equal(await b.store.takeValue('idt:taken-here'), undefined, 'a value already taken is not written')
  t.match(a.infos.join('\n'), 'in sync with Redis again')
  t.match(a.infos.join('\n'), 'wrote its queued changes')
  t.match(a.warnings.join('\n'), 'lost its subscription')
  t.notMatch([...a.warnings, ...a.infos, ...b.warnings].join('\n'), /during-outage|before-crash|state-outage|sealed/, 'no id, state or value in any log line')
})

t.test('after a reconnection the store subscribes again itself, and nothing is left unhandled', async (t) => {
  // ioredis's own resubscription sends SUBSCRIBE without handling its failure (redis/ioredis#2187): a
  // connection lost or closed before Redis answers it is an unhandled rejection, which ends the host's
  // process. The store's subscriber connection has it off; `#resync` subscribes, then loads.
  const unhandled = recordUnhandledRejections(t)
  const server = await redisServer(t)
  const redis = client(server)
  let subscriber: Redis | undefined
  const duplicate = redis.duplicate.bind(redis)
  redis.duplicate = (override) => (subscriber = duplicate(override))
  const store = new RedisRevocationStore({ redis, log: { warn: () => {}, info: () => {} } })
  t.teardown(async () => {
    await store.close()
    redis.disconnect()
  })
  await store.ready()
  t.equal(subscriber?.options.autoResubscribe, false, 'the subscriber does not resubscribe on its own')
  const b = await replica(t, server)

  const lost = once(store, 'stale')
  await server.kill()
  await lost
  const synced = once(store, 'synced')
  await server.start()
  await synced
  await b.store.revoke('after-the-restart', inAnHour())
  await until(store, 'received', () => store.isRevoked('after-the-restart'))
  t.pass('subscribed again: a revocation made on B reaches it')
  t.strictSame(unhandled, [], 'no unhandled rejection')
})

t.test('a Redis restarted empty gets every live revocation back from the replicas', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server)
  const b = await replica(t, server)
  const expiresAt = inAnHour()
  // More than one write batch (1,000): A revokes 1,500, B 20 more.
  await Promise.all(Array.from({ length: 1500 }, async (_, i) => await a.store.revoke(`a-${i}`, expiresAt)))
  await Promise.all(Array.from({ length: 20 }, async (_, i) => await b.store.revoke(`b-${i}`, expiresAt + i)))
  await until(b.store, 'received', () => b.store.size === 1520)
  await until(a.store, 'received', () => a.store.size === 1520)

  const synced = Promise.all([once(a.store, 'synced'), once(b.store, 'synced')])
  await server.kill()
  await server.start()
  const reports = (await synced).map(([report]) => report)
  t.equal(Math.max(...reports.map((r) => r.writtenBack)), 1520, 'the first to reload writes back all it holds')
  // The second may find it all there already, and have nothing to write.
  await until(a.store, 'flushed', () => a.store.queued === 0)
  await until(b.store, 'flushed', () => b.store.queued === 0)
  t.equal(await a.redis.zcard(REVOKED), 1520, 'every live revocation is in Redis again')
  t.equal(Number(await a.redis.zscore(REVOKED, 'b-19')), expiresAt + 19, 'with its expiry')
  const fresh = await replica(t, server)
  t.equal(fresh.store.size, 1520, 'a replica started now loads them all')
})

t.test('outage policy: serve from the copy for maxStaleMs, then refuse, then serve again after the reload', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server, { maxStaleMs: 400, writeTimeoutMs: 200 })
  await a.store.revoke('revoked-before', inAnHour())

  const stale = once(a.store, 'stale')
  const refusing = once(a.store, 'refusing')
  await server.kill()
  await stale
  t.equal(a.store.isRevoked('a-live-session'), false, 'within maxStaleMs: served from the local copy')
  t.equal(a.store.isRevoked('revoked-before'), true)
  await refusing
  t.equal(a.store.isRevoked('a-live-session'), true, 'after maxStaleMs: every session refused')
  t.equal(a.store.isRefusingAll(), true)
  await t.rejects(a.store.claimOnce('state-late', nowSec() + 600), { code: REDIS_STORE_ERRORS.unavailable }, 'and logins refused, since their sessions would be')
  t.match(a.warnings.join('\n'), 'every session is refused until it is in touch again')

  const synced = once(a.store, 'synced')
  await server.start()
  await synced
  t.equal(a.store.isRevoked('a-live-session'), false, 'in sync again: served')
  t.equal(a.store.isRevoked('revoked-before'), true, 'and the revocation is still there (written back)')
  t.equal(a.store.isRefusingAll(), false)
})

t.test('maxStaleMs Infinity never refuses; 0 refuses as soon as the subscription drops', async (t) => {
  const server = await redisServer(t)
  const patient = await replica(t, server, { maxStaleMs: Number.POSITIVE_INFINITY })
  const strict = await replica(t, server, { maxStaleMs: 0 })
  const stale = Promise.all([once(patient.store, 'stale'), once(strict.store, 'stale')])
  await server.kill()
  await stale
  t.equal(patient.store.isRevoked('s'), false)
  t.equal(strict.store.isRevoked('s'), true)
  await sleep(100)
  t.equal(patient.store.isRevoked('s'), false, 'still serving')
})

t.test('a load that raced a disconnection is not trusted: the store loads again', async (t) => {
  const server = await redisServer(t)
  const host = client(server)
  t.teardown(() => host.disconnect())
  const admin = client(server)
  t.teardown(() => admin.disconnect())
  const store = new RedisRevocationStore({ redis: host, writeTimeoutMs: 5000, log: { warn: () => {} } })
  t.teardown(async () => await store.close())
  await store.ready()
  const zscans = async (): Promise<number> => Number((await admin.info('commandstats')).match(/cmdstat_zscan:calls=(\d+)/)?.[1] ?? 0)
  const before = await zscans()

  // Writes are paused and the host connection waits behind one, so the store's next load waits too.
  await admin.client('PAUSE', 60_000, 'WRITE')
  host.set('blocked-write', '1').catch(() => {})
  const stale = once(store, 'stale')
  await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
  await stale
  // The subscriber is back and its load waits behind the paused write: drop the subscription again.
  while (Number((await admin.pubsub('NUMSUB', CHANNEL))[1]) === 0) await sleep(10)
  await sleep(50)
  await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
  // It reconnects while that load still waits; it subscribes again once that load has answered
  // (one pass at a time), so Redis shows no subscriber until then.
  await sleep(300)
  const synced = once(store, 'synced')
  await admin.client('UNPAUSE')
  await synced
  t.equal(await zscans() - before, 2, 'the first load was discarded and a second one made')
  t.equal(store.synced, true)
})

t.test('Redis slow to take writes: each waits writeTimeoutMs at most and is written when Redis answers', async (t) => {
  const server = await redisServer(t)
  const admin = client(server)
  t.teardown(() => admin.disconnect())
  const a = await replica(t, server, { writeTimeoutMs: 150, retryIntervalMs: 100 })
  const b = await replica(t, server)
  // Writes wait until CLIENT UNPAUSE, as during a failover; reads are still answered.
  await admin.client('PAUSE', 60_000, 'WRITE')
  const started = performance.now()
  await a.store.revoke('during-pause', inAnHour())
  t.ok(performance.now() - started < 500, 'the logout answered within the bound')
  t.equal(a.store.isRevoked('during-pause'), true)
  t.equal(await a.store.claimOnce('state-pause', nowSec() + 600), true, 'claimed locally')
  await a.store.setValue('idt:pause', 'sealed-during-pause', inAnHour())
  await a.store.setValue('idt:taken', 'sealed-taken', inAnHour())
  t.equal(await a.store.takeValue('idt:taken'), 'sealed-taken', 'taken on A while its write waits in Redis')
  t.equal(await a.store.takeValue('idt:elsewhere'), undefined, 'a value Redis cannot give in time: none')
  await warned(a, 'could not read a server-side value')
  await warned(a, 'trying again every 100 ms')
  t.equal(a.warnings.filter((line) => line.includes('trying again')).length, 1, 'failed retries are reported once')
  await admin.client('UNPAUSE')

  await until(a.store, 'flushed', () => a.store.queued === 0)
  await until(b.store, 'received', () => b.store.isRevoked('during-pause'))
  t.equal(await b.store.claimOnce('state-pause', nowSec() + 600), false)
  t.equal(await b.store.takeValue('idt:pause'), 'sealed-during-pause')
  // Writes on A's connection are answered in order: two round trips after the pause, its delete of
  // the value taken meanwhile has been sent and done.
  await a.redis.ping()
  await a.redis.ping()
  t.equal(await admin.exists(NAMES.value('idt:taken')), 0, 'a value taken during its write is deleted once written')
  t.equal(await b.store.takeValue('idt:taken'), undefined, 'so it is read once only')
})

t.test('a long outage: the queue is bounded, and what expires before Redis is back is not written', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server, { writeTimeoutMs: 2000, retryIntervalMs: 100 })
  // Both connections must have noticed, or the first writes would wait writeTimeoutMs on a dead socket.
  const down = Promise.all([once(a.store, 'stale'), once(a.redis, 'close')])
  await server.kill()
  await down
  for (let i = 0; i <= 10_000; i++) await a.store.setValue(`bulk-${i}`, 'sealed', inAnHour())
  const soon = inASecond()
  await a.store.revoke('short-lived', soon)
  t.equal(await a.store.claimOnce('state-short', soon), true)
  await a.store.setValue('idt:short', 'sealed', soon)
  await a.store.setValue('idt:short-2', 'sealed', soon)
  await a.store.setValue('idt:short-3', 'sealed', soon)
  t.equal(a.store.queued, 1 + 1 + 10_000, 'at most 10,000 values are kept for Redis')
  t.equal(await a.store.takeValue('bulk-0'), undefined, 'the oldest went first')
  t.equal(await a.store.takeValue('bulk-3'), undefined)
  t.equal(await a.store.takeValue('bulk-4'), 'sealed')
  await sleep((soon + 0.05) * 1000 - Date.now())
  t.equal(await a.store.takeValue('idt:short-2'), undefined, 'a queued value past its expiry is not given')

  await server.start()
  await until(a.store, 'flushed', () => a.store.queued === 0)
  t.equal((await a.redis.keys('*')).filter((key) => key !== NAMES.epoch).length, 9996, 'the live values only (bulk-5 to bulk-10000); nothing expired was written')
  t.equal(await a.redis.get(NAMES.value('bulk-10000')), 'sealed')
})

t.test('close() unsubscribes and leaves the host client usable', async (t) => {
  const server = await redisServer(t)
  const redis = client(server)
  t.teardown(() => redis.disconnect())
  const readyListeners = redis.listenerCount('ready')
  const store = new RedisRevocationStore({ redis })
  await store.ready()
  await store.ready()
  t.equal(Number((await redis.pubsub('NUMSUB', CHANNEL))[1]), 1, 'subscribed')
  await store.close()
  await store.close()
  t.equal(Number((await redis.pubsub('NUMSUB', CHANNEL))[1]), 0, 'unsubscribed')
  t.equal(await redis.ping(), 'PONG', 'the host client still works')
  t.equal(redis.listenerCount('ready'), readyListeners, 'and carries no listener of the store')
  await t.rejects(store.ready(), { code: REDIS_STORE_ERRORS.closed })

  const never = new RedisRevocationStore({ redis })
  await never.close()
  t.pass('a store never made ready closes')
})

t.test('ready() while Redis is down: a clear error in bounded time, and it keeps trying', async (t) => {
  const server = await redisServer(t)
  await server.kill()
  const { store } = await replica(t, server, { readyTimeoutMs: 300 }, {}, false)
  await t.rejects(store.ready(), { code: REDIS_STORE_ERRORS.notReady, message: /no full load from Redis within 300 ms \(.*ECONNREFUSED/ })
  await server.start()
  await until(store, 'synced', () => store.synced)
  await store.ready()
  t.pass('ready once Redis is there')

  const redis = client(server)
  t.teardown(() => redis.disconnect())
  await server.kill()
  const closing = new RedisRevocationStore({ redis })
  const warnings: string[] = []
  closing.useLog({ warn: (_object, message) => { warnings.push(message) } })
  closing.useLog({ warn: () => t.fail('the first log stays') })
  const pending = closing.ready()
  await closing.revoke('queued', inAnHour())
  await closing.close()
  await t.rejects(pending, { code: REDIS_STORE_ERRORS.closed }, 'closing rejects a pending ready()')
  t.match(warnings.join('\n'), 'closed with writes Redis never received', 'a revocation that never reached Redis is reported')
})

t.test('a host client with lazyConnect', async (t) => {
  const server = await redisServer(t)
  const { store } = await replica(t, server, {}, { lazyConnect: true })
  t.equal(store.synced, true)
})

t.test('maxmemory-policy: an evicting policy is warned about; CONFIG refused is not an error', async (t) => {
  const evicting = await redisServer(t, ['--maxmemory-policy', 'allkeys-lru'])
  const legacy = await replica(t, evicting)
  t.match(legacy.warnings.join('\n'), 'maxmemory-policy allkeys-lru', 'warned (array reply)')
  const mapped = await replica(t, evicting, {}, { replyMapping: 'resp3' })
  t.match(mapped.warnings.join('\n'), 'maxmemory-policy allkeys-lru', 'warned (RESP3 map reply)')

  const managed = await redisServer(t, ['--rename-command', 'CONFIG', ''])
  const quiet = await replica(t, managed)
  t.strictSame(quiet.warnings, [], 'CONFIG disabled: nothing to say')

  const safe = await redisServer(t)
  t.strictSame((await replica(t, safe)).warnings, [], 'noeviction: no warning')
})

t.test('expired revocations go away: from Redis, and from every local copy', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server)
  const b = await replica(t, server)
  const soon = inASecond()
  await Promise.all(Array.from({ length: 1023 }, async (_, i) => await a.store.revoke(`short-${i}`, soon)))
  await until(b.store, 'received', () => b.store.size === 1023)
  await sleep((soon + 0.05) * 1000 - Date.now())
  t.equal(a.store.isRevoked('short-0'), false, 'no longer refused once the session would have expired')
  t.equal(await a.redis.exists(REVOKED), 0, 'the set expired with its last member')

  // B's copy reaches 1,024 entries (its first sweep size) and drops the 1,023 expired ones.
  await a.store.revoke('long', inAnHour())
  await until(b.store, 'received', () => b.store.isRevoked('long'))
  t.equal(b.store.size, 1, 'B swept its copy as it grew')
  t.equal(b.store.isRevoked('short-1'), false)

  const again = inASecond()
  await a.store.revoke('short-again', again)
  await sleep((again + 0.05) * 1000 - Date.now())
  await a.store.revoke('another', inAnHour())
  t.strictSame(await a.redis.zrange(REVOKED, '0', '-1'), ['long', 'another'], 'each write removes what has expired')
})

t.test('a message on the channel that no store wrote is ignored', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server)
  const publisher = client(server)
  t.teardown(() => publisher.disconnect())
  const identity = '{"company":"c","user":"u","user_name":"n","role":"user","company_name":"C"}'
  for (const message of [
    'not json', 'null', '[]', '[["x", 1]]', '{}', '{"u":1}', '{"id":"x"}', '{"r":[["x",1]],"z":1}', '{"r":[["x",1]],"u":true}',
    '{"r":[["x"]]}', '{"r":[[1,2]]}', '{"r":[["",2]]}', '{"r":[["x","soon"]]}', '{"r":["x",1]}', '{"r":{"x":1}}',
    `{"v":[["s",1,${identity}]]}`, `{"v":[["s",0,${identity},1]]}`, '{"v":[["s",1,{"role":"admin"},1]]}', '{"v":[["s",1,null,1]]}', '{"v":[["s",1,[],1]]}',
    `{"v":[["s",1,${identity},1,"not a mac"]]}`, `{"v":[["s",1,${identity},1,7]]}`, `{"v":[["s",1,${identity},1,"m",2]]}`,
    '{"f":[["s",null,"sealed",1,1]]}', '{"f":[["s","","sealed",1,1,1]]}', '{"f":[["s",null,7,1,1,1]]}', '{"f":[["s",null,"sealed",1,1.5,1]]}',
    '{"t":[""]}', '{"t":"s"}'
  ]) {
    t.equal(decodeChanges(message), undefined, message)
  }
  t.strictSame(decodeChanges(`{"r":[["x",1]],"v":[["s",2,${identity},3],["m",1,${identity},3,"bWFj"]],"f":[["s","kc","sealed",1,2,3]],"t":["s"],"u":1}`), {
    revocations: [['x', 1]], revisions: [['s', 2, JSON.parse(identity), 3], ['m', 1, JSON.parse(identity), 3, 'bWFj']], refreshStates: [['s', 'kc', 'sealed', 1, 2, 3]], taken: ['s'], unwritten: true
  }, 'every part together')
  for (const stored of ['', '1|2', 'x|2||{}', '1|2||{', '1|2||{"role":"admin"}', '1|soon||' + identity, '0|2||' + identity, '1|2|not a mac|' + identity, '1|2|' + identity]) t.equal(decodeStoredRevision(stored), undefined, stored)
  t.strictSame(decodeStoredRevision('1|2|bWFj|' + identity), { version: 1, identity: JSON.parse(identity), expiresAt: 2, mac: 'bWFj' }, 'a stored revision with its mac')
  await publisher.publish(CHANNEL, '[["forged", 1e12]')
  await publisher.publish(CHANNEL, JSON.stringify({ r: [['real', inAnHour()]] }))
  await until(a.store, 'received', () => a.store.isRevoked('real'))
  t.equal(a.store.isRevoked('forged'), false)
  t.match(a.warnings.join('\n'), 'ignored a message on its channel that no store wrote')
})

t.test('without a log, warnings go to process warnings', async (t) => {
  const server = await redisServer(t, ['--maxmemory-policy', 'volatile-lru'])
  const redis = client(server)
  t.teardown(() => redis.disconnect())
  const warning = once(process, 'warning')
  const store = new RedisRevocationStore({ redis })
  t.teardown(async () => await store.close())
  await store.ready()
  const [emitted] = await warning as [Error & { code: string }]
  t.equal(emitted.code, 'CLEARML_KC_REDIS_STORE')
  t.match(emitted.message, 'maxmemory-policy volatile-lru')
})

t.test('Redis refusing writes but delivering messages (NOREPLICAS): the other replica refuses the logged-out session at once; the replica whose writes fail counts as stale (issue #22, finding 2)', async (t) => {
  // min-replicas-to-write 1 and no replica: every write is refused, reads, SUBSCRIBE and PUBLISH work.
  const server = await redisServer(t, ['--min-replicas-to-write', '1'])
  const a = await replica(t, server, { maxStaleMs: 500, retryIntervalMs: 100 })
  const b = await replica(t, server)
  t.ok(a.store.synced && b.store.synced, 'both start: a full load only reads')

  const stale = once(a.store, 'stale')
  const expiresAt = inAnHour()
  await a.store.revoke('logged-out', expiresAt)
  t.equal(a.store.isRevoked('logged-out'), true, 'refused on A at once')
  await until(b.store, 'received', () => b.store.isRevoked('logged-out'))
  t.pass('and on B: the revocation was announced alone when Redis refused the write')
  t.equal(b.store.isRevoked('someone-else'), false, 'B refuses that session, not every session')
  await stale
  t.equal(a.store.synced, false, 'A, whose writes fail, counts as stale')
  await once(a.store, 'refusing')
  t.equal(a.store.isRevoked('someone-else'), true, 'and after its maxStaleMs refuses every session, since it cannot tell what reached Redis')
  t.match(a.warnings.join('\n'), 'Redis did not take a revocation')
  t.match(a.warnings.join('\n'), 'NOREPLICAS')

  const admin = client(server)
  t.teardown(() => admin.disconnect())
  t.equal(await admin.zscore(REVOKED, 'logged-out'), null, 'Redis has not taken it')
  t.equal(await admin.exists(NAMES.epoch), 0, 'nor a loss marker')
  const markerSet = once(b.store, 'loss')
  await admin.config('SET', 'min-replicas-to-write', '0')
  t.strictSame(await markerSet, ['marker'], 'once Redis takes writes, B sets the marker and loads again (a loss before could not be seen)')
  await until(a.store, 'flushed', () => a.store.synced && a.store.queued === 0)
  t.equal(a.store.isRevoked('someone-else'), false, 'writes taken again: A serves sessions again')
  t.equal(Number(await admin.zscore(REVOKED, 'logged-out')), expiresAt, 'the revocation is in Redis now')
  const late = await replica(t, server)
  t.equal(late.store.isRevoked('logged-out'), true, 'and a replica started now refuses it')
  t.notMatch([...a.warnings, ...b.warnings].join('\n'), /logged-out/, 'no session id in any warning')
})

t.test('FLUSHALL: the replicas notice within seconds, without a reconnect, and write back; a replica started after refuses the logged-out session (issue #22, finding 6)', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server, { checkIntervalMs: 100 })
  const b = await replica(t, server, { checkIntervalMs: 100 })
  const admin = client(server)
  t.teardown(() => admin.disconnect())
  await a.store.revoke('logged-out', inAnHour())
  const identity = { company: 'acme', user: 'u-1', user_name: 'Alice', role: 'admin', company_name: 'Acme' }
  await b.store.revise('revised', { version: 2, identity }, inAnHour())
  const refreshKey = { session: 'refreshed', keycloakSession: 'kc-1' }
  await a.store.saveRefresh(refreshKey, { sealed: 'sealed-1', checkedAt: nowSec() - 600, generation: 1 }, inAnHour())
  await until(b.store, 'received', () => b.store.isRevoked('logged-out'))

  const lost = Promise.all([once(a.store, 'loss'), once(b.store, 'loss')])
  const rewritten = Promise.all([writtenBack(a.store), writtenBack(b.store)])
  await admin.flushall()
  t.strictSame((await lost).map(([reason]) => reason), ['marker', 'marker'], 'both notice the loss marker is gone')
  await rewritten
  t.ok(await admin.zscore(REVOKED, 'logged-out'), 'the revocation is back in Redis')
  t.match(await admin.hget(NAMES.revisions, 'revised'), /^2\|/, 'so is the revision')
  t.equal(await admin.hget(NAMES.refresh('refreshed'), 's'), 'sealed-1', 'and the refresh state, from the journal')
  const late = await replica(t, server)
  t.equal(late.store.isRevoked('logged-out'), true, 'a replica started after the FLUSHALL refuses the logged-out session')
  t.strictSame(late.store.revision('revised'), { version: 2, identity })
  t.match(a.warnings.join('\n'), 'Redis lost data this replica holds')
})

t.test('a deleted key, a replaced marker, a write that finds the marker gone: each is a loss, and written back', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server, { checkIntervalMs: 100 })
  const admin = client(server)
  t.teardown(() => admin.disconnect())
  const identity = { company: 'acme', user: 'u-1', user_name: 'Alice', role: 'user', company_name: 'Acme' }
  await a.store.revoke('logged-out', inAnHour())
  await a.store.revise('revised', { version: 1, identity }, inAnHour())

  let lost = once(a.store, 'loss')
  let rewritten = writtenBack(a.store)
  await admin.del(REVOKED)
  t.strictSame(await lost, ['revocations'], 'the sorted set gone while A holds live revocations')
  await rewritten
  t.ok(await admin.zscore(REVOKED, 'logged-out'), 'written back')

  lost = once(a.store, 'loss')
  rewritten = writtenBack(a.store)
  await admin.del(NAMES.revisions)
  t.strictSame(await lost, ['revisions'], 'the revisions gone while A holds a live one')
  await rewritten
  t.match(await admin.hget(NAMES.revisions, 'revised'), /^1\|/, 'written back')

  lost = once(a.store, 'loss')
  const resynced = once(a.store, 'synced')
  await admin.set(NAMES.epoch, 'another-redis')
  t.strictSame(await lost, ['marker'], 'a marker another Redis set')
  await resynced

  // A store that checks rarely still notices at its next write: the reply carries the marker.
  const writer = await replica(t, server, { checkIntervalMs: 3_600_000 })
  await until(writer.store, 'received', () => writer.store.isRevoked('logged-out'))
  lost = once(writer.store, 'loss')
  rewritten = writtenBack(writer.store)
  a.store.removeAllListeners()
  await a.store.close()
  await admin.flushall()
  await Promise.all([writer.store.revoke('after-flush', inAnHour()), writer.store.revoke('after-flush-2', inAnHour())])
  t.strictSame(await lost, ['marker'], 'noticed in the reply of the write (once for both)')
  await rewritten
  t.ok(await admin.zscore(REVOKED, 'logged-out'), 'the revocations written back, the ones it received included')
})

t.test('close() while a pass waits on Redis: it resolves, the pass ends, no other pass runs', async (t) => {
  const unhandled = recordUnhandledRejections(t)
  const server = await redisServer(t)
  const admin = client(server)
  t.teardown(() => admin.disconnect())
  const a = await replica(t, server, { writeTimeoutMs: 300, retryIntervalMs: 60_000, checkIntervalMs: 60_000 })
  await admin.client('PAUSE', 60_000, 'WRITE')
  await a.store.revoke('queued', inAnHour())
  t.equal(a.store.queued, 1)
  // The host client's 'ready' starts a pass at once (its flush now waits on the paused Redis); a
  // second one during it asks for another pass after it.
  a.redis.emit('ready')
  a.redis.emit('ready')
  await a.store.close()
  t.match(a.warnings.join('\n'), 'closed with writes Redis never received')
  await sleep(400)
  await admin.client('UNPAUSE')
  t.strictSame(unhandled, [], 'nothing left unhandled')
})

// ---------------------------------------------------------------------------------------------
// Through the plugin: two replicas of the apiserver, each with its own store and Redis client.

const isCallback = (stack: Stack) => (url: string): boolean => url.startsWith(`${stack.appUrl}/callback_keycloak`)
const TOKEN_PATH = '/realms/clearml/protocol/openid-connect/token'

function sessionIdOf (token: string): string {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()).session_id
}

t.test('two replicas: a logout on A is refused on B; a callback replayed on B is refused before Keycloak', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server)
  const b = await replica(t, server)
  const stack = await startStack({ plugin: { revocations: a.store }, protectedRoute: true })
  t.teardown(stack.close)
  const other = await startReplica(stack, { revocations: b.store })
  t.teardown(other.close)

  const { agent } = await stack.login('alice')
  const token = agent.cookies(stack.appUrl).get('clearml_token_basic')!
  const onB = async (): Promise<Response> => await fetch(`${other.url}/me`, { headers: { cookie: `clearml_token_basic=${token}` } })
  t.equal((await onB()).status, 200, 'the session works on B')

  const logout = await agent.request(`${stack.appUrl}/login.logout`, { json: {} })
  t.equal(logout.status, 200, 'logged out on A')
  await until(b.store, 'received', () => b.store.isRevoked(sessionIdOf(token)))
  const refused = await onB()
  t.equal(refused.status, 401, 'the cookie is refused on B')
  t.match(await refused.json(), { meta: { result_msg: 'invalid_token' } })

  // A callback completed on A, then replayed (same cookie, same query) on B.
  const bob = USERS.find((u) => u.username === 'bob')!
  const browser = new UserAgent()
  const stopped = await browser.submitLogin(await browser.navigate(`${stack.appUrl}/login/keycloak`), bob.username, bob.password, { stopAt: isCallback(stack) })
  const callback = new URL(stopped.url)
  const [cookieName, sealed] = [...browser.cookies(stack.appUrl)].find(([name]) => name.startsWith('clearml_kc_tx_'))!
  t.equal((await browser.request(callback.href)).location, `${stack.appUrl}/`, 'the callback logs bob in on A')
  const tokenCalls = stack.idp.hits.get(TOKEN_PATH)
  const replayer = new UserAgent()
  replayer.setCookie(other.url, cookieName, sealed)
  const replay = await replayer.request(`${other.url}${callback.pathname}${callback.search}`)
  t.equal(replay.status, 302)
  t.equal(new URL(replay.location!).search, '?sso_error=invalid_state', 'refused on B with invalid_state')
  t.notOk(replay.setCookies.some((c) => /^clearml_token_basic=[^;]/.test(c)), 'no session')
  t.equal(stack.idp.hits.get(TOKEN_PATH), tokenCalls, 'B never called the token endpoint')
  t.match(other.logs.join(''), 'the login transaction was already used')
})

t.test('through the plugin, Redis down for longer than maxStaleMs: sessions and logins refused, then served again', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server, { maxStaleMs: 300 })
  const stack = await startStack({ plugin: { revocations: a.store }, protectedRoute: true })
  t.teardown(stack.close)
  const { agent } = await stack.login('alice')
  const me = async (): Promise<number> => (await agent.request(`${stack.appUrl}/me`)).status
  t.equal(await me(), 200)

  const stale = once(a.store, 'stale')
  const refusing = once(a.store, 'refusing')
  await server.kill()
  await stale
  t.equal(await me(), 200, 'within maxStaleMs the session is still served')
  await refusing
  t.equal(await me(), 401, 'after it, refused')

  const browser = new UserAgent()
  const stopped = await browser.submitLogin(await browser.navigate(`${stack.appUrl}/login/keycloak`), 'bob', 'bob-pw', { stopAt: isCallback(stack) })
  const tokenCalls = stack.idp.hits.get(TOKEN_PATH)
  t.equal((await browser.request(stopped.url)).location, `${stack.appUrl}/login?sso_error=directory_error`, 'a login is refused too')
  t.equal(stack.idp.hits.get(TOKEN_PATH), tokenCalls, 'before its code is exchanged')

  const synced = once(a.store, 'synced')
  await server.start()
  await synced
  t.equal(await me(), 200, 'in sync again: the same cookie works, without logging in again')
})

t.test('two replicas: Keycloak\'s back-channel logout received by A ends the Keycloak session\'s sessions on B', async (t) => {
  const server = await redisServer(t)
  const a = await replica(t, server)
  const b = await replica(t, server)
  const stack = await startStack({ env: { [`${KC}idp_logout`]: 'true' }, plugin: { revocations: a.store } })
  t.teardown(stack.close)
  const other = await startReplica(stack, { revocations: b.store })
  t.teardown(other.close)

  const { agent } = await stack.login('alice')
  const first = agent.cookies(stack.appUrl).get('clearml_token_basic')!
  // A second ClearML session on the same Keycloak session (single sign-on: no password asked).
  await agent.navigate(`${stack.appUrl}/login/keycloak`)
  const onB = async (token: string): Promise<number> => (await fetch(`${other.url}/me`, { headers: { authorization: `Bearer ${token}` } })).status
  t.equal(await onB(first), 200)

  // The user logs out at Keycloak itself (another application's logout): Keycloak ends the session
  // and calls the back-channel URL, which reaches replica A.
  await agent.confirmIdpLogout(`${stack.idp.issuer}/protocol/openid-connect/logout?client_id=clearml&post_logout_redirect_uri=${encodeURIComponent(`${stack.appUrl}/login`)}`, { stopAt: (u) => u.startsWith(stack.appUrl) })
  t.match(stack.logs.join(''), 'Keycloak back-channel logout', 'A received the back-channel call')

  const sid = JSON.parse(Buffer.from(first.split('.')[1], 'base64url').toString()).sso.sid as string
  await until(b.store, 'received', () => b.store.isRevoked(`keycloak-sid:${sid}`))
  t.equal(await onB(first), 401, 'the first session, never logged out at ClearML, is refused on B')
})
