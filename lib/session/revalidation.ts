/**
 * Sessions that follow Keycloak (SPEC section 12): when a session in use was last confirmed by
 * Keycloak more than `revalidate_sec` ago, its refresh token is presented at the token endpoint, and
 * the session continues, changes or ends as Keycloak answers.
 *
 * Off the hot path. `admit` runs on every request of a session that follows Keycloak and is
 * synchronous: a map look-up and a comparison. A session checked within the period passes; a due
 * one passes too while its last check is under twice the period old, and its revalidation runs in
 * the background (users in activity never wait); only a session idle for longer waits (`settle`),
 * so a user disabled while away is refused on their first request.
 *
 * One refresh per session per period, everywhere, and no refresh token presented twice: every
 * presentation is made under the store's lease for that session (`SessionFollowStore`, which every
 * replica shares), the rotated token replaces the presented one in the step that ends the lease, and
 * concurrent requests of one process share one revalidation. The lease lasts longer than the
 * longest call to Keycloak (`leaseMs`), which is aborted at `http_timeout_ms`, so no two holders
 * overlap. The one case where a token is presented again is after a call whose answer never came
 * (Keycloak or the network failed mid-call): its fate is unknown, and presenting it again once
 * Keycloak answers is the only way forward (docs/decisions.md).
 *
 * A Keycloak that does not answer logs no one out: the session continues on its last known state,
 * and once a call failed no request waits on Keycloak and no new call starts until a single probe,
 * after a back-off, finds it answering again. Logged once per outage.
 */
import type { FastifyBaseLogger } from 'fastify'
import { performance } from 'node:perf_hooks'
import { publishRevalidate, revalidateObserved, type RevalidateEvent } from '../diagnostics.js'
import type { SessionIdentity } from './claims.js'
import { refreshKey, type RefreshKey, type RefreshState, type SessionFollowStore } from './follow-store.js'
import type { RevisionSigner, ServerSealer } from './sealed.js'
import type { VerifiedSession } from './sessions.js'

/**
 * What a refresh at Keycloak answered, sorted by what it means for the session
 * (`lib/keycloak/refresh.ts` makes it; it is defined here, where it is acted on).
 */
export type RefreshAnswer =
  /** Keycloak confirmed the session: new tokens (a refresh token when it rotates or re-issues one). */
  | { kind: 'ok', accessToken: string, idToken?: string, refreshToken?: string }
  /** `invalid_grant`: Keycloak refuses the session; `reason` is its `error_description`, for the log. */
  | { kind: 'refused', reason: string }
  /** Keycloak refused the client, or answered something a token endpoint does not: a setup problem. */
  | { kind: 'misconfigured', reason: string }
  /**
   * No usable answer (unreachable, timed out, 5xx, oversized). `answered` is false when the request
   * may have reached Keycloak without its answer reaching us: the token's fate is then unknown.
   */
  | { kind: 'unavailable', reason: string, answered: boolean }

/** What a revalidation made of Keycloak's new tokens (`KeycloakSso` verifies them and runs the login's rules). */
export type Confirmation =
  /** The tokens verified and the rules ran: the session's identity now, and what changed. */
  | { kind: 'confirmed', identity: SessionIdentity, changed: string[] }
  /** The session cannot continue (its ClearML user is gone, another Keycloak user answered). */
  | { kind: 'ended', reason: string }
  /** The tokens or the directory failed: the session continues and is checked again next period. */
  | { kind: 'unconfirmed', reason: string }

export interface RevalidationOptions {
  periodSec: number
  store: SessionFollowStore
  /** Seals refresh tokens for the store: the store never holds one in clear. */
  sealer: ServerSealer
  /** Signs revisions for the store: the store cannot make one up. */
  signer: RevisionSigner
  /** The refresh grant at the token endpoint (`lib/keycloak/refresh.ts`). */
  refresh: (refreshToken: string) => Promise<RefreshAnswer>
  /** Verifies a refresh's tokens for the session's Keycloak user and runs steps 4, 7, 8 and 9. */
  confirm: (session: VerifiedSession, subject: string, tokens: Extract<RefreshAnswer, { kind: 'ok' }>) => Promise<Confirmation>
  /** Ends a session Keycloak refused: revoked everywhere, as by a logout; `first`: this replica learnt it from Keycloak (it logs why). */
  end: (session: VerifiedSession, reason: string, first: boolean) => Promise<void>
  log: FastifyBaseLogger
  /** `http_timeout_ms`: the longest a call to Keycloak takes before it is aborted. */
  timeoutMs: number
  /** Sessions whose last check this process remembers (default 100,000). */
  memoryMax?: number
}

/** What a sealed refresh state holds: the token, and whose it is. */
interface SealedRefresh {
  rt: string
  /** The ClearML session it belongs to: a state moved to another session does not open. */
  sid: string
  /** The session's Keycloak user: a refresh answered for anyone else ends the session. */
  sub: string
}

