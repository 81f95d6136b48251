/**
 * The session fast path (issue #15): a session token not in the cache is verified synchronously
 * with node:crypto, and must decide exactly as jose did (`jwtVerify` with HS256 pinned, `exp` and
 * `iat` required, then the session's shape). jose is the oracle here: every generated token is given
 * to both, and both must accept it with the same claims or both refuse it. Then the cache: bounded,
 * least recently used evicted first, and through a real server every session is accepted whatever
 * the number of active sessions, and every refusal is still a 401.
 */
import t from 'tap'
import fc from 'fast-check'
import { createHmac, webcrypto } from 'node:crypto'
import { isDeepStrictEqual } from 'node:util'
import Fastify from 'fastify'
import { base64url, jwtVerify, SignJWT } from 'jose'
import { decodeSegment, epochSeconds, isSessionClaims, SessionTokenVerifier } from '../lib/session/token-verifier.js'
import { ADMISSION_WHEN_FULL, CredentialCache } from '../lib/session/credential-cache.js'
import { DEFAULT_SESSION_CACHE_MAX, SessionTokens, type VerifiedSession } from '../lib/session/sessions.js'
import { keycloakSessionKey, sessionEndedKey } from '../lib/session/claims.js'
import { MemoryRevocationStore } from '../lib/session/revocations.js'
import clearmlKeycloak, { MemoryDirectory } from '../index.js'
import { KC, KC_SECURE, startStack, TOKEN_SECRET } from './helpers/stack.js'
import { obtainTokens } from './helpers/tokens.js'
import { recordUnhandledRejections } from './helpers/unhandled.js'
import { isCanonicalCompactJws } from '../lib/crypto.js'

