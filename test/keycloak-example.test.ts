/**
 * The real-Keycloak recipe (`examples/keycloak/`) cannot run here (no Docker engine), so its files
 * are checked against each other, against the plugin and against Keycloak's own rules: the realm
 * export has what ClearML's Keycloak guide asks for; every URL is reachable by the container that
 * uses it; the replicas share one configuration, Redis and PostgreSQL; and the health checks are run
 * for real against servers on this machine.
 */
import t from 'tap'
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { promisify } from 'node:util'
import { parse } from 'yaml'
import { loadConfig, MemoryDirectory } from '../index.js'
import { issuerOf, weakSettings } from '../lib/config/settings.js'
import { buildApiserver, clearmlVariables } from '../examples/apiserver.js'
import { freePort } from '../examples/free-port.js'

const file = (name: string): string => readFileSync(new URL(`../examples/keycloak/${name}`, import.meta.url), 'utf8')
const realm = JSON.parse(file('realm-export.json'))
const composeText = file('docker-compose.yml')
const nginxConf = file('nginx.conf')

interface Service {
  image?: string
  command?: string[]
  environment?: Record<string, string>
  volumes?: string[]
  ports?: string[]
  network_mode?: string
  networks?: string[] | Record<string, { aliases?: string[] } | null>
  hostname?: string
  container_name?: string
  extra_hosts?: string[] | Record<string, string>
  depends_on?: Record<string, { condition: string, restart?: boolean }>
  healthcheck?: { test: string[] }
}
// Compose merges `<<: *anchor` keys (YAML 1.1 merge), as the replicas use.
const compose = parse(composeText, { merge: true }) as { services: Record<string, Service>, volumes?: Record<string, unknown> }
const { services } = compose
const client = realm.clients.find((c: { clientId: string }) => c.clientId === 'clearml')
const replicaNames = Object.keys(services).filter((name) => services[name].command?.includes('examples/replicas/apiserver.ts'))
const apiserverEnv = services[replicaNames[0]]?.environment ?? {}
const keycloakEnv = services.keycloak?.environment ?? {}
const webappUrl = apiserverEnv.WEBAPP_URL