/** Refreshes this process runs in the background at once; more wait for a later request. */
const MAX_BACKGROUND = 8
/** A call to Keycloak still unanswered after this long: no request waits on another call meanwhile. */
const SLOW_CALL_MS = 1000
/** How long after a failed call the first probe is made, and the longest back-off between probes. */
const FIRST_BACKOFF_MS = 2000
const MAX_BACKOFF_MS = 60_000
/** The shortest lease on a session's refresh token. */
const MIN_LEASE_MS = 60_000
/** While another replica refreshes a session this one must wait for, how often it asks the store. */
const BUSY_POLL_MS = 50

type Outcome = RevalidateEvent['outcome']
/** Publishes one revalidation's event (its duration added) and answers its outcome. */
type Report = (event: Omit<RevalidateEvent, 'durationMs'>) => Outcome

const nowSec = (): number => Date.now() / 1000

function sameIdentity (a: SessionIdentity, b: SessionIdentity): boolean {
  return a.company === b.company && a.user === b.user && a.user_name === b.user_name && a.role === b.role && a.company_name === b.company_name
}
const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

export const REFRESH_PURPOSE = 'refresh-token'

export class SessionRevalidation {
  readonly #options: RevalidationOptions
  readonly #periodSec: number
  /**
   * The lease outlives the call (aborted at `timeoutMs`), the key-set reload it may need and the
   * store writes, and a Redis failover (Sentinel's and Cluster's default detection takes 15 to 30 s)
   * during which the holder's rotated token waits in its journal to be written.
   */
  readonly #leaseMs: number
  /** Last check this process knows of, per session: young and old generations, so that memory stays bounded. */
  #checked = new Map<string, number>()
  #checkedBefore = new Map<string, number>()
  readonly #memoryMax: number
  /** Revalidations under way in this process, so that concurrent requests of one session share one. */
  readonly #pending = new Map<string, Promise<Outcome>>()
  #background = 0
  /** Calls to Keycloak under way, each with when it started. */
  readonly #calls = new Set<{ startedAt: number }>()
  /** Set while Keycloak is known not to answer: no new call before `retryAt`, and then one probe. */
  #outage: { since: number, retryAt: number, backoffMs: number, probing: boolean } | undefined
  #failureWarnedAt = Number.NEGATIVE_INFINITY

  constructor (options: RevalidationOptions) {
    this.#options = options
    this.#periodSec = options.periodSec
    this.#leaseMs = Math.max(MIN_LEASE_MS, 2 * options.timeoutMs + 5000)
    this.#memoryMax = options.memoryMax ?? 100_000
  }

  /** Keeps a new session's refresh token (at its login): its first check is the login itself, unless `checkedAt` says when. */
  async keep (key: RefreshKey, subject: string, refreshToken: string, expiresAt: number, checkedAt = nowSec()): Promise<void> {
    const sealed = this.#seal({ rt: refreshToken, sid: key.session, sub: subject }, expiresAt)
    await this.#options.store.saveRefresh(key, { sealed, checkedAt, generation: 1 }, expiresAt)
    this.#remember(key.session, checkedAt)
  }

