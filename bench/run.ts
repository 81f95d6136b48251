/**
 * Benchmarks (`npm run bench`). Every figure is measured in this run, against a bare route of the
 * same server in the same run; load comes from autocannon in this process while the servers run in
 * their own processes; several rounds, medians printed as a table and as one JSON line.
 *
 *   BENCH_ROUNDS (5)  BENCH_DURATION seconds per measurement (3)  BENCH_CONNECTIONS (50)
 *   BENCH_LOGINS logins for the rate (5000)  BENCH_MEMORY_LOGINS (100000)  BENCH_ROTATION_CALLBACKS (2000)
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { randomUUID } from 'node:crypto'
import autocannon from 'autocannon'
import { benchKey, startFastProvider, type BenchKey, type FastProvider } from './fast-provider.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const DURATION = Number(process.env.BENCH_DURATION ?? 3)
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 50)
const LOGINS = Number(process.env.BENCH_LOGINS ?? 5000)
const MEMORY_LOGINS = Number(process.env.BENCH_MEMORY_LOGINS ?? 100000)
const ROTATION_CALLBACKS = Number(process.env.BENCH_ROTATION_CALLBACKS ?? 2000)

interface Server { process: ChildProcess, url: string, info: Record<string, unknown> }

async function startServer (file: string, args: string[], nodeFlags: string[] = []): Promise<Server> {
  const child = spawn(process.execPath, ['--import', 'tsx', ...nodeFlags, new URL(file, import.meta.url).pathname, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  const line = await new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! })
    lines.once('line', resolve)
    child.once('exit', (code) => reject(new Error(`${file} exited with ${code}`)))
  })
  const info = JSON.parse(line)
  return { process: child, url: `http://127.0.0.1:${info.port}`, info }
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

async function load (url: string, headers: Record<string, string> = {}): Promise<number> {
  const result = await autocannon({ url, connections: CONNECTIONS, duration: DURATION, headers })
  if (result.non2xx > 0 || result.errors > 0) throw new Error(`${url}: ${result.non2xx} non-2xx, ${result.errors} errors`)
  return result.requests.average
}

interface PreparedLogin { path: string, cookie: string }

/** Starts `n` logins at the plugin and has the provider ready to answer each one's code. */
async function prepareLogins (server: Server, provider: FastProvider, n: number, sign: { key?: BenchKey, kid?: () => string } = {}): Promise<PreparedLogin[]> {
  const prepared: PreparedLogin[] = []
  const batch = 200
  for (let offset = 0; offset < n; offset += batch) {
    prepared.push(...await Promise.all(Array.from({ length: Math.min(batch, n - offset) }, async () => {
      const start = await fetch(`${server.url}/login/keycloak`, { redirect: 'manual' })
      const location = new URL(start.headers.get('location')!)
      const cookie = start.headers.getSetCookie()[0].split(';')[0]
      const code = randomUUID()
      await provider.prepare(code, { nonce: location.searchParams.get('nonce')!, subject: randomUUID(), key: sign.key, kid: sign.kid?.() })
      return { path: `/callback_keycloak?code=${code}&state=${location.searchParams.get('state')}`, cookie }
    })))
  }
  return prepared
}

/** Completes the prepared logins with `concurrency` requests in flight; wall time and outcomes. */
async function completeLogins (server: Server, logins: PreparedLogin[], concurrency: number): Promise<{ ms: number, ok: number, refused: Map<string, number> }> {
  let next = 0
  let ok = 0
  const refused = new Map<string, number>()
  const started = process.hrtime.bigint()
  await Promise.all(Array.from({ length: Math.min(concurrency, logins.length) }, async () => {
    while (next < logins.length) {
      const login = logins[next++]
      const answer = await fetch(server.url + login.path, { headers: { cookie: login.cookie }, redirect: 'manual' })
      await answer.arrayBuffer()
      const location = answer.headers.get('location') ?? ''
      if (location === '/') ok++
      else {
        const code = location.replace('/login?sso_error=', '')
        refused.set(code, (refused.get(code) ?? 0) + 1)
      }
    }
  }))
  return { ms: Number(process.hrtime.bigint() - started) / 1e6, ok, refused }
}

