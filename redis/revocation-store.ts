/**
 * Revocations, login claims and server-side values shared by every apiserver replica through Redis
 * (SPEC sections 7a and 9), on the host's ioredis client.
 *
 * `authenticate` asks `isRevoked` on every request and must not wait on the network, so each replica
 * keeps a local copy of every live revocation: loaded in full at start and after every reconnect of
 * its subscriber, and kept current by pub/sub in between. Writes go to Redis, but never hold a logout
 * for longer than `writeTimeoutMs`: a write Redis did not take in time is queued, takes effect on
 * this replica at once and is written when Redis answers again. After every reconnect each replica
 * also writes back what its copy holds and Redis lacks, so a Redis restarted empty gets every live
 * revocation again.
 *
 * While the subscriber is disconnected the copy may miss revocations made on other replicas. The
 * store then keeps answering from it for `maxStaleMs` (a Redis restart or failover goes unnoticed by
 * users), and after that refuses every session until it has loaded Redis again: a revoked session is
 * never accepted for longer than that bound.
 *
 * The store imports ioredis for its types only; it uses the client it is given, and owns only the
 * subscriber connection it duplicates from it.
 */
import { EventEmitter } from 'node:events'
import type { Redis } from 'ioredis'
import type { RevocationStore, StoreLog } from '../lib/session/revocations.js'
import { RedisStoreError, REDIS_STORE_ERRORS } from './errors.js'
import {
  CLAIM_SCRIPT, DEFAULT_KEY_PREFIX, LOAD_PAGE, SET_VALUE_SCRIPT, TAKE_VALUE_SCRIPT, WRITE_BATCH, WRITE_REVOCATIONS_SCRIPT,
  decodeRevocations, encodeRevocations, isRevocationId, redisNames, type RedisNames, type Revocation
} from './layout.js'

/** A pino logger fits; `info` is optional. */
export interface RedisStoreLog extends StoreLog {
  info?(object: Record<string, unknown>, message: string): void
}

export interface RedisRevocationStoreOptions {
  /** The host's ioredis client, e.g. `fastify.redis`. The store never closes it. */
  redis: Redis
  /** Prefix of every key and of the channel, so the store can share ClearML's Redis database. */
  keyPrefix?: string
  /** The longest a revoke, a login claim or a value waits on Redis before it is queued (ms). */
  writeTimeoutMs?: number
  /**
   * How long `isRevoked` answers from the local copy while the copy cannot be kept current (ms);
   * after that it refuses every session until the store has loaded Redis again. `Infinity`: never.
   */
  maxStaleMs?: number
  /** How long `ready()` waits for the first full load (ms). */
  readyTimeoutMs?: number
  /** Pause before writing queued changes again when Redis is connected but a write failed (ms). */
  retryIntervalMs?: number
  /** Where warnings go (a pino logger fits); by default `process.emitWarning`. */
  log?: RedisStoreLog
}

export interface SyncReport {
  /** Live revocations found in Redis. */
  loaded: number
  /** Revocations this replica held and Redis lacked, queued to be written back. */
  writtenBack: number
  durationMs: number
}

export interface FlushReport {
  revocations: number
  claims: number
  values: number
}

/** What the store reports as it happens; for metrics, health checks and tests. */
export type RedisRevocationStoreEvents = {
  /** A full load finished (at start, then after each reconnect): the copy is current. */
  synced: [report: SyncReport]
  /** Revocations arrived by pub/sub and are in the local copy (from any replica, this one included). */
  received: [ids: string[]]
  /** The subscriber lost Redis: answers come from the local copy, for `maxStaleMs` at most. */
  stale: []
  /** `maxStaleMs` passed without a reload: every session is refused until the next `synced`. */
  refusing: []
  /** Queued writes reached Redis. */
  flushed: [report: FlushReport]
}

export const REDIS_STORE_DEFAULTS = {
  keyPrefix: DEFAULT_KEY_PREFIX,
  writeTimeoutMs: 1000,
  maxStaleMs: 60_000,
  readyTimeoutMs: 10_000,
  retryIntervalMs: 1000
} as const

