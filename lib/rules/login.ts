/**
 * Steps 5–9 of a login (SPEC section 5), in two halves so that explaining a login and making it can
 * never disagree: `planLogin` does every directory read and takes every decision, each with its
 * reason, through the pure rules of `policy.ts`; `applyLoginPlan` makes the plan's writes, or throws
 * its refusal. A login (`runLogin`) is both; `explain` (SPEC section 11) is the plan alone. Every read
 * happens before any write, so a refusal leaves the directory untouched, and the number of directory
 * calls is constant, whatever the number of groups.
 */
import { settingName, type KeycloakConfig } from '../config/settings.js'
import { DIRECTORY_METHODS, type Company, type DirectoryGroup, type DirectoryReads, type DirectoryUser, type Role, type UserDirectory, type UserPatch } from '../directory/user-directory.js'
import { SsoError, type SsoErrorCode } from '../errors.js'
import type { Identity } from './identity.js'
import {
  adminGroupsOf, chooseSignupTarget, decideSignup, groupNameCandidates, keycloakManagesRole, planGroupSync, resolveRole, whitelistQuery,
  type SignupTarget
} from './policy.js'

export const PROVIDER = 'keycloak'

/** The variables that set what the reasons name; looked up once, as reasons are written on every login. */
const SETTING = {
  adminRole: settingName('adminRole'),
  groupsEnabled: settingName('groups.enabled'),
  groupsAdmins: settingName('groups.admins'),
  groupsClaim: settingName('groups.claim'),
  defaultCompany: settingName('defaultCompany'),
  trustUnverifiedEmail: settingName('trustUnverifiedEmail'),
  emailClaim: settingName('claims.email'),
  prohibitSignup: settingName('groups.prohibitUserSignupIfNotInGroup')
}

export interface LoginResult {
  user: DirectoryUser
  company: Company
  created: boolean
  role: Role
  /** Names of the ClearML groups the user joined and left in this login. */
  groups: { added: string[], removed: string[] }
}

type LoginConfig = Pick<KeycloakConfig, 'defaultCompany' | 'adminRole' | 'groups' | 'trustUnverifiedEmail' | 'claims'>

/** How the login finds its ClearML user: by subject, by verified email (then linked), or not (new, or refused at signup). */
export type UserStatus = 'found' | 'linked' | 'new' | 'refused'

export const PROFILE_FIELDS = ['name', 'email', 'givenName', 'familyName', 'avatar'] as const
export type ProfileField = typeof PROFILE_FIELDS[number]
/** A profile field the login sets: `before` is absent for a new user, or a field ClearML did not have. */
export interface ProfileChange { before?: string, after: string }

export interface SignupVerdict {
  admit: boolean
  /** The company id a new user joins, or would have joined. */
  company?: string
  code?: SsoErrorCode
  reason: string
}

export interface RoleVerdict {
  before?: Role
  /** `null` when the login creates or changes no user (a refused signup). */
  after: Role | null
  /** The rule that decided, and the setting or claim behind it. */
  rule: string
}

/** Every decision of one login, with its reason, before anything is written. */
export interface LoginPlan {
  identity: Identity
  status: UserStatus
  /** Which look-up found the user, or why none did. */
  userReason: string
  /** The user found by subject or linked by email, as the directory has them now. */
  user?: DirectoryUser
  /** The user's company, or the one a new user joins. */
  company?: Company
  /** For a new user: admitted into which company, or refused and why. */
  signup?: SignupVerdict
  /** The refusal the login throws; nothing is written. */
  refusal?: { code: SsoErrorCode, reason: string }
  role: RoleVerdict
  groups: { add: DirectoryGroup[], remove: DirectoryGroup[], unknown: string[], reason: string }
  profile: Partial<Record<ProfileField, ProfileChange>>
}

/** A short, stable error code of the host's database error (`ECONNREFUSED`, `57P01`), never its message: that may hold data. */
function causeCode (err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && /^[\w.-]{1,40}$/.test(code) ? ` (${code})` : ''
}

/**
 * Calls to the host's directory, each turned into `directory_error` when it fails, so that a broken
 * database never reaches the browser as a 500 and the rest of the pipeline stops there.
 */
