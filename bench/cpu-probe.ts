/**
 * CPU time the apiserver spends per request, per route: a steadier figure than req/s on a machine
 * where the load generator shares the cores. `npx tsx bench/cpu-probe.ts`
 */
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import autocannon from 'autocannon'
import { startFastProvider } from './fast-provider.js'

const provider = await startFastProvider()
const child = spawn(process.execPath, ['--import', 'tsx', new URL('./servers/plugin-app.ts', import.meta.url).pathname, provider.issuer], { stdio: ['ignore', 'pipe', 'inherit'] })
const info = JSON.parse(await new Promise<string>((resolve) => createInterface({ input: child.stdout! }).once('line', resolve)))
const url = `http://127.0.0.1:${info.port as number}`
const cookie = `clearml_token_basic=${info.sessionToken as string}`
const cpu = async (): Promise<number> => { const s = await (await fetch(`${url}/stats`)).json() as { cpu: { user: number, system: number } }; return s.cpu.user + s.cpu.system }
const cases: Array<[string, string, Record<string, string>]> = [['bare', '/bare', {}], ['bare + cookie header', '/bare', { cookie }], ['no-op preHandler + cookie', '/noop-hook', { cookie }], ['authenticate (cookie)', '/protected', { cookie }], ['authenticate (Bearer)', '/protected', { authorization: `Bearer ${info.sessionToken as string}` }]]
const amount = Number(process.env.PROBE_REQUESTS ?? 100000)
const results = new Map<string, number[]>()
for (let round = 0; round < 3; round++) {
  for (const [name, path, headers] of cases) {
    const before = await cpu()
    await autocannon({ url: url + path, connections: 50, amount, headers })
    results.set(name, [...(results.get(name) ?? []), (await cpu() - before) / amount])
  }
}
for (const [name, values] of results) console.log(name.padEnd(24), values.sort((a, b) => a - b)[1].toFixed(2), 'µs CPU per request (median of 3)')
child.kill()
await provider.close()
