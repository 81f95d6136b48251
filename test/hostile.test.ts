/**
 * What the plugin refuses from a provider that misbehaves: the OpenID Foundation's Relying Party
 * checks for the code flow, transport faults, and key rotation, each against a scriptable provider
 * over HTTP. Every refusal must leave no user, no group change and no session cookie.
 */
import t, { type Test } from 'tap'
import { decodeJwt, generateSecret, SignJWT, exportJWK, type JWTPayload } from 'jose'
import { newKey, type HostileIdp } from './helpers/hostile-idp.js'
import { harness, KC, login, type Harness } from './helpers/hostile-harness.js'

async function expectRefusal (t: Test, h: Harness, code: string, name: string): Promise<void> {
  const answer = await login(h)
  t.equal(answer.location, `/login?sso_error=${code}`, `${name}: ${code}`)
  t.notOk(answer.setCookie.some((c) => /^clearml_token_basic=[^;]/.test(c)), `${name}: no session cookie`)
  t.strictSame(h.directory.listUsers(), [], `${name}: no user`)
}

const idToken = (idp: HostileIdp, change: (claims: JWTPayload) => JWTPayload, options?: Parameters<HostileIdp['sign']>[1]) => {
  const base = idp.idClaims
  idp.idClaims = (nonce) => change(base(nonce))
  if (options !== undefined) {
    idp.override.token = async () => ({ body: { token_type: 'Bearer', id_token: await idp.sign(idp.idClaims(idp.nonce), options), access_token: await idp.sign(idp.accessClaims()) } })
  }
}
const without = (claims: JWTPayload, name: string): JWTPayload => Object.fromEntries(Object.entries(claims).filter(([key]) => key !== name))

t.test('the happy path of the scripted provider logs in', async (t) => {
  const h = await harness(t)
  const answer = await login(h)
  t.equal(answer.location, '/')
  t.equal(h.directory.listUsers().length, 1)
  const session = answer.setCookie.find((c) => c.startsWith('clearml_token_basic='))!.split(';')[0].split('=')[1]
  t.match(decodeJwt(session), { sso: { provider: 'keycloak', sid: 'kc-session-1' } }, 'Keycloak\'s sid is kept for logout')

  const older = await harness(t)
  idToken(older.idp, (c) => without(c, 'sid'))
  const noSid = await login(older)
  t.equal(noSid.location, '/', 'an ID token without sid (older Keycloak) is fine')
  const token = noSid.setCookie.find((c) => c.startsWith('clearml_token_basic='))!.split(';')[0].split('=')[1]
  t.strictSame(decodeJwt(token).sso, { provider: 'keycloak' })
})

