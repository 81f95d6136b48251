/**
 * `fastify.keycloak.explain` (SPEC section 11): what a login would do for these claims, this
 * `Identity` or this Keycloak access token — the mapped identity and every decision of steps 4–9 with
 * its reason — without writing anything. It runs the login's own first half (`planLogin`), so an
 * explanation and the login that follows cannot disagree; only the writes are left out.
 *
 * Scoped to a company (`{ company }`, as `login.sso_explain` does for the admin asking), the login is
 * planned against that company's view of the directory (`companyView`): users, groups, whitelist
 * entries and companies of every other company do not exist there, so an explanation never tells
 * another tenant's user from an address nobody has.
 */
import type { KeycloakConfig } from '../config/settings.js'
import type { DirectoryGroup, DirectoryReads, UserDirectory } from '../directory/user-directory.js'
import { companyView } from '../directory/company-view.js'
import { SsoError, type SsoErrorCode } from '../errors.js'
import { looksLikeIdentity, type Claims, type Identity } from './identity.js'
import { planLogin, type LoginPlan, type RoleVerdict, type SignupVerdict, type UserStatus } from './login.js'
import { fetchUserinfo, userinfoMismatch } from '../keycloak/oidc-client.js'
import type { ProviderEndpoints } from '../keycloak/discovery.js'
import type { JWTPayload } from 'jose'

/** What `fastify.keycloak.explain` takes: verified claims, an `Identity`, or a Keycloak access token to verify first. */
export type ExplainInput = Claims | Identity | { accessToken: string }

/**
 * Whose logins are explained. `company`: only logins into this company (by id); everything of other
 * companies is invisible. Without it, the whole directory: what the host's own code may ask.
 */
export interface ExplainScope { company?: string }

/** The same, said explicitly: the route knows which one its body holds. */
export type ExplainSource = { claims: Claims } | { identity: Identity } | { accessToken: string }

export interface Explanation {
  /** `ok`, or the code the login refuses with. */
  outcome: 'ok' | SsoErrorCode
  /** What the login does; for a refusal, the reason it logs, naming what to change. */
  reason: string
  /** `null` when the login stops before there is one (invalid token, missing claim). */
  identity: Identity | null
  user: { status: UserStatus, id?: string, reason: string }
  /** For a new user only. */
  signup?: SignupVerdict
  role: RoleVerdict
  /**
   * ClearML group names the user joins and leaves; `unknown`: claimed Keycloak groups that match no
   * ClearML group of the company (when the company is known and group sync is on).
   */
  groups: { add: string[], remove: string[], unknown: string[], reason: string }
  profile: LoginPlan['profile']
}

export interface ExplainContext {
  config: KeycloakConfig
  directory: UserDirectory
  /** What explain needs of the SSO service (`KeycloakSso` has it): verify a token, map claims, find userinfo. */
  sso: {
    verifyAccessToken: (token: string) => Promise<JWTPayload>
    mapClaims: (claims: Claims) => Identity
    endpoints: Pick<ProviderEndpoints, 'get'>
  }
}

/** Refusals of steps 3 and 4: the login stops before it has an identity, and explain says why. */
const BEFORE_IDENTITY = new Set<SsoErrorCode>(['invalid_token', 'missing_claim', 'userinfo_mismatch'])

/** Which input the decorator was given: an `Identity` and `{ accessToken }` have recognisable shapes; anything else is claims. */
export function explainSourceOf (input: ExplainInput): ExplainSource {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new SsoError('bad_request', 'explain takes claims, an Identity, or { accessToken }')
  }
  if (looksLikeIdentity(input)) return { identity: input }
  if (typeof input.accessToken === 'string' && Object.keys(input).length === 1) return { accessToken: input.accessToken }
  return { claims: input }
}

