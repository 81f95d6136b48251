/**
 * The peer people would pick instead: fastify-keycloak-adapter, configured against the same
 * provider, with the same bare and protected routes. argv: issuer.
 */
import Fastify, { type FastifyPluginAsync } from 'fastify'
import adapterModule from 'fastify-keycloak-adapter'

// A CommonJS module whose plugin is its `default` export property.
const keycloak = (adapterModule as unknown as { default: FastifyPluginAsync<Record<string, unknown>> }).default
const issuer = new URL(process.argv[2])
const app = Fastify({ logger: false })
await app.register(keycloak, {
  appOrigin: 'http://127.0.0.1:1',
  keycloakSubdomain: `${issuer.host}${issuer.pathname}`,
  useHttps: false,
  clientId: 'clearml',
  clientSecret: 'bench-secret',
  excludedPatterns: ['/bare']
})
app.get('/bare', async () => ({ ok: true }))
app.get('/protected', async () => ({ ok: true }))
await app.listen({ port: 0, host: '127.0.0.1' })
console.log(JSON.stringify({ port: (app.server.address() as { port: number }).port }))
