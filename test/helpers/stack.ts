/**
 * A real login stack for flow tests: the Keycloak-like provider on one port, and an apiserver with
 * the plugin on another, configured through ClearML's environment variables.
 */
import { freePort } from '../../examples/free-port.js'
import Fastify, { type FastifyInstance } from 'fastify'
import clearmlKeycloak, { MemoryDirectory, type ClearmlKeycloakOptions, type UserDirectory } from '../../index.js'
import { startKeycloakLikeIdp, type KeycloakLikeIdp, type KeycloakLikeIdpOptions, type RealmClient, type RealmUser } from '../../examples/idp/keycloak-like-idp.js'
import { UserAgent } from './user-agent.js'

export const CLIENT_ID = 'clearml'
export const CLIENT_SECRET = 'kc-client-secret-for-tests'
export const TOKEN_SECRET = 'clearml-token-secret-for-tests-32-bytes-long'

export const KC = 'CLEARML__services__login__sso__oauth_client__keycloak__'
export const KC_SECURE = 'CLEARML__secure__login__sso__oauth_client__keycloak__'

export const USERS: RealmUser[] = [
  { username: 'alice', password: 'alice-pw', email: 'alice@acme.com', emailVerified: true, givenName: 'Alice', familyName: 'Admin', groups: ['/ml-team'], realmRoles: ['admin'] },
  { username: 'bob', password: 'bob-pw', email: 'bob@acme.com', emailVerified: true, givenName: 'Bob', familyName: 'Builder', groups: ['/ml-team', '/research/data-science'] },
  { username: 'carol', password: 'carol-pw', email: 'carol@acme.com', emailVerified: true, givenName: 'Carol', familyName: 'Chief', groups: ['/kc-admins'] },
  { username: 'dave', password: 'dave-pw', email: 'dave@acme.com', emailVerified: true, givenName: 'Dave', familyName: 'Nogroup', groups: [] },
  { username: 'mallory', password: 'mallory-pw', email: 'mallory@evil.example', emailVerified: true, givenName: 'Mallory', groups: ['/ml-team'] },
  { username: 'eve', password: 'eve-pw', email: 'bob@acme.com', emailVerified: false, givenName: 'Eve', groups: [] }
]

export function seedAcme (directory: MemoryDirectory): void {
  directory.addCompany({ id: 'c-acme', name: 'Acme' })
  directory.addGroup('c-acme', 'ml-team')
  directory.addGroup('c-acme', 'data-science')
  directory.addWhitelistEntry({ domain: 'acme.com', company: 'c-acme' })
}

function seededMemoryDirectory (seed: (directory: MemoryDirectory) => void): MemoryDirectory {
  const directory = new MemoryDirectory()
  seed(directory)
  return directory
}

export interface Stack<D extends UserDirectory = MemoryDirectory> {
  idp: KeycloakLikeIdp
  app: FastifyInstance
  appUrl: string
  directory: D
  env: Record<string, string>
  logs: string[]
  browser: () => UserAgent
  /** Logs `username` in through the whole browser flow; returns the final page and the agent. */
  login: (username: string, options?: { agent?: UserAgent, start?: string }) => Promise<{ agent: UserAgent, final: { url: string, status: number, body: string } }>
  close: () => Promise<void>
}

export interface StackOptions<D extends UserDirectory = MemoryDirectory> {
  /** Merged over the default environment; `undefined` removes a variable. */
  env?: Record<string, string | undefined>
  /** The whole environment instead, given the provider's issuer. */
  envFor?: (issuer: string) => Record<string, string>
  idp?: Partial<KeycloakLikeIdpOptions>
  plugin?: Partial<ClearmlKeycloakOptions>
  seed?: (directory: MemoryDirectory) => void
  /** A directory of the test's own (e.g. on PostgreSQL), already seeded; `seed` is then not used. */
  directory?: D
  /** Register a protected route `GET /me` that answers the session identity. */
  protectedRoute?: boolean
  /** Settings of the realm's client for the apiserver, over the defaults (e.g. `useRefreshTokens: false`). */
  client?: Partial<RealmClient>
  /** How the host registers the plugin (for example in a prefixed context); default `app.register(clearmlKeycloak, options)`. */
  mount?: (app: FastifyInstance, options: ClearmlKeycloakOptions) => Promise<void>
  /** The host's own routes and hooks, added after the plugin and before the server listens. */
  host?: (app: FastifyInstance) => void | Promise<void>
}

