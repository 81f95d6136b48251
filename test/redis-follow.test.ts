/**
 * RedisRevocationStore as a SessionFollowStore (SPEC section 12, issue #20) against a real
 * redis-server: the contract every follow store passes (test/helpers/follow-store-contract.ts), run
 * on three stores with clients of their own (three apiserver replicas), then what only a shared
 * store over a network has to do: the journal that keeps a rotated token through a loss, and what
 * the follow methods do while Redis is unreachable or refusing writes.
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { startRedisServer, type RedisServer } from './helpers/redis-server.js'
import { followStoreContract } from './helpers/follow-store-contract.js'
import { RedisRevocationStore, REDIS_STORE_ERRORS, DEFAULT_KEY_PREFIX, type RedisRevocationStoreOptions } from '../redis/index.js'
import { redisNames } from '../redis/layout.js'
import { JOURNAL_MS, RefreshJournal } from '../redis/refresh-states.js'
import type { RefreshLease, RefreshState } from '../lib/session/follow-store.js'

const NAMES = redisNames(DEFAULT_KEY_PREFIX)
const nowSec = (): number => Date.now() / 1000
const inAnHour = (): number => nowSec() + 3600
const due = (): { dueBefore: number, leaseMs: number } => ({ dueBefore: nowSec() - 300, leaseMs: 30_000 })
const quiet = { warn: () => {}, info: () => {} }

async function redisServer (t: Test, args?: string[]): Promise<RedisServer> {
  const server = await startRedisServer({ args })
  t.teardown(server.stop)
  return server
}

function client (server: RedisServer): Redis {
  const redis = new Redis(server.port, server.host, { retryStrategy: () => 50 })
  redis.on('error', () => {})
  return redis
}

async function store (t: Test, server: RedisServer, options: Partial<RedisRevocationStoreOptions> = {}): Promise<{ store: RedisRevocationStore, redis: Redis }> {
  const redis = client(server)
  const created = new RedisRevocationStore({ redis, log: quiet, ...options })
  t.teardown(async () => {
    await created.close()
    redis.disconnect()
  })
  await created.ready()
  return { store: created, redis }
}

async function until (check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

t.test('the SessionFollowStore contract, on three replicas sharing one redis-server', async (t) => {
  const server = await redisServer(t)
  const stores = await Promise.all([0, 1, 2].map(async () => (await store(t, server)).store))
  await followStoreContract(t, async () => stores)
})

t.test('what Redis holds: one hash per session and one set per Keycloak session, expiring with them; no token in any other key', async (t) => {
  const server = await redisServer(t)
  const { store: a, redis } = await store(t, server)
  const expiresAt = Math.floor(nowSec()) + 3600
  const state: RefreshState = { sealed: 'sealed-token', checkedAt: 1000, generation: 1 }
  await a.saveRefresh({ session: 's-1', keycloakSession: 'kc-1' }, state, expiresAt)
  t.strictSame(await redis.hgetall(NAMES.refresh('s-1')), { s: 'sealed-token', c: '1000', g: '1', x: String(expiresAt * 1000), k: 'kc-1' })
  t.equal(await redis.pexpiretime(NAMES.refresh('s-1')), expiresAt * 1000, 'the state expires with its session')
  t.strictSame(await redis.smembers(NAMES.keycloakSession('kc-1')), ['s-1'])
  t.equal(await redis.pexpiretime(NAMES.keycloakSession('kc-1')), expiresAt * 1000, 'the index with its longest session')
  await a.saveRefresh({ session: 's-2', keycloakSession: 'kc-1' }, state, expiresAt + 60)
  t.equal(await redis.pexpiretime(NAMES.keycloakSession('kc-1')), (expiresAt + 60) * 1000)
  t.ok(await redis.pexpiretime(NAMES.epoch) >= (expiresAt + 60) * 1000, 'the loss marker outlives what it guards')

  const leased = await a.leaseRefresh({ session: 's-1' }, { dueBefore: 2000, leaseMs: 5000 })
  t.equal(leased.status, 'leased')
  const [lease, until] = await redis.hmget(NAMES.refresh('s-1'), 'l', 'u')
  t.equal(lease, leased.status === 'leased' ? leased.lease : '', 'the lease is in the state')
  const [seconds] = await redis.time()
  t.ok(Math.abs(Number(until) - (Number(seconds) * 1000 + 5000)) < 2000, 'until when, on Redis\'s clock')

  await a.endRefresh({ session: 's-2' }, expiresAt)
  t.strictSame(await redis.hgetall(NAMES.refresh('s-2')), { e: '1' }, 'an ended state keeps no token')
  t.strictSame(await redis.smembers(NAMES.keycloakSession('kc-1')), ['s-1'], 'and leaves its Keycloak session')

  const session = 's-revised'
  await a.revise(session, { version: 2, identity: { company: 'c', user: 'u', user_name: 'n', role: 'admin', company_name: 'C' } }, expiresAt)
  t.match(await redis.hget(NAMES.revisions, session), /^2\|/, 'a revision, version first')
  t.equal(Number(await redis.zscore(NAMES.revisionExpiry, session)), expiresAt)
  t.equal(await redis.pexpiretime(NAMES.revisions), expiresAt * 1000)
  const keys = (await redis.keys('*')).sort()
  t.strictSame(keys, [NAMES.epoch, NAMES.keycloakSession('kc-1'), NAMES.refresh('s-1'), NAMES.refresh('s-2'), NAMES.revisionExpiry, NAMES.revisions].sort(), 'nothing else')
})

t.test('the leases a replica remembers are dropped once they have run out', async (t) => {
  const server = await redisServer(t)
  const { store: a } = await store(t, server)
  const state: RefreshState = { sealed: 'sealed', checkedAt: 1, generation: 1 }
  await a.saveRefresh({ session: 'short' }, state, inAnHour())
  await a.saveRefresh({ session: 'next' }, state, inAnHour())
  const first = await a.leaseRefresh({ session: 'short' }, { dueBefore: 2, leaseMs: 50 })
  t.equal(first.status, 'leased')
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal((await a.leaseRefresh({ session: 'next' }, { dueBefore: 2, leaseMs: 5000 })).status, 'leased', 'a later lease, after the first ran out')
  t.equal((await a.leaseRefresh({ session: 'short' }, { dueBefore: 2, leaseMs: 5000 })).status, 'leased', 'the first one\'s session can be leased again')
  t.equal(await a.releaseRefresh({ session: 'short' }, (first as { lease: string }).lease), false, 'and the lapsed lease releases nothing')
})

t.test('inputs are checked before anything is changed', async (t) => {
  const server = await redisServer(t)
  const { store: a, redis } = await store(t, server)
  const input = { name: 'RedisStoreError', code: REDIS_STORE_ERRORS.input }
  const state: RefreshState = { sealed: 's', checkedAt: 1, generation: 1 }
  await t.rejects(a.saveRefresh(null as never, state, inAnHour()), input)
  await t.rejects(a.saveRefresh({ session: '' }, state, inAnHour()), input)
  await t.rejects(a.saveRefresh({ session: 's', keycloakSession: '' }, state, inAnHour()), input)
  await t.rejects(a.saveRefresh({ session: 's' }, { ...state, sealed: '' }, inAnHour()), { ...input, message: 'sealed token' })
  await t.rejects(a.saveRefresh({ session: 's' }, { ...state, checkedAt: Number.NaN }, inAnHour()), { ...input, message: 'checkedAt' })
  await t.rejects(a.saveRefresh({ session: 's' }, { ...state, generation: 1.5 }, inAnHour()), { ...input, message: 'generation' })
  await t.rejects(a.saveRefresh({ session: 's' }, undefined as never, inAnHour()), input)
  await t.rejects(a.saveRefresh({ session: 's' }, state, Number.NaN), input)
  await t.rejects(a.leaseRefresh({ session: 's' }, { dueBefore: Number.NaN, leaseMs: 1 }), { ...input, message: 'dueBefore' })
  await t.rejects(a.leaseRefresh({ session: 's' }, undefined as never), { ...input, message: 'dueBefore' })
  await t.rejects(a.leaseRefresh({ session: 's' }, { dueBefore: 1, leaseMs: 0 }), { ...input, message: 'leaseMs' })
  await t.rejects(a.releaseRefresh({ session: 's' }, ''), { ...input, message: 'lease' })
  await t.rejects(a.releaseRefresh({ session: 's' }, 'l', { ...state, generation: 0 }), input)
  await t.rejects(a.endRefresh({ session: 's' }, Number.POSITIVE_INFINITY), input)
  await t.rejects(a.takeRefresh({} as never), input)
  await t.rejects(a.takeKeycloakSessionRefreshes(''), input)
  const identity = { company: 'c', user: 'u', user_name: 'n', role: 'user', company_name: 'C' }
  await t.rejects(a.revise('', { version: 1, identity }, inAnHour()), input)
  await t.rejects(a.revise('s', { version: 0, identity }, inAnHour()), { ...input, message: 'version' })
  await t.rejects(a.revise('s', { version: 1, identity: { ...identity, role: 7 } as never }, inAnHour()), { ...input, message: 'identity' })
  await t.rejects(a.revise('s', undefined as never, inAnHour()), input)
  await t.rejects(a.revise('s', { version: 1, identity, mac: 'not | base64url' }, inAnHour()), { ...input, message: 'mac' })
  await t.rejects(a.revise('s', { version: 1, identity }, '1' as never), input)
  t.strictSame(await redis.keys('*'), [NAMES.epoch], 'nothing written')
})

t.test('a rotation Redis lost (a failover to a replica that missed it) is written back by the journal before the next lease', async (t) => {
  const server = await redisServer(t)
  const { store: a } = await store(t, server)
  const { store: b } = await store(t, server)
  const admin = client(server)
  t.teardown(() => admin.disconnect())
  const key = { session: 'rotated', keycloakSession: 'kc-rotated' }
  await a.saveRefresh(key, { sealed: 'sealed-1', checkedAt: nowSec() - 600, generation: 1 }, inAnHour())
  const before = await admin.hgetall(NAMES.refresh('rotated'))
  const first = await a.leaseRefresh(key, due()) as Extract<RefreshLease, { status: 'leased' }>
  const rotated: RefreshState = { sealed: 'sealed-2', checkedAt: nowSec() - 600, generation: 2 }
  t.equal(await a.releaseRefresh(key, first.lease, rotated), true)
  // B's journal holds the rotation (announced on the channel) before Redis loses it.
  await until(async () => (await admin.hget(NAMES.refresh('rotated'), 'g')) === '2')
  await new Promise((resolve) => setTimeout(resolve, 100))
  // As a replica promoted before it received the rotation would hold it: generation 1, no lease.
  await admin.del(NAMES.refresh('rotated'))
  await admin.hset(NAMES.refresh('rotated'), before)
  await admin.pexpireat(NAMES.refresh('rotated'), Number(before.x))

  const next = await b.leaseRefresh(key, due())
  t.strictSame(next.status === 'leased' && next.state, rotated, 'B presents the rotated token, not the one Keycloak already rotated away')
  t.equal(await admin.hget(NAMES.refresh('rotated'), 'g'), '2', 'and Redis has it again')
})

t.test('a state Redis lost entirely is written back from the journal; a state taken by a logout is not', async (t) => {
  const server = await redisServer(t)
  const { store: a } = await store(t, server)
  const { store: b } = await store(t, server)
  const admin = client(server)
  t.teardown(() => admin.disconnect())
  const lost = { session: 'lost', keycloakSession: 'kc-lost' }
  const state: RefreshState = { sealed: 'sealed-lost', checkedAt: nowSec() - 600, generation: 1 }
  await a.saveRefresh(lost, state, inAnHour())
  await until(async () => (await admin.exists(NAMES.refresh('lost'))) === 1)
  await new Promise((resolve) => setTimeout(resolve, 100))
  await admin.del(NAMES.refresh('lost'), NAMES.keycloakSession('kc-lost'))
  const leased = await b.leaseRefresh(lost, due())
  t.strictSame(leased.status === 'leased' && leased.state, state, 'leased from B\'s journal')
  t.strictSame(await admin.smembers(NAMES.keycloakSession('kc-lost')), ['lost'], 'with its Keycloak session\'s index')

  const taken = { session: 'taken' }
  await a.saveRefresh(taken, state, inAnHour())
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.strictSame(await a.takeRefresh(taken), state)
  await until(async () => await b.takeRefresh(taken) === undefined)
  t.strictSame(await b.leaseRefresh(taken, due()), { status: 'absent' }, 'the journals forgot it when it was taken')
})

t.test('Redis unreachable: no lease is granted; saves and rotations wait in the journal and are written when Redis is back', async (t) => {
  const server = await redisServer(t)
  const { store: a, redis } = await store(t, server, { writeTimeoutMs: 300, retryIntervalMs: 100 })
  const key = { session: 'outage', keycloakSession: 'kc-outage' }
  await a.saveRefresh(key, { sealed: 'sealed-1', checkedAt: nowSec() - 600, generation: 1 }, inAnHour())
  const held = await a.leaseRefresh(key, due()) as Extract<RefreshLease, { status: 'leased' }>
  const down = Promise.all([once(a, 'stale'), once(redis, 'close')])
  await server.kill()
  await down
  await t.rejects(a.leaseRefresh(key, due()), { code: REDIS_STORE_ERRORS.unavailable, message: 'no refresh lease granted' }, 'no lease without Redis')
  const rotated: RefreshState = { sealed: 'sealed-2', checkedAt: nowSec(), generation: 2 }
  t.equal(await a.releaseRefresh(key, held.lease, rotated), true, 'the rotated token is kept')
  const saved = { session: 'saved-in-outage', keycloakSession: 'kc-outage' }
  await a.saveRefresh(saved, { sealed: 'sealed-saved', checkedAt: nowSec(), generation: 1 }, inAnHour())
  await a.endRefresh({ session: 'ended-in-outage' }, inAnHour())
  t.strictSame(await a.takeRefresh({ session: 'unknown' }), undefined, 'a take answers from the journal')
  const journaled = { session: 'journaled', keycloakSession: 'kc-journaled' }
  await a.saveRefresh(journaled, { sealed: 'sealed-journaled', checkedAt: nowSec(), generation: 1 }, inAnHour())
  t.equal((await a.takeRefresh(journaled))?.sealed, 'sealed-journaled', 'a take of a state saved in the outage, from the journal')
  await a.saveRefresh(journaled, { sealed: 'sealed-journaled-2', checkedAt: nowSec(), generation: 2 }, inAnHour())
  t.strictSame((await a.takeKeycloakSessionRefreshes('kc-journaled')).map((s) => s.sealed), ['sealed-journaled-2'], 'so is a back-channel take')
  t.equal(a.queued, 3, 'two states and one end wait for Redis')
  await a.revise('revised-in-outage', { version: 1, identity: { company: 'c', user: 'u', user_name: 'n', role: 'user', company_name: 'C' } }, inAnHour())
  t.equal(a.revision('revised-in-outage')?.version, 1, 'a revision takes effect here at once')
  t.equal(a.queued, 4)

  await server.start() // empty
  await until(() => a.synced && a.queued === 0)
  const admin = client(server)
  t.teardown(() => admin.disconnect())
  t.equal(await admin.hget(NAMES.refresh('outage'), 's'), 'sealed-2', 'the rotation reached the Redis that lost everything')
  t.equal(await admin.hget(NAMES.refresh('saved-in-outage'), 's'), 'sealed-saved')
  t.strictSame(await admin.hgetall(NAMES.refresh('ended-in-outage')), { e: '1' })
  t.match(await admin.hget(NAMES.revisions, 'revised-in-outage'), /^1\|/)
  t.strictSame((await admin.smembers(NAMES.keycloakSession('kc-outage'))).sort(), ['outage', 'saved-in-outage'])
})

t.test('Redis refusing writes (NOREPLICAS): no lease, the rest kept and announced; all written once Redis takes writes again', async (t) => {
  const server = await redisServer(t)
  const aWarnings: string[] = []
  const { store: a } = await store(t, server, { retryIntervalMs: 100, log: { warn: (_o, message) => { aWarnings.push(message) } } })
  const warnings: string[] = []
  const bClient = client(server)
  const b = new RedisRevocationStore({ redis: bClient, log: { warn: (_o, message) => { warnings.push(message) } } })
  t.teardown(async () => {
    await b.close()
    bClient.disconnect()
  })
  await b.ready()
  const admin = client(server)
  t.teardown(() => admin.disconnect())
  const sid = 'kc-refused'
  const held = { session: 'held', keycloakSession: sid }
  const ending = { session: 'ending' }
  const other = { session: 'other', keycloakSession: sid }
  await a.saveRefresh(held, { sealed: 'sealed-held-1', checkedAt: nowSec() - 600, generation: 1 }, inAnHour())
  await a.saveRefresh(ending, { sealed: 'sealed-ending', checkedAt: nowSec() - 600, generation: 1 }, inAnHour())
  await a.saveRefresh(other, { sealed: 'sealed-other', checkedAt: nowSec() - 600, generation: 1 }, inAnHour())
  const lease = await a.leaseRefresh(held, due()) as Extract<RefreshLease, { status: 'leased' }>
  await admin.hset(NAMES.refresh('foreign'), { s: 'sealed-foreign', c: '1', g: '1', x: String(Math.ceil(inAnHour() * 1000)), l: 'foreign-lease', u: String(Date.now() + 60_000) })
  await until(async () => (await b.takeRefresh({ session: 'absent' })) === undefined)
  await admin.config('SET', 'min-replicas-to-write', '1')

  await a.endRefresh(ending, inAnHour())
  t.equal(await a.takeRefresh(ending), undefined, 'an end waiting for Redis: nothing to take')
  // Its first retry fails too: the queued end is kept for the next.
  await until(() => aWarnings.some((line) => line.includes('trying again')))
  t.equal(a.queued, 1)
  await t.rejects(b.leaseRefresh(other, due()), { code: REDIS_STORE_ERRORS.unavailable }, 'B asked Redis for a lease, which Redis refused')
  await t.rejects(a.leaseRefresh(other, due()), { code: REDIS_STORE_ERRORS.unavailable }, 'A, whose writes fail, does not even ask')
  const rotated: RefreshState = { sealed: 'sealed-held-2', checkedAt: nowSec(), generation: 2 }
  t.equal(await a.releaseRefresh(held, lease.lease, rotated), true, 'a rotated token Redis refused is kept')
  await a.saveRefresh({ session: 'saved' }, { sealed: 'sealed-saved', checkedAt: nowSec(), generation: 1 }, inAnHour())
  // A state B's journal lacks (no replica announced it), under a lease B is told it holds.
  t.equal(await b.releaseRefresh({ session: 'foreign' }, 'foreign-lease'), true, 'a release Redis refused: the lease ends by itself')
  t.equal(await b.releaseRefresh({ session: 'foreign' }, 'not-a-lease', rotated), true, 'a rotation Redis refused, of a state B knows nothing of')
  const identity = { company: 'c', user: 'u', user_name: 'n', role: 'user', company_name: 'C' }
  await a.revise('revised', { version: 1, identity }, inAnHour())
  await until(() => b.revision('revised')?.version === 1)
  t.pass('the revision Redis refused was announced to B')
  t.equal((await b.takeRefresh(other))?.sealed, 'sealed-other', 'a take Redis refused answers from the journal')
  t.strictSame((await b.takeKeycloakSessionRefreshes(sid)).map((s) => s.sealed), ['sealed-held-2'], 'so does a back-channel take: the rotation announced, not the token Redis holds')

  await admin.config('SET', 'min-replicas-to-write', '0')
  await until(() => a.queued === 0 && a.synced && b.queued === 0 && b.synced)
  t.strictSame(await admin.hmget(NAMES.refresh('held'), 's', 'l'), ['sealed-held-2', null], 'the rotation is in Redis, and its lease ended')
  t.strictSame(await admin.hmget(NAMES.refresh('foreign'), 's', 'l'), ['sealed-held-2', null], 'B\'s release and rotation too, though B knew nothing of the session')
  t.equal(await admin.hget(NAMES.refresh('saved'), 's'), 'sealed-saved')
  t.strictSame(await admin.hgetall(NAMES.refresh('ending')), { e: '1' })
  t.match(await admin.hget(NAMES.revisions, 'revised'), /^1\|/)
})

t.test('a release of a lease another replica granted, by a replica whose journal lacks the session, keeps the state\'s expiry', async (t) => {
  const server = await redisServer(t)
  const { store: a, redis } = await store(t, server)
  const key = { session: 'elsewhere', keycloakSession: 'kc-elsewhere' }
  const expiresAt = Math.floor(nowSec()) + 3600
  await a.saveRefresh(key, { sealed: 'sealed-1', checkedAt: nowSec() - 600, generation: 1 }, expiresAt)
  const { store: late } = await store(t, server)
  const leased = await a.leaseRefresh(key, due()) as Extract<RefreshLease, { status: 'leased' }>
  t.equal(await late.releaseRefresh(key, leased.lease, { sealed: 'sealed-2', checkedAt: nowSec(), generation: 2 }), true)
  t.strictSame(await redis.hmget(NAMES.refresh('elsewhere'), 's', 'x'), ['sealed-2', String(expiresAt * 1000)])
  t.equal(await redis.pexpiretime(NAMES.refresh('elsewhere')), expiresAt * 1000)
  await a.endRefresh(key, nowSec() - 1)
  t.equal((await late.leaseRefresh(key, due())).status, 'fresh', 'an end for a session already over changes nothing (checked at the release: fresh, not ended)')

  // Leases this replica granted that have ended are forgotten as new ones are granted.
  const short = { session: 'short-lease' }
  await a.saveRefresh(short, { sealed: 'sealed-short', checkedAt: nowSec() - 600, generation: 1 }, inAnHour())
  await a.leaseRefresh(short, { dueBefore: nowSec(), leaseMs: 20 })
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal((await a.leaseRefresh(short, due())).status, 'leased')

  // A take returns the journal's token when Redis holds an older generation (a rotation it lost).
  const lost = { session: 'lost-rotation' }
  await a.saveRefresh(lost, { sealed: 'sealed-old', checkedAt: nowSec() - 600, generation: 1 }, inAnHour())
  const before = await redis.hgetall(NAMES.refresh('lost-rotation'))
  const held = await a.leaseRefresh(lost, due()) as Extract<RefreshLease, { status: 'leased' }>
  await a.releaseRefresh(lost, held.lease, { sealed: 'sealed-new', checkedAt: nowSec(), generation: 2 })
  await redis.hset(NAMES.refresh('lost-rotation'), before)
  t.equal((await a.takeRefresh(lost))?.sealed, 'sealed-new', 'the newest token, for the logout to revoke')
})

t.test('revisions: what no store wrote is skipped at a load; expired ones go from the copy as it grows and are never written', async (t) => {
  const server = await redisServer(t)
  const admin = client(server)
  t.teardown(() => admin.disconnect())
  const identity = { company: 'c', user: 'u', user_name: 'n', role: 'user', company_name: 'C' }
  await admin.hset(NAMES.revisions, 'garbage', 'not a revision', 'bad-json', '1|9999999999||{', 'bad-identity', '1|9999999999||{"role":1}', 'bad-expiry', '1|soon||{}',
    'bad-mac', `1|9999999999|not a mac|${JSON.stringify(identity)}`, 'good', `3|9999999999||${JSON.stringify(identity)}`)
  const { store: a } = await store(t, server, { writeTimeoutMs: 300, retryIntervalMs: 100 })
  t.strictSame(a.revision('good'), { version: 3, identity })
  for (const session of ['garbage', 'bad-json', 'bad-identity', 'bad-expiry', 'bad-mac']) t.equal(a.revision(session), undefined, session)

  await a.revise('past', { version: 1, identity }, nowSec() - 1)
  t.equal(a.revision('past'), undefined, 'an expired revision is not kept')
  t.equal(await admin.hexists(NAMES.revisions, 'past'), 0, 'nor written')
  const soon = nowSec() + 0.5
  await a.revise('short', { version: 1, identity }, soon)
  await new Promise((resolve) => setTimeout(resolve, (soon + 0.05) * 1000 - Date.now()))
  await Promise.all(Array.from({ length: 1030 }, async (_, i) => { await a.revise(`many-${i}`, { version: 1, identity }, inAnHour()) }))
  t.equal(a.revision('short'), undefined, 'expired')
  t.equal(await admin.hexists(NAMES.revisions, 'short'), 0, 'and removed from Redis by a later write')

  // Queued through an outage, expired before Redis is back: never written.
  const down = once(a, 'stale')
  await server.kill()
  await down
  const brief = nowSec() + 0.3
  await a.revise('queued-short', { version: 1, identity }, brief)
  await a.revise('queued-long', { version: 1, identity }, inAnHour())
  await new Promise((resolve) => setTimeout(resolve, (brief + 0.05) * 1000 - Date.now()))
  await server.start()
  await until(() => a.synced && a.queued === 0)
  const fresh = client(server)
  t.teardown(() => fresh.disconnect())
  t.equal(await fresh.hexists(NAMES.revisions, 'queued-short'), 0, 'the expired one was not written')
  t.match(await fresh.hget(NAMES.revisions, 'queued-long'), /^1\|/, 'the live one was')
  t.equal(await fresh.hlen(NAMES.revisions), 1032, 'with every other revision the copy held (a Redis restarted empty gets them back)')
})

t.test('the journal: newest generation per session, bounded, written states pruned after a minute unless out of touch', async (t) => {
  const state = (generation: number): RefreshState => ({ sealed: `s-${generation}`, checkedAt: 1, generation })
  const journal = new RefreshJournal(2)
  journal.record({ session: 'a' }, state(2), inAnHour(), { written: false, create: true })
  journal.record({ session: 'a' }, state(1), inAnHour(), { written: true, create: true })
  t.equal(journal.get('a')?.state.generation, 2, 'a lower generation is ignored')
  t.equal(journal.unwrittenCount, 1)
  journal.learn({ session: 'a' }, state(2), inAnHour())
  t.equal(journal.unwrittenCount, 1, 'an announcement of the same generation leaves its writer\'s entry unwritten')
  journal.record({ session: 'a' }, state(2), inAnHour(), { written: true, create: true })
  t.equal(journal.unwrittenCount, 0, 'the same generation written: written')
  journal.record({ session: 'a' }, state(2), inAnHour(), { written: false, create: false })
  t.equal(journal.unwrittenCount, 0, 'and stays written')
  journal.record({ session: 'b' }, state(3), inAnHour(), { written: false, create: true })
  journal.written('b', 2)
  journal.written('none', 1)
  t.equal(journal.unwrittenCount, 1, 'a lower generation written does not count for a higher one')
  journal.learn({ session: 'c' }, state(1), inAnHour())
  t.strictSame([journal.size, journal.get('a'), journal.get('c')?.written], [2, undefined, true], 'bounded: the oldest went first; a state learnt from another replica is its writer\'s to write')

  const pruned = new RefreshJournal()
  pruned.record({ session: 'expired' }, state(1), nowSec() - 1, { written: true, create: true })
  t.equal(pruned.get('expired'), undefined, 'an expired state is not given')
  pruned.record({ session: 'short' }, state(1), nowSec() + 0.2, { written: true, create: true })
  pruned.record({ session: 'written' }, state(1), inAnHour(), { written: true, create: true })
  pruned.record({ session: 'unwritten' }, state(1), inAnHour(), { written: false, create: false })
  await new Promise((resolve) => setTimeout(resolve, 250))
  pruned.prune(true)
  t.equal(pruned.size, 2, 'expired states are pruned')
  pruned.prune(true, performance.now() + JOURNAL_MS + 1)
  t.equal(pruned.size, 2, 'out of touch: written states are kept past a minute')
  pruned.prune(false, performance.now() + JOURNAL_MS + 1)
  t.strictSame(pruned.unwritten().map((entry) => entry.key.session), ['unwritten'], 'in touch: a written state goes after a minute, an unwritten one stays')
  t.equal(pruned.size, 1)
  t.equal(pruned.rewriteAll(), 1)
  t.equal(pruned.unwritten()[0].create, true, 'a write-back creates what Redis lost')
})