const SECRET = 'fast-path-secret-of-thirty-two-bytes!'
const NOW = 1_800_000_000
const key = await webcrypto.subtle.importKey('raw', new TextEncoder().encode(SECRET), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify'])
const fast = new SessionTokenVerifier(SECRET)

/** What `SessionTokens.verify` did before the fast path, with jose's clock pinned to `now`. */
async function joseDecision (token: string, now = NOW): Promise<Record<string, unknown> | null> {
  try {
    const { payload } = await jwtVerify(token, key, { algorithms: ['HS256'], requiredClaims: ['exp', 'iat'], currentDate: new Date(now * 1000) })
    return isSessionClaims(payload) ? payload : null
  } catch {
    return null
  }
}

const b64 = (bytes: Uint8Array | string): string => Buffer.from(bytes).toString('base64url')
const sign = (signingInput: string, secret = SECRET): string => b64(createHmac('sha256', secret).update(signingInput).digest())
/** A token whose signature is right for exactly these segment strings. */
const signed = (header: string, payload: string, secret = SECRET): string => `${header}.${payload}.${sign(`${header}.${payload}`, secret)}`
const json = (value: unknown): string => b64(JSON.stringify(value))
const ISSUED_HEADER = json({ alg: 'HS256', typ: 'JWT' })
const CLAIMS = {
  auth_type: 'Bearer',
  identity: { company: 'c-acme', user: 'u-1', user_name: 'Alice', role: 'user', company_name: 'Acme' },
  session_id: 's-1',
  sso: { provider: 'keycloak', sid: 'kc-1' },
  iat: NOW - 60,
  exp: NOW + 3600
}
const GOOD = signed(ISSUED_HEADER, json(CLAIMS))

t.test('named cases: the fast path decides as jose does', async (t) => {
  const withClaims = (changes: Record<string, unknown>): string => signed(ISSUED_HEADER, json({ ...CLAIMS, ...changes }))
  const withHeader = (header: unknown): string => signed(json(header), json(CLAIMS))
  const [header, payload, signature] = GOOD.split('.')
  // The last character of a 32-byte signature carries 4 bits and 2 unused ones, zero when canonical.
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
  const unusedBitsSet = signature.slice(0, -1) + alphabet[alphabet.indexOf(signature.slice(-1)) | 1]
  const rows: Array<[string, string, boolean]> = [
    ['a token as SessionTokens.issue writes it', GOOD, true],
    ['signed with another secret', signed(ISSUED_HEADER, json(CLAIMS), 'another-secret'), false],
    ['signature of one token on another payload', `${header}.${json({ ...CLAIMS, identity: { ...CLAIMS.identity, role: 'admin' } })}.${signature}`, false],
    ['no signature', `${header}.${payload}.`, false],
    ['alg none', `${json({ alg: 'none' })}.${payload}.`, false],
    ['alg none, signed', withHeader({ alg: 'none' }), false],
    ['alg HS384', withHeader({ alg: 'HS384', typ: 'JWT' }), false],
    ['alg RS256', withHeader({ alg: 'RS256', typ: 'JWT' }), false],
    ['alg hs256 (case matters)', withHeader({ alg: 'hs256' }), false],
    ['header without typ', withHeader({ alg: 'HS256' }), true],
    ['header with typ first and a kid', withHeader({ typ: 'JWT', alg: 'HS256', kid: 'x' }), true],
    ['header an array', signed(json(['HS256']), payload), false],
    ['header not JSON', signed(b64('{"alg":"HS256"'), payload), false],
    ['crit with an unknown extension', withHeader({ alg: 'HS256', crit: ['exp'], exp: 1 }), false],
    ['crit empty', withHeader({ alg: 'HS256', crit: [] }), false],
    ['crit not a list', withHeader({ alg: 'HS256', crit: 'b64', b64: true }), false],
    ['crit b64, b64 absent', withHeader({ alg: 'HS256', crit: ['b64'] }), false],
    ['crit b64, b64 false (unencoded payload)', withHeader({ alg: 'HS256', crit: ['b64'], b64: false }), false],
    ['crit b64, b64 "true"', withHeader({ alg: 'HS256', crit: ['b64'], b64: 'true' }), false],
    ['crit b64, b64 true', withHeader({ alg: 'HS256', crit: ['b64'], b64: true }), true],
    ['crit b64 twice, b64 true', withHeader({ alg: 'HS256', crit: ['b64', 'b64'], b64: true }), true],
    ['b64 false without crit (ignored)', withHeader({ alg: 'HS256', b64: false }), true],
    ['expired a second ago', withClaims({ exp: NOW - 1 }), false],
    ['expires this second', withClaims({ exp: NOW }), false],
    ['expires half a second after this second started', withClaims({ exp: NOW + 0.5 }), true],
    ['exp a numeric string', withClaims({ exp: String(NOW + 3600) }), false],
    ['exp null', withClaims({ exp: null }), false],
    ['exp absent', withClaims({ exp: undefined }), false],
    ['exp infinite (1e400)', signed(ISSUED_HEADER, b64(JSON.stringify(CLAIMS).replace(`"exp":${CLAIMS.exp}`, '"exp":1e400'))), true],
    ['iat absent', withClaims({ iat: undefined }), false],
    ['iat a string', withClaims({ iat: 'yesterday' }), false],
    ['iat in the future (not checked)', withClaims({ iat: NOW + 86400 }), true],
    ['not valid before next second', withClaims({ nbf: NOW + 1 }), false],
    ['valid from this second', withClaims({ nbf: NOW }), true],
    ['nbf a string', withClaims({ nbf: String(NOW - 10) }), false],
    ['payload an array', signed(ISSUED_HEADER, json([CLAIMS])), false],
    ['payload a number', signed(ISSUED_HEADER, json(42)), false],
    ['payload null', signed(ISSUED_HEADER, json(null)), false],
    ['payload with a byte-order mark', signed(ISSUED_HEADER, b64(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(CLAIMS))]))), true],
    ['payload not UTF-8', signed(ISSUED_HEADER, b64(Buffer.concat([Buffer.from(JSON.stringify(CLAIMS).slice(0, -1)), Buffer.from([0xff, 0x7d])]))), false],
    ['payload with whitespace around the JSON', signed(ISSUED_HEADER, b64(` ${JSON.stringify(CLAIMS)}\n`)), true],
    ['another JWT, not a session', withClaims({ auth_type: undefined }), false],
    ['identity an array', withClaims({ identity: [] }), false],
    ['identity without user', withClaims({ identity: { company: 'c-acme' } }), false],
    ['identity without company', withClaims({ identity: { user: 'u-1', user_name: 'Alice' } }), false],
    ['identity with a numeric company', withClaims({ identity: { ...CLAIMS.identity, company: 7 } }), false],
    ['session_id a number', withClaims({ session_id: 1 }), false],
    ['extra claims', withClaims({ extra: { nested: true } }), true],
    ['a name outside ASCII', withClaims({ identity: { ...CLAIMS.identity, user_name: 'Zoë 山田 🙂' } }), true],
    ['a "__proto__" claim', signed(ISSUED_HEADER, b64(JSON.stringify(CLAIMS).replace('{', '{"__proto__":{"exp":1},'))), true],
    ['padding after the signature', `${GOOD}=`, true],
    ['two padding characters after the signature', `${GOOD}==`, false],
    ['a space inside the signature', `${header}.${payload}.${signature.slice(0, 10)} ${signature.slice(10)}`, true],
    ['a line feed inside the payload', signed(ISSUED_HEADER, `${payload.slice(0, 5)}\n${payload.slice(5)}`), true],
    ['a no-break space inside the signature', `${header}.${payload}.${signature.slice(0, 10)}\u00a0${signature.slice(10)}`, false],
    ['standard base64 characters', `${header}.${payload}.${signature.replace(/[-_]/g, (c) => c === '-' ? '+' : '/')}`, signature.search(/[-_]/) === -1],
    ['unused bits of the signature set', `${header}.${payload}.${unusedBitsSet}`, true],
    ['signature one character too long (4n + 1)', `${GOOD}A`, false],
    ['signature one byte short', `${header}.${payload}.${b64(Buffer.from(signature, 'base64url').subarray(0, 31))}`, false],
    ['extra segment', `${GOOD}.`, false],
    ['extra signed segment', `${GOOD}.${signature}`, false],
    ['duplicate dots', `${header}..${payload}.${signature}`, false],
    ['two segments', `${header}.${payload}`, false],
    ['empty', '', false],
    ['leading space', ` ${GOOD}`, false],
    ['a Keycloak-shaped RS256 token', `${json({ alg: 'RS256', typ: 'JWT', kid: 'k1' })}.${payload}.${b64(Buffer.alloc(256, 1))}`, false]
  ]
  for (const [name, token, accepted] of rows) {
    const expected = await joseDecision(token)
    t.equal(expected !== null, accepted, `jose: ${name}`)
    t.strictSame(fast.verify(token, NOW), expected, `fast path: ${name}`)
  }
  t.equal(fast.verify(GOOD, CLAIMS.exp), null, 'the clock is read in whole seconds, as jose reads it')
  t.equal(await joseDecision(GOOD, CLAIMS.exp), null)
})

t.test('without an explicit time, the current clock decides', async (t) => {
  const now = Math.floor(Date.now() / 1000)
  const live = signed(ISSUED_HEADER, json({ ...CLAIMS, iat: now - 60, exp: now + 60 }))
  const expired = signed(ISSUED_HEADER, json({ ...CLAIMS, iat: now - 60, exp: now - 1 }))
  t.match(fast.verify(live), { session_id: 's-1' }, 'a session that expires in a minute is accepted')
  t.equal(fast.verify(expired), null, 'one that expired a second ago is refused')
  const read = epochSeconds()
  t.ok(Number.isInteger(read) && read >= now && read <= Math.floor(Date.now() / 1000), 'whole seconds, as jose reads the clock')
})

