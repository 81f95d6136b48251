/**
 * The small single-purpose modules, each against the cases its callers rely on.
 */
import t, { type Test } from 'tap'
import { createServer } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import { exportJWK, generateKeyPair, jwtVerify, SignJWT, type JWK } from 'jose'
import { MemoryRevocationStore } from '../index.js'
import { OnceClaims } from '../lib/session/revocations.js'
import { followStoreContract } from './helpers/follow-store-contract.js'
import { readClearmlEnv } from '../lib/config/clearml-env.js'
import { callJson } from '../lib/keycloak/http.js'
import { RemoteKeySet } from '../lib/keycloak/key-set.js'
import { MemoryDirectory } from '../lib/directory/memory-directory.js'
import { safeReturnPath, sameOriginUrl } from '../lib/redirects.js'
import { Sealer } from '../lib/session/sealed.js'
import { SessionTokens } from '../lib/session/sessions.js'
import { slotForNewLogin, slotOfState, TransactionCodec } from '../lib/session/transaction.js'
import { ssoErrorHandler, toSsoError } from '../plugins/error-handler.js'
import { SsoError } from '../lib/errors.js'

t.test('return path after login: only same-origin relative paths, everything else is /', async (t) => {
  const rows: Array<[unknown, string, string?]> = [
    ['/projects', '/projects'],
    ['/projects/1/experiments?filter=a#top', '/projects/1/experiments?filter=a#top'],
    ['/a/../b', '/b'],
    ['//evil.example/x', '/'],
    ['/\\evil.example', '/'],
    ['\\\\evil.example', '/'],
    ['https://evil.example', '/'],
    ['javascript:alert(1)', '/'],
    ['evil.example', '/'],
    ['/%2F%2Fevil.example', '/'],
    ['/%5Cevil.example', '/'],
    ['/%2fevil', '/'],
    ['/\tevil', '/'],
    ['/x\nSet-Cookie: a=b', '/'],
    ['/%0d%0aLocation: x', '/'],
    ['/' + 'a'.repeat(3000), '/'],
    ['/' + 'a'.repeat(1023), '/' + 'a'.repeat(1023)],
    ['/' + 'a'.repeat(1024), '/', 'longer than the transaction cookie keeps'],
    ['/..//evil.com', '/', 'dot segment resolving to //evil.com'],
    ['/.//evil.com', '/', 'same with a single dot'],
    ['/%2e//evil.com', '/', 'an encoded dot segment'],
    ['/%2E%2E//evil.com/path?x#y', '/', 'encoded, upper case, with a query'],
    ['/a/..//evil.com', '/', 'a segment then back up'],
    ['/%10evil', '/', 'encoded control characters %10–%1f'],
    ['/%1Fevil', '/'],
    ['/%7fevil', '/'],
    ['/ok/%20space', '/ok/%20space', 'an encoded space is an ordinary path'],
    [undefined, '/'],
    [42, '/'],
    ['', '/']
  ]
  for (const [input, expected, why] of rows) t.equal(safeReturnPath(input), expected, why ?? JSON.stringify(input))
})

t.test('post-logout redirect: the web app\'s origin only', async (t) => {
  const webapp = 'https://clearml.example.com'
  const fallback = 'https://clearml.example.com/login'
  const rows: Array<[unknown, string, string?]> = [
    ['https://clearml.example.com/bye', 'https://clearml.example.com/bye'],
    ['/bye', 'https://clearml.example.com/bye'],
    ['https://clearml.example.com.evil.example/', fallback],
    ['//evil.example/', fallback],
    ['http://clearml.example.com/bye', fallback],
    ['/\\evil.example', fallback],
    ['https://[bad', fallback],
    ['', fallback],
    [undefined, fallback],
    ['/' + 'a'.repeat(3000), fallback],
    [`${webapp}/${'a'.repeat(2048 - webapp.length - 1)}`, `${webapp}/${'a'.repeat(2048 - webapp.length - 1)}`, 'a URL of 2048 characters is kept'],
    [`${webapp}/${'a'.repeat(2048 - webapp.length)}`, fallback, 'one of 2049 is not']
  ]
  for (const [input, expected, why] of rows) t.equal(sameOriginUrl(input, webapp, fallback), expected, why ?? JSON.stringify(input))
})

const FORGOTTEN_WARNING = (forgotten: number) => `fastify-clearml-keycloak: the in-memory revocation store held ${forgotten} live revocations (its bound); ` +
  'every session issued until now must log in again. Share a RedisRevocationStore, or raise "max".'

