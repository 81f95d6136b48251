/**
 * An example apiserver: the plugin plus the few pages a person sees (log in, who am I, log out), the
 * admin-only explain route, and the plugin's events as Prometheus metrics at `/metrics`.
 * The demo runs it against the embedded provider; `examples/replicas/apiserver.ts` runs it with Redis
 * and PostgreSQL behind a proxy, as in `examples/keycloak/`. Its configuration is only ever the
 * CLEARML__ environment.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import Fastify, { LogController, type FastifyInstance } from 'fastify'
import { Counter, Histogram, Registry } from 'prom-client'
import clearmlKeycloak, {
  diagnosticsChannels, MemoryDirectory, redactPaths,
  type AuthRefusedEvent, type RevalidateEvent, type DirectoryUser, type IdpCallEvent, type JwksFetchEvent, type LoginEvent, type RevocationStore, type UserDirectory, type WhitelistSeed
} from '../index.js'
import { escapeHtml, page } from './demo/page.js'

/** A directory the example's pages can also read back: `MemoryDirectory`, or `PostgresDirectory` (async). */
export type ExampleDirectory = UserDirectory & {
  groupsOf(userId: string): string[] | Promise<string[]>
  listUsers(): DirectoryUser[] | Promise<DirectoryUser[]>
}

/** The seeding helpers `MemoryDirectory` and `PostgresDirectory` share. */
interface SeedableDirectory {
  addCompany(company: { id: string, name: string }): unknown
  addGroup(company: string, name: string): unknown
  addWhitelistEntry(entry: WhitelistSeed): unknown
}

/** The demo company: ClearML groups ml-team and data-science, and a whitelist for acme.example. */
export async function seedDemoCompany (directory: SeedableDirectory): Promise<void> {
  await directory.addCompany({ id: 'acme', name: 'Acme ML' })
  await directory.addGroup('acme', 'ml-team')
  await directory.addGroup('acme', 'data-science')
  await directory.addWhitelistEntry({ domain: 'acme.example', company: 'acme' })
}

export async function seededDirectory (): Promise<MemoryDirectory> {
  const directory = new MemoryDirectory()
  await seedDemoCompany(directory)
  return directory
}

export async function buildApiserver (options: {
  env: Record<string, string | undefined>
  webappUrl: string
  directory: ExampleDirectory
  revocations?: RevocationStore
  logger?: boolean
}): Promise<FastifyInstance> {
  const { directory } = options
  // Only the plugin's own lines (logins, refusals) by default: per-request lines drown them out.
  const app = Fastify({
    logger: options.logger === false ? false : { level: 'info', redact: redactPaths },
    logController: new LogController({ disableRequestLogging: process.env.DEMO_REQUEST_LOGS !== '1' })
  })
  await app.register(clearmlKeycloak, { directory, webappUrl: options.webappUrl, env: options.env, revocations: options.revocations, routes: { explain: true } })

  const metrics = prometheusMetrics()
  app.addHook('onClose', async () => { metrics.close() })
  app.get('/metrics', async (request, reply) => await reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()))

  app.get('/', async (request, reply) => {
    const session = await app.keycloak.sessionOf(request)
    if (session === null) return await reply.redirect('/login', 302)
    const groups = await directory.groupsOf(session.user)
    const user = (await directory.listUsers()).find((candidate) => candidate.id === session.user)
    return await reply.type('text/html').send(page('Acme ML — ClearML', `
      <h1>Welcome, <span id="user-name">${escapeHtml(session.user_name)}</span></h1>
      <dl>
        <dt>Role</dt><dd id="user-role">${escapeHtml(session.role)}</dd>
        <dt>Email</dt><dd id="user-email">${escapeHtml(user?.email ?? '')}</dd>
        <dt>Company</dt><dd id="user-company">${escapeHtml(session.company_name)}</dd>
        <dt>ClearML groups</dt><dd id="user-groups">${groups.length === 0 ? '<i>none</i>' : groups.map((g) => `<span class="group">${escapeHtml(g)}</span>`).join(' ')}</dd>
      </dl>
      <p><a class="button" id="logout" href="/logout">Log out</a></p>`))
  })

  app.get('/login', async (request, reply) => {
    const error = (request.query as { sso_error?: string }).sso_error
    const modes = await app.keycloak.supportedModes(request)
    const provider = modes.sso_providers[0]
    return await reply.type('text/html').send(page('Acme ML — sign in', `
      <h1>Acme ML</h1><p>ClearML, with single sign-on.</p>
      ${error === undefined ? '' : `<p class="error" id="sso-error">Login refused: <code>${escapeHtml(error)}</code></p>`}
      <p><a class="button" id="login-keycloak" href="${escapeHtml(provider.url)}">Log in with ${escapeHtml(provider.display_name)}</a></p>`))
  })

  app.get('/users.get_current_user', { preHandler: app.keycloak.authenticate }, async (request) => ({
    meta: { result_code: 200, result_msg: 'OK' },
    data: { user: { ...request.clearmlIdentity, groups: await directory.groupsOf(request.clearmlIdentity!.user) } }
  }))
  return app
}

const SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/**
 * The plugin's `node:diagnostics_channel` events (README, "Metrics") as Prometheus metrics, in a
 * registry of their own; prom-client is the example's dependency, not the plugin's. The channels are
 * process-wide: every plugin instance in the process is counted. `close()` unsubscribes.
 */
export function prometheusMetrics (): { registry: Registry, close: () => void } {
  const registry = new Registry()
  const registers = [registry]
  const logins = new Counter({
    name: 'clearml_sso_logins_total',
    help: 'Keycloak logins by outcome (ok, refused, failed), refusal code, and whether a ClearML user was created',
    labelNames: ['outcome', 'code', 'created'] as const,
    registers
  })
  const loginSeconds = new Histogram({ name: 'clearml_sso_login_duration_seconds', help: 'Duration of a login, callback to session', labelNames: ['outcome'] as const, buckets: SECONDS, registers })
  const idpRequests = new Counter({ name: 'clearml_sso_idp_requests_total', help: 'HTTP calls to Keycloak by endpoint and status (0: no answer)', labelNames: ['endpoint', 'status'] as const, registers })
  const idpSeconds = new Histogram({ name: 'clearml_sso_idp_request_duration_seconds', help: 'Duration of a call to Keycloak', labelNames: ['endpoint'] as const, buckets: SECONDS, registers })
  const jwksFetches = new Counter({ name: 'clearml_sso_jwks_fetches_total', help: 'Key-set fetches by reason (initial, max_age, unknown_kid: a key rotation)', labelNames: ['reason'] as const, registers })
  const refusals = new Counter({
    name: 'clearml_sso_auth_refused_total',
    help: 'Requests authenticate refused, by code and the credential presented (none, session, keycloak)',
    labelNames: ['code', 'credential'] as const,
    registers
  })

  const revalidations = new Counter({
    name: 'clearml_sso_revalidations_total',
    help: 'Sessions checked at Keycloak with their refresh token, by outcome (ok, ended, unavailable)',
    labelNames: ['outcome'] as const,
    registers
  })
  const revalidationSeconds = new Histogram({ name: 'clearml_sso_revalidation_duration_seconds', help: 'Duration of a revalidation at Keycloak', labelNames: ['outcome'] as const, buckets: SECONDS, registers })

  const subscriptions: Array<[string, (message: unknown) => void]> = [
    [diagnosticsChannels.login, (message) => {
      const { outcome, code, created, durationMs } = message as LoginEvent
      logins.inc({ outcome, ...(code === undefined ? {} : { code }), ...(created === undefined ? {} : { created: String(created) }) })
      loginSeconds.observe({ outcome }, durationMs / 1000)
    }],
    [diagnosticsChannels.idpCall, (message) => {
      const { endpoint, status, durationMs } = message as IdpCallEvent
      idpRequests.inc({ endpoint, status })
      idpSeconds.observe({ endpoint }, durationMs / 1000)
    }],
    [diagnosticsChannels.jwksFetch, (message) => { jwksFetches.inc({ reason: (message as JwksFetchEvent).reason }) }],
    [diagnosticsChannels.authRefused, (message) => {
      const { code, credential } = message as AuthRefusedEvent
      refusals.inc({ code, credential: credential ?? 'none' })
    }],
    [diagnosticsChannels.revalidate, (message) => {
      const { outcome, durationMs } = message as RevalidateEvent
      revalidations.inc({ outcome })
      revalidationSeconds.observe({ outcome }, durationMs / 1000)
    }]
  ]
  for (const [name, onMessage] of subscriptions) subscribe(name, onMessage)
  return { registry, close: () => { for (const [name, onMessage] of subscriptions) unsubscribe(name, onMessage) } }
}

/** The CLEARML__ and TRAINS__ variables of an environment. */
export function clearmlVariables (env: NodeJS.ProcessEnv): Record<string, string> {
  return Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] =>
    (entry[0].startsWith('CLEARML__') || entry[0].startsWith('TRAINS__')) && entry[1] !== undefined))
}