t.test('ID token checks (OpenID RP conformance, code flow)', async (t) => {
  const other = await newKey('key-1')
  const cases: Array<[string, (idp: HostileIdp) => void | Promise<void>, string]> = [
    ['signature by a key the provider does not publish (same kid)', (idp) => { idToken(idp, (c) => c, { key: other }) }, 'invalid_token'],
    ['wrong iss', (idp) => { idToken(idp, (c) => ({ ...c, iss: 'https://evil.example/realms/test' })) }, 'invalid_token'],
    ['aud is another client', (idp) => { idToken(idp, (c) => ({ ...c, aud: 'other-client' })) }, 'invalid_token'],
    ['aud missing', (idp) => { idToken(idp, (c) => without(c, 'aud')) }, 'invalid_token'],
    ['several audiences and no azp', (idp) => { idToken(idp, (c) => without({ ...c, aud: ['clearml', 'other'] }, 'azp')) }, 'invalid_token'],
    ['azp of another client', (idp) => { idToken(idp, (c) => ({ ...c, azp: 'other-client' })) }, 'invalid_token'],
    ['sub missing', (idp) => { idToken(idp, (c) => without(c, 'sub')) }, 'invalid_token'],
    ['iat missing', (idp) => { idToken(idp, (c) => without(c, 'iat')) }, 'invalid_token'],
    ['exp missing', (idp) => { idToken(idp, (c) => without(c, 'exp')) }, 'invalid_token'],
    ['expired', (idp) => { idToken(idp, (c) => ({ ...c, iat: 1000, exp: 2000 })) }, 'invalid_token'],
    ['issued in the future beyond tolerance', (idp) => { idToken(idp, (c) => ({ ...c, iat: (c.iat as number) + 3600, exp: (c.exp as number) + 3600, nbf: (c.iat as number) + 3600 })) }, 'invalid_token'],
    ['iat in the future without nbf (jose alone does not check it)', (idp) => { idToken(idp, (c) => ({ ...c, iat: (c.iat as number) + 3600, exp: (c.exp as number) + 3600 })) }, 'invalid_token'],
    ['nonce wrong', (idp) => { idToken(idp, (c) => ({ ...c, nonce: 'replayed-nonce' })) }, 'invalid_token'],
    ['nonce missing', (idp) => { idToken(idp, (c) => without(c, 'nonce')) }, 'invalid_token'],
    ['typ is not ID (a refresh token passed off)', (idp) => { idToken(idp, (c) => ({ ...c, typ: 'Refresh' })) }, 'invalid_token'],
    ['alg none', (idp) => {
      idp.override.token = async () => {
        const unsigned = `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url')}.${Buffer.from(JSON.stringify(idp.idClaims(idp.nonce))).toString('base64url')}.`
        return { body: { token_type: 'Bearer', id_token: unsigned, access_token: await idp.sign(idp.accessClaims()) } }
      }
    }, 'invalid_token'],
    ['HS256 signed with the provider\'s public key (algorithm confusion)', (idp) => {
      idp.override.token = async () => {
        const publicKeyAsSecret = new TextEncoder().encode(JSON.stringify(idp.keys[0].publicJwk))
        const forged = await new SignJWT(idp.idClaims(idp.nonce)).setProtectedHeader({ alg: 'HS256', kid: 'key-1' }).sign(publicKeyAsSecret)
        return { body: { token_type: 'Bearer', id_token: forged, access_token: await idp.sign(idp.accessClaims()) } }
      }
    }, 'invalid_token'],
    ['HS256 with a shared secret (not an allowed algorithm)', async (idp) => {
      const secret = await generateSecret('HS256', { extractable: true })
      const jwk = await exportJWK(secret)
      idp.published = () => [...idp.keys.map((k) => k.publicJwk), { ...jwk, kid: 'hs' }]
      idp.override.token = async () => ({ body: { token_type: 'Bearer', id_token: await new SignJWT(idp.idClaims(idp.nonce)).setProtectedHeader({ alg: 'HS256', kid: 'hs' }).sign(secret), access_token: await idp.sign(idp.accessClaims()) } })
    }, 'invalid_token'],
    ['a token that is not a JWT at all', (idp) => { idp.override.token = () => ({ body: { token_type: 'Bearer', id_token: 'not-a-jwt', access_token: 'x' } }) }, 'invalid_token']
  ]
  for (const [name, prepare, code] of cases) {
    const h = await harness(t)
    await prepare(h.idp)
    await expectRefusal(t, h, code, name)
  }
})

t.test('ID token nonce: taken from the transaction, so another login\'s token is refused', async (t) => {
  const h = await harness(t)
  const first = await h.app.inject({ method: 'GET', url: '/login/keycloak' })
  h.idp.nonce = new URL(first.headers.location as string).searchParams.get('nonce')!
  // The provider now answers with the first login's nonce, to a second login.
  h.idp.idClaims = ((base) => (nonce: string) => base(nonce))(h.idp.idClaims)
  const second = await h.app.inject({ method: 'GET', url: '/login/keycloak' })
  const state = new URL(second.headers.location as string).searchParams.get('state')!
  const answer = await h.app.inject({ method: 'GET', url: `/callback_keycloak?code=c&state=${state}`, headers: { cookie: (second.headers['set-cookie'] as string).split(';')[0] } })
  t.equal(answer.headers.location, '/login?sso_error=invalid_token')
})