t.test('an empty secret, which WebCrypto refuses to import, verifies nothing', async (t) => {
  t.equal(new SessionTokenVerifier('').verify(signed(ISSUED_HEADER, json(CLAIMS), ''), NOW), null)
  await t.rejects(webcrypto.subtle.importKey('raw', new Uint8Array(0), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify']), 'jose could not verify with it either')
})

// Generators for the property tests: mostly well-formed pieces, so that the deeper checks are reached.
const numericDate = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: NOW - 100, max: NOW + 100 }) },
  fc.constantFrom(NOW, NOW + 0.5, NOW - 0.5, 0, -1, 1e21),
  fc.double(),
  fc.constantFrom(String(NOW + 10), null, true, [NOW + 10], {})
)
const optional = <T>(arbitrary: fc.Arbitrary<T>, weight = 6): fc.Arbitrary<T | undefined> => fc.oneof({ weight, arbitrary }, fc.constant(undefined))
const identity = fc.oneof(
  { weight: 16, arbitrary: fc.record({ company: fc.string(), user: fc.string(), user_name: fc.oneof(fc.string(), fc.string({ unit: 'grapheme' }), fc.string({ unit: 'binary' })), role: fc.constantFrom('user', 'admin'), company_name: fc.string() }) },
  fc.constantFrom(null, [], 'u-1', { user: 'u-1' }, { company: 'c', user: 7 }),
  fc.constant(undefined)
)
const claims = fc.record({
  auth_type: optional(fc.oneof({ weight: 12, arbitrary: fc.constant('Bearer') }, fc.constantFrom('bearer', 1, null)), 12),
  identity,
  session_id: optional(fc.oneof({ weight: 12, arbitrary: fc.string() }, fc.constantFrom(1, null)), 12),
  sso: optional(fc.record({ provider: fc.constant('keycloak'), sid: optional(fc.uuid()) }), 2),
  iat: optional(numericDate, 12),
  // Mostly in the future, so that acceptances are frequent; the edges are in numericDate.
  exp: optional(fc.oneof({ weight: 3, arbitrary: fc.integer({ min: NOW + 1, max: NOW + 1e6 }) }, numericDate), 12),
  nbf: optional(numericDate, 1),
  extra: optional(fc.jsonValue(), 1)
})
const headerObject = fc.oneof(
  { weight: 8, arbitrary: fc.constant({ alg: 'HS256', typ: 'JWT' }) },
  fc.record({
    alg: fc.constantFrom('HS256', 'HS384', 'HS512', 'RS256', 'none', 'hs256', '', undefined),
    typ: optional(fc.constantFrom('JWT', 'at+jwt', 1), 2),
    crit: optional(fc.constantFrom(['b64'], ['b64', 'b64'], [], ['exp'], [''], [1], 'b64', null), 1),
    b64: optional(fc.constantFrom(true, false, 'true', null), 1),
    kid: optional(fc.string(), 1)
  }),
  fc.jsonValue()
)
/** JSON text as bytes, sometimes damaged: a byte-order mark, bytes that are not UTF-8, truncation. */
const bytesOf = (value: fc.Arbitrary<unknown>): fc.Arbitrary<Uint8Array> => fc.tuple(value, fc.nat(15), fc.nat()).map(([v, damage, at]) => {
  const text = Buffer.from(JSON.stringify(v) ?? 'undefined')
  if (damage === 0) return Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), text])
  if (damage === 1) return Buffer.concat([text.subarray(0, at % (text.length + 1)), Buffer.from([0xc3]), text.subarray(at % (text.length + 1))])
  if (damage === 2) return text.subarray(0, at % (text.length + 1))
  return text
})
/** A base64url segment as written, or one of the variants a decoder may or may not accept. */
const encoding = fc.tuple(fc.nat(80), fc.nat(), fc.constantFrom(' ', '\t', '\n', '\r', '\f', '\v', '\u00a0', '=', '==', '+', '/', '.', '!', 'é', '\ud800', 'A', '-', '_'))
function encode (segment: string, [variant, at, char]: [number, number, string]): string {
  const position = at % (segment.length + 1)
  switch (variant) {
    case 0: return segment + '='
    case 1: return segment + char
    case 2: return segment.slice(0, position) + char + segment.slice(position)
    case 3: return segment.replace(/-/g, '+').replace(/_/g, '/')
    case 4: return segment.slice(0, position) + (segment[position] === 'A' ? 'B' : 'A') + segment.slice(position + 1)
    case 5: return segment.slice(0, position)
    case 6: return ''
    default: return segment
  }
}

t.test('property: on generated tokens, signed or not, jose and the fast path agree', async (t) => {
  let accepted = 0
  await fc.assert(fc.asyncProperty(
    bytesOf(headerObject), bytesOf(claims), encoding, encoding, encoding, fc.nat(20), fc.string({ maxLength: 3 }),
    async (headerBytes, payloadBytes, headerEncoding, payloadEncoding, signatureEncoding, shape, junk) => {
      // shape 0: another secret; 1: a fourth segment; 2: no signature; 3: the first dot replaced; others: three segments.
      const header = encode(b64(headerBytes), headerEncoding)
      const payload = encode(b64(payloadBytes), payloadEncoding)
      const signature = encode(sign(`${header}.${payload}`, shape === 0 ? 'wrong-secret' : SECRET), signatureEncoding)
      const token = shape === 1
        ? `${header}.${payload}.${signature}.${junk}`
        : shape === 2 ? `${header}.${payload}${junk}` : shape === 3 ? `${header}.${payload}.${signature}`.replace('.', junk) : `${header}.${payload}.${signature}`
      const expected = await joseDecision(token)
      const actual = fast.verify(token, NOW)
      if (expected !== null) accepted++
      return isDeepStrictEqual(actual, expected)
    }), { numRuns: 4000 })
  t.ok(accepted > 150, `the generators reach acceptance often enough (${accepted} of 4000)`)
})

t.test('property: any one character of an issued token changed, both decide alike', async (t) => {
  const revocations = new MemoryRevocationStore()
  const sessions = new SessionTokens({ secret: SECRET, lifetimeSec: 3600, revocations })
  const issued = await sessions.issue({ id: 'u-1', company: 'c-acme', name: 'Alice', role: 'user' }, { id: 'c-acme', name: 'Acme' }, 's-1', 'kc-1')
  const now = Math.floor(Date.now() / 1000)
  await fc.assert(fc.asyncProperty(fc.nat(), fc.string({ minLength: 1, maxLength: 1, unit: 'binary' }), async (at, char) => {
    const position = at % issued.token.length
    const token = issued.token.slice(0, position) + char + issued.token.slice(position + 1)
    const expected = await joseDecision(token, now)
    return (fast.verify(token, now) === null) === (expected === null)
  }), { numRuns: 3000 })
  t.strictSame(fast.verify(issued.token, now), await joseDecision(issued.token, now), 'the issued token itself: the same claims')
  t.ok(fast.verify(issued.token, now), 'accepted')
})