t.test('revocation store: revoked until the session would expire; a full store fails closed and says so once', async (t) => {
  const warnings: Array<{ object: Record<string, unknown>, message: string }> = []
  const log = { warn: (object: Record<string, unknown>, message: string) => { warnings.push({ object, message }) } }
  const store = new MemoryRevocationStore({ max: 3, log })
  const now = Math.floor(Date.now() / 1000)
  const later = now + 60
  await store.revoke('a', later)
  t.equal(store.isRevoked('a', now), true)
  t.equal(store.isRevoked('b', now), false)
  t.equal(store.isRevoked('b'), false, 'while nothing was forgotten, a session of unknown issue time is judged by its id alone')
  await store.revoke('expired-already', now - 1)
  t.equal(store.size, 1, 'a revocation of an expired session is not kept')
  await store.revoke('b', later)
  await store.revoke('c', later)
  t.equal(store.refusedUntil, Number.NEGATIVE_INFINITY, 'nothing forgotten while there is room')
  await store.revoke('d', later)
  t.equal(store.size, 1, 'full of live revocations: they are forgotten, only the newest is held')
  t.ok(store.refusedUntil >= now, 'and every session issued until now is refused instead')
  for (const id of ['a', 'b', 'c', 'd']) t.equal(store.isRevoked(id, now), true, `revoked session ${id} stays refused`)
  t.equal(store.isRevoked('never-revoked', now - 100), true, 'an older session that was never revoked must log in again')
  t.equal(store.isRevoked('never-revoked'), true, 'so must a session whose issue time is not known')
  t.equal(store.isRevoked('fresh', store.refusedUntil), true, 'a session issued in the second it forgot is refused too')
  t.equal(store.isRevoked('fresh', store.refusedUntil + 1), false, 'a session issued afterwards is accepted')
  await store.revoke('e', later)
  await store.revoke('f', later)
  await store.revoke('g', later)
  t.equal(warnings.length, 1, 'said once in the log, however often it happens')
  t.equal(warnings[0].message, FORGOTTEN_WARNING(3), 'what happened, what it costs the users, and the fix')
  t.strictSame(warnings[0].object, { forgotten: 3, refusedUntil: store.refusedUntil })

  const soon = new MemoryRevocationStore({ max: 2 })
  await soon.revoke('x', Date.now() / 1000 + 0.05)
  await soon.revoke('y', later)
  await new Promise((resolve) => setTimeout(resolve, 80))
  t.equal(soon.isRevoked('x', now), false, 'forgotten once the session has expired')
  await soon.revoke('x2', Date.now() / 1000 + 0.05)
  await new Promise((resolve) => setTimeout(resolve, 80))
  await soon.revoke('z', later)
  t.equal(soon.isRevoked('y', now) && soon.isRevoked('z', now), true, 'expired entries are dropped first when full')
  t.equal(soon.refusedUntil, Number.NEGATIVE_INFINITY, 'so nothing live was forgotten')
  t.equal(new MemoryRevocationStore().size, 0)
})

t.test('revocation store without a log warns through process warnings', async (t) => {
  const emitted: Array<{ message: string, code?: string }> = []
  const listener = (warning: Error & { code?: string }) => { emitted.push({ message: warning.message, code: warning.code }) }
  process.on('warning', listener)
  t.teardown(() => { process.off('warning', listener) })
  const store = new MemoryRevocationStore({ max: 1 })
  const later = Math.floor(Date.now() / 1000) + 60
  await store.revoke('a', later)
  await store.revoke('b', later)
  await new Promise((resolve) => setImmediate(resolve))
  t.strictSame(emitted, [{ message: FORGOTTEN_WARNING(1), code: 'CLEARML_KC_REVOCATIONS_FORGOTTEN' }], 'a code to filter it by (--disable-warning)')
  store.useLog({ warn: () => { t.fail('already warned') } })

  // The plugin hands the store its logger: the warning then goes to the log, not to process warnings.
  const logged: string[] = []
  const late = new MemoryRevocationStore({ max: 1 })
  late.useLog({ warn: (object, message) => { logged.push(message) } })
  await late.revoke('a', later)
  await late.revoke('b', later)
  t.strictSame(logged, [FORGOTTEN_WARNING(1)], 'a store built without a log warns through the one it is given')
  const own: string[] = []
  const given = new MemoryRevocationStore({ max: 1, log: { warn: (object, message) => { own.push(message) } } })
  given.useLog({ warn: () => { t.fail('a store built with a log keeps it') } })
  await given.revoke('a', later)
  await given.revoke('b', later)
  t.equal(own.length, 1, 'a store built with a log keeps it')
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(emitted.length, 1, 'neither emitted a process warning')
})

t.test('revocation store: expiry to the second, on a fixed clock', async (t) => {
  let clock = 1_800_000_000
  t.capture(Date, 'now', () => clock * 1000)
  const store = new MemoryRevocationStore({ max: 2, maxValues: 2 })
  await store.revoke('ends-now', clock)
  t.equal(store.size, 0, 'a session that expires this second needs no revocation')
  await store.revoke('a', clock + 10)
  t.equal(store.isRevoked('a', clock - 5), true)
  clock += 10
  t.equal(store.isRevoked('a', clock - 15), false, 'at its expiry the revocation ends: the session has expired anyway')
  t.equal(store.size, 0, 'and it is dropped')
  await store.revoke('b', clock + 1)
  await store.revoke('c', clock + 100)
  clock += 1
  await store.revoke('d', clock + 100)
  t.equal(store.refusedUntil, Number.NEGATIVE_INFINITY, 'full: a revocation expiring this second makes room, nothing live is forgotten')
  t.equal(store.isRevoked('c', clock - 50) && store.isRevoked('d', clock - 50), true)

  // A logout does not scan the store while there is room (100,000 by default): an expired revocation
  // is dropped when room is needed or when it is asked about.
  const roomy = new MemoryRevocationStore({ max: 3 })
  await roomy.revoke('p', clock + 1)
  clock += 2
  await roomy.revoke('q', clock + 10)
  t.equal(roomy.size, 2, 'the expired one is still held while there is room')
  t.equal(roomy.isRevoked('p', clock - 5), false)
  t.equal(roomy.size, 1, 'asked about, it is dropped')

  await store.setValue('long', 'L', clock + 100)
  await store.setValue('short', 'S', clock + 1)
  clock += 1
  await store.setValue('third', 'T', clock + 100)
  t.equal(await store.takeValue('long'), 'L', 'full: a value expiring this second makes room, not the oldest live one')
  await store.setValue('edge', 'E', clock + 1)
  clock += 1
  t.equal(await store.takeValue('edge'), undefined, 'a value is gone at its expiry')

  const claims = new OnceClaims(10)
  t.equal(claims.claim('state', clock + 1), true)
  t.equal(claims.claim('state', clock + 1), false)
  clock += 1
  t.equal(claims.claim('state', clock + 60), true, 'at its expiry a claim may be made again')
  const swept = new OnceClaims(10)
  swept.claim('x', clock + 1)
  swept.claim('y', clock + 1)
  clock += 1
  swept.claim('z', clock + 60)
  t.equal(swept.size, 1, 'claims expiring this second are swept at the next claim, full or not')

  const reclaimed = new OnceClaims(10)
  reclaimed.claim('long', clock + 100)
  reclaimed.claim('state', clock + 1)
  clock += 2
  t.equal(reclaimed.claim('state', clock + 100), true, 'expired: the same key is claimed anew')
  clock += 99
  reclaimed.claim('other', clock + 100)
  t.equal(reclaimed.claim('state', clock + 100), false, 'sweeping its first, expired claim does not forget the second one')
})

