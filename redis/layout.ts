/**
 * What the Redis store keeps in Redis, under which names, and the message replicas exchange.
 * Everything lives under one prefix (default `clearml-kc:`), so the store can share ClearML's own
 * Redis database without touching ClearML's keys.
 *
 * | name | type | holds | goes away |
 * |---|---|---|---|
 * | `<prefix>revoked` | sorted set | member: revoked id (a ClearML `session_id`, or `keycloak-sid:<sid>`), score: when that session expires (seconds) | members at the next write after their score; the key at its highest score |
 * | `<prefix>revoked` | pub/sub channel | `[[id, expiresAt], ...]` as JSON, published by every write | |
 * | `<prefix>claim:<state>` | string | `1`: a login transaction was used | at the transaction's expiry |
 * | `<prefix>value:<key>` | string | a sealed value (an ID token too large for a cookie) | when read, or at its expiry |
 *
 * Why one sorted set rather than a key per revocation: every replica loads all revocations at start
 * and after each reconnect. From one key that is a `ZSCAN` (100,000 entries in 100 round trips of
 * 1,000, without blocking Redis); keys of their own would need a `SCAN` of the whole database,
 * ClearML's keys included, and a read per key for the expiry. Expiry is kept without any timer: every
 * write removes the members whose session has expired and sets the key's own expiry to its highest
 * score, so a set nobody writes to any more disappears when its last session would have ended, and
 * nothing is ever removed before its session's expiry.
 */

/**
 * Only commands Redis 5.0 has (the Redis of ClearML server's docker-compose until 2024), so the store
 * can share an existing ClearML Redis: no `ZADD GT`, `SET ... PXAT` or `GETDEL` (6.2); small Lua
 * scripts do the same atomically.
 */
export const MINIMUM_REDIS = '5.0'

export const DEFAULT_KEY_PREFIX = 'clearml-kc:'

/** Members per `ZSCAN` page at a full load, and pairs per write when many are written back. */
export const LOAD_PAGE = 1000
export const WRITE_BATCH = 1000

export interface RedisNames {
  /** The sorted set of revocations. */
  revoked: string
  /** The channel on which every write of revocations is announced. */
  channel: string
  claim: (key: string) => string
  value: (key: string) => string
}

export function redisNames (prefix: string): RedisNames {
  return {
    revoked: `${prefix}revoked`,
    channel: `${prefix}revoked`,
    claim: (key) => `${prefix}claim:${key}`,
    value: (key) => `${prefix}value:${key}`
  }
}

/**
 * Adds revocations, drops the expired ones, keeps the key alive until its last member expires and
 * tells every replica, in one atomic step. An id revoked twice keeps the later expiry. The key's
 * expiry is computed here, from the set itself, because a replica's own copy may be behind: an
 * expiry computed by the caller could end the set before a member another replica wrote.
 *
 * KEYS[1] the sorted set; ARGV[1] the channel, ARGV[2] now (seconds), ARGV[3] the message,
 * ARGV[4..] expiry and id pairs.
 */
export const WRITE_REVOCATIONS_SCRIPT = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
for i = 4, #ARGV, 2 do
  local known = redis.call('ZSCORE', KEYS[1], ARGV[i + 1])
  if not known or tonumber(known) < tonumber(ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2]) * 1000))
end
redis.call('PUBLISH', ARGV[1], ARGV[3])
return 1
`

/** `SET NX` with an absolute expiry (`PXAT` before 6.2): 1 for the first claim, 0 after. ARGV[1] ms. */
export const CLAIM_SCRIPT = `
if redis.call('SET', KEYS[1], '1', 'NX') then
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
  return 1
end
return 0
`

/** `SET` with an absolute expiry. ARGV[1] the value, ARGV[2] the expiry (ms). */
export const SET_VALUE_SCRIPT = `
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
`

/** `GETDEL` before 6.2: the value, gone once read. */
export const TAKE_VALUE_SCRIPT = `
local value = redis.call('GET', KEYS[1])
if value then redis.call('DEL', KEYS[1]) end
return value
`

export type Revocation = [id: string, expiresAt: number]

export function encodeRevocations (revocations: Revocation[]): string {
  return JSON.stringify(revocations)
}

/**
 * The revocations in a channel message, or `undefined` when it is not one this store writes (another
 * program publishing on the channel): such a message is ignored as a whole.
 */
export function decodeRevocations (message: string): Revocation[] | undefined {
  let parsed: unknown
  try {
    parsed = JSON.parse(message)
  } catch {
    return undefined
  }
  if (!Array.isArray(parsed)) return undefined
  for (const entry of parsed) {
    if (!Array.isArray(entry) || entry.length !== 2 || !isRevocationId(entry[0]) || !Number.isFinite(entry[1])) return undefined
  }
  return parsed as Revocation[]
}

export function isRevocationId (id: unknown): id is string {
  return typeof id === 'string' && id !== ''
}
