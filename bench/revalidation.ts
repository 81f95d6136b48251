/**
 * Sessions that follow Keycloak (issue #20, SPEC section 12): what revalidation costs
 * `authenticate`. 10,000 active sessions that follow Keycloak, each request with the next one, on an
 * apiserver whose revalidation period is short enough that refreshes happen all through the run (the
 * sessions' last checks spread over the past period, so that they fall due one after another),
 * against the bare route receiving the same cookies, and against as many sessions that do not
 * follow Keycloak; then the apiserver's CPU per revalidation. The provider answers refreshes with a
 * token set signed in advance, so its own signing is not what is measured.
 *
 *   BENCH_FOLLOWED_SESSIONS (10000)  BENCH_REVALIDATE_SEC (300, the default)  BENCH_CPU_PROF (a directory for the apiserver's CPU profile)
 *   and bench/common.ts's knobs
 */
import autocannon, { type Request } from 'autocannon'
import { cpus, loadavg } from 'node:os'
import { CONNECTIONS, cpuTime, DURATION, formatNumber as f, median, post, ROUNDS, startApiserver, stopApiserver, type Apiserver } from './common.js'

const SESSIONS = Number(process.env.BENCH_FOLLOWED_SESSIONS ?? 10000)
const PERIOD = Number(process.env.BENCH_REVALIDATE_SEC ?? 300)

type Server = Apiserver<{ port: number }>

interface Figures { rps: number, requests: number, cpuUs: number, refreshes: number }

/** One load window over `path` with each request the next cookie: req/s, requests, server CPU µs and refreshes at the provider in all. */
async function window (server: Server, path: string, cookies: string[], duration = DURATION, connections = CONNECTIONS): Promise<Figures> {
  let next = 0
  const refreshesBefore = await provider.refreshes()
  const before = await cpuTime(server)
  const result = await autocannon({
    url: server.url + path,
    connections,
    duration,
    requests: [{ setupRequest: (request: Request) => ({ ...request, headers: { ...request.headers, cookie: cookies[next++ % cookies.length] } }) }]
  })
  if (result.non2xx > 0 || result.errors > 0) throw new Error(`${path}: ${result.non2xx} non-2xx, ${result.errors} errors`)
  const cpuUs = await cpuTime(server) - before
  return { rps: result.requests.average, requests: result.requests.total, cpuUs, refreshes: await provider.refreshes() - refreshesBefore }
}