t.test('revocation store: claims once, values taken once, both bounded', async (t) => {
  const store = new MemoryRevocationStore({ maxClaims: 2, maxValues: 2 })
  const later = Date.now() / 1000 + 60
  t.equal(await store.claimOnce('s1', later), true)
  t.equal(await store.claimOnce('s1', later), false, 'a second claim of the same key is refused')
  t.equal(await store.claimOnce('s2', later), true)
  t.equal(await store.claimOnce('s3', later), true, 'full: the oldest claim makes room')
  t.equal(await store.claimOnce('s3', later), false)
  t.equal(await store.claimOnce('s1', later), true, 'maxClaims is the bound: s1 was forgotten')
  t.equal(await store.claimOnce('short', Date.now() / 1000 + 0.05), true)
  await new Promise((resolve) => setTimeout(resolve, 80))
  t.equal(await store.claimOnce('short', later), true, 'an expired claim can be claimed again')

  const small = new OnceClaims(10)
  for (let i = 0; i < 3000; i++) small.claim(`k${i}`, later)
  t.equal(small.size, 10, 'a full memory forgets its oldest claims, whatever the traffic')
  t.equal(small.claim('k2999', later), false, 'the newest are still remembered')
  t.equal(small.claim('k0', later), true, 'the oldest were forgotten')

  // A state replayed long after its claim was forgotten is claimed anew (the code it guarded is single
  // use at Keycloak); from then on it is remembered like any new claim, however long the traffic.
  const busy = new OnceClaims(10)
  let forgottenTooSoon = 0
  for (let i = 0; i < 5000; i++) {
    busy.claim(`state-${i}`, later)
    if (i < 100) continue
    busy.claim(`state-${i - 100}`, later)
    if (i > 100 && busy.claim(`state-${i - 101}`, later)) forgottenTooSoon++
  }
  t.equal(forgottenTooSoon, 0, 'a replayed state, claimed anew, is refused on its next replay')

  await store.setValue('v1', 'one', later)
  t.equal(await store.takeValue('v1'), 'one')
  t.equal(await store.takeValue('v1'), undefined, 'taken once')
  await store.setValue('v2', 'two', Date.now() / 1000 + 0.05)
  await store.setValue('v3', 'three', later)
  await new Promise((resolve) => setTimeout(resolve, 80))
  t.equal(await store.takeValue('v2'), undefined, 'expired')
  await store.setValue('v2', 'two', Date.now() / 1000 + 0.05)
  await new Promise((resolve) => setTimeout(resolve, 80))
  await store.setValue('v4', 'four', later)
  t.equal(await store.takeValue('v3'), 'three', 'expired values make room first')
  await store.setValue('v5', 'five', later)
  await store.setValue('v6', 'six', later)
  t.equal(await store.takeValue('v4'), undefined, 'then the oldest')
  t.equal(await store.takeValue('v6'), 'six')
})