async function stats (server: Server): Promise<{ cpu: { user: number, system: number }, memory: { heapUsed: number, rss: number }, created: number, sessionCache: number, jwksFetches: number }> {
  return await (await fetch(`${server.url}/stats`)).json() as never
}

const provider = await startFastProvider()
const plugin = await startServer('./servers/plugin-app.ts', [provider.issuer], ['--expose-gc'])
const adapter = await startServer('./servers/adapter-app.ts', [provider.issuer])
const now = Math.floor(Date.now() / 1000)
const accessToken = await provider.sign({ iss: provider.issuer, sub: randomUUID(), aud: 'account', azp: 'clearml', typ: 'Bearer', iat: now, exp: now + 7200, preferred_username: 'bench', name: 'Bench User' })
const sessionCookie = { cookie: `clearml_token_basic=${plugin.info.sessionToken as string}` }

const scenarios: Record<string, () => Promise<number>> = {
  'plugin: bare route': async () => await load(`${plugin.url}/bare`),
  // A browser sends the session cookie to every route of the origin, the bare one included.
  'plugin: bare route, same cookie header': async () => await load(`${plugin.url}/bare`, sessionCookie),
  'plugin: authenticate, session cookie': async () => await load(`${plugin.url}/protected`, sessionCookie),
  'plugin: authenticate, session as Bearer': async () => await load(`${plugin.url}/protected`, { authorization: `Bearer ${plugin.info.sessionToken as string}` }),
  'fastify-keycloak-adapter: bare route': async () => await load(`${adapter.url}/bare`),
  'fastify-keycloak-adapter: access token as Bearer': async () => await load(`${adapter.url}/protected`, { authorization: `Bearer ${accessToken}` })
}
const names = Object.keys(scenarios)
const samples = new Map(names.map((name) => [name, [] as number[]]))
for (const name of names) await scenarios[name]() // warm-up: JIT, connection pools, caches
for (let round = 0; round < ROUNDS; round++) {
  // Rotate the order so that no scenario always runs first or last in a round.
  for (const name of [...names.slice(round % names.length), ...names.slice(0, round % names.length)]) {
    samples.get(name)!.push(await scenarios[name]())
    process.stderr.write('.')
  }
}
process.stderr.write('\n')
const rps = Object.fromEntries(names.map((name) => [name, median(samples.get(name)!)]))

// Logins per second, and the plugin's own CPU per login.
await completeLogins(plugin, await prepareLogins(plugin, provider, 500), 20) // warm-up
const logins = await prepareLogins(plugin, provider, LOGINS)
const before = await stats(plugin)
const run = await completeLogins(plugin, logins, 20)
const after = await stats(plugin)
const cpuPerLoginUs = ((after.cpu.user + after.cpu.system) - (before.cpu.user + before.cpu.system)) / run.ok

// Key rotation: concurrent callbacks right after a new key starts signing.
const rotated = await benchKey()
provider.keys.push(rotated)
const rotationLogins = await prepareLogins(plugin, provider, ROTATION_CALLBACKS, { key: rotated })
const certs = '/realms/bench/protocol/openid-connect/certs'
const certsBefore = provider.hits.get(certs) ?? 0
const rotation = await completeLogins(plugin, rotationLogins, ROTATION_CALLBACKS)
const rotationFetches = (provider.hits.get(certs) ?? 0) - certsBefore

// A flood of tokens whose kid nobody published.
const floodLogins = await prepareLogins(plugin, provider, ROTATION_CALLBACKS, { key: rotated, kid: () => randomUUID() })
const floodBefore = provider.hits.get(certs) ?? 0
const flood = await completeLogins(plugin, floodLogins, 200)
const floodFetches = (provider.hits.get(certs) ?? 0) - floodBefore

// Memory after many logins of distinct users (the directory keeps nothing; see plugin-app.ts).
const memory: Array<{ logins: number, heapMiB: number, rssMiB: number, sessionCache: number }> = []
const baseline = await stats(plugin)
memory.push({ logins: baseline.created, heapMiB: baseline.memory.heapUsed / 2 ** 20, rssMiB: baseline.memory.rss / 2 ** 20, sessionCache: baseline.sessionCache })
const chunk = 10000
const memoryRefused = new Map<string, number>()
for (let done = 0; done < MEMORY_LOGINS; done += chunk) {
  const batch = await completeLogins(plugin, await prepareLogins(plugin, provider, Math.min(chunk, MEMORY_LOGINS - done)), 20)
  for (const [code, count] of batch.refused) memoryRefused.set(code, (memoryRefused.get(code) ?? 0) + count)
  const s = await stats(plugin)
  memory.push({ logins: s.created, heapMiB: s.memory.heapUsed / 2 ** 20, rssMiB: s.memory.rss / 2 ** 20, sessionCache: s.sessionCache })
  process.stderr.write(`${s.created} logins, heap ${(s.memory.heapUsed / 2 ** 20).toFixed(1)} MiB\n`)
}