  /**
   * Synchronous, on every request of a session that follows Keycloak: true when the request may be
   * answered now (a due session's revalidation may have started in the background), false when it
   * must wait for `settle` (the session was idle for more than twice the period).
   */
  admit (session: VerifiedSession): boolean {
    const { session_id: sessionId, iat } = session.claims
    // A session this process never saw was checked at its login, or since, elsewhere: asking the
    // store (when it is due) tells.
    const age = nowSec() - (this.#checked.get(sessionId) ?? this.#checkedBefore.get(sessionId) ?? iat)
    if (age < this.#periodSec) return true
    if (age < 2 * this.#periodSec || !this.#answering()) {
      if (this.#background < MAX_BACKGROUND && !this.#pending.has(session.claims.session_id) && this.#startsCall()) this.#inBackground(session)
      return true
    }
    return false
  }

  /** The revalidation an idle session waits for; afterwards the caller looks at the session again (revoked, revised). */
  async settle (session: VerifiedSession): Promise<void> {
    // Keycloak stopped answering while this request was on its way: it does not wait.
    if (!this.#answering()) return
    await this.#revalidate(session, true)
  }

  /** Removes a session's refresh state (logout) and returns its token, to be revoked at Keycloak. */
  async forget (key: RefreshKey): Promise<string | undefined> {
    this.#checked.delete(key.session)
    this.#checkedBefore.delete(key.session)
    const state = await this.#options.store.takeRefresh(key)
    return state === undefined ? undefined : this.#open(state, key.session)?.rt
  }

  /** Removes the refresh states of every session of one Keycloak session (back-channel logout); their tokens. */
  async forgetKeycloakSession (keycloakSession: string): Promise<string[]> {
    const states = await this.#options.store.takeKeycloakSessionRefreshes(keycloakSession)
    const tokens: string[] = []
    for (const state of states) {
      // The state's own session id is inside the seal; a state that does not open is dropped.
      const opened = this.#open(state, undefined)
      if (opened !== undefined) tokens.push(opened.rt)
    }
    return tokens
  }

  /** Whether Keycloak is taken to answer now: no outage, and no call hanging for long. */
  #answering (): boolean {
    if (this.#outage !== undefined) return false
    const now = performance.now()
    for (const call of this.#calls) if (now - call.startedAt > SLOW_CALL_MS) return false
    return true
  }

  /**
   * Whether a new call to Keycloak may start: always when it answers; during an outage, one probe
   * after the back-off, which the caller then makes (it is claimed here).
   */
  #startsCall (): boolean {
    const outage = this.#outage
    if (outage === undefined) return this.#answering()
    if (outage.probing || performance.now() < outage.retryAt) return false
    outage.probing = true
    return true
  }

  #inBackground (session: VerifiedSession): void {
    const probe = this.#outage
    this.#background++
    this.#revalidate(session, false).finally(() => {
      this.#background--
      // The probe's outcome reached `#keycloakAnswers` or `#keycloakFails`; if it ended before a
      // call (the store said fresh), the next request may probe.
      if (probe !== undefined) probe.probing = false
    }).catch(() => {})
  }

  /** One revalidation per session at a time in this process; requests that arrive meanwhile share it. */
  async #revalidate (session: VerifiedSession, waiting: boolean): Promise<Outcome> {
    const sessionId = session.claims.session_id
    let pending = this.#pending.get(sessionId)
    if (pending === undefined) {
      pending = this.#run(session, waiting).finally(() => { this.#pending.delete(sessionId) })
      this.#pending.set(sessionId, pending)
    }
    return await pending
  }