/** What compose does to `$` in a value: `$$` is a literal `$`; `$NAME` or `${NAME}` would be replaced. */
function interpolated (value: string): string {
  if (/(^|[^$])(\$\$)*\$(?=[A-Za-z_{])/.test(value)) throw new Error(`unescaped compose variable in ${value}`)
  return value.replaceAll('$$', '$')
}

/** Host names a service's container can resolve: services on a shared network, their aliases, extra_hosts. */
function namesSeenFrom (serviceName: string): Set<string> {
  const service = services[serviceName]
  // With host networking the container shares the host's names; compose's service names are not among them.
  if (service.network_mode === 'host') return new Set(['localhost', '127.0.0.1'])
  const networksOf = (s: Service): string[] => s.network_mode !== undefined ? [] : s.networks === undefined ? ['default'] : Array.isArray(s.networks) ? s.networks : Object.keys(s.networks)
  const mine = new Set(networksOf(service))
  const extra = service.extra_hosts ?? []
  const names = new Set(Array.isArray(extra) ? extra.map((entry) => entry.split(':')[0]) : Object.keys(extra))
  for (const [name, other] of Object.entries(services)) {
    const shared = networksOf(other).filter((network) => mine.has(network))
    if (shared.length === 0) continue
    names.add(name)
    if (other.hostname !== undefined) names.add(other.hostname)
    if (other.container_name !== undefined) names.add(other.container_name)
    if (other.networks !== undefined && !Array.isArray(other.networks)) {
      for (const network of shared) for (const alias of other.networks[network]?.aliases ?? []) names.add(alias)
    }
  }
  return names
}

/** Keycloak's redirect URI matching (RedirectUtils): exact, or a pattern ending in `*` as a prefix of the URL without its query. */
function keycloakAccepts (patterns: string[], url: string): boolean {
  return patterns.some((pattern) => pattern.endsWith('*') && !pattern.includes('?')
    ? url.split(/[?#]/)[0].startsWith(pattern.slice(0, -1))
    : pattern === url)
}

/** The host port and the container port of a `ports` entry bound to 127.0.0.1 (`127.0.0.1:8180:8180`). */
function loopbackPorts (entry: string): { host: number, container: number } | undefined {
  const match = /^127\.0\.0\.1:(\d+):(\d+)$/.exec(entry)
  return match === null ? undefined : { host: Number(match[1]), container: Number(match[2]) }
}

const nginxListen = Number(/^\s*listen\s+(\d+);/m.exec(nginxConf)?.[1])

t.test('the realm export has what ClearML\'s Keycloak guide asks for', async (t) => {
  t.equal(realm.realm, 'clearml')
  t.ok(client, 'a "clearml" client')
  t.equal(client.publicClient, false, 'confidential: it has a client secret')
  t.equal(client.standardFlowEnabled, true, 'authorization code flow')
  t.equal(client.attributes['pkce.code.challenge.method'], 'S256')
  t.ok(client.redirectUris.includes(`${webappUrl}/callback_keycloak`), 'callback URL <webapp>/callback_keycloak registered')
  const mapper = client.protocolMappers.find((m: { protocolMapper: string }) => m.protocolMapper === 'oidc-group-membership-mapper')
  t.match(mapper?.config, { 'claim.name': 'groups', 'full.path': 'false', 'id.token.claim': 'true', 'access.token.claim': 'true', 'userinfo.token.claim': 'true' }, 'Group Membership mapper "groups", full group path off')
  t.ok(client.defaultClientScopes.includes('roles'), 'the roles scope puts realm_access into the access token')
  t.ok(realm.roles.realm.some((r: { name: string }) => r.name === 'admin'), 'an "admin" realm role (admin_role)')
  const groupPaths = realm.groups.map((g: { path: string }) => g.path)
  t.strictSame(groupPaths.sort(), ['/data-science', '/kc-admins', '/ml-team'])
  for (const user of realm.users) {
    t.ok(user.groups.every((g: string) => groupPaths.includes(g)), `${user.username}: groups exist in the realm`)
    t.ok(user.credentials[0].value.length > 0 && user.emailVerified === true, `${user.username}: can log in, verified email`)
  }
})

t.test('logout: Keycloak accepts every return address the plugin sends, and calls the back channel', async (t) => {
  const patterns: string[] = client.attributes['post.logout.redirect.uris'].split('##')
  // The plugin sends <webapp>/login by default, or a same-origin redirect_url the web app asked for.
  for (const path of ['/login', '/', '/projects/abc/experiments?filter=mine', '/login?sso_error=idp_error']) {
    t.ok(keycloakAccepts(patterns, `${webappUrl}${path}`), `post_logout_redirect_uri ${path} is registered`)
  }
  for (const foreign of ['http://localhost:8009/login', 'http://localhost:8008.evil.example/login', 'https://evil.example/']) {
    t.notOk(keycloakAccepts(patterns, foreign), `${foreign} is not`)
  }
  // Keycloak skips back-channel logout for a client with front-channel logout on (the console's default).
  t.equal(client.frontchannelLogout, false, 'front-channel logout explicitly off')
  t.equal(client.attributes['backchannel.logout.session.required'], 'true', 'logout tokens carry the session id')
})

t.test('the back-channel logout URL reaches the proxy from inside Keycloak\'s container', async (t) => {
  const url = new URL(client.attributes['backchannel.logout.url'])
  t.equal(url.pathname, '/logout/backchannel')
  const resolvable = namesSeenFrom('keycloak')
  t.ok(resolvable.has(url.hostname), `${url.hostname} resolves in the keycloak service (it resolves ${[...resolvable].sort().join(', ')})`)
  t.not(url.hostname, 'localhost', 'not localhost: in Keycloak\'s container that is Keycloak itself')
  t.equal(url.hostname, 'proxy', 'the proxy, so either replica may receive it')
  t.equal(Number(url.port), nginxListen, 'on the port nginx listens on')
})

t.test('Keycloak: readiness check on the management port, realm imported read-only, issuer the browser\'s name', async (t) => {
  const keycloak = services.keycloak
  t.equal(keycloakEnv.KC_HEALTH_ENABLED, 'true', 'health endpoints on')
  const check = interpolated(keycloak.healthcheck?.test.at(-1) ?? '')
  t.match(check, /\/dev\/tcp\/127\.0\.0\.1\/9000/, 'asks the management port, 9000')
  t.match(check, /GET \/health\/ready /)
  t.notMatch(check, /\b(curl|wget)\b/, 'the image has no curl or wget')
  t.equal(keycloak.command?.includes('--import-realm'), true)
  t.ok(keycloak.volumes?.some((v) => /^\.\/realm-export\.json:\/opt\/keycloak\/data\/import\/[\w-]+\.json:ro$/.test(v)), 'the realm export mounted read-only into the import folder')
  t.match(composeText, /--import-realm skips a realm that already exists/, 'the compose file says an existing realm is not re-imported')
  t.match(composeText, /test\/keycloak-example\.test\.ts/, 'names this test by its path')
  t.notMatch(composeText, /tests\/keycloak-example/)
  const published = keycloak.ports?.map(loopbackPorts)
  t.strictSame(published, [{ host: Number(new URL(keycloakEnv.KC_HOSTNAME).port), container: Number(keycloakEnv.KC_HTTP_PORT) }], 'KC_HOSTNAME is what the browser reaches: the published port, on loopback')
  t.equal(new URL(keycloakEnv.KC_HOSTNAME).hostname, 'localhost')
})

t.test('Keycloak\'s health check works with bash alone, against a real server', async (t) => {
  const command = interpolated(services.keycloak.healthcheck!.test.at(-1)!)
  t.match(command, '/dev/tcp/127.0.0.1/9000')
  t.equal(services.keycloak.healthcheck!.test.slice(0, 3).join(' '), 'CMD bash -c')
  let status = 200
  const paths: string[] = []
  const server: Server = createServer((request, response) => {
    paths.push(request.url!)
    response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ status: status === 200 ? 'UP' : 'DOWN', checks: [] }))
  })
  const port = await freePort()
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  t.teardown(() => { if (server.listening) server.close() })
  // No PATH: only bash's builtins can run, as in the image.
  const probe = async (target: number): Promise<number> => {
    try {
      await promisify(execFile)('/bin/bash', ['-c', command.replace('/9000', `/${target}`)], { env: { PATH: '/nonexistent' }, timeout: 10_000 })
      return 0
    } catch (err) {
      return (err as { code?: number }).code ?? 1
    }
  }
  t.equal(await probe(port), 0, 'ready (200): healthy')
  t.strictSame(paths, ['/health/ready'])
  status = 503
  t.not(await probe(port), 0, 'not ready (503): unhealthy')
  server.close()
  t.not(await probe(port), 0, 'nothing listening: unhealthy')
})

