/**
 * The Lua scripts of the Redis store: each change is one script, so it is atomic, and every key it
 * touches is under the store's hash tag (`layout.ts`), so on a Cluster it runs on one node. Names
 * a script builds itself (a session's state from the sessions of a Keycloak session) start from a
 * name passed in `KEYS`, so a client's own `keyPrefix` applies to them too.
 *
 * Every script that writes also announces what it wrote on the channel (`PUBLISH`, or `SPUBLISH` on
 * a Cluster, passed in as the command to call), so a copy is never told of a write Redis refused
 * and never misses one Redis took; and returns the loss marker, so the writer notices at once when
 * Redis has lost it. Only Redis 5.0 commands.
 */

/**
 * Extends the loss marker to `until` (ms) when it would expire earlier: it must outlive everything
 * whose loss it reveals. A marker that is gone is left gone: the replica that notices recreates it
 * after loading, so that it never says "intact" about what it did not check.
 */
const EXTEND_EPOCH = `
local function extend_epoch(epoch, until_ms, now_ms)
  local ttl = redis.call('PTTL', epoch)
  if ttl >= 0 and now_ms + ttl < until_ms then redis.call('PEXPIREAT', epoch, until_ms) end
end
`

/**
 * Adds revocations, drops the expired ones, keeps the key alive until its last member expires and
 * tells every replica, in one atomic step. An id revoked twice keeps the later expiry. The key's
 * expiry is computed here, from the set itself, because a replica's own copy may be behind: an
 * expiry computed by the caller could end the set before a member another replica wrote.
 *
 * KEYS[1] the sorted set, KEYS[2] the marker; ARGV[1] the publish command, ARGV[2] the channel,
 * ARGV[3] now (seconds), ARGV[4] the message, ARGV[5..] expiry and id pairs. Returns the marker.
 */
export const WRITE_REVOCATIONS_SCRIPT = `${EXTEND_EPOCH}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
for i = 5, #ARGV, 2 do
  local known = redis.call('ZSCORE', KEYS[1], ARGV[i + 1])
  if not known or tonumber(known) < tonumber(ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  local until_ms = math.ceil(tonumber(last[2]) * 1000)
  redis.call('PEXPIREAT', KEYS[1], until_ms)
  extend_epoch(KEYS[2], until_ms, tonumber(ARGV[3]) * 1000)
end
redis.call(ARGV[1], ARGV[2], ARGV[4])
return redis.call('GET', KEYS[2])
`

/**
 * Records revisions, a higher version replacing a lower one, drops expired ones (a thousand per
 * write at most, so no write keeps Redis busy), keeps both keys alive until the last one expires and
 * tells every replica.
 *
 * KEYS[1] the hash, KEYS[2] its expiry index, KEYS[3] the marker; ARGV[1] the publish command,
 * ARGV[2] the channel, ARGV[3] now (seconds), ARGV[4] the message, then per revision: session,
 * version, expiry (seconds), stored value. Returns the marker.
 */
export const WRITE_REVISIONS_SCRIPT = `${EXTEND_EPOCH}
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, 1000)
for _, session in ipairs(expired) do
  redis.call('HDEL', KEYS[1], session)
  redis.call('ZREM', KEYS[2], session)
end
for i = 5, #ARGV, 4 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local version = current and tonumber(string.match(current, '^(%d+)|'))
  if not version or version < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 3])
    local known = redis.call('ZSCORE', KEYS[2], ARGV[i])
    if not known or tonumber(known) < tonumber(ARGV[i + 2]) then
      redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i])
    end
  end
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then
  local until_ms = math.ceil(tonumber(last[2]) * 1000)
  redis.call('PEXPIREAT', KEYS[1], until_ms)
  redis.call('PEXPIREAT', KEYS[2], until_ms)
  extend_epoch(KEYS[3], until_ms, tonumber(ARGV[3]) * 1000)
end
redis.call(ARGV[1], ARGV[2], ARGV[4])
return redis.call('GET', KEYS[3])
`

/**
 * The marker as it is, or, when it is missing, `ARGV[1]` set as the new one, until the later of
 * `ARGV[3]` (ms) and the expiry of the revocations and the revisions. Run before a full load: a
 * loss after it changes or removes the marker again, so it is noticed.
 *
 * KEYS[1] the marker, KEYS[2] revoked, KEYS[3] revisions; ARGV[1] a new id, ARGV[2] now (ms),
 * ARGV[3] the least expiry (ms). Returns the marker.
 */
