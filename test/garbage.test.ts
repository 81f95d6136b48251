/**
 * Property-based tests (fast-check): whatever arrives in a callback query, a JSON body or an
 * environment variable, the plugin answers with a known code in the expected shape, never a 5xx,
 * never a session cookie, never an unhandled rejection.
 */
import t from 'tap'
import fc from 'fast-check'
import Fastify from 'fastify'
import clearmlKeycloak, { ConfigError, loadConfig, MemoryDirectory } from '../index.js'
import { SSO_ERROR_STATUS } from '../lib/errors.js'
import { settingLeaves } from '../schemas/config.js'
import { variableFor } from '../lib/config/clearml-env.js'
import { seedAcme } from './helpers/stack.js'

const unhandled: unknown[] = []
process.on('unhandledRejection', (reason) => { unhandled.push(reason) })

const KNOWN_CODES = new Set(Object.keys(SSO_ERROR_STATUS))
const SECRET = 'the-client-secret-value'
const env = {
  CLEARML__services__login__sso__oauth_client__keycloak__base_url: 'http://127.0.0.1:9/realms/clearml',
  CLEARML__secure__login__sso__oauth_client__keycloak__client_id: 'clearml',
  CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: SECRET,
  CLEARML__secure__auth__token_secret: 'token-secret',
  CLEARML__services__login__sso__oauth_client__keycloak__http_timeout_ms: '200'
}

const directory = new MemoryDirectory()
seedAcme(directory)
const app = Fastify()
await app.register(clearmlKeycloak, { directory, webappUrl: 'https://clearml.example.com', env })
t.teardown(async () => { await app.close() })

const text = fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.constantFrom('', '%', '%00', '\u0000', '../', '//evil', 'a'.repeat(5000)))
const queryKey = fc.oneof(fc.constantFrom('code', 'state', 'iss', 'error', 'error_description', 'session_state', 'redirect', 'redirect_url'), fc.string())

t.test('callback query strings: always a redirect to /login with a known code, no session', async (t) => {
  await fc.assert(fc.asyncProperty(fc.array(fc.tuple(queryKey, text), { maxLength: 8 }), fc.option(text), async (pairs, cookie) => {
    const query = pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&')
    // A browser sends well-formed text: lone surrogates cannot be percent-encoded at all.
    const value = cookie === null ? undefined : Buffer.from(cookie, 'utf8').toString('utf8')
    const headers = value === undefined ? {} : { cookie: `clearml_kc_tx_${encodeURIComponent([...value].slice(0, 16).join(''))}=${encodeURIComponent(value)}` }
    const answer = await app.inject({ method: 'GET', url: `/callback_keycloak?${query}`, headers })
    if (answer.statusCode !== 302) return false
    const location = String(answer.headers.location)
    const code = location.match(/^\/login\?sso_error=([a-z_]+)$/)?.[1]
    const cookies = ([] as string[]).concat(answer.headers['set-cookie'] ?? [])
    return code !== undefined && KNOWN_CODES.has(code) && !cookies.some((c) => c.startsWith('clearml_token_basic=') && !c.startsWith('clearml_token_basic=;'))
  }), { numRuns: 300 })
  t.strictSame(directory.listUsers(), [], 'no user was created')
})

t.test('raw query strings, including malformed percent-encoding', async (t) => {
  await fc.assert(fc.asyncProperty(fc.string({ unit: 'binary', maxLength: 300 }), async (raw) => {
    const answer = await app.inject({ method: 'GET', url: `/callback_keycloak?${raw.replace(/[#\s]/g, '')}` })
    return answer.statusCode === 302 || answer.statusCode === 400
  }), { numRuns: 300 })
  t.pass()
})

t.test('JSON bodies on every JSON route: the envelope, a known code, never 5xx', async (t) => {
  const routes = ['/login.supported_modes', '/login.sso_authorize', '/login.sso_callback', '/login.logout']
  const json = fc.oneof(
    fc.jsonValue(),
    fc.record({ provider: fc.oneof(fc.constant('keycloak'), text), callback_url: fc.oneof(text, fc.webUrl()), state: text, redirect_url: fc.oneof(text, fc.webUrl()), return_token: fc.jsonValue(), args: fc.oneof(fc.jsonValue(), fc.dictionary(queryKey, fc.oneof(text, fc.jsonValue()))) }, { requiredKeys: [] })
  )
  await fc.assert(fc.asyncProperty(fc.constantFrom(...routes), json, async (url, body) => {
    const answer = await app.inject({ method: 'POST', url, payload: JSON.stringify(body), headers: { 'content-type': 'application/json' } })
    if (answer.statusCode >= 500) return false
    const envelope = answer.json()
    if (answer.statusCode === 200) return envelope.meta?.result_code === 200 && typeof envelope.data === 'object'
    return envelope.meta?.result_code === answer.statusCode && KNOWN_CODES.has(envelope.data?.error) && envelope.meta.result_msg === envelope.data.error
  }), { numRuns: 300 })
  t.strictSame(directory.listUsers(), [])
})

t.test('raw bodies and content types', async (t) => {
  await fc.assert(fc.asyncProperty(fc.constantFrom('/login.sso_callback', '/login.logout', '/login.sso_authorize'), fc.string({ maxLength: 200 }), fc.constantFrom('application/json', 'text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=utf-16'), async (url, payload, type) => {
    const answer = await app.inject({ method: 'POST', url, payload, headers: { 'content-type': type } })
    return answer.statusCode < 500 && (answer.statusCode === 200 || KNOWN_CODES.has(answer.json().data?.error))
  }), { numRuns: 200 })
  t.pass()
})

t.test('environment values: a config or a ConfigError, and never the secret in the message', async (t) => {
  const variables = settingLeaves().map((leaf) => variableFor(leaf.schema.env))
  await fc.assert(fc.property(fc.dictionary(fc.constantFrom(...variables), text, { maxKeys: 8 }), (random) => {
    try {
      loadConfig({ ...env, ...random })
      return true
    } catch (err) {
      const secret = random.CLEARML__secure__login__sso__oauth_client__keycloak__client_secret ?? SECRET
      // A secret of a few characters can appear in any message by chance; real ones cannot.
      return err instanceof ConfigError && (secret.trim().length < 6 || !err.message.includes(secret.trim())) &&
        err.problems.every((p) => variables.includes(p.variable) || p.variable.startsWith('CLEARML__'))
    }
  }), { numRuns: 1000 })
  t.pass()
})

t.test('no unhandled rejection happened along the way', async (t) => {
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.strictSame(unhandled, [])
})
