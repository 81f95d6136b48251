import t from 'tap'
import { inspect } from 'node:util'
import { ConfigError, loadConfig, readConfig } from '../index.js'
import { hoconText, parseHoconValue, readClearmlEnv } from '../lib/config/clearml-env.js'
import { issuerOf, settingName, weakSettings } from '../lib/config/settings.js'

const KC = 'CLEARML__services__login__sso__oauth_client__keycloak__'
const KCS = 'CLEARML__secure__login__sso__oauth_client__keycloak__'
const minimal = {
  [`${KC}base_url`]: 'https://kc.example.com/realms/clearml',
  [`${KCS}client_id`]: 'clearml',
  [`${KCS}client_secret`]: 'the-client-secret'
}

const problemsOf = (env: Record<string, string>): string[] => {
  try {
    loadConfig(env)
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.variable} ${p.message}`)
    throw err
  }
  return []
}

t.test('the variables of ClearML\'s Keycloak documentation, exactly as written there', async (t) => {
  // https://clear.ml/docs/latest/docs/deploying_clearml/enterprise_deploy/extra_configs/sso/sso_keycloak_oauth/
  // A compose file's `"${KEYCLOAK_AUTH_CLIENT_ID}"` arrives with its literal quotes after substitution.
  const config = loadConfig({
    [`${KC}base_url`]: 'https://kc.example.com/realms/clearml/',
    [`${KC}authorize_url`]: 'https://kc.example.com/realms/clearml/protocol/openid-connect/auth',
    [`${KC}access_token_url`]: 'https://kc.example.com/realms/clearml/protocol/openid-connect/token',
    [`${KCS}client_id`]: '"clearml-webapp"',
    [`${KCS}client_secret`]: '"s3cr3t with spaces"',
    [`${KC}idp_logout`]: 'true',
    [`${KC}claims__name`]: 'preferred_username',
    [`${KCS}default_company`]: '"d1bd92a3b039400cbafc60a7a5b1e52b"',
    [`${KC}groups__enabled`]: 'true',
    [`${KC}groups__claim`]: 'groups',
    [`${KC}groups__admins`]: '["kc-admins"]',
    [`${KC}groups__prohibit_user_signup_if_not_in_group`]: 'true',
    [`${KC}admin_role`]: '',
    [`${KC}get_info_from_access_token`]: 'false'
  })
  t.equal(config.baseUrl, 'https://kc.example.com/realms/clearml', 'trailing / of the documented base_url dropped')
  t.equal(loadConfig({ ...minimal, [`${KC}base_url`]: 'https://kc.example.com/realms/clearml//' }).baseUrl, 'https://kc.example.com/realms/clearml', 'however many')
  t.equal(loadConfig({ ...minimal, [`${KC}base_url`]: 'http://keycloak:8080/realms/clearml' }).baseUrl, 'http://keycloak:8080/realms/clearml', 'plain http on an internal network')
  t.equal(config.authorizeUrl, 'https://kc.example.com/realms/clearml/protocol/openid-connect/auth', 'URL with // kept whole')
  t.equal(config.clientId, 'clearml-webapp', 'literal quotes removed')
  t.equal(config.clientSecret, 's3cr3t with spaces')
  t.equal(config.idpLogout, true)
  t.equal(config.claims.name, 'preferred_username')
  t.equal(config.claims.username, 'preferred_username')
  t.equal(config.defaultCompany, 'd1bd92a3b039400cbafc60a7a5b1e52b')
  t.strictSame(config.groups, { enabled: true, claim: 'groups', admins: ['kc-admins'], prohibitUserSignupIfNotInGroup: true, caseSensitive: true })
  t.equal(config.adminRole, null, 'admin_role= (empty) disables role management')
  t.equal(config.getInfoFromAccessToken, false)
})

t.test('defaults of SPEC 3.2 with only the required keys', async (t) => {
  const config = loadConfig(minimal)
  t.match(config, {
    idpLogout: false,
    getInfoFromAccessToken: true,
    adminRole: 'admin',
    claims: { userId: 'sub', email: 'email', name: 'name', username: 'preferred_username', givenName: 'given_name', familyName: 'family_name', avatar: 'picture' },
    groups: { enabled: false, claim: 'groups', admins: [], prohibitUserSignupIfNotInGroup: false, caseSensitive: true },
    scope: 'openid profile email',
    displayName: 'Keycloak',
    sessionCookieName: 'clearml_token_basic',
    sessionExpirationSec: 2592000,
    algorithms: ['RS256'],
    session: { revalidateSec: 300, follows: 'user' }
  })
  t.strictSame(loadConfig({ ...minimal, [`${KC}session__revalidate_sec`]: '0', [`${KC}session__follows`]: '"sso_session"' }).session,
    { revalidateSec: 0, follows: 'sso_session' }, 'sessions that follow Keycloak: turned off, or following the SSO session')
  t.equal(config.defaultCompany, undefined)
  t.equal(config.tokenSecret, undefined)
  t.ok(Object.isFrozen(config) && Object.isFrozen(config.groups.admins), 'the resolved config cannot be changed by accident')
})

t.test('value parsing, as ClearML\'s HOCON reader does', async (t) => {
  // Each row as pyhocon reads `key: <value>`, the way ClearML's apiserver reads a CLEARML__ variable.
  const cases: Array<[string, string, unknown]> = [
    ['JSON string', '"abc"', 'abc'],
    ['JSON list', '["a","b"]', ['a', 'b']],
    ['JSON true', 'true', true],
    ['case-insensitive literal', 'TRUE', true],
    ['False', 'False', false],
    ['null', 'Null', null],
    ['NULL', 'NULL', null],
    ['yes is not a boolean', 'yes', 'yes'],
    ['integer', '42', 42],
    ['leading zeros (not JSON)', '007', 7],
    ['explicit plus sign', '+5', 5],
    ['negative', '-2', -2],
    ['float', '1.5', 1.5],
    ['two decimals', '0.25', 0.25],
    ['leading dot', '.5', 0.5],
    ['leading dot, two decimals', '.25', 0.25],
    ['trailing dot is text', '5.', '5.'],
    ['exponent', '1e3', 1000],
    ['exponent with a sign, upper case', '1E-3', 0.001],
    ['exponent with a plus sign', '1e+3', 1000],
    ['exponent of two digits', '1e10', 1e10],
    // Valid JSON is read as JSON first; these are numbers only by HOCON's reading.
    ['leading zeros and decimals', '007.25', 7.25],
    ['plus sign and two decimals', '+1.25', 1.25],
    ['leading dot and exponent', '.5e1', 5],
    ['leading dot, negative exponent', '.5e-1', 0.05],
    ['plus sign, exponent with a sign', '+1E+2', 100],
    ['plus sign, exponent of two digits', '+1e10', 1e10],
    ['a name that ends in digits is text, not NaN', 'team1', 'team1'],
    ['digits then letters', '1x', '1x'],
    ['hexadecimal is text', '0x10', '0x10'],
    ['Infinity is text', 'Infinity', 'Infinity'],
    ['unquoted list', '[a, b]', ['a', 'b']],
    ['unquoted list with a quoted item', '[a, "b c"]', ['a', 'b c']],
    ['unquoted list with a number', '[1, a]', [1, 'a']],
    ['empty list', '[]', []],
    // pyhocon refuses these two; the plugin keeps the text, and a list setting then names the problem.
    ['a closing bracket alone is text', 'kc-admins]', 'kc-admins]'],
    ['an opening bracket alone is text', '[kc-admins', '[kc-admins'],
    ['empty text', '', null],
    ['blank text', '   ', null],
    ['a value read from a file: its trailing newline dropped', 'true\n', true],
    ['URL with //', 'https://kc/realms/x', 'https://kc/realms/x'],
    ['plain text', 'hello', 'hello']
  ]
  for (const [name, raw, expected] of cases) t.strictSame(parseHoconValue(raw), expected, name)
  t.equal(hoconText('007'), '007', 'string keys keep digits as text')
  t.equal(hoconText('1234567890'), '1234567890', 'even digits that are valid JSON')
  t.equal(hoconText('"007"'), '007')
  t.equal(hoconText('s3cr3t\n'), 's3cr3t', 'a secret from a file loses its trailing newline, as with pyhocon')
  t.equal(hoconText('"s3cr3t"\n'), 's3cr3t')
  t.equal(hoconText('"unterminated'), '"unterminated')
  t.equal(hoconText('"a"b"'), '"a"b"', 'two strings are not one')
  t.equal(hoconText('""'), '')
  t.equal(hoconText(''), null)
})

t.test('admin_role: a name, quoted or not; empty disables', async (t) => {
  t.equal(loadConfig({ ...minimal, [`${KC}admin_role`]: 'clearml-admin' }).adminRole, 'clearml-admin')
  t.equal(loadConfig({ ...minimal, [`${KC}admin_role`]: '"007"' }).adminRole, '007')
  t.equal(loadConfig({ ...minimal, [`${KC}admin_role`]: '' }).adminRole, null)
  t.equal(loadConfig({ ...minimal, [`${KC}admin_role`]: 'null' }).adminRole, null, 'so does HOCON\'s null')
  t.equal(loadConfig(minimal).adminRole, 'admin')
  t.equal(loadConfig({ ...minimal, [`${KC}idp_logout`]: '' }).idpLogout, false, 'an empty boolean is unset: the default')
})

t.test('an all-digit client_id and default_company stay strings', async (t) => {
  const config = loadConfig({ ...minimal, [`${KCS}client_id`]: '007', [`${KCS}default_company`]: '1234567890' })
  t.equal(config.clientId, '007')
  t.equal(config.defaultCompany, '1234567890')
  t.equal(loadConfig({ ...minimal, [`${KCS}client_secret`]: 'the-client-secret\n' }).clientSecret, 'the-client-secret', 'a secret mounted from a file loses its trailing newline')
})

t.test('CLEARML__ wins over TRAINS__, whatever the order of the environment', async (t) => {
  const trains = 'TRAINS__secure__login__sso__oauth_client__keycloak__client_id'
  t.equal(loadConfig({ [trains]: 'from-trains', ...minimal }).clientId, 'clearml')
  t.equal(loadConfig({ ...minimal, [trains]: 'from-trains' }).clientId, 'clearml')
  const { [`${KCS}client_id`]: _, ...withoutClearml } = minimal
  t.equal(loadConfig({ ...withoutClearml, [trains]: 'from-trains' }).clientId, 'from-trains', 'TRAINS__ alone is read')
  t.strictSame([...readClearmlEnv({ clearml__x: '1', CLEARML__: '2', OTHER: '3' }).keys()], [], 'prefixes are upper case and a path is needed')
  t.equal(loadConfig({ ...minimal, [`${KC}idp_logout`]: undefined }).idpLogout, false, 'a variable present but undefined is unset')
})

t.test('two spellings of one setting: the one that sorts last wins, as ClearML merges them in sorted order', async (t) => {
  const upper = 'CLEARML__SERVICES__LOGIN__SSO__OAUTH_CLIENT__KEYCLOAK__IDP_LOGOUT'
  const lower = `${KC}idp_logout`
  t.equal(loadConfig({ ...minimal, [upper]: 'true', [lower]: 'false' }).idpLogout, false)
  t.equal(loadConfig({ ...minimal, [lower]: 'false', [upper]: 'true' }).idpLogout, false, 'whatever the order of the environment')
})

t.test('paths are case-insensitive after the prefix', async (t) => {
  const config = loadConfig({
    ...minimal,
    CLEARML__SERVICES__LOGIN__SSO__OAUTH_CLIENT__KEYCLOAK__IDP_LOGOUT: 'true',
    CLEARML__Services__Login__Sso__Oauth_Client__Keycloak__Groups__Enabled: 'true'
  })
  t.equal(config.idpLogout, true)
  t.equal(config.groups.enabled, true)
})

t.test('unquoted HOCON list for groups.admins, numbers in it kept as names', async (t) => {
  t.strictSame(loadConfig({ ...minimal, [`${KC}groups__admins`]: '[kc-admins, ops]' }).groups.admins, ['kc-admins', 'ops'])
  t.strictSame(loadConfig({ ...minimal, [`${KC}groups__admins`]: '[42]' }).groups.admins, ['42'])
})

t.test('the other ClearML keys the plugin reads', async (t) => {
  const config = loadConfig({
    ...minimal,
    CLEARML__secure__auth__token_secret: 'tok',
    CLEARML__apiserver__auth__session_auth_cookie_name: 'my_cookie',
    CLEARML__services__auth__default_expiration_sec: '3600'
  })
  t.equal(config.tokenSecret, 'tok')
  t.equal(config.sessionCookieName, 'my_cookie')
  t.equal(config.sessionExpirationSec, 3600)
})

t.test('every missing or malformed key is reported at once, named by its variable', async (t) => {
  t.strictSame(problemsOf({}), [
    `${KCS}client_id is required`,
    `${KCS}client_secret is required`,
    `${KC}authorize_url is required when ${KC}base_url is not set`,
    `${KC}access_token_url is required when ${KC}base_url is not set`,
    `${KC}jwks_url is required when ${KC}base_url is not set`
  ])
  const malformed: Array<[string, Record<string, string>, string]> = [
    ['base_url not a URL', { [`${KC}base_url`]: 'kc.example.com/realms/x' }, `${KC}base_url must be an absolute http(s) URL`],
    ['base_url with another scheme', { [`${KC}base_url`]: 'ftp://kc.example.com/realms/x' }, `${KC}base_url must be an absolute http(s) URL`],
    ['authorize_url relative', { [`${KC}authorize_url`]: '/protocol/openid-connect/auth' }, `${KC}authorize_url must be an absolute http(s) URL`],
    ['idp_logout not a boolean', { [`${KC}idp_logout`]: 'yes please' }, `${KC}idp_logout must be true or false`],
    ['groups.enabled a number', { [`${KC}groups__enabled`]: '1' }, `${KC}groups__enabled must be true or false`],
    ['expiration not a number', { CLEARML__services__auth__default_expiration_sec: 'month' }, 'CLEARML__services__auth__default_expiration_sec must be a whole number'],
    ['expiration too short', { CLEARML__services__auth__default_expiration_sec: '5' }, 'CLEARML__services__auth__default_expiration_sec must be >= 60'],
    ['admins not a list', { [`${KC}groups__admins`]: '{"a":1}' }, `${KC}groups__admins must be a list of names, e.g. ["kc-admins"]`],
    ['admins holding a list', { [`${KC}groups__admins`]: '["kc-admins", ["ops"]]' }, `${KC}groups__admins must be a list of names, e.g. ["kc-admins"]`],
    ['admins holding a boolean', { [`${KC}groups__admins`]: '[true]' }, `${KC}groups__admins must be a list of names, e.g. ["kc-admins"]`],
    ['expiration with a trailing dot', { CLEARML__services__auth__default_expiration_sec: '3600.' }, 'CLEARML__services__auth__default_expiration_sec must be a whole number'],
    ['expiration a fraction', { CLEARML__services__auth__default_expiration_sec: '3600.5' }, 'CLEARML__services__auth__default_expiration_sec must be a whole number'],
    // eslint-disable-next-line no-template-curly-in-string
    ['unexpanded variable', { [`${KCS}client_id`]: '"${KEYCLOAK_AUTH_CLIENT_ID}"' }, `${KCS}client_id looks like an unexpanded shell variable (the value is literally \`\${KEYCLOAK_AUTH_CLIENT_ID}\`)`],
    ['unexpanded variable without braces', { [`${KCS}client_id`]: '$KEYCLOAK_AUTH_CLIENT_ID' }, `${KCS}client_id looks like an unexpanded shell variable (the value is literally \`$KEYCLOAK_AUTH_CLIENT_ID\`)`],
    // eslint-disable-next-line no-template-curly-in-string
    ['an unexpanded secret is named, its text is not shown', { [`${KCS}client_secret`]: '${KEYCLOAK_AUTH_CLIENT_SECRET}' }, `${KCS}client_secret looks like an unexpanded shell variable (the value is literally \`\${…}\`)`],
    ['empty client_secret', { [`${KCS}client_secret`]: '' }, `${KCS}client_secret is required`],
    ['revalidation period negative', { [`${KC}session__revalidate_sec`]: '-1' }, `${KC}session__revalidate_sec must be >= 0`],
    ['revalidation period in minutes', { [`${KC}session__revalidate_sec`]: '5m' }, `${KC}session__revalidate_sec must be a whole number`],
    ['follows a word it does not know', { [`${KC}session__follows`]: 'forever' }, `${KC}session__follows must be one of "user", "sso_session"`]
  ]
  for (const [name, env, expected] of malformed) {
    t.strictSame(problemsOf({ ...minimal, ...env }), [expected], name)
  }
  // eslint-disable-next-line no-template-curly-in-string
  for (const secret of ['pa$$w0rd', 's3cr3t$x', '$ecret-2024!', 'x${Y}']) {
    t.equal(loadConfig({ ...minimal, [`${KCS}client_secret`]: secret }).clientSecret, secret, `a secret with a $ in it is not a shell variable: ${secret.length} characters`)
  }
})

