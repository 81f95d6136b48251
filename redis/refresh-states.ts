/**
 * Refresh states on Redis (`SessionFollowStore`'s refresh methods), so that with rotating refresh
 * tokens no token is ever presented twice across replicas:
 *
 * - the lease is granted by one script on one key (`LEASE_REFRESH_SCRIPT`), on Redis's clock, only
 *   when the session is due and no lease is live: exactly one caller of all replicas gets it;
 * - the rotated token replaces the old one in the script that ends the lease, when its generation
 *   is higher, so the next holder reads it;
 * - **a failover must not lose a rotation**: Redis replicates asynchronously, so the primary can
 *   acknowledge a rotated token and die before its replica has it; the next refresh would then
 *   present the old token, which Keycloak refuses, ending the session. Every replica therefore keeps
 *   a journal of the refresh states written recently (its own, and every other replica's, announced
 *   on the channel, sealed as the plugin gave them), and (1) hands its journal's state to every
 *   lease script, which writes it first when Redis holds an older generation, and (2) writes the
 *   whole journal back (higher generation wins) whenever it notices that Redis lost data.
 *
 * While Redis is unreachable or the store is out of touch with it, no lease is granted (a lease
 * must be exclusive, and Redis is the only place that can make it so): `leaseRefresh` rejects with
 * `ERR_CLEARML_KEYCLOAK_REDIS_UNAVAILABLE`, and the session goes on with its last known state.
 * Saves and rotated tokens are kept in the journal and written when Redis answers again; takes
 * answer from the journal.
 */
import { randomUUID } from 'node:crypto'
import type { RefreshKey, RefreshLease, RefreshState } from '../lib/session/follow-store.js'
import { RedisStoreError, REDIS_STORE_ERRORS } from './errors.js'
import { checkDuration, checkExpiry, checkKey, checkRefreshKey, checkRefreshState, checkSeconds } from './inputs.js'
import { encodeChanges, type Changes, type RefreshEntry } from './layout.js'
import {
  END_REFRESH_SCRIPT, LEASE_REFRESH_SCRIPT, RELEASE_REFRESH_SCRIPT, SAVE_REFRESH_SCRIPT, TAKE_KEYCLOAK_SESSION_SCRIPT, TAKE_REFRESH_SCRIPT
} from './scripts.js'
import { nowSec, type StoreLink } from './store-link.js'

/**
 * How long a written state stays in the journal. A failover loses only what the primary had not
 * yet sent to its replica (normally milliseconds behind), and the store notices the failover when
 * it happens; a minute covers both with room. While the store is out of touch the journal keeps
 * everything, so the write-back after the reconnect has it all.
 */
export const JOURNAL_MS = 60_000
/** Beyond this many states the oldest go first, written or not (as the store's other queues). */
export const MAX_JOURNAL = 100_000

interface JournalEntry {
  key: RefreshKey
  state: RefreshState
  expiresAt: number
  /** `performance.now()` when recorded. */
  recordedAt: number
  /** Redis took it (or a newer one). */
  written: boolean
  /** How an unwritten entry is written: a save creates the state; a rotation only replaces one (a logout may have taken it). */
  create: boolean
  /** The lease a rotation Redis did not take was released with: its write ends that lease too. */
  lease?: string
}

/** The newest refresh state of each session written recently, in the order recorded. */
export class RefreshJournal {
  readonly #entries = new Map<string, JournalEntry>()
  readonly #unwritten = new Set<string>()
  readonly #max: number

  constructor (max = MAX_JOURNAL) {
    this.#max = max
  }

  get size (): number {
    return this.#entries.size
  }

  get unwrittenCount (): number {
    return this.#unwritten.size
  }

  get (session: string): JournalEntry | undefined {
    const entry = this.#entries.get(session)
    if (entry === undefined || entry.expiresAt > nowSec()) return entry
    this.forget(session)
    return undefined
  }

