/**
 * Benchmarks (`npm run bench`). Every figure is measured in this run, against a bare route of the
 * same server in the same run; load comes from autocannon in this process while the servers run in
 * their own processes; several rounds, medians printed as a table and as one JSON line.
 *
 *   BENCH_ROUNDS (5)  BENCH_DURATION seconds per measurement (3)  BENCH_CONNECTIONS (50)
 *   BENCH_LOGINS logins for the rate (5000)  BENCH_MEMORY_LOGINS (100000)  BENCH_ROTATION_CALLBACKS (2000)
 *   BENCH_SESSIONS numbers of distinct active sessions (1,10000,100000)
 *   BENCH_PARTS which parts to run (routes,verify,sessions,logins,memory)
 *   BENCH_CPU_PROF a directory: the plugin's apiserver writes a V8 CPU profile there (--cpu-prof)
 */
import { randomUUID } from 'node:crypto'
import { cpus, loadavg } from 'node:os'
import autocannon, { type Request } from 'autocannon'
import { benchKey, startFastProvider, type BenchKey, type FastProvider } from './fast-provider.js'
import { CONNECTIONS, cpuTime, DURATION, formatNumber as f, median, post, ROUNDS, startApiserver, stopApiserver, type Apiserver } from './common.js'

const LOGINS = Number(process.env.BENCH_LOGINS ?? 5000)
const MEMORY_LOGINS = Number(process.env.BENCH_MEMORY_LOGINS ?? 100000)
const ROTATION_CALLBACKS = Number(process.env.BENCH_ROTATION_CALLBACKS ?? 2000)
const SESSION_COUNTS = (process.env.BENCH_SESSIONS ?? '1,10000,100000').split(',').map(Number)
const PARTS = new Set((process.env.BENCH_PARTS ?? 'routes,verify,sessions,logins,memory').split(','))
const CPU_PROF = process.env.BENCH_CPU_PROF

type Server = Apiserver<Record<string, unknown> & { port: number }>
const startServer = startApiserver<Record<string, unknown> & { port: number }>

/** Requests per second; `cookie`, when given, is called for the Cookie header of every request. */
async function load (url: string, headers: Record<string, string> = {}, cookie?: () => string): Promise<number> {
  return (await loadCounted(url, headers, cookie)).rps
}

async function loadCounted (url: string, headers: Record<string, string> = {}, cookie?: () => string): Promise<{ rps: number, requests: number }> {
  const requests = cookie === undefined ? undefined : [{ setupRequest: (request: Request) => ({ ...request, headers: { ...request.headers, cookie: cookie() } }) }]
  const result = await autocannon({ url, connections: CONNECTIONS, duration: DURATION, headers, requests })
  if (result.non2xx > 0 || result.errors > 0) throw new Error(`${url}: ${result.non2xx} non-2xx, ${result.errors} errors`)
  return { rps: result.requests.average, requests: result.requests.total }
}

/**
 * Requests per second, and the server's CPU time per request: on a machine whose cores are shared
 * (by the load generator at least), the second is the steadier figure.
 */
async function loadWithCpu (server: Server, path: string, cookie: () => string): Promise<{ rps: number, cpuUs: number }> {
  const before = await cpuTime(server)
  const { rps, requests } = await loadCounted(server.url + path, {}, cookie)
  return { rps, cpuUs: (await cpuTime(server) - before) / requests }
}

/**
 * Runs every scenario once to warm up, then `ROUNDS` rounds in a rotated order; the median of each
 * figure a scenario returns (req/s, or several).
 */
