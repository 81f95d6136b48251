/**
 * `SessionFollowStore` in the memory of one apiserver process (SPEC section 12.6): the default with
 * `MemoryRevocationStore`, and what the plugin uses when a host's own store lacks the capability.
 * One process has no one to share a lease with, so its lease only orders this process's own
 * concurrent refreshes; the rules are still those of the interface, so the same contract suite
 * holds for it and for Redis.
 *
 * Bounded, and failing closed where it must forget: a refresh state it drops ends its session at the
 * next revalidation (the session's token says it follows Keycloak, and nothing can be presented
 * any more); a revision it drops revokes its session, since the token alone would say the old role.
 */
import { randomToken } from '../crypto.js'
import type { RefreshKey, RefreshLease, RefreshState, SessionFollowStore, SessionRevision } from './follow-store.js'

interface Entry {
  state?: RefreshState
  ended: boolean
  lease?: { id: string, untilMs: number }
  expiresAt: number
  keycloakSession?: string
}

export interface MemoryFollowOptions {
  /** Sessions whose refresh state is kept (default 100,000); past it the oldest is dropped. */
  maxStates?: number
  /** Revisions kept (default 100,000); past it the oldest is dropped and its session revoked. */
  maxRevisions?: number
  /** How a revision this store must drop is made safe: its session is revoked. */
  revoke: (sessionId: string, expiresAt: number, owner: string) => Promise<void>
}

const nowSec = (): number => Date.now() / 1000

export class MemoryFollowStore implements SessionFollowStore {
  readonly #entries = new Map<string, Entry>()
  readonly #byKeycloakSession = new Map<string, Set<string>>()
  readonly #revisions = new Map<string, { revision: SessionRevision, expiresAt: number }>()
  readonly #maxStates: number
  readonly #maxRevisions: number
  readonly #revoke: MemoryFollowOptions['revoke']

  constructor (options: MemoryFollowOptions) {
    this.#maxStates = options.maxStates ?? 100_000
    this.#maxRevisions = options.maxRevisions ?? 100_000
    this.#revoke = options.revoke
  }

  /** Sessions with a refresh state or an `ended` mark; for tests. */
  get size (): number {
    return this.#entries.size
  }

  async saveRefresh (key: RefreshKey, state: RefreshState, expiresAt: number): Promise<void> {
    const entry = this.#live(key.session)
    if (entry !== undefined && (entry.ended || entry.state!.generation >= state.generation)) return
    if (entry === undefined) this.#makeRoom()
    this.#entries.set(key.session, { state: { ...state }, ended: false, expiresAt, keycloakSession: key.keycloakSession, lease: entry?.lease })
    if (key.keycloakSession !== undefined) {
      let sessions = this.#byKeycloakSession.get(key.keycloakSession)
      if (sessions === undefined) this.#byKeycloakSession.set(key.keycloakSession, sessions = new Set())
      sessions.add(key.session)
    }
  }

  async leaseRefresh (key: RefreshKey, options: { dueBefore: number, leaseMs: number }): Promise<RefreshLease> {
    const entry = this.#live(key.session)
    if (entry === undefined) return { status: 'absent' }
    if (entry.ended) return { status: 'ended' }
    const state = entry.state!
    if (state.checkedAt >= options.dueBefore) return { status: 'fresh', checkedAt: state.checkedAt }
    const nowMs = Date.now()
    if (entry.lease !== undefined && entry.lease.untilMs > nowMs) return { status: 'busy', checkedAt: state.checkedAt }
    entry.lease = { id: randomToken(12), untilMs: nowMs + options.leaseMs }
    return { status: 'leased', state: { ...state }, lease: entry.lease.id }
  }

  async releaseRefresh (key: RefreshKey, lease: string, next?: RefreshState): Promise<boolean> {
    const entry = this.#live(key.session)
    // Taken by a logout, or expired, meanwhile: nothing to release, and nothing to bring back.
    if (entry === undefined) return false
    const held = entry.lease?.id === lease
    if (held) entry.lease = undefined
    if (next !== undefined && !entry.ended && next.generation > entry.state!.generation) entry.state = { ...next }
    return held
  }

  async endRefresh (key: RefreshKey, expiresAt: number): Promise<void> {
    const entry = this.#live(key.session)
    if (entry === undefined) this.#makeRoom()
    this.#unindex(key.session, entry)
    this.#entries.set(key.session, { ended: true, expiresAt })
  }

  async takeRefresh (key: RefreshKey): Promise<RefreshState | undefined> {
    const entry = this.#live(key.session)
    if (entry === undefined) return undefined
    this.#entries.delete(key.session)
    this.#unindex(key.session, entry)
    return entry.state
  }

  async takeKeycloakSessionRefreshes (keycloakSession: string): Promise<RefreshState[]> {
    const sessions = [...this.#byKeycloakSession.get(keycloakSession) ?? []]
    const states: RefreshState[] = []
    for (const session of sessions) {
      const state = await this.takeRefresh({ session, keycloakSession })
      if (state !== undefined) states.push(state)
    }
    return states
  }

  revision (sessionId: string): SessionRevision | undefined {
    const kept = this.#revisions.get(sessionId)
    if (kept === undefined) return undefined
    if (kept.expiresAt > nowSec()) return kept.revision
    this.#revisions.delete(sessionId)
    return undefined
  }

  async revise (sessionId: string, revision: SessionRevision, expiresAt: number): Promise<void> {
    const kept = this.revision(sessionId)
    if (kept !== undefined && kept.version >= revision.version) return
    if (kept === undefined && this.#revisions.size >= this.#maxRevisions) await this.#dropRevisions()
    // Re-inserted, so that insertion order stays the order of last change: the oldest goes first.
    this.#revisions.delete(sessionId)
    this.#revisions.set(sessionId, { revision, expiresAt })
  }

  /** The live entry of a session; an expired one is removed on the way. */
  #live (session: string): Entry | undefined {
    const entry = this.#entries.get(session)
    if (entry === undefined || entry.expiresAt > nowSec()) return entry
    this.#entries.delete(session)
    this.#unindex(session, entry)
    return undefined
  }

  #unindex (session: string, entry: Entry | undefined): void {
    if (entry?.keycloakSession === undefined) return
    const sessions = this.#byKeycloakSession.get(entry.keycloakSession)
    sessions?.delete(session)
    if (sessions?.size === 0) this.#byKeycloakSession.delete(entry.keycloakSession)
  }

  /** Room for one more entry: the expired go first, then the oldest (its session ends at its next check). */
  #makeRoom (): void {
    if (this.#entries.size < this.#maxStates) return
    const now = nowSec()
    for (const [session, entry] of this.#entries) {
      if (entry.expiresAt <= now) {
        this.#entries.delete(session)
        this.#unindex(session, entry)
      }
    }
    if (this.#entries.size < this.#maxStates) return
    const [oldest, entry] = this.#entries.entries().next().value!
    this.#entries.delete(oldest)
    this.#unindex(oldest, entry)
  }

  /** Room for one more revision: the expired go first, then the oldest, whose session is revoked. */
  async #dropRevisions (): Promise<void> {
    const now = nowSec()
    for (const [session, kept] of this.#revisions) if (kept.expiresAt <= now) this.#revisions.delete(session)
    if (this.#revisions.size < this.#maxRevisions) return
    const [oldest, kept] = this.#revisions.entries().next().value!
    // Without its revision the token would be accepted with the identity it was issued with: the
    // session is revoked before the revision goes.
    await this.#revoke(oldest, kept.expiresAt, kept.revision.identity.user)
    this.#revisions.delete(oldest)
  }
}
