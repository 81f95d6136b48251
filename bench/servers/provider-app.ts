/**
 * The fast Keycloak-shaped provider (`bench/fast-provider.ts`) in a process of its own, for runners
 * whose load would otherwise slow its answers: the apiserver's refreshes then wait on the provider,
 * not on the load generator sharing its event loop. Prints one JSON line { port, issuer,
 * refreshToken } when listening; `GET /refreshes` answers how many refresh grants it has served.
 * argv: the Keycloak subject the refresh token stands for.
 */
import { createServer } from 'node:http'
import { startFastProvider } from '../fast-provider.js'

const provider = await startFastProvider()
const refreshToken = await provider.refreshFor(process.argv[2] ?? 'bench-followed-user')
const stats = createServer((_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ refreshes: provider.refreshes })) })
await new Promise<void>((resolve) => stats.listen(0, '127.0.0.1', resolve))
console.log(JSON.stringify({ port: (stats.address() as { port: number }).port, issuer: provider.issuer, refreshToken }))
