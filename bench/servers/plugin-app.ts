/**
 * The apiserver under benchmark, in its own process: a bare route, the same route behind
 * `authenticate`, the plugin's login routes, and routes for the runner (stats, sessions to load it
 * with, a memory probe of the session cache).
 * argv: issuer [sessionCacheMax] [revalidateSec]. Prints one JSON line { port, sessionToken } when listening.
 */
import { createHmac, createSecretKey, timingSafeEqual, webcrypto } from 'node:crypto'
import Fastify from 'fastify'
import { createVerifier } from 'fast-jwt'
import { jwtVerify } from 'jose'
import clearmlKeycloak, { MemoryRevocationStore, type UserDirectory } from '../../index.js'
import { SessionTokens } from '../../lib/session/sessions.js'
import { isSessionClaims, SessionTokenVerifier } from '../../lib/session/token-verifier.js'

const issuer = process.argv[2]
const sessionCacheMax = process.argv[3] === undefined || process.argv[3] === '' ? undefined : Number(process.argv[3])
// Sessions follow Keycloak every this many seconds (the plugin's default, 300, when not given).
const revalidateSec = process.argv[4]
const tokenSecret = 'bench-token-secret'
/** The Keycloak subject of the runner's access token (bench/run.ts). */
const BENCH_API_CLIENT = 'bench-api-client'
/** The Keycloak subject of the sessions that follow Keycloak (bench/revalidation.ts). */
const BENCH_FOLLOWED = 'bench-followed-user'
/**
 * A directory that keeps nothing: every login is a new user in one company. Memory figures then
 * show what the plugin keeps, not what an in-memory database holds. One user exists: the API client
 * whose Keycloak access token the runner presents as a Bearer credential.
 */
let created = 0
const company = { id: 'acme', name: 'Acme' }
const directory: UserDirectory = {
  getCompany: async () => company,
  findUserByIdentity: async (_provider, subject) => subject === BENCH_API_CLIENT
    ? { id: 'u-api', company: 'acme', name: 'Bench API client', role: 'user' }
    // The Keycloak user of the sessions that follow Keycloak (`/followed-sessions`).
    : subject === BENCH_FOLLOWED ? { id: 'u-followed', company: 'acme', name: 'Bench', email: 'bench@acme.example', role: 'user' } : null,
  findUserByEmail: async () => null,
  findWhitelistEntry: async () => ({ company: 'acme' }),
  createUser: async (user) => ({ ...user, id: `u${++created}` }),
  updateUser: async (id, patch) => ({ id, company: 'acme', name: 'x', role: 'user', ...patch }),
  findGroupsByName: async () => [],
  listUserGroups: async () => [],
  updateUserGroups: async () => {}
}

const app = Fastify({ logger: false })
await app.register(clearmlKeycloak, {
  directory,
  webappUrl: 'http://127.0.0.1:1',
  env: {
    CLEARML__services__login__sso__oauth_client__keycloak__base_url: issuer,
    CLEARML__secure__login__sso__oauth_client__keycloak__client_id: 'clearml',
    CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: 'bench-secret',
    CLEARML__secure__auth__token_secret: tokenSecret,
    ...(revalidateSec === undefined ? {} : { CLEARML__services__login__sso__oauth_client__keycloak__session__revalidate_sec: revalidateSec })
  },
  sessionCacheMax,
  bearer: { keycloak: true }
})
app.get('/bare', async () => ({ ok: true }))
app.get('/protected', { preHandler: app.keycloak.authenticate }, async () => ({ ok: true }))
// What any preHandler costs, to tell the hook's price from authenticate's.
app.get('/noop-hook', { preHandler: (_request, _reply, done) => { done() } }, async () => ({ ok: true }))
app.get('/stats', async () => {
  globalThis.gc?.()
  return { cpu: process.cpuUsage(), memory: process.memoryUsage(), created, sessionCache: app.keycloak.sso.sessions.cacheSize, jwksFetches: app.keycloak.sso.keys.fetches }
})
// CPU time without the garbage collection /stats forces, which would be counted in a measurement.
app.get('/cpu', async () => process.cpuUsage())
const sessions = app.keycloak.sso.sessions
const user = (i: number) => ({ id: `u${i}`, company: 'acme', name: `User ${i}`, role: 'user' })
// `count` sessions as logins make them, each with its own Keycloak session id; any replica with the
// same token secret accepts them.
app.post<{ Body: { count: number } }>('/sessions', async (request) => {
  const tokens: string[] = []
  for (let i = 0; i < request.body.count; i++) tokens.push((await sessions.issue(user(i), company, `bench-session-${i}`, `bench-keycloak-session-${i}`)).token)
  return tokens
})
/**
 * `count` sessions that follow Keycloak, as logins make them: each keeps a refresh token (given by
 * the runner: the provider answers its refreshes) and says so in its token. Their last checks are
 * spread over the past `spreadSec` (before `checkedAgoSec`), as for users who logged in at different
 * times: they fall due one after another, not all at once.
 */
