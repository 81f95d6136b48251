/**
 * The demo: an example apiserver with the plugin, an in-memory directory seeded with a company,
 * ClearML groups and a whitelist entry, and an embedded Keycloak-compatible provider with demo users.
 * It serves Prometheus metrics at /metrics and the admin-only explain route.
 * Configured through the same CLEARML__ variables an operator sets for ClearML.
 *
 *   npm run demo          (ports: DEMO_PORT=8008, DEMO_IDP_PORT=8180)
 */
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import type { MemoryDirectory } from '../../index.js'
import { startKeycloakLikeIdp, type KeycloakLikeIdp, type RealmUser } from '../idp/keycloak-like-idp.js'
import { buildApiserver, clearmlVariables, seededDirectory } from '../apiserver.js'
import { freePort } from '../free-port.js'

export const DEMO_USERS: Array<RealmUser & { story: string }> = [
  { username: 'alice', password: 'alice', email: 'alice@acme.example', emailVerified: true, givenName: 'Alice', familyName: 'Anderson', groups: ['/ml-team'], realmRoles: ['admin'], story: 'admin by the realm role "admin"' },
  { username: 'carol', password: 'carol', email: 'carol@acme.example', emailVerified: true, givenName: 'Carol', familyName: 'Chen', groups: ['/kc-admins', '/data-science'], story: 'admin by membership of "kc-admins" (groups.admins)' },
  { username: 'bob', password: 'bob', email: 'bob@acme.example', emailVerified: true, givenName: 'Bob', familyName: 'Brown', groups: ['/ml-team', '/research/data-science'], story: 'a plain member of ml-team and data-science' },
  { username: 'dave', password: 'dave', email: 'dave@acme.example', emailVerified: true, givenName: 'Dave', familyName: 'Diaz', groups: [], story: 'in no group' },
  {
    username: 'erin',
    password: 'erin',
    email: 'erin@acme.example',
    emailVerified: true,
    givenName: 'Erin',
    familyName: 'Evans',
    groups: ['/ml-team', ...Array.from({ length: 59 }, (_, i) => `/projects/research-${String(i + 1).padStart(2, '0')}`)],
    story: 'in 60 Keycloak groups: her ID token is too large for a cookie, and logout still ends her Keycloak session'
  }
]

export const DEMO_CLIENT = { clientId: 'clearml', clientSecret: 'demo-client-secret' }

/** The variables an operator would set, as ClearML documents them. */
export function demoEnvironment (issuer: string): Record<string, string> {
  const kc = 'CLEARML__services__login__sso__oauth_client__keycloak__'
  const secure = 'CLEARML__secure__login__sso__oauth_client__keycloak__'
  return {
    [`${kc}base_url`]: issuer,
    [`${secure}client_id`]: `"${DEMO_CLIENT.clientId}"`,
    [`${secure}client_secret`]: `"${DEMO_CLIENT.clientSecret}"`,
    [`${kc}idp_logout`]: 'true',
    [`${kc}groups__enabled`]: 'true',
    [`${kc}groups__claim`]: 'groups',
    [`${kc}groups__admins`]: '["kc-admins"]',
    // Sessions follow Keycloak every 30 s (300 by default), so that a change made on the provider's
    // admin page shows within a minute.
    [`${kc}session__revalidate_sec`]: '30',
    CLEARML__secure__auth__token_secret: 'demo-token-secret-change-me-in-real-deployments'
  }
}

export interface Demo {
  app: FastifyInstance
  idp: KeycloakLikeIdp
  directory: MemoryDirectory
  url: string
  env: Record<string, string>
  close: () => Promise<void>
}

/**
 * The demo realm for a web app about to listen: its origin (a free port unless one is given) is
 * known first, since the provider registers the client's redirect URI,
 * `<origin>/callback_keycloak` (ClearML's documented one, whatever the plugin's prefix).
 */
export async function startDemoRealm (options: { port?: number, idpPort?: number, host?: string, postLogoutPaths: string[] }): Promise<{ idp: KeycloakLikeIdp, url: string, port: number, host: string }> {
  const host = options.host ?? '127.0.0.1'
  const port = options.port !== undefined && options.port !== 0 ? options.port : await freePort()
  const url = `http://${host}:${port}`
  const idp = await startKeycloakLikeIdp({
    host,
    port: options.idpPort ?? 0,
    realm: 'clearml',
    fullGroupPath: true,
    users: DEMO_USERS,
    clients: [{ ...DEMO_CLIENT, redirectUris: [`${url}/callback_keycloak`], postLogoutRedirectUris: options.postLogoutPaths.map((path) => `${url}${path}`) }]
  })
  return { idp, url, port, host }
}

export async function startDemo (options: { port?: number, idpPort?: number, host?: string, logger?: boolean } = {}): Promise<Demo> {
  const { idp, url, port, host } = await startDemoRealm({ ...options, postLogoutPaths: ['/login', '/'] })
  const env = { ...demoEnvironment(idp.issuer), ...clearmlVariables(process.env) }
  const directory = await seededDirectory()
  const app = await buildApiserver({ env, webappUrl: url, directory, logger: options.logger })
  await app.listen({ port, host })
  return { app, idp, directory, url, env, close: async () => { await app.close(); await idp.close() } }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const demo = await startDemo({ port: Number(process.env.DEMO_PORT ?? 8008), idpPort: Number(process.env.DEMO_IDP_PORT ?? 8180) })
  const shown = Object.entries(demo.env).map(([name, value]) => `  ${name}=${/secret/.test(name) ? '<set>' : value}`).join('\n')
  console.log(`
  fastify-clearml-keycloak demo

  Open ${demo.url} and log in with one of these Keycloak users (password = user name):
${DEMO_USERS.map((u) => `    ${u.username.padEnd(6)} ${u.story}`).join('\n')}
    mallory is not a demo user; try a wrong password to see the provider refuse it.

  Keycloak-compatible provider: ${demo.idp.issuer}
  Its admin page: ${demo.idp.adminConsoleUrl}
    disable, enable or delete a user, end their SSO sessions, add or remove /kc-admins; as in
    Keycloak, none of it sends a back-channel logout. Sessions follow Keycloak every 30 s here: log in,
    disable the user, and within a minute the next page load ends on the login page (session_ended);
    remove carol from /kc-admins and her role becomes user.
  Configured as an operator configures ClearML:
${shown}

  For operators:
    ${demo.url}/metrics   Prometheus metrics from the plugin's diagnostics_channel events:
      logins by outcome and code, calls to Keycloak, key-set fetches, refused requests,
      revalidations of sessions at Keycloak by outcome.
    POST ${demo.url}/login.sso_explain   what a login would do and why, writing nothing (admin
      session only). Log in as alice, then in the browser console:
        await (await fetch('/login.sso_explain', { method: 'POST', headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ claims: { sub: 'new-user', email: 'zoe@acme.example', email_verified: true, groups: ['/ml-team', '/sales'] } }) })).json()

  Ctrl-C to stop.`)
  const stop = async (): Promise<void> => { await demo.close(); process.exit(0) }
  process.once('SIGINT', () => { stop().catch(() => process.exit(1)) })
  process.once('SIGTERM', () => { stop().catch(() => process.exit(1)) })
}