t.test('property: segments decode as jose decodes them', async (t) => {
  const joseBytes = (segment: string): Uint8Array | undefined => {
    try {
      return base64url.decode(segment)
    } catch {
      return undefined
    }
  }
  const alphabet = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= \t\n\r\f\v\u00a0.'.split(''))
  await fc.assert(fc.property(fc.array(alphabet, { maxLength: 48 }).map((chars) => chars.join('')), (segment) => {
    const expected = joseBytes(segment)
    const actual = decodeSegment(segment)
    return expected === undefined ? actual === undefined : actual !== undefined && Buffer.from(actual).equals(Buffer.from(expected))
  }), { numRuns: 20000 })
  t.pass()
})

t.test('session tokens: what an issued token carries, and the synchronous checks of a cached one', async (t) => {
  // A store that records what it is asked: a store keyed by id (Redis, SQL) must never be asked about
  // an undefined one.
  const memory = new MemoryRevocationStore()
  const asked: unknown[] = []
  const revocations = { revoke: async (id: string, until: number) => { await memory.revoke(id, until) }, isRevoked: (id: string, iat?: number) => { asked.push(id); return memory.isRevoked(id, iat) } }
  const sessions = new SessionTokens({ secret: SECRET, lifetimeSec: 3600, revocations })
  const user = { id: 'u-1', company: 'c-acme', name: 'Alice', role: 'user' as const }
  const company = { id: 'c-acme', name: 'Acme' }

  const id = sessions.newSessionId()
  t.match(id, /^[A-Za-z0-9_-]{22}$/, 'a session id is 16 random bytes')
  t.not(sessions.newSessionId(), id, 'and never the same twice')
  t.equal(sessions.expiresAt(1_000), 1_000 + 3600, 'a session expires a lifetime after it starts')
  const now = Math.floor(Date.now() / 1000)
  const expiresAt = sessions.expiresAt()
  t.ok(expiresAt >= now + 3600 && expiresAt <= Math.floor(Date.now() / 1000) + 3600, 'from now, in whole seconds, by default')

  const plain = await sessions.issue(user, company, 's-plain', undefined)
  const [header, payload] = plain.token.split('.').map((segment, i) => i < 2 ? JSON.parse(Buffer.from(segment, 'base64url').toString()) : segment)
  t.strictSame(header, { alg: 'HS256', typ: 'JWT' }, 'the header ClearML\'s own tokens carry')
  t.strictSame(payload.sso, { provider: 'keycloak' }, 'without a Keycloak session: the provider only')
  const linked = await sessions.issue(user, company, 's-linked', 'kc-7')
  t.strictSame(JSON.parse(Buffer.from(linked.token.split('.')[1], 'base64url').toString()).sso, { provider: 'keycloak', sid: 'kc-7' })

  const cachedPlain = sessions.cached(plain.token)
  t.equal(cachedPlain?.keycloakSessionKey, undefined, 'no Keycloak session to revoke it by')
  t.strictSame(asked, ['s-plain'], 'the store is asked about the session only')
  asked.length = 0
  const later: unknown[] = []
  const asynchronous = new SessionTokens({ secret: SECRET, lifetimeSec: 3600, revocations: { revoke: async () => {}, isRevoked: async (id: string) => { later.push(id); return false } } })
  t.ok(await asynchronous.verify(plain.token))
  t.strictSame(later, ['s-plain'], 'with an asynchronous store: asked once, and awaited')

  // A token signed with the token secret but without an `sso` claim, as ClearML's own login issues.
  const clearmlOwn = signed(ISSUED_HEADER, json({ ...CLAIMS, sso: undefined, iat: now - 60, exp: now + 600 }))
  t.match(sessions.cached(clearmlOwn), { identity: { user: 'u-1', credential: 'session' }, keycloakSessionKey: undefined }, 'a session without an sso claim is accepted')

  t.ok(sessions.cached(linked.token), 'cached')
  await revocations.revoke(keycloakSessionKey('kc-7'), linked.expiresAt)
  t.equal(sessions.cached(linked.token), null, 'refused synchronously once its Keycloak session ended')

  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  const cachedUntil = await sessions.issue(user, company, 's-until', undefined)
  t.ok(sessions.cached(cachedUntil.token))
  Date.now = () => cachedUntil.expiresAt * 1000 - 1
  t.ok(sessions.cached(cachedUntil.token), 'still valid in the last millisecond before its exp')
  Date.now = () => cachedUntil.expiresAt * 1000
  t.equal(sessions.cached(cachedUntil.token), null, 'a cached session is refused from the second its exp names')
})

t.test('session cache: bounded, busy sessions kept, every session accepted, validated size', async (t) => {
  const revocations = new MemoryRevocationStore()
  const sessions = new SessionTokens({ secret: SECRET, lifetimeSec: 3600, revocations, cacheMax: 4 })
  const company = { id: 'c-acme', name: 'Acme' }
  const tokens = await Promise.all(Array.from({ length: 40 }, async (_, i) => (await sessions.issue({ id: `u-${i}`, company: 'c-acme', name: `User ${i}`, role: 'user' }, company, `s-${i}`, undefined)).token))
  const [hot, ...others] = tokens
  t.ok(sessions.cached(hot), 'a first request is answered synchronously')
  for (const token of others) {
    t.match(sessions.cached(token), { identity: { credential: 'session' } }, 'every session is accepted, cached or not')
    t.ok(sessions.cached(hot), 'the busy session keeps being used')
    t.ok(sessions.isCached(hot), 'and is never the one evicted')
    t.ok(sessions.cacheSize <= 4, 'bounded')
  }
  t.equal(sessions.cacheSize, 4)

  const none = new SessionTokens({ secret: SECRET, lifetimeSec: 3600, revocations, cacheMax: 0 })
  t.ok(none.cached(hot), 'a cache of 0: every request verified, none kept')
  t.ok(await none.verify(hot))
  t.equal(none.cacheSize, 0)

  t.equal(new SessionTokens({ secret: SECRET, lifetimeSec: 60, revocations }).cached('not.a.token'), undefined, 'not a session: left to the slow path, which may know another kind of credential')
  t.equal(DEFAULT_SESSION_CACHE_MAX, 100_000)
  for (const bad of [-1, 1.5, Number.NaN, '10' as unknown as number]) {
    t.throws(() => new SessionTokens({ secret: SECRET, lifetimeSec: 60, revocations, cacheMax: bad }), { name: 'TypeError', message: /"sessionCacheMax" must be a whole number, 0 or more/ }, String(bad))
  }
})

