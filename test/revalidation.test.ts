/**
 * The pieces of sessions that follow Keycloak (SPEC section 12), one by one: the refresh grant's
 * answers sorted (against small token endpoints of our own over HTTP), the revalidation's rules
 * (leases, outages, what it does with each answer) on a store in memory, and that store's bounds.
 * The whole, against the Keycloak-like provider, is test/follow.test.ts.
 */
import t, { type Test } from 'tap'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { refreshTokens, revokeRefreshToken, loggableDescription, type RefreshAnswer } from '../lib/keycloak/refresh.js'
import { MemoryFollowStore } from '../lib/session/memory-follow-store.js'
import { REFRESH_PURPOSE, SessionRevalidation, type Confirmation, type RevalidationOptions } from '../lib/session/revalidation.js'
import { RevisionSigner, ServerSealer } from '../lib/session/sealed.js'
import { SessionTokens, type VerifiedSession } from '../lib/session/sessions.js'
import type { SessionFollowStore } from '../lib/session/follow-store.js'
import { MemoryRevocationStore } from '../index.js'
import { harness as hostileHarness, KC as HOSTILE_KC, login as hostileLogin } from './helpers/hostile-harness.js'
import { newKey, type Answer as HostileAnswer, type HostileIdp } from './helpers/hostile-idp.js'

const CLIENT = { clientId: 'clearml', clientSecret: 'secret', timeoutMs: 500 }
const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }
const nowSec = (): number => Date.now() / 1000

