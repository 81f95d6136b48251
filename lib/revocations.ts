/**
 * Revoked sessions (SPEC section 7a). The check runs on every authenticated request, so the store's
 * `isRevoked` may answer synchronously from memory; a shared store (Redis) keeps a local copy fed
 * by pub/sub rather than asking the server per request.
 */
export interface RevocationStore {
  revoke(sessionId: string, expiresAt: number): Promise<void>
  isRevoked(sessionId: string): boolean | Promise<boolean>
}

/** In-memory, bounded, and forgets a revocation once the session it revokes has expired anyway. */
export class MemoryRevocationStore implements RevocationStore {
  readonly #revoked = new Map<string, number>()
  readonly #max: number

  constructor (options: { max?: number } = {}) {
    this.#max = options.max ?? 100_000
  }

  get size (): number {
    return this.#revoked.size
  }

  async revoke (sessionId: string, expiresAt: number): Promise<void> {
    const now = Date.now() / 1000
    if (expiresAt <= now) return
    if (this.#revoked.size >= this.#max) {
      for (const [id, exp] of this.#revoked) if (exp <= now) this.#revoked.delete(id)
      // Full of live revocations: the oldest-inserted goes first. Sized generously, this means more
      // logouts within one session lifetime than `max`; raise `max` or use a shared store then.
      if (this.#revoked.size >= this.#max) this.#revoked.delete(this.#revoked.keys().next().value!)
    }
    this.#revoked.set(sessionId, expiresAt)
  }

  isRevoked (sessionId: string): boolean {
    const exp = this.#revoked.get(sessionId)
    if (exp === undefined) return false
    if (exp <= Date.now() / 1000) {
      this.#revoked.delete(sessionId)
      return false
    }
    return true
  }
}
