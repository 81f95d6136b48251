/**
 * Revocations, login claims, server-side values and what sessions that follow Keycloak need
 * (refresh states, revisions), shared by every apiserver replica through Redis (SPEC sections 7a,
 * 9, 12 and 14), on the host's ioredis client: a `Redis` (standalone, or through Sentinel) or a
 * `Cluster`.
 *
 * `authenticate` asks `isRevoked` (and `revision`) on every request and must not wait on the
 * network, so each replica keeps a local copy of every live revocation and revision: loaded in full
 * at start, after every reconnect of its subscriber and whenever Redis is found to have lost data,
 * and kept current by pub/sub in between. Writes go to Redis, but never hold a logout for longer
 * than `writeTimeoutMs`: a write Redis did not take in time is queued, takes effect on this replica
 * at once, is still announced to the others when Redis refuses writes but not messages, and is
 * written when Redis answers again. After every full load each replica also writes back what its
 * copy holds and Redis lacks, so a Redis restarted empty, flushed, or failed over to a replica that
 * missed writes gets every live revocation again.
 *
 * While the subscriber is disconnected, or while Redis does not take this replica's writes, the copy
 * may miss revocations made on other replicas. The store then keeps answering from it for
 * `maxStaleMs` (a Redis restart or failover goes unnoticed by users), and after that refuses every
 * session until it is in touch again: a revoked session is never accepted for longer than that bound.
 *
 * The store imports ioredis for its types only; it uses the client it is given, and owns only the
 * subscriber connection it makes from it (`subscription.ts`).
 */
import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { Cluster, Redis } from 'ioredis'
import type { RevocationStore, StoreLog } from '../lib/session/revocations.js'
import type { RefreshKey, RefreshLease, RefreshState, SessionFollowStore, SessionRevision } from '../lib/session/follow-store.js'
import { RedisStoreError, REDIS_STORE_ERRORS } from './errors.js'
import { checkExpiry, checkKey, checkRevision } from './inputs.js'
import {
  DEFAULT_KEY_PREFIX, LOAD_PAGE, WRITE_BATCH, decodeChanges, encodeChanges, isUsablePrefix, redisNames,
  type Changes, type RedisNames, type Revocation
} from './layout.js'
import {
  ANNOUNCE_SCRIPT, CHECK_SCRIPT, CLAIM_SCRIPT, ENSURE_EPOCH_SCRIPT, SET_VALUE_SCRIPT, TAKE_VALUE_SCRIPT, WRITE_REVOCATIONS_SCRIPT
} from './scripts.js'
import { RefreshStates } from './refresh-states.js'
import { Revisions } from './revisions.js'
import { CLOCK_SLACK_SEC, MIN_SWEEP_SIZE, noop, nowSec, type StoreLink } from './store-link.js'
import { subscribeFor, type Subscription } from './subscription.js'

/** A pino logger fits; `info` is optional. */
export interface RedisStoreLog extends StoreLog {
  info?(object: Record<string, unknown>, message: string): void
}

export interface RedisRevocationStoreOptions {
  /**
   * The host's ioredis client, e.g. `fastify.redis`: a `Redis` (standalone, or with `sentinels`
   * and `name`) or a `Cluster`. The store never closes it.
   */
  redis: Redis | Cluster
  /** Prefix of every key and of the channel, so the store can share ClearML's Redis database. No `{` or `}`. */
  keyPrefix?: string
  /** The longest a revoke, a login claim or a value waits on Redis before it is queued (ms). */
  writeTimeoutMs?: number
  /**
   * How long `isRevoked` answers from the local copy while the copy cannot be kept current (ms);
   * after that it refuses every session until the store is in touch with Redis again. `Infinity`: never.
   */
  maxStaleMs?: number
  /** How long `ready()` waits for the first full load (ms). */
  readyTimeoutMs?: number
  /** Pause before writing queued changes again when Redis is connected but a write failed (ms). */
  retryIntervalMs?: number
  /** How often the store checks that Redis still holds what it was given (the loss marker), ms. */
  checkIntervalMs?: number
  /** Where warnings go (a pino logger fits); by default `process.emitWarning`. */
  log?: RedisStoreLog
}

