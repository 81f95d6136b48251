/**
 * What a store keeps so that sessions follow Keycloak (SPEC section 12): each session's refresh
 * token, who may present it now, and the identity a revalidation gave the session. Every apiserver
 * replica shares it, so the rules that keep a rotating refresh token from ever being presented twice
 * live here, in the store's atomic operations, and not in any one process:
 *
 * - a refresh token is presented only by the holder of the session's lease (`leaseRefresh`), and a
 *   lease is granted only when the session is due (last checked before `dueBefore`) and no lease is
 *   live; the lease outlives the longest call to Keycloak, so two holders never overlap;
 * - the token Keycloak returns replaces the one presented in the same step that ends the lease
 *   (`releaseRefresh`), so the next holder always reads the newest token;
 * - a higher `generation` is never replaced by a lower one, whatever order writes arrive in.
 *
 * The store never sees a token in clear: `sealed` is encrypted by the plugin with a key derived from
 * the client and token secrets, which the store does not hold.
 */
import type { SessionIdentity } from './claims.js'

/** Which session a refresh state belongs to, and the Keycloak session (`sid`) it came from, if any. */
export interface RefreshKey {
  /** The ClearML session's `session_id`. */
  session: string
  /** Keycloak's session id (`sid`): a back-channel logout finds the session's refresh token by it. */
  keycloakSession?: string
}

/** The key of a session's refresh state; without a Keycloak session id, none is named (not even `undefined`). */
export function refreshKey (session: string, keycloakSession: string | undefined): RefreshKey {
  return keycloakSession === undefined ? { session } : { session, keycloakSession }
}

export interface RefreshState {
  /** The refresh token, sealed by the plugin. */
  sealed: string
  /** When Keycloak last confirmed the session (seconds since the epoch): at login, then at each refresh. */
  checkedAt: number
  /** 1 at login, one more at each refresh: a state never replaces one of a higher generation. */
  generation: number
}

export type RefreshLease =
  /** This caller presents `state.sealed`'s token now; no other caller can until it releases or `leaseMs` passes. */
  | { status: 'leased', state: RefreshState, lease: string }
  /** Checked at or after `dueBefore`: nothing to do. */
  | { status: 'fresh', checkedAt: number }
  /** Another caller holds the lease (its refresh is under way). */
  | { status: 'busy', checkedAt: number }
  /** Keycloak refused the session (`endRefresh`): it is over. */
  | { status: 'ended' }
  /** No refresh state: never kept, taken by a logout, or forgotten by the store. */
  | { status: 'absent' }

/** The identity a revalidation gave a session, replacing what its token says. */
export interface SessionRevision {
  /** The refresh generation that produced it: a lower version never replaces a higher one. */
  version: number
  identity: SessionIdentity
  /**
   * The plugin's MAC of the session id, the version and the identity, with a key the store does not
   * hold: kept and handed back as it is. The plugin ignores a revision whose MAC does not verify, so
   * whoever can write to the store cannot give a session a role.
   */
  mac?: string
}

/** The capabilities a `RevocationStore` adds to let sessions follow Keycloak (all or none). */
export interface SessionFollowStore {
  /** Keeps a session's refresh state until `expiresAt` (seconds), replacing a state of lower generation. */
  saveRefresh(key: RefreshKey, state: RefreshState, expiresAt: number): Promise<void>
  /** The lease to present the session's refresh token, when it was last checked before `dueBefore` (seconds). */
  leaseRefresh(key: RefreshKey, options: { dueBefore: number, leaseMs: number }): Promise<RefreshLease>
  /**
   * Ends a lease. With `next` (Keycloak answered with a token), the state becomes `next` when its
   * generation is higher, even if the lease was lost meanwhile: a rotated token is never dropped.
   * Without it (Keycloak did not answer), the state stays as it was. False when `lease` was no
   * longer this caller's.
   */
  releaseRefresh(key: RefreshKey, lease: string, next?: RefreshState): Promise<boolean>
  /** Keycloak refused the session: its state becomes `ended` until `expiresAt`, for every replica. */
  endRefresh(key: RefreshKey, expiresAt: number): Promise<void>
  /** Removes the session's refresh state and returns it (a logout revokes the token at Keycloak). */
  takeRefresh(key: RefreshKey): Promise<RefreshState | undefined>
  /** Removes and returns the refresh states of every session of one Keycloak session (back-channel logout). */
  takeKeycloakSessionRefreshes(keycloakSession: string): Promise<RefreshState[]>
  /** The session's newest revision, synchronously, from this replica's copy; `authenticate` asks it on every request. */
  revision(sessionId: string): SessionRevision | undefined
  /** Records a session's revision on every replica until `expiresAt` (seconds). */
  revise(sessionId: string, revision: SessionRevision, expiresAt: number): Promise<void>
}

export const SESSION_FOLLOW_METHODS = [
  'saveRefresh', 'leaseRefresh', 'releaseRefresh', 'endRefresh', 'takeRefresh', 'takeKeycloakSessionRefreshes', 'revision', 'revise'
] as const satisfies ReadonlyArray<keyof SessionFollowStore>

/** Whether a store has every capability of `SessionFollowStore`. */
export function followsSessions (store: object): store is SessionFollowStore {
  return SESSION_FOLLOW_METHODS.every((method) => typeof (store as Record<string, unknown>)[method] === 'function')
}