t.test('session cache: more sessions than room, each request from the next one (agents polling)', async (t) => {
  const revocations = new MemoryRevocationStore()
  const sessions = new SessionTokens({ secret: SECRET, lifetimeSec: 3600, revocations, cacheMax: 60 })
  const tokens = await Promise.all(Array.from({ length: 90 }, async (_, i) => (await sessions.issue({ id: `u-${i}`, company: 'c-acme', name: `User ${i}`, role: 'user' }, { id: 'c-acme', name: 'Acme' }, `s-${i}`, undefined)).token))
  let hits = 0
  let requests = 0
  let refused = 0
  for (let round = 0; round < 40; round++) {
    for (const token of tokens) {
      // Counted after 10 rounds, once the cache has settled.
      if (round >= 10) {
        requests++
        if (sessions.isCached(token)) hits++
      }
      if (sessions.cached(token) == null) refused++
    }
  }
  t.equal(refused, 0, 'every request accepted')
  // Strict LRU evicts each session just before its turn comes again: no hit at all. The best
  // possible is 60 / 90; one admission in 16 when full keeps close to it.
  t.ok(hits / requests > 0.45, `hit rate ${(hits / requests).toFixed(2)} with room for two thirds of the sessions`)
  t.equal(sessions.cacheSize, 60)
})

/** A deterministic source for the cache's draws, cycling through `values`. */
const draws = (values: number[]): () => number => {
  let next = 0
  return () => values.length === 0 ? 0 : values[next++ % values.length]
}

t.test('CredentialCache: least recently used evicted first; when full, admitted on a winning draw', async (t) => {
  const session = { claims: CLAIMS, identity: Object.freeze({ ...CLAIMS.identity, session_id: 's-1', exp: CLAIMS.exp, credential: 'session' as const }) } as VerifiedSession
  const always = (): number => 0
  const one = new CredentialCache(1, always)
  one.add('a', session)
  one.add('b', session)
  t.strictSame([one.has('a'), one.has('b'), one.size], [false, true, 1], 'a cache of one keeps the newest')
  const two = new CredentialCache(2, always)
  for (const token of ['a', 'b', 'a', 'c']) if (two.get(token) === undefined) two.add(token, session)
  t.strictSame([two.has('a'), two.has('b'), two.has('c')], [true, false, true], 'the entry used last is kept')
  const losing = new CredentialCache(2, () => 1 - Number.EPSILON)
  for (const token of ['a', 'b', 'c']) losing.add(token, session)
  t.strictSame([losing.has('a'), losing.has('b'), losing.has('c')], [true, true, false], 'full, and the draw says no: nothing evicted, the newcomer served uncached')
  const atTheEdge = new CredentialCache(1, () => ADMISSION_WHEN_FULL)
  atTheEdge.add('a', session)
  atTheEdge.add('b', session)
  t.ok(atTheEdge.has('a'), `admitted when the draw is below ${ADMISSION_WHEN_FULL}`)
  two.delete('a')
  two.delete('missing')
  t.strictSame([two.has('a'), two.size], [false, 1])
})

t.test('property: CredentialCache against a model of its policy', async (t) => {
  const session = {} as VerifiedSession
  fc.assert(fc.property(
    fc.nat(8), fc.array(fc.nat(11), { maxLength: 80 }), fc.array(fc.oneof(fc.constant(0), fc.constant(0.5), fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }))),
    (max, uses, values) => {
      const cache = new CredentialCache(max, draws(values))
      const draw = draws(values)
      // Oldest first; a session moves to the end when it was last moved at least max / 2
      // admissions ago; when full, a newcomer gets in on a draw below ADMISSION_WHEN_FULL.
      const order: Array<{ token: string, movedAt: number }> = []
      // For each cached session, the other sessions admitted or moved since it was placed.
      const placedSince = new Map<string, Set<string>>()
      const place = (token: string): void => {
        for (const [other, since] of placedSince) if (other !== token) since.add(token)
        placedSince.set(token, new Set())
      }
      let admissions = 0
      for (const i of uses) {
        const token = `t${i}`
        const known = order.findIndex((entry) => entry.token === token)
        if (known !== -1 && admissions - order[known].movedAt >= Math.floor(max / 2)) {
          const [entry] = order.splice(known, 1)
          entry.movedAt = admissions
          order.push(entry)
          place(token)
        } else if (known === -1 && max > 0 && (order.length < max || draw() < ADMISSION_WHEN_FULL)) {
          if (order.length >= max) order.shift()
          order.push({ token, movedAt: ++admissions })
          place(token)
        }
        if (cache.get(token) === undefined) cache.add(token, session)
        if (cache.size !== order.length || cache.size > max) return false
        for (let j = 0; j < 12; j++) if (cache.has(`t${j}`) !== order.some((entry) => entry.token === `t${j}`)) return false
        // What the policy promises whatever the draws: a session leaves only once `max` other
        // sessions have been admitted or moved since it was itself admitted or moved.
        for (const [placed, since] of placedSince) {
          if (cache.has(placed)) continue
          if (since.size < max) return false
          placedSince.delete(placed)
        }
      }
      return true
    }), { numRuns: 1000 })
  t.pass()
})

t.test('a revocation store that fails asynchronously: the slow path reports it, nothing is left unhandled', async (t) => {
  const unhandled = recordUnhandledRejections(t)
  const failing = { revoke: async () => {}, isRevoked: async () => { throw new Error('store unreachable') } }
  const sessions = new SessionTokens({ secret: SECRET, lifetimeSec: 60, revocations: failing })
  const { token } = await sessions.issue({ id: 'u-1', company: 'c-acme', name: 'Alice', role: 'user' }, { id: 'c-acme', name: 'Acme' }, 's-1', undefined)
  t.equal(sessions.cached(token), undefined, 'undecided on the synchronous path')
  await t.rejects(sessions.verify(token), /store unreachable/, 'the slow path fails as the store does')
  const sidFailing = { revoke: async () => {}, isRevoked: (id: string) => id.startsWith('keycloak-sid:') ? Promise.reject(new Error('store unreachable')) : false }
  const withSid = new SessionTokens({ secret: SECRET, lifetimeSec: 60, revocations: sidFailing })
  t.equal(withSid.cached((await withSid.issue({ id: 'u-1', company: 'c-acme', name: 'Alice', role: 'user' }, { id: 'c-acme', name: 'Acme' }, 's-2', 'kc-2')).token), undefined)
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.strictSame(unhandled, [], 'no unhandled rejection')
})

