/**
 * Metrics without a dependency (SPEC section 11): the plugin publishes its events on
 * `node:diagnostics_channel`, and the example apiserver turns them into Prometheus metrics. A browser
 * logs in through the Keycloak-like provider, is refused, Keycloak rotates its keys, requests without
 * a valid session are refused; `/metrics`, scraped over HTTP, shows every counter moved, and no event
 * carries a token, a code, a secret or an address.
 */
import t, { type Test } from 'tap'
import { hasSubscribers, subscribe, unsubscribe } from 'node:diagnostics_channel'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildApiserver, seededDirectory } from '../examples/apiserver.js'
import { DEMO_CLIENT, DEMO_USERS, demoEnvironment } from '../examples/demo/server.js'
import { freePort } from '../examples/free-port.js'
import { startKeycloakLikeIdp } from '../examples/idp/keycloak-like-idp.js'
import { SsoError } from '../index.js'
import { diagnosticsChannels, observeLogin, publishAuthRefused, type LoginEvent } from '../lib/diagnostics.js'
import { callJson } from '../lib/keycloak/http.js'
import { RemoteKeySet } from '../lib/keycloak/key-set.js'
import { fetchUserinfo } from '../lib/keycloak/oidc-client.js'
import { UserAgent } from './helpers/user-agent.js'

interface Sample { name: string, labels: Record<string, string>, value: number }

/** Prometheus' text format, one sample per line. */
function parse (text: string): Sample[] {
  return text.split('\n').filter((line) => line !== '' && !line.startsWith('#')).map((line) => {
    const [, name, labels, value] = line.match(/^(\w+)(?:\{(.*)\})? (\S+)$/)!
    return { name, labels: Object.fromEntries([...(labels ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]])), value: Number(value) }
  })
}

/** The value of the series `name` with exactly these labels (0 when it has not appeared yet). */
function valueOf (samples: Sample[], name: string, labels: Record<string, string>): number {
  const wanted = JSON.stringify(Object.entries(labels).sort())
  return samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === wanted)?.value ?? 0
}

type Events = Record<string, unknown[]>

/** Every event of every channel while the test runs. */
function record (t: Test): Events {
  const events: Events = {}
  for (const name of Object.values(diagnosticsChannels)) {
    events[name] = []
    const onMessage = (message: unknown): void => { events[name].push(message) }
    subscribe(name, onMessage)
    t.teardown(() => { unsubscribe(name, onMessage) })
  }
  return events
}

t.test('the example apiserver\'s /metrics after logins, a refusal, a key rotation and refused requests', async (t) => {
  const events = record(t)
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const mallory = { username: 'mallory', password: 'mallory', email: 'mallory@evil.example', emailVerified: true, groups: ['/ml-team'] }
  const idp = await startKeycloakLikeIdp({
    realm: 'clearml',
    users: [...DEMO_USERS, mallory],
    clients: [{ ...DEMO_CLIENT, redirectUris: [`${url}/callback_keycloak`], postLogoutRedirectUris: [`${url}/login`] }]
  })
  const env = demoEnvironment(idp.issuer)
  const app = await buildApiserver({ env, webappUrl: url, directory: await seededDirectory(), logger: false })
  await app.listen({ port, host: '127.0.0.1' })
  t.teardown(async () => { await app.close(); await idp.close() })

  const scrape = async (): Promise<{ text: string, samples: Sample[] }> => {
    const response = await fetch(`${url}/metrics`)
    t.equal(response.status, 200)
    t.match(response.headers.get('content-type'), /^text\/plain; version=0\.0\.4/)
    const text = await response.text()
    return { text, samples: parse(text) }
  }
  const codes: string[] = []
  const login = async (username: string): Promise<string> => {
    const agent = new UserAgent()
    const page = await agent.navigate(`${url}/login/keycloak`)
    const final = await agent.submitLogin(page, username, username)
    for (const hop of final.hops) {
      const code = new URL(hop.url).searchParams.get('code')
      if (code !== null) codes.push(code)
    }
    return final.url
  }

  const before = await scrape()
  t.equal(await login('alice'), `${url}/`)
  t.equal(await login('bob'), `${url}/`)
  t.equal(await login('alice'), `${url}/`, 'alice again: no user created')
  t.equal(await login('mallory'), `${url}/login?sso_error=not_whitelisted`)
  await idp.rotateKeys()
  t.equal(await login('carol'), `${url}/`, 'a login signed with the new key')
  t.equal((await fetch(`${url}/users.get_current_user`)).status, 401, 'no credential')
  t.equal((await fetch(`${url}/users.get_current_user`, { headers: { cookie: 'clearml_token_basic=not-a-session' } })).status, 401, 'a bad session')
  const after = await scrape()

  const moved = (name: string, labels: Record<string, string>): number => valueOf(after.samples, name, labels) - valueOf(before.samples, name, labels)
  const rows: Array<[string, Record<string, string>, number]> = [
    ['clearml_sso_logins_total', { outcome: 'ok', created: 'true' }, 3],
    ['clearml_sso_logins_total', { outcome: 'ok', created: 'false' }, 1],
    ['clearml_sso_logins_total', { outcome: 'refused', code: 'not_whitelisted' }, 1],
    ['clearml_sso_login_duration_seconds_count', { outcome: 'ok' }, 4],
    ['clearml_sso_login_duration_seconds_count', { outcome: 'refused' }, 1],
    ['clearml_sso_idp_requests_total', { endpoint: 'discovery', status: '200' }, 1],
    ['clearml_sso_idp_requests_total', { endpoint: 'token', status: '200' }, 5],
    ['clearml_sso_idp_requests_total', { endpoint: 'jwks', status: '200' }, 2],
    ['clearml_sso_idp_request_duration_seconds_count', { endpoint: 'token' }, 5],
    ['clearml_sso_jwks_fetches_total', { reason: 'initial' }, 1],
    ['clearml_sso_jwks_fetches_total', { reason: 'unknown_kid' }, 1],
    ['clearml_sso_auth_refused_total', { code: 'invalid_token', credential: 'none' }, 1],
    ['clearml_sso_auth_refused_total', { code: 'invalid_token', credential: 'session' }, 1]
  ]
  for (const [name, labels, by] of rows) t.equal(moved(name, labels), by, `${name}${JSON.stringify(labels)} +${by}`)
  t.ok(valueOf(after.samples, 'clearml_sso_login_duration_seconds_sum', { outcome: 'ok' }) > 0, 'login durations are measured')

  t.match(events[diagnosticsChannels.login][0], { outcome: 'ok', created: true, durationMs: Number })
  t.strictSame(Object.keys(events[diagnosticsChannels.login][3] as object).sort(), ['code', 'durationMs', 'outcome'], 'a refusal: outcome, code, duration')
  t.match(events[diagnosticsChannels.idpCall][0], { endpoint: 'discovery', status: 200, durationMs: Number })
  t.strictSame(events[diagnosticsChannels.jwksFetch], [{ reason: 'initial' }, { reason: 'unknown_kid' }])
  t.strictSame(events[diagnosticsChannels.authRefused], [{ code: 'invalid_token' }, { code: 'invalid_token', credential: 'session' }])

  const seen = JSON.stringify(events) + after.text
  t.equal(codes.length, 5, 'five authorization codes went by')
  for (const secret of [DEMO_CLIENT.clientSecret, env.CLEARML__secure__auth__token_secret, ...codes, 'alice@acme.example', 'mallory@evil.example']) {
    t.notMatch(seen, secret, 'no secret, code or address in an event or a metric')
  }
})

