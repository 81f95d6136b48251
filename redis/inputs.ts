/**
 * Checks of what a host passes to the Redis store's methods: refused before anything is changed,
 * with `ERR_CLEARML_KEYCLOAK_REDIS_INPUT` and a message naming what is wrong, never the value.
 */
import type { RefreshKey, RefreshState, SessionRevision } from '../lib/session/follow-store.js'
import { RedisStoreError, REDIS_STORE_ERRORS } from './errors.js'
import { isFiniteNumber, isIdentity, isMac, isRevocationId, isVersion } from './layout.js'

function refuse (what: string): never {
  throw new RedisStoreError(REDIS_STORE_ERRORS.input, `RedisRevocationStore: ${what}`)
}

export function checkKey (key: unknown, what: string): asserts key is string {
  if (!isRevocationId(key)) refuse(`a ${what} must be a non-empty string`)
}

export function checkExpiry (expiresAt: unknown): asserts expiresAt is number {
  checkSeconds(expiresAt, 'an expiry')
}

export function checkRefreshKey (key: unknown): asserts key is RefreshKey {
  if (typeof key !== 'object' || key === null) refuse('a refresh key must be an object with a session')
  const { session, keycloakSession } = key as Partial<RefreshKey>
  checkKey(session, 'session id')
  if (keycloakSession !== undefined) checkKey(keycloakSession, 'Keycloak session id')
}

export function checkRefreshState (state: unknown): asserts state is RefreshState {
  const { sealed, checkedAt, generation } = (state ?? {}) as Partial<RefreshState>
  if (typeof sealed !== 'string' || sealed === '') refuse('a refresh state must have a sealed token (a non-empty string)')
  if (!isFiniteNumber(checkedAt)) refuse('a refresh state\'s checkedAt must be a finite number of seconds')
  if (!isVersion(generation)) refuse('a refresh state\'s generation must be a positive whole number')
}

export function checkRevision (revision: unknown): asserts revision is SessionRevision {
  const { version, identity, mac } = (revision ?? {}) as Partial<SessionRevision>
  if (!isVersion(version)) refuse('a revision\'s version must be a positive whole number')
  if (!isIdentity(identity)) refuse('a revision\'s identity must have company, user, user_name, role and company_name as strings')
  if (mac !== undefined && !isMac(mac)) refuse('a revision\'s mac must be base64url text')
}

export function checkDuration (value: unknown, what: string): asserts value is number {
  if (!isFiniteNumber(value) || value <= 0) refuse(`${what} must be a positive number of milliseconds`)
}

export function checkSeconds (value: unknown, what: string): asserts value is number {
  if (!isFiniteNumber(value)) refuse(`${what} must be a finite number of seconds since the epoch`)
}
