/**
 * CPU per authorization-code exchange: `@fastify/oauth2` 8.3 (simple-oauth2 over @hapi/wreck) against
 * this plugin's client (`exchangeCode`, node:http with keep-alive agents), on the same token endpoint.
 *
 *   npx tsx bench/code-exchange.ts
 *   BENCH_ROUNDS (5)  BENCH_EXCHANGES per client and round (2000)  BENCH_CONCURRENCY in flight (10)
 *
 * The token endpoint (`bench/servers/token-endpoint.ts`, the fast provider) runs in its own process:
 * the figure is this process's CPU (`process.cpuUsage`, user + system) divided by the exchanges. Both
 * clients make the same exchanges (fresh single-use codes, client_secret_basic, PKCE verifier,
 * redirect_uri) with the same number in flight, one client at a time, after a warm-up round that is
 * not counted, in alternating order. Each measurement starts after a full GC and ends with one inside
 * the window, so each client pays for its own garbage; what that last GC costs alone is printed.
 * Medians of the rounds.
 *
 * The exchange alone: the plugin's callback also verifies the two tokens (jose), which is not counted
 * here for either client (@fastify/oauth2 verifies nothing). @fastify/oauth2 is called as its README's
 * example callback route calls it, `getAccessTokenFromAuthorizationCodeFlow(request)`, with the
 * request's `query` and `cookies`, the only fields it reads (the `(request, reply)` form would also
 * clear two cookies).
 *
 * Every @fastify/oauth2 exchange opens a TCP connection; with many rounds, mind the ephemeral ports.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { loadavg, cpus } from 'node:os'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import Fastify, { type FastifyRequest } from 'fastify'
import fastifyOauth2, { type OAuth2Namespace } from '@fastify/oauth2'
import { exchangeCode } from '../lib/keycloak/oidc-client.js'
import { median, ROUNDS } from './common.js'

const EXCHANGES = Number(process.env.BENCH_EXCHANGES ?? 2000)
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 10)

const CLIENT_ID = 'clearml'
const CLIENT_SECRET = 'bench-client-secret'
const REDIRECT_URI = 'https://clearml.example.com/callback_keycloak'
// 43 characters, the length both libraries generate.
const VERIFIER = 'dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk'
const STATE = 'bench-state'

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

interface ProviderStats { cpuMicros: number, connections: number }

/** The token endpoint's process, and a way to ask it things over IPC. */
async function startTokenEndpoint (): Promise<{ tokenEndpoint: string, ask: <T>(message: object) => Promise<T>, stop: () => void }> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', new URL('./servers/token-endpoint.ts', import.meta.url).pathname], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve)
    child.once('exit', (code) => reject(new Error(`token endpoint exited with ${code}`)))
  })
  const ask = async <T>(message: object): Promise<T> => await new Promise<T>((resolve) => {
    child.once('message', (answer) => resolve(answer as T))
    child.send(message)
  })
  return { tokenEndpoint: JSON.parse(line).tokenEndpoint, ask, stop: () => { child.disconnect() } }
}

type Exchange = (code: string) => Promise<void>

async function pluginClient (tokenEndpoint: string): Promise<Exchange> {
  return async (code) => {
    const set = await exchangeCode({ tokenEndpoint, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, code, redirectUri: REDIRECT_URI, verifier: VERIFIER, timeoutMs: 10000 })
    if (set.idToken === '') throw new Error('plugin: no ID token')
  }
}

async function oauth2Client (tokenEndpoint: string): Promise<{ exchange: Exchange, close: () => Promise<void> }> {
  const url = new URL(tokenEndpoint)
  const app = Fastify({ logger: false })
  await app.register(fastifyOauth2, {
    name: 'keycloak',
    credentials: {
      client: { id: CLIENT_ID, secret: CLIENT_SECRET },
      auth: { tokenHost: url.origin, tokenPath: url.pathname, authorizeHost: url.origin, authorizePath: url.pathname.replace(/token$/, 'auth') }
    },
    callbackUri: REDIRECT_URI,
    pkce: 'S256',
    scope: ['openid', 'profile', 'email']
  })
  await app.ready()
  const keycloak = (app as unknown as { keycloak: OAuth2Namespace }).keycloak
  return {
    exchange: async (code) => {
      const request = { query: { code, state: STATE }, cookies: { 'oauth2-redirect-state': STATE, 'oauth2-code-verifier': VERIFIER } }
      const { token } = await keycloak.getAccessTokenFromAuthorizationCodeFlow(request as unknown as FastifyRequest)
      if (typeof token.id_token !== 'string') throw new Error('@fastify/oauth2: no ID token')
    },
    close: async () => { await app.close() }
  }
}

interface Measurement { cpuMicrosPerExchange: number, exchangesPerSecond: number, connectionsPer1000: number, providerCpuMicrosPerExchange: number }

