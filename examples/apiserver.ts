/**
 * An example apiserver: the plugin plus the few pages a person sees (log in, who am I, log out).
 * The demo runs it against the embedded provider; `examples/replicas/apiserver.ts` runs it with Redis
 * and PostgreSQL behind a proxy, as in `examples/keycloak/`. Its configuration is only ever the
 * CLEARML__ environment.
 */
import Fastify, { LogController, type FastifyInstance } from 'fastify'
import clearmlKeycloak, { MemoryDirectory, redactPaths } from '../index.js'
import { escapeHtml, page } from './demo/page.js'

/** The demo company: ClearML groups ml-team and data-science, and a whitelist for acme.example. */
export function seededDirectory (): MemoryDirectory {
  const directory = new MemoryDirectory()
  directory.addCompany({ id: 'acme', name: 'Acme ML' })
  directory.addGroup('acme', 'ml-team')
  directory.addGroup('acme', 'data-science')
  directory.addWhitelistEntry({ domain: 'acme.example', company: 'acme' })
  return directory
}

export async function buildApiserver (options: { env: Record<string, string | undefined>, webappUrl: string, directory: MemoryDirectory, logger?: boolean }): Promise<FastifyInstance> {
  const { directory } = options
  // Only the plugin's own lines (logins, refusals) by default: per-request lines drown them out.
  const app = Fastify({
    logger: options.logger === false ? false : { level: 'info', redact: redactPaths },
    logController: new LogController({ disableRequestLogging: process.env.DEMO_REQUEST_LOGS !== '1' })
  })
  await app.register(clearmlKeycloak, { directory, webappUrl: options.webappUrl, env: options.env })

  app.get('/', async (request, reply) => {
    const session = await app.keycloak.sessionOf(request)
    if (session === null) return await reply.redirect('/login', 302)
    const groups = directory.groupsOf(session.user)
    const user = directory.listUsers().find((candidate) => candidate.id === session.user)
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
    data: { user: { ...request.clearmlIdentity, groups: directory.groupsOf(request.clearmlIdentity!.user) } }
  }))
  return app
}

/** The CLEARML__ and TRAINS__ variables of an environment. */
export function clearmlVariables (env: NodeJS.ProcessEnv): Record<string, string> {
  return Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] =>
    (entry[0].startsWith('CLEARML__') || entry[0].startsWith('TRAINS__')) && entry[1] !== undefined))
}
