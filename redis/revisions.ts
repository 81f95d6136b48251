/**
 * Session revisions on Redis (`SessionFollowStore.revise` and `revision`): the identity a
 * revalidation gave a session, which `authenticate` asks for on every request. So, like
 * revocations, every replica keeps a copy of all of them, loaded in full at start and after every
 * reconnect or loss, and kept current by pub/sub; `revision()` answers from it synchronously. The
 * higher version wins everywhere: in the copy, in Redis (the write script) and in a write-back.
 */
import type { SessionRevision } from '../lib/session/follow-store.js'
import type { SessionIdentity } from '../lib/session/claims.js'
import { decodeStoredRevision, encodeChanges, encodeStoredRevision, LOAD_PAGE, WRITE_BATCH, type RevisionEntry } from './layout.js'
import { WRITE_REVISIONS_SCRIPT } from './scripts.js'
import { CLOCK_SLACK_SEC, MIN_SWEEP_SIZE, nowSec, type StoreLink } from './store-link.js'

interface Known { version: number, identity: SessionIdentity, expiresAt: number, mac?: string }

export class Revisions {
  readonly #link: StoreLink
  readonly #copy = new Map<string, Known>()
  readonly #queued = new Map<string, Known>()
  #sweepAt = MIN_SWEEP_SIZE
  /** The latest expiry of a revision Redis is known to have had: while it is ahead, the hash must exist. */
  #latestConfirmed = 0

  constructor (link: StoreLink) {
    this.#link = link
  }

  get queued (): number {
    return this.#queued.size
  }

  /** Whether Redis must hold the hash now (a revision it took is still live, with a minute to spare for clocks). */
  expectedInRedis (): boolean {
    return this.#latestConfirmed > nowSec() + CLOCK_SLACK_SEC
  }

  revision (sessionId: string): SessionRevision | undefined {
    const known = this.#copy.get(sessionId)
    if (known === undefined) return undefined
    if (known.expiresAt > nowSec()) return known.mac === undefined ? { version: known.version, identity: known.identity } : { version: known.version, identity: known.identity, mac: known.mac }
    this.#copy.delete(sessionId)
    return undefined
  }

  async revise (sessionId: string, revision: SessionRevision, expiresAt: number): Promise<void> {
    const known: Known = revision.mac === undefined ? { version: revision.version, identity: revision.identity, expiresAt } : { version: revision.version, identity: revision.identity, expiresAt, mac: revision.mac }
    if (!this.#remember(sessionId, known)) return
    if (this.#link.connected()) {
      try {
        await this.#write([[sessionId, known]])
        return
      } catch (err) {
        this.#enqueue(sessionId, known)
        this.#link.writeFailed('revision', err, { revisions: [entry(sessionId, known)] })
        return
      }
    }
    this.#enqueue(sessionId, known)
    this.#link.writeFailed('revision', undefined)
  }

  /** Revisions announced by a replica: Redis took them. */
  received (entries: RevisionEntry[]): void {
    for (const [session, version, identity, expiresAt, mac] of entries) {
      this.#remember(session, mac === undefined ? { version, identity, expiresAt } : { version, identity, expiresAt, mac })
      this.#confirm(expiresAt)
    }
  }

  /** Every live revision in Redis (`HSCAN`, page by page). */
  async load (): Promise<Map<string, Known>> {
    const now = nowSec()
    const inRedis = new Map<string, Known>()
    let cursor = '0'
    do {
      const [next, page] = await this.#link.bounded(this.#link.redis.hscan(this.#link.names.revisions, cursor, 'COUNT', LOAD_PAGE))
      for (let i = 0; i < page.length; i += 2) {
        const known = decodeStoredRevision(page[i + 1])
        if (known !== undefined && known.expiresAt > now) inRedis.set(page[i], known)
      }
      cursor = next
    } while (cursor !== '0')
    return inRedis
  }

  /** Merges a full load into the copy and queues what Redis lacks (or holds at a lower version); how many. */
  merge (inRedis: Map<string, Known>): number {
    for (const [session, known] of inRedis) {
      this.#remember(session, known, false)
      this.#confirm(known.expiresAt)
    }
    this.#sweep()
    let writtenBack = 0
    for (const [session, known] of this.#copy) {
      if ((inRedis.get(session)?.version ?? 0) < known.version) {
        this.#enqueue(session, known)
        writtenBack++
      }
    }
    return writtenBack
  }

  /** Writes what is queued, in batches; how many. */
  async flush (): Promise<number> {
    const now = nowSec()
    for (const [session, known] of this.#queued) if (known.expiresAt <= now) this.#queued.delete(session)
    const pending = [...this.#queued]
    for (let i = 0; i < pending.length; i += WRITE_BATCH) {
      const batch = pending.slice(i, i + WRITE_BATCH)
      await this.#write(batch)
      // A later revision of the same session stays queued.
      for (const [session, known] of batch) if (this.#queued.get(session) === known) this.#queued.delete(session)
    }
    return pending.length
  }

  async #write (revisions: Array<[string, Known]>): Promise<void> {
    const { names, publish } = this.#link
    const args: Array<string | number> = [publish, names.channel, nowSec(), encodeChanges({ revisions: revisions.map(([session, known]) => entry(session, known)) })]
    for (const [session, known] of revisions) args.push(session, known.version, known.expiresAt, encodeStoredRevision(known.version, known.identity, known.expiresAt, known.mac))
    const epoch = await this.#link.bounded(this.#link.redis.eval(WRITE_REVISIONS_SCRIPT, 3, names.revisions, names.revisionExpiry, names.epoch, ...args))
    for (const [, known] of revisions) this.#confirm(known.expiresAt)
    this.#link.sawEpoch(epoch)
  }

  /** Keeps the higher version; false when the copy already had it (or a higher one) or it has expired. */
  #remember (session: string, known: Known, sweep = true): boolean {
    if (known.expiresAt <= nowSec()) return false
    const current = this.#copy.get(session)
    if (current !== undefined && current.version >= known.version) return false
    this.#copy.set(session, known)
    if (sweep && this.#copy.size >= this.#sweepAt) this.#sweep()
    return true
  }

  /** At most one per session the copy holds, so the queue is no larger than the copy. */
  #enqueue (session: string, known: Known): void {
    this.#queued.set(session, known)
  }

  #confirm (expiresAt: number): void {
    if (expiresAt > this.#latestConfirmed) this.#latestConfirmed = expiresAt
  }

  #sweep (): void {
    const now = nowSec()
    for (const [session, known] of this.#copy) if (known.expiresAt <= now) this.#copy.delete(session)
    this.#sweepAt = Math.max(MIN_SWEEP_SIZE, this.#copy.size * 2)
  }
}

function entry (session: string, known: Known): RevisionEntry {
  return known.mac === undefined ? [session, known.version, known.identity, known.expiresAt] : [session, known.version, known.identity, known.expiresAt, known.mac]
}
