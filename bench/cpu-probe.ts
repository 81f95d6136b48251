/**
 * CPU time the apiserver spends per request, per route: a steadier figure than req/s on a machine
 * where the load generator shares the cores. `npx tsx bench/cpu-probe.ts`
 *
 * Also with many sessions (issue #15): `PROBE_SESSIONS` (100000) distinct session cookies, each
 * request with the next one, on an apiserver whose cache holds them all after a first pass, and on
 * one that caches none (`sessionCacheMax: 0`), where every request pays the synchronous verification.
 */
import { loadavg } from 'node:os'
import autocannon, { type Request } from 'autocannon'
import { startFastProvider } from './fast-provider.js'
import { startApiserver, type Apiserver } from './common.js'

const amount = Number(process.env.PROBE_REQUESTS ?? 100000)
const sessionCount = Number(process.env.PROBE_SESSIONS ?? 100000)

type App = Apiserver<{ port: number, sessionToken: string }>
const provider = await startFastProvider()
const start = async (args: string[]): Promise<App> => await startApiserver('./servers/plugin-app.ts', [provider.issuer, ...args], ['--expose-gc'])
const app = await start([])
const uncached = await start(['0'])
// /cpu rather than /stats, which collects garbage first: a full collection with 100,000 cached
// sessions would be counted in the measurement.
const cpu = async (server: App): Promise<number> => { const { user, system } = await (await fetch(`${server.url}/cpu`)).json() as { user: number, system: number }; return user + system }
const tokens = await (await fetch(`${app.url}/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ count: sessionCount }) })).json() as string[]
/** Each request of a run with the next session cookie. */
const cycling = (): Request[] => { let next = 0; return [{ setupRequest: (request: Request) => ({ ...request, headers: { ...request.headers, cookie: `clearml_token_basic=${tokens[next++ % tokens.length]}` } }) }] }

const cookie = `clearml_token_basic=${app.info.sessionToken}`
// An API client's Keycloak access token, as bench/run.ts signs it (plugin-app knows its subject).
const now = Math.floor(Date.now() / 1000)
const keycloakBearer = `Bearer ${await provider.sign({ iss: provider.issuer, sub: 'bench-api-client', sid: 'bench-keycloak-session', aud: 'account', azp: 'clearml', typ: 'Bearer', iat: now, exp: now + 7200 })}`
const many = sessionCount.toLocaleString('en-US')
const cases: Array<{ name: string, server: App, path: string, headers?: Record<string, string>, requests?: () => Request[] }> = [
  { name: 'bare', server: app, path: '/bare' },
  { name: 'bare + cookie header', server: app, path: '/bare', headers: { cookie } },
  { name: 'no-op preHandler + cookie', server: app, path: '/noop-hook', headers: { cookie } },
  { name: 'authenticate (cookie)', server: app, path: '/protected', headers: { cookie } },
  { name: 'authenticate (Bearer)', server: app, path: '/protected', headers: { authorization: `Bearer ${app.info.sessionToken}` } },
  { name: 'bare + Keycloak Authorization header', server: app, path: '/bare', headers: { authorization: keycloakBearer } },
  { name: 'authenticate (Keycloak access token)', server: app, path: '/protected', headers: { authorization: keycloakBearer } },
  { name: `bare, ${many} cookies`, server: app, path: '/bare', requests: cycling },
  { name: `authenticate, ${many} sessions, cached`, server: app, path: '/protected', requests: cycling },
  { name: `bare, ${many} cookies, no cache`, server: uncached, path: '/bare', requests: cycling },
  { name: `authenticate, ${many} sessions, no cache`, server: uncached, path: '/protected', requests: cycling }
]
// A first pass puts every session in the cache, as a busy morning would.
await autocannon({ url: `${app.url}/protected`, connections: 50, amount: sessionCount, requests: cycling() })
const results = new Map<string, number[]>()
for (let round = 0; round < 3; round++) {
  for (const { name, server, path, headers, requests } of cases) {
    const before = await cpu(server)
    const result = await autocannon({ url: server.url + path, connections: 50, amount, headers, requests: requests?.() })
    if (result.non2xx > 0) throw new Error(`${name}: ${result.non2xx} non-2xx answers`)
    results.set(name, [...(results.get(name) ?? []), (await cpu(server) - before) / amount])
  }
}
for (const [name, values] of results) console.log(name.padEnd(44), values.sort((a, b) => a - b)[1].toFixed(2), 'µs CPU per request (median of 3)')
console.log('load average (1, 5, 15 min) at the end:', loadavg().map((n) => n.toFixed(2)).join(', '))
app.process.kill()
uncached.process.kill()
await provider.close()
