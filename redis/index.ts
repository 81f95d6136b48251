/**
 * `fastify-clearml-keycloak/redis`: state shared by several apiserver replicas through Redis, on the
 * host's ioredis client or Cluster (an optional peer dependency: only this entry point uses it).
 */
export {
  RedisRevocationStore, REDIS_STORE_DEFAULTS,
  type RedisRevocationStoreOptions, type RedisRevocationStoreEvents, type RedisStoreLog, type SyncReport, type FlushReport, type LossReason
} from './revocation-store.js'
export { RedisStoreError, REDIS_STORE_ERRORS, type RedisStoreErrorCode } from './errors.js'
export { DEFAULT_KEY_PREFIX, MINIMUM_REDIS, MINIMUM_REDIS_CLUSTER } from './layout.js'
// The store's interfaces and its log, so a host importing only this entry can name them.
export type { RevocationStore, StoreLog } from '../lib/session/revocations.js'
export type { SessionFollowStore, RefreshKey, RefreshState, RefreshLease, SessionRevision } from '../lib/session/follow-store.js'
export type { SessionIdentity } from '../lib/session/claims.js'
export type { Role } from '../lib/directory/user-directory.js'