  /** Keeps the higher generation; an equal one counts as written when either was. */
  record (key: RefreshKey, state: RefreshState, expiresAt: number, how: { written: boolean, create: boolean, lease?: string }): void {
    const current = this.#entries.get(key.session)
    if (current !== undefined && current.state.generation > state.generation) return
    const written = how.written || (current !== undefined && current.state.generation === state.generation && current.written)
    this.#entries.delete(key.session)
    if (this.#entries.size >= this.#max) this.forget(this.#entries.keys().next().value!)
    this.#entries.set(key.session, { key, state, expiresAt, recordedAt: performance.now(), written, create: how.create, lease: how.lease })
    if (written) this.#unwritten.delete(key.session)
    else this.#unwritten.add(key.session)
  }

  /**
   * A state another replica announced although Redis refused it: kept as that replica's to write
   * (counted written here), unless this journal already has its generation or a newer one (its
   * writer's own entry stays unwritten).
   */
  learn (key: RefreshKey, state: RefreshState, expiresAt: number): void {
    const current = this.#entries.get(key.session)
    if (current === undefined || current.state.generation < state.generation) this.record(key, state, expiresAt, { written: true, create: true })
  }

  /** Redis took `generation` (or a newer one) of the session's state. */
  written (session: string, generation: number): void {
    const entry = this.#entries.get(session)
    if (entry === undefined || entry.state.generation > generation) return
    entry.written = true
    entry.lease = undefined
    this.#unwritten.delete(session)
  }

  forget (session: string): JournalEntry | undefined {
    const entry = this.#entries.get(session)
    this.#entries.delete(session)
    this.#unwritten.delete(session)
    return entry
  }

