/**
 * The user/group directory the host injects (SPEC section 6). Everything the plugin changes about
 * users and groups goes through it, so the host keeps its own database.
 */

/** ClearML roles: `system`, `root`, `admin`, `superuser`, `user`, `annotator`, `guest`. */
export type Role = 'admin' | 'user' | 'annotator' | 'guest' | (string & {})

export interface Company { id: string, name: string }

export interface DirectoryUser {
  id: string
  company: string
  name: string
  email?: string
  role: Role
  givenName?: string
  familyName?: string
  avatar?: string
}

export interface DirectoryGroup { id: string, company: string, name: string }

/** Matched by exact email first, else by the email's domain. */
export interface WhitelistEntry { company: string, role?: Role }

/** A login identity linked to a user: the provider (`keycloak`) and its subject (`sub`). */
export interface LinkedIdentity { provider: string, subject: string }

export interface NewUser extends Omit<DirectoryUser, 'id'> { identity: LinkedIdentity }

export type UserPatch = Partial<Omit<DirectoryUser, 'id' | 'company'>> & { linkIdentity?: LinkedIdentity }

/**
 * What the plugin needs from the host's user database. `testDirectory` checks an implementation
 * against this contract; the rules below are the ones it tests.
 *
 * Emails are matched case-insensitively: the email in Keycloak's token and the one in the host's
 * records may differ only in case (an administrator typed `Ann@Acme.com`), and they name the same
 * person. A database comparing emails as stored would miss users and whitelist entries: store them
 * lower-cased, or compare with `lower(...)` or a case-insensitive collation.
 */
export interface UserDirectory {
  getCompany(id: string): Promise<Company | null>
  /** The user linked to Keycloak's `subject`; identities are per provider. */
  findUserByIdentity(provider: string, subject: string): Promise<DirectoryUser | null>
  /** The user with this email, compared case-insensitively (`ANN@acme.com` finds `ann@acme.com`). */
  findUserByEmail(email: string): Promise<DirectoryUser | null>
  /**
   * The whitelist entry for this email, compared case-insensitively: the entry for the exact email
   * first, else the entry for its domain (the part after the last `@`; a subdomain is another
   * domain), else `null`.
   */
  findWhitelistEntry(email: string): Promise<WhitelistEntry | null>
  /**
   * Idempotent on `identity`: when a user already has it, that user is returned unchanged, also
   * when several calls race (concurrent first logins must create one user).
   */
  createUser(user: NewUser): Promise<DirectoryUser>
  /**
   * Changes the given fields (never `id` or `company`) and links `patch.linkIdentity` in addition to
   * the identities the user has; rejects an unknown user.
   */
  updateUser(id: string, patch: UserPatch): Promise<DirectoryUser>
  /** The company's groups with these names, exactly or case-folded per `opts`; unknown names are ignored. */
  findGroupsByName(company: string, names: string[], opts: { caseSensitive: boolean }): Promise<DirectoryGroup[]>
  /** The user's groups in this company only. */
  listUserGroups(company: string, userId: string): Promise<DirectoryGroup[]>
  /** Group ids. Adding a membership the user has, or removing one they lack, is a no-op. */
  updateUserGroups(userId: string, change: { add: string[], remove: string[] }): Promise<void>
}

/** What a login plan reads (and all a read-only view of a directory offers): no method that writes. */
export type DirectoryReads = Pick<UserDirectory, 'getCompany' | 'findUserByIdentity' | 'findUserByEmail' | 'findWhitelistEntry' | 'findGroupsByName' | 'listUserGroups'>

export const DIRECTORY_METHODS = [
  'getCompany', 'findUserByIdentity', 'findUserByEmail', 'findWhitelistEntry', 'createUser',
  'updateUser', 'findGroupsByName', 'listUserGroups', 'updateUserGroups'
] as const satisfies ReadonlyArray<keyof UserDirectory>
