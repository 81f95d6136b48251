/**
 * What `@fastify/oauth2` 8.3 does, shown against real servers: the evidence behind the
 * "@fastify/oauth2" section of docs/decisions.md. Not a benchmark; about 25 s, mostly waiting.
 *
 *   npx tsx bench/servers/oauth2-evidence.ts
 *
 * 1. Two tabs of one browser, one registration, against the Keycloak-like provider (oidc-provider,
 *    PKCE required): with its defaults, with the state kept server-side as its README suggests, and
 *    with this plugin for comparison.
 * 2. Nonce and token checks: the authorization URL's parameters; a token set no OpenID client may
 *    accept, returned as is.
 * 3. Discovery at start-up: another issuer, HTTP 500, a 64 MiB document, no answer, no server.
 * 4. The token endpoint's HTTP client: connections per exchange, with and without an agent given;
 *    time-out and size cap.
 *
 * Everything listens on 127.0.0.1 and is closed at the end. No code, state, verifier or token is printed.
 */
import { createHash, randomUUID } from 'node:crypto'
import { subscribe } from 'node:diagnostics_channel'
import { Agent, createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import fastifyOauth2, { type FastifyOAuth2Options, type OAuth2Namespace } from '@fastify/oauth2'
import clearmlKeycloak, { MemoryDirectory } from '../../index.js'
import { exchangeCode } from '../../lib/keycloak/oidc-client.js'
import { freePort } from '../../examples/free-port.js'
import { startKeycloakLikeIdp } from '../../examples/idp/keycloak-like-idp.js'
import { UserAgent, type Page } from '../../test/helpers/user-agent.js'
import { benchKey, startFastProvider } from '../fast-provider.js'

const CLIENT_ID = 'clearml'
const CLIENT_SECRET = 'evidence-client-secret'
const ALICE = { username: 'alice', password: 'alice-pw', email: 'alice@acme.com', emailVerified: true }

const say = (line: string): void => { console.log(line) }
const s256 = (verifier: string): string => createHash('sha256').update(verifier).digest('base64url')
const namespace = (app: FastifyInstance): OAuth2Namespace => (app as unknown as { keycloak: OAuth2Namespace }).keycloak
/** The request fields `getAccessTokenFromAuthorizationCodeFlow(request)` reads, as its callback route has them. */
const callbackRequest = (code: string, state = 's', verifier = 'v'.repeat(43)): FastifyRequest =>
  ({ query: { code, state }, cookies: { 'oauth2-redirect-state': state, 'oauth2-code-verifier': verifier } }) as unknown as FastifyRequest

// ---------------------------------------------------------------------------------------------
say('1. Two tabs, one browser, one registration')

const ports = { defaults: await freePort(), serverState: await freePort(), plugin: await freePort() }
const appUrl = (port: number): string => `http://127.0.0.1:${port}`
const idp = await startKeycloakLikeIdp({
  users: [ALICE],
  clients: [{ clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, redirectUris: Object.values(ports).map((port) => `${appUrl(port)}/callback_keycloak`) }]
})

/** An apiserver with @fastify/oauth2 registered for Keycloak as its README shows, and a callback route. */
async function oauth2App (port: number, extra: Partial<FastifyOAuth2Options> = {}): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(fastifyOauth2, {
    name: 'keycloak',
    scope: ['openid', 'profile', 'email'],
    credentials: { client: { id: CLIENT_ID, secret: CLIENT_SECRET } },
    discovery: { issuer: idp.issuer },
    startRedirectPath: '/login/keycloak',
    callbackUri: `${appUrl(port)}/callback_keycloak`,
    pkce: 'S256',
    ...extra
  })
  app.get('/callback_keycloak', async (request, reply) => {
    try {
      await namespace(app).getAccessTokenFromAuthorizationCodeFlow(request, reply)
      return 'logged in'
    } catch (err) {
      const answer = (err as { data?: { payload?: { error?: string } } }).data?.payload
      return await reply.code(401).send(`refused: ${(err as Error).message}${answer?.error === undefined ? '' : ` (token endpoint: ${answer.error})`}`)
    }
  })
  await app.listen({ port, host: '127.0.0.1' })
  return app
}