export interface SyncReport {
  /** Live revocations found in Redis. */
  loaded: number
  /** Revocations this replica held and Redis lacked, queued to be written back. */
  writtenBack: number
  /** Live revisions found in Redis, and those this replica held and Redis lacked. */
  revisionsLoaded: number
  revisionsWrittenBack: number
  /** Refresh states of this replica's journal queued to be written again (a higher generation wins). */
  refreshStatesWrittenBack: number
  durationMs: number
}

export interface FlushReport {
  revocations: number
  claims: number
  values: number
  revisions: number
  refreshStates: number
}

/** Why a replica concluded that Redis lost data: the marker changed or went, or a key it holds entries for went. */
export type LossReason = 'marker' | 'revocations' | 'revisions'

/** What the store reports as it happens; for metrics, health checks and tests. */
export type RedisRevocationStoreEvents = {
  /** A full load finished (at start, then after each reconnect or loss): the copy is current. */
  synced: [report: SyncReport]
  /** Revocations arrived by pub/sub and are in the local copy (from any replica, this one included). */
  received: [ids: string[]]
  /** Revisions arrived by pub/sub and are in the local copy: how many (never which sessions). */
  revised: [count: number]
  /** The subscriber lost Redis, or Redis stopped taking this replica's writes: answers come from the local copy, for `maxStaleMs` at most. */
  stale: []
  /** `maxStaleMs` passed out of touch: every session is refused until the store is in touch again. */
  refusing: []
  /** Queued writes reached Redis. */
  flushed: [report: FlushReport]
  /** Redis lost data this replica holds: it loads again and writes back what Redis lacks. */
  loss: [reason: LossReason]
}

export const REDIS_STORE_DEFAULTS = {
  keyPrefix: DEFAULT_KEY_PREFIX,
  writeTimeoutMs: 1000,
  maxStaleMs: 60_000,
  readyTimeoutMs: 10_000,
  retryIntervalMs: 1000,
  checkIntervalMs: 1000
} as const

/** Writes a replica keeps while Redis is unreachable; the oldest go first beyond these. */
const MAX_QUEUED_CLAIMS = 100_000
const MAX_QUEUED_VALUES = 10_000
/** A marker created at a full load lives at least this long (the writes that follow extend it). */
const MIN_EPOCH_MS = 86_400_000

interface QueuedValue { value: string, expiresAt: number }

export class RedisRevocationStore extends EventEmitter<RedisRevocationStoreEvents> implements RevocationStore, SessionFollowStore {
  readonly #redis: Redis | Cluster
  readonly #names: RedisNames
  readonly #publish: 'PUBLISH' | 'SPUBLISH'
  readonly #writeTimeoutMs: number
  readonly #maxStaleMs: number
  readonly #readyTimeoutMs: number
  readonly #retryIntervalMs: number
  readonly #checkIntervalMs: number
  #log: RedisStoreLog | undefined
  #subscription: Subscription | undefined
  readonly #revisions: Revisions
  readonly #refresh: RefreshStates

  /** The local copy: revoked id → expiry of its session (seconds). */
  readonly #revoked = new Map<string, number>()
  #sweepAt = MIN_SWEEP_SIZE
  /** The latest expiry of a revocation Redis is known to have had: while it is ahead, the set must exist. */
  #latestConfirmed = 0
  /** Writes Redis has not taken yet. */
  readonly #queuedRevocations = new Map<string, number>()
  readonly #queuedClaims = new Map<string, number>()
  readonly #queuedValues = new Map<string, QueuedValue>()

