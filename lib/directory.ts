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

export interface LinkedIdentity { provider: string, subject: string }

export interface NewUser extends Omit<DirectoryUser, 'id'> { identity: LinkedIdentity }

export type UserPatch = Partial<Omit<DirectoryUser, 'id' | 'company'>> & { linkIdentity?: LinkedIdentity }

export interface UserDirectory {
  getCompany(id: string): Promise<Company | null>
  findUserByIdentity(provider: string, subject: string): Promise<DirectoryUser | null>
  findUserByEmail(email: string): Promise<DirectoryUser | null>
  findWhitelistEntry(email: string): Promise<WhitelistEntry | null>
  /** Idempotent on `identity`: when a user already has it, that user is returned unchanged. */
  createUser(user: NewUser): Promise<DirectoryUser>
  updateUser(id: string, patch: UserPatch): Promise<DirectoryUser>
  findGroupsByName(company: string, names: string[], opts: { caseSensitive: boolean }): Promise<DirectoryGroup[]>
  listUserGroups(company: string, userId: string): Promise<DirectoryGroup[]>
  /** Group ids. Adding a membership the user has, or removing one they lack, is a no-op. */
  updateUserGroups(userId: string, change: { add: string[], remove: string[] }): Promise<void>
}

export const DIRECTORY_METHODS = [
  'getCompany', 'findUserByIdentity', 'findUserByEmail', 'findWhitelistEntry', 'createUser',
  'updateUser', 'findGroupsByName', 'listUserGroups', 'updateUserGroups'
] as const satisfies ReadonlyArray<keyof UserDirectory>