async function identityOf (source: ExplainSource, context: ExplainContext): Promise<Identity> {
  if ('identity' in source) return source.identity
  if ('claims' in source) return context.sso.mapClaims(source.claims)
  const claims = await context.sso.verifyAccessToken(source.accessToken)
  if (context.config.getInfoFromAccessToken) return context.sso.mapClaims(claims)
  // As the login does with get_info_from_access_token=false: the user's claims are userinfo's answer
  // to this token, about the same subject. (The login also fills in from the ID token what userinfo
  // lacks; with Keycloak's default mappers both carry the same user claims.)
  const endpoints = await context.sso.endpoints.get()
  const info = await fetchUserinfo({ endpoint: endpoints.userinfo!, accessToken: source.accessToken, timeoutMs: context.config.httpTimeoutMs })
  if (info.sub !== claims.sub) throw new SsoError('userinfo_mismatch', userinfoMismatch())
  return context.sso.mapClaims(info)
}

/**
 * The explanation of a login. It rejects only when it cannot tell (the directory or Keycloak failing,
 * input of the wrong type); every refusal the login would make is an explanation with that outcome.
 */
export async function explainLogin (source: ExplainSource, context: ExplainContext, scope: ExplainScope = {}): Promise<Explanation> {
  const directory = directoryFor(context.directory, scope)
  let identity: Identity
  try {
    identity = await identityOf(source, context)
  } catch (err) {
    if (err instanceof SsoError && BEFORE_IDENTITY.has(err.code)) return refusedBeforeIdentity(err)
    throw err
  }
  return explanationOf(await planLogin(context.config, directory, identity))
}

/** The directory as `scope` sees it; a scope that names no company id is refused before anything is read. */
function directoryFor (directory: UserDirectory, scope: ExplainScope): DirectoryReads {
  if (scope === null || typeof scope !== 'object' || Array.isArray(scope)) throw new SsoError('bad_request', 'explain\'s options must be an object, e.g. { company }')
  if (scope.company === undefined) return directory
  if (typeof scope.company !== 'string' || scope.company === '') throw new SsoError('bad_request', 'explain\'s company must be a company id')
  return companyView(directory, scope.company)
}

function refusedBeforeIdentity (err: SsoError): Explanation {
  return {
    outcome: err.code,
    reason: err.message,
    identity: null,
    user: { status: 'refused', reason: 'not looked up: the login stops before it has an identity' },
    role: { after: null, rule: 'no user: the login is refused' },
    groups: { add: [], remove: [], unknown: [], reason: 'not applied: the login is refused' },
    profile: {}
  }
}

const names = (groups: readonly DirectoryGroup[]): string[] => groups.map((group) => group.name)

/** One line for a login that goes through: who, and what changes. */
function summary (plan: LoginPlan): string {
  const who = plan.status === 'new'
    ? `creates a user in company ${plan.company!.id}`
    : `${plan.status === 'linked' ? 'links the Keycloak identity to' : 'logs in as'} user ${plan.user!.id}`
  const changes: string[] = []
  if (plan.status !== 'new' && plan.role.after !== plan.role.before) changes.push(`role ${plan.role.before} → ${plan.role.after}`)
  if (plan.groups.add.length > 0) changes.push(`joins ${names(plan.groups.add).join(', ')}`)
  if (plan.groups.remove.length > 0) changes.push(`leaves ${names(plan.groups.remove).join(', ')}`)
  const profile = Object.keys(plan.profile)
  if (plan.status !== 'new' && profile.length > 0) changes.push(`updates ${profile.join(', ')}`)
  return changes.length === 0 ? who : `${who}; ${changes.join('; ')}`
}

function explanationOf (plan: LoginPlan): Explanation {
  return {
    outcome: plan.refusal?.code ?? 'ok',
    reason: plan.refusal?.reason ?? summary(plan),
    identity: plan.identity,
    user: plan.user === undefined ? { status: plan.status, reason: plan.userReason } : { status: plan.status, id: plan.user.id, reason: plan.userReason },
    ...(plan.signup === undefined ? {} : { signup: plan.signup }),
    role: plan.role,
    groups: { add: names(plan.groups.add), remove: names(plan.groups.remove), unknown: plan.groups.unknown, reason: plan.groups.reason },
    profile: plan.profile
  }
}