  async #run (session: VerifiedSession, waiting: boolean): Promise<Outcome> {
    const started = revalidateObserved() ? performance.now() : 0
    const report: Report = (event) => {
      if (started !== 0) publishRevalidate({ ...event, durationMs: performance.now() - started })
      return event.outcome
    }
    try {
      return await this.#attempt(session, waiting, report)
    } catch (err) {
      // The store failing mid-way (its own outage, reported by it), or a bug: the session continues
      // as it was, and the next request tries again. Said once a minute at most.
      if (performance.now() - this.#failureWarnedAt > 60_000) {
        this.#failureWarnedAt = performance.now()
        this.#options.log.warn({ code: 'revalidation_failed', reason: (err as Error).message }, 'Keycloak session revalidation failed; the session continues as it was')
      }
      return report({ outcome: 'unavailable', reason: 'the revalidation failed' })
    }
  }

  async #attempt (session: VerifiedSession, waiting: boolean, report: Report): Promise<Outcome> {
    const { session_id: sessionId, sso } = session.claims
    const key = refreshKey(sessionId, sso?.sid)
    const deadline = performance.now() + this.#options.timeoutMs
    for (;;) {
      const lease = await this.#options.store.leaseRefresh(key, { dueBefore: nowSec() - this.#periodSec, leaseMs: this.#leaseMs })
      switch (lease.status) {
        case 'fresh':
          this.#remember(sessionId, lease.checkedAt)
          return 'ok'
        case 'busy':
          // Another replica is refreshing it. A request that must wait waits for its outcome.
          if (!waiting || performance.now() > deadline) return 'ok'
          await sleep(BUSY_POLL_MS)
          continue
        case 'ended':
          // Another replica heard Keycloak refuse it, and said so; its revocation may not be here yet.
          await this.#end(session, 'ended by another replica', false)
          return 'ended'
        case 'absent':
          // Its token says it follows Keycloak, yet nothing can be presented any more (a memory
          // store restarted or bounded, a lost write): it cannot be confirmed, so it ends.
          await this.#end(session, 'its refresh token is no longer kept (the store restarted or dropped it): log in again', true)
          return report({ outcome: 'ended', reason: 'no refresh token' })
        default:
          return await this.#present(session, key, lease.state, lease.lease, report)
      }
    }
  }

  /** Presents the leased token, stores what Keycloak returned in the step that ends the lease, then acts on the answer. */
  async #present (session: VerifiedSession, key: RefreshKey, state: RefreshState, lease: string, report: Report): Promise<Outcome> {
    const store = this.#options.store
    const opened = this.#open(state, key.session)
    if (opened === undefined) {
      await store.endRefresh(key, session.claims.exp)
      await this.#end(session, 'its stored refresh token does not open (the token or client secret changed): log in again', true)
      return report({ outcome: 'ended', reason: 'unreadable refresh token' })
    }
    const call = { startedAt: performance.now() }
    this.#calls.add(call)
    let answer: RefreshAnswer
    try {
      answer = await this.#options.refresh(opened.rt)
    } finally {
      this.#calls.delete(call)
    }

    if (answer.kind === 'refused') {
      await store.endRefresh(key, session.claims.exp)
      this.#keycloakAnswers()
      await this.#end(session, `Keycloak refused its refresh token: ${answer.reason}`, true)
      return report({ outcome: 'ended', reason: answer.reason })
    }
    if (answer.kind !== 'ok') {
      await store.releaseRefresh(key, lease)
      this.#keycloakFails(answer.reason, answer.kind === 'misconfigured')
      return report({ outcome: 'unavailable', reason: answer.reason })
    }

    const checkedAt = nowSec()
    const rotated = answer.refreshToken ?? opened.rt
    const next: RefreshState = { sealed: this.#seal({ ...opened, rt: rotated }, session.claims.exp), checkedAt, generation: state.generation + 1 }
    await store.releaseRefresh(key, lease, next)
    this.#remember(key.session, checkedAt)
    this.#keycloakAnswers()

    const confirmation = await this.#options.confirm(session, opened.sub, answer)
    if (confirmation.kind === 'ended') {
      await store.endRefresh(key, session.claims.exp)
      await this.#end(session, confirmation.reason, true)
      return report({ outcome: 'ended', reason: confirmation.reason })
    }
    if (confirmation.kind === 'unconfirmed') {
      this.#options.log.warn({ code: 'revalidation_unconfirmed', reason: confirmation.reason }, 'Keycloak session revalidation: the refreshed tokens could not be applied; the session continues as it was')
      return report({ outcome: 'unavailable', reason: confirmation.reason })
    }
    if (!sameIdentity(session.identity, confirmation.identity)) {
      // Every replica answers with the new identity from now on; the token alone would say the old one.
      const revision = { version: next.generation, identity: confirmation.identity }
      await store.revise(key.session, { ...revision, mac: this.#options.signer.sign(key.session, revision) }, session.claims.exp)
    }
    if (confirmation.changed.length > 0) {
      this.#options.log.info({ user: confirmation.identity.user, changed: confirmation.changed }, 'Keycloak session revalidated: the ClearML user follows Keycloak')
    }
    return report({ outcome: 'ok', changed: confirmation.changed })
  }

  async #end (session: VerifiedSession, reason: string, first: boolean): Promise<void> {
    this.#checked.delete(session.claims.session_id)
    this.#checkedBefore.delete(session.claims.session_id)
    await this.#options.end(session, reason, first)
  }

  #keycloakAnswers (): void {
    const outage = this.#outage
    if (outage === undefined) return
    this.#outage = undefined
    this.#options.log.info({ outageMs: Math.round(performance.now() - outage.since) }, 'Keycloak answers refreshes again: sessions are revalidated again')
  }

  #keycloakFails (reason: string, misconfigured: boolean): void {
    const now = performance.now()
    if (this.#outage !== undefined) {
      this.#outage.backoffMs = Math.min(MAX_BACKOFF_MS, this.#outage.backoffMs * 2)
      this.#outage.retryAt = now + this.#outage.backoffMs
      return
    }
    this.#outage = { since: now, retryAt: now + FIRST_BACKOFF_MS, backoffMs: FIRST_BACKOFF_MS, probing: false }
    this.#options.log.warn({ code: misconfigured ? 'revalidation_refused_client' : 'idp_unavailable', reason },
      misconfigured
        ? 'Keycloak refused this client\'s refresh (check the client\'s credentials and "Use refresh tokens"): sessions continue unrevalidated until it accepts'
        : 'Keycloak does not answer refreshes: sessions continue on their last known state, and are revalidated when it answers again')
  }

  #remember (sessionId: string, checkedAt: number): void {
    if (this.#checked.size >= this.#memoryMax / 2) {
      this.#checkedBefore = this.#checked
      this.#checked = new Map()
    }
    this.#checked.set(sessionId, checkedAt)
  }

  #seal (content: SealedRefresh, expiresAt: number): string {
    return this.#options.sealer.seal({ ...content }, Math.max(1, Math.ceil(expiresAt - nowSec())))
  }

  /** The sealed content, when it opens and belongs to `sessionId` (any session, when undefined). */
  #open (state: RefreshState, sessionId: string | undefined): SealedRefresh | undefined {
    const payload = this.#options.sealer.open(state.sealed)
    if (payload === undefined || typeof payload.rt !== 'string' || typeof payload.sub !== 'string' || typeof payload.sid !== 'string') return undefined
    if (sessionId !== undefined && payload.sid !== sessionId) return undefined
    return { rt: payload.rt, sid: payload.sid, sub: payload.sub }
  }
}
