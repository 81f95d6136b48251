/**
 * Events for operators on `node:diagnostics_channel` (SPEC section 11): each login, each call to
 * Keycloak, each key-set fetch and each refused `authenticate`. A host turns them into metrics of its
 * choice (the example apiserver: Prometheus with prom-client) without this plugin depending on a
 * metrics library. Every event is published only when the channel has a subscriber, so the hot path
 * pays nothing for metrics nobody reads. No event carries a token, an authorization code, a secret
 * or anything about the user: only outcomes, codes, endpoints, statuses and durations.
 *
 * Channels are process-wide: a process with several plugin instances sees all their events on the
 * same channels. A subscriber must not throw (Node reports its error as an uncaught exception).
 */
import { channel } from 'node:diagnostics_channel'
import { performance } from 'node:perf_hooks'
import { SSO_ERROR_STATUS, SsoError, type SsoErrorCode } from './errors.js'

export const diagnosticsChannels = {
  login: 'fastify-clearml-keycloak:login',
  idpCall: 'fastify-clearml-keycloak:idp-call',
  jwksFetch: 'fastify-clearml-keycloak:jwks-fetch',
  authRefused: 'fastify-clearml-keycloak:auth-refused',
  revalidate: 'fastify-clearml-keycloak:revalidate'
} as const

/**
 * One login (a completed callback, or `fastify.keycloak.login`). `refused`: the login's rules or
 * checks said no (4xx codes); `failed`: Keycloak, the directory or the plugin failed (5xx codes), the
 * kind an operator is paged for.
 */
export interface LoginEvent {
  outcome: 'ok' | 'refused' | 'failed'
  /** The `SsoError` code, when not `ok`. */
  code?: SsoErrorCode
  /** Whether a ClearML user was created, when `ok`. */
  created?: boolean
  durationMs: number
}

export type IdpEndpoint = 'discovery' | 'token' | 'userinfo' | 'jwks' | 'revocation'

/** One HTTP call to Keycloak. `status` is 0 when no usable answer came (unreachable, timed out, oversized). */
export interface IdpCallEvent {
  endpoint: IdpEndpoint
  status: number
  durationMs: number
}

/**
 * Why the key set is fetched: `initial` (first use), `max_age` (the cached set is too old to trust
 * removed keys are gone), `unknown_kid` (a token names a key the set lacks: a Keycloak key rotation,
 * or a forged token).
 */
export type JwksFetchReason = 'initial' | 'max_age' | 'unknown_kid'

export interface JwksFetchEvent {
  reason: JwksFetchReason
}

/** Which kind of credential a request presented (SPEC section 10): a ClearML session, or a Keycloak access token. */
export type CredentialKind = 'session' | 'keycloak'

/** A request `authenticate` refused; `credential` is the kind of credential presented, when there was one. */
export interface AuthRefusedEvent {
  code: string
  credential?: CredentialKind
}

/**
 * One revalidation of a session at Keycloak (SPEC section 12.7): `ok` (Keycloak confirmed it;
 * `changed` names what followed: `role`, `groups`, profile fields), `ended` (Keycloak refused it, or
 * its user is gone; `reason` says which), `unavailable` (no usable answer; the session continues).
 * Never a token.
 */
export interface RevalidateEvent {
  outcome: 'ok' | 'ended' | 'unavailable'
  reason?: string
  changed?: string[]
  durationMs: number
}

const loginChannel = channel(diagnosticsChannels.login)
const idpCallChannel = channel(diagnosticsChannels.idpCall)
const jwksFetchChannel = channel(diagnosticsChannels.jwksFetch)
const authRefusedChannel = channel(diagnosticsChannels.authRefused)
const revalidateChannel = channel(diagnosticsChannels.revalidate)

/** The login of `run`, timed and published; `createdOf` reads from its result whether a user was created. */
export async function observeLogin<T> (run: () => Promise<T>, createdOf: (result: T) => boolean): Promise<T> {
  if (!loginChannel.hasSubscribers) return await run()
  const started = performance.now()
  let result: T
  try {
    result = await run()
  } catch (err) {
    const code: SsoErrorCode = err instanceof SsoError ? err.code : 'internal_error'
    const event: LoginEvent = { outcome: SSO_ERROR_STATUS[code] >= 500 ? 'failed' : 'refused', code, durationMs: performance.now() - started }
    loginChannel.publish(event)
    throw err
  }
  const event: LoginEvent = { outcome: 'ok', created: createdOf(result), durationMs: performance.now() - started }
  loginChannel.publish(event)
  return result
}

/**
 * Which endpoint a call is, from the name the caller gives it for messages (`CallOptions.what`).
 * Calls under any other name (the doctor's probes) are not published.
 */
const ENDPOINT_OF_CALL: Readonly<Record<string, IdpEndpoint>> = {
  discovery: 'discovery',
  'token endpoint': 'token',
  'userinfo endpoint': 'userinfo',
  'key set (jwks)': 'jwks',
  'revocation endpoint': 'revocation'
}

/** The call of `run` to Keycloak, timed and published with the HTTP status it answered. */
export async function observeIdpCall<T extends { status: number }> (what: string, run: () => Promise<T>): Promise<T> {
  const endpoint = ENDPOINT_OF_CALL[what]
  if (endpoint === undefined || !idpCallChannel.hasSubscribers) return await run()
  const started = performance.now()
  let status = 0
  try {
    const answer = await run()
    status = answer.status
    return answer
  } finally {
    const event: IdpCallEvent = { endpoint, status, durationMs: performance.now() - started }
    idpCallChannel.publish(event)
  }
}

export function publishJwksFetch (reason: JwksFetchReason): void {
  if (!jwksFetchChannel.hasSubscribers) return
  const event: JwksFetchEvent = { reason }
  jwksFetchChannel.publish(event)
}

export function publishAuthRefused (code: string, credential?: CredentialKind): void {
  if (!authRefusedChannel.hasSubscribers) return
  const event: AuthRefusedEvent = credential === undefined ? { code } : { code, credential }
  authRefusedChannel.publish(event)
}

export function publishRevalidate (event: RevalidateEvent): void {
  if (revalidateChannel.hasSubscribers) revalidateChannel.publish(event)
}

/** Whether anyone listens for revalidations: the clock is read only then. */
export function revalidateObserved (): boolean {
  return revalidateChannel.hasSubscribers
}
