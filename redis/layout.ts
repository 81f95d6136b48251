/**
 * What the Redis store keeps in Redis, under which names, and the message replicas exchange.
 * Everything lives under one prefix (default `clearml-kc:`), so the store can share ClearML's own
 * Redis database without touching ClearML's keys, and every name carries the hash tag `{store}`.
 *
 * | name | type | holds | goes away |
 * |---|---|---|---|
 * | `<prefix>{store}:epoch` | string | a random id for what Redis holds now, set by the first replica that finds it missing (the loss marker) | at the latest expiry of any revocation, revision or refresh state written |
 * | `<prefix>{store}:revoked` | sorted set | member: revoked id (a ClearML `session_id`, or `keycloak-sid:<sid>`), score: when that session expires (seconds) | members at the next write after their score; the key at its highest score |
 * | `<prefix>{store}:revisions` | hash | field: session id, value: `<version>\|<expiresAt>\|<mac>\|<identity JSON>`, the identity a revalidation gave the session, with the plugin's MAC of it | fields at the next write after their expiry; the key at the latest |
 * | `<prefix>{store}:revision-expiry` | sorted set | member: session id, score: when its revision expires (seconds); finds expired fields without a scan | as `revisions` |
 * | `<prefix>{store}:refresh:<session>` | hash | a session's refresh state: `s` sealed token, `c` checkedAt, `g` generation, `x` the session's expiry (ms), `k` Keycloak `sid`; `l`/`u` the lease and until when (ms, Redis's clock); `e` set once ended (then nothing else) | at the session's expiry |
 * | `<prefix>{store}:kc-session:<sid>` | set | the session ids of one Keycloak session (back-channel logout finds their refresh states) | when taken, or at the latest expiry of its sessions |
 * | `<prefix>{store}:claim:<state>` | string | `1`: a login transaction was used | at the transaction's expiry |
 * | `<prefix>{store}:value:<key>` | string | a sealed value (an ID token too large for a cookie) | when read, or at its expiry |
 * | `<prefix>{store}:changes` | channel (`PUBLISH`; `SPUBLISH` on a Cluster) | every change other replicas' copies need, as JSON (`encodeChanges`): `r` revocations, `v` revisions, `f` refresh states written, `t` refresh states taken or ended, `u` when Redis refused the write and it was announced alone | |
 *
 * **One slot for everything.** Redis Cluster hashes only what is between the first `{` and `}` of a
 * name, so every key and the channel of one store live in one slot, on one shard: every script may
 * touch any of them (never a cross-slot operation), the channel is a sharded channel of that slot,
 * and the subscriber, connected to that slot's primary, loses its connection (or is unsubscribed
 * by Redis) whenever that primary fails or hands the slot over, which is exactly when Redis can lose
 * the store's writes. The store's data is small and its traffic light (a logout, a login, one
 * refresh per active session per period), so one shard carries it; it gains nothing from spreading,
 * and spread keys would need a subscriber and a loss marker per shard.
 *
 * **Why one sorted set for revocations** rather than a key each: every replica loads all of them at
 * start and after each reconnect. From one key that is a `ZSCAN` (100,000 entries in 100 round trips
 * of 1,000, without blocking Redis); keys of their own would need a `SCAN` of the whole database (of
 * every node of a Cluster), ClearML's keys included. Expiry needs no timer: every write removes what
 * has expired and sets the key's expiry to its highest score, so nothing goes before its session
 * ends and a set nobody writes to any more disappears when its last session would have. Revisions
 * are loaded in full the same way, from one hash and its expiry index. Refresh states are read one
 * session at a time and never loaded in full, so each has a key of its own that expires with it.
 *
 * **The loss marker.** Redis can lose what it acknowledged: `FLUSHALL`, a deleted key, a restart
 * without persistence, a failover to a replica that had not received the last writes. Each replica
 * remembers the marker it found at its last full load and checks it (with the existence of the
 * keys it holds entries for) every `checkIntervalMs` and in the reply of every write; a marker
 * missing or changed means Redis lost something, and the replica loads again and writes back what
 * Redis lacks, as after a reconnect.
 */