plugin.process.kill()
adapter.process.kill()
await provider.close()

const ratio = (a: string, b: string): number => rps[a] / rps[b]
const summary = {
  machine: { cpus: (await import('node:os')).cpus().length, node: process.version },
  settings: { rounds: ROUNDS, durationSec: DURATION, connections: CONNECTIONS },
  requestsPerSec: Object.fromEntries(names.map((name) => [name, Math.round(rps[name])])),
  ratios: {
    pluginCookieVsBare: ratio('plugin: authenticate, session cookie', 'plugin: bare route'),
    pluginCookieVsBareSameHeader: ratio('plugin: authenticate, session cookie', 'plugin: bare route, same cookie header'),
    pluginBearerVsBare: ratio('plugin: authenticate, session as Bearer', 'plugin: bare route'),
    adapterVsBare: ratio('fastify-keycloak-adapter: access token as Bearer', 'fastify-keycloak-adapter: bare route'),
    pluginVsAdapter: ratio('plugin: authenticate, session cookie', 'fastify-keycloak-adapter: access token as Bearer')
  },
  logins: { count: run.ok, refused: Object.fromEntries(run.refused), perSec: run.ok / (run.ms / 1000), cpuPerLoginUs },
  rotation: { callbacks: ROTATION_CALLBACKS, succeeded: rotation.ok, jwksFetches: rotationFetches },
  unknownKidFlood: { callbacks: ROTATION_CALLBACKS, refused: Object.fromEntries(flood.refused), seconds: flood.ms / 1000, jwksFetches: floodFetches },
  memory,
  memoryRefused: Object.fromEntries(memoryRefused)
}

const f = (n: number, digits = 0): string => n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
console.log(`\n| scenario | req/s (median of ${ROUNDS}) |\n|---|---|`)
for (const name of names) console.log(`| ${name} | ${f(rps[name])} |`)
console.log(`
| ratio | value | goal |
|---|---|---|
| plugin authenticate (cookie) / bare | ${f(summary.ratios.pluginCookieVsBare, 2)}× | ≥ 0.90× |
| plugin authenticate (cookie) / bare with the same cookie header | ${f(summary.ratios.pluginCookieVsBareSameHeader, 2)}× | ≥ 0.90× |
| plugin authenticate (session as Bearer) / bare | ${f(summary.ratios.pluginBearerVsBare, 2)}× | ≥ 0.90× |
| fastify-keycloak-adapter protected / its bare | ${f(summary.ratios.adapterVsBare, 2)}× | |
| plugin protected / fastify-keycloak-adapter protected | ${f(summary.ratios.pluginVsAdapter, 2)}× | ≥ 3× |

| logins | value | goal |
|---|---|---|
| completed callbacks per second (20 in flight) | ${f(summary.logins.perSec)} | ≥ 1,000 |
| apiserver CPU per login | ${f(cpuPerLoginUs)} µs | |
| JWKS fetches for ${ROTATION_CALLBACKS} concurrent callbacks after a rotation | ${rotationFetches} (${rotation.ok} logged in) | 1 |
| JWKS fetches for ${ROTATION_CALLBACKS} callbacks with unknown kids (${f(flood.ms / 1000, 1)} s) | ${floodFetches} | ≤ 1 per 30 s |

| logins of distinct users | heap used (MiB) | rss (MiB) | session cache entries |
|---|---|---|---|`)
for (const m of memory) console.log(`| ${f(m.logins)} | ${f(m.heapMiB, 1)} | ${f(m.rssMiB, 1)} | ${f(m.sessionCache)} |`)
console.log(`\nRefused during the memory run: ${JSON.stringify(Object.fromEntries(memoryRefused))}`)
console.log('\n' + JSON.stringify(summary))
