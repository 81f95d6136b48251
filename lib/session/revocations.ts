/**
 * Revoked sessions and the other small pieces of state several apiserver replicas must share
 * (SPEC sections 7a and 9). The check runs on every authenticated request, so `isRevoked` may answer
 * synchronously from memory; a shared store (Redis) keeps a local copy fed by pub/sub rather than
 * asking the server per request.
 */
import type { RefreshKey, RefreshLease, RefreshState, SessionFollowStore, SessionRevision } from './follow-store.js'
import { MemoryFollowStore } from './memory-follow-store.js'

/** Where a store reports what an operator must know (a pino logger fits). */
export interface StoreLog {
  warn(object: Record<string, unknown>, message: string): void
}

/**
 * The store of revocations every replica shares. Beyond `revoke` and `isRevoked`, each group of
 * optional methods is a capability the plugin uses when the store has it and replaces with an
 * in-process one when not: `claimOnce` (single-use logins), `setValue`/`takeValue` (server-side
 * values), and `SessionFollowStore` (sessions that follow Keycloak, `follow-store.ts`).
 */
export interface RevocationStore extends Partial<SessionFollowStore> {
  /**
   * Remembers that `sessionId` is revoked until `expiresAt` (seconds since the epoch). `owner` is
   * the ClearML user the session belongs to, when known: a bounded store that must forget refuses
   * only that owner's older sessions.
   */
  revoke(sessionId: string, expiresAt: number, owner?: string): Promise<void>
  /**
   * Whether `sessionId` is revoked. `issuedAt` (seconds) is the session's `iat` and `owner` its
   * ClearML user: a store that had to forget revocations refuses the sessions issued before it
   * forgot, of the owners whose revocations it forgot (fail closed).
   */
  isRevoked(sessionId: string, issuedAt?: number, owner?: string): boolean | Promise<boolean>
  /**
   * True the first time `key` is claimed, false for every later claim until `expiresAt` (seconds).
   * A login transaction is claimed through it, so a callback replayed on another replica is refused.
   */
  claimOnce?(key: string, expiresAt: number): Promise<boolean>
  /** Keeps a short value server-side until `expiresAt` (an ID token too large for a cookie). */
  setValue?(key: string, value: string, expiresAt: number): Promise<void>
  /** The value kept under `key`, removed as it is read; `undefined` when absent or expired. */
  takeValue?(key: string): Promise<string | undefined>
  /** Where the store warns when it was built without a log of its own: the plugin passes Fastify's. */
  useLog?(log: StoreLog): void
}

const nowSec = (): number => Date.now() / 1000

/**
 * Keys claimed once until they expire, in memory. Claims arrive with (nearly) the same lifetime, so
 * insertion order is expiry order: expired claims are swept from the front of a queue, never by a
 * scan of the whole map, and a full memory forgets its oldest claim in constant time. (Deleting
 * from the front of a `Map` and asking it for its first key again costs a walk over the holes left
 * behind, so the order lives in an array of its own.)
 */
export class OnceClaims {
  readonly #claimed = new Map<string, number>()
  #order: Array<{ key: string, expiresAt: number }> = []
  #head = 0
  readonly #max: number

  constructor (max = 100_000) {
    this.#max = max
  }

  get size (): number {
    return this.#claimed.size
  }