t.test('kid absent: one published key verifies; several are tried in turn', async (t) => {
  const single = await harness(t)
  single.idp.override.token = async () => ({ body: { token_type: 'Bearer', id_token: await single.idp.sign(single.idp.idClaims(single.idp.nonce), { header: { kid: undefined } }), access_token: await single.idp.sign(single.idp.accessClaims(), { header: { kid: undefined } }) } })
  t.equal((await login(single)).location, '/', 'single key: accepted (rp-id_token-kid-absent-single-jwks)')

  const several = await harness(t)
  several.idp.keys.push(await newKey('key-2'))
  several.idp.override.token = async () => ({ body: { token_type: 'Bearer', id_token: await several.idp.sign(several.idp.idClaims(several.idp.nonce), { key: several.idp.keys[1], header: { kid: undefined } }), access_token: await several.idp.sign(several.idp.accessClaims()) } })
  t.equal((await login(several)).location, '/', 'several keys: the one that verifies is found')

  const wrong = await harness(t)
  wrong.idp.keys.push(await newKey('key-2'))
  const stranger = await newKey('key-3')
  wrong.idp.override.token = async () => ({ body: { token_type: 'Bearer', id_token: await wrong.idp.sign(wrong.idp.idClaims(wrong.idp.nonce), { key: stranger, header: { kid: undefined } }), access_token: await wrong.idp.sign(wrong.idp.accessClaims()) } })
  await expectRefusal(t, wrong, 'invalid_token', 'several keys, none verifies')

  const expired = await harness(t)
  expired.idp.keys.push(await newKey('key-2'))
  expired.idp.override.token = async () => ({ body: { token_type: 'Bearer', id_token: await expired.idp.sign({ ...expired.idp.idClaims(expired.idp.nonce), iat: 1000, exp: 2000 }, { header: { kid: undefined } }), access_token: await expired.idp.sign(expired.idp.accessClaims()) } })
  await expectRefusal(t, expired, 'invalid_token', 'several keys, the right one verifies an expired token')
})

t.test('access token checks', async (t) => {
  const access = (change: (claims: JWTPayload) => JWTPayload) => (idp: HostileIdp) => {
    const base = idp.accessClaims
    idp.accessClaims = () => change(base())
  }
  const cases: Array<[string, (idp: HostileIdp) => void, string]> = [
    ['typ Refresh instead of Bearer', access((c) => ({ ...c, typ: 'Refresh' })), 'invalid_token'],
    ['azp of another client', access((c) => ({ ...c, azp: 'other-client' })), 'invalid_token'],
    ['azp missing', access((c) => without(c, 'azp')), 'invalid_token'],
    ['another subject than the ID token', access((c) => ({ ...c, sub: 'someone-else' })), 'invalid_token'],
    ['wrong issuer', access((c) => ({ ...c, iss: 'https://evil.example' })), 'invalid_token'],
    ['expired', access((c) => ({ ...c, exp: 1000, iat: 900 })), 'invalid_token']
  ]
  for (const [name, prepare, code] of cases) {
    const h = await harness(t)
    prepare(h.idp)
    await expectRefusal(t, h, code, name)
  }
  const audAccount = await harness(t)
  access((c) => ({ ...c, aud: 'account' }))(audAccount.idp)
  t.equal((await login(audAccount)).location, '/', 'Keycloak\'s aud "account" is accepted')
  const noAud = await harness(t)
  access((c) => without(c, 'aud'))(noAud.idp)
  t.equal((await login(noAud)).location, '/', 'and so is no aud at all')
})

t.test('userinfo (get_info_from_access_token=false)', async (t) => {
  const env = { [`${KC}get_info_from_access_token`]: 'false' }
  const mismatch = await harness(t, env)
  mismatch.idp.userinfo = () => ({ sub: 'someone-else', email: 'ann@acme.com' })
  await expectRefusal(t, mismatch, 'userinfo_mismatch', 'userinfo sub differs')
  const down = await harness(t, env)
  down.idp.override.userinfo = () => ({ status: 503, body: {} })
  await expectRefusal(t, down, 'idp_unavailable', 'userinfo down')
  const refused = await harness(t, env)
  refused.idp.override.userinfo = () => ({ status: 401, body: { error: 'invalid_token' } })
  await expectRefusal(t, refused, 'invalid_token', 'userinfo refuses the token')
  const ok = await harness(t, env)
  t.equal((await login(ok)).location, '/')
  t.equal(ok.idp.hits.get('/realms/test/protocol/openid-connect/userinfo'), 1)
})