/** This plugin on the same provider. */
async function pluginApp (port: number): Promise<FastifyInstance> {
  const directory = new MemoryDirectory()
  directory.addCompany({ id: 'c-acme', name: 'Acme' })
  directory.addWhitelistEntry({ domain: 'acme.com', company: 'c-acme' })
  const app = Fastify()
  await app.register(clearmlKeycloak, {
    directory,
    webappUrl: appUrl(port),
    env: {
      CLEARML__services__login__sso__oauth_client__keycloak__base_url: idp.issuer,
      CLEARML__secure__login__sso__oauth_client__keycloak__client_id: CLIENT_ID,
      CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: CLIENT_SECRET,
      CLEARML__secure__auth__token_secret: 'evidence-token-secret-of-32-bytes-or-more'
    }
  })
  app.get('/', async () => 'logged in')
  await app.listen({ port, host: '127.0.0.1' })
  return app
}

const challengeOf = (page: Page): string => new URL(page.hops[0].location!).searchParams.get('code_challenge') ?? ''

/**
 * Tab A starts a login and authenticates at the provider; before its callback arrives, tab B starts
 * one too (the provider session answers it at once). Then the callbacks arrive, in `order`.
 */
async function twoTabs (port: number, order: 'A, then B' | 'B, then A', verifierCookie?: string): Promise<void> {
  const base = appUrl(port)
  const browser = new UserAgent()
  const atCallback = (url: string): boolean => url.startsWith(`${base}/callback_keycloak`)
  const loginForm = await browser.navigate(`${base}/login/keycloak`)
  const challengeA = challengeOf(loginForm)
  const backA = await browser.submitLogin(loginForm, ALICE.username, ALICE.password, { stopAt: atCallback })
  const backB = await browser.navigate(`${base}/login/keycloak`, { stopAt: atCallback })
  const challengeB = challengeOf(backB)
  // This plugin's cookie names end in a hash of their login's state: shown as <hash>.
  const names = [...browser.cookies(base).keys()].map((name) => name.replace(/^(clearml_kc_tx_).+$/, '$1<hash>'))
  say(`   cookies of the app after both starts: ${names.join(', ')}`)
  if (verifierCookie !== undefined) {
    const held = s256(browser.cookies(base).get(verifierCookie) ?? '')
    say(`   the one verifier cookie answers tab B's code_challenge: ${String(held === challengeB)}; tab A's: ${String(held === challengeA)}`)
  }
  const finish = async (tab: string, page: Page): Promise<void> => {
    const final = await browser.navigate(page.url)
    say(`   tab ${tab}'s callback: HTTP ${final.status} ${final.body.trim() === '' ? final.url.replace(base, '') : final.body.trim()}`)
  }
  if (order === 'A, then B') {
    await finish('A', backA)
    await finish('B', backB)
  } else {
    await finish('B', backB)
    await finish('A', backA)
  }
}

const defaults = await oauth2App(ports.defaults)
say('a) @fastify/oauth2 with its defaults (state and verifier in one cookie each)')
await twoTabs(ports.defaults, 'A, then B', 'oauth2-code-verifier')
say('   again, the callbacks in the other order:')
await twoTabs(ports.defaults, 'B, then A')

// The README's advice for a stronger state: generate it and check it server-side.
const states = new Set<string>()
const serverState = await oauth2App(ports.serverState, {
  generateStateFunction: () => { const state = randomUUID(); states.add(state); return state },
  checkStateFunction: (request: FastifyRequest) => states.delete((request.query as { state?: string }).state ?? '')
})
say('b) @fastify/oauth2 with the state kept server-side (generateStateFunction/checkStateFunction)')
await twoTabs(ports.serverState, 'A, then B', 'oauth2-code-verifier')

const plugin = await pluginApp(ports.plugin)
say('c) this plugin (one sealed transaction cookie per login)')
await twoTabs(ports.plugin, 'A, then B')

// ---------------------------------------------------------------------------------------------
say('\n2. Nonce and token checks')
const start = await fetch(`${appUrl(ports.defaults)}/login/keycloak`, { redirect: 'manual' })
say(`   @fastify/oauth2's authorization URL carries: ${[...new URL(start.headers.get('location')!).searchParams.keys()].join(', ')}`)
const pluginStart = await fetch(`${appUrl(ports.plugin)}/login/keycloak`, { redirect: 'manual' })
say(`   this plugin's carries:                      ${[...new URL(pluginStart.headers.get('location')!).searchParams.keys()].join(', ')}`)

