/**
 * The bounded cache of verified credentials that `authenticate` answers from: ClearML session tokens
 * (`sessions.ts`) and Keycloak access tokens (`../keycloak/bearer.ts`), each kept with what was built from it.
 */

/**
 * An asynchronous answer the synchronous path does not wait for (the slow path asks again): its
 * failure must not become an unhandled rejection, which ends the process.
 */
export function undecided (answer: Promise<boolean>): undefined {
  answer.catch(() => {})
  return undefined
}

/** A cached credential in the recency list. */
interface CacheNode<V> {
  token: string
  value: V
  /** Value of the admission counter when the node was last moved to the newest end. */
  movedAt: number
  newer: CacheNode<V> | undefined
  older: CacheNode<V> | undefined
}

/** When the cache is full, the share of sessions not in it that are admitted (see `CredentialCache`). */
export const ADMISSION_WHEN_FULL = 1 / 16

/**
 * Verified credentials by token (the whole token: a key made of part of it would let a forged payload
 * borrow a genuine signature): a map to find one, a list in order of use to find the one to
 * evict, the least recently used. (Evicting the first key of a `Map` instead, as this cache once
 * did, makes V8 walk over the slots of every key deleted before it since the table was last
 * rebuilt: microseconds per admission with 10,000 sessions, tens with 100,000.)
 *
 * Better than LRU when there are more active sessions than room: once full, a session not in the
 * cache is admitted (evicting the least recently used) only one time in 16, at random, and is
 * otherwise verified and served without being kept. Under round-robin traffic (agents polling, each
 * request from the next session) strict LRU evicts every session just before its next request and
 * hits never; this keeps a stable share of them, close to the best possible hit rate of room /
 * sessions, and a hot session still gets in after 16 requests on average (bimodal insertion,
 * Qureshi et al., "Adaptive insertion policies for high performance caching", ISCA 2007).
 *
 * A session is moved to the newest end at most once per half cache of admissions, so a hit on a
 * session in steady use costs one look-up and no writes (memcached bumps an item at most once a
 * minute for the same reason). The price: a session stays until `max` other sessions have been
 * admitted or moved since it was itself admitted or last moved, where strict LRU counts from its
 * last use.
 */
export class CredentialCache<V> {
  readonly #nodes = new Map<string, CacheNode<V>>()
  readonly #max: number
  readonly #moveAfter: number
  readonly #random: () => number
  #admissions = 0
  #newest: CacheNode<V> | undefined
  #oldest: CacheNode<V> | undefined

  /** `random` is for tests: a seeded source makes the admissions of a full cache reproducible. */
  constructor (max: number, random: () => number = Math.random) {
    this.#max = max
    this.#moveAfter = Math.floor(max / 2)
    this.#random = random
  }

  get size (): number {
    return this.#nodes.size
  }

  get (token: string): V | undefined {
    const node = this.#nodes.get(token)
    if (node === undefined) return undefined
    if (this.#admissions - node.movedAt >= this.#moveAfter) {
      this.#unlink(node)
      this.#pushNewest(node)
      node.movedAt = this.#admissions
    }
    return node.value
  }

  has (token: string): boolean {
    return this.#nodes.has(token)
  }

  /** Caches what was built from a verified token, unless the cache is full and the draw says no. */
  add (token: string, value: V): void {
    if (this.#max === 0) return
    if (this.#nodes.size >= this.#max) {
      if (this.#random() >= ADMISSION_WHEN_FULL) return
      this.#remove(this.#oldest!)
    }
    // A copy as the key: the token is usually a slice of the request's Cookie header, which the cache
    // would otherwise keep whole (other cookies included) for as long as it keeps the session. A
    // verified token is ASCII, so the latin1 round trip is exact.
    const key = Buffer.from(token, 'latin1').toString('latin1')
    const node: CacheNode<V> = { token: key, value, movedAt: ++this.#admissions, newer: undefined, older: undefined }
    this.#nodes.set(key, node)
    this.#pushNewest(node)
  }

  delete (token: string): void {
    const node = this.#nodes.get(token)
    if (node !== undefined) this.#remove(node)
  }

  #remove (node: CacheNode<V>): void {
    this.#unlink(node)
    this.#nodes.delete(node.token)
  }

  #unlink (node: CacheNode<V>): void {
    if (node.newer === undefined) this.#newest = node.older
    else node.newer.older = node.older
    if (node.older === undefined) this.#oldest = node.newer
    else node.older.newer = node.newer
    node.newer = undefined
    node.older = undefined
  }

  #pushNewest (node: CacheNode<V>): void {
    node.older = this.#newest
    if (this.#newest === undefined) this.#oldest = node
    else this.#newest.newer = node
    this.#newest = node
  }
}
