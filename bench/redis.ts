/**
 * Benchmarks of the Redis revocation store (`npx tsx bench/redis.ts`). It starts its own redis-server
 * (Debian's), fills it with live revocations, and runs two apiserver replicas
 * (`bench/servers/redis-app.ts`), each in its own process with its own store and ioredis client:
 *
 *   (a) `authenticate` with the store against the bare route of the same replica, in the same run
 *       (autocannon from this process, rounds in rotated order after a warm-up, medians), with the
 *       replica's CPU time per request;
 *   (b) propagation: revocations made on replica A, the time until each is in replica B's local copy
 *       (A's clock at the call to `revoke`, B's when pub/sub delivered it; both
 *       `performance.timeOrigin + performance.now()`), as a steady stream, as a burst, and as a
 *       stream while B serves `authenticate` at full load;
 *   (c) the full load a replica makes at start and after each reconnect: time and heap per entry;
 *   (d) the revocation check itself, in process, against the in-memory store (steadier than req/s
 *       on a shared machine);
 *   (e) propagation on a Redis Cluster (three primaries with a replica each, `redis-cli --cluster
 *       create`), two more replicas on ioredis `Cluster` clients, against the single Redis of (b), in
 *       the same run, series interleaved.
 *
 *   BENCH_ROUNDS (5)  BENCH_DURATION seconds per measurement (3)  BENCH_CONNECTIONS (50)
 *   BENCH_REVOCATIONS live revocations in Redis (100000)  BENCH_PROPAGATION revocations per series (200)
 *   BENCH_INTERVAL_MS between revocations of a stream (5)
 */
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { cpus } from 'node:os'
import autocannon from 'autocannon'
import { Cluster, Redis } from 'ioredis'
import { startFastProvider } from './fast-provider.js'
import { CONNECTIONS, DURATION, formatNumber as f, median, ROUNDS, startApiserver, type Apiserver } from './common.js'
import { startRedisServer } from '../test/helpers/redis-server.js'
import { startRedisCluster } from '../test/helpers/redis-topology.js'
import { RedisRevocationStore } from '../redis/index.js'
import { MemoryRevocationStore, type RevocationStore } from '../lib/session/revocations.js'
import { DEFAULT_KEY_PREFIX, redisNames } from '../redis/layout.js'

const REVOCATIONS = Number(process.env.BENCH_REVOCATIONS ?? 100_000)
const PROPAGATION = Number(process.env.BENCH_PROPAGATION ?? 200)
const INTERVAL_MS = Number(process.env.BENCH_INTERVAL_MS ?? 5)

// The heap held by a store's local copy is read between two collections.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

type Replica = Apiserver<{ port: number, sessionToken: string, loaded: number }>
interface Stats { cpu: { user: number, system: number }, memory: { heapUsed: number }, revocations: number, queued: number }

const startReplica = async (app: string, args: string[]): Promise<Replica> => await startApiserver(app, args, ['--expose-gc'])

/** Nearest-rank percentile. */
const percentile = (values: number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]
}