/** A token endpoint of our own that answers what `answer` says, over HTTP. */
async function endpoint (t: Test, answer: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<string> {
  const server = createServer((req, res) => {
    let body = ''
    req.on('data', (chunk) => { body += String(chunk) })
    req.on('end', () => { answer(req, res, body) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`
}

const json = (res: ServerResponse, status: number, body: unknown): void => { res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body)) }

t.test('refresh answers, sorted: ok, refused (invalid_grant), misconfigured (the client, or no token), unavailable', async (t) => {
  const seen: string[] = []
  const cases: Array<[string, (res: ServerResponse) => void, Partial<RefreshAnswer>]> = [
    ['tokens, rotated', (res) => json(res, 200, { access_token: 'a', id_token: 'i', refresh_token: 'r2', token_type: 'Bearer' }), { kind: 'ok', accessToken: 'a', idToken: 'i', refreshToken: 'r2' }],
    ['an access token only (no openid scope, no rotation)', (res) => json(res, 200, { access_token: 'a', token_type: 'bearer' }), { kind: 'ok', accessToken: 'a' }],
    ['invalid_grant', (res) => json(res, 400, { error: 'invalid_grant', error_description: 'User disabled' }), { kind: 'refused', reason: '"User disabled"' }],
    ['invalid_grant without a description', (res) => json(res, 400, { error: 'invalid_grant' }), { kind: 'refused', reason: '(no description)' }],
    ['the client refused', (res) => json(res, 401, { error: 'invalid_client' }), { kind: 'misconfigured', reason: 'token endpoint refused the refresh: HTTP 401, error invalid_client' }],
    ['a 200 without an access token', (res) => json(res, 200, { token_type: 'Bearer' }), { kind: 'misconfigured' }],
    ['another token type', (res) => json(res, 200, { access_token: 'a', token_type: 'mac' }), { kind: 'misconfigured' }],
    ['an HTML error page', (res) => { res.writeHead(404, { 'content-type': 'text/html' }).end('<h1>no</h1>') }, { kind: 'misconfigured', reason: 'token endpoint refused the refresh: HTTP 404, error (absent or malformed)' }],
    ['a 200 that is not JSON', (res) => { res.writeHead(200, { 'content-type': 'text/plain' }).end('ok') }, { kind: 'misconfigured' }],
    ['a 503', (res) => json(res, 503, { error: 'temporarily_unavailable' }), { kind: 'unavailable', reason: 'token endpoint answered HTTP 503', answered: true }],
    ['a reset', (res) => { res.socket!.destroy() }, { kind: 'unavailable', answered: false }]
  ]
  let current = cases[0][1]
  const url = await endpoint(t, (req, res, body) => { seen.push(`${req.headers.authorization ?? ''} ${body}`); current(res) })
  for (const [name, answer, expected] of cases) {
    current = answer
    t.match(await refreshTokens(url, 'r1', CLIENT), expected, name)
  }
  t.match(seen[0], /^Basic Y2xlYXJtbDpzZWNyZXQ= grant_type=refresh_token&refresh_token=r1$/, 'client_secret_basic and the refresh grant')
  t.match(await refreshTokens('http://127.0.0.1:1/token', 'r1', CLIENT), { kind: 'unavailable', answered: false }, 'nobody listening')
  const hung = await endpoint(t, () => {})
  t.match(await refreshTokens(hung, 'r1', CLIENT), { kind: 'unavailable', reason: /timed out after 500 ms/, answered: false }, 'a hung endpoint, bounded by http_timeout_ms')
  t.equal(loggableDescription('line\none'), '"line one"', 'a description on one line, quoted')
  t.equal(loggableDescription('x'.repeat(500)).length, 202, 'bounded')
})

t.test('revocation (RFC 7009): 200 revokes, anything else is reported', async (t) => {
  const bodies: string[] = []
  let status = 200
  const url = await endpoint(t, (_req, res, body) => { bodies.push(body); json(res, status, status === 200 ? {} : { error: 'invalid_client' }) })
  await revokeRefreshToken(url, 'r1', CLIENT)
  t.strictSame(bodies, ['token=r1&token_type_hint=refresh_token'])
  status = 401
  await t.rejects(revokeRefreshToken(url, 'r1', CLIENT), { code: 'idp_unavailable', message: 'revocation endpoint answered HTTP 401, error invalid_client' })
  const page = await endpoint(t, (_req, res) => { res.writeHead(502, { 'content-type': 'text/html' }).end('<h1>Bad gateway</h1>') })
  await t.rejects(revokeRefreshToken(page, 'r1', CLIENT), { code: 'idp_unavailable', message: 'revocation endpoint answered HTTP 502, error (absent or malformed)' })
})

/** A session as `SessionTokens` builds it, following Keycloak, issued `ageSec` ago. */
function followedSession (id: string, ageSec = 0, role = 'user'): VerifiedSession {
  const iat = Math.floor(nowSec() - ageSec)
  return {
    claims: { auth_type: 'Bearer', identity: { company: 'c', user: 'u1', user_name: 'U', role, company_name: 'C' }, session_id: id, sso: { provider: 'keycloak', sid: 'kc', follows: 'user' }, iat, exp: iat + 3600 },
    identity: Object.freeze({ company: 'c', user: 'u1', user_name: 'U', role, company_name: 'C', session_id: id, exp: iat + 3600, credential: 'session' as const })
  }
}

interface Harness {
  revalidation: SessionRevalidation
  store: MemoryFollowStore
  ended: Array<{ id: string, reason: string, first: boolean }>
  refreshes: string[]
  warnings: string[]
  infos: string[]
}

function harness (options: { store?: SessionFollowStore & MemoryFollowStore, refresh?: (token: string) => Promise<RefreshAnswer>, confirm?: RevalidationOptions['confirm'], periodSec?: number, memoryMax?: number, sealer?: ServerSealer } = {}): Harness {
  const ended: Harness['ended'] = []
  const refreshes: string[] = []
  const warnings: string[] = []
  const infos: string[] = []
  const store = options.store ?? new MemoryFollowStore({ revoke: async () => {} })
  const confirmed: Confirmation = { kind: 'confirmed', identity: { company: 'c', user: 'u1', user_name: 'U', role: 'user', company_name: 'C' }, changed: [] }
  const revalidation = new SessionRevalidation({
    periodSec: options.periodSec ?? 1,
    store,
    sealer: options.sealer ?? new ServerSealer('secret', REFRESH_PURPOSE),
    signer: new RevisionSigner('secret'),
    refresh: options.refresh ?? (async (token) => { refreshes.push(token); return { kind: 'ok', accessToken: 'a', refreshToken: `${token}+` } }),
    confirm: options.confirm ?? (async () => confirmed),
    end: async (session, reason, first) => { ended.push({ id: session.claims.session_id, reason, first }) },
    log: { warn: (_object: unknown, message: string) => { warnings.push(message) }, info: (_object: unknown, message: string) => { infos.push(message) } } as never,
    timeoutMs: 300,
    memoryMax: options.memoryMax
  })
  return { revalidation, store, ended, refreshes, warnings, infos }
}

const key = (id: string): { session: string, keycloakSession: string } => ({ session: id, keycloakSession: 'kc' })

t.test('admit: not due, due (in the background), idle past twice the period (waits)', async (t) => {
  const h = harness()
  const fresh = followedSession('s-fresh')
  await h.revalidation.keep(key('s-fresh'), 'sub-1', 'rt-1', fresh.claims.exp)
  t.equal(h.revalidation.admit(fresh), true, 'checked at its login: answered')
  t.strictSame(h.refreshes, [], 'and nothing presented')

  // Checked 1.5 periods ago: answered now, revalidated in the background.
  const due = followedSession('s-due')
  await h.revalidation.keep(key('s-due'), 'sub-1', 'rt-due', due.claims.exp, nowSec() - 1.5)
  t.equal(h.revalidation.admit(due), true)
  await sleep(50)
  t.strictSame(h.refreshes, ['rt-due'], 'presented once, in the background')
  t.equal(h.revalidation.admit(due), true, 'then fresh again')

  const idle = followedSession('s-idle')
  await h.revalidation.keep(key('s-idle'), 'sub-1', 'rt-idle', idle.claims.exp, nowSec() - 5)
  t.equal(h.revalidation.admit(idle), false, 'idle for more than twice the period: the request waits')
  await h.revalidation.settle(idle)
  t.strictSame(h.refreshes, ['rt-due', 'rt-idle'])
  t.equal(h.revalidation.admit(idle), true, 'and is answered once checked')
  const rotated = await h.store.leaseRefresh(key('s-idle'), { dueBefore: nowSec() + 10, leaseMs: 1000 })
  t.match(rotated, { status: 'leased', state: { generation: 2 } }, 'the rotated token replaced the presented one')
})

t.test('a session without a Keycloak session id is kept and revalidated by its own id', async (t) => {
  const h = harness()
  const session = followedSession('s-nosid')
  const claims = { ...session.claims, sso: { provider: 'keycloak', follows: 'user' as const } }
  const bare: VerifiedSession = { ...session, claims }
  await h.revalidation.keep({ session: 's-nosid' }, 'sub', 'rt-nosid', claims.exp, nowSec() - 5)
  await h.revalidation.settle(bare)
  t.strictSame(h.refreshes, ['rt-nosid'])
})

t.test('a session this process never saw counts as checked at its login; the store corrects that', async (t) => {
  const h = harness({ periodSec: 2 })
  // Issued 5 s ago (idle by its iat), checked 1 s ago by another replica: the store says fresh.
  const seen = followedSession('s-elsewhere', 5)
  await h.store.saveRefresh(key('s-elsewhere'), { sealed: 'x', checkedAt: nowSec() - 1, generation: 3 }, seen.claims.exp)
  t.equal(h.revalidation.admit(seen), false, 'by its iat it would be idle')
  await h.revalidation.settle(seen)
  t.strictSame(h.refreshes, [], 'the store said fresh: nothing presented')
  t.equal(h.revalidation.admit(seen), true, 'and this process now knows when it was checked')
})

t.test('concurrent requests of one session share one revalidation; at most 8 run in the background', async (t) => {
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const presented: string[] = []
  const h = harness({ refresh: async (token) => { presented.push(token); await gate; return { kind: 'ok', accessToken: 'a' } } })
  const sessions = Array.from({ length: 12 }, (_, i) => followedSession(`s-${i}`))
  for (const session of sessions) await h.revalidation.keep(key(session.claims.session_id), 'sub', `rt-${session.claims.session_id}`, session.claims.exp, nowSec() - 1.2)
  for (let i = 0; i < 5; i++) for (const session of sessions) t.equal(h.revalidation.admit(session), true)
  await sleep(50)
  t.equal(presented.length, 8, 'eight in the background, the others at a later request')
  t.equal(new Set(presented).size, 8, 'each presented once, however many requests')
  release()
  await sleep(50)
  for (const session of sessions) h.revalidation.admit(session)
  await sleep(50)
  t.equal(presented.length, 12, 'the rest at their next request')
  t.equal(new Set(presented).size, 12)
})

t.test('busy elsewhere: a background revalidation leaves it, a waiting request waits for its outcome (bounded)', async (t) => {
  const h = harness()
  const session = followedSession('s-busy')
  await h.revalidation.keep(key('s-busy'), 'sub', 'rt', session.claims.exp, nowSec() - 5)
  // Another replica holds the lease.
  const other = await h.store.leaseRefresh(key('s-busy'), { dueBefore: nowSec(), leaseMs: 10_000 })
  t.equal(other.status, 'leased')
  const started = Date.now()
  await h.revalidation.settle(session)
  t.ok(Date.now() - started >= 250, 'the waiting request waited (for http_timeout_ms at most)')
  t.strictSame(h.refreshes, [], 'and never presented the token itself')
  // The other replica finishes: the next look finds the session fresh.
  await h.store.releaseRefresh(key('s-busy'), (other as { lease: string }).lease, { sealed: 'y', checkedAt: nowSec(), generation: 2 })
  await h.revalidation.settle(session)
  t.equal(h.revalidation.admit(session), true)

  const polled = harness()
  const slow = followedSession('s-slow')
  await polled.revalidation.keep(key('s-slow'), 'sub', 'rt', slow.claims.exp, nowSec() - 5)
  const lease = await polled.store.leaseRefresh(key('s-slow'), { dueBefore: nowSec(), leaseMs: 10_000 })
  setTimeout(() => { polled.store.releaseRefresh(key('s-slow'), (lease as { lease: string }).lease, { sealed: 'z', checkedAt: nowSec(), generation: 2 }).catch(() => {}) }, 100)
  const waited = Date.now()
  await polled.revalidation.settle(slow)
  t.ok(Date.now() - waited < 290, 'released meanwhile: the waiting request goes on as soon as it sees it')
})

t.test('what ends a session: Keycloak\'s refusal, another replica\'s, a lost or unreadable token, the confirmation', async (t) => {
  const refused = harness({ refresh: async () => ({ kind: 'refused', reason: '"User disabled"' }) })
  const a = followedSession('s-a')
  await refused.revalidation.keep(key('s-a'), 'sub', 'rt', a.claims.exp, nowSec() - 5)
  await refused.revalidation.settle(a)
  t.strictSame(refused.ended, [{ id: 's-a', reason: 'Keycloak refused its refresh token: "User disabled"', first: true }])
  t.match(await refused.store.leaseRefresh(key('s-a'), { dueBefore: nowSec() + 10, leaseMs: 1000 }), { status: 'ended' }, 'marked ended in the store, for every replica')
  // Another process of the same store meets the mark.
  const other = harness({ store: refused.store })
  await other.revalidation.settle(followedSession('s-a', 5))
  t.match(other.ended, [{ id: 's-a', first: false }], 'ended there too, without saying Keycloak\'s reason again')

  const lost = harness()
  await lost.revalidation.settle(followedSession('s-lost', 5))
  t.match(lost.ended, [{ id: 's-lost', reason: /no longer kept/, first: true }], 'a session that follows Keycloak without a refresh state ends')

  const sealedElsewhere = harness({ sealer: new ServerSealer('another secret', REFRESH_PURPOSE) })
  await sealedElsewhere.revalidation.keep(key('s-old'), 'sub', 'rt', nowSec() + 3600, nowSec() - 5)
  const rotatedSecret = harness({ store: sealedElsewhere.store })
  await rotatedSecret.revalidation.settle(followedSession('s-old', 5))
  t.match(rotatedSecret.ended, [{ id: 's-old', reason: /does not open/ }], 'a token sealed with other secrets does not open: ended')
  t.strictSame(rotatedSecret.refreshes, [])

  const moved = harness()
  await moved.revalidation.keep(key('s-source'), 'sub', 'rt', nowSec() + 3600)
  const state = await moved.store.takeRefresh(key('s-source'))
  await moved.store.saveRefresh(key('s-target'), { ...state!, checkedAt: nowSec() - 5 }, nowSec() + 3600)
  await moved.revalidation.settle(followedSession('s-target', 5))
  t.match(moved.ended, [{ id: 's-target', reason: /does not open/ }], 'a state moved to another session does not open either')

  const userGone = harness({ confirm: async () => ({ kind: 'ended', reason: 'the ClearML user is gone' }) })
  await userGone.revalidation.keep(key('s-gone'), 'sub', 'rt', nowSec() + 3600, nowSec() - 5)
  await userGone.revalidation.settle(followedSession('s-gone', 5))
  t.match(userGone.ended, [{ id: 's-gone', reason: 'the ClearML user is gone', first: true }])
})

t.test('what keeps a session as it was: a refused client, tokens that do not verify, a failing store', async (t) => {
  const misconfigured = harness({ refresh: async () => ({ kind: 'misconfigured', reason: 'HTTP 401, error invalid_client' }) })
  const a = followedSession('s-m')
  await misconfigured.revalidation.keep(key('s-m'), 'sub', 'rt', a.claims.exp, nowSec() - 5)
  await misconfigured.revalidation.settle(a)
  t.strictSame(misconfigured.ended, [])
  t.match(misconfigured.warnings, [/refused this client's refresh/], 'the operator is told to check the client')
  t.match(await misconfigured.store.leaseRefresh(key('s-m'), { dueBefore: nowSec(), leaseMs: 1000 }), { status: 'leased', state: { generation: 1 } }, 'the lease released, the token kept')

  const unconfirmed = harness({ confirm: async () => ({ kind: 'unconfirmed', reason: 'access token rejected: ...' }) })
  await unconfirmed.revalidation.keep(key('s-u'), 'sub', 'rt', nowSec() + 3600, nowSec() - 5)
  await unconfirmed.revalidation.settle(followedSession('s-u', 5))
  t.strictSame(unconfirmed.ended, [])
  t.match(unconfirmed.warnings, [/could not be applied/])

  const failing = new MemoryFollowStore({ revoke: async () => {} })
  failing.leaseRefresh = async () => { throw new Error('store unreachable') }
  const broken = harness({ store: failing })
  await broken.revalidation.settle(followedSession('s-f', 5))
  await broken.revalidation.settle(followedSession('s-g', 5))
  t.strictSame(broken.ended, [])
  t.equal(broken.warnings.filter((message) => message.includes('revalidation failed')).length, 1, 'said once a minute at most')
})

t.test('an outage: no request waits, no new call before the back-off, one probe, then back', async (t) => {
  let answer: RefreshAnswer = { kind: 'unavailable', reason: 'timed out', answered: false }
  const presented: string[] = []
  const h = harness({ refresh: async (token) => { presented.push(token); return answer } })
  const sessions = Array.from({ length: 3 }, (_, i) => followedSession(`s-o${i}`))
  for (const session of sessions) await h.revalidation.keep(key(session.claims.session_id), 'sub', `rt-${session.claims.session_id}`, session.claims.exp, nowSec() - 5)
  await h.revalidation.settle(sessions[0])
  t.equal(presented.length, 1, 'the first idle session tried')
  t.match(h.warnings, [/does not answer refreshes/], 'the outage, said once')
  t.equal(h.revalidation.admit(sessions[1]), true, 'another idle session is answered without waiting')
  await h.revalidation.settle(sessions[2])
  await sleep(50)
  t.equal(presented.length, 1, 'and no new call is made during the back-off')
  // After the back-off (2 s) one probe, made by a request that does not wait for it.
  await sleep(2100)
  t.equal(h.revalidation.admit(sessions[1]), true)
  t.equal(h.revalidation.admit(sessions[2]), true)
  await sleep(50)
  t.equal(presented.length, 2, 'one probe')
  t.equal(h.warnings.length, 1, 'still one warning')
  answer = { kind: 'ok', accessToken: 'a' }
  // The back-off doubled (4 s): the next probe comes then, and it is answered.
  await sleep(4100)
  h.revalidation.admit(sessions[2])
  await sleep(50)
  t.match(h.infos, [/answers refreshes again/], 'back, said once')
  t.equal(h.revalidation.admit(sessions[1]), false, 'idle sessions wait for their check again')
})

t.test('a call hanging for more than a second: other requests do not wait on Keycloak meanwhile', async (t) => {
  let release: (answer: RefreshAnswer) => void = () => {}
  const h = harness({ refresh: async () => await new Promise<RefreshAnswer>((resolve) => { release = resolve }) })
  const [hanging, other] = [followedSession('s-h1'), followedSession('s-h2')]
  for (const session of [hanging, other]) await h.revalidation.keep(key(session.claims.session_id), 'sub', 'rt', session.claims.exp, nowSec() - 5)
  const first = h.revalidation.settle(hanging)
  await sleep(1100)
  t.equal(h.revalidation.admit(other), true, 'answered at once: Keycloak looks down')
  release({ kind: 'ok', accessToken: 'a' })
  await first
  t.equal(h.revalidation.admit(other), false, 'once the call is answered, idle sessions wait for their own check again')
})

t.test('logout: the refresh state removed and its token returned; every session of a Keycloak session', async (t) => {
  const h = harness()
  await h.revalidation.keep({ session: 's-1', keycloakSession: 'kc-1' }, 'sub', 'rt-1', nowSec() + 3600)
  await h.revalidation.keep({ session: 's-2', keycloakSession: 'kc-1' }, 'sub', 'rt-2', nowSec() + 3600)
  await h.revalidation.keep({ session: 's-3', keycloakSession: 'kc-2' }, 'sub', 'rt-3', nowSec() + 3600)
  t.equal(await h.revalidation.forget({ session: 's-3', keycloakSession: 'kc-2' }), 'rt-3')
  t.equal(await h.revalidation.forget({ session: 's-3', keycloakSession: 'kc-2' }), undefined, 'once')
  t.strictSame((await h.revalidation.forgetKeycloakSession('kc-1')).sort(), ['rt-1', 'rt-2'])
  t.strictSame(await h.revalidation.forgetKeycloakSession('kc-1'), [], 'once')
  t.equal(h.store.size, 0)
  await h.store.saveRefresh({ session: 's-4', keycloakSession: 'kc-4' }, { sealed: 'not sealed by us', checkedAt: nowSec(), generation: 1 }, nowSec() + 60)
  t.strictSame(await h.revalidation.forgetKeycloakSession('kc-4'), [], 'a state that does not open gives no token to revoke')
})

t.test('what a process remembers of last checks is bounded: two generations, the older dropped', async (t) => {
  const h = harness({ memoryMax: 4 })
  const sessions = Array.from({ length: 6 }, (_, i) => followedSession(`s-m${i}`, 10))
  for (const session of sessions) await h.revalidation.keep(key(session.claims.session_id), 'sub', 'rt', session.claims.exp)
  // The first two were pushed out of both generations: by their iat they are idle.
  t.equal(h.revalidation.admit(sessions[0]), false, 'forgotten: counted from its login again')
  t.equal(h.revalidation.admit(sessions[3]), true, 'the older generation is still asked')
  t.equal(h.revalidation.admit(sessions[5]), true)
})

t.test('memory store: generations, leases, ends, revisions, and its bounds fail closed', async (t) => {
  const revoked: Array<[string, string]> = []
  const store = new MemoryFollowStore({ maxStates: 2, maxRevisions: 2, revoke: async (id, _exp, owner) => { revoked.push([id, owner]) } })
  const later = nowSec() + 3600
  await store.saveRefresh(key('a'), { sealed: 'a2', checkedAt: 1, generation: 2 }, later)
  await store.saveRefresh(key('a'), { sealed: 'a1', checkedAt: 1, generation: 1 }, later)
  t.match(await store.leaseRefresh(key('a'), { dueBefore: 10, leaseMs: 1000 }), { status: 'leased', state: { sealed: 'a2' } }, 'a lower generation never replaces a higher one')
  const upgraded = new MemoryFollowStore({ revoke: async () => {} })
  await upgraded.saveRefresh(key('u'), { sealed: 'u1', checkedAt: 1, generation: 1 }, later)
  await upgraded.saveRefresh(key('u'), { sealed: 'u3', checkedAt: 1, generation: 3 }, later)
  t.match(await upgraded.leaseRefresh(key('u'), { dueBefore: 10, leaseMs: 1000 }), { status: 'leased', state: { sealed: 'u3' } }, 'a higher one does')
  t.match(await store.leaseRefresh(key('a'), { dueBefore: 10, leaseMs: 1000 }), { status: 'busy', checkedAt: 1 })
  t.equal(await store.releaseRefresh(key('a'), 'not-the-lease', { sealed: 'a3', checkedAt: 5, generation: 3 }), false, 'another caller\'s lease is not released')
  t.match(await store.leaseRefresh(key('a'), { dueBefore: 10, leaseMs: 1000 }), { status: 'busy' }, 'still held')
  t.match(await store.leaseRefresh(key('a'), { dueBefore: 5, leaseMs: 1000 }), { status: 'fresh', checkedAt: 5 }, 'but its rotated token was kept: never dropped')
  t.equal(await store.releaseRefresh(key('missing'), 'x'), false)
  await store.endRefresh(key('a'), later)
  t.equal(await store.releaseRefresh(key('a'), 'x', { sealed: 'a4', checkedAt: 9, generation: 9 }), false)
  t.match(await store.leaseRefresh(key('a'), { dueBefore: 10, leaseMs: 1000 }), { status: 'ended' }, 'an ended session stays ended')
  t.equal(await store.takeRefresh(key('a')), undefined, 'an end holds no token')
  await store.endRefresh(key('fresh-end'), later)
  t.match(await store.leaseRefresh(key('fresh-end'), { dueBefore: 10, leaseMs: 1000 }), { status: 'ended' })
  await store.saveRefresh(key('fresh-end'), { sealed: 'again', checkedAt: 1, generation: 5 }, later)
  t.match(await store.leaseRefresh(key('fresh-end'), { dueBefore: 10, leaseMs: 1000 }), { status: 'ended' }, 'a state saved after the end does not revive it')
  await store.saveRefresh(key('b'), { sealed: 'b', checkedAt: 1, generation: 1 }, later)
  await store.saveRefresh(key('c'), { sealed: 'c', checkedAt: 1, generation: 1 }, later)
  t.equal(store.size, 2, 'bounded: the oldest went')
  await store.saveRefresh(key('soon'), { sealed: 's', checkedAt: 1, generation: 1 }, nowSec() + 0.05)
  await sleep(80)
  t.match(await store.leaseRefresh(key('soon'), { dueBefore: 10, leaseMs: 1000 }), { status: 'absent' }, 'gone at its expiry')
  await store.saveRefresh(key('d'), { sealed: 'd', checkedAt: 1, generation: 1 }, nowSec() + 0.05)
  await sleep(80)
  await store.saveRefresh(key('e'), { sealed: 'e', checkedAt: 1, generation: 1 }, later)
  t.match(await store.leaseRefresh(key('c'), { dueBefore: 10, leaseMs: 1000 }), { status: 'leased' }, 'expired states make room first')

  const identity = (role: string): { company: string, user: string, user_name: string, role: string, company_name: string } => ({ company: 'c', user: `u-${role}`, user_name: 'U', role, company_name: 'C' })
  await store.revise('r1', { version: 2, identity: identity('user') }, later)
  await store.revise('r1', { version: 1, identity: identity('admin') }, later)
  t.match(store.revision('r1'), { version: 2, identity: { role: 'user' } }, 'a lower version never replaces a higher one')
  await store.revise('r2', { version: 1, identity: identity('annotator') }, later)
  await store.revise('r3', { version: 1, identity: identity('guest') }, later)
  t.equal(store.revision('r1'), undefined, 'bounded: the oldest revision went')
  t.strictSame(revoked, [['r1', 'u-user']], 'and its session was revoked rather than left to its token\'s old identity')
  const roomy = new MemoryFollowStore({ maxRevisions: 2, revoke: async (id, _exp, owner) => { revoked.push([id, owner]) } })
  await roomy.revise('r4', { version: 1, identity: identity('user') }, nowSec() + 0.05)
  await roomy.revise('r5', { version: 1, identity: identity('user') }, later)
  await sleep(80)
  await roomy.revise('r6', { version: 1, identity: identity('user') }, later)
  t.equal(roomy.revision('r4'), undefined, 'gone at its expiry')
  t.equal(roomy.revision('r5')?.version, 1, 'the live ones kept')
  t.equal(revoked.length, 1, 'room made by what expired: nothing live dropped, nothing revoked')
  const brief = new MemoryFollowStore({ revoke: async () => {} })
  await brief.revise('r7', { version: 1, identity: identity('user') }, nowSec() + 0.05)
  await sleep(80)
  t.equal(brief.revision('r7'), undefined, 'asked about after its expiry: gone')
})

/** A login at the scriptable provider, whose code grant gives a refresh token; the session cookie. */
async function followedLogin (h: Awaited<ReturnType<typeof hostileHarness>>): Promise<string> {
  const answer = await hostileLogin(h)
  t.equal(answer.location, '/', 'logged in')
  return answer.setCookie.find((cookie) => cookie.startsWith('clearml_token_basic='))!.split(';')[0]
}

/** The scriptable provider's token endpoint: a code grant gives `rt-1`; a refresh answers `refresh(form)`. */
function refreshWith (idp: HostileIdp, refresh: (form: URLSearchParams) => Promise<HostileAnswer>): void {
  idp.override.token = async (_req, body) => {
    const form = new URLSearchParams(body)
    if (form.get('grant_type') === 'refresh_token') return await refresh(form)
    const nonce = idp.nonces.get(form.get('code') ?? '') ?? idp.nonce
    return { body: { token_type: 'Bearer', id_token: await idp.sign(idp.idClaims(nonce)), access_token: await idp.sign(idp.accessClaims()), refresh_token: 'rt-1', expires_in: 300 } }
  }
}

const FOLLOW = { [`${HOSTILE_KC}session__revalidate_sec`]: '1' }

t.test('a refresh answered for another Keycloak user, in any of its tokens, ends the session; tokens that do not verify keep it', async (t) => {
  const cases: Array<[string, Record<string, string>, (idp: HostileIdp) => Promise<HostileAnswer>, number]> = [
    ['the access token names another subject', {}, async (idp) => ({ body: { token_type: 'Bearer', access_token: await idp.sign({ ...idp.accessClaims(), sub: 'someone-else' }) } }), 401],
    ['the ID token names another subject (a lightweight access token: the ID token is read)', {}, async (idp) => {
      const { preferred_username: _username, email: _email, ...lightweight } = idp.accessClaims()
      return { body: { token_type: 'Bearer', id_token: await idp.sign({ ...idp.idClaims('n'), sub: 'someone-else' }), access_token: await idp.sign(lightweight) } }
    }, 401],
    ['the ID token names another subject, the access token carries the user: the ID token is not read', {}, async (idp) => ({ body: { token_type: 'Bearer', id_token: await idp.sign({ ...idp.idClaims('n'), sub: 'someone-else' }), access_token: await idp.sign(idp.accessClaims()) } }), 200],
    ['userinfo answers for another subject', { [`${HOSTILE_KC}get_info_from_access_token`]: 'false' }, async (idp) => {
      idp.override.userinfo = async () => ({ body: { sub: 'someone-else', email: 'x@acme.com' } })
      return { body: { token_type: 'Bearer', access_token: await idp.sign(idp.accessClaims()) } }
    }, 401],
    ['a lightweight access token and no ID token: the session kept on what the directory has', {}, async (idp) => {
      const { preferred_username: _username, email: _email, ...lightweight } = idp.accessClaims()
      return { body: { token_type: 'Bearer', access_token: await idp.sign(lightweight) } }
    }, 200],
    ['an access token with the user name only: enough, the ID token is not read', {}, async (idp) => ({ body: { token_type: 'Bearer', id_token: await idp.sign({ ...idp.idClaims('n'), sub: 'someone-else' }), access_token: await idp.sign({ ...idp.accessClaims(), name: undefined }) } }), 200],
    ['an access token signed by a key the realm does not publish', {}, async (idp) => ({ body: { token_type: 'Bearer', access_token: await idp.sign(idp.accessClaims(), { key: await newKey('unpublished') }) } }), 200]
  ]
  for (const [name, env, refresh, status] of cases) {
    const h = await hostileHarness(t, { ...FOLLOW, ...env })
    refreshWith(h.idp, async () => await refresh(h.idp))
    const cookie = await followedLogin(h)
    await sleep(2200)
    const answer = await h.app.inject({ method: 'GET', url: '/me', headers: { cookie } })
    t.equal(answer.statusCode, status, `${name}: ${status === 401 ? 'ended' : 'kept as it was'}`)
    if (status === 401) t.equal(answer.json().meta.result_msg, 'session_ended')
  }
})

t.test('a store that cannot keep the refresh token refuses the login; one that cannot give back a Keycloak session\'s tokens is reported', async (t) => {
  const failing = new MemoryRevocationStore()
  failing.saveRefresh = async () => { throw new Error('store unreachable') }
  const h = await hostileHarness(t, FOLLOW, undefined, { revocations: failing })
  refreshWith(h.idp, async () => ({ status: 500 }))
  const answer = await hostileLogin(h)
  t.equal(answer.location, '/login?sso_error=directory_error', 'refused now rather than ended at its first check')

  const forgetful = new MemoryRevocationStore()
  forgetful.takeKeycloakSessionRefreshes = async () => { throw new Error('store unreachable') }
  const logs: string[] = []
  const b = await hostileHarness(t, FOLLOW, undefined, { revocations: forgetful })
  b.app.log.warn = ((object: { reason?: string }, message: string) => { logs.push(`${message} ${object.reason ?? ''}`) }) as never
  refreshWith(b.idp, async () => ({ status: 500 }))
  await followedLogin(b)
  const logoutToken = await b.idp.sign({ iss: b.idp.issuer, aud: 'clearml', iat: Math.floor(Date.now() / 1000), jti: 'j-1', sid: 'kc-session-1', typ: 'Logout', events: { 'http://schemas.openid.net/event/backchannel-logout': {} } })
  const logout = await b.app.inject({ method: 'POST', url: '/logout/backchannel', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: `logout_token=${logoutToken}` })
  t.equal(logout.statusCode, 200, 'the back-channel logout is done all the same')
  t.ok(logs.some((line) => line.includes('Keycloak refresh tokens not removed')), 'and the operator told what was left')

  // The directory failing as the back-channel call names its user: revoked all the same, without an owner.
  const c = await hostileHarness(t, FOLLOW)
  refreshWith(c.idp, async () => ({ status: 500 }))
  const cookie = await followedLogin(c)
  c.directory.findUserByIdentity = async () => { throw new Error('database down') }
  const token = await c.idp.sign({ iss: c.idp.issuer, aud: 'clearml', sub: 'a6f0c1e2-1111-4222-8333-944455556666', iat: Math.floor(Date.now() / 1000), jti: 'j-2', sid: 'kc-session-1', typ: 'Logout', events: { 'http://schemas.openid.net/event/backchannel-logout': {} } })
  const called = await c.app.inject({ method: 'POST', url: '/logout/backchannel', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: `logout_token=${token}` })
  t.equal(called.statusCode, 200, 'a failing directory does not fail the back-channel logout')
  t.equal((await c.app.inject({ method: 'GET', url: '/me', headers: { cookie } })).statusCode, 401, 'its sessions are refused')
})

t.test('a logout of a session without a Keycloak session id removes its refresh token all the same', async (t) => {
  const store = new MemoryRevocationStore()
  const h = await hostileHarness(t, FOLLOW, (idp) => {
    const idClaims = idp.idClaims
    idp.idClaims = (nonce) => ({ ...idClaims(nonce), sid: undefined })
  }, { revocations: store })
  refreshWith(h.idp, async () => ({ status: 500 }))
  const cookie = await followedLogin(h)
  const claims = JSON.parse(Buffer.from(cookie.split('=')[1].split('.')[1], 'base64url').toString()) as { session_id: string, sso: Record<string, unknown> }
  t.strictSame(claims.sso, { provider: 'keycloak', follows: 'user' }, 'a session that follows Keycloak, without a Keycloak session id')
  const kept = { session: claims.session_id }
  t.equal((await store.leaseRefresh(kept, { dueBefore: 0, leaseMs: 1 })).status, 'fresh', 'its refresh token is kept')
  const logout = await h.app.inject({ method: 'POST', url: '/login.logout', headers: { cookie, 'content-type': 'application/json' }, payload: '{}' })
  t.equal(logout.statusCode, 200)
  t.equal((await store.leaseRefresh(kept, { dueBefore: 0, leaseMs: 1 })).status, 'absent', 'and removed at logout')
})

t.test('a refresh whose claims lack the user id ends the session (missing_claim)', async (t) => {
  const h = await hostileHarness(t, { ...FOLLOW, [`${HOSTILE_KC}claims__user_id`]: 'employee_id' }, (idp) => {
    const idClaims = idp.idClaims
    idp.idClaims = (nonce) => ({ ...idClaims(nonce), employee_id: 'e-1' })
  })
  refreshWith(h.idp, async () => ({ body: { token_type: 'Bearer', access_token: await h.idp.sign(h.idp.accessClaims()) } }))
  const cookie = await followedLogin(h)
  await sleep(2200)
  const answer = await h.app.inject({ method: 'GET', url: '/me', headers: { cookie } })
  t.equal(answer.json().meta.result_msg, 'session_ended', 'the refreshed claims say nothing of the user id: ended')
})

t.test('the server-side seal: opens what it sealed, nothing altered, expired or sealed with other secrets', async (t) => {
  const sealer = new ServerSealer('secret', REFRESH_PURPOSE)
  const sealed = sealer.seal({ rt: 'refresh-token', sid: 's-1' }, 60)
  t.match(sealer.open(sealed), { rt: 'refresh-token', sid: 's-1' })
  t.notMatch(sealed, /refresh-token/, 'the token is not readable in the store')
  t.not(sealer.seal({ rt: 'refresh-token' }, 60), sealer.seal({ rt: 'refresh-token' }, 60), 'a fresh IV each time')
  const [version, iv, ciphertext, tag] = sealed.split('.')
  const flipped = (text: string): string => (text[0] === 'A' ? 'B' : 'A') + text.slice(1)
  t.equal(sealer.open([version, iv, flipped(ciphertext), tag].join('.')), undefined, 'altered ciphertext')
  t.equal(sealer.open([version, iv, ciphertext, flipped(tag)].join('.')), undefined, 'altered tag')
  t.equal(sealer.open(['v2', iv, ciphertext, tag].join('.')), undefined, 'another version')
  t.equal(sealer.open('v1.only-two'), undefined, 'malformed')
  t.equal(new ServerSealer('other secret', REFRESH_PURPOSE).open(sealed), undefined, 'other secrets')
  t.equal(new ServerSealer('secret', 'another purpose').open(sealed), undefined, 'another purpose')
  const soon = sealer.seal({ rt: 'x' }, 1)
  await sleep(2100)
  t.equal(sealer.open(soon), undefined, 'expired')
})

t.test('a revision the store made up changes nothing; the plugin\'s own does', async (t) => {
  const store = new MemoryRevocationStore()
  const signer = new RevisionSigner('token-secret')
  const sessions = new SessionTokens({ secret: 'token-secret', lifetimeSec: 3600, revocations: store, follow: { gate: { admit: () => true, settle: async () => {} }, revisions: store, genuine: (id, revision) => signer.verify(id, revision) } })
  const { token } = await sessions.issue({ id: 'u1', company: 'c', name: 'Ann', role: 'user' }, { id: 'c', name: 'C' }, 's-1', 'kc', 'user')
  const admin = { company: 'c', user: 'u1', user_name: 'Ann', role: 'admin', company_name: 'C' }
  await store.revise('s-1', { version: 1, identity: admin }, Date.now() / 1000 + 60)
  t.equal(sessions.cached(token)?.identity.role, 'user', 'no MAC: ignored')
  await store.revise('s-1', { version: 2, identity: admin, mac: signer.sign('s-1', { version: 2, identity: { ...admin, role: 'user' } }) }, Date.now() / 1000 + 60)
  t.equal(sessions.cached(token)?.identity.role, 'user', 'the MAC of another identity: ignored')
  await store.revise('s-1', { version: 3, identity: admin, mac: signer.sign('s-2', { version: 3, identity: admin }) }, Date.now() / 1000 + 60)
  t.equal(sessions.cached(token)?.identity.role, 'user', 'the MAC of another session: ignored')
  await store.revise('s-1', { version: 4, identity: admin, mac: new RevisionSigner('other secret').sign('s-1', { version: 4, identity: admin }) }, Date.now() / 1000 + 60)
  t.equal(sessions.cached(token)?.identity.role, 'user', 'made with other secrets: ignored')
  await store.revise('s-1', { version: 5, identity: admin, mac: signer.sign('s-1', { version: 5, identity: admin }) }, Date.now() / 1000 + 60)
  t.equal(sessions.cached(token)?.identity.role, 'admin', 'the plugin\'s own: followed')
})
