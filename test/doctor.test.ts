/**
 * The doctor (`fastify-clearml-keycloak doctor`) against Keycloak-like realms over HTTP: the
 * Keycloak-like provider for the setups an operator gets right or wrong, and a scripted realm for the
 * answers other Keycloak versions and broken deployments give. Every case reads the report an
 * operator reads: which check failed, what it says, and the fix.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createRemoteJWKSet, decodeJwt, exportJWK, generateKeyPair, jwtVerify, type JWK } from 'jose'
import { freePort } from '../examples/free-port.js'
import { startKeycloakLikeIdp, type KeycloakLikeIdp, type KeycloakLikeIdpOptions, type RealmClient } from '../examples/idp/keycloak-like-idp.js'
import { main, USAGE } from '../doctor/cli.js'
import { runDoctor } from '../doctor/run.js'
import type { CheckId, CheckResult, DoctorReport } from '../doctor/report.js'

const KC = 'CLEARML__services__login__sso__oauth_client__keycloak__'
const KC_SECURE = 'CLEARML__secure__login__sso__oauth_client__keycloak__'
const CLIENT_ID = 'clearml'
const CLIENT_SECRET = 'doctor-client-secret-Zq8wVt'
const TOKEN_SECRET = 'doctor-token-secret-0123456789abcdefXYZ'
const WEBAPP = 'https://clearml.example.com'
/** Every check, in report order. */
const EVERY_CHECK: CheckId[] = ['config', 'discovery', 'issuer', 'endpoints', 'jwks', 'client', 'redirect_uri', 'end_session', 'revocation', 'offline_access', 'clock']
/** The checks `envFor`'s environment runs: not those of sessions that follow Keycloak (revalidation is off there). */
const ALL_CHECKS: CheckId[] = EVERY_CHECK.filter((id) => id !== 'revocation' && id !== 'offline_access')
const SESSION = `${KC}session__`
const JWT = /eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/

type Env = Record<string, string | undefined>

/** The variables an operator sets for ClearML, for a realm at `issuer`; `undefined` in `extra` removes one. */
function envFor (issuer: string, extra: Env = {}): Env {
  const env: Env = {
    [`${KC}base_url`]: issuer,
    [`${KC_SECURE}client_id`]: `"${CLIENT_ID}"`,
    [`${KC_SECURE}client_secret`]: `"${CLIENT_SECRET}"`,
    [`${KC}idp_logout`]: 'true',
    CLEARML__secure__auth__token_secret: TOKEN_SECRET,
    // Revalidation off: the checks of sessions that follow Keycloak (revocation, offline_access) have
    // tests of their own, below and against the provider.
    [`${SESSION}revalidate_sec`]: '0',
    ...extra
  }
  return Object.fromEntries(Object.entries(env).filter(([, value]) => value !== undefined))
}

/** The Keycloak-like provider with the `clearml` client registered for `WEBAPP`. */
async function startRealm (t: Test, client: Partial<RealmClient> = {}, options: Partial<KeycloakLikeIdpOptions> = {}): Promise<KeycloakLikeIdp> {
  const idp = await startKeycloakLikeIdp({
    users: [],
    clients: [{ clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, redirectUris: [`${WEBAPP}/callback_keycloak`], postLogoutRedirectUris: [`${WEBAPP}/login`], ...client }],
    ...options
  })
  t.teardown(idp.close)
  return idp
}

/** The command run in-process, as `bin/cli.ts` runs it: exit status and what it printed. */
async function doctor (args: string[], env: Env): Promise<{ code: number, stdout: string, stderr: string }> {
  let stdout = ''
  let stderr = ''
  const code = await main(args, { env, stdout: { write: (text: string) => { stdout += text } }, stderr: { write: (text: string) => { stderr += text } } })
  return { code, stdout, stderr }
}

function byId (report: DoctorReport): Partial<Record<CheckId, CheckResult>> {
  return Object.fromEntries(report.checks.map((check) => [check.id, check]))
}

/**
 * Exactly the `failing` checks fail, each with its message and a fix; the `unchecked` ones are
 * reported "not checked: needs <need>"; every other check passes.
 */
function assertFailures (t: Test, report: DoctorReport, failing: Partial<Record<CheckId, { message: RegExp, fix?: RegExp }>>, unchecked: { need?: CheckId, ids: CheckId[] } = { ids: [] }): void {
  for (const check of report.checks) {
    const expected = failing[check.id]
    if (expected !== undefined) {
      t.notOk(check.ok, `${check.id} fails`)
      t.match(check.message, expected.message, `${check.id}: what is wrong`)
      t.match((check as { fix?: string }).fix, expected.fix ?? /\S/, `${check.id}: what to change`)
    } else if (unchecked.ids.includes(check.id)) {
      t.strictSame(check, { id: check.id, ok: false, message: `not checked: needs ${unchecked.need!}`, fix: `fix ${unchecked.need!} first` }, `${check.id} is not checked`)
    } else {
      t.ok(check.ok, `${check.id} passes: ${check.message}`)
    }
  }
  t.equal(report.ok, Object.keys(failing).length === 0 && unchecked.ids.length === 0)
}

function assertNothingSecret (t: Test, output: string, extra: string[] = []): void {
  for (const secret of [CLIENT_SECRET, TOKEN_SECRET, ...extra]) t.notOk(output.includes(secret), 'no secret in the output')
  t.notMatch(output, JWT, 'no token in the output')
}

t.test('a correct setup passes every check, one ✔ line each, and exits 0', async (t) => {
  const idp = await startRealm(t)
  const env = envFor(idp.issuer)
  const text = await doctor(['doctor', '--webapp-url', WEBAPP], env)
  t.equal(text.code, 0)
  t.equal(text.stderr, '')
  const lines = text.stdout.trimEnd().split('\n')
  t.strictSame(lines.slice(0, ALL_CHECKS.length).map((line) => line.split(/\s+/).slice(0, 2)), ALL_CHECKS.map((id) => ['✔', id]), 'one ✔ line per check, in order')
  t.equal(lines.at(-1), 'All 9 checks passed.')
  t.match(text.stdout, `Keycloak accepts ${WEBAPP}/callback_keycloak as client "clearml"'s redirect URI`)
  t.match(text.stdout, /service accounts are off, which a login client does not need/)
  t.match(text.stdout, `accepts ${WEBAPP}/login after logout`)
  t.match(text.stdout, /Keycloak's clock is within 1 s of this host's \(tolerance 10 s\)/)
  assertNothingSecret(t, text.stdout)

  const json = await doctor(['doctor', '--json', `--webapp-url=${WEBAPP}/some/page`], env)
  t.equal(json.code, 0)
  const report = JSON.parse(json.stdout) as DoctorReport
  t.equal(report.ok, true)
  t.strictSame(report.checks.map((check) => check.id), ALL_CHECKS)
  t.ok(report.checks.every((check) => check.ok && typeof check.message === 'string' && !('fix' in check)), 'passing checks carry no fix')
  t.match(byId(report).redirect_uri!.message, `${WEBAPP}/callback_keycloak`, 'the web app URL is used by its origin, as the plugin does')

  const withoutLogout = await runDoctor({ env: envFor(idp.issuer, { [`${KC}idp_logout`]: undefined }), webappUrl: WEBAPP })
  t.strictSame(withoutLogout.checks.map((check) => check.id), ALL_CHECKS.filter((id) => id !== 'end_session'), 'end_session only with idp_logout')
  t.equal(withoutLogout.ok, true)

  // Revalidation at its default: the provider advertises what sessions that follow Keycloak need.
  const following = await runDoctor({ env: envFor(idp.issuer, { [`${SESSION}revalidate_sec`]: undefined }), webappUrl: WEBAPP })
  t.strictSame(following.checks.map((check) => [check.id, check.ok]), EVERY_CHECK.map((id) => [id, true]), 'revocation and offline_access pass against the Keycloak-like provider')
  t.match(byId(following).revocation!.message, `${idp.issuer}/protocol/openid-connect/revoke`)
})