t.test('token endpoint faults', async (t) => {
  const cases: Array<[string, () => { status?: number, raw?: string, body?: unknown, headers?: Record<string, string>, hang?: boolean, bytes?: number }, string]> = [
    ['HTTP 500', () => ({ status: 500, raw: 'oops', headers: { 'content-type': 'text/plain' } }), 'idp_unavailable'],
    ['invalid_grant', () => ({ status: 400, body: { error: 'invalid_grant', error_description: 'Code not valid' } }), 'token_exchange_failed'],
    ['an odd error value', () => ({ status: 400, body: { error: 'DROP TABLE' } }), 'token_exchange_failed'],
    ['a refusal that is not JSON', () => ({ status: 401, raw: 'Unauthorized', headers: { 'content-type': 'text/plain' } }), 'token_exchange_failed'],
    ['non-JSON 200', () => ({ status: 200, raw: '<html>proxy login</html>', headers: { 'content-type': 'text/html' } }), 'token_exchange_failed'],
    ['broken JSON', () => ({ status: 200, raw: '{"id_token":', headers: { 'content-type': 'application/json' } }), 'token_exchange_failed'],
    ['no id_token (scope without openid)', () => ({ body: { token_type: 'Bearer', access_token: 'x' } }), 'token_exchange_failed'],
    ['token_type other than Bearer', () => ({ body: { token_type: 'mac', access_token: 'x', id_token: 'y' } }), 'token_exchange_failed'],
    ['a huge body (8 MiB)', () => ({ bytes: 8 * 1024 * 1024 }), 'idp_unavailable'],
    ['a declared huge body', () => ({ raw: '{}', headers: { 'content-length': String(50 * 1024 * 1024) } }), 'idp_unavailable'],
    ['hanging past the time-out', () => ({ hang: true }), 'idp_unavailable']
  ]
  for (const [name, answer, code] of cases) {
    const h = await harness(t)
    h.idp.override.token = answer
    const started = Date.now()
    await expectRefusal(t, h, code, name)
    if (name.startsWith('hanging')) t.ok(Date.now() - started < 5000, 'bounded by http_timeout_ms')
  }
})

t.test('the token request: client_secret_basic, PKCE verifier, exact redirect_uri', async (t) => {
  const h = await harness(t, { CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: 'p@ss:w rd' })
  let seen: { authorization?: string, body?: URLSearchParams } = {}
  const original = h.idp.override.token
  h.idp.override.token = async (req, body) => {
    seen = { authorization: req.headers.authorization, body: new URLSearchParams(body) }
    return await (original?.(req, body) ?? { status: 500 })
  }
  await login(h)
  t.equal(seen.authorization, 'Basic ' + Buffer.from('clearml:p%40ss%3Aw+rd').toString('base64'), 'RFC 6749 2.3.1 form-encoding before base64')
  t.equal(seen.body?.get('grant_type'), 'authorization_code')
  t.equal(seen.body?.get('code'), 'code-0')
  t.equal(seen.body?.get('redirect_uri'), 'https://clearml.example.com/callback_keycloak')
  t.match(seen.body?.get('code_verifier'), /^[A-Za-z0-9_-]{43}$/)
  t.equal(seen.body?.get('client_secret'), null, 'the secret is not in the body')
})

t.test('key set faults and rotation', async (t) => {
  const down = await harness(t)
  down.idp.override.certs = () => ({ status: 500, body: {} })
  await expectRefusal(t, down, 'idp_unavailable', 'JWKS answering 500')
  const malformed = await harness(t)
  malformed.idp.override.certs = () => ({ body: { keys: [{ kty: 'RSA' }] } })
  await expectRefusal(t, malformed, 'invalid_token', 'JWKS with an unusable key')
  const notObjects = await harness(t)
  notObjects.idp.override.certs = () => ({ body: { keys: [1, 2] } })
  await expectRefusal(t, notObjects, 'idp_unavailable', 'JWKS whose keys are not objects')
  const notASet = await harness(t)
  notASet.idp.override.certs = () => ({ body: { keys: 'none' } })
  await expectRefusal(t, notASet, 'idp_unavailable', 'JWKS without a key list')

  const rotating = await harness(t)
  t.equal((await login(rotating)).location, '/')
  rotating.idp.keys.unshift(await newKey('key-2'))
  const answers = await Promise.all(Array.from({ length: 20 }, async () => await login(rotating)))
  t.ok(answers.every((a) => a.location === '/'), '20 concurrent logins right after the rotation succeed')
  t.equal(rotating.idp.hits.get('/realms/test/protocol/openid-connect/certs'), 2, 'with exactly one extra key-set fetch')
  rotating.idp.keys.unshift(await newKey('key-3'))
  // A second rotation soon after: tokens from the token endpoint are Keycloak's own, so no cooldown
  // stands between a login and the new key.
  t.equal((await login(rotating)).location, '/', 'a second rotation within the cooldown: the login succeeds at once')
  t.equal(rotating.idp.hits.get('/realms/test/protocol/openid-connect/certs'), 3, 'with one more fetch')
  t.equal((await login(rotating)).location, '/')
  t.equal(rotating.idp.hits.get('/realms/test/protocol/openid-connect/certs'), 3, 'and none for the next login')
})