export const ENSURE_EPOCH_SCRIPT = `
local current = redis.call('GET', KEYS[1])
if current then return current end
local until_ms = tonumber(ARGV[3])
for i = 2, 3 do
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl > 0 and tonumber(ARGV[2]) + ttl > until_ms then until_ms = tonumber(ARGV[2]) + ttl end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], until_ms)
return ARGV[1]
`

/** Read only: the marker, and whether the revocations and the revisions exist. KEYS: marker, revoked, revisions. */
export const CHECK_SCRIPT = `
return { redis.call('GET', KEYS[1]), redis.call('EXISTS', KEYS[2]), redis.call('EXISTS', KEYS[3]) }
`

/** Announces a message alone (`PUBLISH` is not a write, so Redis takes it when it refuses writes). KEYS[1] routes it to the store's node. */
export const ANNOUNCE_SCRIPT = `
redis.call(ARGV[1], ARGV[2], ARGV[3])
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

/**
 * A session's refresh state replaced by one of a higher generation, or created; never over an ended
 * one. The lease fields are kept: a holder of a lease on an older generation keeps it until it
 * releases, and its release cannot replace this state (lower generation). The Keycloak session's
 * index gets the session and lives as long as its longest session.
 */
const SAVE_STATE = `${EXTEND_EPOCH}
local function save_state(key, epoch, index_base, sealed, checked, generation, until_ms, session, sid, now_ms)
  local current = redis.call('HMGET', key, 'g', 'e')
  if current[2] then return false end
  if current[1] and tonumber(current[1]) >= tonumber(generation) then return false end
  redis.call('HSET', key, 's', sealed, 'c', checked, 'g', generation, 'x', until_ms)
  if sid ~= '' then
    redis.call('HSET', key, 'k', sid)
    local index = index_base .. sid
    redis.call('SADD', index, session)
    local ttl = redis.call('PTTL', index)
    if ttl < 0 or now_ms + ttl < tonumber(until_ms) then redis.call('PEXPIREAT', index, until_ms) end
  end
  redis.call('PEXPIREAT', key, until_ms)
  extend_epoch(epoch, tonumber(until_ms), now_ms)
  return true
end
`

/**
 * `saveRefresh`, and the write of a state from the journal. KEYS[1] the state, KEYS[2] the marker,
 * KEYS[3] the Keycloak-session index without its sid; ARGV[1] the publish command, ARGV[2] the
 * channel, ARGV[3] the message, ARGV[4] sealed, ARGV[5] checkedAt, ARGV[6] generation, ARGV[7]
 * expiry (ms), ARGV[8] session, ARGV[9] sid or '', ARGV[10] now (ms). Announced when written.
 * Returns { marker, 1 when written }.
 */
export const SAVE_REFRESH_SCRIPT = `${SAVE_STATE}
local written = save_state(KEYS[1], KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10]))
if written then redis.call(ARGV[1], ARGV[2], ARGV[3]) end
return { redis.call('GET', KEYS[2]), written and 1 or 0 }
`

/**
 * The lease to present a session's refresh token. Time is Redis's own (`TIME`), so replicas whose
 * clocks disagree still agree on when a lease ends; `redis.replicate_commands()` lets a script write
 * after `TIME` on Redis 5 (and is the only mode of later versions).
 *
 * When the caller's journal holds a state of a higher generation than Redis (Redis lost a rotation
 * in a failover), that state is written first, in the same step, so the lease never hands out a
 * token Keycloak has already rotated away.
 *
 * KEYS as `SAVE_REFRESH_SCRIPT`; ARGV[1] dueBefore (seconds), ARGV[2] leaseMs, ARGV[3] the lease id,
 * ARGV[4] now (ms, the caller's: expiries only), then optionally the journal's state: ARGV[5]
 * sealed, ARGV[6] checkedAt, ARGV[7] generation, ARGV[8] expiry (ms), ARGV[9] session, ARGV[10] sid.
 * Returns { 'ended' } | { 'absent' } | { 'fresh', checkedAt } | { 'busy', checkedAt } |
 * { 'leased', sealed, checkedAt, generation, expiry (ms) }.
 */
export const LEASE_REFRESH_SCRIPT = `${SAVE_STATE}
redis.replicate_commands()
if ARGV[5] then
  save_state(KEYS[1], KEYS[2], KEYS[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[4]))