function guarded<D extends DirectoryReads> (directory: D): D {
  // Typed as what was given: a read-only view (explain's) comes back read-only.
  const methods = DIRECTORY_METHODS.map((name) => [name, async (...args: unknown[]) => {
    try {
      return await ((directory as unknown as UserDirectory)[name] as (...a: unknown[]) => Promise<unknown>).apply(directory, args)
    } catch (err) {
      if (err instanceof SsoError) throw err
      throw new SsoError('directory_error', `directory.${name} failed${causeCode(err)}: the host's UserDirectory threw; check its database`, { cause: err })
    }
  }])
  return Object.fromEntries(methods) as unknown as D
}

/** Emails in reasons are named by their domain: enough to act on, and not a person's address in the log. */
function domainOf (email: string): string {
  return JSON.stringify(email.slice(email.lastIndexOf('@') + 1))
}

/** Names for a reason: quoted, at most a few of them, each bounded. */
function listed (names: readonly string[], max = 8): string {
  const shown = names.slice(0, max).map((name) => JSON.stringify(name.slice(0, 100))).join(', ')
  return names.length > max ? `${shown} and ${names.length - max} more` : shown
}

const companyName = (company: Company): string => `${JSON.stringify(company.name)} (${company.id})`

/** The claimed Keycloak groups that match no ClearML group the directory found for them. */
function unknownGroups (keycloakGroups: readonly string[], found: readonly DirectoryGroup[], caseSensitive: boolean): string[] {
  const fold = (name: string): string => caseSensitive ? name : name.toLowerCase()
  const known = new Set(found.map((group) => fold(group.name)))
  return keycloakGroups.filter((group) => !groupNameCandidates([group]).some((name) => known.has(fold(name))))
}

/**
 * The role verdict of SPEC 5 step 7. `resolveRole` decides; the rule is told from the same inputs,
 * so the text can never name a different outcome than the login applies.
 */
function decideRole (config: LoginConfig, identity: Identity, before: Role | undefined, start: Role, startSource = ''): RoleVerdict {
  const after = resolveRole(config, identity, start)
  if (!keycloakManagesRole(config, identity)) {
    const byRoles = config.adminRole === null
      ? `${SETTING.adminRole} is empty`
      : 'the claims carry no roles (roles, realm_access.roles or resource_access.<client>.roles)'
    const byGroups = !config.groups.enabled ? `group sync is off (${SETTING.groupsEnabled})` : `${SETTING.groupsAdmins} is empty`
    const kept = before === undefined ? `a new user gets ${JSON.stringify(after)} (${startSource})` : 'ClearML\'s role is kept'
    return { before, after, rule: `Keycloak does not manage the role: ${byRoles}, and ${byGroups}; ${kept}` }
  }
  const byRole = config.adminRole !== null && identity.roles.includes(config.adminRole)
  const adminGroups = adminGroupsOf(config, identity)
  if (byRole || adminGroups.length > 0) {
    const why = byRole
      ? `the roles claim lists ${JSON.stringify(config.adminRole)} (${SETTING.adminRole})`
      : `member of ${listed(adminGroups)}, listed in ${SETTING.groupsAdmins}`
    if (after !== 'admin') return { before, after, rule: `kept ${JSON.stringify(after)}, though ${why}: roles above admin are ClearML's own` }
    return { before, after, rule: `${start === 'admin' ? 'admin' : 'promoted to admin'}: ${why}` }
  }
  const notAdmin = `neither ${config.adminRole === null ? 'a roles claim' : `the role ${JSON.stringify(config.adminRole)} among the roles`} nor a group of ${SETTING.groupsAdmins}`
  if (start === 'admin') return { before, after, rule: `demoted to ${JSON.stringify(after)}: Keycloak manages the role and the user has ${notAdmin}` }
  return { before, after, rule: `kept ${JSON.stringify(after)}: the user has ${notAdmin}, and Keycloak grants or removes only admin` }
}

function groupSyncReason (config: LoginConfig, company: Company): string {
  if (!config.groups.enabled) return `group sync is off (${SETTING.groupsEnabled})`
  return `memberships in ${companyName(company)} become the claimed groups (${SETTING.groupsClaim}) that exist there`
}

const NO_GROUPS = { add: [], remove: [], unknown: [] }

