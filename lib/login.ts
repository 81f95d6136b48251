/**
 * Steps 5–9 of a login (SPEC section 5): find or admit the user, then bring their role, groups and
 * profile in line with Keycloak. All reads happen before any write, and every write is decided by
 * the pure rules in `policy.ts`, so a refusal leaves the directory untouched. The number of
 * directory calls is constant, whatever the number of groups.
 */
import type { KeycloakConfig } from './config.js'
import { DIRECTORY_METHODS, type Company, type DirectoryUser, type Role, type UserDirectory, type UserPatch } from './directory.js'
import { SsoError } from './errors.js'
import type { Identity } from './identity.js'
import { chooseSignupTarget, decideSignup, groupNameCandidates, planGroupSync, resolveRole, whitelistQuery } from './policy.js'

export const PROVIDER = 'keycloak'

export interface LoginResult {
  user: DirectoryUser
  company: Company
  created: boolean
  role: Role
  /** Names of the ClearML groups the user joined and left in this login. */
  groups: { added: string[], removed: string[] }
}

type LoginConfig = Pick<KeycloakConfig, 'defaultCompany' | 'adminRole' | 'groups' | 'trustUnverifiedEmail'>

/**
 * Calls to the host's directory, each turned into `directory_error` when it fails, so that a broken
 * database never reaches the browser as a 500 and the rest of the pipeline stops there.
 */
function guarded (directory: UserDirectory): UserDirectory {
  const methods = DIRECTORY_METHODS.map((name) => [name, async (...args: unknown[]) => {
    try {
      return await (directory[name] as (...a: unknown[]) => Promise<unknown>).apply(directory, args)
    } catch (err) {
      if (err instanceof SsoError) throw err
      throw new SsoError('directory_error', `directory.${name} failed`, { cause: err })
    }
  }])
  return Object.fromEntries(methods) as unknown as UserDirectory
}

const PROFILE_FIELDS = ['name', 'email', 'givenName', 'familyName', 'avatar'] as const

function profilePatch (user: DirectoryUser, identity: Identity): UserPatch {
  const patch: UserPatch = {}
  for (const field of PROFILE_FIELDS) {
    const value = identity[field]
    // A claim that is absent says nothing: keep what ClearML has rather than erasing it.
    if (value !== undefined && value !== user[field]) patch[field] = value
  }
  return patch
}

export async function runLogin (config: LoginConfig, rawDirectory: UserDirectory, identity: Identity): Promise<LoginResult> {
  const directory = guarded(rawDirectory)
  const candidates = config.groups.enabled ? groupNameCandidates(identity.groups) : []
  const groupOptions = { caseSensitive: config.groups.caseSensitive }

  let user = await directory.findUserByIdentity(PROVIDER, identity.subject)
  let link = false
  if (user === null && identity.email !== undefined && identity.emailVerified) {
    user = await directory.findUserByEmail(identity.email)
    link = user !== null
  }

  if (user === null) {
    const query = whitelistQuery(config, identity)
    const whitelistEntry = 'email' in query ? await directory.findWhitelistEntry(query.email) : null
    const target = 'refused' in query ? query : chooseSignupTarget(config, whitelistEntry)
    const company = 'refused' in target ? null : await directory.getCompany(target.company)
    const claimed = company !== null && candidates.length > 0 ? await directory.findGroupsByName(company.id, candidates, groupOptions) : []
    const decision = decideSignup(config, target, company, claimed)
    if (!decision.admit) throw new SsoError(decision.code, `signup refused for subject ${identity.subject}`)

    const role = resolveRole(config, identity, decision.role)
    const created = await directory.createUser({
      company: decision.company.id,
      name: identity.name,
      role,
      ...definedProfile(identity),
      identity: { provider: PROVIDER, subject: identity.subject }
    })
    const plan = planGroupSync(decision.company.id, config.groups.enabled ? claimed : [], [])
    if (plan.add.length > 0) await directory.updateUserGroups(created.id, { add: plan.add.map((g) => g.id), remove: [] })
    return { user: created, company: decision.company, created: true, role: created.role, groups: { added: plan.add.map((g) => g.name), removed: [] } }
  }

  const company = await directory.getCompany(user.company)
  if (company === null) throw new SsoError('unknown_company', `user ${user.id} belongs to a company the directory does not know`)
  const [claimed, current] = config.groups.enabled
    ? await Promise.all([
      candidates.length > 0 ? directory.findGroupsByName(user.company, candidates, groupOptions) : Promise.resolve([]),
      directory.listUserGroups(user.company, user.id)
    ])
    : [[], []]

  const role = resolveRole(config, identity, user.role)
  const patch = profilePatch(user, identity)
  if (role !== user.role) patch.role = role
  if (link) patch.linkIdentity = { provider: PROVIDER, subject: identity.subject }
  const plan = config.groups.enabled ? planGroupSync(user.company, claimed, current) : { add: [], remove: [] }

  if (Object.keys(patch).length > 0) user = await directory.updateUser(user.id, patch)
  if (plan.add.length > 0 || plan.remove.length > 0) {
    await directory.updateUserGroups(user.id, { add: plan.add.map((g) => g.id), remove: plan.remove.map((g) => g.id) })
  }
  return {
    user,
    company,
    created: false,
    role: user.role,
    groups: { added: plan.add.map((g) => g.name), removed: plan.remove.map((g) => g.name) }
  }
}

function definedProfile (identity: Identity): Partial<DirectoryUser> {
  const profile: Partial<DirectoryUser> = {}
  for (const field of PROFILE_FIELDS) {
    if (field !== 'name' && identity[field] !== undefined) profile[field] = identity[field]
  }
  return profile
}
