/**
 * TypeBox schemas of the HTTP surface (SPEC section 4): request bodies and query strings, and the
 * ClearML envelope of each answer. Extra properties are allowed on requests, as ClearML's own
 * clients send fields this plugin does not use.
 */
import Type, { type TSchema } from 'typebox'

const Provider = Type.Optional(Type.String({ maxLength: 64 }))
const Text = (maxLength = 4096) => Type.Optional(Type.String({ maxLength }))

/**
 * ClearML Enterprise's web app sends `callback_url_prefix` (`<origin>/callback_`) and the path it is
 * on as `state`; a state too long to keep as a return path is answered as `/`, never refused, so a
 * long URL cannot stop the web app from starting.
 */
export const SupportedModesInput = Type.Object({
  callback_url_prefix: Text(2048),
  state: Text(4096)
}, { additionalProperties: true })

export const AuthorizeInput = Type.Object({
  provider: Provider,
  callback_url: Text(2048),
  state: Text(1024)
}, { additionalProperties: true })

export const BrowserLoginQuery = Type.Object({
  redirect: Text(2048)
}, { additionalProperties: true })

/** The callback's query as Keycloak sends it; every field is checked by the login itself. */
export const CallbackQuery = Type.Object({
  code: Text(),
  state: Text(1024),
  iss: Text(2048),
  session_state: Text(1024),
  error: Text(256),
  error_description: Text(2048)
}, { additionalProperties: true })

export const SsoCallbackInput = Type.Object({
  provider: Provider,
  callback_url: Text(2048),
  args: CallbackQuery,
  return_token: Type.Optional(Type.Boolean())
}, { additionalProperties: true })

export const BackchannelLogoutInput = Type.Object({
  logout_token: Type.String({ minLength: 1, maxLength: 16384 })
}, { additionalProperties: true })

/** The web app sends `{ redirect_url: <origin>/login, provider? }`; whatever the provider, the session ends. */
export const LogoutInput = Type.Object({
  redirect_url: Text(2048),
  provider: Provider
}, { additionalProperties: true })

const Meta = Type.Object({
  id: Type.String(),
  trx: Type.String(),
  endpoint: Type.Object({ name: Type.String(), requested_version: Type.String(), actual_version: Type.String() }),
  result_code: Type.Integer(),
  result_subcode: Type.Integer(),
  result_msg: Type.String(),
  error_stack: Type.Null(),
  error_data: Type.Object({}, { additionalProperties: true })
})

export const Envelope = <T extends TSchema>(data: T) => Type.Object({ meta: Meta, data })

export const SsoProvider = Type.Object({ name: Type.String(), display_name: Type.String(), url: Type.String() })

export const SupportedModesData = Type.Object({
  authenticated: Type.Boolean(),
  sso: Type.Record(Type.String(), Type.String()),
  sso_providers: Type.Array(SsoProvider),
  basic: Type.Object({
    enabled: Type.Boolean(),
    guest: Type.Object({ enabled: Type.Boolean(), username: Type.Optional(Type.String()), password: Type.Optional(Type.String()) })
  }),
  server_errors: Type.Object({ missed_es_upgrade: Type.Boolean(), es_connection_error: Type.Boolean() })
})

export const AuthorizeData = Type.Object({ redirect_url: Type.String() })

export const SsoCallbackData = Type.Object({
  login_status: Type.Literal('logged_in'),
  user_id: Type.String(),
  company_id: Type.String(),
  token: Type.Optional(Type.String()),
  state: Type.Optional(Type.String())
})

export const LogoutData = Type.Object({ redirect_url: Type.Optional(Type.String()) })

/** `login.sso_explain`: Keycloak claims to explain, or a Keycloak access token to verify and explain. */
export const ExplainInput = Type.Object({
  claims: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  access_token: Type.Optional(Type.String({ minLength: 1, maxLength: 16384 }))
}, { additionalProperties: true })

const Names = Type.Array(Type.String())

export const IdentityData = Type.Object({
  subject: Type.String(),
  email: Type.Optional(Type.String()),
  emailVerified: Type.Boolean(),
  name: Type.String(),
  username: Type.Optional(Type.String()),
  givenName: Type.Optional(Type.String()),
  familyName: Type.Optional(Type.String()),
  avatar: Type.Optional(Type.String()),
  groups: Names,
  roles: Names,
  rolesClaimPresent: Type.Optional(Type.Boolean())
})

/** The explanation of a login (`lib/rules/explain.ts`), as `fastify.keycloak.explain` returns it. */
export const ExplanationData = Type.Object({
  outcome: Type.String(),
  reason: Type.String(),
  identity: Type.Union([IdentityData, Type.Null()]),
  user: Type.Object({
    status: Type.Union([Type.Literal('found'), Type.Literal('linked'), Type.Literal('new'), Type.Literal('refused')]),
    id: Type.Optional(Type.String()),
    reason: Type.String()
  }),
  signup: Type.Optional(Type.Object({
    admit: Type.Boolean(),
    company: Type.Optional(Type.String()),
    code: Type.Optional(Type.String()),
    reason: Type.String()
  })),
  role: Type.Object({ before: Type.Optional(Type.String()), after: Type.Union([Type.String(), Type.Null()]), rule: Type.String() }),
  groups: Type.Object({ add: Names, remove: Names, unknown: Names, reason: Type.String() }),
  profile: Type.Record(Type.String(), Type.Object({ before: Type.Optional(Type.String()), after: Type.String() }))
})