/** A new user (SPEC 5 step 6): admitted into which company with which role, or refused and why. */
async function planSignup (config: LoginConfig, directory: DirectoryReads, identity: Identity, candidates: string[], userReason: string): Promise<LoginPlan> {
  const query = whitelistQuery(config, identity)
  const whitelistEntry = 'email' in query ? await directory.findWhitelistEntry(query.email) : null
  const target: SignupTarget = 'refused' in query ? query : chooseSignupTarget(config, whitelistEntry)
  const company = 'refused' in target ? null : await directory.getCompany(target.company)
  const claimed = company !== null && candidates.length > 0 ? await directory.findGroupsByName(company.id, candidates, { caseSensitive: config.groups.caseSensitive }) : []
  const decision = decideSignup(config, target, company, claimed)
  const unknown = company !== null && config.groups.enabled ? unknownGroups(identity.groups, claimed, config.groups.caseSensitive) : []
  const byDefault = config.defaultCompany !== undefined
  const source = byDefault ? SETTING.defaultCompany : `the whitelist entry for the address or the domain ${domainOf(identity.email ?? '')}`

  if (!decision.admit) {
    const reason = signupRefusal(config, identity, decision.code, 'company' in target ? target.company : undefined, company, source, byDefault)
    return {
      identity,
      status: 'refused',
      userReason,
      signup: { admit: false, company: 'company' in target ? target.company : undefined, code: decision.code, reason },
      refusal: { code: decision.code, reason: `${reason} (new Keycloak user ${identity.subject})` },
      role: { after: null, rule: 'no user: the signup is refused' },
      groups: { ...NO_GROUPS, unknown, reason: 'not applied: the signup is refused' },
      profile: {}
    }
  }

  const plan = planGroupSync(decision.company.id, claimed, [])
  const profile: LoginPlan['profile'] = {}
  for (const field of PROFILE_FIELDS) {
    const value = identity[field]
    if (value !== undefined) profile[field] = { after: value }
  }
  return {
    identity,
    status: 'new',
    userReason,
    company: decision.company,
    signup: { admit: true, company: decision.company.id, reason: `admitted into ${companyName(decision.company)} by ${source}, as ${JSON.stringify(decision.role)}` },
    role: decideRole(config, identity, undefined, decision.role, byDefault ? 'every new user starts as "user"' : 'the whitelist entry\'s role, else "user"'),
    groups: { add: plan.add, remove: [], unknown, reason: groupSyncReason(config, decision.company) },
    profile
  }
}

/** The reason of a refused signup, naming what an operator changes to admit the user. */
function signupRefusal (config: LoginConfig, identity: Identity, code: SsoErrorCode, targetCompany: string | undefined, company: Company | null, source: string, byDefault: boolean): string {
  const orDefault = `or set ${SETTING.defaultCompany} to admit every new user into one company`
  switch (code) {
    case 'email_not_verified':
      return `Keycloak has not verified this new user's email (domain ${domainOf(identity.email!)}), and the whitelist admits verified emails only: ` +
        `verify the email in Keycloak, ${orDefault}, or set ${SETTING.trustUnverifiedEmail}=true if the realm's administrators create users without verification`
    case 'not_whitelisted':
      return identity.email === undefined
        ? `the token has no "${config.claims.email}" claim (${SETTING.emailClaim}) to match the whitelist with: send the email from Keycloak, ${orDefault}`
        : `no whitelist entry for the address or the domain ${domainOf(identity.email)}: add one to the whitelist, ${orDefault}`
    case 'unknown_company':
      return `${source} names company ${JSON.stringify(targetCompany)}, which the directory does not have: create it, or correct ${byDefault ? 'the setting' : 'the entry'}`
    default: {
      // no_matching_group: the last rule of decideSignup.
      const groups = identity.groups.length === 0
        ? `the user has no Keycloak groups in the "${config.groups.claim}" claim (${SETTING.groupsClaim}; is the Group Membership mapper on the client?)`
        : `none of the user's Keycloak groups ${listed(identity.groups)} is a ClearML group of ${companyName(company!)}`
      return `${SETTING.prohibitSignup} is on and ${groups}: add the user to a matching group in Keycloak, create one of those groups in ClearML, or turn the setting off`
    }
  }
}