t.test('no base_url: every endpoint must be given, and the issuer comes from the authorization URL', async (t) => {
  const { [`${KC}base_url`]: _, ...noBase } = minimal
  const endpoints = {
    [`${KC}authorize_url`]: 'https://kc/realms/r/protocol/openid-connect/auth',
    [`${KC}access_token_url`]: 'https://kc/realms/r/protocol/openid-connect/token',
    [`${KC}jwks_url`]: 'https://kc/realms/r/protocol/openid-connect/certs'
  }
  const config = loadConfig({ ...noBase, ...endpoints })
  t.equal(issuerOf(config), 'https://kc/realms/r')
  t.strictSame(problemsOf({ ...noBase, ...endpoints, [`${KC}get_info_from_access_token`]: 'false' }), [`${KC}userinfo_url is required when ${KC}base_url is not set`])
  const { [`${KC}authorize_url`]: __, ...noAuthorize } = endpoints
  t.strictSame(problemsOf({ ...noBase, ...noAuthorize }), [`${KC}authorize_url is required when ${KC}base_url is not set`], 'the missing endpoint, nothing about the issuer')
  t.equal(issuerOf({ baseUrl: 'https://kc/realms/r', authorizeUrl: 'https://sso.example.com/authorize' }), 'https://kc/realms/r', 'base_url is the issuer, whatever the authorization URL')
  t.equal(issuerOf({ baseUrl: undefined, authorizeUrl: undefined }), undefined)
  const noIssuer = `${KC}base_url is required: it is the token issuer, and the authorization URL does not have Keycloak's shape to derive it from`
  t.strictSame(problemsOf({ ...noBase, ...endpoints, [`${KC}authorize_url`]: 'https://idp/authorize' }), [noIssuer])
  t.strictSame(problemsOf({ ...noBase, ...endpoints, [`${KC}authorize_url`]: 'https://kc/realms/r/protocol/openid-connect/auth/device' }), [noIssuer], 'more after /auth')
  t.strictSame(problemsOf({ ...noBase, ...endpoints, [`${KC}authorize_url`]: 'https://kc/realms/\nr/protocol/openid-connect/auth' }), [noIssuer], 'a URL folded over two lines (YAML) names no issuer')
})

