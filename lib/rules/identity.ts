/**
 * Keycloak claims → `Identity` (SPEC section 5 step 4). Pure: the claims come already verified.
 */
import { SsoError } from '../errors.js'
import { settingName, type KeycloakConfig } from '../config/settings.js'

export interface Identity {
  subject: string
  email?: string
  emailVerified: boolean
  name: string
  username?: string
  givenName?: string
  familyName?: string
  avatar?: string
  /** As Keycloak sent them: full paths (`/parent/child`) or plain names. */
  groups: string[]
  roles: string[]
  /**
   * Whether any roles claim was present at all. Role management needs it: an access token without
   * roles mappers says nothing about roles, which differs from one saying "no admin role". When an
   * `Identity` is built by hand and this is absent, it is taken as `roles.length > 0`.
   */
  rolesClaimPresent?: boolean
}

export type Claims = Record<string, unknown>

/** A claim by path: the exact key first (claims may contain dots), then dot by dot. */
export function claimAt (claims: Claims, path: string): unknown {
  if (Object.hasOwn(claims, path)) return claims[path]
  let node: unknown = claims
  for (const part of path.split('.')) {
    if (node === null || typeof node !== 'object' || !Object.hasOwn(node, part)) return undefined
    node = (node as Record<string, unknown>)[part]
  }
  return node
}

function text (value: unknown): string | undefined {
  if (typeof value === 'string') return value.trim() === '' ? undefined : value
  // Number.isFinite is false for anything but a finite number: no typeof check needed.
  if (Number.isFinite(value)) return String(value)
  return undefined
}

function strings (value: unknown): string[] | undefined {
  if (typeof value === 'string') return [value]
  if (!Array.isArray(value)) return undefined
  return value.filter((item): item is string => typeof item === 'string' && item !== '')
}

/**
 * Roles come from three places, because Keycloak puts realm roles and client roles in different
 * claims, and only into the access token unless the mappers are changed.
 */
function rolesOf (claims: Claims, clientId: string): { roles: string[], present: boolean } {
  const sources = [
    claims.roles,
    claimAt(claims, 'realm_access.roles'),
    (claims.resource_access as Record<string, { roles?: unknown }> | undefined)?.[clientId]?.roles
  ].map(strings).filter((list): list is string[] => list !== undefined)
  return { roles: [...new Set(sources.flat())], present: sources.length > 0 }
}

export function mapClaims (config: Pick<KeycloakConfig, 'claims' | 'groups' | 'clientId'>, claims: Claims): Identity {
  const { claims: paths } = config
  const subject = text(claimAt(claims, paths.userId))
  if (subject === undefined) {
    throw new SsoError('missing_claim', `the token has no "${paths.userId}" claim, which ${settingName('claims.userId')} names as the user id: add a mapper for it to the client in Keycloak, or set the setting to a claim Keycloak sends (default "sub")`)
  }
  const email = text(claimAt(claims, paths.email))
  const username = text(claimAt(claims, paths.username))
  const { roles, present } = rolesOf(claims, config.clientId)
  return {
    subject,
    email,
    // Only a real boolean true counts: linking accounts by an unverified email is an account takeover.
    emailVerified: claims.email_verified === true,
    name: text(claimAt(claims, paths.name)) ?? username ?? email ?? subject,
    username,
    givenName: text(claimAt(claims, paths.givenName)),
    familyName: text(claimAt(claims, paths.familyName)),
    avatar: text(claimAt(claims, paths.avatar)),
    groups: [...new Set(strings(claimAt(claims, config.groups.claim)) ?? [])],
    roles,
    rolesClaimPresent: present
  }
}

/** Whether `value` is an `Identity` already (a host built it) rather than claims to map. */
export function looksLikeIdentity (value: Claims | Identity): value is Identity {
  return typeof value.subject === 'string' && Array.isArray(value.groups) && Array.isArray(value.roles) && typeof value.emailVerified === 'boolean'
}