t.test('discovery: issuer mismatch refused; unreachable or broken falls back to the realm paths', async (t) => {
  const mismatch = await harness(t)
  mismatch.idp.override.discovery = () => ({ body: { issuer: 'https://evil.example/realms/test' } })
  const start = await mismatch.app.inject({ method: 'GET', url: '/login/keycloak' })
  t.equal(start.headers.location, '/login?sso_error=idp_unavailable', 'discovery names another issuer: the login does not start')
  t.equal(start.headers['set-cookie'], undefined, 'and no transaction cookie is set')

  const odd = await harness(t)
  odd.idp.override.discovery = () => ({ body: { issuer: odd.idp.issuer, authorization_endpoint: 42, token_endpoint: `${odd.idp.issuer}/protocol/openid-connect/token` } })
  const oddStart = await odd.app.inject({ method: 'GET', url: '/login/keycloak' })
  t.match(oddStart.headers.location, `${odd.idp.issuer}/protocol/openid-connect/auth?`, 'a non-string endpoint in discovery is ignored for the standard path')

  for (const [name, answer] of [['404', { status: 404, body: {} }], ['not JSON', { raw: 'hello', headers: { 'content-type': 'text/plain' } }], ['hanging', { hang: true }]] as const) {
    const h = await harness(t)
    h.idp.override.discovery = () => answer
    t.equal((await login(h)).location, '/', `discovery ${name}: Keycloak's standard paths serve`)
    delete h.idp.override.discovery
    await login(h)
    t.equal(h.idp.hits.get('/realms/test/.well-known/openid-configuration'), 2, `discovery ${name}: tried again on the next login`)
  }
})

t.test('back-channel logout tokens (OpenID Connect Back-Channel Logout 1.0)', async (t) => {
  const h = await harness(t)
  const answer = await login(h)
  const session = answer.setCookie.find((c) => c.startsWith('clearml_token_basic='))!.split(';')[0]
  const me = async (): Promise<number> => (await h.app.inject({ method: 'GET', url: '/me', headers: { cookie: session } })).statusCode
  t.equal(await me(), 200)
  const now = Math.floor(Date.now() / 1000)
  const valid = (): JWTPayload => ({ iss: h.idp.issuer, aud: 'clearml', iat: now, exp: now + 60, jti: `jti-${Math.random()}`, sid: 'kc-session-1', sub: 'someone', typ: 'Logout', events: { 'http://schemas.openid.net/event/backchannel-logout': {} } })
  const post = async (payload: string, type = 'application/x-www-form-urlencoded') => await h.app.inject({ method: 'POST', url: '/logout/backchannel', payload, headers: { 'content-type': type } })
  const other = await newKey('key-1')
  const cases: Array<[string, () => Promise<string>]> = [
    ['wrong iss', async () => await h.idp.sign({ ...valid(), iss: 'https://evil.example' })],
    ['aud of another client', async () => await h.idp.sign({ ...valid(), aud: 'other' })],
    ['no logout event', async () => await h.idp.sign({ ...valid(), events: {} })],
    ['a nonce (an ID token passed off)', async () => await h.idp.sign({ ...valid(), nonce: 'n' })],
    ['typ ID', async () => await h.idp.sign({ ...valid(), typ: 'ID' })],
    ['no sid', async () => await h.idp.sign(without(valid(), 'sid'))],
    ['no jti', async () => await h.idp.sign(without(valid(), 'jti'))],
    ['no iat', async () => await h.idp.sign(without(valid(), 'iat'))],
    ['a key the provider does not publish', async () => await h.idp.sign(valid(), { key: other })],
    ['not a JWT', async () => 'garbage']
  ]
  for (const [name, make] of cases) {
    const refused = await post(`logout_token=${encodeURIComponent(await make())}`)
    t.equal(refused.statusCode, 400, `${name}: 400, as the specification asks`)
    t.match(refused.json(), { data: { error: 'invalid_token' } }, name)
    t.equal(await me(), 200, `${name}: the session lives on`)
  }
  t.match((await post('nothing=here')).json(), { meta: { result_code: 400 }, data: { error: 'bad_request' } }, 'no logout_token')
  const accepted = await post(`logout_token=${encodeURIComponent(await h.idp.sign(valid()))}`)
  t.equal(accepted.statusCode, 200)
  t.equal(accepted.headers['cache-control'], 'no-store')
  t.equal(await me(), 401, 'every session of that Keycloak session is refused from now on')
  const json = await post(JSON.stringify({ logout_token: await h.idp.sign(valid()) }), 'application/json')
  t.equal(json.statusCode, 200, 'a JSON body is accepted as well')
})