t.test('session cache: verified once, expiry honoured, bounded, revocation checked on every hit', async (t) => {
  const revocations = new MemoryRevocationStore()
  const sessions = new SessionTokens({ secret: 'k', lifetimeSec: 60, revocations, cacheMax: 2 })
  const user = { id: 'u1', company: 'c', name: 'U', role: 'user' }
  const company = { id: 'c', name: 'C' }
  const a = await sessions.issue(user, company, 'sa', 'kc-sid')
  const b = await sessions.issue(user, company, 'sb', undefined)
  const c = await sessions.issue(user, company, 'sc', undefined)
  t.equal(sessions.cacheSize, 0, 'nothing cached before the first verification')
  const first = sessions.cached(a.token)
  t.match(first, { claims: { session_id: 'sa', sso: { provider: 'keycloak', sid: 'kc-sid' } }, identity: { user: 'u1', company: 'c', session_id: 'sa' } }, 'a token not seen before is verified synchronously')
  t.equal(sessions.cacheSize, 1, 'and cached')
  t.equal(await sessions.verify(a.token), first, 'then answered from the cache')
  t.ok(Object.isFrozen(first!.identity), 'the shared identity cannot be changed by one request for the next')
  await sessions.verify(b.token)
  await sessions.verify(c.token)
  t.equal(sessions.cacheSize, 2, 'bounded')
  t.match(await sessions.verify(a.token), { claims: { session_id: 'sa' } }, 'an evicted token verifies again')
  await revocations.revoke('sa', a.expiresAt)
  t.equal(sessions.cached(a.token), null, 'revoked: refused by the fast path')
  t.equal(await sessions.verify(a.token), null, 'and by the slow path, although cached')

  const short = new SessionTokens({ secret: 'k', lifetimeSec: 1, revocations })
  const s = await short.issue(user, company, 'ss', undefined)
  t.ok(await short.verify(s.token))
  await new Promise((resolve) => setTimeout(resolve, 2100))
  t.equal(await short.verify(s.token), null, 'expired: refused although cached')
  t.equal(short.cacheSize, 0, 'and dropped from the cache')

  const asyncStore = { revoke: async () => {}, isRevoked: async (id: string) => id === 'sa' }
  const withAsync = new SessionTokens({ secret: 'k', lifetimeSec: 60, revocations: asyncStore })
  t.equal(await withAsync.verify(a.token), null, 'an asynchronous store is awaited')
  t.ok(await withAsync.verify(b.token))
  t.equal(withAsync.cached(b.token), undefined, 'an asynchronous store leaves the fast path undecided')
  t.ok(await withAsync.verify(b.token), 'and the slow path answers from the cache')

  // A store that knows session ids locally but asks elsewhere about ended Keycloak sessions.
  const mixed = { revoke: async () => {}, isRevoked: (id: string) => id.startsWith('keycloak-sid:') ? Promise.resolve(id === 'keycloak-sid:kc-ended') : false }
  const withSid = new SessionTokens({ secret: 'k', lifetimeSec: 60, revocations: mixed })
  const ended = await withSid.issue(user, company, 'se', 'kc-ended')
  const live = await withSid.issue(user, company, 'sl', 'kc-live')
  t.equal(await withSid.verify(ended.token), null, 'a back-channel-ended Keycloak session is refused')
  t.ok(await withSid.verify(live.token), 'another Keycloak session is not')
  t.equal(withSid.cached(live.token), undefined, 'the fast path leaves an asynchronous answer to the slow one')

  const noSecret = new SessionTokens({ secret: undefined, lifetimeSec: 60, revocations })
  t.equal(await noSecret.verify(b.token), null)
  await t.rejects(noSecret.issue(user, company, 'x', undefined), /token_secret is not configured/)
  const foreign = new SessionTokens({ secret: 'k', lifetimeSec: 60, revocations })
  const { SignJWT } = await import('jose')
  const notOurs = await new SignJWT({ hello: 'world' }).setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setExpirationTime('1m').sign(new TextEncoder().encode('k'))
  t.equal(await foreign.verify(notOurs), null, 'a JWT with our secret but not a ClearML session shape')
})

t.test('login transaction: sealed, claimed once, expires, found by its state among the slots', async (t) => {
  const claims = new OnceClaims()
  const codec = new TransactionCodec('secret', async (key, exp) => claims.claim(key, exp))
  const make = () => codec.create({ redirectUri: 'https://x/callback_keycloak', returnTo: '/p' })
  const prefixOf = (value: string) => value.split('.').slice(0, 2).join('.')
  const sealedOf = (value: string) => value.split('.').slice(2).join('.')
  const tx = make()
  const value = await codec.seal(tx, 'clearml_kc_tx_1')
  t.notMatch(value, tx.verifier, 'the PKCE verifier is not readable in the cookie')
  t.notMatch(value, tx.state, 'nor the state')
  t.equal(slotOfState({ clearml_kc_tx_1: value }, tx.state), 'clearml_kc_tx_1')
  t.equal(slotOfState({ clearml_kc_tx_1: value }, 'another-state'), undefined)
  t.equal(slotOfState({ clearml_kc_tx_1: value }, undefined), undefined)
  t.strictSame(await codec.consume({ clearml_kc_tx_0: 'garbage', clearml_kc_tx_1: value }, tx.state), tx, 'found in its slot, whatever the others hold')
  await t.rejects(codec.consume({ clearml_kc_tx_1: value }, tx.state), { code: 'invalid_state', message: /already used/ })

  const other = make()
  const swapped = `${prefixOf(await codec.seal(tx, 'clearml_kc_tx_0'))}.${sealedOf(await codec.seal(other, 'clearml_kc_tx_0'))}`
  await t.rejects(codec.consume({ clearml_kc_tx_0: swapped }, tx.state), { code: 'invalid_state', message: /state does not match/ }, 'the sealed state decides, not the tag')
  await t.rejects(codec.consume({}, tx.state), { code: 'invalid_state', message: /no login transaction for this state/ })
  await t.rejects(codec.consume({ clearml_kc_tx_0: '' }, tx.state), { code: 'invalid_state' })
  const foreign = new TransactionCodec('other-secret', async () => true)
  const third = make()
  await t.rejects(codec.consume({ clearml_kc_tx_2: await foreign.seal(third, 'clearml_kc_tx_2') }, third.state), { message: /not valid/ }, 'sealed with another secret')
  const fourth = make()
  const expired = `${prefixOf(await codec.seal(fourth, 'clearml_kc_tx_0'))}.${await new Sealer('secret', 'login-transaction').seal({ tx: fourth }, -30)}`
  await t.rejects(codec.consume({ clearml_kc_tx_0: expired }, fourth.state), { code: 'invalid_state', message: /expired/ })

  const seen: Array<[string, number]> = []
  const recording = new TransactionCodec('secret', async (key, exp) => { seen.push([key, exp]); return true })
  const next = make()
  await recording.consume({ clearml_kc_tx_0: await recording.seal(next, 'clearml_kc_tx_0') }, next.state)
  t.equal(seen[0][0], next.state, 'the claim is made with the login\'s state')
  t.ok(Math.abs(seen[0][1] - (Date.now() / 1000 + 600)) < 5, 'until the transaction expires')

  const broken = new TransactionCodec('secret', async () => { throw new Error('store down') })
  const last = make()
  await t.rejects(broken.consume({ clearml_kc_tx_0: await broken.seal(last, 'clearml_kc_tx_0') }, last.state), { code: 'directory_error' }, 'a failing store refuses the login, it does not let it through')

  const huge = codec.create({ redirectUri: 'https://x/' + 'a'.repeat(1500), returnTo: '/' })
  await t.rejects(codec.seal(huge, 'clearml_kc_tx_0'), { code: 'bad_request', message: /too long for the login cookie/ }, 'a cookie that would pass its bound is refused')
})