t.test('secrets never appear in errors, serialization or inspection', async (t) => {
  // eslint-disable-next-line no-template-curly-in-string
  const env = { ...minimal, [`${KCS}client_secret`]: '${TOP_SECRET}', CLEARML__secure__auth__token_secret: 'tok-secret-value' }
  const problems = problemsOf(env).join('\n')
  t.notMatch(problems, 'TOP_SECRET')
  const config = loadConfig({ ...minimal, CLEARML__secure__auth__token_secret: 'tok-secret-value' })
  const json = JSON.stringify(config)
  t.notMatch(json, 'the-client-secret')
  t.notMatch(json, 'tok-secret-value')
  t.match(JSON.parse(json), { clientSecret: '[redacted]', tokenSecret: '[redacted]', clientId: 'clearml' })
  t.notMatch(inspect(config, { depth: 5 }), 'the-client-secret')
  t.match(inspect(config, { depth: 5 }), /clientSecret: '\[redacted\]'/, 'inspection shows the settings, the secret redacted')
  t.match(inspect({ ...config, displayName: 'Copy' }), /displayName: 'Copy'/, 'a copy made by spreading inspects as itself')
  t.notOk('tokenSecret' in JSON.parse(JSON.stringify(loadConfig(minimal))), 'a secret that is not set is not shown as redacted')
  t.equal(config.clientSecret, 'the-client-secret', 'the value itself is still usable by the plugin')
  try {
    loadConfig({ ...minimal, [`${KCS}client_secret`]: '', [`${KC}idp_logout`]: 'maybe' })
    t.fail('should throw')
  } catch (err) {
    t.ok(err instanceof ConfigError)
    t.equal((err as ConfigError).code, 'ERR_CLEARML_KEYCLOAK_CONFIG')
    t.match((err as Error).message, /Invalid Keycloak SSO configuration:\n {2}- /)
  }
})

