/**
 * The resolved configuration of the plugin, as one TypeBox schema. It is the single source of truth
 * for three things: what `loadConfig` reads from `CLEARML__...` variables (each leaf names its ClearML
 * config path in `env` and how its text is coerced in `kind`), what the `config` option may override in
 * code, and the configuration table in README.md (generated from it by `npm run docs:config`).
 */
import Type, { type Static, type TSchema } from 'typebox'

/** How the text of an environment variable becomes this setting's value. */
export type SettingKind = 'string' | 'url' | 'boolean' | 'integer' | 'list' | 'optional-role'

export type SettingAnnotation = {
  /** ClearML config path, e.g. `services.login.sso.oauth_client.keycloak.base_url`. */
  env: string
  kind: SettingKind
  /** Never printed: not in errors, logs, or `JSON.stringify(config)`. */
  secret?: boolean
  description: string
}

const KEYCLOAK = 'login.sso.oauth_client.keycloak'
const services = (key: string): string => `services.${KEYCLOAK}.${key}`
const secure = (key: string): string => `secure.${KEYCLOAK}.${key}`

function annotate<T extends object = object> (env: string, kind: SettingKind, description: string, extra?: T): SettingAnnotation & T {
  return { env, kind, description, ...extra } as SettingAnnotation & T
}

const Url = (env: string, description: string) => Type.Optional(Type.String(annotate(env, 'url', description)))
const Bool = (env: string, dflt: boolean, description: string) => Type.Boolean(annotate(env, 'boolean', description, { default: dflt }))
const Text = (env: string, dflt: string, description: string) => Type.String(annotate(env, 'string', description, { default: dflt, minLength: 1 }))
const Claim = (key: string, dflt: string, what: string) => Text(services(`claims.${key}`), dflt, `claim path (dots allowed) of the user's ${what}`)

export const ClaimsSchema = Type.Object({
  userId: Claim('user_id', 'sub', 'stable id'),
  email: Claim('email', 'email', 'email'),
  name: Claim('name', 'name', 'display name'),
  username: Claim('username', 'preferred_username', 'user name'),
  givenName: Claim('given_name', 'given_name', 'given name'),
  familyName: Claim('family_name', 'family_name', 'family name'),
  avatar: Claim('avatar', 'picture', 'avatar URL')
}, { additionalProperties: false })

export const GroupsSchema = Type.Object({
  enabled: Bool(services('groups.enabled'), false, 'sync ClearML group membership from Keycloak on every login'),
  claim: Text(services('groups.claim'), 'groups', 'claim path holding the Keycloak groups'),
  admins: Type.Array(Type.String(), annotate(services('groups.admins'), 'list',
    'members of these Keycloak groups become admins (the groups need not exist in ClearML)', { default: [] })),
  prohibitUserSignupIfNotInGroup: Bool(services('groups.prohibit_user_signup_if_not_in_group'), false,
    'a new user must belong to a Keycloak group that exists as a ClearML group of the target company'),
  caseSensitive: Bool(services('groups.case_sensitive'), true, 'match group names case-sensitively')
}, { additionalProperties: false })

export const SessionSchema = Type.Object({
  revalidateSec: Type.Integer(annotate(services('session.revalidate_sec'), 'integer',
    'how often a session in use is checked at Keycloak with its refresh token; `0` turns it off (plugin setting; README "Sessions follow Keycloak")',
    { default: 300, minimum: 0, maximum: 86400 })),
  follows: Type.Union([Type.Literal('user'), Type.Literal('sso_session')], annotate(services('session.follows'), 'string',
    '`user`: an offline token, the session ends when Keycloak refuses the user; `sso_session`: an online token, it also ends with Keycloak\'s SSO session (plugin setting)',
    { default: 'user' }))
}, { additionalProperties: false })