import type { SessionIdentity } from '../lib/session/claims.js'

/**
 * Only commands Redis 5.0 has (the Redis of ClearML server's docker-compose until 2024), so the store
 * can share an existing ClearML Redis: no `ZADD GT`, `SET ... PXAT` or `GETDEL` (6.2); small Lua
 * scripts do the same atomically. On a Cluster the channel is a sharded one (`SSUBSCRIBE`, 7.0).
 */
export const MINIMUM_REDIS = '5.0'
export const MINIMUM_REDIS_CLUSTER = '7.0'

export const DEFAULT_KEY_PREFIX = 'clearml-kc:'
/** What Redis Cluster hashes in every name of the store: one slot for all of them. */
export const HASH_TAG = 'store'

/** Members per `ZSCAN`/`HSCAN` page at a full load, and entries per write when many are written back. */
export const LOAD_PAGE = 1000
export const WRITE_BATCH = 1000

export interface RedisNames {
  /** The loss marker. */
  epoch: string
  /** The sorted set of revocations. */
  revoked: string
  /** The hash of revisions and the sorted set of their expiries. */
  revisions: string
  revisionExpiry: string
  /** The channel on which every change is announced. */
  channel: string
  claim: (key: string) => string
  value: (key: string) => string
  refresh: (session: string) => string
  /** `refresh(session)` without the session: scripts that find sessions in Redis build their names from it. */
  refreshBase: string
  keycloakSession: (sid: string) => string
  keycloakSessionBase: string
}

/** A prefix with a brace would move the hash tag, and the keys of one store into several slots. */
export function isUsablePrefix (prefix: unknown): prefix is string {
  return typeof prefix === 'string' && !/[{}]/.test(prefix)
}

export function redisNames (prefix: string): RedisNames {
  const base = `${prefix}{${HASH_TAG}}:`
  return {
    epoch: `${base}epoch`,
    revoked: `${base}revoked`,
    revisions: `${base}revisions`,
    revisionExpiry: `${base}revision-expiry`,
    channel: `${base}changes`,
    claim: (key) => `${base}claim:${key}`,
    value: (key) => `${base}value:${key}`,
    refresh: (session) => `${base}refresh:${session}`,
    refreshBase: `${base}refresh:`,
    keycloakSession: (sid) => `${base}kc-session:${sid}`,
    keycloakSessionBase: `${base}kc-session:`
  }
}

/** CRC16/XMODEM, as Redis Cluster hashes a key. */
function crc16 (bytes: Uint8Array): number {
  let crc = 0
  for (const byte of bytes) {
    crc ^= byte << 8
    for (let bit = 0; bit < 8; bit++) crc = (crc & 0x8000) !== 0 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
  }
  return crc
}

/** The Cluster slot of every name of the store: the one its subscriber follows. */
export const STORE_SLOT = crc16(new TextEncoder().encode(HASH_TAG)) % 16384

export type Revocation = [id: string, expiresAt: number]

/** A session's revision as the store keeps and announces it. */
export type RevisionEntry = [session: string, version: number, identity: SessionIdentity, expiresAt: number, mac?: string]

/** A refresh state as announced, so every replica's journal holds the newest one of each session. */
export type RefreshEntry = [session: string, keycloakSession: string | null, sealed: string, checkedAt: number, generation: number, expiresAt: number]

/** What one message on the channel carries; every part is optional. */
export interface Changes {
  /** `r`: revocations. */
  revocations?: Revocation[]
  /** `v`: revisions. */
  revisions?: RevisionEntry[]
  /** `f`: refresh states written (for the journals). */
  refreshStates?: RefreshEntry[]
  /** `t`: sessions whose refresh state was taken or ended (their journal entries go). */
  taken?: string[]
  /** `u`: announced alone because Redis refused the write (its writer still has it queued). */
  unwritten?: boolean
}