t.test('a wrong client secret fails only client, and the secret is never printed', async (t) => {
  const idp = await startRealm(t)
  const wrong = 'not-the-secret-Hk2'
  const { code, stdout } = await doctor(['doctor', '--webapp-url', WEBAPP], envFor(idp.issuer, { [`${KC_SECURE}client_secret`]: wrong }))
  t.equal(code, 1)
  t.match(stdout, /^✖ client +Keycloak refuses client "clearml" with the configured secret \(invalid_client\) — fix: copy the secret from Clients → clearml → Credentials \(Keycloak console\) into CLEARML__secure__login__sso__oauth_client__keycloak__client_secret/m)
  t.match(stdout, /\n1 of 9 checks failed\.\n$/)
  const report = await runDoctor({ env: envFor(idp.issuer, { [`${KC_SECURE}client_secret`]: wrong }), webappUrl: WEBAPP })
  assertFailures(t, report, { client: { message: /refuses client "clearml"/, fix: /client_secret, and check .*client_id/ } })
  assertNothingSecret(t, stdout, [wrong])
})

t.test('an unknown client id fails client and redirect_uri ("Client not found")', async (t) => {
  const idp = await startRealm(t)
  const report = await runDoctor({ env: envFor(idp.issuer, { [`${KC_SECURE}client_id`]: 'clearml-typo' }), webappUrl: WEBAPP })
  assertFailures(t, report, {
    client: { message: /refuses client "clearml-typo"/ },
    redirect_uri: { message: /the realm has no client "clearml-typo" \("Client not found"\)/, fix: /client_id to the Client ID shown under Clients/ },
    end_session: { message: /answered HTTP 400/, fix: /client_id/ }
  })
})

t.test('a callback URL Keycloak does not know fails only redirect_uri, with the URI to add', async (t) => {
  const other = 'https://ml.other.example'
  const idp = await startRealm(t, { postLogoutRedirectUris: [`${WEBAPP}/login`, `${other}/login`] })
  const report = await runDoctor({ env: envFor(idp.issuer), webappUrl: other })
  assertFailures(t, report, {
    redirect_uri: {
      message: new RegExp(`Keycloak refuses ${other}/callback_keycloak \\("Invalid parameter: redirect_uri"\\)`),
      fix: new RegExp(`add ${other}/callback_keycloak to Valid redirect URIs in Clients → clearml → Settings \\(Keycloak console\\)`)
    }
  })
})

t.test('with idp_logout, a page after logout Keycloak does not know fails only end_session', async (t) => {
  const idp = await startRealm(t, { postLogoutRedirectUris: [] })
  const report = await runDoctor({ env: envFor(idp.issuer), webappUrl: WEBAPP })
  assertFailures(t, report, {
    end_session: { message: new RegExp(`Keycloak refuses ${WEBAPP}/login as the page after logout \\("Invalid redirect uri"\\)`), fix: /Valid post logout redirect URIs/ }
  })
})