async function json<T> (url: string, body?: unknown): Promise<T> {
  const answer = await fetch(url, body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (!answer.ok) throw new Error(`${url}: ${answer.status} ${await answer.text()}`)
  return await answer.json() as T
}

/** Requests per second, and the replica's CPU time per request (µs). */
async function load (replica: Replica, path: string, headers: Record<string, string> = {}): Promise<{ rps: number, cpuUs: number }> {
  const before = await json<Stats>(`${replica.url}/stats`)
  const result = await autocannon({ url: replica.url + path, connections: CONNECTIONS, duration: DURATION, headers })
  const after = await json<Stats>(`${replica.url}/stats`)
  if (result.non2xx > 0 || result.errors > 0) throw new Error(`${path}: ${result.non2xx} non-2xx, ${result.errors} errors`)
  const cpuUs = (after.cpu.user + after.cpu.system - before.cpu.user - before.cpu.system) / result.requests.total
  return { rps: result.requests.average, cpuUs }
}

/**
 * (d) What `authenticate` asks the store twice per request (the session id, then its Keycloak
 * session): nanoseconds per `isRevoked` of a session that is not revoked, with the Redis store's copy
 * of every revocation against the in-memory store empty and holding as many (up to its bound),
 * interleaved in one process; medians of 5.
 */
async function revocationCheckNs (redisStore: RedisRevocationStore, expiresAt: number): Promise<Record<string, number>> {
  const empty = new MemoryRevocationStore()
  const full = new MemoryRevocationStore()
  for (let i = 0; i < Math.min(REVOCATIONS, 99_000); i++) await full.revoke(`seed-session-${i}`, expiresAt)
  const stores: Record<string, RevocationStore> = { 'Redis store': redisStore, 'memory store, empty': empty, 'memory store, full': full }
  const samples: Record<string, number[]> = {}
  const calls = 2_000_000
  for (let round = 0; round < 5; round++) {
    for (const [name, store] of Object.entries(stores)) {
      let refused = 0
      const started = performance.now()
      for (let i = 0; i < calls; i++) if (store.isRevoked('bench-session', 1) === true) refused++
      if (refused > 0) throw new Error(`${name} refused the bench session`)
      ;(samples[name] ??= []).push((performance.now() - started) * 1e6 / calls)
    }
  }
  return Object.fromEntries(Object.entries(samples).map(([name, values]) => [name, median(values)]))
}

interface Series { latenciesMs: number[], revokeMs: number[], missing: number }

/** `count` revocations made on `from`, watched arriving on `to`. */
async function propagate (from: Replica, to: Replica, name: string, count: number, intervalMs: number): Promise<Series> {
  const ids = Array.from({ length: count }, (_, i) => `${name}-${i}-${Math.random().toString(36).slice(2)}`)
  await json(`${to.url}/bench/watch`, { ids })
  const made = await json<{ revokedAt: Record<string, number>, revokeMs: number[] }>(`${from.url}/bench/revoke`, { ids, intervalMs })
  const seen = await json<{ seenAt: Record<string, number | null>, missing: number }>(`${to.url}/bench/seen`)
  const latenciesMs = ids.filter((id) => typeof seen.seenAt[id] === 'number').map((id) => seen.seenAt[id]! - made.revokedAt[id])
  return { latenciesMs, revokeMs: made.revokeMs, missing: seen.missing }
}

async function main (): Promise<void> {
  const server = await startRedisServer()
  const provider = await startFastProvider()
  const seed = new Redis(server.url)
  const names = redisNames(DEFAULT_KEY_PREFIX)

  const cluster = await startRedisCluster()
  const clusterSeed = new Cluster(cluster.startupNodes)

  // Live revocations as replicas would have written them (one hour to go), in batches of 10,000,
  // in both the single Redis and the Cluster.
  const expiresAt = Math.floor(Date.now() / 1000) + 3600
  for (const target of [seed, clusterSeed]) {
    for (let offset = 0; offset < REVOCATIONS; offset += 10_000) {
      const pairs: Array<string | number> = []
      for (let i = offset; i < Math.min(REVOCATIONS, offset + 10_000); i++) pairs.push(expiresAt, `seed-session-${i}`)
      await target.zadd(names.revoked, ...pairs)
    }
    await target.pexpireat(names.revoked, expiresAt * 1000)
  }

  // (c) The full load: a new store's ready(), five times; heap held by its local copy.
  const loads: Array<{ ms: number, loadMs: number, heapBytes: number }> = []
  let checkNs: Record<string, number> = {}
  for (let i = 0; i < 5; i++) {
    const redis = new Redis(server.url)
    await redis.ping()
    gc()
    const heapBefore = process.memoryUsage().heapUsed
    const store = new RedisRevocationStore({ redis })
    const synced = new Promise<number>((resolve) => store.once('synced', (report) => resolve(report.durationMs)))
    const started = performance.now()
    await store.ready()
    const ms = performance.now() - started
    gc()
    loads.push({ ms, loadMs: await synced, heapBytes: process.memoryUsage().heapUsed - heapBefore })
    if (store.size !== REVOCATIONS) throw new Error(`loaded ${store.size} of ${REVOCATIONS}`)
    if (i === 4) checkNs = await revocationCheckNs(store, expiresAt)
    await store.close()
    redis.disconnect()
  }

  const a = await startReplica('./servers/redis-app.ts', [provider.issuer, server.url])
  const b = await startReplica('./servers/redis-app.ts', [provider.issuer, server.url])
  const clusterUrl = `cluster:${cluster.startupNodes.map((node) => `${node.host}:${node.port}`).join(',')}`
  const ca = await startReplica('./servers/redis-app.ts', [provider.issuer, clusterUrl])
  const cb = await startReplica('./servers/redis-app.ts', [provider.issuer, clusterUrl])
  // The same apiserver with the default in-memory store, measured in the same run for comparison.
  const memory = await startReplica('./servers/plugin-app.ts', [provider.issuer])
  const cookie = { cookie: `clearml_token_basic=${a.info.sessionToken}` }
  const memoryCookie = { cookie: `clearml_token_basic=${memory.info.sessionToken}` }

  // (a) authenticate on replica A, with its local copy holding every revocation.
  const scenarios: Record<string, () => Promise<{ rps: number, cpuUs: number }>> = {
    'Redis store: bare route': async () => await load(a, '/bare'),
    'Redis store: bare route, same cookie header': async () => await load(a, '/bare', cookie),
    'Redis store: authenticate, session cookie': async () => await load(a, '/protected', cookie),
    'memory store: bare route': async () => await load(memory, '/bare'),
    'memory store: authenticate, session cookie': async () => await load(memory, '/protected', memoryCookie)
  }
  const scenarioNames = Object.keys(scenarios)
  const samples = new Map(scenarioNames.map((name) => [name, [] as Array<{ rps: number, cpuUs: number }>]))
  for (const name of scenarioNames) await scenarios[name]() // warm-up
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of [...scenarioNames.slice(round % scenarioNames.length), ...scenarioNames.slice(0, round % scenarioNames.length)]) {
      samples.get(name)!.push(await scenarios[name]())
      process.stderr.write('.')
    }
  }
  process.stderr.write('\n')
  const rps = Object.fromEntries(scenarioNames.map((name) => [name, median(samples.get(name)!.map((s) => s.rps))]))
  const cpuUs = Object.fromEntries(scenarioNames.map((name) => [name, median(samples.get(name)!.map((s) => s.cpuUs))]))

  // (b) Propagation from A to B: a steady stream, a burst, and a stream while B is under full load;
  // (e) the same stream and burst on the Cluster, interleaved round by round.
  await propagate(a, b, 'warm-up', 50, INTERVAL_MS)
  await propagate(ca, cb, 'cluster-warm-up', 50, INTERVAL_MS)
  const stream: Series[] = []
  const burst: Series[] = []
  const clusterStream: Series[] = []
  const clusterBurst: Series[] = []
  for (let round = 0; round < 3; round++) {
    stream.push(await propagate(a, b, `stream-${round}`, PROPAGATION, INTERVAL_MS))
    clusterStream.push(await propagate(ca, cb, `cluster-stream-${round}`, PROPAGATION, INTERVAL_MS))
    burst.push(await propagate(a, b, `burst-${round}`, PROPAGATION, 0))
    clusterBurst.push(await propagate(ca, cb, `cluster-burst-${round}`, PROPAGATION, 0))
  }
  const busyLoad = autocannon({ url: `${b.url}/protected`, connections: CONNECTIONS, duration: Math.max(DURATION, Math.ceil(PROPAGATION * INTERVAL_MS / 1000) + 2), headers: { cookie: `clearml_token_basic=${b.info.sessionToken}` } })
  await new Promise((resolve) => setTimeout(resolve, 500))
  const busy = [await propagate(a, b, 'busy', PROPAGATION, INTERVAL_MS)]
  const busyResult = await busyLoad
  const statsA = await json<Stats>(`${a.url}/stats`)
  const statsB = await json<Stats>(`${b.url}/stats`)

  for (const replica of [a, b, ca, cb, memory]) await fetch(`${replica.url}/exit`, { method: 'POST' }).catch(() => {})
  seed.disconnect()
  clusterSeed.disconnect()
  await provider.close()
  await server.stop()
  await cluster.stop()

  const pooled = (series: Series[]): { count: number, missing: number, p50: number, p99: number, max: number, revokeP50: number, revokeP99: number } => {
    const latencies = series.flatMap((s) => s.latenciesMs)
    const revokeMs = series.flatMap((s) => s.revokeMs)
    return {
      count: latencies.length,
      missing: series.reduce((sum, s) => sum + s.missing, 0),
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      max: Math.max(...latencies),
      revokeP50: percentile(revokeMs, 50),
      revokeP99: percentile(revokeMs, 99)
    }
  }
  const summary = {
    machine: { cpus: cpus().length, node: process.version, loadavg: (await import('node:os')).loadavg() },
    settings: { rounds: ROUNDS, durationSec: DURATION, connections: CONNECTIONS, revocations: REVOCATIONS, perSeries: PROPAGATION, intervalMs: INTERVAL_MS },
    requestsPerSec: Object.fromEntries(scenarioNames.map((name) => [name, Math.round(rps[name])])),
    cpuUsPerRequest: cpuUs,
    ratios: {
      redisAuthenticateVsBare: rps['Redis store: authenticate, session cookie'] / rps['Redis store: bare route'],
      redisAuthenticateVsBareSameHeader: rps['Redis store: authenticate, session cookie'] / rps['Redis store: bare route, same cookie header'],
      memoryAuthenticateVsBare: rps['memory store: authenticate, session cookie'] / rps['memory store: bare route']
    },
    /** What authenticate adds to a bare route's CPU time, per request. */
    authenticateCpuUs: {
      redis: cpuUs['Redis store: authenticate, session cookie'] - cpuUs['Redis store: bare route'],
      memory: cpuUs['memory store: authenticate, session cookie'] - cpuUs['memory store: bare route']
    },
    propagationMs: { stream: pooled(stream), burst: pooled(burst), streamWhileBusy: { ...pooled(busy), busyRps: Math.round(busyResult.requests.average), busyNon2xx: busyResult.non2xx } },
    clusterPropagationMs: { stream: pooled(clusterStream), burst: pooled(clusterBurst) },
    samples: Object.fromEntries(scenarioNames.map((name) => [name, samples.get(name)!.map((s) => ({ rps: Math.round(s.rps), cpuUs: Number(s.cpuUs.toFixed(1)) }))])),
    isRevokedNs: checkNs,
    fullLoad: { entries: REVOCATIONS, readyMs: median(loads.map((l) => l.ms)), loadMs: median(loads.map((l) => l.loadMs)), heapBytesPerEntry: median(loads.map((l) => l.heapBytes)) / REVOCATIONS },
    replicas: { aRevocations: statsA.revocations, bRevocations: statsB.revocations, queued: statsA.queued + statsB.queued }
  }

  console.log(`\n| scenario (Redis store: replica A, ${f(REVOCATIONS)} revocations in its copy) | req/s (median of ${ROUNDS}) | CPU per request |\n|---|---|---|`)
  for (const name of scenarioNames) console.log(`| ${name} | ${f(rps[name])} | ${f(cpuUs[name], 1)} µs |`)
  console.log(`
| ratio | value | goal |
|---|---|---|
| Redis store: authenticate (cookie) / bare | ${f(summary.ratios.redisAuthenticateVsBare, 2)}× | ≥ 0.90× |
| Redis store: authenticate (cookie) / bare with the same cookie header | ${f(summary.ratios.redisAuthenticateVsBareSameHeader, 2)}× | ≥ 0.90× |
| memory store: authenticate (cookie) / bare, same run | ${f(summary.ratios.memoryAuthenticateVsBare, 2)}× | |
| CPU authenticate adds to a request: Redis store / memory store | ${f(summary.authenticateCpuUs.redis, 1)} µs / ${f(summary.authenticateCpuUs.memory, 1)} µs | |

| propagation A → B (revoke called on A → in B's copy) | revocations | p50 | p99 | max | A's revoke() p50 / p99 |
|---|---|---|---|---|---|`)
  const row = (name: string, p: ReturnType<typeof pooled>): void => {
    console.log(`| ${name} | ${p.count}${p.missing > 0 ? ` (${p.missing} never seen)` : ''} | ${f(p.p50, 2)} ms | ${f(p.p99, 2)} ms | ${f(p.max, 2)} ms | ${f(p.revokeP50, 2)} / ${f(p.revokeP99, 2)} ms |`)
  }
  row(`stream, one every ${INTERVAL_MS} ms`, summary.propagationMs.stream)
  row('burst, all at once', summary.propagationMs.burst)
  row(`stream while B serves authenticate (${f(summary.propagationMs.streamWhileBusy.busyRps)} req/s)`, summary.propagationMs.streamWhileBusy)
  row(`Cluster: stream, one every ${INTERVAL_MS} ms`, summary.clusterPropagationMs.stream)
  row('Cluster: burst, all at once', summary.clusterPropagationMs.burst)
  console.log(`
| full load of ${f(REVOCATIONS)} revocations (median of 5) | value |
|---|---|
| ready() of a new store | ${f(summary.fullLoad.readyMs, 1)} ms |
| of which subscribe + ZSCAN + write-back check | ${f(summary.fullLoad.loadMs, 1)} ms |
| heap of the local copy | ${f(summary.fullLoad.heapBytesPerEntry)} bytes per revocation |

| isRevoked of a live session, in process (median of 5 × 2,000,000) | ns per call |
|---|---|`)
  for (const [name, ns] of Object.entries(checkNs)) console.log(`| ${name} | ${f(ns, 1)} |`)
  console.log('\n' + JSON.stringify(summary))
}

await main()
