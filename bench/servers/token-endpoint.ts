/**
 * The token endpoint of `bench/code-exchange.ts`, in its own process so that the provider's CPU is
 * never counted as the client's: `bench/fast-provider.ts`, whose every prepared code answers one
 * token set signed in advance (an ID token and a Keycloak-shaped access token, about 1.6 KB).
 *
 * Prints one JSON line `{ tokenEndpoint }` when listening. IPC messages:
 *   { prepare: { prefix, count } } → { prepared: count }   codes `${prefix}${0..count-1}`, single use
 *   { stats: true } → { cpuMicros, connections }            this process's CPU, TCP connections accepted
 * Exits when the parent disconnects.
 */
import { subscribe } from 'node:diagnostics_channel'
import { randomUUID } from 'node:crypto'
import { startFastProvider } from '../fast-provider.js'

interface Prepare { prepare: { prefix: string, count: number } }
interface Stats { stats: true }

// Counted on the server side, so a client's connection reuse (or its absence) shows whatever its HTTP library.
let connections = 0
subscribe('net.server.socket', () => { connections++ })

const provider = await startFastProvider()
await provider.prepare('template', { nonce: 'bench-nonce', subject: randomUUID() })
const tokenSet = provider.tokenSets.get('template')!

process.on('message', (message: Prepare | Stats) => {
  if ('prepare' in message) {
    const { prefix, count } = message.prepare
    for (let i = 0; i < count; i++) provider.tokenSets.set(`${prefix}${i}`, tokenSet)
    process.send!({ prepared: count })
  } else {
    const cpu = process.cpuUsage()
    process.send!({ cpuMicros: cpu.user + cpu.system, connections })
  }
})
process.once('disconnect', () => { provider.close().then(() => process.exit(0), () => process.exit(1)) })

console.log(JSON.stringify({ tokenEndpoint: `${provider.issuer}/protocol/openid-connect/token` }))