t.test('events of a failing Keycloak, of the userinfo endpoint and of a stale key set', async (t) => {
  const events = record(t)
  const idp = await startKeycloakLikeIdp({ users: DEMO_USERS, clients: [{ ...DEMO_CLIENT, redirectUris: ['http://127.0.0.1:1/callback_keycloak'] }] })
  t.teardown(idp.close)

  await t.rejects(fetchUserinfo({ endpoint: `${idp.issuer}/protocol/openid-connect/userinfo`, accessToken: 'not-a-token', timeoutMs: 5000 }), { code: 'invalid_token' })
  t.match(events[diagnosticsChannels.idpCall].at(-1), { endpoint: 'userinfo', status: 401 })

  await t.rejects(callJson('http://127.0.0.1:1/token', { what: 'token endpoint', timeoutMs: 2000 }), { code: 'idp_unavailable', message: /could not be reached at http:\/\/127\.0\.0\.1:1\/token/ })
  t.match(events[diagnosticsChannels.idpCall].at(-1), { endpoint: 'token', status: 0 }, 'no answer: status 0')
  const count = events[diagnosticsChannels.idpCall].length
  await t.rejects(callJson('not a url', { what: 'a probe of the doctor', timeoutMs: 2000 }), { message: /could not be reached at a malformed URL/ })
  t.equal(events[diagnosticsChannels.idpCall].length, count, 'calls that are not one of the four endpoints are not published')

  const certs = `${idp.issuer}/protocol/openid-connect/certs`
  const { keys } = await (await fetch(certs)).json() as { keys: Array<{ kid: string }> }
  const keySet = new RemoteKeySet({ url: async () => certs, timeoutMs: 5000, maxAgeMs: 0 })
  const header = { alg: 'RS256', kid: keys[0].kid }
  await keySet.getKey(header, { payload: '', signature: '' } as never)
  await sleep(5)
  await keySet.getKey(header, { payload: '', signature: '' } as never)
  t.strictSame(events[diagnosticsChannels.jwksFetch], [{ reason: 'initial' }, { reason: 'max_age' }], 'a key set older than its maximum age is fetched again')
})

t.test('login outcomes: ok, refused (4xx codes), failed (5xx codes and bugs)', async (t) => {
  const events = record(t)
  await observeLogin(async () => ({ created: false }), (result) => result.created)
  await t.rejects(observeLogin(async () => { throw new SsoError('no_matching_group') }, () => true))
  await t.rejects(observeLogin(async () => { throw new SsoError('directory_error') }, () => true))
  await t.rejects(observeLogin(async () => { throw new TypeError('a bug') }, () => true), TypeError, 'the error passes through unchanged')
  t.match(events[diagnosticsChannels.login], [
    { outcome: 'ok', created: false },
    { outcome: 'refused', code: 'no_matching_group' },
    { outcome: 'failed', code: 'directory_error' },
    { outcome: 'failed', code: 'internal_error' }
  ] satisfies Array<Partial<LoginEvent>>)
  publishAuthRefused('admin_required', 'keycloak')
  t.strictSame(events[diagnosticsChannels.authRefused], [{ code: 'admin_required', credential: 'keycloak' }])
})

t.test('without subscribers nothing is published, and everything still works', async (t) => {
  for (const name of Object.values(diagnosticsChannels)) t.notOk(hasSubscribers(name), `${name}: nobody listens`)
  t.strictSame(await observeLogin(async () => ({ created: true }), () => { throw new Error('not read without subscribers') }), { created: true })
  publishAuthRefused('invalid_token')
})