t.test('through a real server: more sessions than the cache holds, refusals, revocation, Keycloak tokens', async (t) => {
  const revocations = new MemoryRevocationStore()
  const stack = await startStack({ protectedRoute: true, plugin: { revocations, sessionCacheMax: 3 } })
  t.teardown(stack.close)
  const sessions = stack.app.keycloak.sso.sessions
  const company = { id: 'c-acme', name: 'Acme' }
  const issued = await Promise.all(Array.from({ length: 8 }, async (_, i) => await sessions.issue({ id: `u-${i}`, company: 'c-acme', name: `User ${i}`, role: 'user' }, company, `s-${i}`, `kc-${i}`)))
  const me = async (token: string, path = '/me'): Promise<{ status: number, body: Record<string, unknown> }> => {
    const answer = await fetch(`${stack.appUrl}${path}`, { headers: { cookie: `clearml_token_basic=${token}` } })
    return { status: answer.status, body: await answer.json() as Record<string, unknown> }
  }
  for (let round = 0; round < 3; round++) {
    for (const [i, session] of issued.entries()) {
      t.match(await me(session.token), { status: 200, body: { user: `u-${i}`, session_id: `s-${i}`, credential: 'session' } }, `round ${round}, session ${i}`)
    }
  }
  t.equal(sessions.cacheSize, 3, 'eight active sessions, three cached, all accepted')
  t.match(await me(issued[0].token, '/me-direct'), { status: 200, body: { user: 'u-0' } }, 'authenticate awaited from a hook of the host')

  const [header, payload, signature] = issued[1].token.split('.')
  const forged = JSON.parse(Buffer.from(payload, 'base64url').toString())
  forged.identity.role = 'admin'
  const refusals: Record<string, string> = {
    'a payload changed under a genuine signature': `${header}.${b64(JSON.stringify(forged))}.${signature}`,
    'signed with another secret': signed(header, payload, 'not-the-token-secret'),
    'alg none': `${json({ alg: 'none', typ: 'JWT' })}.${payload}.`,
    'expired, with a genuine signature': signed(header, json({ ...forged, identity: { ...forged.identity, role: 'user' }, exp: Math.floor(Date.now() / 1000) - 1 }), TOKEN_SECRET),
    'an extra segment': `${issued[1].token}.x`
  }
  for (const [name, token] of Object.entries(refusals)) {
    t.match(await me(token), { status: 401, body: { meta: { result_code: 401, result_msg: 'invalid_token' } } }, name)
  }
  t.equal((await me(signed(header, json({ ...forged, identity: { ...forged.identity, role: 'user' } }), TOKEN_SECRET))).status, 200, 'while the same claims signed with the token secret pass')

  await revocations.revoke('s-2', issued[2].expiresAt)
  await revocations.revoke(keycloakSessionKey('kc-7'), issued[7].expiresAt)
  t.equal((await me(issued[2].token)).status, 401, 'a revoked session is refused, cached or not')
  t.equal((await me(issued[7].token)).status, 401, 'so is a session whose Keycloak session ended')
  t.equal((await me(issued[3].token)).status, 200, 'others are not')

  // A Keycloak access token is not a session: the synchronous path leaves it undecided, so that the
  // slow path can consider other kinds of credential, and it is refused as a session.
  const { access_token: accessToken } = await obtainTokens(stack, 'alice')
  t.equal(sessions.cached(accessToken), undefined)
  t.equal(await sessions.verify(accessToken), null)
  t.equal((await me(accessToken)).status, 401)
})

t.test('a revocation store of the host that answers asynchronously: sessions accepted on the slow path, refused once revoked', async (t) => {
  // A store backed by a database answers with promises; authenticate then waits for it.
  const memory = new MemoryRevocationStore()
  const asked: string[] = []
  const revocations = {
    revoke: async (id: string, until: number) => { await memory.revoke(id, until) },
    isRevoked: async (id: string, issuedAt?: number) => { asked.push(id); return await memory.isRevoked(id, issuedAt) }
  }
  const stack = await startStack({ protectedRoute: true, plugin: { revocations } })
  t.teardown(stack.close)
  const { token, expiresAt } = await stack.app.keycloak.sso.sessions.issue({ id: 'u-1', company: 'c-acme', name: 'Alice', role: 'user' }, { id: 'c-acme', name: 'Acme' }, 's-async', 'kc-async')
  const me = async (headers: Record<string, string>): Promise<{ status: number, body: Record<string, unknown> }> => {
    const answer = await fetch(`${stack.appUrl}/me`, { headers })
    return { status: answer.status, body: await answer.json() as Record<string, unknown> }
  }
  t.match(await me({ cookie: `clearml_token_basic=${token}` }), { status: 200, body: { user: 'u-1', session_id: 's-async', credential: 'session' } }, 'the session cookie is accepted')
  t.match(await me({ authorization: `Bearer ${token}` }), { status: 200, body: { user: 'u-1', credential: 'session' } }, 'so is the token as Bearer')
  t.ok(asked.includes('s-async') && asked.includes(keycloakSessionKey('kc-async')), 'after asking the store about the session and its Keycloak session')
  await revocations.revoke(keycloakSessionKey('kc-async'), expiresAt)
  t.match(await me({ cookie: `clearml_token_basic=${token}` }), { status: 401, body: { meta: { result_msg: 'invalid_token' } } }, 'refused once its Keycloak session ended')
})