end
local state = redis.call('HMGET', KEYS[1], 's', 'c', 'g', 'e', 'l', 'u', 'x')
if state[4] then return { 'ended' } end
if not state[3] then return { 'absent' } end
if tonumber(state[2]) >= tonumber(ARGV[1]) then return { 'fresh', state[2] } end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if state[5] and tonumber(state[6]) > now then return { 'busy', state[2] } end
redis.call('HSET', KEYS[1], 'l', ARGV[3], 'u', now + tonumber(ARGV[2]))
return { 'leased', state[1], state[2], state[3], state[7] }
`

/**
 * Ends a lease, and with a next state replaces the state when its generation is higher, whether or
 * not the lease was still the caller's: a rotated token is never dropped. A state that is gone
 * (taken by a logout) is not recreated.
 *
 * KEYS as `SAVE_REFRESH_SCRIPT`; ARGV[1] the lease id, ARGV[2] the publish command, ARGV[3] the
 * channel, ARGV[4] the message, ARGV[5] now (ms), then optionally the next state: ARGV[6] sealed,
 * ARGV[7] checkedAt, ARGV[8] generation, ARGV[9] expiry (ms, or '' to keep the state's), ARGV[10]
 * session, ARGV[11] sid. The message may be '' (the caller does not know the expiry to announce).
 * Returns { 1 when the lease was the caller's, marker, 1 when there is a live state }.
 */
export const RELEASE_REFRESH_SCRIPT = `${SAVE_STATE}
local current = redis.call('HMGET', KEYS[1], 'l', 'x')
local mine = current[1] == ARGV[1]
if mine then redis.call('HDEL', KEYS[1], 'l', 'u') end
if ARGV[6] and current[2] then
  local until_ms = ARGV[9]
  if until_ms == '' then until_ms = current[2] end
  if save_state(KEYS[1], KEYS[2], KEYS[3], ARGV[6], ARGV[7], ARGV[8], until_ms, ARGV[10], ARGV[11], tonumber(ARGV[5])) and ARGV[4] ~= '' then
    redis.call(ARGV[2], ARGV[3], ARGV[4])
  end
end
return { mine and 1 or 0, redis.call('GET', KEYS[2]), current[2] and 1 or 0 }
`

/**
 * Keycloak refused the session: its state becomes the tombstone `e` (no token, no lease) until the
 * session's expiry, and leaves its Keycloak session's index.
 *
 * KEYS as `SAVE_REFRESH_SCRIPT`; ARGV[1] the publish command, ARGV[2] the channel, ARGV[3] the
 * message, ARGV[4] expiry (ms), ARGV[5] session. Returns the marker.
 */
export const END_REFRESH_SCRIPT = `
local sid = redis.call('HGET', KEYS[1], 'k')
if sid then redis.call('SREM', KEYS[3] .. sid, ARGV[5]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'e', '1')
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
redis.call(ARGV[1], ARGV[2], ARGV[3])
return redis.call('GET', KEYS[2])
`

/**
 * Removes a session's live refresh state and returns it; an ended one stays (there is no token to
 * revoke). KEYS as `SAVE_REFRESH_SCRIPT`; ARGV[1] the publish command, ARGV[2] the channel, ARGV[3]
 * the message, ARGV[4] session. Returns { marker, sealed, checkedAt, generation } (nil when none).
 */
export const TAKE_REFRESH_SCRIPT = `
local state = redis.call('HMGET', KEYS[1], 's', 'c', 'g', 'e', 'k')
if state[4] or not state[3] then return { redis.call('GET', KEYS[2]), false, false, false } end
redis.call('DEL', KEYS[1])
if state[5] then redis.call('SREM', KEYS[3] .. state[5], ARGV[4]) end
redis.call(ARGV[1], ARGV[2], ARGV[3])
return { redis.call('GET', KEYS[2]), state[1], state[2], state[3] }
`

/**
 * Removes and returns the live refresh states of every session of one Keycloak session, and the
 * index. KEYS[1] the index, KEYS[2] the marker, KEYS[3] a state's name without its session; ARGV[1]
 * the publish command, ARGV[2] the channel. Announces the sessions taken. Returns { marker, then
 * session, sealed, checkedAt, generation of each }.
 */
export const TAKE_KEYCLOAK_SESSION_SCRIPT = `
local taken = { redis.call('GET', KEYS[2]) }
local sessions = {}
for _, session in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = KEYS[3] .. session
  local state = redis.call('HMGET', key, 's', 'c', 'g', 'e')
  if state[3] and not state[4] then
    redis.call('DEL', key)
    taken[#taken + 1] = session
    taken[#taken + 1] = state[1]
    taken[#taken + 1] = state[2]
    taken[#taken + 1] = state[3]
    sessions[#sessions + 1] = session
  end
end
redis.call('DEL', KEYS[1])
if #sessions > 0 then redis.call(ARGV[1], ARGV[2], cjson.encode({ t = sessions })) end
return taken
`