t.test('two replicas with one configuration, sharing Redis and PostgreSQL', async (t) => {
  t.strictSame(replicaNames, ['apiserver-1', 'apiserver-2'], 'two replicas of examples/replicas/apiserver.ts')
  const [first, second] = replicaNames.map((name) => services[name].environment ?? {})
  const clearml = (env: Record<string, string>): Record<string, string> => clearmlVariables(env)
  t.ok(Object.keys(clearml(first)).length >= 8, 'configured through CLEARML__ variables')
  t.strictSame(clearml(second), clearml(first), 'identical CLEARML__ variables: the same client secret and token_secret')
  for (const name of replicaNames) {
    const env = services[name].environment!
    const seen = namesSeenFrom(name)
    const redis = new URL(env.REDIS_URL)
    t.equal(redis.protocol, 'redis:')
    t.ok(seen.has(redis.hostname) && redis.hostname === 'redis' && services.redis !== undefined, `${name}: REDIS_URL is the redis service`)
    t.equal(Number(redis.port || 6379), 6379)
    const database = new URL(env.DATABASE_URL)
    const postgres = services.postgres?.environment ?? {}
    t.ok(seen.has(database.hostname) && database.hostname === 'postgres', `${name}: DATABASE_URL is the postgres service`)
    t.strictSame([database.protocol, Number(database.port), database.username, database.password, database.pathname],
      ['postgres:', 5432, postgres.POSTGRES_USER, postgres.POSTGRES_PASSWORD, `/${postgres.POSTGRES_DB}`], `${name}: with the database's credentials`)
    t.equal(env.HOST, '0.0.0.0', `${name}: listens beyond its own loopback, for the proxy`)
    t.equal(env.WEBAPP_URL, webappUrl)
    t.match(services[name].depends_on, {
      keycloak: { condition: 'service_healthy' },
      redis: { condition: 'service_healthy' },
      postgres: { condition: 'service_healthy' },
      deps: { condition: 'service_completed_successfully' }
    }, `${name}: starts once Keycloak, Redis and PostgreSQL are ready`)
  }
  for (const name of ['keycloak', 'redis', 'postgres', ...replicaNames]) t.ok(services[name].healthcheck?.test.length, `${name} has a health check`)
})

const replicaEntry = new URL('../examples/replicas/apiserver.ts', import.meta.url)
t.test('the replica entry point reads what the compose file sets', async (t) => {
  const source = readFileSync(replicaEntry, 'utf8')
  for (const name of ['WEBAPP_URL', 'PORT', 'HOST', 'REDIS_URL', 'DATABASE_URL']) t.match(source, new RegExp(`\\b${name}\\b`), `reads ${name}`)
})