app.post<{ Body: { count: number, refreshToken: string, spreadSec: number, checkedAgoSec?: number } }>('/followed-sessions', async (request) => {
  const following = app.keycloak.sso.following!
  const followed = { id: 'u-followed', company: 'acme', name: 'Bench', role: 'user' }
  const tokens: string[] = []
  for (let i = 0; i < request.body.count; i++) {
    const key = { session: `followed-session-${i}`, keycloakSession: 'bench-keycloak-session' }
    const checkedAt = Date.now() / 1000 - (request.body.checkedAgoSec ?? 0) - (i / request.body.count) * request.body.spreadSec
    const follows = await following.keep(key, BENCH_FOLLOWED, request.body.refreshToken, sessions.expiresAt(), checkedAt)
    tokens.push((await sessions.issue(followed, company, key.session, key.keycloakSession, follows)).token)
  }
  return tokens
})
/**
 * Heap per cached session: `count` real sessions are issued, each presented once in a Cookie header
 * with `otherCookieBytes` of other cookies (as a browser sends them) to a cache of its own, then
 * everything but that cache is dropped. Needs --expose-gc.
 */
app.post<{ Body: { count: number, otherCookieBytes: number } }>('/memory-probe', async (request) => {
  const { count, otherCookieBytes } = request.body
  const probe = new SessionTokens({ secret: tokenSecret, lifetimeSec: 3600, revocations: new MemoryRevocationStore(), cacheMax: count })
  const others = `_ga=${'x'.repeat(Math.max(0, otherCookieBytes - 4))}`
  globalThis.gc!()
  const before = process.memoryUsage().heapUsed
  let tokens: string[] = []
  for (let i = 0; i < count; i++) tokens.push((await probe.issue(user(i), company, `probe-session-${i}`, `probe-keycloak-session-${i}`)).token)
  for (const token of tokens) await probe.verify(app.parseCookie(`${others}; clearml_token_basic=${token}`).clearml_token_basic!)
  const tokenBytes = tokens.reduce((sum, token) => sum + token.length, 0) / count
  tokens = []
  globalThis.gc!()
  const after = process.memoryUsage().heapUsed
  return { cached: probe.cacheSize, bytesPerSession: (after - before) / probe.cacheSize, tokenBytes }
})
/**
 * CPU microseconds per verification of a session token not in any cache, by each way of doing it,
 * over `count` distinct real sessions; median of `rounds`. All of them accept every token here; only
 * jose and SessionTokenVerifier refuse exactly the same tokens (test/session-fast-path.test.ts).
 */
app.post<{ Body: { count: number, rounds: number } }>('/verify-bench', async (request) => {
  const { count, rounds } = request.body
  const tokens: string[] = []
  for (let i = 0; i < count; i++) tokens.push((await sessions.issue(user(i), company, `verify-session-${i}`, `verify-keycloak-session-${i}`)).token)
  const cryptoKey = await webcrypto.subtle.importKey('raw', new TextEncoder().encode(tokenSecret), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify'])
  const fastJwt = createVerifier({ key: tokenSecret, algorithms: ['HS256'], requiredClaims: ['exp', 'iat'], cache: false })
  const secretKey = createSecretKey(Buffer.from(tokenSecret))
  const verifier = new SessionTokenVerifier(tokenSecret)
  // The issue's baseline: an HMAC check and a decode, without jose's header and encoding rules.
  const direct = (token: string): unknown => {
    const dot = token.lastIndexOf('.')
    const expected = createHmac('sha256', secretKey).update(token.slice(0, dot)).digest()
    const given = Buffer.from(token.slice(dot + 1), 'base64url')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null
    return JSON.parse(Buffer.from(token.slice(token.indexOf('.') + 1, dot), 'base64url').toString())
  }
  // Every way runs over all tokens in one call; the synchronous ones without an await per token.
  const ways: Record<string, () => Promise<boolean> | boolean> = {
    'jose jwtVerify (WebCrypto, before)': async () => {
      for (const token of tokens) if (!isSessionClaims((await jwtVerify(token, cryptoKey, { algorithms: ['HS256'], requiredClaims: ['exp', 'iat'] })).payload)) return false
      return true
    },
    'fast-jwt createVerifier, its cache off': () => tokens.every((token) => isSessionClaims(fastJwt(token))),
    'createHmac + timingSafeEqual, direct': () => tokens.every((token) => direct(token) !== null),
    'SessionTokenVerifier (this package)': () => tokens.every((token) => verifier.verify(token) !== null)
  }
  // Rounds interleave the ways, in a rotated order, so that a busy moment on the machine does not
  // fall on one way only; CPU time (every thread: WebCrypto works in the thread pool) rather than
  // wall time, for the same reason. Round 0 warms the JIT up and is not counted.
  const names = Object.keys(ways)
  const samples = new Map(names.map((name) => [name, [] as number[]]))
  for (let round = 0; round <= rounds; round++) {
    for (const name of [...names.slice(round % names.length), ...names.slice(0, round % names.length)]) {
      const before = process.cpuUsage()
      if (!await ways[name]()) throw new Error(`${name} refused a valid session`)
      const used = process.cpuUsage(before)
      if (round > 0) samples.get(name)!.push((used.user + used.system) / count)
    }
  }
  return Object.fromEntries(names.map((name) => [name, samples.get(name)!.sort((a, b) => a - b)[Math.floor(rounds / 2)]]))
})
// Lets the runner end the process normally, so that --cpu-prof can write its profile.
app.post('/exit', async () => { setImmediate(() => process.exit(0)); return {} })
await app.listen({ port: 0, host: '127.0.0.1' })
// A session as a login makes it, with a Keycloak session id: authenticate checks both revocations.
const session = await app.keycloak.sso.sessions.issue({ id: 'u0', company: 'acme', name: 'Bench', role: 'user' }, company, 'bench-session', 'bench-keycloak-session')
console.log(JSON.stringify({ port: (app.server.address() as { port: number }).port, sessionToken: session.token }))