t.test('a bad sessionCacheMax fails at register time with a clear message', async (t) => {
  const app = Fastify()
  t.teardown(async () => { await app.close() })
  const env = { [`${KC}base_url`]: 'http://127.0.0.1:9/realms/clearml', [`${KC_SECURE}client_id`]: 'clearml', [`${KC_SECURE}client_secret`]: 'secret', CLEARML__secure__auth__token_secret: TOKEN_SECRET }
  await t.rejects(async () => { await app.register(clearmlKeycloak, { directory: new MemoryDirectory(), webappUrl: 'https://clearml.example.com', env, sessionCacheMax: -5 }) }, { name: 'TypeError', message: /"sessionCacheMax" must be a whole number, 0 or more/ })
})

t.test('property: a compact JWS has one canonical spelling, and only that one is read', async (t) => {
  const segment = fc.uint8Array({ minLength: 1, maxLength: 96 }).map((bytes) => Buffer.from(bytes).toString('base64url'))
  fc.assert(fc.property(segment, segment, segment, (header, payload, signature) => isCanonicalCompactJws(`${header}.${payload}.${signature}`)), { numRuns: 500 })
  // Every other spelling decoders take for the same bytes: padding, whitespace, other trailing bits.
  const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
  fc.assert(fc.property(fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.nat(), (bytes, pick) => {
    const canonical = Buffer.from(bytes).toString('base64url')
    const variants = [canonical + '=', canonical.slice(0, 1) + ' ' + canonical.slice(1), canonical + '\n']
    if (canonical.length % 4 !== 0) {
      const last = BASE64URL.indexOf(canonical.at(-1)!)
      const unused = canonical.length % 4 === 2 ? 15 : 3
      const other = BASE64URL[(last & ~unused) | (1 + (pick % unused))]
      t.strictSame(Buffer.from(canonical.slice(0, -1) + other, 'base64url'), Buffer.from(bytes), 'the same bytes to a decoder')
      variants.push(canonical.slice(0, -1) + other)
    }
    return variants.every((variant) => !isCanonicalCompactJws(`${canonical}.${canonical}.${variant}`) && !isCanonicalCompactJws(`${variant}.${canonical}.${canonical}`))
  }), { numRuns: 300 })
  t.notOk(isCanonicalCompactJws('a.b'), 'two segments')
  t.notOk(isCanonicalCompactJws('AA.AA.AA.AA'), 'four segments')
  t.notOk(isCanonicalCompactJws('AA..AA'), 'an empty segment')
  t.notOk(isCanonicalCompactJws('AAAAA.AA.AA'), 'a length no encoder writes (4n + 1)')
  t.notOk(isCanonicalCompactJws(`${'A'.repeat(16 * 1024)}.AA.AA`), 'longer than any token the plugin reads')
})

t.test('session tokens: the cache admits a session once it passed, and lets go of one found revoked or expired', async (t) => {
  let clock = 1_800_000_000
  t.capture(Date, 'now', () => clock * 1000)
  const revocations = new MemoryRevocationStore()
  const sessions = new SessionTokens({ secret: SECRET, lifetimeSec: 100, revocations })
  const user = { id: 'u1', company: 'c', name: 'Ann', role: 'user' }
  const company = { id: 'c', name: 'C' }
  const { token } = await sessions.issue(user, company, 's-1', 'kc-1')
  t.ok(sessions.cached(token), 'valid')
  t.ok(sessions.isCached(token), 'and cached')
  for (let i = 0; i < 3; i++) sessions.cached(token)
  t.equal(sessions.cacheSize, 1, 'once, however often presented')
  await revocations.revoke('s-1', clock + 100, 'u1')
  t.equal(sessions.cached(token), null)
  t.notOk(sessions.isCached(token), 'found revoked: let go')
  t.equal(await sessions.verify(token), null)
  t.notOk(sessions.isCached(token), 'and not admitted again by the slow path')

  const second = await sessions.issue(user, company, 's-2', undefined)
  t.ok(await sessions.verify(second.token), 'the slow path admits a valid session')
  t.ok(sessions.isCached(second.token))
  await revocations.revoke('s-2', clock + 100, 'u1')
  t.equal(await sessions.verify(second.token), null)
  t.notOk(sessions.isCached(second.token), 'and lets go of it once revoked')

  const third = await sessions.issue(user, company, 's-3', undefined)
  t.ok(await sessions.verify(third.token))
  clock += 100
  t.equal(await sessions.verify(third.token), null, 'expired from the second exp names')
  t.notOk(sessions.isCached(third.token), 'and let go')

  const spaced = third.token.slice(0, -5) + ' ' + third.token.slice(-5)
  clock -= 50
  t.ok(sessions.cached(third.token), 'valid again on a clock set back')
  t.equal(sessions.cached(spaced), undefined, 'another spelling of it is not a session token at all')
  t.equal(sessions.isSessionToken(spaced), false)
  t.equal(sessions.isSessionToken(third.token), true, 'cached: a session token')
  t.equal(sessions.isSessionToken(second.token), true, 'revoked, not cached: still one of ours')
  t.equal(sessions.isSessionToken('a.b.c'), false)
})