export const KeycloakConfigSchema = Type.Object({
  baseUrl: Url(services('base_url'),
    'realm URL, e.g. `https://kc.example.com/realms/clearml`: the token issuer and the discovery root; required unless every endpoint is given'),
  authorizeUrl: Url(services('authorize_url'), 'authorization endpoint (default: discovery)'),
  accessTokenUrl: Url(services('access_token_url'), 'token endpoint (default: discovery)'),
  userinfoUrl: Url(services('userinfo_url'), 'userinfo endpoint (default: discovery)'),
  jwksUrl: Url(services('jwks_url'), 'key set endpoint (default: discovery)'),
  logoutUrl: Url(services('logout_url'), 'end-session endpoint (default: discovery)'),
  clientId: Type.String(annotate(secure('client_id'), 'string', 'OpenID client id (required)', { minLength: 1 })),
  clientSecret: Type.String(annotate(secure('client_secret'), 'string', 'OpenID client secret (required)', { minLength: 1, secret: true })),
  defaultCompany: Type.Optional(Type.String(annotate(secure('default_company'), 'string',
    'company id for new users; when set the whitelist is not consulted', { minLength: 1 }))),
  idpLogout: Bool(services('idp_logout'), false, 'log the user out of Keycloak too when they log out of ClearML'),
  getInfoFromAccessToken: Bool(services('get_info_from_access_token'), true,
    'read user info from the verified access token; false: from the userinfo endpoint'),
  adminRole: Type.Union([Type.String({ minLength: 1 }), Type.Null()], annotate(services('admin_role'), 'optional-role',
    'role that makes a user admin; an empty value disables role management from Keycloak', { default: 'admin' })),
  claims: ClaimsSchema,
  groups: GroupsSchema,
  scope: Text(services('scope'), 'openid profile email', 'scopes requested at Keycloak'),
  displayName: Text(services('display_name'), 'Keycloak', 'login button text'),
  session: SessionSchema,
  trustUnverifiedEmail: Bool(services('trust_unverified_email'), false,
    'let the whitelist admit emails Keycloak has not verified (plugin setting; for realms whose administrators create users without verification)'),
  algorithms: Type.Array(Type.String({ minLength: 1 }), annotate(services('algorithms'), 'list',
    'signature algorithms accepted on Keycloak tokens (plugin setting)', { default: ['RS256'], minItems: 1 })),
  clockToleranceSec: Type.Integer(annotate(services('clock_tolerance_sec'), 'integer',
    'clock skew tolerated on `exp`/`iat` (plugin setting)', { default: 10, minimum: 0, maximum: 300 })),
  httpTimeoutMs: Type.Integer(annotate(services('http_timeout_ms'), 'integer',
    'time-out of every call to Keycloak (plugin setting)', { default: 10000, minimum: 100, maximum: 120000 })),
  tokenSecret: Type.Optional(Type.String(annotate('secure.auth.token_secret', 'string',
    'signs the ClearML session token; required unless the host passes `issueToken`', { minLength: 1, secret: true }))),
  sessionCookieName: Text('apiserver.auth.session_auth_cookie_name', 'clearml_token_basic', 'session cookie name'),
  sessionExpirationSec: Type.Integer(annotate('services.auth.default_expiration_sec', 'integer',
    'session token lifetime in seconds', { default: 2592000, minimum: 60 }))
}, { additionalProperties: false })

export type KeycloakConfig = Static<typeof KeycloakConfigSchema>

/** The ClearML config paths under which unknown keys are reported as warnings. */
export const PROVIDER_SECTIONS = [`services.${KEYCLOAK}.`, `secure.${KEYCLOAK}.`]

export interface SettingLeaf {
  /** camelCase path in `KeycloakConfig`, e.g. `['groups', 'admins']`. */
  key: string[]
  schema: TSchema & SettingAnnotation & { default?: unknown }
  required: boolean
}

/** Every annotated leaf of the schema, in declaration order. */
export function settingLeaves (schema: TSchema = KeycloakConfigSchema, prefix: string[] = []): SettingLeaf[] {
  const object = schema as TSchema & { properties: Record<string, TSchema>, required?: string[] }
  const leaves: SettingLeaf[] = []
  for (const [name, child] of Object.entries(object.properties)) {
    const annotated = child as TSchema & Partial<SettingAnnotation>
    if (typeof annotated.env === 'string') {
      leaves.push({ key: [...prefix, name], schema: annotated as SettingLeaf['schema'], required: object.required?.includes(name) === true && !('default' in annotated) })
    } else {
      leaves.push(...settingLeaves(child, [...prefix, name]))
    }
  }
  return leaves
}
