/**
 * What the parts of the Redis store that keep sessions following Keycloak (`revisions.ts`,
 * `refresh-states.ts`) need from the store that owns the connection, the time-outs and the outage
 * policy (`revocation-store.ts`): one way to talk to Redis and one way to report a write it did
 * not take, so every part behaves the same through an outage.
 */
import type { Cluster, Redis } from 'ioredis'
import type { Changes, RedisNames } from './layout.js'

export interface StoreLink {
  readonly redis: Redis | Cluster
  readonly names: RedisNames
  /** `PUBLISH`, or `SPUBLISH` on a Cluster: the command scripts announce changes with. */
  readonly publish: 'PUBLISH' | 'SPUBLISH'
  /** Rejects with `ERR_CLEARML_KEYCLOAK_REDIS_TIMEOUT` when Redis has not answered within `writeTimeoutMs`. */
  bounded: <T>(command: Promise<T>) => Promise<T>
  /** Whether the host's client is connected. */
  connected: () => boolean
  /** Whether the store is out of touch with Redis (it may have missed changes). */
  stale: () => boolean
  /** The loss marker a write's reply carried: another one than the store's means Redis lost data. */
  sawEpoch: (epoch: unknown) => void
  /**
   * A write Redis did not take, now kept to be written when Redis answers: `changes` are announced
   * alone (Redis takes a `PUBLISH` while it refuses writes), a retry is scheduled, and the store
   * counts as out of touch until its queue is written. `err` is undefined when the write was not
   * even tried (the client is not connected).
   */
  writeFailed: (what: string, err: unknown, changes?: Changes) => void
}

export const nowSec = (): number => Date.now() / 1000
/** A replica's local copy (revocations, revisions) is swept of expired entries whenever it has doubled since the last sweep. */
export const MIN_SWEEP_SIZE = 1024
/** Clocks of replicas and Redis may disagree by this much before a missing key counts as lost. */
export const CLOCK_SLACK_SEC = 60
export const noop = (): void => {}