const fast = await startFastProvider(CLIENT_ID)
const tokenUrl = new URL(`${fast.issuer}/protocol/openid-connect/token`)
const staticAuth = { tokenHost: tokenUrl.origin, tokenPath: tokenUrl.pathname, authorizeHost: tokenUrl.origin, authorizePath: '/auth' }
async function staticOauth2 (http?: Record<string, unknown>): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(fastifyOauth2, { name: 'keycloak', credentials: { client: { id: CLIENT_ID, secret: CLIENT_SECRET }, auth: staticAuth, ...(http === undefined ? {} : { http }) }, callbackUri: 'https://clearml.example.com/callback_keycloak', pkce: 'S256' })
  await app.ready()
  return app
}
const stranger = await benchKey()
const now = Math.floor(Date.now() / 1000)
const forged = await fast.sign({ iss: 'https://elsewhere.example/realms/x', aud: 'another-client', sub: 'someone', nonce: 'another-login', iat: now - 7200, exp: now - 3600 }, stranger)
fast.tokenSets.set('forged', JSON.stringify({ token_type: 'Bearer', id_token: forged, access_token: 'opaque' }))
const unchecked = await staticOauth2()
const { token } = await namespace(unchecked).getAccessTokenFromAuthorizationCodeFlow(callbackRequest('forged'))
say(`   an ID token signed by an unpublished key, of another issuer and audience, another login's nonce, expired an hour ago: ${token.id_token === forged ? 'returned as is' : 'refused'}`)
await unchecked.close()

// ---------------------------------------------------------------------------------------------
say('\n3. Discovery at start-up')
let discoveryMode = 'another issuer'
const discovery: Server = createServer((request, response) => {
  request.resume()
  const origin = `http://127.0.0.1:${(discovery.address() as AddressInfo).port}`
  const document = { issuer: origin + '/realms/clearml', authorization_endpoint: `${origin}/auth`, token_endpoint: `${origin}/token` }
  if (discoveryMode === 'another issuer') {
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer: 'https://elsewhere.example/realms/x', authorization_endpoint: 'https://elsewhere.example/auth', token_endpoint: 'https://elsewhere.example/token' }))
  } else if (discoveryMode === 'HTTP 500') {
    response.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify(document))
  } else if (discoveryMode === '64 MiB') {
    response.writeHead(200, { 'content-type': 'application/json' })
    response.write(JSON.stringify(document).replace(/}$/, ',"padding":"'))
    const chunk = Buffer.alloc(1024 * 1024, 0x61)
    let sent = 0
    const pump = (): void => {
      while (sent < 64) { sent++; if (!response.write(chunk)) { response.once('drain', pump); return } }
      response.end('"}')
    }
    pump()
  }
  // 'no answer': the request is left open.
})
await new Promise<void>((resolve) => discovery.listen(0, '127.0.0.1', resolve))
const discoveryIssuer = `http://127.0.0.1:${(discovery.address() as AddressInfo).port}/realms/clearml`

async function startWithDiscovery (mode: string, issuer: string, fastifyOptions: { pluginTimeout?: number } = {}, watchMs?: number): Promise<void> {
  discoveryMode = mode
  const app = Fastify(fastifyOptions)
  app.register(fastifyOauth2, { name: 'keycloak', credentials: { client: { id: CLIENT_ID, secret: CLIENT_SECRET } }, discovery: { issuer }, startRedirectPath: '/login/keycloak', callbackUri: 'https://clearml.example.com/callback_keycloak' })
  globalThis.gc?.()
  const rss = process.memoryUsage().rss
  const started = Date.now()
  const ready = app.ready().then(() => 'ready', (err: { code?: string, message: string }) => `failed: ${err.code === undefined ? '' : `${err.code} `}${err.message.split('.')[0]}`)
  const outcome = await (watchMs === undefined ? ready : Promise.race([ready, new Promise<string>((resolve) => setTimeout(() => resolve(`still starting after ${watchMs / 1000} s`), watchMs))]))
  let detail = ''
  if (outcome === 'ready') {
    const login = await app.inject('/login/keycloak')
    const grown = Math.round((process.memoryUsage().rss - rss) / 1048576)
    detail = `; the login goes to ${new URL(login.headers.location as string).origin}${grown > 8 ? `; memory +${grown} MiB` : ''}`
    await app.close()
  }
  say(`   ${mode.padEnd(14)} → ${outcome} (${((Date.now() - started) / 1000).toFixed(1)} s)${detail}`)
}
await startWithDiscovery('another issuer', discoveryIssuer)
await startWithDiscovery('HTTP 500', discoveryIssuer)
await startWithDiscovery('64 MiB', discoveryIssuer)
const closedPort = await freePort()
await startWithDiscovery('no server', `http://127.0.0.1:${closedPort}/realms/clearml`)
await startWithDiscovery('no answer', discoveryIssuer)
await startWithDiscovery('no answer', discoveryIssuer, { pluginTimeout: 0 }, 3000)
say('   (the last: pluginTimeout 0, Fastify\'s way to turn its plugin time-out off)')