  /**
   * Since when (`performance.now()`, so a wall-clock step cannot shorten or stretch the bound) the
   * copy may be missing revocations because the subscription was lost; `undefined` once loaded
   * again. It starts at minus infinity: before the first load nothing is known, and every session
   * is refused.
   */
  #lostSince: number | undefined = Number.NEGATIVE_INFINITY
  /** Since when Redis has not taken this replica's writes (issue #22, finding 2); `undefined` once its queue is written. */
  #failingSince: number | undefined
  /** The earlier of the two: `isRevoked` reads this one field. */
  #staleSince: number | undefined = Number.NEGATIVE_INFINITY
  /** Set when `maxStaleMs` has passed since `#staleSince` (by its timer). */
  #refusing = false
  /** Counts subscriber disconnections, so a load that raced one is not taken as current. */
  #disconnections = 0
  /** The loss marker found at the last full load. */
  #epoch: string | undefined
  /** Why Redis was found to have lost data, until the full load that follows. */
  #loss: LossReason | undefined
  #checkDue = false
  #staleTimer: NodeJS.Timeout | undefined
  #retryTimer: NodeJS.Timeout | undefined
  #checkTimer: NodeJS.Timeout | undefined
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
    const redis = options?.redis as { duplicate?: unknown, eval?: unknown, status?: unknown, isCluster?: unknown, nodes?: unknown } | undefined
    const isClient = typeof redis?.duplicate === 'function' && typeof redis.eval === 'function' && typeof redis.status === 'string'
    if (!isClient || (redis.isCluster === true && typeof redis.nodes !== 'function')) {
      throw new RedisStoreError(REDIS_STORE_ERRORS.options, 'RedisRevocationStore: "redis" must be an ioredis client or Cluster (for example fastify.redis)')
    }
    const keyPrefix = options.keyPrefix ?? REDIS_STORE_DEFAULTS.keyPrefix
    if (!isUsablePrefix(keyPrefix)) {
      throw new RedisStoreError(REDIS_STORE_ERRORS.options, 'RedisRevocationStore: "keyPrefix" must be a string without { or } (the store adds its own hash tag)')
    }
    this.#redis = options.redis
    this.#names = redisNames(keyPrefix)
    this.#publish = options.redis.isCluster ? 'SPUBLISH' : 'PUBLISH'
    this.#writeTimeoutMs = duration(options, 'writeTimeoutMs')
    this.#maxStaleMs = duration(options, 'maxStaleMs', { zero: true, infinite: true })
    this.#readyTimeoutMs = duration(options, 'readyTimeoutMs')
    this.#retryIntervalMs = duration(options, 'retryIntervalMs')
    this.#checkIntervalMs = duration(options, 'checkIntervalMs')
    this.#log = options.log
    const link: StoreLink = {
      redis: this.#redis,
      names: this.#names,
      publish: this.#publish,
      bounded: async (command) => await this.#bounded(command),
      connected: () => this.#connected(),
      stale: () => this.#staleSince !== undefined,
      sawEpoch: (epoch) => { this.#sawEpoch(epoch) },
      writeFailed: (what, err, changes) => { this.#writeFailed(what, err, changes) }
    }
    this.#revisions = new Revisions(link)
    this.#refresh = new RefreshStates(link)
  }

  /** Live revocations in the local copy (expired ones go at the next sweep). */
  get size (): number {
    return this.#revoked.size
  }

  /** Whether the local copy is current: loaded and subscribed with no disconnection since, and Redis taking writes. */
  get synced (): boolean {
    return this.#staleSince === undefined
  }

  /** Writes (revocations, claims, values, revisions, refresh states) waiting for Redis. */
  get queued (): number {
    return this.#queuedRevocations.size + this.#queuedClaims.size + this.#queuedValues.size + this.#revisions.queued + this.#refresh.queued
  }

  /** Where warnings go when the store was built without a log (the plugin passes Fastify's). */
  useLog (log: RedisStoreLog): void {
    this.#log ??= log
  }

  /**
   * Subscribes and loads every live revocation and revision; resolves once the copy is current.
   * Rejects after `readyTimeoutMs` with `ERR_CLEARML_KEYCLOAK_REDIS_NOT_READY` (the store keeps
   * trying: calling `ready()` again waits again).
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
    const subscription = subscribeFor(this.#redis, this.#names.channel, this.#names.epoch, this.#retryIntervalMs)
    this.#subscription = subscription
    subscription.on('message', this.#onMessage)
    subscription.on('lost', this.#onSubscriptionLost)
    // ioredis reports every failed reconnection attempt; the 'stale' warning already said it.
    subscription.on('problem', (err) => { this.#noteProblem(err) })
    subscription.on('ready', this.#kick)
    this.#redis.on('ready', this.#kick)
    // A host client built with `lazyConnect` (and so its duplicate) connects on first use.
    subscription.start()
    if (this.#redis.status === 'wait') this.#redis.connect().catch(noop)
    this.#checkTimer = setInterval(() => {
      this.#checkDue = true
      this.#kick()
    }, this.#checkIntervalMs).unref()
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
    clearInterval(this.#checkTimer)
    this.#redis.removeListener('ready', this.#kick)
    this.#settleFirstSync?.reject(new RedisStoreError(REDIS_STORE_ERRORS.closed, 'RedisRevocationStore: closed before its first load'))
    if (this.queued > 0) {
      this.#warn({ revocations: this.#queuedRevocations.size, claims: this.#queuedClaims.size, values: this.#queuedValues.size, revisions: this.#revisions.queued, refreshStates: this.#refresh.queued },
        'RedisRevocationStore closed with writes Redis never received; other replicas will not see them')
    }
    await this.#subscription?.close(async (command) => await this.#bounded(command))
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
    const revocation: Revocation = [sessionId, expiresAt]
    let problem: unknown
    if (this.#connected()) {
      try {
        await this.#bounded(this.#writeRevocations([revocation]))
        return
      } catch (err) {
        problem = err
      }
    }
    this.#queuedRevocations.set(sessionId, Math.max(expiresAt, this.#queuedRevocations.get(sessionId) ?? 0))
    this.#writeFailed('revocation', problem, problem === undefined ? undefined : { revocations: [revocation] })
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
    let problem: unknown
    if (this.#connected()) {
      try {
        return await this.#bounded(this.#claim(key, expiresAt)) === 1
      } catch (err) {
        problem = err
        this.#noteProblem(err)
      }
    }
    if (this.isRefusingAll()) {
      throw new RedisStoreError(REDIS_STORE_ERRORS.unavailable, `RedisRevocationStore: Redis unreachable for more than maxStaleMs (${this.#lastProblem}); login refused`)
    }
    boundedSet(this.#queuedClaims, key, expiresAt, MAX_QUEUED_CLAIMS)
    this.#writeFailed('login claim', problem)
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
    let problem: unknown
    if (this.#connected()) {
      try {
        await this.#bounded(this.#writeValue(key, entry))
        return
      } catch (err) {
        problem = err
      }
    }
    this.#writeFailed('value', problem)
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

  // SessionFollowStore (lib/session/follow-store.ts): refresh states in refresh-states.ts, revisions in revisions.ts.

  async saveRefresh (key: RefreshKey, state: RefreshState, expiresAt: number): Promise<void> {
    await this.#refresh.saveRefresh(key, state, expiresAt)
  }

  async leaseRefresh (key: RefreshKey, options: { dueBefore: number, leaseMs: number }): Promise<RefreshLease> {
    return await this.#refresh.leaseRefresh(key, options)
  }

  async releaseRefresh (key: RefreshKey, lease: string, next?: RefreshState): Promise<boolean> {
    return await this.#refresh.releaseRefresh(key, lease, next)
  }

  async endRefresh (key: RefreshKey, expiresAt: number): Promise<void> {
    await this.#refresh.endRefresh(key, expiresAt)
  }

  async takeRefresh (key: RefreshKey): Promise<RefreshState | undefined> {
    return await this.#refresh.takeRefresh(key)
  }

  async takeKeycloakSessionRefreshes (keycloakSession: string): Promise<RefreshState[]> {
    return await this.#refresh.takeKeycloakSessionRefreshes(keycloakSession)
  }

  revision (sessionId: string): SessionRevision | undefined {
    return this.#revisions.revision(sessionId)
  }

  async revise (sessionId: string, revision: SessionRevision, expiresAt: number): Promise<void> {
    checkKey(sessionId, 'session id')
    checkRevision(revision)
    checkExpiry(expiresAt)
    await this.#revisions.revise(sessionId, revision, expiresAt)
  }

  /** Whether `isRevoked` refuses every session now (out of touch for `maxStaleMs`, or never loaded). */
  isRefusingAll (): boolean {
    // The timer's flag, or the clock when the timer has not run yet (maxStaleMs 0, a busy event loop).
    return this.#staleSince !== undefined && (this.#refusing || performance.now() - this.#staleSince >= this.#maxStaleMs)
  }

  #connected (): boolean {
    return this.#redis.status === 'ready'
  }

