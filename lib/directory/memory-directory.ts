/**
 * An in-memory `UserDirectory`: the embedded default for demos and tests, with seeding and
 * inspection helpers. Every method does its checks and writes without awaiting in between, so
 * concurrent calls cannot interleave (that is what makes `createUser` idempotent under races).
 */
import { randomUUID } from 'node:crypto'
import type {
  Company, DirectoryGroup, DirectoryUser, LinkedIdentity, NewUser, UserDirectory, UserPatch, WhitelistEntry
} from './user-directory.js'

/** ClearML ids are 32 hex characters. */
const newId = (): string => randomUUID().replace(/-/g, '')
const identityKey = (provider: string, subject: string): string => `${provider}\u0000${subject}`
const copy = <T extends object>(value: T): T => ({ ...value })

export interface WhitelistSeed extends WhitelistEntry { email?: string, domain?: string }

/** Companies, their groups by name, and whitelist entries: a directory's seed data. */
export interface DirectoryFixture {
  companies: Company[]
  groups: Record<string, string[]>
  whitelist: WhitelistSeed[]
}

export class MemoryDirectory implements UserDirectory {
  readonly #companies = new Map<string, Company>()
  readonly #users = new Map<string, DirectoryUser>()
  readonly #identities = new Map<string, string>()
  readonly #groups = new Map<string, DirectoryGroup>()
  readonly #memberships = new Map<string, Set<string>>()
  readonly #whitelistByEmail = new Map<string, WhitelistEntry>()
  readonly #whitelistByDomain = new Map<string, WhitelistEntry>()

  // Seeding and inspection -------------------------------------------------------------------

  /** A directory holding `fixture`, e.g. the one `testDirectory` hands to its factory. */
  static fromFixture (fixture: DirectoryFixture): MemoryDirectory {
    const directory = new MemoryDirectory()
    for (const company of fixture.companies) directory.addCompany(company)
    for (const [company, names] of Object.entries(fixture.groups)) for (const name of names) directory.addGroup(company, name)
    for (const entry of fixture.whitelist) directory.addWhitelistEntry(entry)
    return directory
  }

  addCompany (company: Company): Company {
    this.#companies.set(company.id, copy(company))
    return copy(company)
  }

  addGroup (company: string, name: string): DirectoryGroup {
    if (!this.#companies.has(company)) throw new Error(`unknown company ${company}`)
    const group = { id: newId(), company, name }
    this.#groups.set(group.id, group)
    return copy(group)
  }

  addWhitelistEntry (seed: WhitelistSeed): void {
    const entry: WhitelistEntry = seed.role === undefined ? { company: seed.company } : { company: seed.company, role: seed.role }
    if (seed.email !== undefined) this.#whitelistByEmail.set(seed.email.toLowerCase(), entry)
    if (seed.domain !== undefined) this.#whitelistByDomain.set(seed.domain.toLowerCase(), entry)
    if (seed.email === undefined && seed.domain === undefined) throw new Error('a whitelist entry needs an email or a domain')
  }

  addUser (user: Omit<DirectoryUser, 'id'> & { id?: string }, identity?: LinkedIdentity): DirectoryUser {
    const stored: DirectoryUser = { ...user, id: user.id ?? newId() }
    this.#users.set(stored.id, stored)
    if (identity !== undefined) this.#identities.set(identityKey(identity.provider, identity.subject), stored.id)
    return copy(stored)
  }

  listUsers (): DirectoryUser[] {
    return [...this.#users.values()].map(copy)
  }

  /** Names of the groups the user belongs to, sorted. */
  groupsOf (userId: string): string[] {
    const ids = this.#memberships.get(userId) ?? new Set()
    return [...ids].map((id) => this.#groups.get(id)!.name).sort()
  }

  // UserDirectory ----------------------------------------------------------------------------

  async getCompany (id: string): Promise<Company | null> {
    const company = this.#companies.get(id)
    return company === undefined ? null : copy(company)
  }

  async findUserByIdentity (provider: string, subject: string): Promise<DirectoryUser | null> {
    const id = this.#identities.get(identityKey(provider, subject))
    return id === undefined ? null : copy(this.#users.get(id)!)
  }

  async findUserByEmail (email: string): Promise<DirectoryUser | null> {
    const wanted = email.toLowerCase()
    for (const user of this.#users.values()) {
      if (user.email?.toLowerCase() === wanted) return copy(user)
    }
    return null
  }

  async findWhitelistEntry (email: string): Promise<WhitelistEntry | null> {
    const lower = email.toLowerCase()
    const byEmail = this.#whitelistByEmail.get(lower)
    if (byEmail !== undefined) return copy(byEmail)
    const at = lower.lastIndexOf('@')
    const byDomain = at < 0 ? undefined : this.#whitelistByDomain.get(lower.slice(at + 1))
    return byDomain === undefined ? null : copy(byDomain)
  }

  async createUser (user: NewUser): Promise<DirectoryUser> {
    const key = identityKey(user.identity.provider, user.identity.subject)
    const existing = this.#identities.get(key)
    if (existing !== undefined) return copy(this.#users.get(existing)!)
    if (!this.#companies.has(user.company)) throw new Error(`unknown company ${user.company}`)
    const { identity, ...fields } = user
    const stored: DirectoryUser = { ...fields, id: newId() }
    this.#users.set(stored.id, stored)
    this.#identities.set(key, stored.id)
    return copy(stored)
  }

  async updateUser (id: string, patch: UserPatch): Promise<DirectoryUser> {
    const user = this.#users.get(id)
    if (user === undefined) throw new Error(`unknown user ${id}`)
    const { linkIdentity, ...fields } = patch
    if (linkIdentity !== undefined) {
      const key = identityKey(linkIdentity.provider, linkIdentity.subject)
      const owner = this.#identities.get(key)
      if (owner !== undefined && owner !== id) throw new Error('identity is linked to another user')
      this.#identities.set(key, id)
    }
    for (const [name, value] of Object.entries(fields)) {
      if (value !== undefined && name !== 'id' && name !== 'company') (user as unknown as Record<string, unknown>)[name] = value
    }
    return copy(user)
  }

  async findGroupsByName (company: string, names: string[], opts: { caseSensitive: boolean }): Promise<DirectoryGroup[]> {
    const fold = (name: string): string => opts.caseSensitive ? name : name.toLowerCase()
    const wanted = new Set(names.map(fold))
    return [...this.#groups.values()].filter((group) => group.company === company && wanted.has(fold(group.name))).map(copy)
  }

  async listUserGroups (company: string, userId: string): Promise<DirectoryGroup[]> {
    const ids = this.#memberships.get(userId) ?? new Set<string>()
    return [...ids].map((id) => this.#groups.get(id)!).filter((group) => group.company === company).map(copy)
  }

  async updateUserGroups (userId: string, change: { add: string[], remove: string[] }): Promise<void> {
    if (!this.#users.has(userId)) throw new Error(`unknown user ${userId}`)
    const unknown = [...change.add, ...change.remove].find((id) => !this.#groups.has(id))
    if (unknown !== undefined) throw new Error(`unknown group ${unknown}`)
    const memberships = this.#memberships.get(userId) ?? new Set<string>()
    for (const id of change.remove) memberships.delete(id)
    for (const id of change.add) memberships.add(id)
    this.#memberships.set(userId, memberships)
  }
}