t.test('login transaction slots: a free slot first, else the oldest login', async (t) => {
  const at = (issuedAt: number) => `AAAAAAAAAA.${issuedAt}.sealed`
  t.equal(slotForNewLogin({}), 'clearml_kc_tx_0')
  t.equal(slotForNewLogin({ clearml_kc_tx_0: at(5) }), 'clearml_kc_tx_1')
  t.equal(slotForNewLogin({ clearml_kc_tx_0: at(5), clearml_kc_tx_1: 'not a slot value' }), 'clearml_kc_tx_1', 'an unreadable slot counts as free')
  t.equal(slotForNewLogin({ clearml_kc_tx_0: at(5), clearml_kc_tx_1: at(3), clearml_kc_tx_2: at(9) }), 'clearml_kc_tx_1', 'all taken: the oldest')
  t.equal(slotForNewLogin({ clearml_kc_tx_0: at(1), clearml_kc_tx_1: at(3), clearml_kc_tx_2: at(9), clearml_kc_tx_3: at(0) }), 'clearml_kc_tx_0', 'only the slots count')
})

t.test('login transaction with a state that shows the return path (ClearML Enterprise): the path kept once, its slot kept', async (t) => {
  const codec = new TransactionCodec('secret', async () => true)
  const redirectUri = 'https://x/callback_keycloak'
  const tx = codec.create({ redirectUri, returnTo: '/projects/p1?tab=x#section' }, true)
  t.equal(tx.returnTo, '/projects/p1?tab=x', 'the web app\'s fragment gives way')
  t.match(tx.state, /^\/projects\/p1\?tab=x#[0-9a-f]{64}$/, 'the path and query, then 256 random bits')
  t.not(codec.create({ redirectUri, returnTo: '/projects/p1?tab=x' }, true).state, tx.state)
  const value = await codec.seal(tx, 'clearml_kc_tx_0')
  t.notMatch(value, 'projects', 'the cookie shows nothing of the path')
  t.strictSame(await codec.consume({ clearml_kc_tx_0: value }, tx.state), tx, 'the path comes back from the state')
  const long = codec.create({ redirectUri, returnTo: '/' + 'p'.repeat(1100) }, true)
  await t.resolves(codec.seal(long, 'clearml_kc_tx_0'), 'kept once, a path as long as the browser flow\'s fits')

  const [a, b, c] = [codec.create({ redirectUri, returnTo: '/a' }, true), codec.create({ redirectUri, returnTo: '/b' }), codec.create({ redirectUri, returnTo: '/c' })]
  const cookies = { clearml_kc_tx_0: await codec.seal(a, 'clearml_kc_tx_0'), clearml_kc_tx_1: await codec.seal(b, 'clearml_kc_tx_1'), clearml_kc_tx_2: await codec.seal(c, 'clearml_kc_tx_2') }
  t.equal(slotForNewLogin(cookies), 'clearml_kc_tx_0', 'all taken in the same second: the first')
  t.equal(slotForNewLogin(cookies, a.state), 'clearml_kc_tx_1', 'never the slot of the login being completed')
  t.equal(slotForNewLogin(cookies, 'a state of no slot'), 'clearml_kc_tx_0')
})

t.test('environment reading skips undefined values and bare prefixes', async (t) => {
  t.strictSame([...readClearmlEnv({ CLEARML__a: undefined, CLEARML__b: '1' }).keys()], ['b'])
})

t.test('whitelist look-up of an address without a domain', async (t) => {
  const directory = new MemoryDirectory()
  directory.addWhitelistEntry({ domain: 'acme.com', company: 'c' })
  t.equal(await directory.findWhitelistEntry('no-at-sign'), null)
})

t.test('callJson: empty bodies, missing content type', async (t) => {
  const server = createServer((req, res) => {
    if (req.url === '/empty') res.writeHead(204).end()
    else res.writeHead(200).end('{"a":1}')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  t.strictSame(await callJson(`${base}/empty`, { timeoutMs: 1000, what: 'x' }), { status: 204, contentType: '', body: '' })
  t.strictSame((await callJson(`${base}/plain`, { timeoutMs: 1000, what: 'x' })).body, '{"a":1}', 'without a JSON content type, the text is kept')
  await t.rejects(callJson('http://127.0.0.1:1/', { timeoutMs: 1000, what: 'x' }), { code: 'idp_unavailable', message: 'x could not be reached' })
})

t.test('callJson retries once when a kept-alive socket was closed by the server', async (t) => {
  const perSocket = new WeakMap<object, number>()
  let connections = 0
  const server = createServer((req, res) => {
    const seen = (perSocket.get(req.socket) ?? 0) + 1
    perSocket.set(req.socket, seen)
    // The second request on a socket finds it closed, as after the server's idle time-out.
    if (seen === 2 || req.url === '/always-reset') req.socket.destroy()
    else res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
  })
  server.on('connection', () => { connections++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  t.strictSame((await callJson(`${base}/a`, { timeoutMs: 1000, what: 'x' })).body, { ok: true })
  t.strictSame((await callJson(`${base}/b`, { timeoutMs: 1000, what: 'x' })).body, { ok: true }, 'the reset reused socket is retried on a new one')
  t.equal(connections, 2)
  await t.rejects(callJson(`${base}/always-reset`, { timeoutMs: 1000, what: 'x' }), { code: 'idp_unavailable' }, 'a reset on a fresh socket is not retried')
})

t.test('callJson over https verifies the certificate: a self-signed Keycloak is refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kc-tls-'))
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' })
  const server = createHttpsServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }, (req, res) => res.end('{}'))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  await t.rejects(callJson(`https://127.0.0.1:${(server.address() as AddressInfo).port}/certs`, { timeoutMs: 2000, what: 'key set (jwks)' }), { code: 'idp_unavailable', message: 'key set (jwks) could not be reached' })
})