// ---------------------------------------------------------------------------------------------
say('\n4. The HTTP client of the token endpoint')
let opened = 0
subscribe('net.client.socket', () => { opened++ })
async function connectionsFor (label: string, exchange: (code: string) => Promise<unknown>): Promise<void> {
  const before = opened
  for (let i = 0; i < 20; i++) {
    await fast.prepare(`${label}-${i}`, { nonce: 'n', subject: 's' })
    await exchange(`${label}-${i}`)
  }
  say(`   ${label.padEnd(52)} → TCP connections opened for 20 exchanges: ${opened - before}`)
}
const plain = await staticOauth2()
await connectionsFor('@fastify/oauth2', async (code) => await namespace(plain).getAccessTokenFromAuthorizationCodeFlow(callbackRequest(code)))
const given = new Agent({ keepAlive: true })
const withAgent = await staticOauth2({ agent: given })
await connectionsFor('@fastify/oauth2, credentials.http.agent keep-alive', async (code) => await namespace(withAgent).getAccessTokenFromAuthorizationCodeFlow(callbackRequest(code)))
say(`   idle sockets parked in the agent given: ${Object.values(given.freeSockets).flat().length} (it was deep-copied; the copy's free sockets land in the original's pool)`)
await connectionsFor('this plugin (exchangeCode)', async (code) => await exchangeCode({ tokenEndpoint: tokenUrl.href, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, code, redirectUri: 'https://clearml.example.com/callback_keycloak', verifier: 'v'.repeat(43), timeoutMs: 10000 }))
given.destroy()

let tokenMode = 'no answer'
const slow: Server = createServer((request, response) => {
  request.resume()
  if (tokenMode === '5 MiB') response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token_type: 'Bearer', access_token: 'x'.repeat(5 * 1024 * 1024) }))
})
await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve))
const slowOrigin = `http://127.0.0.1:${(slow.address() as AddressInfo).port}`
async function tokenCall (mode: string, http?: Record<string, unknown>): Promise<void> {
  tokenMode = mode
  const app = Fastify()
  await app.register(fastifyOauth2, { name: 'keycloak', credentials: { client: { id: CLIENT_ID, secret: CLIENT_SECRET }, auth: { tokenHost: slowOrigin, tokenPath: '/token', authorizePath: '/auth' }, ...(http === undefined ? {} : { http }) }, callbackUri: 'https://clearml.example.com/callback_keycloak', pkce: 'S256' })
  const call = namespace(app).getAccessTokenFromAuthorizationCodeFlow(callbackRequest('c')).then(
    (answer) => `accepted (${(answer.token.access_token as string).length} bytes of access token)`,
    (err: Error) => `refused: ${err.message}`)
  const outcome = await Promise.race([call, new Promise<string>((resolve) => setTimeout(() => resolve('still waiting after 3 s'), 3000))])
  say(`   ${`${mode}, credentials.http ${JSON.stringify(http ?? {})}`.padEnd(52)} → ${outcome}`)
  await app.close()
}
await tokenCall('no answer')
await tokenCall('no answer', { timeout: 500 })
await tokenCall('5 MiB')
await tokenCall('5 MiB', { maxBytes: 1024 * 1024 })

slow.closeAllConnections()
slow.close()
discovery.closeAllConnections()
discovery.close()
await plain.close()
await withAgent.close()
await fast.close()
await defaults.close()
await serverState.close()
await plugin.close()
await idp.close()
// The Fastify instance still waiting on discovery (pluginTimeout 0) holds nothing open but its promise.
process.exit(0)