t.test('session tokens: sessions that follow Keycloak pass the gate; revisions replace the identity; refusals say session_ended', async (t) => {
  const revocations = new MemoryRevocationStore()
  const admitted: string[] = []
  const settled: string[] = []
  let admit = true
  let genuine = true
  let macChecks = 0
  const sessions = new SessionTokens({
    secret: SECRET,
    lifetimeSec: 3600,
    revocations,
    follow: {
      gate: { admit: (session) => { admitted.push(session.claims.session_id); return admit }, settle: async (session) => { settled.push(session.claims.session_id) } },
      revisions: revocations,
      genuine: () => { macChecks++; return genuine }
    }
  })
  const user = { id: 'u1', company: 'c', name: 'Ann', role: 'admin' }
  const company = { id: 'c', name: 'C' }
  const followed = await sessions.issue(user, company, 'f-1', 'kc', 'user')
  const plain = await sessions.issue(user, company, 'p-1', 'kc')
  t.ok(sessions.cached(plain.token), 'a session that does not follow Keycloak')
  t.strictSame(admitted, [], 'never asks the gate')
  t.ok(sessions.cached(followed.token))
  t.strictSame(admitted, ['f-1'], 'one that follows asks it')
  admit = false
  t.equal(sessions.cached(followed.token), undefined, 'the gate says wait: only the slow path can tell')
  t.ok(await sessions.verify(followed.token), 'the slow path waits for the check, then answers')
  t.strictSame(settled, ['f-1'])
  await revocations.revoke('f-1', Date.now() / 1000 + 3600, 'u1')
  t.equal(await sessions.verify(followed.token), null, 'ended while it waited: refused')
  t.equal(await sessions.refusalOf(followed.token), 'invalid_token', 'revoked as by a logout: invalid_token')
  await revocations.revoke(sessionEndedKey('f-1'), Date.now() / 1000 + 3600, 'u1')
  t.equal(await sessions.refusalOf(followed.token), 'session_ended', 'ended by Keycloak: session_ended')
  t.equal(await sessions.refusalOf(plain.token), 'invalid_token', 'another session is not')
  t.equal(await sessions.refusalOf('not.a.token'), 'invalid_token')
  admit = true

  const later = Date.now() / 1000 + 3600
  const demoted = { company: 'c', user: 'u1', user_name: 'Ann B.', role: 'user', company_name: 'C' }
  await revocations.revise('p-1', { version: 2, identity: demoted, mac: 'm' }, later)
  const revised = sessions.cached(plain.token)!
  t.strictSame(revised.identity, { ...demoted, session_id: 'p-1', exp: plain.expiresAt, credential: 'session' }, 'the revision\'s identity, the session\'s id and expiry')
  t.ok(Object.isFrozen(revised.identity))
  t.equal(sessions.cached(plain.token), revised, 'built once per version')
  t.equal((await sessions.verify(plain.token))!.identity, revised.identity, 'the slow path answers the same')
  await revocations.revise('p-1', { version: 3, identity: { ...demoted, role: 'annotator' }, mac: 'm' }, later)
  t.equal(sessions.cached(plain.token)!.identity.role, 'annotator', 'a newer version, a new identity')
  genuine = false
  await revocations.revise('p-1', { version: 4, identity: { ...demoted, role: 'superuser' }, mac: 'forged' }, later)
  t.equal(sessions.cached(plain.token)!.identity.role, 'admin', 'a revision that is not genuine: the token\'s own identity')
  const checksBefore = macChecks
  t.equal(sessions.cached(plain.token)!.identity, sessions.cached(plain.token)!.identity, 'decided once for that version')
  t.equal(macChecks, checksBefore, 'its MAC is not checked again on every request')

  // The slow path asks the gate only of sessions that follow Keycloak, as the fast path does.
  admitted.length = 0
  t.ok(await sessions.verify(plain.token))
  t.strictSame(admitted, [], 'verify: a session that does not follow Keycloak never asks the gate')

  // A session token of ClearML's own apiserver (no sso claim), signed with the same secret.
  const native = await new SignJWT({ auth_type: 'Bearer', identity: { company: 'c', user: 'u9', user_name: 'N', role: 'user', company_name: 'C' }, session_id: 'n-1' })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt().setExpirationTime('1h').sign(new TextEncoder().encode(SECRET))
  t.ok(sessions.cached(native), 'a session without an sso claim passes, and never asks the gate')
  t.ok(await sessions.verify(native))
  t.strictSame(admitted, [])
})

t.test('session tokens: a logged-out session reads invalid_token, not session_ended, after a full store forgot another user\'s revocations', async (t) => {
  const revocations = new MemoryRevocationStore({ max: 4, log: { warn: () => {} } })
  const sessions = new SessionTokens({ secret: SECRET, lifetimeSec: 3600, revocations })
  const ann = await sessions.issue({ id: 'ann', company: 'c', name: 'Ann', role: 'user' }, { id: 'c', name: 'C' }, 'ann-1', 'kc')
  const expiry = Date.now() / 1000 + 3600
  await revocations.revoke('ann-1', expiry, 'ann')
  for (const id of ['m1', 'm2', 'm3', 'm4']) await revocations.revoke(id, expiry, 'mallory')
  t.ok(revocations.refusedUntilFor('mallory') > 0, 'mallory\'s revocations were forgotten')
  t.equal(await sessions.verify(ann.token), null, 'ann logged out: refused')
  t.equal(await sessions.refusalOf(ann.token), 'invalid_token', 'as a logout, not as ended by Keycloak')
})

t.test('session tokens: without revalidation, a session whose token says it follows Keycloak is simply a session', async (t) => {
  const sessions = new SessionTokens({ secret: SECRET, lifetimeSec: 3600, revocations: new MemoryRevocationStore() })
  const { token } = await sessions.issue({ id: 'u1', company: 'c', name: 'Ann', role: 'user' }, { id: 'c', name: 'C' }, 'f-2', 'kc', 'user')
  t.ok(sessions.cached(token), 'accepted on the fast path')
  t.ok(await sessions.verify(token), 'and on the slow one')
})

t.test('session tokens: presented again and again on the slow path, a session holds one place in the cache', async (t) => {
  // Every admission of a full cache succeeds: evictions are then in order, and a session held
  // twice would show as a cache larger than its bound.
  t.capture(Math, 'random', () => 0)
  const sessions = new SessionTokens({ secret: SECRET, lifetimeSec: 3600, revocations: new MemoryRevocationStore(), cacheMax: 2 })
  const issue = async (id: string): Promise<string> => (await sessions.issue({ id: 'u1', company: 'c', name: 'Ann', role: 'user' }, { id: 'c', name: 'C' }, id, undefined)).token
  const [a, b, c, d] = [await issue('a'), await issue('b'), await issue('c'), await issue('d')]
  for (const token of [a, a, a, b, c, d]) t.ok(await sessions.verify(token))
  t.equal(sessions.cacheSize, 2, 'never more than its bound')
})

t.test('session tokens: an expired session found in the cache by the fast path is let go', async (t) => {
  let clock = 1_800_000_000
  t.capture(Date, 'now', () => clock * 1000)
  const sessions = new SessionTokens({ secret: SECRET, lifetimeSec: 100, revocations: new MemoryRevocationStore() })
  const { token } = await sessions.issue({ id: 'u1', company: 'c', name: 'Ann', role: 'user' }, { id: 'c', name: 'C' }, 'e-1', undefined)
  t.ok(sessions.cached(token))
  t.ok(sessions.isCached(token))
  clock += 100
  t.equal(sessions.cached(token), null, 'expired')
  t.notOk(sessions.isCached(token), 'and let go')
})