t.test('error handler: unexpected errors are logged and answered in the envelope', async (t) => {
  t.equal(toSsoError(new SsoError('idp_error')).code, 'idp_error')
  t.equal(toSsoError(Object.assign(new Error('x'), { statusCode: 415 }) as never).code, 'bad_request')
  const lines: string[] = []
  const app = Fastify({ logger: { stream: { write: (l: string) => { lines.push(l) } } } })
  app.setErrorHandler(ssoErrorHandler)
  app.get('/bug', { config: { endpoint: 'test.bug' } }, async () => { throw new TypeError('a bug') })
  const answer = await app.inject({ method: 'GET', url: '/bug' })
  t.equal(answer.statusCode, 500)
  t.match(answer.json(), { meta: { endpoint: { name: 'test.bug' }, result_msg: 'internal_error' }, data: { error: 'internal_error' } })
  t.match(lines.join(''), /Keycloak SSO: unexpected error.*|a bug/)
  await app.close()
})

/** A certs endpoint that publishes `keys` or fails on demand, counting requests. */
async function certsEndpoint (t: Test): Promise<{ url: string, keys: JWK[], failing: boolean, requests: number }> {
  const endpoint = { url: '', keys: [] as JWK[], failing: false, requests: 0 }
  const server = createServer((req, res) => {
    endpoint.requests++
    if (endpoint.failing) res.writeHead(503, { 'content-type': 'text/plain' }).end('down')
    else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: endpoint.keys }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  endpoint.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/certs`
  return endpoint
}

async function signingKey (kid: string): Promise<{ jwk: JWK, sign: () => Promise<string> }> {
  const { publicKey, privateKey } = await generateKeyPair('RS256')
  const jwk = { ...await exportJWK(publicKey), kid, alg: 'RS256', use: 'sig' }
  return { jwk, sign: async () => await new SignJWT({ sub: 'kc-1' }).setProtectedHeader({ alg: 'RS256', kid }).setIssuedAt().setExpirationTime('5m').sign(privateKey) }
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

t.test('security review #22, 4: a failed key-set load backs off, a failed refresh keeps the previous set, a login never waits', async (t) => {
  const endpoint = await certsEndpoint(t)
  const k1 = await signingKey('k1')
  endpoint.keys = [k1.jwk]
  const keySet = new RemoteKeySet({ url: async () => endpoint.url, timeoutMs: 2000, maxAgeMs: 150, cooldownMs: 1000 })
  const verifies = async (token: string, getKey = keySet.getUntrustedKey): Promise<boolean> => (await jwtVerify(token, getKey)).payload.sub === 'kc-1'
  const token = await k1.sign()

  t.ok(await verifies(token), 'a genuine token verifies')
  t.equal(endpoint.requests, 1)
  endpoint.failing = true
  await sleep(200)
  t.ok(await verifies(token), 'past its maximum age, with the endpoint failing: the keys in memory still verify it')
  t.equal(endpoint.requests, 2, 'after one attempt to refresh')
  for (let i = 0; i < 50; i++) t.ok(await verifies(token, i % 2 === 0 ? keySet.getUntrustedKey : keySet.getKey), `again (${i})`)
  t.equal(endpoint.requests, 2, 'and no more attempts while backing off, whichever channel asks')

  // A rotation during the outage: the login's token names a key the set lacks, and is not held off.
  const k2 = await signingKey('k2')
  await t.rejects(verifies(await k2.sign(), keySet.getKey), { code: 'idp_unavailable' }, 'a login\'s unknown kid reloads at once, even backing off; Keycloak still fails')
  t.equal(endpoint.requests, 3)
  endpoint.failing = false
  endpoint.keys = [k2.jwk, k1.jwk]
  t.ok(await verifies(await k2.sign(), keySet.getKey), 'Keycloak answers again: the login\'s reload goes at once')
  t.equal(endpoint.requests, 4)
  t.ok(await verifies(token), 'and the set is fresh for every channel')
  t.equal(endpoint.requests, 4)

  endpoint.failing = true
  await sleep(200)
  t.ok(await verifies(token), 'a second outage: the previous set again')
  t.equal(endpoint.requests, 5)
  await sleep(1050)
  t.ok(await verifies(token), 'after the back-off, one more attempt, and the previous set still')
  t.equal(endpoint.requests, 6)
})

t.test('key set never loaded and the endpoint failing: unauthenticated channels back off, logins do not', async (t) => {
  const endpoint = await certsEndpoint(t)
  const k1 = await signingKey('k1')
  endpoint.keys = [k1.jwk]
  endpoint.failing = true
  const keySet = new RemoteKeySet({ url: async () => endpoint.url, timeoutMs: 2000, cooldownMs: 10_000 })
  const token = await k1.sign()
  const message = /^key set \(jwks\) answered HTTP 503 without a key set at http:\/\/127\.0\.0\.1:\d+\/certs/
  for (let i = 0; i < 100; i++) await t.rejects(jwtVerify(token, keySet.getUntrustedKey), { code: 'idp_unavailable', message }, `forged or not, refused as Keycloak being unavailable (${i})`)
  t.equal(endpoint.requests, 1, '100 tokens from unauthenticated channels: one request')
  await t.rejects(jwtVerify(token, keySet.getKey), { code: 'idp_unavailable' }, 'a login asks at once')
  t.equal(endpoint.requests, 2)
  endpoint.failing = false
  await t.rejects(jwtVerify(token, keySet.getUntrustedKey), { code: 'idp_unavailable' }, 'unauthenticated channels wait out the back-off')
  t.equal(endpoint.requests, 2)
  t.equal((await jwtVerify(token, keySet.getKey)).payload.sub, 'kc-1', 'a login loads the set as soon as Keycloak answers')
  t.equal((await jwtVerify(token, keySet.getUntrustedKey)).payload.sub, 'kc-1', 'and every channel then uses it')
  t.equal(endpoint.requests, 3)

  const broken = new RemoteKeySet({ url: async () => { throw new TypeError('no URL') }, timeoutMs: 2000 })
  await t.rejects(jwtVerify(token, broken.getUntrustedKey), TypeError, 'a failure that is not Keycloak\'s passes through')
  await t.rejects(jwtVerify(token, broken.getUntrustedKey), { code: 'idp_unavailable', message: 'key set (jwks) could not be loaded: its last load failed' }, 'and backs off too')
})

t.test('revocation store: a full store forgets the revocations of the owner holding the most, and refuses only that owner\'s older sessions, until they have expired', async (t) => {
  let clock = 1_800_000_000
  t.capture(Date, 'now', () => clock * 1000)
  const store = new MemoryRevocationStore({ max: 4 })
  const issued = clock - 10
  await store.revoke('m1', clock + 100, 'mallory')
  await store.revoke('m2', clock + 100, 'mallory')
  await store.revoke('m3', clock + 200, 'mallory')
  await store.revoke('b1', clock + 100, 'bob')
  await store.revoke('m4', clock + 100, 'mallory')
  t.equal(store.refusedUntil, Number.NEGATIVE_INFINITY, 'nobody else is refused')
  t.equal(store.refusedUntilFor('mallory'), clock, 'mallory\'s sessions issued until now are')
  for (const id of ['m1', 'm2', 'm3', 'm4']) t.equal(store.isRevoked(id, issued, 'mallory'), true, `${id} stays refused`)
  t.equal(store.isRevoked('m-other', issued, 'mallory'), true, 'so does any older session of mallory\'s')
  t.equal(store.isRevoked('m-new', clock + 1, 'mallory'), false, 'a later one is accepted')
  t.equal(store.isRevoked('b1', issued, 'bob'), true, 'bob\'s revocation was kept')
  t.equal(store.isRevoked('b-other', issued, 'bob'), false, 'and bob\'s other sessions accepted')
  t.equal(store.isRevoked('anyone', issued), true, 'a session asked about without its owner may be one of mallory\'s: refused')
  t.equal(store.isRevoked('anyone', clock + 1), false, 'unless issued after the store forgot')
  clock += 201
  t.equal(store.isRevoked('m-other', issued, 'mallory'), false, 'once every session it covered has expired, the refusal ends')
  t.equal(store.refusedUntilFor('mallory'), Number.NEGATIVE_INFINITY)
  await store.revoke('x1', clock + 100, 'x')
  await store.revoke('x2', clock + 100, 'x')
  await store.revoke('x3', clock + 100, 'x')
  await store.revoke('y1', clock + 100, 'y')
  await store.revoke('x4', clock + 100, 'x')
  t.equal(store.refusedUntilFor('x'), clock, 'a second forgetting works the same')
  clock += 201
  for (const id of ['z1', 'z2', 'z3']) await store.revoke(id, clock + 100, 'z')
  await store.revoke('w1', clock + 100, 'w')
  await store.revoke('z4', clock + 100, 'z')
  t.equal(store.refusedUntilFor('x'), Number.NEGATIVE_INFINITY, 'a refusal whose sessions have all expired is dropped when the store next forgets')
  t.equal(store.refusedUntilFor('z'), clock)
})

t.test('revocation store: a revocation made twice keeps the later expiry', async (t) => {
  let clock = 1_800_000_000
  t.capture(Date, 'now', () => clock * 1000)
  const store = new MemoryRevocationStore()
  await store.revoke('s', clock + 100, 'u')
  await store.revoke('s', clock + 10, 'u')
  clock += 50
  t.equal(store.isRevoked('s', clock - 60, 'u'), true, 'a shorter second expiry does not shorten the first')
  await store.revoke('s', clock + 100, 'u')
  clock += 80
  t.equal(store.isRevoked('s', clock - 200, 'u'), true, 'a longer one lengthens it')
  t.equal(store.size, 1, 'one revocation, however often made')
})

t.test('revocation store: which owners a full store forgets, exactly', async (t) => {
  let clock = 1_800_000_000
  t.capture(Date, 'now', () => clock * 1000)
  const warnings: Array<{ object: Record<string, unknown>, message: string }> = []
  const log = { warn: (object: Record<string, unknown>, message: string) => { warnings.push({ object, message }) } }

  // The owner holding the most goes first, wherever it stands in the order of arrival.
  const most = new MemoryRevocationStore({ max: 4, log })
  await most.revoke('a1', clock + 100, 'a')
  await most.revoke('b1', clock + 100, 'b')
  await most.revoke('b2', clock + 100, 'b')
  await most.revoke('b3', clock + 100, 'b')
  await most.revoke('c1', clock + 100, 'c')
  t.equal(most.refusedUntilFor('b'), clock, 'b held the most: forgotten')
  t.equal(most.refusedUntilFor('a'), Number.NEGATIVE_INFINITY, 'a, first to arrive, kept')
  t.equal(most.isRevoked('a1', clock - 1, 'a'), true)
  t.strictSame(warnings, [{
    object: { forgotten: 3, owners: 1 },
    message: 'fastify-clearml-keycloak: the in-memory revocation store held 4 live revocations (its bound); it forgot 3 of the 1 user(s) holding the most, whose sessions issued until now must log in again. Share a RedisRevocationStore, or raise "max".'
  }], 'said once, with what was forgotten')

  // At least a tenth of the bound at once: with a bound of 20, two owners of one revocation each.
  const tenth = new MemoryRevocationStore({ max: 20 })
  for (let i = 0; i < 20; i++) await tenth.revoke(`s${i}`, clock + 100, `u${i}`)
  await tenth.revoke('s20', clock + 100, 'u20')
  t.strictSame(Array.from({ length: 21 }, (_, i) => tenth.refusedUntilFor(`u${i}`) === clock), [true, true, ...Array(19).fill(false)], 'the first two, and no more')
  t.equal(tenth.size, 19)

  // An owner's index follows its revocations as they expire: a part expired, the rest still counts.
  const index = new MemoryRevocationStore({ max: 4 })
  await index.revoke('a1', clock + 5, 'a')
  await index.revoke('a2', clock + 100, 'a')
  await index.revoke('a3', clock + 100, 'a')
  await index.revoke('b1', clock + 100, 'b')
  clock += 10
  await index.revoke('b2', clock + 100, 'b')
  await index.revoke('c1', clock + 100, 'c')
  t.equal(index.refusedUntilFor('a'), clock, 'a, with two live revocations left and first to arrive, is forgotten')
  t.equal(index.refusedUntilFor('b'), Number.NEGATIVE_INFINITY)

  // Refusals outlive later forgettings while their sessions may live; they end exactly at their expiry.
  const lasting = new MemoryRevocationStore({ max: 2 })
  await lasting.revoke('x1', clock + 100, 'x')
  await lasting.revoke('x2', clock + 100, 'x')
  await lasting.revoke('y1', clock + 200, 'y')
  const forgotAt = clock
  clock += 50
  await lasting.revoke('y2', clock + 200, 'y')
  await lasting.revoke('z1', clock + 200, 'z')
  t.equal(lasting.refusedUntilFor('y'), clock, 'y forgotten in turn')
  t.equal(lasting.isRevoked('x-older', forgotAt - 1, 'x'), true, 'and x still refused meanwhile')
  t.equal(lasting.isRevoked('x-then', forgotAt, 'x'), true, 'a session issued in the very second it forgot, too')
  t.equal(lasting.isRevoked('x-unknown'), true, 'a session asked about without owner or issue time: refused')
  t.equal(lasting.isRevoked('x-no-time', undefined, 'x'), true, 'an owner\'s session without issue time: refused')
  t.equal(lasting.isRevoked('anyone', clock, undefined), true, 'without an owner, issued in the second of the latest forgetting: refused')
  clock = forgotAt + 100
  t.equal(lasting.isRevoked('x-older', forgotAt - 1, 'x'), false, 'at the latest expiry of what it forgot, x\'s refusal ends')
})

t.test('revocation store: sessions that follow Keycloak, by the follow-store contract', async (t) => {
  const store = new MemoryRevocationStore()
  await followStoreContract(t, async () => [store, store, store])
})

t.test('revocation store: a bound on what follows Keycloak revokes the session whose revision it drops', async (t) => {
  const store = new MemoryRevocationStore({ maxFollowed: 1 })
  const later = Date.now() / 1000 + 3600
  const identity = { company: 'c', user: 'u1', user_name: 'U', role: 'user', company_name: 'C' }
  await store.revise('s1', { version: 1, identity }, later)
  await store.revise('s2', { version: 1, identity: { ...identity, user: 'u2' } }, later)
  t.equal(store.revision('s1'), undefined, 'the older revision dropped')
  t.equal(store.isRevoked('s1', Math.floor(Date.now() / 1000), 'u1'), true, 'and its session revoked')
  t.equal(store.isRevoked('s2', Math.floor(Date.now() / 1000), 'u2'), false)
})
