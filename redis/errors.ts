/**
 * Errors of the Redis store, each with a stable `code`. Messages never carry a session id, a claimed
 * state or a stored value: they name the option or the condition an operator can act on.
 */
export const REDIS_STORE_ERRORS = {
  /** An option is missing or has the wrong type; thrown by the constructor. */
  options: 'ERR_CLEARML_KEYCLOAK_REDIS_OPTIONS',
  /** An id, key or expiry passed to a method is not usable; nothing was changed. */
  input: 'ERR_CLEARML_KEYCLOAK_REDIS_INPUT',
  /** `ready()` did not get its first full load within `readyTimeoutMs`. */
  notReady: 'ERR_CLEARML_KEYCLOAK_REDIS_NOT_READY',
  /** Redis did not answer within `writeTimeoutMs`. */
  timeout: 'ERR_CLEARML_KEYCLOAK_REDIS_TIMEOUT',
  /** A login could not be claimed: Redis has been unreachable for longer than `maxStaleMs`. */
  unavailable: 'ERR_CLEARML_KEYCLOAK_REDIS_UNAVAILABLE',
  /** The store was closed. */
  closed: 'ERR_CLEARML_KEYCLOAK_REDIS_CLOSED'
} as const

export type RedisStoreErrorCode = typeof REDIS_STORE_ERRORS[keyof typeof REDIS_STORE_ERRORS]

export class RedisStoreError extends Error {
  readonly code: RedisStoreErrorCode

  constructor (code: RedisStoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'RedisStoreError'
    this.code = code
  }
}
