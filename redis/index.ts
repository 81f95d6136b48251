/**
 * `fastify-clearml-keycloak/redis`: state shared by several apiserver replicas through Redis, on the
 * host's ioredis client (an optional peer dependency: only this entry point uses it).
 */
export {
  RedisRevocationStore, REDIS_STORE_DEFAULTS,
  type RedisRevocationStoreOptions, type RedisRevocationStoreEvents, type RedisStoreLog, type SyncReport, type FlushReport
} from './revocation-store.js'
export { RedisStoreError, REDIS_STORE_ERRORS, type RedisStoreErrorCode } from './errors.js'
export { DEFAULT_KEY_PREFIX, MINIMUM_REDIS } from './layout.js'
// The store's interface and its log, so a host importing only this entry can name them.
export type { RevocationStore, StoreLog } from '../lib/session/revocations.js'
