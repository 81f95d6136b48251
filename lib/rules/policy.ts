/**
 * The rules of a login, as pure functions of (config, identity, what the directory returned):
 * signup gating, the role, and the group-sync plan (SPEC section 5 steps 6–8). They decide; the
 * login pipeline applies their decisions through the directory.
 */
import type { KeycloakConfig } from '../config/settings.js'
import type { Company, DirectoryGroup, Role, WhitelistEntry } from '../directory/user-directory.js'
import type { SsoErrorCode } from '../errors.js'
import type { Identity } from './identity.js'

export type GroupsConfig = Pick<KeycloakConfig['groups'], 'enabled' | 'caseSensitive' | 'admins' | 'prohibitUserSignupIfNotInGroup'>

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

/**
 * Whom the whitelist is asked about, for a new user (SPEC 5 step 6): nobody when `default_company`
 * admits everyone; the email only when Keycloak verified it, because an address a user typed in
 * (self-registration, an editable profile, a brokered provider) would otherwise let anyone claim a
 * whitelisted colleague's company and role.
 */
export type WhitelistQuery = { email: string } | { skip: 'default_company' } | { refused: 'not_whitelisted' | 'email_not_verified' }

export function whitelistQuery (
  config: Pick<KeycloakConfig, 'defaultCompany' | 'trustUnverifiedEmail'>,
  identity: Pick<Identity, 'email' | 'emailVerified'>
): WhitelistQuery {
  if (config.defaultCompany !== undefined) return { skip: 'default_company' }
  if (identity.email === undefined) return { refused: 'not_whitelisted' }
  if (!identity.emailVerified && !config.trustUnverifiedEmail) return { refused: 'email_not_verified' }
  return { email: identity.email }
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

/**
 * A group as `groups.admins` names it: the path without its leading `/`, so `/kc-admins` (full group
 * path on) and `kc-admins` (off) are the same group, while `/contractors/kc-admins` stays a different
 * one. Admin rights follow the exact group: matching by last segment, as group sync does, would make a
 * member of any subgroup that happens to be called `kc-admins` an administrator.
 */
function adminGroupKey (group: string, caseSensitive: boolean): string {
  const path = group.replace(/^\/+/, '')
  return caseSensitive ? path : path.toLowerCase()
}

/** The admin groups (of `groups.admins`) the user is in, matched exactly (SPEC 5 step 7). */
export function adminGroupsOf (config: { groups: GroupsConfig }, identity: Pick<Identity, 'groups'>): string[] {
  if (!config.groups.enabled) return []
  const { caseSensitive } = config.groups
  const mine = new Set(identity.groups.map((group) => adminGroupKey(group, caseSensitive)))
  return config.groups.admins.filter((entry) => mine.has(adminGroupKey(entry, caseSensitive)))
}

export function resolveRole (config: Pick<KeycloakConfig, 'adminRole'> & { groups: GroupsConfig }, identity: Identity, current: Role): Role {
  if (!keycloakManagesRole(config, identity) || ABOVE_ADMIN.has(current)) return current
  const byRole = config.adminRole !== null && identity.roles.includes(config.adminRole)
  if (byRole || adminGroupsOf(config, identity).length > 0) return 'admin'
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