export function encodeChanges (changes: Changes): string {
  const message: Record<string, unknown> = {}
  if (changes.revocations !== undefined) message.r = changes.revocations
  if (changes.revisions !== undefined) message.v = changes.revisions
  if (changes.refreshStates !== undefined) message.f = changes.refreshStates
  if (changes.taken !== undefined) message.t = changes.taken
  if (changes.unwritten === true) message.u = 1
  return JSON.stringify(message)
}

export const isFiniteNumber = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value)
const isString = (value: unknown): value is string => typeof value === 'string'

export function isIdentity (value: unknown): value is SessionIdentity {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const identity = value as Record<string, unknown>
  return isString(identity.company) && isString(identity.user) && isString(identity.user_name) && isString(identity.role) && isString(identity.company_name)
}

function isRevocation (entry: unknown): boolean {
  return Array.isArray(entry) && entry.length === 2 && isRevocationId(entry[0]) && isFiniteNumber(entry[1])
}

function isRevisionEntry (entry: unknown): boolean {
  return Array.isArray(entry) && (entry.length === 4 || (entry.length === 5 && isMac(entry[4]))) &&
    isRevocationId(entry[0]) && isVersion(entry[1]) && isIdentity(entry[2]) && isFiniteNumber(entry[3])
}

/** A revision's MAC as the plugin writes it (base64url). */
export function isMac (value: unknown): value is string {
  return typeof value === 'string' && /^[\w-]{1,128}$/.test(value)
}

function isRefreshEntry (entry: unknown): boolean {
  return Array.isArray(entry) && entry.length === 6 && isRevocationId(entry[0]) && (entry[1] === null || isRevocationId(entry[1])) &&
    isString(entry[2]) && isFiniteNumber(entry[3]) && isVersion(entry[4]) && isFiniteNumber(entry[5])
}

const PARTS: Array<[field: string, name: keyof Changes, check: (entry: unknown) => boolean]> = [
  ['r', 'revocations', isRevocation],
  ['v', 'revisions', isRevisionEntry],
  ['f', 'refreshStates', isRefreshEntry],
  ['t', 'taken', isRevocationId]
]

/**
 * The changes in a channel message, or `undefined` when it is not one this store writes (another
 * program publishing on the channel): such a message is ignored as a whole.
 */
export function decodeChanges (message: string): Changes | undefined {
  let parsed: unknown
  try {
    parsed = JSON.parse(message)
  } catch {
    return undefined
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return undefined
  const fields = parsed as Record<string, unknown>
  const changes: Record<string, unknown> = {}
  let count = 0
  for (const [field, name, check] of PARTS) {
    const entries = fields[field]
    if (entries === undefined) continue
    if (!Array.isArray(entries) || !entries.every(check)) return undefined
    changes[name] = entries
    count++
  }
  if (fields.u !== undefined) {
    if (fields.u !== 1) return undefined
    changes.unwritten = true
    count++
  }
  return count === Object.keys(fields).length && count > (changes.unwritten === true ? 1 : 0) ? changes as Changes : undefined
}

export function isRevocationId (id: unknown): id is string {
  return typeof id === 'string' && id !== ''
}

/** A generation or a version: a positive whole number that JSON and Lua both carry exactly. */
export function isVersion (value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) > 0
}

/** A revision as the `revisions` hash stores it: the version first, so a script can compare it. */
export function encodeStoredRevision (version: number, identity: SessionIdentity, expiresAt: number, mac?: string): string {
  return `${version}|${expiresAt}|${mac ?? ''}|${JSON.stringify(identity)}`
}

export function decodeStoredRevision (value: string): { version: number, identity: SessionIdentity, expiresAt: number, mac?: string } | undefined {
  const match = /^(\d+)\|([^|]+)\|([\w-]*)\|(.*)$/s.exec(value)
  if (match === null) return undefined
  let identity: unknown
  try {
    identity = JSON.parse(match[4])
  } catch {
    return undefined
  }
  const version = Number(match[1])
  const expiresAt = Number(match[2])
  if (!isVersion(version) || !Number.isFinite(expiresAt) || !isIdentity(identity)) return undefined
  return match[3] === '' ? { version, identity, expiresAt } : { version, identity, expiresAt, mac: match[3] }
}