t.test('a wrong base_url', async (t) => {
  const idp = await startRealm(t)
  const others: CheckId[] = ['issuer', 'endpoints', 'jwks', 'client', 'redirect_uri', 'end_session', 'clock']

  const typo = await doctor(['doctor', '--json', '--webapp-url', WEBAPP], envFor(idp.issuer.replace(/clearml$/, 'clearm1')))
  t.equal(typo.code, 1)
  assertFailures(t, JSON.parse(typo.stdout) as DoctorReport, {
    discovery: { message: /\/realms\/clearm1\/\.well-known\/openid-configuration answered HTTP 404: no realm there/, fix: /base_url to the realm's URL, e\.g\. https:\/\/kc\.example\.com\/realms\/<realm>/ }
  }, { need: 'discovery', ids: others })

  // The realm answers under another name than the one configured: Keycloak behind a proxy, say. The
  // client secret is not sent to a realm that is not the configured one.
  const alias = idp.issuer.replace('127.0.0.1', 'localhost')
  const renamed = await runDoctor({ env: envFor(alias), webappUrl: WEBAPP })
  assertFailures(t, renamed, {
    issuer: {
      message: new RegExp(`the realm calls itself ${idp.issuer}, not ${alias}: every token would be refused`),
      fix: new RegExp(`set CLEARML__services__login__sso__oauth_client__keycloak__base_url to ${idp.issuer}`)
    }
  }, { need: 'issuer', ids: ['client'] })
})

t.test('an unreachable Keycloak fails discovery, and nothing else is checked', async (t) => {
  const closed = `http://127.0.0.1:${await freePort()}/realms/clearml`
  const { code, stdout } = await doctor(['doctor', '--webapp-url', WEBAPP], envFor(closed))
  t.equal(code, 1)
  t.match(stdout, /^✖ discovery +discovery could not be reached \(http:\/\/127\.0\.0\.1:\d+\/realms\/clearml\/\.well-known\/openid-configuration\) — fix: check CLEARML__services__login__sso__oauth_client__keycloak__base_url and that this host reaches Keycloak/m)
  t.match(stdout, /^✖ clock +not checked: needs discovery — fix: fix discovery first$/m)
  const report = await runDoctor({ env: envFor(closed), webappUrl: WEBAPP })
  assertFailures(t, report, { discovery: { message: /could not be reached/ } }, { need: 'discovery', ids: ['issuer', 'endpoints', 'jwks', 'client', 'redirect_uri', 'end_session', 'clock'] })

  // A password written into base_url stays out of the report, as every value does.
  const withPassword = closed.replace('http://', 'http://ops:pa55-Word@')
  const shownReport = JSON.stringify(await runDoctor({ env: envFor(withPassword), webappUrl: WEBAPP }))
  t.notMatch(shownReport, /pa55-Word/)
  t.match(shownReport, /could not be reached \(http:\/\/127\.0\.0\.1:\d+\/realms\/clearml\/\.well-known\/openid-configuration\)/)
})

t.test('a skewed clock fails only clock, against clock_tolerance_sec', async (t) => {
  const ahead = await startRealm(t, {}, { clockSkewSec: 120 })
  assertFailures(t, await runDoctor({ env: envFor(ahead.issuer), webappUrl: WEBAPP }), {
    clock: {
      message: /^Keycloak's clock is 1(19|20|21) s ahead of this host's, beyond the 10 s tolerance: fresh tokens look issued in the future or expired$/,
      fix: /synchronise both hosts' clocks \(NTP.*raising CLEARML__services__login__sso__oauth_client__keycloak__clock_tolerance_sec only hides the drift/
    }
  })
  const tolerant = await runDoctor({ env: envFor(ahead.issuer, { [`${KC}clock_tolerance_sec`]: '300' }), webappUrl: WEBAPP })
  t.match(byId(tolerant).clock, { ok: true, message: /within 1(19|20|21) s of this host's \(tolerance 300 s\)/ })

  const behind = await startRealm(t, {}, { clockSkewSec: -45 })
  assertFailures(t, await runDoctor({ env: envFor(behind.issuer), webappUrl: WEBAPP }), { clock: { message: /is (44|45|46) s behind this host's/ } })
})

t.test('configuration: a short token_secret fails config, the other checks still run', async (t) => {
  const idp = await startRealm(t)
  const short = 'Qx7-wk'
  const { code, stdout } = await doctor(['doctor', '--webapp-url', WEBAPP], envFor(idp.issuer, { CLEARML__secure__auth__token_secret: short }))
  t.equal(code, 1)
  t.match(stdout, /^✖ config +CLEARML__secure__auth__token_secret is 6 bytes; use at least 32 random bytes .* — fix: set CLEARML__secure__auth__token_secret to the output of `openssl rand -base64 48` \(sessions signed with the old secret then end\)$/m)
  const report = await runDoctor({ env: envFor(idp.issuer, { CLEARML__secure__auth__token_secret: short }), webappUrl: WEBAPP })
  assertFailures(t, report, { config: { message: /token_secret is 6 bytes/, fix: /openssl rand -base64 48/ } })
  assertNothingSecret(t, stdout, [short])
})

t.test('configuration: unknown keys are warnings and config passes', async (t) => {
  const idp = await startRealm(t)
  const env = envFor(idp.issuer, { [`${KC}colour`]: 'blue', [`${KC_SECURE}idp_logout`]: 'true' })
  const { code, stdout } = await doctor(['doctor', '--webapp-url', WEBAPP], env)
  t.equal(code, 0)
  t.match(stdout, /^✔ config .*\n {16}! CLEARML__secure__login__sso__oauth_client__keycloak__idp_logout is not a Keycloak setting here; did you mean CLEARML__services__login__sso__oauth_client__keycloak__idp_logout\?\n {16}! CLEARML__services__login__sso__oauth_client__keycloak__colour is not a known Keycloak setting and is ignored\n✔ discovery/m)
  const json = JSON.parse((await doctor(['doctor', '--json', '--webapp-url', WEBAPP], env)).stdout) as DoctorReport
  t.match(byId(json).config, { ok: true, message: `read: client "clearml" of the Keycloak realm ${idp.issuer}`, warnings: [/idp_logout is not a Keycloak setting here/, /colour is not a known Keycloak setting/] })

  const noSecret = await runDoctor({ env: envFor(idp.issuer, { CLEARML__secure__auth__token_secret: undefined }), webappUrl: WEBAPP })
  t.match(byId(noSecret).config, { ok: true, warnings: ['CLEARML__secure__auth__token_secret is not set: the plugin refuses to start unless the host passes issueToken'] })
})

t.test('configuration problems fail config and leave nothing to check Keycloak with', async (t) => {
  const env = envFor('https://kc.example.com/realms/clearml', { [`${KC_SECURE}client_secret`]: undefined, [`${KC}idp_logout`]: 'maybe', [`${KC}base_url`]: 'kc.example.com/realms/clearml' })
  const { code, stdout } = await doctor(['doctor', '--json', '--webapp-url', WEBAPP], env)
  t.equal(code, 1)
  const report = JSON.parse(stdout) as DoctorReport
  assertFailures(t, report, {
    config: {
      message: /CLEARML__secure__login__sso__oauth_client__keycloak__client_secret is required.*; CLEARML__services__login__sso__oauth_client__keycloak__idp_logout must be true or false/,
      fix: /^correct .*client_secret, .*idp_logout, .*base_url as the message says$/
    }
  }, { need: 'config', ids: EVERY_CHECK.slice(1) })
  t.strictSame(report.checks.map((check) => check.id), EVERY_CHECK, 'every check is listed, end_session and the session checks too: their settings could not be read')
})

t.test('the web app URL: --webapp-url, else CLEARML_WEB_HOST; without one redirect_uri says to pass it', async (t) => {
  const idp = await startRealm(t)
  const env = envFor(idp.issuer)
  assertFailures(t, await runDoctor({ env }), {
    redirect_uri: { message: /^the web app's URL is unknown, so its callback could not be tried$/, fix: /^pass --webapp-url https:\/\/<the ClearML web app> \(or set CLEARML_WEB_HOST\)$/ }
  })
  t.match(byId(await runDoctor({ env })).end_session, { ok: true, message: /answers \(the page after logout was not tried: no web app URL\)/ })
  t.equal((await runDoctor({ env: { ...env, CLEARML_WEB_HOST: WEBAPP } })).ok, true, 'CLEARML_WEB_HOST, ClearML\'s own variable for the web app')
  t.equal((await runDoctor({ env: { ...env, CLEARML_WEB_HOST: '', TRAINS_WEB_HOST: WEBAPP } })).ok, true, 'TRAINS_WEB_HOST, its older name')
  t.match(byId(await runDoctor({ env: { ...env, CLEARML_WEB_HOST: 'https://elsewhere.example' }, webappUrl: WEBAPP })).redirect_uri, { ok: true }, '--webapp-url wins')
  for (const [options, source] of [[{ webappUrl: 'clearml.example.com' }, '--webapp-url'], [{ env: { CLEARML_WEB_HOST: 'ftp://clearml.example.com' } }, 'CLEARML_WEB_HOST']] as const) {
    const report = await runDoctor({ ...options, env: { ...env, ...('env' in options ? options.env : {}) } })
    t.match(byId(report).redirect_uri, { ok: false, message: `${source} is not an absolute http(s) URL`, fix: /--webapp-url https:\/\/clearml\.example\.com/ })
  }
})

t.test('endpoints set explicitly', async (t) => {
  const idp = await startRealm(t)
  const realmPath = `${idp.issuer}/protocol/openid-connect`

  const agreeing = await runDoctor({ env: envFor(idp.issuer, { [`${KC}authorize_url`]: `${realmPath}/auth/`, [`${KC}access_token_url`]: `${realmPath}/token` }), webappUrl: WEBAPP })
  assertFailures(t, agreeing, {})
  t.match(byId(agreeing).endpoints!.message, /authorize_url and .*access_token_url agree with discovery/)

  const moved = `${idp.origin}/auth/realms/clearml/protocol/openid-connect/token`
  assertFailures(t, await runDoctor({ env: envFor(idp.issuer, { [`${KC}access_token_url`]: moved }), webappUrl: WEBAPP }), {
    endpoints: { message: new RegExp(`access_token_url is ${moved} but the realm advertises ${realmPath}/token`), fix: /^remove CLEARML__services__login__sso__oauth_client__keycloak__access_token_url \(discovery gives the realm's own\)/ },
    client: { message: /the token endpoint answered HTTP 404, so the credentials could not be tried/, fix: /check .*access_token_url/ }
  })

  const closed = `http://127.0.0.1:${await freePort()}`
  assertFailures(t, await runDoctor({
    env: envFor(idp.issuer, { [`${KC}authorize_url`]: `${closed}/a`, [`${KC}access_token_url`]: `${closed}/t`, [`${KC}logout_url`]: `${closed}/l` }),
    webappUrl: WEBAPP
  }), {
    endpoints: { message: /authorize_url is .* but the realm advertises .*; .*access_token_url is/ },
    client: { message: /^token endpoint could not be reached$/, fix: /access_token_url/ },
    redirect_uri: { message: /^authorization endpoint could not be reached$/, fix: /authorize_url/ },
    end_session: { message: /^end-session endpoint could not be reached$/, fix: /logout_url/ }
  })
})

t.test('without base_url: every endpoint explicit, the issuer from authorize_url', async (t) => {
  const idp = await startRealm(t)
  const realmPath = `${idp.issuer}/protocol/openid-connect`
  const explicit = {
    [`${KC}base_url`]: undefined,
    [`${KC}authorize_url`]: `${realmPath}/auth`,
    [`${KC}access_token_url`]: `${realmPath}/token`,
    [`${KC}jwks_url`]: `${realmPath}/certs`,
    [`${KC}logout_url`]: `${realmPath}/logout`
  }
  const report = await runDoctor({ env: envFor(idp.issuer, explicit), webappUrl: WEBAPP })
  assertFailures(t, report, {})
  t.match(byId(report), {
    discovery: { message: /^not used: .*base_url is unset and the endpoints are set explicitly$/ },
    issuer: { message: `tokens must carry the issuer ${idp.issuer} (from CLEARML__services__login__sso__oauth_client__keycloak__authorize_url; no discovery to compare)` },
    endpoints: { message: /set explicitly; no discovery to compare$/ },
    clock: { message: /within 1 s/ }
  })

  const closed = `http://127.0.0.1:${await freePort()}/certs`
  assertFailures(t, await runDoctor({ env: envFor(idp.issuer, { ...explicit, [`${KC}jwks_url`]: closed }), webappUrl: WEBAPP }), {
    jwks: { message: /^key set \(jwks\) could not be reached \(http:\/\/127\.0\.0\.1:\d+\/certs\)$/, fix: /^check .*jwks_url \(or remove it to use the realm's\)$/ },
    clock: { message: /^not measured: Keycloak did not answer$/, fix: /^fix jwks first$/ }
  })
})

t.test('a client with service accounts: right credentials pass, the token is never shown', async (t) => {
  const idp = await startRealm(t, { serviceAccountsEnabled: true })
  const { code, stdout } = await doctor(['doctor', '--json', '--webapp-url', WEBAPP], envFor(idp.issuer))
  t.equal(code, 0)
  t.match(byId(JSON.parse(stdout) as DoctorReport).client, { ok: true, message: 'Keycloak accepts client "clearml" and its secret (service accounts are on; the token it sent was dropped unread)' })
  assertNothingSecret(t, stdout)
})

t.test('the provider answers client_credentials as Keycloak does', async (t) => {
  const idp = await startKeycloakLikeIdp({
    users: [],
    clients: [
      { clientId: 'svc', clientSecret: 'svc secret+1', redirectUris: ['https://x/cb'], serviceAccountsEnabled: true },
      { clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, redirectUris: ['https://x/cb'] }
    ]
  })
  t.teardown(idp.close)
  const token = `${idp.issuer}/protocol/openid-connect/token`
  const post = async (body: Record<string, string>, authorization?: string): Promise<{ status: number, body: Record<string, unknown> }> => {
    const response = await fetch(token, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...(authorization === undefined ? {} : { authorization }) }, body: new URLSearchParams(body) })
    return { status: response.status, body: await response.json() as Record<string, unknown> }
  }
  const basic = (id: string, secret: string): string => 'Basic ' + Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret).replace(/%20/g, '+')}`).toString('base64')

  const keySet = createRemoteJWKSet(new URL(`${idp.issuer}/protocol/openid-connect/certs`))
  for (const [how, answer] of [
    ['client_secret_basic', await post({ grant_type: 'client_credentials' }, basic('svc', 'svc secret+1'))],
    ['client_secret_post', await post({ grant_type: 'client_credentials', client_id: 'svc', client_secret: 'svc secret+1', scope: 'openid roles' })]
  ] as const) {
    t.equal(answer.status, 200, how)
    t.match(answer.body, { token_type: 'Bearer', expires_in: 300, refresh_expires_in: 0 })
    t.notOk('refresh_token' in answer.body, 'no refresh token, as Keycloak by default for this grant')
    // Keycloak adds an ID token when the scope has openid; this provider does not (nothing here needs one).
    if (how === 'client_secret_basic') t.notOk('id_token' in answer.body, 'no ID token without the openid scope')
    const { payload, protectedHeader } = await jwtVerify(answer.body.access_token as string, keySet, { issuer: idp.issuer, audience: 'account' })
    t.match(protectedHeader, { alg: 'RS256', kid: /./ })
    t.match(payload, {
      typ: 'Bearer',
      azp: 'svc',
      sub: idp.serviceAccountSubject('svc'),
      preferred_username: 'service-account-svc',
      realm_access: { roles: ['offline_access', 'uma_authorization', 'default-roles-clearml'] },
      scope: /profile email/
    })
    t.equal((payload.exp as number) - (payload.iat as number), 300)
  }
  t.match(decodeJwt((await post({ grant_type: 'client_credentials', scope: 'openid roles' }, basic('svc', 'svc secret+1'))).body.access_token as string), { scope: 'openid roles profile email' })
  t.equal(idp.serviceAccountSubject('svc'), idp.serviceAccountSubject('svc'), 'a stable subject')
  t.throws(() => idp.serviceAccountSubject(CLIENT_ID), /has no service account/)

  const invalidClient = { status: 401, body: { error: 'invalid_client', error_description: 'Invalid client or Invalid client credentials' } }
  t.strictSame(await post({ grant_type: 'client_credentials' }, basic('svc', 'wrong')), invalidClient, 'wrong secret, Basic')
  t.strictSame(await post({ grant_type: 'client_credentials', client_id: 'svc', client_secret: 'wrong' }), invalidClient, 'wrong secret, in the form')
  t.strictSame(await post({ grant_type: 'client_credentials', client_id: 'nobody', client_secret: 'x' }), invalidClient, 'unknown client')
  t.strictSame(await post({ grant_type: 'client_credentials' }), invalidClient, 'no credentials')
  t.strictSame(await post({ grant_type: 'client_credentials' }, 'Basic ' + Buffer.from('no-colon').toString('base64')), invalidClient, 'a malformed Basic header')
  t.strictSame(await post({ grant_type: 'client_credentials' }, 'Basic ' + Buffer.from('svc:%E0%A4%A').toString('base64')), invalidClient, 'a Basic header that is not form-encoded')
  t.strictSame(await post({ grant_type: 'authorization_code', code: 'x', redirect_uri: 'https://x/cb' }, basic(CLIENT_ID, 'wrong')), invalidClient, 'other grants word it the same way')
  t.strictSame(await post({ grant_type: 'client_credentials' }, basic(CLIENT_ID, CLIENT_SECRET)), {
    status: 400,
    body: { error: 'unauthorized_client', error_description: 'Client not enabled to retrieve service account' }
  }, 'right credentials, service accounts off')
  t.match(await post({ grant_type: 'authorization_code', code: 'x', redirect_uri: 'https://x/cb' }, basic(CLIENT_ID, CLIENT_SECRET)), { status: 400, body: { error: 'invalid_grant' } }, 'other grants still reach the provider, body intact')
})

/** A realm whose every answer a test can script, for the Keycloak versions and failures the provider does not play. */
interface ScriptedRealm {
  issuer: string
  origin: string
  /** Per endpoint (`discovery`, `certs`, `token`, `auth`, `logout`): the answer instead of a healthy Keycloak's. */
  answers: Partial<Record<string, (req: IncomingMessage) => Answer>>
  document: Record<string, unknown>
  keys: JWK[]
  /** Leave out the Date header. */
  noDate: boolean
}
interface Answer { status?: number, headers?: Record<string, string>, body?: unknown, hang?: boolean }

async function startScriptedRealm (t: Test): Promise<ScriptedRealm> {
  const { publicKey } = await generateKeyPair('RS256')
  const server = createServer((req, res) => { serve(req, res) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const issuer = `${origin}/realms/scripted`
  const oidc = `${issuer}/protocol/openid-connect`
  const realm: ScriptedRealm = {
    issuer,
    origin,
    answers: {},
    document: { issuer, authorization_endpoint: `${oidc}/auth`, token_endpoint: `${oidc}/token`, jwks_uri: `${oidc}/certs`, end_session_endpoint: `${oidc}/logout` },
    keys: [{ ...await exportJWK(publicKey), kid: 'rsa-1', alg: 'RS256', use: 'sig' }],
    noDate: false
  }
  const healthy: Record<string, () => Answer> = {
    discovery: () => ({ body: realm.document }),
    certs: () => ({ body: { keys: realm.keys } }),
    token: () => ({ status: 401, body: { error: 'unauthorized_client', error_description: 'Client not enabled to retrieve service account' } }),
    auth: () => ({ headers: { 'content-type': 'text/html' }, body: '<!doctype html><title>Sign in to scripted</title><form id="kc-form-login"></form>' }),
    logout: () => ({ headers: { 'content-type': 'text/html' }, body: '<!doctype html><title>Logging out</title><p>Do you want to log out?</p>' })
  }
  const endpointOf = (path: string): string | undefined => ({
    '/realms/scripted/.well-known/openid-configuration': 'discovery',
    '/realms/scripted/protocol/openid-connect/certs': 'certs',
    '/realms/scripted/protocol/openid-connect/token': 'token',
    '/realms/scripted/protocol/openid-connect/auth': 'auth',
    '/realms/scripted/protocol/openid-connect/logout': 'logout'
  })[path]
  function serve (req: IncomingMessage, res: ServerResponse): void {
    req.resume()
    const endpoint = endpointOf(new URL(req.url!, origin).pathname)
    const answer: Answer = endpoint === undefined ? { status: 404, body: 'not found' } : (realm.answers[endpoint] ?? healthy[endpoint])(req)
    if (answer.hang === true) return
    res.sendDate = !realm.noDate
    const text = typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body)
    res.writeHead(answer.status ?? 200, { 'content-type': typeof answer.body === 'string' ? 'text/plain' : 'application/json', ...answer.headers }).end(text)
  }
  return realm
}

t.test('answers of other Keycloak versions and of broken deployments', async (t) => {
  const realm = await startScriptedRealm(t)
  const healthy = await runDoctor({ env: envFor(realm.issuer), webappUrl: WEBAPP })
  assertFailures(t, healthy, {})
  t.match(byId(healthy).redirect_uri, { message: /accepts/ }, 'Keycloak answers its login page itself (200)')
  t.match(byId(healthy).client, { message: /service accounts are off/ }, 'Keycloak\'s own source answers "Client not enabled" with 401: the text decides, not the status')

  const callback = `${WEBAPP}/callback_keycloak`
  const redirectBack = (query: string) => () => ({ status: 302, headers: { location: `${callback}?${query}` } })
  const cases: Array<{ name: string, setup: (realm: ScriptedRealm) => void, env?: Env, check: CheckId, expect: { ok?: boolean, message: RegExp | string, fix?: RegExp | string } }> = [
    { name: 'discovery fails', setup: (r) => { r.answers.discovery = () => ({ status: 503, body: { error: 'unavailable' } }) }, check: 'discovery', expect: { message: /answered HTTP 503$/, fix: 'Keycloak is failing: see its log' } },
    { name: 'discovery hangs', setup: (r) => { r.answers.discovery = () => ({ hang: true }) }, env: { [`${KC}http_timeout_ms`]: '300' }, check: 'discovery', expect: { message: /^discovery timed out after 300 ms \(http:\/\/127\.0\.0\.1:\d+\/realms\/scripted\/\.well-known\/openid-configuration\)$/ } },
    { name: 'a key set of more than 1 MiB', setup: (r) => { r.answers.certs = () => ({ body: 'x'.repeat(1024 * 1024 + 1) }) }, check: 'jwks', expect: { message: /^key set \(jwks\) answered more than 1048576 bytes/ } },
    { name: 'base_url is a web page', setup: (r) => { r.answers.discovery = () => ({ headers: { 'content-type': 'text/html' }, body: '<html>' }) }, check: 'discovery', expect: { message: /answered something other than a JSON discovery document$/, fix: /base_url to the realm's URL/ } },
    { name: 'no issuer', setup: (r) => { r.document = { ...r.document, issuer: undefined } }, check: 'issuer', expect: { message: 'the discovery document names no issuer: this is not a Keycloak realm', fix: /base_url/ } },
    { name: 'a long, odd issuer is shown shortened', setup: (r) => { r.document = { ...r.document, issuer: 'x'.repeat(300) } }, check: 'issuer', expect: { message: new RegExp(`^the realm calls itself ${'x'.repeat(200)}…, not`) } },
    { name: 'endpoints from the realm paths when discovery omits them', setup: (r) => { r.document = { issuer: r.issuer } }, env: { [`${KC}idp_logout`]: undefined }, check: 'jwks', expect: { ok: true, message: /\/realms\/scripted\/protocol\/openid-connect\/certs has signing keys: 1 RS256$/ } },
    { name: 'idp_logout without an end-session endpoint', setup: (r) => { r.document = { ...r.document, end_session_endpoint: undefined } }, check: 'end_session', expect: { message: /idp_logout is on but the realm advertises no end_session_endpoint$/, fix: /^set .*logout_url to the realm's logout endpoint, or turn .*idp_logout off$/ } },
    { name: 'an advertised endpoint that is no URL', setup: (r) => { r.document = { ...r.document, authorization_endpoint: 'login here' } }, env: { [`${KC}authorize_url`]: `${realm.issuer}/protocol/openid-connect/auth` }, check: 'endpoints', expect: { message: /authorize_url is http:\/\/127\.0\.0\.1:\d+\/realms\/scripted\/protocol\/openid-connect\/auth but the realm advertises login here$/ } },
    { name: 'no Date header', setup: (r) => { r.noDate = true }, check: 'clock', expect: { ok: true, message: 'not measured: Keycloak\'s answer has no Date header (compare both hosts\' clocks by hand)' } },
    { name: 'key set fails', setup: (r) => { r.answers.certs = () => ({ status: 500, body: 'boom' }) }, check: 'jwks', expect: { message: /certs answered HTTP 500 without a key set$/, fix: 'check that this host reaches Keycloak' } },
    { name: 'an EC key for ES256', setup: (r) => { r.keys = ecAndRsaKeys }, env: { [`${KC}algorithms`]: '["ES256"]' }, check: 'jwks', expect: { ok: true, message: /has signing keys: 1 ES256$/ } },
    { name: 'an RSA key without alg for PS256', setup: (r) => { r.keys = ecAndRsaKeys }, env: { [`${KC}algorithms`]: '["PS256", "ES512"]' }, check: 'jwks', expect: { ok: true, message: /has signing keys: 1 PS256$/ } },
    { name: 'no key for the configured algorithms', setup: (r) => { r.keys = ecAndRsaKeys }, env: { [`${KC}algorithms`]: '[HS256]' }, check: 'jwks', expect: { message: /has no signing key for HS256 \(it publishes RSA, EC, RS256\)$/, fix: /^set .*algorithms to the algorithm of the realm's active key \(Realm settings → Keys\), e\.g\. \["RS256"\]$/ } },
    { name: 'only an encryption key', setup: (r) => { r.keys = [ecAndRsaKeys[0]] }, check: 'jwks', expect: { message: /has no signing key for RS256 \(it publishes no signing key\)$/ } },
    { name: 'a key that does not import', setup: (r) => { r.keys = [{ kty: 'RSA', alg: 'RS256', kid: 'broken', e: 'AQAB' }] }, check: 'jwks', expect: { message: /has no signing key for RS256 \(it publishes RS256\)$/ } },
    { name: 'older Keycloak: wrong credentials as unauthorized_client', setup: (r) => { r.answers.token = () => ({ status: 400, body: { error: 'unauthorized_client', error_description: 'Invalid client or Invalid client credentials' } }) }, check: 'client', expect: { message: /refuses client "clearml" with the configured secret \(unauthorized_client\)$/ } },
    { name: 'a public client', setup: (r) => { r.answers.token = () => ({ status: 401, body: { error: 'unauthorized_client', error_description: 'Public client not allowed to retrieve service account' } }) }, check: 'client', expect: { message: 'client "clearml" is public: Keycloak checks no secret for it', fix: /turn on Client authentication, then copy the secret/ } },
    { name: 'a bearer-only client', setup: (r) => { r.answers.token = () => ({ status: 400, body: { error: 'invalid_client', error_description: 'Bearer-only not allowed' } }) }, check: 'client', expect: { message: 'client "clearml" is bearer-only: it cannot log users in', fix: /turn on Client authentication and Standard flow$/ } },
    { name: 'the token endpoint fails', setup: (r) => { r.answers.token = () => ({ status: 500, body: { message: 'boom' } }) }, check: 'client', expect: { message: 'the token endpoint answered HTTP 500, so the credentials could not be tried', fix: 'Keycloak is failing: see its log' } },
    { name: 'a token endpoint without client_credentials', setup: (r) => { r.answers.token = () => ({ status: 400, body: { error: 'unsupported_grant_type' } }) }, check: 'client', expect: { message: 'the token endpoint answered HTTP 400 unsupported_grant_type, so the credentials could not be tried', fix: /access_token_url/ } },
    { name: 'Standard flow off', setup: (r) => { r.answers.auth = redirectBack('error=unauthorized_client&error_description=Client+is+not+allowed+to+initiate+browser+login&state=x') }, check: 'redirect_uri', expect: { message: `Keycloak accepts ${callback} but refuses the login request (unauthorized_client)`, fix: 'turn on Standard flow in Clients → clearml → Settings (Keycloak console)' } },
    { name: 'a scope the client does not have', setup: (r) => { r.answers.auth = redirectBack('error=invalid_scope&state=x') }, check: 'redirect_uri', expect: { message: /\(invalid_scope\)$/, fix: /^every scope in .*__scope must be a client scope of clearml: see Clients → clearml → Client scopes/ } },
    { name: 'another refusal', setup: (r) => { r.answers.auth = redirectBack('error=access_denied&state=x') }, check: 'redirect_uri', expect: { message: /\(access_denied\)$/, fix: /Realm settings → Events/ } },
    { name: 'an existing session answers with a code', setup: (r) => { r.answers.auth = redirectBack('code=abc&state=x') }, check: 'redirect_uri', expect: { ok: true, message: /accepts/ } },
    { name: 'the authorization endpoint fails', setup: (r) => { r.answers.auth = () => ({ status: 502, body: 'bad gateway' }) }, check: 'redirect_uri', expect: { message: 'the authorization endpoint answered HTTP 502', fix: 'Keycloak is failing: see its log' } },
    { name: 'no authorization endpoint there', setup: (r) => { r.answers.auth = () => ({ status: 404, body: 'not found' }) }, check: 'redirect_uri', expect: { message: 'the authorization endpoint answered HTTP 404', fix: /authorize_url/ } },
    { name: 'no end-session endpoint there', setup: (r) => { r.answers.logout = () => ({ status: 404, body: 'not found' }) }, check: 'end_session', expect: { message: /logout answered HTTP 404$/, fix: /logout_url/ } },
    { name: 'the end-session endpoint fails', setup: (r) => { r.answers.logout = () => ({ status: 500, body: 'boom' }) }, check: 'end_session', expect: { message: /logout answered HTTP 500$/, fix: 'Keycloak is failing: see its log' } },
    { name: 'the end-session endpoint refuses something else', setup: (r) => { r.answers.logout = () => ({ status: 400, body: 'Invalid parameter: client_id' }) }, check: 'end_session', expect: { message: /logout answered HTTP 400$/, fix: /^check .*client_id; Realm settings → Events \(Keycloak console\) says what Keycloak refused$/ } }
  ]
  const ecKey = (await generateKeyPair('ES256')).publicKey
  const rsaKey = (await generateKeyPair('RS256')).publicKey
  const ecAndRsaKeys: JWK[] = [
    { ...await exportJWK(rsaKey), kid: 'enc', alg: 'RSA-OAEP', use: 'enc' },
    { ...await exportJWK(rsaKey), kid: 'rsa-no-alg' },
    { ...await exportJWK(ecKey), kid: 'ec-no-alg' },
    { ...realm.keys[0] }
  ]
  const healthyDocument = realm.document
  const healthyKeys = realm.keys
  for (const { name, setup, env, check, expect } of cases) {
    realm.answers = {}
    realm.document = healthyDocument
    realm.keys = healthyKeys
    realm.noDate = false
    setup(realm)
    const result = byId(await runDoctor({ env: envFor(realm.issuer, env), webappUrl: WEBAPP }))[check]!
    t.match(result, { ok: expect.ok ?? false, message: expect.message, ...(expect.fix === undefined ? {} : { fix: expect.fix }) }, name)
  }
})

/** C0 and C1 control characters, DEL, and the Unicode line and paragraph separators in `text`. */
function controlCharacters (text: string): string[] {
  return [...text].filter((char) => {
    const code = char.codePointAt(0)!
    return code < 0x20 || (code >= 0x7f && code <= 0x9f) || code === 0x2028 || code === 0x2029
  })
}

/** A plain HTTP server on loopback answering every request with `answer`, and remembering what came. */
async function recordingServer (t: Test, answer: (req: IncomingMessage, body: string) => Answer): Promise<{ origin: string, seen: Array<{ method: string, url: string, authorization?: string, body: string }> }> {
  const seen: Array<{ method: string, url: string, authorization?: string, body: string }> = []
  const server = createServer((req, res) => {
    let body = ''
    req.on('data', (chunk: Buffer) => { body += chunk.toString('utf8') })
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, authorization: req.headers.authorization, body })
      const reply = answer(req, body)
      const text = typeof reply.body === 'string' ? reply.body : JSON.stringify(reply.body)
      res.writeHead(reply.status ?? 200, { 'content-type': typeof reply.body === 'string' ? 'text/html' : 'application/json', ...reply.headers }).end(text)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen }
}

t.test('security review #22, 7: a discovery document of three hosts gets no secret, and nothing it says forges a line', async (t) => {
  const forgedLine = '✔ issuer        the realm calls itself https://kc.example.com/realms/clearml, as base_url says'
  // The third host: whatever the document points at. It records every request, and answers as a
  // Keycloak would that accepted anything.
  const third = await recordingServer(t, (req) => req.url!.startsWith('/certs')
    ? { body: { keys: [{ kty: `RSA\n${forgedLine}`, alg: 'XS1\r\n✔ jwks          fine\u001b[32m', kid: 'k' }, ...Array.from({ length: 50 }, (_, i) => ({ kty: 'oct', alg: `A${i}${'x'.repeat(300)}`, kid: `k${i}` }))] } }
    : req.url!.startsWith('/token') ? { body: { access_token: 'x', token_type: 'Bearer' } } : { body: '<html>login</html>' })
  // The realm's host serves a discovery document naming someone else as issuer, endpoints on the third.
  const realm = await recordingServer(t, () => ({
    body: {
      issuer: `someone-else\n${forgedLine}\u2028✔ client        Keycloak accepts client "clearml"`,
      authorization_endpoint: `${third.origin}/auth`,
      token_endpoint: `${third.origin}/token`,
      jwks_uri: `${third.origin}/certs`,
      end_session_endpoint: `${third.origin}/logout`
    }
  }))
  const env = envFor(`${realm.origin}/realms/clearml`)
  const text = await doctor(['doctor', '--webapp-url', WEBAPP], env)
  const json = await doctor(['doctor', '--json', '--webapp-url', WEBAPP], env)

  t.strictSame(third.seen.filter((request) => request.authorization !== undefined), [], 'no request with an Authorization header reached the third host')
  const secretForms = [CLIENT_SECRET, encodeURIComponent(CLIENT_SECRET), Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')]
  t.notOk(third.seen.some((request) => secretForms.some((form) => request.body.includes(form) || request.url.includes(form))), 'nor the secret in any form')

  const report = JSON.parse(json.stdout) as DoctorReport
  const lines = text.stdout.trimEnd().split('\n')
  t.strictSame(lines.filter((line) => /^[✔✖]/.test(line)).map((line) => line.split(/\s+/)[1]), report.checks.map((check) => check.id), 'one line per check, no other ✔ or ✖ line')
  t.equal(lines.filter((line) => line.includes('✔ issuer')).length, 0, 'no forged "✔ issuer" line, nor one inside a line')
  t.strictSame(controlCharacters(text.stdout.replaceAll('\n', '')), [], 'the text has no control character but its line ends')
  for (const check of report.checks) {
    for (const [field, value] of Object.entries({ message: check.message, fix: (check as { fix?: string }).fix ?? '' })) {
      t.strictSame(controlCharacters(value), [], `${check.id}.${field}: no control character or line separator`)
      t.ok(value.length <= 1000, `${check.id}.${field}: bounded (${value.length} characters)`)
    }
  }
  t.match(byId(report), {
    issuer: { ok: false, message: /^the realm calls itself someone-else\\n\\u2714 issuer {8}the realm calls itself https:\/\/kc\.example\.com\/realms\/clearml, as base_url says\\u2028\\u2714 client {8}Keycloak accepts client "clearml", not http:\/\/127\.0\.0\.1:\d+\/realms\/clearml: every token would be refused$/ },
    client: { ok: false, message: 'not checked: needs issuer', fix: 'fix issuer first' },
    // Each name the key set gives escaped and cut at 40 characters, eight of the 51 named.
    jwks: { ok: false, message: /\(it publishes XS1\\r\\n\\u2714 jwks {10}fine\\u001b\[3…(, A\dx{38}…){7} and 43 more\)$/ }
  })
  assertNothingSecret(t, text.stdout + json.stdout)
})

t.test('sessions that follow Keycloak: the realm advertises a revocation endpoint and offline_access (issue #20)', async (t) => {
  const realm = await startScriptedRealm(t)
  const oidc = `${realm.issuer}/protocol/openid-connect`
  const keycloakLike = { ...realm.document, revocation_endpoint: `${oidc}/revoke`, scopes_supported: ['openid', 'offline_access', 'profile', 'email', 'roles'] }
  // Revalidation at its default (300 s) and session.follows at its default (user).
  const following = (extra: Env = {}): Env => envFor(realm.issuer, { [`${SESSION}revalidate_sec`]: undefined, ...extra })
  const run = async (document: Record<string, unknown>, env = following()): Promise<DoctorReport> => {
    realm.document = document
    return await runDoctor({ env, webappUrl: WEBAPP })
  }

  const healthy = await run(keycloakLike)
  t.strictSame(healthy.checks.map((check) => check.id), EVERY_CHECK, 'with revalidation on, both checks run, before clock')
  assertFailures(t, healthy, {})
  t.match(byId(healthy), {
    revocation: { message: `the realm advertises its revocation endpoint ${oidc}/revoke: a logout revokes the session's refresh token there` },
    offline_access: { message: 'the realm offers the offline_access scope, which the login asks for (CLEARML__services__login__sso__oauth_client__keycloak__session__follows=user)' }
  })
  const text = await doctor(['doctor', '--webapp-url', WEBAPP], following())
  t.match(text.stdout, /^✔ revocation +the realm advertises its revocation endpoint .*\n✔ offline_access +the realm offers the offline_access scope/m)
  t.match(text.stdout, /All 11 checks passed\.\n$/)

  const { revocation_endpoint: _, ...withoutRevocation } = keycloakLike
  assertFailures(t, await run(withoutRevocation), {
    revocation: {
      message: /^discovery advertises no revocation_endpoint: a logout cannot revoke the session's refresh token, so each one leaves a Keycloak session \(an offline one with \S+session__follows=user\) behind$/,
      fix: /^upgrade Keycloak to a release that serves token revocation .*, or set CLEARML__services__login__sso__oauth_client__keycloak__session__revalidate_sec=0 to keep sessions independent of Keycloak$/
    }
  })
  for (const odd of [42, 'revoke', 'ftp://kc.example.com/revoke']) {
    assertFailures(t, await run({ ...keycloakLike, revocation_endpoint: odd }), { revocation: { message: /^discovery advertises a revocation_endpoint that is not an http\(s\) URL \(.+\): a logout cannot revoke/ } })
  }

  const offlineFix = /^in the Keycloak console, Client scopes must have offline_access \(every new realm does; recreate it if it was deleted, .*Include in OpenID Provider Metadata.*\) and Clients → clearml → Client scopes must list it; or set CLEARML__services__login__sso__oauth_client__keycloak__session__follows=sso_session$/
  assertFailures(t, await run({ ...keycloakLike, scopes_supported: ['openid', 'profile', 'email'] }), {
    offline_access: { message: /^the realm's scopes_supported does not list offline_access, which the login asks for with \S+session__follows=user: Keycloak then refuses the login \(invalid_scope\) or issues no offline token to revalidate the session with$/, fix: offlineFix }
  })
  const { scopes_supported: __, ...withoutScopes } = keycloakLike
  assertFailures(t, await run(withoutScopes), { offline_access: { message: /^the realm's scopes_supported is missing, so it does not list offline_access/, fix: offlineFix } })

  // session.follows=sso_session asks for no offline token: only the revocation endpoint matters.
  const online = await run(withoutScopes, following({ [`${SESSION}follows`]: 'sso_session' }))
  t.strictSame(online.checks.map((check) => check.id), EVERY_CHECK.filter((id) => id !== 'offline_access'), 'follows=sso_session: no offline_access check')
  assertFailures(t, online, {})
  // Revalidation off: the session is independent of Keycloak after login; neither check runs.
  const off = await run({ ...realm.document, revocation_endpoint: undefined, scopes_supported: undefined }, following({ [`${SESSION}revalidate_sec`]: '0' }))
  t.strictSame(off.checks.map((check) => check.id), ALL_CHECKS, 'revalidate_sec=0: neither check runs, as end_session without idp_logout')
  assertFailures(t, off, {})

  // A document naming another issuer is not the realm's: what it advertises says nothing.
  assertFailures(t, await run({ ...keycloakLike, issuer: 'https://someone-else.example/realms/x' }), { issuer: { message: /calls itself https:\/\/someone-else\.example\/realms\/x/ } }, { need: 'issuer', ids: ['client', 'revocation', 'offline_access'] })

  // Every endpoint explicit: no document to read, said so, with what to check by hand.
  const explicit = following({
    [`${KC}base_url`]: undefined,
    [`${KC}authorize_url`]: `${oidc}/auth`,
    [`${KC}access_token_url`]: `${oidc}/token`,
    [`${KC}jwks_url`]: `${oidc}/certs`,
    [`${KC}logout_url`]: `${oidc}/logout`
  })
  const withoutDiscovery = await run(keycloakLike, explicit)
  assertFailures(t, withoutDiscovery, {})
  t.match(byId(withoutDiscovery), {
    revocation: { message: `not read: CLEARML__services__login__sso__oauth_client__keycloak__base_url is unset, so there is no discovery document (Keycloak serves revocation at ${oidc}/revoke)` },
    offline_access: { message: /^not read: .*base_url is unset, so there is no discovery document \(check by hand that Clients → clearml → Client scopes lists offline_access\)$/ }
  })

  // What the realm advertises is printed as every Keycloak value is: escaped and bounded.
  const odd = await run({ ...keycloakLike, revocation_endpoint: 'revoke\n✔ clock  fine' })
  t.match(byId(odd).revocation, { ok: false, message: /^discovery advertises a revocation_endpoint that is not an http\(s\) URL \(revoke\\n\\u2714 clock {2}fine\): / })
})

t.test('the command line', async (t) => {
  const help = await doctor(['--help'], {})
  t.strictSame(help, { code: 0, stdout: USAGE, stderr: '' })
  t.match(USAGE, /^Usage: fastify-clearml-keycloak doctor \[--webapp-url URL\] \[--json\]/)
  t.equal((await doctor(['doctor', '-h'], {})).code, 0)
  for (const [args, says] of [
    [[], 'No command given.'],
    [['fixit'], 'Unknown command.'],
    [['doctor', 'tomorrow'], 'Unexpected argument after doctor.'],
    [['doctor', '--client-secret=hunter2'], 'Unknown option \'--client-secret\''],
    [['doctor', '--webapp-url'], 'Option \'--webapp-url <value>\' argument missing'],
    [['doctor', '--json=yes'], 'Option \'--json\' does not take an argument']
  ] as const) {
    const { code, stdout, stderr } = await doctor([...args], {})
    t.equal(code, 2, `${args.join(' ')}: exit 2`)
    t.equal(stdout, '')
    t.ok(stderr.startsWith(says), `${args.join(' ')}: ${says}`)
    t.ok(stderr.endsWith(USAGE), 'then the usage')
    t.notMatch(stderr, /hunter2|yes|tomorrow|fixit/, 'what was typed is not echoed')
  }
  const { code, stdout } = await doctor(['doctor'], {})
  t.equal(code, 1, 'an empty environment is a failed config, not a crash')
  t.match(stdout, /^✖ config +.*client_id is required/m)
})

/**
 * The real command, as `npx fastify-clearml-keycloak doctor` runs it, in its own process, with the
 * parent's environment without any ClearML variable (only `env` configures it). Its coverage is not
 * recorded: a process that loads the sources through tsx maps them differently from tap's loader, and
 * merged they would report lines as covered that no test ran. `bin/cli.ts` also runs in-process below.
 */
async function runCli (args: string[], env: Env): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^(CLEARML|TRAINS)_/.test(name)))
  const child = spawn(process.execPath, ['--import', 'tsx', 'bin/cli.ts', ...args], {
    // tap's process tracking adds its variables to every child unless the child's env sets them.
    env: { ...inherited, _TAPJS_PROCESSINFO_COVERAGE_: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString('utf8') })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString('utf8') })
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve))
  return { code, stdout, stderr }
}

t.test('the bin command in a child process: --json parsed, text, exit statuses', async (t) => {
  const idp = await startRealm(t, { serviceAccountsEnabled: true })
  const good = await runCli(['doctor', '--json', '--webapp-url', WEBAPP], envFor(idp.issuer))
  t.equal(good.code, 0)
  const report = JSON.parse(good.stdout) as DoctorReport
  t.strictSame(report.checks.map((check) => [check.id, check.ok]), ALL_CHECKS.map((id) => [id, true]))
  assertNothingSecret(t, good.stdout + good.stderr)

  const bad = await runCli(['doctor'], envFor(idp.issuer, { [`${KC_SECURE}client_secret`]: 'wrong-Pq9', CLEARML_WEB_HOST: WEBAPP, CLEARML__secure__auth__token_secret: 'tiny' }))
  t.equal(bad.code, 1)
  t.match(bad.stdout, /^✖ config /m)
  t.match(bad.stdout, /^✖ client /m)
  t.match(bad.stdout, /^✔ redirect_uri /m)
  t.match(bad.stdout, /2 of 9 checks failed\.\n$/)
  assertNothingSecret(t, bad.stdout + bad.stderr, ['wrong-Pq9', 'tiny'])

  const usage = await runCli(['doctor', '--verbose'], {})
  t.equal(usage.code, 2)
  t.equal(usage.stdout, '')
  t.match(usage.stderr, /Unknown option '--verbose'[^]*Usage: fastify-clearml-keycloak doctor/)
})

t.test('bin/cli.ts runs the command with the process\'s arguments, streams and exit status', async (t) => {
  const argv = process.argv
  const write = process.stderr.write
  let stderr = ''
  process.argv = [argv[0], 'bin/cli.ts', 'doctor', '--verbose']
  process.stderr.write = ((text: string) => { stderr += text; return true }) as typeof process.stderr.write
  try {
    await import('../bin/cli.js')
  } finally {
    process.argv = argv
    process.stderr.write = write
  }
  t.equal(process.exitCode, 2)
  process.exitCode = 0
  t.match(stderr, /^Unknown option '--verbose'[^]*Usage: fastify-clearml-keycloak doctor/)
})
