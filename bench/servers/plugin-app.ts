/**
 * The apiserver under benchmark, in its own process: a bare route, the same route behind
 * `authenticate`, the plugin's login routes, and a stats route for the runner.
 * argv: issuer. Prints one JSON line { port, sessionToken } when listening.
 */
import Fastify from 'fastify'
import clearmlKeycloak, { type UserDirectory } from '../../index.js'

const issuer = process.argv[2]
/**
 * A directory that keeps nothing: every login is a new user in one company. Memory figures then
 * show what the plugin keeps, not what an in-memory database holds.
 */
let created = 0
const company = { id: 'acme', name: 'Acme' }
const directory: UserDirectory = {
  getCompany: async () => company,
  findUserByIdentity: async () => null,
  findUserByEmail: async () => null,
  findWhitelistEntry: async () => ({ company: 'acme' }),
  createUser: async (user) => ({ ...user, id: `u${++created}` }),
  updateUser: async (id, patch) => ({ id, company: 'acme', name: 'x', role: 'user', ...patch }),
  findGroupsByName: async () => [],
  listUserGroups: async () => [],
  updateUserGroups: async () => {}
}

const app = Fastify({ logger: false })
await app.register(clearmlKeycloak, {
  directory,
  webappUrl: 'http://127.0.0.1:1',
  env: {
    CLEARML__services__login__sso__oauth_client__keycloak__base_url: issuer,
    CLEARML__secure__login__sso__oauth_client__keycloak__client_id: 'clearml',
    CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: 'bench-secret',
    CLEARML__secure__auth__token_secret: 'bench-token-secret'
  }
})
app.get('/bare', async () => ({ ok: true }))
app.get('/protected', { preHandler: app.keycloak.authenticate }, async () => ({ ok: true }))
// What any preHandler costs, to tell the hook's price from authenticate's.
app.get('/noop-hook', { preHandler: (_request, _reply, done) => { done() } }, async () => ({ ok: true }))
app.get('/stats', async () => {
  globalThis.gc?.()
  return { cpu: process.cpuUsage(), memory: process.memoryUsage(), created, sessionCache: app.keycloak.sso.sessions.cacheSize, jwksFetches: app.keycloak.sso.keys.fetches }
})
// Lets the runner end the process normally, so that --cpu-prof can write its profile.
app.post('/exit', async () => { setImmediate(() => process.exit(0)); return {} })
await app.listen({ port: 0, host: '127.0.0.1' })
// A session as a login makes it, with a Keycloak session id: authenticate checks both revocations.
const session = await app.keycloak.sso.sessions.issue({ id: 'u0', company: 'acme', name: 'Bench', role: 'user' }, company, 'bench-session', 'bench-keycloak-session')
console.log(JSON.stringify({ port: (app.server.address() as { port: number }).port, sessionToken: session.token }))
