/**
 * The rules of a login, as pure functions of (config, identity, what the directory returned):
 * signup gating, the role, and the group-sync plan (SPEC section 5 steps 6–8). They decide; the
 * login pipeline applies their decisions through the directory.
 */
import type { KeycloakConfig } from './config.js'
import type { Company, DirectoryGroup, Role, WhitelistEntry } from './directory.js'
import type { SsoErrorCode } from './errors.js'
import type { Identity } from './identity.js'

type GroupsConfig = Pick<KeycloakConfig['groups'], 'enabled' | 'caseSensitive' | 'admins' | 'prohibitUserSignupIfNotInGroup'>

/**
 * The ClearML group names a Keycloak group may stand for. Keycloak's Group Membership mapper sends
 * full paths (`/parent/child`) unless "Full group path" is turned off, as ClearML's docs advise; a
 * full path matches a ClearML group named after the whole path (without the leading `/`) or its last
 * segment.
 */
export function groupNameCandidates (keycloakGroups: readonly string[]): string[] {
  const names = new Set<string>()
  for (const group of keycloakGroups) {
    const path = group.replace(/^\/+/, '')
    if (path === '') continue
    names.add(path)
    const last = path.slice(path.lastIndexOf('/') + 1)
    if (last !== '') names.add(last)
  }
  return [...names]
}

function nameSet (names: readonly string[], caseSensitive: boolean): Set<string> {
  return new Set(caseSensitive ? names : names.map((name) => name.toLowerCase()))
}

/** Which company a new user would join, and with what role, before the company is looked up. */
export type SignupTarget = { company: string, role: Role } | { refused: SsoErrorCode }

export function chooseSignupTarget (config: Pick<KeycloakConfig, 'defaultCompany'>, whitelistEntry: WhitelistEntry | null): SignupTarget {
  // default_company admits everybody into one company without consulting the whitelist.
  if (config.defaultCompany !== undefined) return { company: config.defaultCompany, role: 'user' }
  if (whitelistEntry === null) return { refused: 'not_whitelisted' }
  return { company: whitelistEntry.company, role: whitelistEntry.role ?? 'user' }
}

export type SignupDecision = { admit: true, company: Company, role: Role } | { admit: false, code: SsoErrorCode }

/**
 * Whether a new user may be created. `company` is what the directory returned for the target's
 * company id; `knownGroups` the ClearML groups of that company matching the user's Keycloak groups.
 */
export function decideSignup (
  config: Pick<KeycloakConfig, 'defaultCompany'> & { groups: GroupsConfig },
  target: SignupTarget,
  company: Company | null,
  knownGroups: readonly DirectoryGroup[]
): SignupDecision {
  if ('refused' in target) return { admit: false, code: target.refused }
  if (company === null) return { admit: false, code: 'unknown_company' }
  if (config.groups.enabled && config.groups.prohibitUserSignupIfNotInGroup &&
      !knownGroups.some((group) => group.company === company.id)) {
    return { admit: false, code: 'no_matching_group' }
  }
  return { admit: true, company, role: target.role }
}

// Roles above admin are ClearML's own business: Keycloak may make someone admin, never demote them.
const ABOVE_ADMIN = new Set(['system', 'root', 'superuser'])

/** Whether Keycloak decides the admin role for this login (SPEC section 5 step 7). */
export function keycloakManagesRole (config: Pick<KeycloakConfig, 'adminRole'> & { groups: GroupsConfig }, identity: Identity): boolean {
  const rolesPresent = identity.rolesClaimPresent ?? identity.roles.length > 0
  // An empty admin_role disables role management from roles, as ClearML documents.
  return (config.adminRole !== null && rolesPresent) ||
    (config.groups.enabled && config.groups.admins.length > 0)
}

export function resolveRole (config: Pick<KeycloakConfig, 'adminRole'> & { groups: GroupsConfig }, identity: Identity, current: Role): Role {
  if (!keycloakManagesRole(config, identity) || ABOVE_ADMIN.has(current)) return current
  const byRole = config.adminRole !== null && identity.roles.includes(config.adminRole)
  let byGroup = false
  if (config.groups.enabled && config.groups.admins.length > 0) {
    const admins = nameSet(config.groups.admins, config.groups.caseSensitive)
    const mine = nameSet([...identity.groups, ...groupNameCandidates(identity.groups)], config.groups.caseSensitive)
    byGroup = [...mine].some((name) => admins.has(name))
  }
  if (byRole || byGroup) return 'admin'
  return current === 'admin' ? 'user' : current
}

export interface GroupSyncPlan {
  add: DirectoryGroup[]
  remove: DirectoryGroup[]
}

/**
 * The user's memberships in the company's ClearML groups become exactly the groups that exist in
 * ClearML and are in the claim; groups unknown to ClearML are ignored. `claimed` is what the
 * directory found for the candidate names, `current` the user's memberships in that company.
 */
export function planGroupSync (company: string, claimed: readonly DirectoryGroup[], current: readonly DirectoryGroup[]): GroupSyncPlan {
  const target = new Map(claimed.filter((group) => group.company === company).map((group) => [group.id, group]))
  const have = new Map(current.filter((group) => group.company === company).map((group) => [group.id, group]))
  return {
    add: [...target.values()].filter((group) => !have.has(group.id)),
    remove: [...have.values()].filter((group) => !target.has(group.id))
  }
}
