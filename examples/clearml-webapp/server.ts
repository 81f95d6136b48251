/**
 * ClearML's own web app with Keycloak single sign-on (issue #21): a Fastify host that serves a build
 * of the open-source web app (allegroai/clearml-web) from a directory, with the plugin on `/api`, the
 * embedded Keycloak-like provider and the demo's users, and the few endpoints the web app calls to
 * start. Nothing of the web app is in this repository: point the host at a build of your own.
 *
 *   npx tsx examples/clearml-webapp/server.ts <build directory>    (or CLEARML_WEBAPP_DIR=<dir>)
 *   ports: WEBAPP_PORT=8080, WEBAPP_IDP_PORT=8180; CLEARML__ variables override the demo's settings
 *
 * What the host does, and why:
 * - the build's files are public (the web app's code, fonts, images) and served as they are; every
 *   other GET is a page of the single-page app and gets `index.html`, behind `requireLogin`: the
 *   open-source web app has no SSO button, so a page load without a session goes to Keycloak and comes
 *   back to the page and query asked for;
 * - `configuration.json` (which the web app reads before anything else) says `apiBaseUrl: "/api"`,
 *   over the build's own file when it has one; the web app then calls `/api/v999.0/<endpoint>`;
 * - `users.get_current_user`, `users.get_preferences` and `server.report_stats_option`, behind
 *   `authenticate`, versioned too; any other API call answers 401 without a session (the web app
 *   then goes to its login page) and 404 in the envelope with one: this host is not an apiserver;
 * - `index.html` gets one script of the host's (`sso-reload.js`): when a session ends while the web
 *   app is open, the web app moves to an empty `/login?redirect=<page>` inside the page; the script
 *   makes that a page load, which `requireLogin` sends to Keycloak and back to `<page>`;
 * - a refused login lands on `/login?sso_error=<code>`, where the web app in SSO-only mode shows
 *   nothing: the host shows the reason there instead, with a link to try again.
 */
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { randomUUID } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import Fastify, { LogController, type FastifyInstance, type FastifyRequest } from 'fastify'
import fastifyStatic from '@fastify/static'
import clearmlKeycloak, { redactPaths, type ClearmlIdentity } from '../../index.js'
import type { KeycloakLikeIdp } from '../idp/keycloak-like-idp.js'
import { clearmlVariables, seededDirectory, type ExampleDirectory } from '../apiserver.js'
import { DEMO_USERS, demoEnvironment, startDemoRealm } from '../demo/server.js'
import { escapeHtml, page } from '../demo/page.js'

/** Where the plugin and the host's API endpoints are; the web app's `apiBaseUrl`. */
export const API_PREFIX = '/api'
/** ClearML clients put `/v<major>.<minor>` before every endpoint (the web app `/v999.0`). */
const VERSIONED = '/:apiVersion(^v\\d{1,3}\\.\\d{1,3}$)'

/** The host's script on every page of the web app (examples/clearml-webapp/sso-reload.js). */
export const SSO_RELOAD_PATH = '/sso-reload.js'

/** `html` with a script tag for `src` at the end of its head (or first, for a page without one), before the web app's own. */
export function withScript (html: string, src: string): string {
  const tag = `<script src="${src}"></script>`
  const head = html.search(/<\/head\s*>/i)
  return head === -1 ? tag + html : html.slice(0, head) + tag + html.slice(head)
}

/** The build directory, checked: the web app's `index.html` must be in it. */
export function webappBuild (dir: string | undefined): string {
  if (dir === undefined || dir === '') throw new Error('Point the host at a ClearML web app build: npx tsx examples/clearml-webapp/server.ts <dir>, or set CLEARML_WEBAPP_DIR')
  const root = resolve(dir)
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`${root} is not a directory: build the web app (allegroai/clearml-web, npm run build) and point the host at its output`)
  if (!existsSync(join(root, 'index.html'))) throw new Error(`${root} has no index.html: point the host at the web app's build output, the directory that holds index.html`)
  return root
}

/** ClearML's envelope, `requested_version` echoing the path's version segment as the plugin's routes do. */
function envelope (request: FastifyRequest, data: unknown, resultCode = 200, message = 'OK'): unknown {
  const id = randomUUID().replace(/-/g, '')
  const segments = request.url.split('?', 1)[0].split('/')
  const version = segments.at(-2)?.match(/^v(\d{1,3}\.\d{1,3})$/)?.[1] ?? '2.30'
  return {
    meta: { id, trx: id, endpoint: { name: segments.at(-1), requested_version: version, actual_version: '2.30' }, result_code: resultCode, result_subcode: 0, result_msg: message, error_stack: null, error_data: {} },
    data
  }
}