t.test('unknown keys under the provider are warnings, with a hint for a key in the wrong section', async (t) => {
  const { warnings } = readConfig({
    ...minimal,
    [`${KC}client_id`]: 'x',
    [`${KC}colour`]: 'blue',
    CLEARML__services__something_else: 'ignored silently'
  })
  t.strictSame(warnings, [
    { variable: `${KC}client_id`, message: `is not a Keycloak setting here; did you mean ${KCS}client_id?` },
    { variable: `${KC}colour`, message: 'is not a known Keycloak setting and is ignored' }
  ])
})

t.test('overrides from code are merged over the environment and validated alike', async (t) => {
  const config = loadConfig(minimal, { idpLogout: true, groups: { enabled: true }, claims: { email: 'mail' } })
  t.equal(config.idpLogout, true)
  t.equal(config.groups.enabled, true)
  t.equal(config.groups.claim, 'groups', 'the rest of a section keeps its value')
  t.equal(config.claims.email, 'mail')
  t.equal(loadConfig({}, { clientId: 'c', clientSecret: 's', baseUrl: 'https://kc/realms/r/' }).baseUrl, 'https://kc/realms/r')
  const problems = (overrides: object): string[] => {
    try {
      loadConfig(minimal, overrides)
      return []
    } catch (err) {
      return (err as ConfigError).problems.map((p) => `${p.variable} ${p.message}`)
    }
  }
  t.strictSame(problems({ idpLogout: 'yes' }), ['config.idpLogout must be boolean'])
  t.strictSame(problems({ baseUrl: 'nope' }), ['config.baseUrl must be an absolute http(s) URL'])
  t.strictSame(problems({ colour: 'blue' }), ['config.colour is not a known setting'])
  t.strictSame(problems({ groups: { colour: 'blue' } }), ['config.groups.colour is not a known setting'])
  t.strictSame(problems({ groups: 'all' }), ['config.groups must be an object'], 'a section replaced by a value')
  t.strictSame(problems({ groups: null }), ['config.groups must be an object'], 'or by null')
  t.strictSame(problems({ groups: undefined, colour: undefined }), [], 'undefined overrides (a host passing optional settings on) are ignored')
  t.strictSame(problems({ groups: { enabled: 'yes' } }), ['config.groups.enabled must be boolean'], 'an error inside a section names the setting')
  t.strictSame(problems({ claims: { email: '' } }), ['config.claims.email must not have fewer than 1 characters'])
  t.strictSame(problems({ groups: { admins: ['kc-admins', 1, 2] } }), ['config.groups.admins must be string'], 'one problem per setting, however many items are wrong')
  t.strictSame(problems({ session: { follows: 'forever' } }), ['config.session.follows must be one of "user", "sso_session"'], 'a setting of a few words names them')
  t.strictSame(problems({ adminRole: 42 }), ['config.adminRole must be string'], 'a setting that is a name or null is not a choice of words')
  try {
    loadConfig({ ...minimal, [`${KC}groups__enabled`]: '1' }, { idpLogout: 'yes' } as object)
    t.fail('should throw')
  } catch (err) {
    t.strictSame((err as ConfigError).problems.map((p) => `${p.variable} ${p.message}`), [`${KC}groups__enabled must be true or false`, 'config.idpLogout must be boolean'], 'problems of the environment and of the overrides, all at once')
  }
  t.equal(settingName('tokenSecret'), 'CLEARML__secure__auth__token_secret')
  t.equal(settingName('groups.admins'), `${KC}groups__admins`, 'a setting inside a section')
  t.equal(settingName('nonsense'), 'config.nonsense')
})

t.test('a short token_secret is a warning that names the setting and the fix, never the value (RFC 7518 3.2)', async (t) => {
  const shortBy = (bytes: number) => weakSettings({ tokenSecret: 'x'.repeat(bytes) })
  t.strictSame(weakSettings({ tokenSecret: undefined }), [], 'no token_secret (the host issues tokens): nothing to say')
  t.strictSame(shortBy(32), [], '32 bytes: enough')
  t.strictSame(shortBy(31), [{
    variable: 'CLEARML__secure__auth__token_secret',
    message: 'is 31 bytes; use at least 32 random bytes (e.g. `openssl rand -base64 48`): a short HS256 secret can be guessed from any session token'
  }])
  t.strictSame(weakSettings({ tokenSecret: 'é'.repeat(16) }), [], 'bytes count, not characters: 16 × é is 32 bytes')
  t.equal(weakSettings({ tokenSecret: 'é'.repeat(15) })[0].message.slice(0, 12), 'is 30 bytes;')
})