/** Steps 5–9 without writing: every read the login makes, and every decision with its reason. */
export async function planLogin (config: LoginConfig, rawDirectory: DirectoryReads, identity: Identity): Promise<LoginPlan> {
  const directory = guarded(rawDirectory)
  const candidates = config.groups.enabled ? groupNameCandidates(identity.groups) : []
  const subject = `Keycloak subject ${JSON.stringify(identity.subject)}`

  let user = await directory.findUserByIdentity(PROVIDER, identity.subject)
  let status: UserStatus = 'found'
  let userReason = `found by ${subject}`
  if (user === null) {
    if (identity.email === undefined) {
      userReason = `no user has ${subject}, and the claims have no email to link by`
    } else if (!identity.emailVerified) {
      userReason = `no user has ${subject}; the email is not verified (email_verified), so no user is linked by it`
    } else {
      user = await directory.findUserByEmail(identity.email)
      status = 'linked'
      userReason = user === null
        ? `no user has ${subject} or the verified email (domain ${domainOf(identity.email)})`
        : `no user had ${subject}; linked to the user with the same verified email (domain ${domainOf(identity.email)})`
    }
  }
  if (user === null) return await planSignup(config, directory, identity, candidates, userReason)

  const company = await directory.getCompany(user.company)
  if (company === null) {
    const reason = `user ${user.id} belongs to company ${JSON.stringify(user.company)}, which the directory does not have: restore the company, or move the user to one that exists`
    return {
      identity,
      status,
      userReason,
      user,
      refusal: { code: 'unknown_company', reason: `${reason} (${subject})` },
      role: { before: user.role, after: user.role, rule: 'unchanged: the login is refused' },
      groups: { ...NO_GROUPS, reason: 'not applied: the login is refused' },
      profile: {}
    }
  }
  const [claimed, current] = config.groups.enabled
    ? await Promise.all([
      candidates.length > 0 ? directory.findGroupsByName(user.company, candidates, { caseSensitive: config.groups.caseSensitive }) : Promise.resolve([]),
      directory.listUserGroups(user.company, user.id)
    ])
    : [[], []]

  const profile: LoginPlan['profile'] = {}
  for (const field of PROFILE_FIELDS) {
    const value = identity[field]
    // A claim that is absent says nothing: keep what ClearML has rather than erasing it.
    if (value !== undefined && value !== user[field]) profile[field] = { before: user[field], after: value }
  }
  const plan = planGroupSync(user.company, claimed, current)
  return {
    identity,
    status,
    userReason,
    user,
    company,
    role: decideRole(config, identity, user.role, user.role),
    groups: { ...plan, unknown: config.groups.enabled ? unknownGroups(identity.groups, claimed, config.groups.caseSensitive) : [], reason: groupSyncReason(config, company) },
    profile
  }
}

/** The plan's writes: create or update the user, then their group memberships; or its refusal. */
export async function applyLoginPlan (rawDirectory: UserDirectory, plan: LoginPlan): Promise<LoginResult> {
  if (plan.refusal !== undefined) throw new SsoError(plan.refusal.code, plan.refusal.reason)
  const directory = guarded(rawDirectory)
  const company = plan.company!
  const fields = Object.fromEntries(Object.entries(plan.profile).map(([field, change]) => [field, change.after])) as Partial<DirectoryUser>
  const add = plan.groups.add.map((group) => group.id)
  const remove = plan.groups.remove.map((group) => group.id)
  const groups = { added: plan.groups.add.map((group) => group.name), removed: plan.groups.remove.map((group) => group.name) }

  if (plan.status === 'new') {
    const created = await directory.createUser({
      ...fields,
      company: company.id,
      name: plan.identity.name,
      role: plan.role.after!,
      identity: { provider: PROVIDER, subject: plan.identity.subject }
    })
    if (add.length > 0) await directory.updateUserGroups(created.id, { add, remove: [] })
    return { user: created, company, created: true, role: created.role, groups }
  }

  let user = plan.user!
  const patch: UserPatch = fields
  if (plan.role.after !== user.role) patch.role = plan.role.after!
  if (plan.status === 'linked') patch.linkIdentity = { provider: PROVIDER, subject: plan.identity.subject }
  if (Object.keys(patch).length > 0) user = await directory.updateUser(user.id, patch)
  if (add.length > 0 || remove.length > 0) await directory.updateUserGroups(user.id, { add, remove })
  return { user, company, created: false, role: user.role, groups }
}

/** Steps 5–9: plan, then apply. */
export async function runLogin (config: LoginConfig, directory: UserDirectory, identity: Identity): Promise<LoginResult> {
  return await applyLoginPlan(directory, await planLogin(config, directory, identity))
}