  claim (key: string, expiresAt: number): boolean {
    const now = nowSec()
    // A key never claimed counts as claimed until 0: long expired.
    if ((this.#claimed.get(key) ?? 0) > now) return false
    while (this.#head < this.#order.length) {
      const oldest = this.#order[this.#head]
      // Still full of live claims: the oldest is forgotten. A claim is a second line of defence (the
      // authorization code it guarded is single use at Keycloak), so forgetting one is not a breach.
      if (oldest.expiresAt > now && this.#claimed.size < this.#max) break
      this.#head++
      // The key may have been claimed again since; only its own entry goes.
      if (this.#claimed.get(oldest.key) === oldest.expiresAt) this.#claimed.delete(oldest.key)
    }
    if (this.#head > 1024 && this.#head * 2 > this.#order.length) {
      this.#order = this.#order.slice(this.#head)
      this.#head = 0
    }
    this.#claimed.set(key, expiresAt)
    this.#order.push({ key, expiresAt })
    return true
  }
}

/** When a full store must forget, it frees at least this share of its bound at once (so a scan is rare). */
const FORGET_SHARE = 0.1
/** Revocations of no known owner (a host's call without one, a back-channel logout of an unknown user). */
const NO_OWNER = ''

/**
 * In memory, for one apiserver process: bounded, and forgets a revocation once the session it
 * revokes has expired anyway. When the bound forces it to forget live revocations it fails closed,
 * as narrowly as it can: it forgets those of the owners (ClearML users) holding the most, and refuses
 * every session of theirs issued until then (they log in again), so one user cycling through logins
 * and logouts only ever logs themself out. Only when revocations of no known owner are the most does
 * it refuse every session issued until then. It says so once.
 *
 * It also keeps the state of sessions that follow Keycloak (SPEC section 12.6, `MemoryFollowStore`).
 */
export class MemoryRevocationStore implements RevocationStore {
  readonly #revoked = new Map<string, { expiresAt: number, owner: string }>()
  readonly #byOwner = new Map<string, Set<string>>()
  readonly #values = new Map<string, { value: string, expiresAt: number }>()
  readonly #claims: OnceClaims
  readonly #follow: MemoryFollowStore
  readonly #max: number
  readonly #maxValues: number
  #log: StoreLog | undefined
  /** Sessions issued at or before this second are refused: revocations of no known owner were forgotten. */
  #refusedUntil = Number.NEGATIVE_INFINITY
  /** Owners whose revocations were forgotten: their sessions issued until `refusedUntil` are refused, until `until`. */
  readonly #refusedOwners = new Map<string, { refusedUntil: number, until: number }>()
  /** The latest `refusedUntil` of an owner: a session asked about without its owner is judged by it. */
  #lastOwnerRefusal = Number.NEGATIVE_INFINITY
  #warned = false

  constructor (options: { max?: number, maxClaims?: number, maxValues?: number, maxFollowed?: number, log?: StoreLog } = {}) {
    this.#max = options.max ?? 100_000
    this.#maxValues = options.maxValues ?? 10_000
    this.#claims = new OnceClaims(options.maxClaims ?? 100_000)
    this.#follow = new MemoryFollowStore({
      maxStates: options.maxFollowed,
      maxRevisions: options.maxFollowed,
      revoke: this.revoke.bind(this)
    })
    this.#log = options.log
  }

  /** Live revocations held. */
  get size (): number {
    return this.#revoked.size
  }

  /** The second until which every session is refused because revocations of no known owner were forgotten; for tests. */
  get refusedUntil (): number {
    return this.#refusedUntil
  }

  /** The second until which `owner`'s sessions are refused because revocations of theirs were forgotten; for tests. */
  refusedUntilFor (owner: string): number {
    return this.#refusedOwners.get(owner)?.refusedUntil ?? Number.NEGATIVE_INFINITY
  }

  /** Where the one warning about forgotten revocations goes, when the store was built without a log. */
  useLog (log: StoreLog): void {
    this.#log ??= log
  }

  async revoke (sessionId: string, expiresAt: number, owner?: string): Promise<void> {
    const now = nowSec()
    if (expiresAt <= now) return
    const known = this.#revoked.get(sessionId)
    if (known !== undefined) {
      // Revoked again (a replay, or by another owner's call): the later expiry is kept, once.
      known.expiresAt = Math.max(known.expiresAt, expiresAt)
      return
    }
    if (this.#revoked.size >= this.#max) {
      for (const [id, entry] of this.#revoked) if (entry.expiresAt <= now) this.#forget(id, entry.owner)
    }
    if (this.#revoked.size >= this.#max) this.#forgetMost(now)
    const holder = owner ?? NO_OWNER
    this.#revoked.set(sessionId, { expiresAt, owner: holder })
    let ids = this.#byOwner.get(holder)
    if (ids === undefined) this.#byOwner.set(holder, ids = new Set())
    ids.add(sessionId)
  }

  #forget (id: string, owner: string): void {
    this.#revoked.delete(id)
    const ids = this.#byOwner.get(owner)!
    ids.delete(id)
    if (ids.size === 0) this.#byOwner.delete(owner)
  }

  /**
   * Forgets the revocations of the owners holding the most, at least a tenth of the bound, and
   * refuses those owners' sessions issued until now instead: every session they revoked was issued
   * before now, so none of them is ever accepted again. Revocations of no known owner among them
   * mean every session issued until now is refused, which covers everything: the store is emptied.
   */
  #forgetMost (now: number): void {
    for (const [owner, refusal] of this.#refusedOwners) if (refusal.until <= now) this.#refusedOwners.delete(owner)
    const owners = [...this.#byOwner].sort((a, b) => b[1].size - a[1].size)
    const goal = Math.max(1, Math.ceil(this.#max * FORGET_SHARE))
    let freed = 0
    const forgotten: string[] = []
    for (const [owner, ids] of owners) {
      if (freed >= goal) break
      if (owner === NO_OWNER) return this.#forgetAll(now)
      let until = 0
      for (const id of ids) until = Math.max(until, this.#revoked.get(id)!.expiresAt)
      freed += ids.size
      for (const id of ids) this.#revoked.delete(id)
      this.#byOwner.delete(owner)
      this.#refusedOwners.set(owner, { refusedUntil: Math.ceil(now), until })
      forgotten.push(owner)
    }
    this.#lastOwnerRefusal = Math.ceil(now)
    this.#warnOnce({ forgotten: freed, owners: forgotten.length }, `fastify-clearml-keycloak: the in-memory revocation store held ${this.#max} live revocations (its bound); ` +
      `it forgot ${freed} of the ${forgotten.length} user(s) holding the most, whose sessions issued until now must log in again. Share a RedisRevocationStore, or raise "max".`)
  }

  /**
   * Every session revoked so far was issued before now, so refusing everything issued up to now
   * covers all of them at once: the map can be emptied without letting a revoked session in.
   */
  #forgetAll (now: number): void {
    this.#refusedUntil = Math.ceil(now)
    const forgotten = this.#revoked.size
    this.#revoked.clear()
    this.#byOwner.clear()
    this.#warnOnce({ forgotten, refusedUntil: this.#refusedUntil }, `fastify-clearml-keycloak: the in-memory revocation store held ${forgotten} live revocations (its bound); ` +
      'every session issued until now must log in again. Share a RedisRevocationStore, or raise "max".')
  }

  #warnOnce (object: Record<string, unknown>, message: string): void {
    if (this.#warned) return
    this.#warned = true
    if (this.#log !== undefined) this.#log.warn(object, message)
    else process.emitWarning(message, { code: 'CLEARML_KC_REVOCATIONS_FORGOTTEN' })
  }

  isRevoked (sessionId: string, issuedAt?: number, owner?: string): boolean {
    // Without an issue time the session may predate what was forgotten: refused.
    if (this.#refusedUntil !== Number.NEGATIVE_INFINITY && (issuedAt === undefined || issuedAt <= this.#refusedUntil)) return true
    if (this.#lastOwnerRefusal !== Number.NEGATIVE_INFINITY && this.#refusedByOwner(issuedAt, owner)) return true
    const entry = this.#revoked.get(sessionId)
    if (entry === undefined) return false
    if (entry.expiresAt <= nowSec()) {
      this.#forget(sessionId, entry.owner)
      return false
    }
    return true
  }

  /** A session of an owner whose revocations were forgotten, issued before they were; without an owner, any such. */
  #refusedByOwner (issuedAt: number | undefined, owner: string | undefined): boolean {
    if (owner === undefined) return issuedAt === undefined || issuedAt <= this.#lastOwnerRefusal
    const refusal = this.#refusedOwners.get(owner)
    if (refusal === undefined) return false
    if (refusal.until <= nowSec()) {
      // Every session it covered has expired by now.
      this.#refusedOwners.delete(owner)
      return false
    }
    return issuedAt === undefined || issuedAt <= refusal.refusedUntil
  }

  async claimOnce (key: string, expiresAt: number): Promise<boolean> {
    return this.#claims.claim(key, expiresAt)
  }

  async setValue (key: string, value: string, expiresAt: number): Promise<void> {
    const now = nowSec()
    if (this.#values.size >= this.#maxValues) {
      for (const [k, entry] of this.#values) if (entry.expiresAt <= now) this.#values.delete(k)
    }
    // Still full: the oldest value is dropped. Its reader handles an absent value (SPEC 5 step 10).
    if (this.#values.size >= this.#maxValues) this.#values.delete(this.#values.keys().next().value!)
    this.#values.set(key, { value, expiresAt })
  }

  async takeValue (key: string): Promise<string | undefined> {
    const entry = this.#values.get(key)
    this.#values.delete(key)
    return entry === undefined || entry.expiresAt <= nowSec() ? undefined : entry.value
  }

  // Sessions that follow Keycloak (SPEC section 12), in this process.
  async saveRefresh (key: RefreshKey, state: RefreshState, expiresAt: number): Promise<void> { await this.#follow.saveRefresh(key, state, expiresAt) }
  async leaseRefresh (key: RefreshKey, options: { dueBefore: number, leaseMs: number }): Promise<RefreshLease> { return await this.#follow.leaseRefresh(key, options) }
  async releaseRefresh (key: RefreshKey, lease: string, next?: RefreshState): Promise<boolean> { return await this.#follow.releaseRefresh(key, lease, next) }
  async endRefresh (key: RefreshKey, expiresAt: number): Promise<void> { await this.#follow.endRefresh(key, expiresAt) }
  async takeRefresh (key: RefreshKey): Promise<RefreshState | undefined> { return await this.#follow.takeRefresh(key) }
  async takeKeycloakSessionRefreshes (keycloakSession: string): Promise<RefreshState[]> { return await this.#follow.takeKeycloakSessionRefreshes(keycloakSession) }
  revision (sessionId: string): SessionRevision | undefined { return this.#follow.revision(sessionId) }
  async revise (sessionId: string, revision: SessionRevision, expiresAt: number): Promise<void> { await this.#follow.revise(sessionId, revision, expiresAt) }
}