// The provider in a process of its own: in the runner's, its answers would wait on autocannon.
const providerProcess = await startApiserver<{ port: number, issuer: string, refreshToken: string }>('./servers/provider-app.ts', ['bench-followed-user'])
const provider = {
  issuer: providerProcess.info.issuer,
  refreshes: async (): Promise<number> => ((await (await fetch(providerProcess.url)).json()) as { refreshes: number }).refreshes
}
const refreshToken = providerProcess.info.refreshToken
const CPU_PROF = process.env.BENCH_CPU_PROF
const server = await startApiserver<{ port: number }>('./servers/plugin-app.ts', [provider.issuer, '', String(PERIOD)], ['--expose-gc', ...(CPU_PROF === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`])])
// Their last checks spread over the past period, as for users who logged in at different times.
const followed = (await post<string[]>(server, '/followed-sessions', { count: SESSIONS, refreshToken, spreadSec: PERIOD })).map((token) => `clearml_token_basic=${token}`)
const plain = (await post<string[]>(server, '/sessions', { count: SESSIONS })).map((token) => `clearml_token_basic=${token}`)
const started = Date.now()
const refreshesAtStart = await provider.refreshes()

// Every session presented once, as after a busy morning; then rounds of the three cases, rotated.
for (const cookies of [followed, plain]) await window(server, '/protected', cookies)
const cases: Record<string, () => Promise<Figures>> = {
  'bare route, the same cookies': async () => await window(server, '/bare', followed),
  'authenticate, sessions that follow Keycloak': async () => {
    // While the other cases ran, nobody used these sessions, and those that fell due meanwhile are
    // checked at their next request: a backlog steady traffic does not have. It is worked off first,
    // under a light load (so that the checks are not slowed by a saturated server), until a second's
    // checks are back near sessions / period; the measured window then sees what steady use costs.
    for (let i = 0; i < 10; i++) {
      if ((await window(server, '/protected', followed, 1, 4)).refreshes <= 1.5 * SESSIONS / PERIOD) break
    }
    return await window(server, '/protected', followed)
  },
  'authenticate, sessions that do not': async () => await window(server, '/protected', plain)
}
const names = Object.keys(cases)
const samples = new Map(names.map((name) => [name, [] as Figures[]]))
for (let round = 0; round < ROUNDS; round++) {
  for (const name of [...names.slice(round % names.length), ...names.slice(0, round % names.length)]) {
    samples.get(name)!.push(await cases[name]())
    process.stderr.write('.')
  }
}
process.stderr.write('\n')
const seconds = (Date.now() - started) / 1000
const rps = (name: string): number => median(samples.get(name)!.map((s) => s.rps))
const cpuPerRequest = (name: string): number => median(samples.get(name)!.map((s) => s.cpuUs / s.requests))
const bare = 'bare route, the same cookies'
const follows = 'authenticate, sessions that follow Keycloak'
const plainCase = 'authenticate, sessions that do not'
// CPU a revalidation costs: the followed windows' CPU beyond what as many plain requests cost, per refresh made in them.
const perRevalidation = median(samples.get(follows)!.filter((s) => s.refreshes > 0).map((s) => (s.cpuUs - s.requests * cpuPerRequest(plainCase)) / s.refreshes))
const refreshes = await provider.refreshes() - refreshesAtStart
const summary = {
  machine: { cpus: cpus().length, node: process.version, loadAverage: loadavg() },
  settings: { sessions: SESSIONS, revalidateSec: PERIOD, rounds: ROUNDS, durationSec: DURATION, connections: CONNECTIONS },
  requestsPerSec: Object.fromEntries(names.map((name) => [name, Math.round(rps(name))])),
  cpuUsPerRequest: Object.fromEntries(names.map((name) => [name, Number(cpuPerRequest(name).toFixed(1))])),
  ratios: { followedVsBare: rps(follows) / rps(bare), plainVsBare: rps(plainCase) / rps(bare) },
  refreshes: { total: refreshes, seconds, perSessionPerPeriod: refreshes / SESSIONS / (seconds / PERIOD), perSecondInTheWindows: median(samples.get(follows)!.map((s) => s.refreshes / DURATION)) },
  cpuUsPerRevalidation: perRevalidation
}
await stopApiserver(server, CPU_PROF !== undefined)
providerProcess.process.kill()

console.log(`
| ${f(SESSIONS)} active sessions, each request the next one; revalidation every ${PERIOD} s | req/s (median of ${ROUNDS}) | CPU µs per request |
|---|---|---|
${names.map((name) => `| ${name} | ${f(rps(name))} | ${f(cpuPerRequest(name), 1)} |`).join('\n')}

| figure | value | goal |
|---|---|---|
| authenticate (sessions that follow Keycloak) / bare | ${f(summary.ratios.followedVsBare, 2)}× | ≥ 0.90× |
| authenticate (sessions that do not) / bare | ${f(summary.ratios.plainVsBare, 2)}× | |
| refreshes during the run | ${f(refreshes)} in ${f(seconds)} s | |
| refreshes per second in the measured windows | ${f(summary.refreshes.perSecondInTheWindows)} | ${f(SESSIONS / PERIOD)} (sessions / period) |
| refreshes per session per period | ${f(summary.refreshes.perSessionPerPeriod, 2)} | about 1 for every session in use |
| apiserver CPU per revalidation | ${f(perRevalidation)} µs | |
`)
console.log(JSON.stringify(summary))
