/**
 * The small single-purpose modules, each against the cases its callers rely on.
 */
import t from 'tap'
import { createServer } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import { MemoryRevocationStore } from '../index.js'
import { OnceClaims } from '../lib/revocations.js'
import { readClearmlEnv } from '../lib/clearml-env.js'
import { callJson } from '../lib/http.js'
import { MemoryDirectory } from '../lib/memory-directory.js'
import { safeReturnPath, sameOriginUrl } from '../lib/redirects.js'
import { Sealer } from '../lib/sealed.js'
import { SessionTokens } from '../lib/session.js'
import { TransactionCodec } from '../lib/transaction.js'
import { ssoErrorHandler, toSsoError } from '../plugins/error-handler.js'
import { SsoError } from '../lib/errors.js'

t.test('return path after login: only same-origin relative paths, everything else is /', async (t) => {
  const rows: Array<[unknown, string]> = [
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
    [undefined, '/'],
    [42, '/'],
    ['', '/']
  ]
  for (const [input, expected] of rows) t.equal(safeReturnPath(input), expected, JSON.stringify(input))
})

t.test('post-logout redirect: the web app\'s origin only', async (t) => {
  const webapp = 'https://clearml.example.com'
  const fallback = 'https://clearml.example.com/login'
  const rows: Array<[unknown, string]> = [
    ['https://clearml.example.com/bye', 'https://clearml.example.com/bye'],
    ['/bye', 'https://clearml.example.com/bye'],
    ['https://clearml.example.com.evil.example/', fallback],
    ['//evil.example/', fallback],
    ['http://clearml.example.com/bye', fallback],
    ['/\\evil.example', fallback],
    ['https://[bad', fallback],
    ['', fallback],
    [undefined, fallback],
    ['/' + 'a'.repeat(3000), fallback]
  ]
  for (const [input, expected] of rows) t.equal(sameOriginUrl(input, webapp, fallback), expected, JSON.stringify(input))
})

t.test('revocation store: revoked until the session would expire; a full store fails closed and says so once', async (t) => {
  const warnings: Array<{ object: Record<string, unknown>, message: string }> = []
  const log = { warn: (object: Record<string, unknown>, message: string) => { warnings.push({ object, message }) } }
  const store = new MemoryRevocationStore({ max: 3, log })
  const now = Math.floor(Date.now() / 1000)
  const later = now + 60
  await store.revoke('a', later)
  t.equal(store.isRevoked('a', now), true)
  t.equal(store.isRevoked('b', now), false)
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
  t.equal(store.isRevoked('fresh', store.refusedUntil + 1), false, 'a session issued afterwards is accepted')
  await store.revoke('e', later)
  await store.revoke('f', later)
  await store.revoke('g', later)
  t.equal(warnings.length, 1, 'said once in the log, however often it happens')
  t.match(warnings[0].message, /every session issued until now must log in again/)
  t.match(warnings[0].object, { forgotten: 3 })

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
  const emitted: string[] = []
  const listener = (warning: Error) => { emitted.push(warning.message) }
  process.on('warning', listener)
  t.teardown(() => { process.off('warning', listener) })
  const store = new MemoryRevocationStore({ max: 1 })
  const later = Math.floor(Date.now() / 1000) + 60
  await store.revoke('a', later)
  await store.revoke('b', later)
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(emitted.length, 1)
  t.match(emitted[0], /must log in again/)
  store.useLog({ warn: () => { t.fail('already warned') } })
})

t.test('revocation store: claims once, values taken once, both bounded', async (t) => {
  const store = new MemoryRevocationStore({ maxClaims: 2, maxValues: 2 })
  const later = Date.now() / 1000 + 60
  t.equal(await store.claimOnce('s1', later), true)
  t.equal(await store.claimOnce('s1', later), false, 'a second claim of the same key is refused')
  t.equal(await store.claimOnce('s2', later), true)
  t.equal(await store.claimOnce('s3', later), true, 'full: the oldest claim makes room')
  t.equal(await store.claimOnce('s3', later), false)
  t.equal(await store.claimOnce('short', Date.now() / 1000 + 0.05), true)
  await new Promise((resolve) => setTimeout(resolve, 80))
  t.equal(await store.claimOnce('short', later), true, 'an expired claim can be claimed again')

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

t.test('login transaction: sealed, claimed once, expires', async (t) => {
  const claims = new OnceClaims()
  const codec = new TransactionCodec('secret', async (key, exp) => claims.claim(key, exp))
  const make = () => codec.create({ redirectUri: 'https://x/callback_keycloak', returnTo: '/p' })
  const tx = make()
  const sealed = await codec.seal(tx)
  t.notMatch(sealed, tx.verifier, 'the PKCE verifier is not readable in the cookie')
  t.same(await codec.consume(sealed, tx.state), tx)
  await t.rejects(codec.consume(sealed, tx.state), { code: 'invalid_state', message: /already used/ })
  const other = make()
  await t.rejects(codec.consume(await codec.seal(other), tx.state), { code: 'invalid_state', message: /state does not match/ })
  await t.rejects(codec.consume(undefined, tx.state), { code: 'invalid_state', message: /no login transaction cookie/ })
  await t.rejects(codec.consume('', tx.state), { code: 'invalid_state' })
  const foreign = new TransactionCodec('other-secret', async () => true)
  await t.rejects(codec.consume(await foreign.seal(make()), tx.state), { message: /not valid/ }, 'sealed with another secret')
  const expired = await new Sealer('secret', 'login-transaction').seal({ tx: make() }, -30)
  await t.rejects(codec.consume(expired, 'x'), { code: 'invalid_state', message: /expired/ })

  const seen: Array<[string, number]> = []
  const recording = new TransactionCodec('secret', async (key, exp) => { seen.push([key, exp]); return true })
  const next = make()
  await recording.consume(await recording.seal(next), next.state)
  t.equal(seen[0][0], next.state, 'the claim is made with the login\'s state')
  t.ok(Math.abs(seen[0][1] - (Date.now() / 1000 + 600)) < 5, 'until the transaction expires')

  const broken = new TransactionCodec('secret', async () => { throw new Error('store down') })
  const last = make()
  await t.rejects(broken.consume(await broken.seal(last), last.state), { code: 'directory_error' }, 'a failing store refuses the login, it does not let it through')
})

t.test('environment reading skips undefined values and bare prefixes', async (t) => {
  t.same([...readClearmlEnv({ CLEARML__a: undefined, CLEARML__b: '1' }).keys()], ['b'])
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
  t.same(await callJson(`${base}/empty`, { timeoutMs: 1000, what: 'x' }), { status: 204, contentType: '', body: '' })
  t.same((await callJson(`${base}/plain`, { timeoutMs: 1000, what: 'x' })).body, '{"a":1}', 'without a JSON content type, the text is kept')
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
  t.same((await callJson(`${base}/a`, { timeoutMs: 1000, what: 'x' })).body, { ok: true })
  t.same((await callJson(`${base}/b`, { timeoutMs: 1000, what: 'x' })).body, { ok: true }, 'the reset reused socket is retried on a new one')
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