export async function buildWebappHost (options: {
  webappDir: string
  webappUrl: string
  env: Record<string, string | undefined>
  directory: ExampleDirectory
  logger?: boolean
}): Promise<FastifyInstance> {
  const root = webappBuild(options.webappDir)
  const { directory } = options
  const app = Fastify({
    logger: options.logger === false ? false : { level: 'info', redact: redactPaths },
    logController: new LogController({ disableRequestLogging: process.env.DEMO_REQUEST_LOGS !== '1' })
  })
  await app.register(clearmlKeycloak, { directory, webappUrl: options.webappUrl, env: options.env, prefix: API_PREFIX })

  await app.register(async (api) => {
    const endpoint = (name: string, answer: (identity: Readonly<ClearmlIdentity>) => unknown | Promise<unknown>): void => {
      for (const path of [`/${name}`, `${VERSIONED}/${name}`]) {
        api.route({
          method: ['GET', 'POST'],
          url: path,
          preHandler: app.keycloak.authenticate,
          handler: async (request) => envelope(request, await answer(request.clearmlIdentity!))
        })
      }
    }
    endpoint('users.get_current_user', async (identity) => {
      const user = (await directory.listUsers()).find((candidate) => candidate.id === identity.user)
      return {
        user: {
          id: identity.user,
          name: identity.user_name,
          given_name: user?.givenName,
          family_name: user?.familyName,
          email: user?.email,
          avatar: user?.avatar,
          role: identity.role,
          company: { id: identity.company, name: identity.company_name },
          preferences: {}
        },
        getting_started: {},
        settings: { max_download_items: 1000 }
      }
    })
    endpoint('users.get_preferences', () => ({ preferences: {} }))
    endpoint('server.report_stats_option', () => ({ supported: false, enabled: false }))
    // Not an apiserver: without a session the web app is sent to log in, with one it learns the call is unknown.
    api.setNotFoundHandler({ preHandler: app.keycloak.authenticate }, async (request, reply) =>
      await reply.code(404).send(envelope(request, { error: 'not_found' }, 404, 'not served by this example host')))
  }, { prefix: API_PREFIX })

  // The build's files, as routes of their own; everything else falls through to the pages below.
  await app.register(fastifyStatic, { root, wildcard: false, index: false, globIgnore: ['index.html', 'configuration.json'] })
  const buildConfiguration = existsSync(join(root, 'configuration.json')) ? JSON.parse(readFileSync(join(root, 'configuration.json'), 'utf8')) as Record<string, unknown> : {}
  app.get('/configuration.json', async () => ({ ...buildConfiguration, apiBaseUrl: API_PREFIX }))

  // The page the web app starts from, with the host's one script: a session that ends while the web
  // app is open then becomes a page load of /login, which requireLogin sends to Keycloak (sso-reload.js).
  const indexHtml = withScript(readFileSync(join(root, 'index.html'), 'utf8'), SSO_RELOAD_PATH)
  const ssoReload = readFileSync(fileURLToPath(new URL('sso-reload.js', import.meta.url)), 'utf8')
  app.get(SSO_RELOAD_PATH, async (request, reply) => await reply.type('text/javascript').header('cache-control', 'no-cache').send(ssoReload))

  app.setNotFoundHandler({ preHandler: app.keycloak.requireLogin }, async (request, reply) => {
    if (request.method !== 'GET' && request.method !== 'HEAD') return await reply.code(404).send({ error: 'not_found' })
    const [path, query] = request.url.split('?', 2)
    const refusal = new URLSearchParams(query).get('sso_error')
    if (request.clearmlIdentity === null && path === '/login' && refusal !== null) {
      return await reply.code(403).type('text/html').header('cache-control', 'no-store').send(page('ClearML — sign in', `
        <h1>ClearML</h1>
        <p class="error" id="sso-error">Login refused: <code>${escapeHtml(refusal)}</code></p>
        <p>The server log says why, and what to change.</p>
        <p><a class="button" id="login-keycloak" href="${API_PREFIX}/login/keycloak">Log in again</a></p>`))
    }
    return await reply.header('cache-control', 'no-store').type('text/html; charset=utf-8').send(indexHtml)
  })
  return app
}

export interface WebappHost {
  app: FastifyInstance
  idp: KeycloakLikeIdp
  url: string
  close: () => Promise<void>
}

export async function startWebappHost (options: { webappDir: string, port?: number, idpPort?: number, host?: string, logger?: boolean }): Promise<WebappHost> {
  const webappDir = webappBuild(options.webappDir)
  // The web app logs out to /login.
  const { idp, url, port, host } = await startDemoRealm({ ...options, postLogoutPaths: ['/login'] })
  try {
    const env = { ...demoEnvironment(idp.issuer), ...clearmlVariables(process.env) }
    const app = await buildWebappHost({ webappDir, webappUrl: url, env, directory: await seededDirectory(), logger: options.logger })
    await app.listen({ port, host })
    return { app, idp, url, close: async () => { await app.close(); await idp.close() } }
  } catch (err) {
    await idp.close()
    throw err
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  let webapp: WebappHost
  try {
    webapp = await startWebappHost({
      webappDir: process.argv[2] ?? process.env.CLEARML_WEBAPP_DIR ?? '',
      port: Number(process.env.WEBAPP_PORT ?? 8080),
      idpPort: Number(process.env.WEBAPP_IDP_PORT ?? 8180)
    })
  } catch (err) {
    console.error((err as Error).message)
    process.exit(2)
  }
  console.log(`
  ClearML's web app with Keycloak single sign-on

  Open ${webapp.url} and log in with one of these Keycloak users (password = user name):
${DEMO_USERS.map((u) => `    ${u.username.padEnd(6)} ${u.story}`).join('\n')}

  Keycloak-compatible provider: ${webapp.idp.issuer}
  The plugin and the host's endpoints: ${webapp.url}${API_PREFIX}/v999.0/<endpoint>

  Ctrl-C to stop.`)
  const stop = async (): Promise<void> => { await webapp.close(); process.exit(0) }
  process.once('SIGINT', () => { stop().catch(() => process.exit(1)) })
  process.once('SIGTERM', () => { stop().catch(() => process.exit(1)) })
}