export async function startStack<D extends UserDirectory = MemoryDirectory> (options: StackOptions<D> = {}): Promise<Stack<D>> {
  const port = await freePort()
  const appUrl = `http://127.0.0.1:${port}`
  const idp = await startKeycloakLikeIdp({
    users: USERS,
    clients: [{ clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, redirectUris: [`${appUrl}/callback_keycloak`], postLogoutRedirectUris: [`${appUrl}/login`, `${appUrl}/bye`], backchannelLogoutUri: `${appUrl}/logout/backchannel`, ...options.client }],
    ...options.idp
  })
  const env: Record<string, string> = options.envFor !== undefined
    ? options.envFor(idp.issuer)
    : {
        [`${KC}base_url`]: idp.issuer,
        [`${KC_SECURE}client_id`]: `"${CLIENT_ID}"`,
        [`${KC_SECURE}client_secret`]: `"${CLIENT_SECRET}"`,
        CLEARML__secure__auth__token_secret: TOKEN_SECRET
      }
  for (const [name, value] of Object.entries(options.env ?? {})) {
    if (value === undefined) delete env[name]
    else env[name] = value
  }
  const directory = options.directory ?? seededMemoryDirectory(options.seed ?? seedAcme) as unknown as D

  const logs: string[] = []
  const app = Fastify({
    logger: { level: 'info', stream: { write: (line: string) => { logs.push(line) } } }
  })
  const pluginOptions: ClearmlKeycloakOptions = { directory, webappUrl: appUrl, env, ...options.plugin }
  if (options.mount !== undefined) await options.mount(app, pluginOptions)
  else await app.register(clearmlKeycloak, pluginOptions)
  if (options.protectedRoute === true) {
    app.get('/me', { preHandler: app.keycloak.authenticate }, async (request) => request.clearmlIdentity)
    // As a host calls it from a hook of its own.
    app.get('/me-direct', { preHandler: async (request, reply) => { await app.keycloak.authenticate(request, reply) } }, async (request) => request.clearmlIdentity)
  }
  app.get('/', async () => 'home')
  await options.host?.(app)
  await app.listen({ port, host: '127.0.0.1' })

  const login: Stack<D>['login'] = async (username, opts = {}) => {
    const agent = opts.agent ?? new UserAgent()
    const user = idp.users.find((candidate) => candidate.username === username)!
    const loginPage = await agent.navigate(`${appUrl}${opts.start ?? '/login/keycloak'}`)
    const final = await agent.submitLogin(loginPage, user.username, user.password)
    return { agent, final }
  }

  return {
    idp,
    app,
    appUrl,
    directory,
    env,
    logs,
    browser: () => new UserAgent(),
    login,
    close: async () => {
      await app.close()
      await idp.close()
    }
  }
}

export interface Replica {
  app: FastifyInstance
  /** Where this replica listens; its public URL is still the stack's (`webappUrl`). */
  url: string
  logs: string[]
  close: () => Promise<void>
}

/**
 * Another apiserver replica of `stack`, as behind a load balancer: the same CLEARML__ environment,
 * public URL and directory (one database), its own port, and its own plugin options (for example
 * its own revocation store on its own Redis client). It has the protected route `GET /me`.
 */
export async function startReplica (stack: Stack, plugin: Partial<ClearmlKeycloakOptions> = {}): Promise<Replica> {
  const logs: string[] = []
  const app = Fastify({
    logger: { level: 'info', stream: { write: (line: string) => { logs.push(line) } } }
  })
  await app.register(clearmlKeycloak, { directory: stack.directory, webappUrl: stack.appUrl, env: stack.env, ...plugin })
  app.get('/me', { preHandler: app.keycloak.authenticate }, async (request) => request.clearmlIdentity)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  return { app, url: `http://127.0.0.1:${port}`, logs, close: async () => { await app.close() } }
}