/** Writes a replica keeps while Redis is unreachable; the oldest go first beyond these. */
const MAX_QUEUED_CLAIMS = 100_000
const MAX_QUEUED_VALUES = 10_000
/** The local copy is swept of expired revocations whenever it has doubled since the last sweep. */
const MIN_SWEEP_SIZE = 1024

interface QueuedValue { value: string, expiresAt: number }

const nowSec = (): number => Date.now() / 1000
const noop = (): void => {}

export class RedisRevocationStore extends EventEmitter<RedisRevocationStoreEvents> implements RevocationStore {
  readonly #redis: Redis
  readonly #names: RedisNames
  readonly #writeTimeoutMs: number
  readonly #maxStaleMs: number
  readonly #readyTimeoutMs: number
  readonly #retryIntervalMs: number
  #log: RedisStoreLog | undefined
  #subscriber: Redis | undefined

  /** The local copy: revoked id → expiry of its session (seconds). */
  readonly #revoked = new Map<string, number>()
  #sweepAt = MIN_SWEEP_SIZE
  /** Writes Redis has not taken yet. */
  readonly #queuedRevocations = new Map<string, number>()
  readonly #queuedClaims = new Map<string, number>()
  readonly #queuedValues = new Map<string, QueuedValue>()

  /**
   * Since when (`performance.now()`, so a wall-clock step cannot shorten or stretch the bound) the
   * copy may be missing revocations; `undefined` while it is current. It starts at minus infinity:
   * before the first load nothing is known, and every session is refused.
   */
  #staleSince: number | undefined = Number.NEGATIVE_INFINITY
  /** Counts subscriber disconnections, so a load that raced one is not taken as current. */
  #epoch = 0
  /** Set when `maxStaleMs` has passed since `#staleSince` (by its timer). */
  #refusing = false
  #staleTimer: NodeJS.Timeout | undefined
  #retryTimer: NodeJS.Timeout | undefined
  #working = false
  #workAgain = false
  #firstSync: Promise<void> | undefined
  #settleFirstSync: { resolve: () => void, reject: (err: Error) => void } | undefined
  #closed = false
  /** The last thing that went wrong with Redis, for `ready()`'s error and the warnings. */
  #lastProblem = 'no answer yet'
  /** One warning per outage about queued writes, and one per run of failed retries. */
  #warnedQueued = false
  #warnedRetry = false

  constructor (options: RedisRevocationStoreOptions) {
    super()
    const redis = options?.redis as Partial<Redis> | undefined
    if (typeof redis?.duplicate !== 'function' || typeof redis.eval !== 'function' || typeof redis.status !== 'string') {
      throw new RedisStoreError(REDIS_STORE_ERRORS.options, 'RedisRevocationStore: "redis" must be an ioredis client (for example fastify.redis)')
    }
    const keyPrefix = options.keyPrefix ?? REDIS_STORE_DEFAULTS.keyPrefix
    if (typeof keyPrefix !== 'string') throw new RedisStoreError(REDIS_STORE_ERRORS.options, 'RedisRevocationStore: "keyPrefix" must be a string')
    this.#redis = options.redis
    this.#names = redisNames(keyPrefix)
    this.#writeTimeoutMs = duration(options, 'writeTimeoutMs')
    this.#maxStaleMs = duration(options, 'maxStaleMs', { zero: true, infinite: true })
    this.#readyTimeoutMs = duration(options, 'readyTimeoutMs')
    this.#retryIntervalMs = duration(options, 'retryIntervalMs')
    this.#log = options.log
  }

  /** Live revocations in the local copy (expired ones go at the next sweep). */
  get size (): number {
    return this.#revoked.size
  }

  /** Whether the local copy is current: loaded and subscribed, with no disconnection since. */
  get synced (): boolean {
    return this.#staleSince === undefined
  }

  /** Writes (revocations, claims, values) waiting for Redis. */
  get queued (): number {
    return this.#queuedRevocations.size + this.#queuedClaims.size + this.#queuedValues.size
  }