t.test('the proxy round-robins over both replicas on the web app\'s origin', async (t) => {
  const upstream = /upstream\s+([\w-]+)\s*\{([^}]*)\}/.exec(nginxConf)
  t.ok(upstream, 'an upstream block')
  const servers = [...upstream![2].matchAll(/^\s*server\s+([^\s;]+)/gm)].map((m) => m[1])
  t.strictSame(servers.sort(), replicaNames.map((name) => `${name}:${services[name].environment!.PORT}`).sort(), 'its servers are the replicas, on their PORT')
  t.notMatch(upstream![2], /\b(ip_hash|hash|sticky)\b/, 'no stickiness: any replica answers any request')
  t.match(nginxConf, new RegExp(`proxy_pass http://${upstream![1]};`))
  const proxy = services.proxy
  t.ok(proxy.volumes?.includes('./nginx.conf:/etc/nginx/nginx.conf:ro'), 'nginx.conf mounted read-only')
  const origin = new URL(webappUrl)
  t.strictSame(proxy.ports?.map(loopbackPorts), [{ host: Number(origin.port), container: nginxListen }], 'WEBAPP_URL is the proxy\'s published port, on loopback')
  t.match(proxy.depends_on, Object.fromEntries(replicaNames.map((name) => [name, { condition: 'service_healthy', restart: true }])))
})

t.test('the project is mounted without the host\'s node_modules', async (t) => {
  const mounting = Object.entries(services).filter(([, service]) => service.volumes?.some((v) => v.startsWith('../..:/app')))
  t.strictSame(mounting.map(([name]) => name).sort(), ['apiserver-1', 'apiserver-2', 'deps'])
  for (const [name, service] of mounting) {
    t.ok(service.volumes!.some((v) => v === '/app/node_modules' || /^[\w-]+:\/app\/node_modules$/.test(v)), `${name}: /app/node_modules is a volume, not the host's directory`)
  }
  t.ok(compose.volumes !== undefined && 'node_modules' in compose.volumes, 'the shared volume is declared')
  t.strictSame(services.deps.command, ['npm', 'ci', '--no-audit', '--no-fund'], 'deps installs from the lock file')
})

t.test('every port is published on the host\'s loopback only', async (t) => {
  for (const [name, service] of Object.entries(services)) {
    for (const entry of service.ports ?? []) t.ok(loopbackPorts(entry), `${name}: ${entry}`)
  }
})

t.test('the replicas\' configuration is one the plugin accepts, each URL reachable by whoever uses it', async (t) => {
  const config = loadConfig(apiserverEnv)
  const issuer = `${keycloakEnv.KC_HOSTNAME}/realms/${realm.realm}`
  t.equal(issuerOf(config), issuer, 'the issuer is KC_HOSTNAME\'s realm URL, the one in every token')
  t.equal(config.clientId, client.clientId)
  t.equal(config.clientSecret, client.secret)
  t.equal(config.idpLogout, true)
  t.strictSame(weakSettings(config), [], 'a token_secret of 32 bytes or more')
  t.strictSame(config.groups.admins, ['kc-admins'])
  t.ok(realm.groups.some((g: { name: string }) => g.name === config.groups.admins[0]), 'the admins group exists in the realm')
  // Browser-facing: the browser follows them, so they carry the public name.
  t.equal(config.authorizeUrl, `${issuer}/protocol/openid-connect/auth`)
  t.equal(config.logoutUrl, `${issuer}/protocol/openid-connect/logout`)
  // Server-to-server: fetched from the replicas' containers, so the keycloak service by name.
  const seen = namesSeenFrom(replicaNames[0])
  const internal = `http://keycloak:${keycloakEnv.KC_HTTP_PORT}/realms/${realm.realm}/protocol/openid-connect`
  t.ok(seen.has('keycloak'))
  t.strictSame([config.accessTokenUrl, config.jwksUrl, config.userinfoUrl], [`${internal}/token`, `${internal}/certs`, `${internal}/userinfo`])
  // base_url would be fetched (discovery) from the container, yet name the issuer: no one URL is both here.
  t.equal(config.baseUrl, undefined, 'base_url unset: discovery skipped, issuer from authorize_url')
})

t.test('the replicas\' health check passes against a running apiserver and fails without one', async (t) => {
  const test = services[replicaNames[0]].healthcheck!.test
  t.strictSame(test.slice(0, 3), ['CMD', 'node', '-e'])
  t.match(test[3], `127.0.0.1:${apiserverEnv.PORT}/login.supported_modes`, 'asks the replica itself, on its PORT')
  const port = await freePort()
  const app = await buildApiserver({ env: clearmlVariables(apiserverEnv), webappUrl, directory: new MemoryDirectory(), logger: false })
  await app.listen({ port, host: '127.0.0.1' })
  const probe = async (): Promise<number> => {
    try {
      await promisify(execFile)(process.execPath, ['-e', interpolated(test[3]).replace('127.0.0.1:8008', `127.0.0.1:${port}`)], { timeout: 10_000 })
      return 0
    } catch (err) {
      return (err as { code?: number }).code ?? 1
    }
  }
  t.equal(await probe(), 0, 'healthy while it answers login.supported_modes')
  await app.close()
  t.not(await probe(), 0, 'unhealthy once it is gone')
})