async function measure<T extends number | Record<string, number>> (scenarios: Record<string, () => Promise<T>>): Promise<Record<string, T>> {
  const names = Object.keys(scenarios)
  const samples = new Map(names.map((name) => [name, [] as T[]]))
  for (const name of names) await scenarios[name]() // warm-up: JIT, connection pools, caches
  for (let round = 0; round < ROUNDS; round++) {
    // Rotate the order so that no scenario always runs first or last in a round.
    for (const name of [...names.slice(round % names.length), ...names.slice(0, round % names.length)]) {
      samples.get(name)!.push(await scenarios[name]())
      process.stderr.write('.')
    }
  }
  process.stderr.write('\n')
  const medianOf = (values: T[]): T => typeof values[0] === 'number'
    ? median(values as number[]) as T
    : Object.fromEntries(Object.keys(values[0]).map((key) => [key, median(values.map((v) => (v as Record<string, number>)[key]))])) as T
  return Object.fromEntries(names.map((name) => [name, medianOf(samples.get(name)!)]))
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
const plugin = await startServer('./servers/plugin-app.ts', [provider.issuer], ['--expose-gc', ...(CPU_PROF === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`])])
const adapter = await startServer('./servers/adapter-app.ts', [provider.issuer])
const now = Math.floor(Date.now() / 1000)
const accessToken = await provider.sign({ iss: provider.issuer, sub: 'bench-api-client', sid: 'bench-keycloak-session', aud: 'account', azp: 'clearml', typ: 'Bearer', iat: now, exp: now + 7200, preferred_username: 'bench', name: 'Bench User' })
const sessionCookie = { cookie: `clearml_token_basic=${plugin.info.sessionToken as string}` }
const summary: Record<string, unknown> = {
  machine: { cpus: cpus().length, node: process.version, loadAverageAtStart: loadavg() },
  settings: { rounds: ROUNDS, durationSec: DURATION, connections: CONNECTIONS, parts: [...PARTS] }
}
const output: string[] = []

if (PARTS.has('routes')) {
  const scenarios: Record<string, () => Promise<number>> = {
    'plugin: bare route': async () => await load(`${plugin.url}/bare`),
    // A browser sends the session cookie to every route of the origin, the bare one included.
    'plugin: bare route, same cookie header': async () => await load(`${plugin.url}/bare`, sessionCookie),
    'plugin: authenticate, session cookie': async () => await load(`${plugin.url}/protected`, sessionCookie),
    'plugin: authenticate, session as Bearer': async () => await load(`${plugin.url}/protected`, { authorization: `Bearer ${plugin.info.sessionToken as string}` }),
    // The same Keycloak access token fastify-keycloak-adapter verifies below (bearer: { keycloak: true }).
    'plugin: bare route, same Authorization header': async () => await load(`${plugin.url}/bare`, { authorization: `Bearer ${accessToken}` }),
    'plugin: authenticate, Keycloak access token as Bearer': async () => await load(`${plugin.url}/protected`, { authorization: `Bearer ${accessToken}` }),
    'fastify-keycloak-adapter: bare route': async () => await load(`${adapter.url}/bare`),
    'fastify-keycloak-adapter: access token as Bearer': async () => await load(`${adapter.url}/protected`, { authorization: `Bearer ${accessToken}` })
  }
  const rps = await measure(scenarios)
  const ratio = (a: string, b: string): number => rps[a] / rps[b]
  const ratios = {
    pluginCookieVsBare: ratio('plugin: authenticate, session cookie', 'plugin: bare route'),
    pluginCookieVsBareSameHeader: ratio('plugin: authenticate, session cookie', 'plugin: bare route, same cookie header'),
    pluginBearerVsBare: ratio('plugin: authenticate, session as Bearer', 'plugin: bare route'),
    pluginKeycloakBearerVsBare: ratio('plugin: authenticate, Keycloak access token as Bearer', 'plugin: bare route'),
    pluginKeycloakBearerVsBareSameHeader: ratio('plugin: authenticate, Keycloak access token as Bearer', 'plugin: bare route, same Authorization header'),
    pluginKeycloakBearerVsAdapter: ratio('plugin: authenticate, Keycloak access token as Bearer', 'fastify-keycloak-adapter: access token as Bearer'),
    adapterVsBare: ratio('fastify-keycloak-adapter: access token as Bearer', 'fastify-keycloak-adapter: bare route'),
    pluginVsAdapter: ratio('plugin: authenticate, session cookie', 'fastify-keycloak-adapter: access token as Bearer')
  }
  Object.assign(summary, { requestsPerSec: Object.fromEntries(Object.entries(rps).map(([name, value]) => [name, Math.round(value)])), ratios })
  output.push(`| scenario | req/s (median of ${ROUNDS}) |\n|---|---|`, ...Object.entries(rps).map(([name, value]) => `| ${name} | ${f(value)} |`), `
| ratio | value | goal |
|---|---|---|
| plugin authenticate (cookie) / bare | ${f(ratios.pluginCookieVsBare, 2)}× | ≥ 0.90× |
| plugin authenticate (cookie) / bare with the same cookie header | ${f(ratios.pluginCookieVsBareSameHeader, 2)}× | ≥ 0.90× |
| plugin authenticate (session as Bearer) / bare | ${f(ratios.pluginBearerVsBare, 2)}× | ≥ 0.90× |
| fastify-keycloak-adapter protected / its bare | ${f(ratios.adapterVsBare, 2)}× | |
| plugin protected / fastify-keycloak-adapter protected | ${f(ratios.pluginVsAdapter, 2)}× | ≥ 3× |
| plugin authenticate (Keycloak access token) / bare | ${f(ratios.pluginKeycloakBearerVsBare, 2)}× | ≥ 0.90× |
| plugin authenticate (Keycloak access token) / bare with the same Authorization header | ${f(ratios.pluginKeycloakBearerVsBareSameHeader, 2)}× | ≥ 0.90× |
| plugin authenticate (Keycloak access token) / fastify-keycloak-adapter, same token | ${f(ratios.pluginKeycloakBearerVsAdapter, 2)}× | ≥ 5× |
`)
}

if (PARTS.has('verify')) {
  // A session token not in the cache: what its verification costs, by each way of doing it.
  const verify = await post<Record<string, number>>(plugin, '/verify-bench', { count: 20000, rounds: ROUNDS })
  summary.verifyUsPerToken = verify
  output.push('| verifying a session token not in the cache (in process, 20,000 distinct tokens) | CPU µs per token (median of ' + ROUNDS + ') |\n|---|---|',
    ...Object.entries(verify).map(([name, us]) => `| ${name} | ${f(us, 2)} |`), '')
}

if (PARTS.has('sessions')) {
  // Issue #15: authenticate against many distinct session cookies, each request with the next one
  // (and, for the most sessions, a skewed mix: 80 % of requests from 20 % of them), against the
  // bare route receiving the same cookies. One apiserver per number of sessions, so that no case
  // finds the cache full of another's sessions; one more keeps the former default of 10,000.
  const most = Math.max(...SESSION_COUNTS)
  const servers = new Map(await Promise.all(SESSION_COUNTS.map(async (n) => [n, await startServer('./servers/plugin-app.ts', [provider.issuer], ['--expose-gc'])] as const)))
  const smallCache = await startServer('./servers/plugin-app.ts', [provider.issuer, '10000'], ['--expose-gc'])
  const cookies = (await post<string[]>(plugin, '/sessions', { count: most })).map((token) => `clearml_token_basic=${token}`)
  const uniform = (n: number) => () => { let next = 0; return () => cookies[next++ % n] }
  const skewed = (n: number) => () => {
    const hot = Math.max(1, Math.floor(n / 5))
    return () => Math.random() < 0.8 ? cookies[Math.floor(Math.random() * hot)] : cookies[hot + Math.floor(Math.random() * (n - hot))]
  }
  const sessionsOf = (n: number): string => n === 1 ? '1 session' : `${f(n)} sessions`
  const cases: Array<{ name: string, server: Server, pick: () => () => string, goal: number }> = [
    ...SESSION_COUNTS.map((n) => ({
      name: n === 1 ? '1 session' : `${sessionsOf(n)}, each request the next one`,
      server: servers.get(n)!,
      pick: uniform(n),
      goal: n === 1 || n === 10000 ? 0.9 : n === 100000 ? 0.75 : 0
    })),
    { name: `${sessionsOf(most)}, 80 % of requests from 20 % of them`, server: servers.get(most)!, pick: skewed(most), goal: most === 100000 ? 0.9 : 0 },
    { name: `${sessionsOf(most)}, each request the next one; cache of 10,000`, server: smallCache, pick: uniform(most), goal: 0 },
    { name: `${sessionsOf(most)}, 80 % from 20 %; cache of 10,000`, server: smallCache, pick: skewed(most), goal: 0 }
  ]
  // Every session presented once to its apiserver, as after a busy morning: the cache holds what
  // it can of them.
  const present = async (server: Server, n: number): Promise<void> => {
    const next = uniform(n)()
    await autocannon({ url: `${server.url}/protected`, connections: Math.min(CONNECTIONS, n), amount: n, requests: [{ setupRequest: (request: Request) => ({ ...request, headers: { ...request.headers, cookie: next() } }) }] })
  }
  const forMost = servers.get(most)!
  const before = await stats(forMost)
  await present(forMost, most)
  const filled = await stats(forMost)
  const heapPerCachedSession = (filled.memory.heapUsed - before.memory.heapUsed) / (filled.sessionCache - before.sessionCache)
  for (const [n, server] of servers) if (n !== most) await present(server, n)
  await present(smallCache, most)
  const scenarios: Record<string, () => Promise<{ rps: number, cpuUs: number }>> = {}
  for (const c of cases) {
    scenarios[`${c.name}: bare`] = async () => await loadWithCpu(c.server, '/bare', c.pick())
    scenarios[`${c.name}: authenticate`] = async () => await loadWithCpu(c.server, '/protected', c.pick())
  }
  const figures = await measure(scenarios)
  const probes = [0, 2000].map((otherCookieBytes) => ({ otherCookieBytes }))
  const memory = []
  for (const probe of probes) memory.push({ ...probe, ...await post<{ cached: number, bytesPerSession: number, tokenBytes: number }>(smallCache, '/memory-probe', { count: most, ...probe }) })
  for (const server of [...servers.values(), smallCache]) server.process.kill()
  const rows = cases.map((c) => {
    const bare = figures[`${c.name}: bare`]
    const authenticate = figures[`${c.name}: authenticate`]
    return { case: c.name, bare, authenticate, ratio: authenticate.rps / bare.rps, cpuRatio: bare.cpuUs / authenticate.cpuUs, goal: c.goal }
  })
  summary.sessions = { rows, heapPerCachedSession, cachedAfterFill: filled.sessionCache, memoryProbe: memory }
  output.push(`| active sessions (distinct cookies) | bare, same cookies: req/s, CPU µs per request | authenticate: req/s, CPU µs per request | authenticate / bare: by req/s, by CPU | goal |
|---|---|---|---|---|`, ...rows.map((r) => `| ${r.case} | ${f(r.bare.rps)}, ${f(r.bare.cpuUs, 1)} | ${f(r.authenticate.rps)}, ${f(r.authenticate.cpuUs, 1)} | ${f(r.ratio, 2)}×, ${f(r.cpuRatio, 2)}× | ${r.goal > 0 ? `≥ ${f(r.goal, 2)}×` : ''} |`), `
Heap growth per cached session while serving ${sessionsOf(most)}: ${f(heapPerCachedSession)} bytes (${f(filled.sessionCache)} cached).`,
  ...memory.map((m) => `Memory probe, ${f(m.cached)} real sessions, each presented with ${f(m.otherCookieBytes)} bytes of other cookies: ${f(m.bytesPerSession)} bytes per cached session (the token itself: ${f(m.tokenBytes)}); ${f(100e6 / m.bytesPerSession)} sessions in 100 MB.`), '')
}

if (PARTS.has('logins')) {
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

  // A flood of forged tokens under kids nobody published, on the channels anyone can reach (a bearer
  // header, a back-channel logout body): they share one cooldown (issue #12), so at most one fetch.
  // Signed before the clock starts: the seconds are the apiserver's, not the runner's RS256 signing.
  const forged = await Promise.all(Array.from({ length: ROTATION_CALLBACKS }, async () =>
    await provider.sign({ iss: provider.issuer, sub: 'bench-api-client', aud: 'account', azp: 'clearml', typ: 'Bearer', iat: now, exp: now + 600 }, rotated, randomUUID())))
  const forgedStart = performance.now()
  const floodBefore = provider.hits.get(certs) ?? 0
  const forgedRefused = new Map<number, number>()
  for (let sent = 0; sent < forged.length; sent += 100) {
    await Promise.all(forged.slice(sent, sent + 100).map(async (token, i) => {
      const answer = (sent + i) % 2 === 0
        ? await fetch(`${plugin.url}/protected`, { headers: { authorization: `Bearer ${token}` } })
        : await fetch(`${plugin.url}/logout/backchannel`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `logout_token=${token}` })
      await answer.arrayBuffer()
      forgedRefused.set(answer.status, (forgedRefused.get(answer.status) ?? 0) + 1)
    }))
  }
  const forgedMs = performance.now() - forgedStart
  const floodFetches = (provider.hits.get(certs) ?? 0) - floodBefore
  // Tokens from the token endpoint under unknown kids (a provider that signs with a key it has not
  // published yet): trusted, so each batch of waiting logins shares one reload, with no cooldown.
  const floodLogins = await prepareLogins(plugin, provider, ROTATION_CALLBACKS, { key: rotated, kid: () => randomUUID() })
  const unknownBefore = provider.hits.get(certs) ?? 0
  const flood = await completeLogins(plugin, floodLogins, 200)
  const unknownFetches = (provider.hits.get(certs) ?? 0) - unknownBefore
  Object.assign(summary, {
    logins: { count: run.ok, refused: Object.fromEntries(run.refused), perSec: run.ok / (run.ms / 1000), cpuPerLoginUs },
    rotation: { callbacks: ROTATION_CALLBACKS, succeeded: rotation.ok, jwksFetches: rotationFetches },
    forgedKidFlood: { requests: ROTATION_CALLBACKS, statuses: Object.fromEntries(forgedRefused), seconds: forgedMs / 1000, jwksFetches: floodFetches },
    unknownKidCallbacks: { callbacks: ROTATION_CALLBACKS, refused: Object.fromEntries(flood.refused), seconds: flood.ms / 1000, jwksFetches: unknownFetches }
  })
  output.push(`| logins | value | goal |
|---|---|---|
| completed callbacks per second (20 in flight) | ${f(run.ok / (run.ms / 1000))} | ≥ 1,000 |
| apiserver CPU per login | ${f(cpuPerLoginUs)} µs | |
| JWKS fetches for ${ROTATION_CALLBACKS} concurrent callbacks after a rotation | ${rotationFetches} (${rotation.ok} logged in) | 1 |
| JWKS fetches for ${ROTATION_CALLBACKS} forged tokens with unknown kids, as Bearer and back-channel logout (${f(forgedMs / 1000, 1)} s; answers ${[...forgedRefused].map(([status, n]) => `${n} × ${status}`).join(', ')}) | ${floodFetches} | ≤ 1 per 30 s |
| JWKS fetches for ${ROTATION_CALLBACKS} callbacks whose tokens from the token endpoint name unknown kids, 200 in flight (${f(flood.ms / 1000, 1)} s) | ${unknownFetches} | one per batch of waiting logins, no cooldown |
`)
}

if (PARTS.has('memory')) {
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
  Object.assign(summary, { memory, memoryRefused: Object.fromEntries(memoryRefused) })
  output.push(`| logins of distinct users | heap used (MiB) | rss (MiB) | session cache entries |
|---|---|---|---|`, ...memory.map((m) => `| ${f(m.logins)} | ${f(m.heapMiB, 1)} | ${f(m.rssMiB, 1)} | ${f(m.sessionCache)} |`),
  `\nRefused during the memory run: ${JSON.stringify(Object.fromEntries(memoryRefused))}\n`)
}

await stopApiserver(plugin, CPU_PROF !== undefined)
adapter.process.kill()
await provider.close()
summary.loadAverageAtEnd = loadavg()

console.log('\n' + output.join('\n'))
console.log(JSON.stringify(summary))