  /** Where warnings go when the store was built without a log (the plugin passes Fastify's). */
  useLog (log: RedisStoreLog): void {
    this.#log ??= log
  }

  /**
   * Subscribes and loads every live revocation; resolves once the copy is current. Rejects after
   * `readyTimeoutMs` with `ERR_CLEARML_KEYCLOAK_REDIS_NOT_READY` (the store keeps trying: calling
   * `ready()` again waits again).
   */
  async ready (): Promise<void> {
    if (this.#closed) throw new RedisStoreError(REDIS_STORE_ERRORS.closed, 'RedisRevocationStore: closed')
    if (this.#firstSync === undefined) {
      this.#firstSync = this.#start()
      // Awaited below; this only keeps a rejection after close() from being reported as unhandled.
      this.#firstSync.catch(noop)
    }
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new RedisStoreError(REDIS_STORE_ERRORS.notReady,
        `RedisRevocationStore: no full load from Redis within ${this.#readyTimeoutMs} ms (${this.#lastProblem})`)), this.#readyTimeoutMs)
    })
    try {
      await Promise.race([this.#firstSync, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  async #start (): Promise<void> {
    const synced = new Promise<void>((resolve, reject) => { this.#settleFirstSync = { resolve, reject } })
    // The store subscribes again itself after every reconnection (`#resync`: subscribe, then load).
    // ioredis's own resubscription sends SUBSCRIBE without handling its failure: a connection lost
    // again before Redis answers is an unhandled rejection, which ends the host's process
    // (redis/ioredis#2187, not in ioredis 6.0.0).
    const subscriber = this.#redis.duplicate({ autoResubscribe: false })
    this.#subscriber = subscriber
    subscriber.on('message', this.#onMessage)
    subscriber.on('close', this.#onSubscriptionLost)
    subscriber.on('error', this.#onSubscriberError)
    subscriber.on('ready', this.#kick)
    this.#redis.on('ready', this.#kick)
    // A host client built with `lazyConnect` (and so its duplicate) connects on first use.
    if (subscriber.status === 'wait') subscriber.connect().catch(noop)
    if (this.#redis.status === 'wait') this.#redis.connect().catch(noop)
    this.#kick()
    await synced
    await this.#warnAboutEviction()
  }

  /**
   * Unsubscribes (closes the subscriber connection the store owns) and stops retrying. The host's
   * client is left as it was. Writes still queued are reported, since no one will write them.
   */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearTimeout(this.#staleTimer)
    clearTimeout(this.#retryTimer)
    this.#redis.removeListener('ready', this.#kick)
    this.#settleFirstSync?.reject(new RedisStoreError(REDIS_STORE_ERRORS.closed, 'RedisRevocationStore: closed before its first load'))
    if (this.queued > 0) {
      this.#warn({ revocations: this.#queuedRevocations.size, claims: this.#queuedClaims.size, values: this.#queuedValues.size },
        'RedisRevocationStore closed with writes Redis never received; other replicas will not see them')
    }
    const subscriber = this.#subscriber
    if (subscriber === undefined) return
    subscriber.removeListener('ready', this.#kick)
    // QUIT lets Redis drop the subscription before close() resolves; without a connection there is
    // nothing to drop, and disconnect() stops the reconnection attempts.
    if (subscriber.status === 'ready') await this.#bounded(subscriber.quit()).catch(noop)
    subscriber.disconnect()
  }

  isRevoked (sessionId: string): boolean {
    if (this.#staleSince !== undefined && this.isRefusingAll()) return true
    const expiresAt = this.#revoked.get(sessionId)
    if (expiresAt === undefined) return false
    if (expiresAt > nowSec()) return true
    this.#revoked.delete(sessionId)
    return false
  }

  async revoke (sessionId: string, expiresAt: number): Promise<void> {
    checkKey(sessionId, 'session id')
    checkExpiry(expiresAt)
    if (expiresAt <= nowSec()) return
    this.#remember(sessionId, expiresAt)
    if (this.#connected()) {
      try {
        await this.#bounded(this.#writeRevocations([[sessionId, expiresAt]]))
        return
      } catch (err) {
        this.#noteProblem(err)
      }
    }
    this.#queuedRevocations.set(sessionId, Math.max(expiresAt, this.#queuedRevocations.get(sessionId) ?? 0))
    this.#queuedWrite('revocation')
  }

  /**
   * `SET NX` with the transaction's expiry (in one script): true on exactly one replica. While Redis
   * is unreachable the claim is made here and written when Redis is back (a replay on another
   * replica meanwhile is still refused by Keycloak, whose authorization code is single use); once
   * `maxStaleMs` has passed logins are refused instead, since their sessions would be refused too.
   */
  async claimOnce (key: string, expiresAt: number): Promise<boolean> {
    checkKey(key, 'claim key')
    checkExpiry(expiresAt)
    const now = nowSec()
    if (expiresAt <= now) return true
    const queued = this.#queuedClaims.get(key)
    if (queued !== undefined && queued > now) return false
    if (this.#connected()) {
      try {
        return await this.#bounded(this.#claim(key, expiresAt)) === 1
      } catch (err) {
        this.#noteProblem(err)
      }
    }
    if (this.isRefusingAll()) {
      throw new RedisStoreError(REDIS_STORE_ERRORS.unavailable, `RedisRevocationStore: Redis unreachable for more than maxStaleMs (${this.#lastProblem}); login refused`)
    }
    boundedSet(this.#queuedClaims, key, expiresAt, MAX_QUEUED_CLAIMS)
    this.#queuedWrite('login claim')
    return true
  }

  async setValue (key: string, value: string, expiresAt: number): Promise<void> {
    checkKey(key, 'value key')
    checkExpiry(expiresAt)
    if (typeof value !== 'string') throw new RedisStoreError(REDIS_STORE_ERRORS.input, 'RedisRevocationStore: a value must be a string')
    if (expiresAt <= nowSec()) return
    // Queued first: a write that outlives its time-out must still know whether it was taken meanwhile.
    const entry = { value, expiresAt }
    boundedSet(this.#queuedValues, key, entry, MAX_QUEUED_VALUES)
    if (this.#connected()) {
      try {
        await this.#bounded(this.#writeValue(key, entry))
        return
      } catch (err) {
        this.#noteProblem(err)
      }
    }
    this.#queuedWrite('value')
  }

  /**
   * The value, removed as it is read (`GET` and `DEL` in one script). While Redis is unreachable
   * only a value this replica queued can be read; otherwise `undefined`, which its reader handles
   * (SPEC 5 step 10).
   */
  async takeValue (key: string): Promise<string | undefined> {
    checkKey(key, 'value key')
    const queued = this.#queuedValues.get(key)
    if (queued !== undefined) {
      this.#queuedValues.delete(key)
      return queued.expiresAt > nowSec() ? queued.value : undefined
    }
    if (!this.#connected()) return undefined
    try {
      return await this.#bounded(this.#redis.eval(TAKE_VALUE_SCRIPT, 1, this.#names.value(key)) as Promise<string | null>) ?? undefined
    } catch (err) {
      this.#noteProblem(err)
      this.#warn({ problem: this.#lastProblem }, 'RedisRevocationStore could not read a server-side value from Redis')
      return undefined
    }
  }

  /** Whether `isRevoked` refuses every session now (stale for `maxStaleMs`, or never loaded). */
  isRefusingAll (): boolean {
    // The timer's flag, or the clock when the timer has not run yet (maxStaleMs 0, a busy event loop).
    return this.#staleSince !== undefined && (this.#refusing || performance.now() - this.#staleSince >= this.#maxStaleMs)
  }

  #connected (): boolean {
    return this.#redis.status === 'ready'
  }

  /** Adds to the local copy, keeping the later expiry; sweeps expired entries as the copy grows. */
  #remember (id: string, expiresAt: number): void {
    const known = this.#revoked.get(id)
    if (known !== undefined && known >= expiresAt) return
    this.#revoked.set(id, expiresAt)
    if (this.#revoked.size >= this.#sweepAt) this.#sweep()
  }

  #sweep (): void {
    const now = nowSec()
    for (const [id, expiresAt] of this.#revoked) if (expiresAt <= now) this.#revoked.delete(id)
    this.#sweepAt = Math.max(MIN_SWEEP_SIZE, this.#revoked.size * 2)
  }

  async #writeRevocations (revocations: Revocation[]): Promise<void> {
    const args: Array<string | number> = [this.#names.channel, nowSec(), encodeRevocations(revocations)]
    for (const [id, expiresAt] of revocations) args.push(expiresAt, id)
    await this.#redis.eval(WRITE_REVOCATIONS_SCRIPT, 1, this.#names.revoked, ...args)
  }

  async #claim (key: string, expiresAt: number): Promise<unknown> {
    return await this.#redis.eval(CLAIM_SCRIPT, 1, this.#names.claim(key), Math.ceil(expiresAt * 1000))
  }

  /** Writes a queued value and takes it off the queue; a write that may complete after its time-out. */
  async #writeValue (key: string, entry: QueuedValue): Promise<void> {
    await this.#redis.eval(SET_VALUE_SCRIPT, 1, this.#names.value(key), entry.value, Math.ceil(entry.expiresAt * 1000))
    const queued = this.#queuedValues.get(key)
    if (queued === entry) this.#queuedValues.delete(key)
    // Taken on this replica while Redis was slow: it must not be readable elsewhere afterwards.
    else if (queued === undefined) await this.#redis.del(this.#names.value(key))
  }

  /** Rejects with `ERR_CLEARML_KEYCLOAK_REDIS_TIMEOUT` when Redis has not answered in time. */
  async #bounded<T> (command: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    // The command may still complete (or fail) later; nobody waits for it then.
    command.catch(noop)
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new RedisStoreError(REDIS_STORE_ERRORS.timeout, `Redis did not answer within ${this.#writeTimeoutMs} ms`)), this.#writeTimeoutMs)
    })
    try {
      return await Promise.race([command, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  #queuedWrite (what: string): void {
    if (!this.#warnedQueued) {
      this.#warnedQueued = true
      this.#warn({ problem: this.#lastProblem },
        `RedisRevocationStore: Redis did not take a ${what}; it takes effect on this replica now and is written when Redis answers`)
    }
    this.#scheduleRetry()
  }

  #noteProblem (err: unknown): void {
    this.#lastProblem = (err as Error).message
  }

  #warn (object: Record<string, unknown>, message: string): void {
    if (this.#log !== undefined) this.#log.warn(object, message)
    else process.emitWarning(`${message} ${JSON.stringify(object)}`, { code: 'CLEARML_KC_REDIS_STORE' })
  }

  #info (object: Record<string, unknown>, message: string): void {
    this.#log?.info?.(object, message)
  }

  readonly #kick = (): void => {
    this.#work().catch(noop)
  }

  #scheduleRetry (): void {
    if (this.#closed || this.#retryTimer !== undefined) return
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined
      this.#kick()
    }, this.#retryIntervalMs).unref()
  }

  /** Resynchronises and writes what is queued, one pass at a time; a kick during a pass runs another. */
  async #work (): Promise<void> {
    if (this.#working) {
      this.#workAgain = true
      return
    }
    this.#working = true
    try {
      do {
        this.#workAgain = false
        await this.#pass()
      } while (this.#workAgain)
    } finally {
      this.#working = false
    }
  }

  async #pass (): Promise<void> {
    const subscriber = this.#subscriber!
    try {
      // Whichever connection is down starts the next pass with its 'ready' event.
      if (this.#staleSince !== undefined && subscriber.status === 'ready' && this.#connected()) await this.#resync(subscriber)
      if (this.queued > 0 && this.#connected()) await this.#flush()
      this.#warnedRetry = false
    } catch (err) {
      this.#noteProblem(err)
      if (!this.#warnedRetry) {
        this.#warnedRetry = true
        this.#warn({ problem: this.#lastProblem }, `RedisRevocationStore: Redis is connected but did not take a write or a load; trying again every ${this.#retryIntervalMs} ms`)
      }
      this.#scheduleRetry()
    }
  }

  /** Subscribe first, then load: a revocation published during the load is received, not missed. */
  async #resync (subscriber: Redis): Promise<void> {
    const epoch = this.#epoch
    const started = performance.now()
    await this.#bounded(subscriber.subscribe(this.#names.channel))
    const inRedis = await this.#loadAll()
    // Merged without #remember's sweeps as the copy grows: one sweep after the merge does.
    for (const [id, expiresAt] of inRedis) if (!(this.#revoked.get(id)! >= expiresAt)) this.#revoked.set(id, expiresAt)
    this.#sweep()
    let writtenBack = 0
    for (const [id, expiresAt] of this.#revoked) {
      if ((inRedis.get(id) ?? 0) < expiresAt) {
        this.#queuedRevocations.set(id, expiresAt)
        writtenBack++
      }
    }
    if (epoch !== this.#epoch) {
      // The subscriber dropped during the load: messages may have been missed. Its 'ready' event
      // starts the next attempt.
      return
    }
    const outage = this.#staleSince !== Number.NEGATIVE_INFINITY
    this.#staleSince = undefined
    this.#refusing = false
    clearTimeout(this.#staleTimer)
    const report = { loaded: inRedis.size, writtenBack, durationMs: performance.now() - started }
    if (outage) this.#info({ ...report }, 'RedisRevocationStore in sync with Redis again')
    this.#settleFirstSync!.resolve()
    this.emit('synced', report)
  }

  async #loadAll (): Promise<Map<string, number>> {
    const now = nowSec()
    const inRedis = new Map<string, number>()
    let cursor = '0'
    do {
      const [next, page] = await this.#bounded(this.#redis.zscan(this.#names.revoked, cursor, 'COUNT', LOAD_PAGE))
      for (let i = 0; i < page.length; i += 2) {
        const expiresAt = Number(page[i + 1])
        if (expiresAt > now) inRedis.set(page[i], expiresAt)
      }
      cursor = next
    } while (cursor !== '0')
    return inRedis
  }

  async #flush (): Promise<void> {
    const now = nowSec()
    const report: FlushReport = { revocations: 0, claims: 0, values: 0 }
    const revocations = [...this.#queuedRevocations].filter(([, expiresAt]) => expiresAt > now)
    for (let i = 0; i < revocations.length; i += WRITE_BATCH) {
      const batch = revocations.slice(i, i + WRITE_BATCH)
      await this.#bounded(this.#writeRevocations(batch))
      // A later revoke of the same id with a later expiry stays queued.
      for (const [id, expiresAt] of batch) if (this.#queuedRevocations.get(id) === expiresAt) this.#queuedRevocations.delete(id)
      report.revocations += batch.length
    }
    for (const [id, expiresAt] of this.#queuedRevocations) if (expiresAt <= now) this.#queuedRevocations.delete(id)

    const claims = [...this.#queuedClaims].filter(([, expiresAt]) => expiresAt > now)
    // `NX`: a claim made here during the outage must not replace one made elsewhere.
    await this.#bounded(Promise.all(claims.map(async ([key, expiresAt]) => await this.#claim(key, expiresAt))))
    for (const [key, expiresAt] of claims) if (this.#queuedClaims.get(key) === expiresAt) this.#queuedClaims.delete(key)
    for (const [key, expiresAt] of this.#queuedClaims) if (expiresAt <= now) this.#queuedClaims.delete(key)
    report.claims = claims.length

    const values = [...this.#queuedValues].filter(([, entry]) => entry.expiresAt > now)
    await this.#bounded(Promise.all(values.map(async ([key, entry]) => { await this.#writeValue(key, entry) })))
    for (const [key, entry] of this.#queuedValues) if (entry.expiresAt <= now) this.#queuedValues.delete(key)
    report.values = values.length

    if (this.#warnedQueued) this.#info({ ...report }, 'RedisRevocationStore wrote its queued changes to Redis')
    this.#warnedQueued = false
    this.emit('flushed', report)
  }

  readonly #onMessage = (_channel: string, message: string): void => {
    const revocations = decodeRevocations(message)
    if (revocations === undefined) {
      this.#warn({ channel: this.#names.channel }, 'RedisRevocationStore ignored a message on its channel that no store wrote')
      return
    }
    const ids: string[] = []
    for (const [id, expiresAt] of revocations) {
      this.#remember(id, expiresAt)
      ids.push(id)
    }
    this.emit('received', ids)
  }

  readonly #onSubscriptionLost = (): void => {
    this.#epoch++
    if (this.#closed || this.#staleSince !== undefined) return
    this.#staleSince = performance.now()
    this.#warn({ maxStaleMs: this.#maxStaleMs },
      'RedisRevocationStore lost its subscription to Redis; answering from its local copy until it reconnects, for maxStaleMs at most')
    this.emit('stale')
    if (Number.isFinite(this.#maxStaleMs)) this.#staleTimer = setTimeout(this.#onRefusing, this.#maxStaleMs).unref()
  }

  readonly #onRefusing = (): void => {
    this.#refusing = true
    this.#warn({ maxStaleMs: this.#maxStaleMs, problem: this.#lastProblem },
      'RedisRevocationStore has been out of touch with Redis for maxStaleMs: every session is refused until it reconnects')
    this.emit('refusing')
  }

  readonly #onSubscriberError = (err: Error): void => {
    // ioredis reports every failed reconnection attempt; the 'stale' warning already said it.
    this.#noteProblem(err)
  }

  async #warnAboutEviction (): Promise<void> {
    let policy: unknown
    try {
      const reply = await this.#bounded(this.#redis.call('CONFIG', 'GET', 'maxmemory-policy'))
      // ['maxmemory-policy', 'noeviction'], or an object when the client maps RESP3 maps.
      policy = Array.isArray(reply) ? reply[1] : (reply as Record<string, unknown>)['maxmemory-policy']
    } catch {
      // Managed Redis services often disable CONFIG; docs/replicas.md tells the operator what to check.
      return
    }
    if (typeof policy === 'string' && policy !== 'noeviction') {
      this.#warn({ maxmemoryPolicy: policy },
        `Redis evicts keys under memory pressure (maxmemory-policy ${policy}): revocations could be lost before their sessions expire; use noeviction (docs/replicas.md)`)
    }
  }
}

function duration (options: RedisRevocationStoreOptions, name: keyof typeof REDIS_STORE_DEFAULTS & keyof RedisRevocationStoreOptions, allow: { zero?: boolean, infinite?: boolean } = {}): number {
  const value = options[name] ?? REDIS_STORE_DEFAULTS[name]
  const ok = typeof value === 'number' && (value > 0 || (allow.zero === true && value === 0)) && (Number.isFinite(value) || (allow.infinite === true && value === Number.POSITIVE_INFINITY))
  if (!ok) throw new RedisStoreError(REDIS_STORE_ERRORS.options, `RedisRevocationStore: "${name}" must be a positive number of milliseconds${allow.infinite === true ? ' or Infinity' : ''}`)
  return value
}

function checkKey (key: unknown, what: string): void {
  if (!isRevocationId(key)) throw new RedisStoreError(REDIS_STORE_ERRORS.input, `RedisRevocationStore: a ${what} must be a non-empty string`)
}

function checkExpiry (expiresAt: unknown): void {
  if (typeof expiresAt !== 'number' || !Number.isFinite(expiresAt)) {
    throw new RedisStoreError(REDIS_STORE_ERRORS.input, 'RedisRevocationStore: an expiry must be a finite number of seconds since the epoch')
  }
}

/** Sets `key` in an insertion-ordered map, dropping the oldest entry when it is full. */
function boundedSet<V> (map: Map<string, V>, key: string, value: V, max: number): void {
  map.delete(key)
  if (map.size >= max) map.delete(map.keys().next().value!)
  map.set(key, value)
}