async function measure (exchange: Exchange, codes: string[], provider: Awaited<ReturnType<typeof startTokenEndpoint>>): Promise<Measurement> {
  const before = await provider.ask<ProviderStats>({ stats: true })
  gc()
  const cpuBefore = process.cpuUsage()
  const started = process.hrtime.bigint()
  let next = 0
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < codes.length) await exchange(codes[next++])
  }))
  const elapsedNs = Number(process.hrtime.bigint() - started)
  gc()
  const cpu = process.cpuUsage(cpuBefore)
  const after = await provider.ask<ProviderStats>({ stats: true })
  return {
    cpuMicrosPerExchange: (cpu.user + cpu.system) / codes.length,
    exchangesPerSecond: codes.length / (elapsedNs / 1e9),
    connectionsPer1000: (after.connections - before.connections) * 1000 / codes.length,
    // Includes answering the two stats requests: a few µs in all, nothing per exchange.
    providerCpuMicrosPerExchange: (after.cpuMicros - before.cpuMicros) / codes.length
  }
}

const loadBefore = loadavg()
const provider = await startTokenEndpoint()
const oauth2 = await oauth2Client(provider.tokenEndpoint)
const clients: Array<{ name: string, exchange: Exchange }> = [
  { name: 'plugin exchangeCode', exchange: await pluginClient(provider.tokenEndpoint) },
  { name: '@fastify/oauth2', exchange: oauth2.exchange }
]
const results = new Map<string, Measurement[]>(clients.map((client) => [client.name, []]))

let batch = 0
for (let round = 0; round <= ROUNDS; round++) {
  const order = round % 2 === 0 ? clients : [...clients].reverse()
  for (const client of order) {
    const prefix = `r${round}b${batch++}-`
    await provider.ask({ prepare: { prefix, count: EXCHANGES } })
    const measurement = await measure(client.exchange, Array.from({ length: EXCHANGES }, (_, i) => `${prefix}${i}`), provider)
    // Round 0 warms up both clients (JIT, sockets) and is not counted.
    if (round > 0) results.get(client.name)!.push(measurement)
  }
}
// What the window itself costs (two full GCs, no exchange), included in both clients' figures.
const emptyWindows: number[] = []
for (let i = 0; i < 5; i++) {
  gc()
  const cpuBefore = process.cpuUsage()
  gc()
  const cpu = process.cpuUsage(cpuBefore)
  emptyWindows.push(cpu.user + cpu.system)
}
const windowMicrosPerExchange = median(emptyWindows) / EXCHANGES
const loadAfter = loadavg()
await oauth2.close()
provider.stop()

const summary = Object.fromEntries([...results].map(([name, runs]) => {
  const cpu = runs.map((run) => run.cpuMicrosPerExchange)
  return [name, {
    cpuMicrosPerExchange: median(cpu),
    cpuMicrosMin: Math.min(...cpu),
    cpuMicrosMax: Math.max(...cpu),
    exchangesPerSecond: median(runs.map((run) => run.exchangesPerSecond)),
    connectionsPer1000: median(runs.map((run) => run.connectionsPer1000)),
    providerCpuMicrosPerExchange: median(runs.map((run) => run.providerCpuMicrosPerExchange))
  }]
}))
const plugin = summary['plugin exchangeCode']
const theirs = summary['@fastify/oauth2']
const ratio = theirs.cpuMicrosPerExchange / plugin.cpuMicrosPerExchange

const fixed = (value: number, digits = 0): string => value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
console.log(`\nCode exchange, ${ROUNDS} rounds × ${EXCHANGES} exchanges per client, ${CONCURRENCY} in flight; Node ${process.version}, ${cpus().length} cores; load average ${loadBefore[0].toFixed(2)} before, ${loadAfter[0].toFixed(2)} after\n`)
console.log('| client | CPU per exchange (median) | range over rounds | exchanges/s (median) | TCP connections per 1000 exchanges | token endpoint CPU per exchange |')
console.log('|---|---|---|---|---|---|')
for (const [name, s] of Object.entries(summary)) {
  console.log(`| ${name} | ${fixed(s.cpuMicrosPerExchange)} µs | ${fixed(s.cpuMicrosMin)}–${fixed(s.cpuMicrosMax)} µs | ${fixed(s.exchangesPerSecond)} | ${fixed(s.connectionsPer1000, 1)} | ${fixed(s.providerCpuMicrosPerExchange)} µs |`)
}
console.log(`\n@fastify/oauth2 / plugin, CPU per exchange: ${ratio.toFixed(2)}× (the full GC closing each window: ${fixed(windowMicrosPerExchange, 1)} µs per exchange, in both)\n`)
console.log(JSON.stringify({ bench: 'code-exchange', node: process.version, cores: cpus().length, loadavg: { before: loadBefore[0], after: loadAfter[0] }, rounds: ROUNDS, exchanges: EXCHANGES, concurrency: CONCURRENCY, clients: summary, ratio, windowMicrosPerExchange }))
