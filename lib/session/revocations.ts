/**
 * Revoked sessions and the other small pieces of state several apiserver replicas must share
 * (SPEC sections 7a and 9). The check runs on every authenticated request, so `isRevoked` may answer
 * synchronously from memory; a shared store (Redis) keeps a local copy fed by pub/sub rather than
 * asking the server per request.
 */
import type { SessionFollowStore } from './follow-store.js'

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

/**
 * In memory, for one apiserver process: bounded, and forgets a revocation once the session it
 * revokes has expired anyway. When the bound forces it to forget live revocations it fails closed:
 * every session issued until then is refused (its user logs in again), and it says so once.
 */
export class MemoryRevocationStore implements RevocationStore {
  readonly #revoked = new Map<string, number>()
  readonly #values = new Map<string, { value: string, expiresAt: number }>()
  readonly #claims: OnceClaims
  readonly #max: number
  readonly #maxValues: number
  #log: StoreLog | undefined
  /** Sessions issued at or before this second are refused: revocations of theirs were forgotten. */
  #refusedUntil = Number.NEGATIVE_INFINITY
  #warned = false

  constructor (options: { max?: number, maxClaims?: number, maxValues?: number, log?: StoreLog } = {}) {
    this.#max = options.max ?? 100_000
    this.#maxValues = options.maxValues ?? 10_000
    this.#claims = new OnceClaims(options.maxClaims ?? 100_000)
    this.#log = options.log
  }

  /** Live revocations held. */
  get size (): number {
    return this.#revoked.size
  }

  /** The second until which every session is refused because revocations were forgotten; for tests. */
  get refusedUntil (): number {
    return this.#refusedUntil
  }

  /** Where the one warning about forgotten revocations goes, when the store was built without a log. */
  useLog (log: StoreLog): void {
    this.#log ??= log
  }

  async revoke (sessionId: string, expiresAt: number): Promise<void> {
    const now = nowSec()
    if (expiresAt <= now) return
    if (this.#revoked.size >= this.#max) {
      for (const [id, exp] of this.#revoked) if (exp <= now) this.#revoked.delete(id)
    }
    if (this.#revoked.size >= this.#max) this.#forgetAll(now)
    this.#revoked.set(sessionId, expiresAt)
  }

  /**
   * Every session revoked so far was issued before now, so refusing everything issued up to now
   * covers all of them at once: the map can be emptied without letting a revoked session in.
   */
  #forgetAll (now: number): void {
    this.#refusedUntil = Math.ceil(now)
    const forgotten = this.#revoked.size
    this.#revoked.clear()
    if (this.#warned) return
    this.#warned = true
    const message = `fastify-clearml-keycloak: the in-memory revocation store held ${forgotten} live revocations (its bound); ` +
      'every session issued until now must log in again. Share a RedisRevocationStore, or raise "max".'
    if (this.#log !== undefined) this.#log.warn({ forgotten, refusedUntil: this.#refusedUntil }, message)
    else process.emitWarning(message, { code: 'CLEARML_KC_REVOCATIONS_FORGOTTEN' })
  }

  isRevoked (sessionId: string, issuedAt?: number): boolean {
    // Without an issue time the session may predate what was forgotten: refused.
    if (this.#refusedUntil !== Number.NEGATIVE_INFINITY && (issuedAt === undefined || issuedAt <= this.#refusedUntil)) return true
    const exp = this.#revoked.get(sessionId)
    if (exp === undefined) return false
    if (exp <= nowSec()) {
      this.#revoked.delete(sessionId)
      return false
    }
    return true
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
}