  /**
   * Records when the copy became (or stopped being) out of touch for one reason, and keeps the
   * refusal timer on the earlier of the two. Before the first load (minus infinity) there is no
   * timer: every session is refused already, and nothing is worth a warning yet.
   */
  #setOutOfTouch (reason: 'lost' | 'failing', since: number | undefined): void {
    const previous = this.#staleSince
    if (reason === 'lost') this.#lostSince = since
    else this.#failingSince = since
    const sinces = [this.#lostSince, this.#failingSince].filter((s): s is number => s !== undefined)
    this.#staleSince = sinces.length === 0 ? undefined : Math.min(...sinces)
    // The other reason began later, or went while this one goes on: the bound still runs from the same moment.
    if (this.#staleSince === previous) return
    clearTimeout(this.#staleTimer)
    this.#refusing = false
    if (this.#staleSince === undefined) return
    if (previous === undefined) this.emit('stale')
    if (Number.isFinite(this.#maxStaleMs) && this.#staleSince !== Number.NEGATIVE_INFINITY) {
      this.#staleTimer = setTimeout(this.#onRefusing, Math.max(0, this.#maxStaleMs - (performance.now() - this.#staleSince))).unref()
    }
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

  #confirm (expiresAt: number): void {
    if (expiresAt > this.#latestConfirmed) this.#latestConfirmed = expiresAt
  }

  async #writeRevocations (revocations: Revocation[]): Promise<void> {
    const args: Array<string | number> = [this.#publish, this.#names.channel, nowSec(), encodeChanges({ revocations })]
    for (const [id, expiresAt] of revocations) args.push(expiresAt, id)
    const epoch = await this.#redis.eval(WRITE_REVOCATIONS_SCRIPT, 2, this.#names.revoked, this.#names.epoch, ...args)
    for (const [, expiresAt] of revocations) this.#confirm(expiresAt)
    this.#sawEpoch(epoch)
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

  /**
   * Announces changes alone when Redis did not take their write: `PUBLISH` is not a write, so a
   * Redis that refuses writes (`NOREPLICAS` under `min-replicas-to-write`, `READONLY`, `OOM`) still
   * delivers it, and the other replicas refuse a logged-out session at once (issue #22, finding 2).
   * Not awaited: the logout does not wait twice.
   */
  #announce (changes: Changes): void {
    this.#redis.eval(ANNOUNCE_SCRIPT, 1, this.#names.epoch, this.#publish, this.#names.channel, encodeChanges({ ...changes, unwritten: true })).catch(noop)
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

  /**
   * A write Redis did not take is queued by its caller; here it is announced when Redis answered
   * at all (`err` set), the store counts as out of touch until the queue is written (a replica
   * whose writes keep failing cannot tell whether the others' logouts reached Redis either), and a
   * retry is scheduled.
   */
  #writeFailed (what: string, err: unknown, changes?: Changes): void {
    if (err !== undefined) this.#noteProblem(err)
    else if (this.#lastProblem === 'no answer yet') this.#lastProblem = `the client is not connected (${this.#redis.status})`
    if (changes !== undefined && this.#connected()) this.#announce(changes)
    if (!this.#warnedQueued) {
      this.#warnedQueued = true
      this.#warn({ problem: this.#lastProblem, maxStaleMs: this.#maxStaleMs },
        `RedisRevocationStore: Redis did not take a ${what}; it takes effect on this replica now and is written when Redis answers; until then this replica answers from its local copy, for maxStaleMs at most`)
    }
    if (this.#failingSince === undefined && !this.#closed) this.#setOutOfTouch('failing', performance.now())
    this.#scheduleRetry()
  }

  /** The marker a write's reply carried: another one than the last full load found means Redis lost data. */
  #sawEpoch (epoch: unknown): void {
    // Unknown while Redis refused to set it at the last load.
    if (this.#epoch !== undefined && epoch !== this.#epoch) this.#noticeLoss('marker')
  }

  #noticeLoss (reason: LossReason): void {
    // Noticed already (by another write's reply, or the check): the full load to come covers both.
    if (this.#loss !== undefined) return
    this.#loss = reason
    this.#warn({ reason, revocations: this.#revoked.size },
      'RedisRevocationStore found that Redis lost data this replica holds (FLUSHALL, a deleted key, a failover to a replica that missed writes); loading again and writing back what Redis lacks')
    this.emit('loss', reason)
    this.#kick()
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

  /** Resynchronises, writes what is queued and checks the marker, one pass at a time; a kick during a pass runs another. */
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
    if (this.#closed) return
    const subscription = this.#subscription!
    try {
      // Whichever connection is down starts the next pass with its 'ready' event.
      const mustLoad = this.#lostSince !== undefined || this.#loss !== undefined
      if (mustLoad && subscription.ready && this.#connected()) await this.#resync(subscription)
      if (this.queued > 0 && this.#connected()) await this.#flush()
      if (this.queued === 0 && this.#failingSince !== undefined && this.#connected()) this.#setOutOfTouch('failing', undefined)
      if (this.#checkDue && this.#lostSince === undefined && this.#loss === undefined && this.#connected()) await this.#check()
      // One warning per run of failures: the run ends when the store is in touch again.
      if (this.#staleSince === undefined) this.#warnedRetry = false
    } catch (err) {
      this.#noteProblem(err)
      if (!this.#warnedRetry) {
        this.#warnedRetry = true
        this.#warn({ problem: this.#lastProblem }, `RedisRevocationStore: Redis is connected but did not take a write or a load; trying again every ${this.#retryIntervalMs} ms`)
      }
      this.#scheduleRetry()
    }
  }

  /**
   * Subscribe first, then the marker, then load: a revocation published during the load is
   * received, not missed, and a loss during the load changes the marker again. Then everything this
   * replica holds and Redis lacks is queued to be written back.
   */
  async #resync (subscription: Subscription): Promise<void> {
    const disconnections = this.#disconnections
    const loss = this.#loss
    const started = performance.now()
    if (this.#lostSince !== undefined) await this.#bounded(subscription.subscribe())
    this.#epoch = await this.#ensureEpoch().catch((err: unknown) => {
      // Redis refuses writes (min-replicas-to-write, a read-only replica): the load, which only
      // reads, goes on, so a replica can start; the marker is set by a later check (`#check`).
      this.#noteProblem(err)
      return undefined
    })
    const inRedis = await this.#loadAll()
    const revisionsInRedis = await this.#revisions.load()
    // Merged without #remember's sweeps as the copy grows: one sweep after the merge does.
    for (const [id, expiresAt] of inRedis) {
      if (!(this.#revoked.get(id)! >= expiresAt)) this.#revoked.set(id, expiresAt)
      this.#confirm(expiresAt)
    }
    this.#sweep()
    let writtenBack = 0
    for (const [id, expiresAt] of this.#revoked) {
      if ((inRedis.get(id) ?? 0) < expiresAt) {
        this.#queuedRevocations.set(id, expiresAt)
        writtenBack++
      }
    }
    const revisionsWrittenBack = this.#revisions.merge(revisionsInRedis)
    // A failover may have lost rotated tokens: the journal is written again (a higher generation wins).
    const refreshStatesWrittenBack = this.#refresh.journal.rewriteAll()
    if (disconnections !== this.#disconnections) {
      // The subscriber dropped during the load: messages may have been missed. Its 'ready' event
      // starts the next attempt.
      return
    }
    if (this.#loss === loss) this.#loss = undefined
    const outage = this.#lostSince !== Number.NEGATIVE_INFINITY
    this.#setOutOfTouch('lost', undefined)
    const report: SyncReport = {
      loaded: inRedis.size,
      writtenBack,
      revisionsLoaded: revisionsInRedis.size,
      revisionsWrittenBack,
      refreshStatesWrittenBack,
      durationMs: performance.now() - started
    }
    if (outage || loss !== undefined) this.#info({ ...report }, 'RedisRevocationStore in sync with Redis again')
    this.#settleFirstSync!.resolve()
    this.emit('synced', report)
  }

  async #ensureEpoch (): Promise<string> {
    const now = Date.now()
    return String(await this.#bounded(this.#redis.eval(ENSURE_EPOCH_SCRIPT, 3, this.#names.epoch, this.#names.revoked, this.#names.revisions,
      randomUUID(), now, now + MIN_EPOCH_MS)))
  }

  /**
   * Read only, every `checkIntervalMs`: the marker still the one of the last full load, and the
   * keys this replica holds live entries of still there. Otherwise Redis lost data (issue #22,
   * finding 6): the store loads again and writes back, within seconds and without a reconnect.
   */
  async #check (): Promise<void> {
    this.#checkDue = false
    this.#refresh.journal.prune(this.#staleSince !== undefined)
    if (this.#epoch === undefined) {
      // The last load could not set the marker: once Redis takes it, load again, since a loss
      // between that load and now could not have been seen.
      await this.#ensureEpoch()
      this.#noticeLoss('marker')
      return
    }
    const [epoch, revokedExists, revisionsExist] = await this.#bounded(this.#redis.eval(CHECK_SCRIPT, 3, this.#names.epoch, this.#names.revoked, this.#names.revisions) as Promise<[string | null, number, number]>)
    if (epoch !== this.#epoch) this.#noticeLoss('marker')
    else if (revokedExists === 0 && this.#latestConfirmed > nowSec() + CLOCK_SLACK_SEC) this.#noticeLoss('revocations')
    else if (revisionsExist === 0 && this.#revisions.expectedInRedis()) this.#noticeLoss('revisions')
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
    const report: FlushReport = { revocations: 0, claims: 0, values: 0, revisions: 0, refreshStates: 0 }
    const revocations = [...this.#queuedRevocations].filter(([, expiresAt]) => expiresAt > now)
    for (let i = 0; i < revocations.length; i += WRITE_BATCH) {
      const batch = revocations.slice(i, i + WRITE_BATCH)
      try {
        await this.#bounded(this.#writeRevocations(batch))
      } catch (err) {
        // Redis refuses writes but may still deliver messages: the other replicas' copies learn of them now.
        this.#announce({ revocations: batch })
        throw err
      }
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

    report.revisions = await this.#revisions.flush()
    report.refreshStates = await this.#refresh.flush()

    if (this.#warnedQueued) this.#info({ ...report }, 'RedisRevocationStore wrote its queued changes to Redis')
    this.#warnedQueued = false
    this.emit('flushed', report)
  }

  readonly #onMessage = (message: string): void => {
    const changes = decodeChanges(message)
    if (changes === undefined) {
      this.#warn({ channel: this.#names.channel }, 'RedisRevocationStore ignored a message on its channel that no store wrote')
      return
    }
    if (changes.revocations !== undefined) {
      const ids: string[] = []
      for (const [id, expiresAt] of changes.revocations) {
        this.#remember(id, expiresAt)
        ids.push(id)
      }
      this.emit('received', ids)
    }
    if (changes.revisions !== undefined) {
      this.#revisions.received(changes.revisions)
      this.emit('revised', changes.revisions.length)
    }
    this.#refresh.received(changes)
  }

  readonly #onSubscriptionLost = (): void => {
    this.#disconnections++
    if (this.#closed || this.#lostSince !== undefined) return
    this.#setOutOfTouch('lost', performance.now())
    this.#warn({ maxStaleMs: this.#maxStaleMs },
      'RedisRevocationStore lost its subscription to Redis; answering from its local copy until it reconnects, for maxStaleMs at most')
  }

  readonly #onRefusing = (): void => {
    this.#refusing = true
    this.#warn({ maxStaleMs: this.#maxStaleMs, problem: this.#lastProblem },
      'RedisRevocationStore has been out of touch with Redis for maxStaleMs: every session is refused until it is in touch again')
    this.emit('refusing')
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

function duration (options: RedisRevocationStoreOptions, name: Exclude<keyof typeof REDIS_STORE_DEFAULTS, 'keyPrefix'>, allow: { zero?: boolean, infinite?: boolean } = {}): number {
  const value = options[name] ?? REDIS_STORE_DEFAULTS[name]
  const ok = typeof value === 'number' && (value > 0 || (allow.zero === true && value === 0)) && (Number.isFinite(value) || (allow.infinite === true && value === Number.POSITIVE_INFINITY))
  if (!ok) throw new RedisStoreError(REDIS_STORE_ERRORS.options, `RedisRevocationStore: "${name}" must be a positive number of milliseconds${allow.infinite === true ? ' or Infinity' : ''}`)
  return value
}

/** Sets `key` in an insertion-ordered map, dropping the oldest entry when it is full. */
function boundedSet<V> (map: Map<string, V>, key: string, value: V, max: number): void {
  map.delete(key)
  if (map.size >= max) map.delete(map.keys().next().value!)
  map.set(key, value)
}