  ofKeycloakSession (sid: string): JournalEntry[] {
    return [...this.#entries.values()].filter((entry) => entry.key.keycloakSession === sid)
  }

  unwritten (): JournalEntry[] {
    return [...this.#unwritten].map((session) => this.#entries.get(session)!)
  }

  /** Redis lost data: every live state is to be written again, created where Redis has none. */
  rewriteAll (): number {
    this.prune(true)
    for (const [session, entry] of this.#entries) {
      entry.written = false
      entry.create = true
      this.#unwritten.add(session)
    }
    return this.#entries.size
  }

  /**
   * Drops written states older than `JOURNAL_MS` (at `at`, a `performance.now()`) unless
   * `keepWritten`, and expired ones on the way. Entries are in the order recorded, so the walk stops
   * at the first one young enough; while the store is out of touch it walks them all for expired ones.
   */
  prune (keepWritten: boolean, at = performance.now()): void {
    const now = nowSec()
    const oldest = at - JOURNAL_MS
    for (const [session, entry] of this.#entries) {
      if (!keepWritten && entry.recordedAt >= oldest) break
      if (entry.expiresAt <= now || (!keepWritten && entry.written)) this.forget(session)
    }
  }
}

const toEntry = (key: RefreshKey, state: RefreshState, expiresAt: number): RefreshEntry =>
  [key.session, key.keycloakSession ?? null, state.sealed, state.checkedAt, state.generation, expiresAt]

const stateOf = (sealed: unknown, checkedAt: unknown, generation: unknown): RefreshState =>
  ({ sealed: String(sealed), checkedAt: Number(checkedAt), generation: Number(generation) })

/** Redis's state, or the journal's when it is of a higher generation (a rotation Redis lost). */
function newer (inRedis: RefreshState, journal: RefreshState | undefined): RefreshState {
  return journal !== undefined && journal.generation > inRedis.generation ? journal : inRedis
}

export class RefreshStates {
  readonly #link: StoreLink
  readonly journal = new RefreshJournal()
  /**
   * Ends Redis did not take. Unbounded: an end follows a refresh, which needs a lease, which needs
   * Redis, so only ends whose own write failed are ever queued.
   */
  readonly #queuedEnds = new Map<string, { key: RefreshKey, expiresAt: number }>()
  /**
   * Releases Redis did not take and the journal cannot hold (no token, or a session whose expiry this
   * replica does not know), by lease id: written when Redis answers, so the lease does not keep every
   * other replica waiting until it ends. Few: a release follows a lease, which needed Redis.
   */
  readonly #queuedReleases = new Map<string, { key: RefreshKey, next?: RefreshState }>()
  /**
   * Leases granted here and not yet released: the session's expiry, for the journal entry of the
   * rotated state, and when the lease ends; in the order granted, so ended ones go from the front.
   */
  readonly #leases = new Map<string, { expiresAt: number, until: number }>()

  constructor (link: StoreLink) {
    this.#link = link
  }

  get queued (): number {
    return this.journal.unwrittenCount + this.#queuedEnds.size + this.#queuedReleases.size
  }

  async saveRefresh (key: RefreshKey, state: RefreshState, expiresAt: number): Promise<void> {
    checkRefreshKey(key)
    checkRefreshState(state)
    checkExpiry(expiresAt)
    if (expiresAt <= nowSec()) return
    this.journal.record(key, state, expiresAt, { written: false, create: true })
    const entry = this.journal.get(key.session)!
    if (this.#link.connected()) {
      try {
        await this.#write(entry)
        return
      } catch (err) {
        this.#link.writeFailed('refresh state', err, { refreshStates: [toEntry(key, state, expiresAt)] })
        return
      }
    }
    this.#link.writeFailed('refresh state', undefined)
  }

  async leaseRefresh (key: RefreshKey, options: { dueBefore: number, leaseMs: number }): Promise<RefreshLease> {
    checkRefreshKey(key)
    checkSeconds(options?.dueBefore, 'dueBefore')
    checkDuration(options.leaseMs, 'leaseMs')
    if (!this.#link.connected() || this.#link.stale()) throw this.#unavailable()
    const lease = randomUUID()
    const args: Array<string | number> = [options.dueBefore, Math.ceil(options.leaseMs), lease, Date.now()]
    const known = this.journal.get(key.session)
    if (known !== undefined) args.push(...this.#stateArgs(known.key, known.state, known.expiresAt))
    let reply: Array<string | null>
    try {
      reply = await this.#onSession<Array<string | null>>(LEASE_REFRESH_SCRIPT, key.session, ...args)
    } catch (err) {
      throw this.#unavailable(err)
    }
    switch (reply[0]) {
      case 'leased': {
        const granted = performance.now()
        for (const [id, held] of this.#leases) {
          if (held.until > granted) break
          this.#leases.delete(id)
        }
        this.#leases.set(lease, { expiresAt: Number(reply[4]) / 1000, until: granted + options.leaseMs })
        return { status: 'leased', state: stateOf(reply[1], reply[2], reply[3]), lease }
      }
      case 'fresh':
      case 'busy':
        return { status: reply[0], checkedAt: Number(reply[1]) }
      default:
        return { status: reply[0] as 'ended' | 'absent' }
    }
  }

  async releaseRefresh (key: RefreshKey, lease: string, next?: RefreshState): Promise<boolean> {
    checkRefreshKey(key)
    checkKey(lease, 'lease')
    if (next !== undefined) checkRefreshState(next)
    // The session's expiry, for the journal: known from the lease, or from a state recorded here.
    const expiresAt = this.#leases.get(lease)?.expiresAt ?? this.journal.get(key.session)?.expiresAt
    this.#leases.delete(lease)
    const journaled = next !== undefined && expiresAt !== undefined
    if (journaled) this.journal.record(key, next, expiresAt, { written: false, create: false, lease })
    let problem: unknown
    if (this.#link.connected()) {
      try {
        return await this.#release(key, lease, next, expiresAt)
      } catch (err) {
        problem = err
      }
    }
    // Written when Redis answers (the rotated state from the journal, with its lease); meanwhile
    // the caller did its part.
    if (!journaled) this.#queuedReleases.set(lease, { key, next })
    this.#link.writeFailed(next === undefined ? 'refresh release' : 'rotated refresh state', problem,
      problem === undefined || !journaled ? undefined : { refreshStates: [toEntry(key, next, expiresAt)] })
    return true
  }

  async endRefresh (key: RefreshKey, expiresAt: number): Promise<void> {
    checkRefreshKey(key)
    checkExpiry(expiresAt)
    this.journal.forget(key.session)
    if (expiresAt <= nowSec()) return
    if (this.#link.connected()) {
      try {
        await this.#end(key, expiresAt)
        return
      } catch (err) {
        this.#queueEnd(key, expiresAt)
        this.#link.writeFailed('ended refresh state', err, { taken: [key.session] })
        return
      }
    }
    this.#queueEnd(key, expiresAt)
    this.#link.writeFailed('ended refresh state', undefined)
  }

  /** The state Redis had (the journal's when it is newer), or the journal's when Redis cannot be asked. */
  async takeRefresh (key: RefreshKey): Promise<RefreshState | undefined> {
    checkRefreshKey(key)
    const local = this.journal.forget(key.session)
    if (this.#queuedEnds.has(key.session)) return undefined
    if (!this.#link.connected()) return local?.state
    const { names, publish } = this.#link
    try {
      const reply = await this.#onSession<Array<string | null>>(TAKE_REFRESH_SCRIPT, key.session,
        publish, names.channel, encodeChanges({ taken: [key.session] }), key.session)
      this.#link.sawEpoch(reply[0])
      // Nothing in Redis: taken elsewhere, or ended. Redis answers for the session; the journal only
      // for its token, when it holds a newer one than Redis (a rotation Redis lost).
      return reply[3] === null ? undefined : newer(stateOf(reply[1], reply[2], reply[3]), local?.state)
    } catch {
      return local?.state
    }
  }

  async takeKeycloakSessionRefreshes (keycloakSession: string): Promise<RefreshState[]> {
    checkKey(keycloakSession, 'Keycloak session id')
    const local = new Map(this.journal.ofKeycloakSession(keycloakSession).map((entry) => [entry.key.session, this.journal.forget(entry.key.session)!.state]))
    if (!this.#link.connected()) return [...local.values()]
    const { names, publish } = this.#link
    try {
      const reply = await this.#link.bounded(this.#link.redis.eval(TAKE_KEYCLOAK_SESSION_SCRIPT, 3, names.keycloakSession(keycloakSession), names.epoch, names.refreshBase,
        publish, names.channel) as Promise<Array<string | null>>)
      this.#link.sawEpoch(reply[0])
      const taken: RefreshState[] = []
      for (let i = 1; i < reply.length; i += 4) taken.push(newer(stateOf(reply[i + 1], reply[i + 2], reply[i + 3]), local.get(reply[i]!)))
      return taken
    } catch {
      return [...local.values()]
    }
  }

  /** Refresh states a replica wrote (or announced when Redis refused them), and sessions whose state was taken or ended. */
  received (changes: Changes): void {
    for (const [session, keycloakSession, sealed, checkedAt, generation, expiresAt] of changes.refreshStates ?? []) {
      const key: RefreshKey = keycloakSession === null ? { session } : { session, keycloakSession }
      const state = { sealed, checkedAt, generation }
      if (changes.unwritten === true) this.journal.learn(key, state, expiresAt)
      else this.journal.record(key, state, expiresAt, { written: true, create: true })
    }
    for (const session of changes.taken ?? []) this.journal.forget(session)
  }

  /** Writes what is queued: journal states Redis has not taken, then queued ends; how many. */
  async flush (): Promise<number> {
    const states = this.journal.unwritten()
    await this.#link.bounded(Promise.all(states.map(async (entry) => {
      // A rotation ends its lease as it is written; a state Redis may have lost is created too.
      if (entry.lease !== undefined) await this.#release(entry.key, entry.lease, entry.state, entry.expiresAt)
      if (entry.create) await this.#write(entry)
    })))
    const releases = [...this.#queuedReleases]
    await this.#link.bounded(Promise.all(releases.map(async ([lease, { key, next }]) => {
      await this.#release(key, lease, next, undefined)
      this.#queuedReleases.delete(lease)
    })))
    const now = nowSec()
    const ends = [...this.#queuedEnds.values()].filter((end) => end.expiresAt > now)
    this.#queuedEnds.clear()
    try {
      await this.#link.bounded(Promise.all(ends.map(async (end) => { await this.#end(end.key, end.expiresAt) })))
    } catch (err) {
      for (const end of ends) this.#queueEnd(end.key, end.expiresAt)
      throw err
    }
    return states.length + releases.length + ends.length
  }

  /** One of the scripts on a session's refresh state: its keys are the state, the loss marker and the base of the Keycloak-session sets, in one slot. */
  async #onSession<T>(script: string, session: string, ...args: Array<string | number>): Promise<T> {
    const { names } = this.#link
    return await this.#link.bounded(this.#link.redis.eval(script, 3, names.refresh(session), names.epoch, names.keycloakSessionBase, ...args) as Promise<T>)
  }

  #stateArgs (key: RefreshKey, state: RefreshState, expiresAt: number | undefined): Array<string | number> {
    return [state.sealed, state.checkedAt, state.generation, expiresAt === undefined ? '' : Math.ceil(expiresAt * 1000), key.session, key.keycloakSession ?? '']
  }

  async #write (entry: JournalEntry): Promise<void> {
    const { names, publish } = this.#link
    const { key, state, expiresAt } = entry
    const reply = await this.#onSession<Array<string | null>>(SAVE_REFRESH_SCRIPT, key.session,
      publish, names.channel, encodeChanges({ refreshStates: [toEntry(key, state, expiresAt)] }), ...this.#stateArgs(key, state, expiresAt), Date.now())
    this.#link.sawEpoch(reply[0])
    this.journal.written(key.session, state.generation)
  }

  async #release (key: RefreshKey, lease: string, next: RefreshState | undefined, expiresAt: number | undefined): Promise<boolean> {
    const { names, publish } = this.#link
    const message = next === undefined || expiresAt === undefined ? '' : encodeChanges({ refreshStates: [toEntry(key, next, expiresAt)] })
    const reply = await this.#onSession<[number, string | null, number]>(RELEASE_REFRESH_SCRIPT, key.session,
      lease, publish, names.channel, message, Date.now(), ...(next === undefined ? [] : this.#stateArgs(key, next, expiresAt)))
    this.#link.sawEpoch(reply[1])
    // No live state (taken by a logout, or ended): the journal must not bring it back at a later
    // lease. Unless the store is out of touch: Redis may have lost the state in a failover, and the
    // write-back after the reconnect restores it.
    if (reply[2] === 0 && !this.#link.stale()) this.journal.forget(key.session)
    else if (next !== undefined) this.journal.written(key.session, next.generation)
    return reply[0] === 1
  }

  async #end (key: RefreshKey, expiresAt: number): Promise<void> {
    const { names, publish } = this.#link
    const epoch = await this.#onSession<unknown>(END_REFRESH_SCRIPT, key.session,
      publish, names.channel, encodeChanges({ taken: [key.session] }), Math.ceil(expiresAt * 1000), key.session)
    this.#link.sawEpoch(epoch)
  }

  #queueEnd (key: RefreshKey, expiresAt: number): void {
    this.#queuedEnds.set(key.session, { key, expiresAt })
  }

  #unavailable (cause?: unknown): RedisStoreError {
    return new RedisStoreError(REDIS_STORE_ERRORS.unavailable, 'RedisRevocationStore: out of touch with Redis; no refresh lease granted now', { cause })
  }
}
