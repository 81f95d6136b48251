/**
 * A `UserDirectory` on PostgreSQL through the host's pg pool (for example `fastify.pg.pool`), for
 * apiservers running as several replicas. Its tables come from `createPostgresSchema`. The pool
 * stays the host's: the directory never ends it, and works again by itself once a restarted
 * database accepts connections.
 *
 * Concurrency: the identity `(provider, subject)` is the primary key of `identities`, so concurrent
 * first logins of one Keycloak user on any number of replicas create one user; every multi-statement
 * change runs in one transaction and leaves nothing behind when it fails.
 */
import { randomUUID } from 'node:crypto'
import type { Pool } from 'pg'
import type {
  Company, DirectoryGroup, DirectoryUser, LinkedIdentity, NewUser, UserDirectory, UserPatch, WhitelistEntry
} from '../lib/directory/user-directory.js'
import type { WhitelistSeed } from '../lib/directory/memory-directory.js'
import { PostgresDirectoryError } from './errors.js'
import { DEFAULT_SCHEMA, quoteSchemaName } from './schema.js'
import { directoryStatements, type Statements } from './statements.js'
import { assertPool, inTransaction, RolledBack, runOn, type Run } from './transaction.js'

export interface PostgresDirectoryOptions {
  /** The host's pool; never ended by the directory. */
  pool: Pool
  /** PostgreSQL schema holding the tables, as given to `createPostgresSchema`; default `public`. */
  schema?: string
}

/** ClearML ids are 32 hex characters. */
const newId = (): string => randomUUID().replace(/-/g, '')

type UserRow = Record<keyof DirectoryUser, string | null>

/** A row as a `DirectoryUser`: absent optional fields are left out rather than set to null. */
function toUser (row: UserRow): DirectoryUser {
  return Object.fromEntries(Object.entries(row).filter(([, value]) => value !== null)) as unknown as DirectoryUser
}

/** A whitelist row as a `WhitelistEntry`, `role` only when the entry sets one. */
function toWhitelistEntry (row: { company: string, role: string | null }): WhitelistEntry {
  return row.role === null ? { company: row.company } : { company: row.company, role: row.role }
}

/** `users` columns in statement order; missing optional fields become NULL. */
function userValues (id: string, user: Omit<DirectoryUser, 'id'>): unknown[] {
  return [id, user.company, user.name, user.email ?? null, user.role, user.givenName ?? null, user.familyName ?? null, user.avatar ?? null]
}

export class PostgresDirectory implements UserDirectory {
  readonly #pool: Pool
  readonly #sql: Statements
  readonly schema: string

  constructor (options: PostgresDirectoryOptions) {
    assertPool(options.pool)
    this.schema = options.schema ?? DEFAULT_SCHEMA
    this.#sql = directoryStatements(quoteSchemaName(this.schema))
    this.#pool = options.pool
  }

  /** One statement outside a transaction; rows typed by the caller, who wrote the SELECT list. */
  async #run<R> (text: string, values: unknown[]): Promise<R[]> {
    return (await runOn(this.#pool, text, values)).rows as R[]
  }

  /** Links `identity` to `userId` inside a transaction; throws when another user has it. */
  async #link (run: Run, userId: string, identity: LinkedIdentity): Promise<void> {
    const { rows } = await run<{ user_id: string }>(this.#sql.claimIdentity, [identity.provider, identity.subject, userId])
    if (rows[0].user_id !== userId) throw new PostgresDirectoryError('identity_taken', `the ${identity.provider} identity is linked to another user`)
  }

  // Seeding and inspection (as MemoryDirectory's, async) -------------------------------------
  // Seeding writes are upserts: running a seed script again updates what it wrote before.

  async addCompany (company: Company): Promise<Company> {
    const [row] = await this.#run<Company>(this.#sql.upsertCompany, [company.id, company.name])
    return row
  }

  /** Answers the existing group when the company already has one of that name. */
  async addGroup (company: string, name: string): Promise<DirectoryGroup> {
    const [row] = await this.#run<DirectoryGroup>(this.#sql.upsertGroup, [newId(), company, name])
    return row
  }

  /** An entry for `email`, for `domain`, or one of each when both are given. */
  async addWhitelistEntry (seed: WhitelistSeed): Promise<void> {
    const targets = ([[this.#sql.upsertWhitelistEmail, seed.email], [this.#sql.upsertWhitelistDomain, seed.domain]] as const)
      .filter(([, key]) => key !== undefined)
    if (targets.length === 0) throw new PostgresDirectoryError('invalid_whitelist_entry', 'a whitelist entry needs an email or a domain')
    await inTransaction(this.#pool, async (run) => {
      for (const [statement, key] of targets) await run(statement, [key, seed.company, seed.role ?? null])
    })
  }

  /** Inserts or replaces the user with `user.id` (a new id when absent), linking `identity`. */
  async addUser (user: Omit<DirectoryUser, 'id'> & { id?: string }, identity?: LinkedIdentity): Promise<DirectoryUser> {
    return await inTransaction(this.#pool, async (run) => {
      const { rows } = await run<UserRow>(this.#sql.upsertUser, userValues(user.id ?? newId(), user))
      const stored = toUser(rows[0])
      if (identity !== undefined) await this.#link(run, stored.id, identity)
      return stored
    })
  }

  /** Every user, oldest first. */
  async listUsers (): Promise<DirectoryUser[]> {
    return (await this.#run<UserRow>(this.#sql.listUsers, [])).map(toUser)
  }

  /** Names of the groups the user belongs to, sorted. */
  async groupsOf (userId: string): Promise<string[]> {
    return (await this.#run<{ name: string }>(this.#sql.groupNamesOf, [userId])).map((row) => row.name)
  }

  // UserDirectory ----------------------------------------------------------------------------

  async getCompany (id: string): Promise<Company | null> {
    const [row] = await this.#run<Company>(this.#sql.getCompany, [id])
    return row ?? null
  }

  async findUserByIdentity (provider: string, subject: string): Promise<DirectoryUser | null> {
    const [row] = await this.#run<UserRow>(this.#sql.userByIdentity, [provider, subject])
    return row === undefined ? null : toUser(row)
  }

  async findUserByEmail (email: string): Promise<DirectoryUser | null> {
    const [row] = await this.#run<UserRow>(this.#sql.userByEmail, [email])
    return row === undefined ? null : toUser(row)
  }

  async findWhitelistEntry (email: string): Promise<WhitelistEntry | null> {
    const at = email.lastIndexOf('@')
    // Without an @ there is no domain to match: `acme.com` alone is not an address at acme.com.
    const domain = at < 0 ? null : email.slice(at + 1)
    const [row] = await this.#run<{ company: string, role: string | null }>(this.#sql.whitelistEntry, [email, domain])
    return row === undefined ? null : toWhitelistEntry(row)
  }

  /**
   * Inserts the user and links the identity in one transaction. When the identity turns out to be
   * another user's (a concurrent first login on this or another replica won), the insert is rolled
   * back and that user is answered unchanged.
   */
  async createUser (user: NewUser): Promise<DirectoryUser> {
    const { identity, ...fields } = user
    return await inTransaction(this.#pool, async (run) => {
      const created = toUser((await run<UserRow>(this.#sql.insertUser, userValues(newId(), fields))).rows[0])
      const { rows } = await run<{ user_id: string }>(this.#sql.claimIdentity, [identity.provider, identity.subject, created.id])
      if (rows[0].user_id === created.id) return created
      const existing = await run<UserRow>(this.#sql.userById, [rows[0].user_id])
      return new RolledBack(toUser(existing.rows[0]))
    })
  }

  /** Changes the given fields (the company never moves) and links `linkIdentity`, all or nothing. */
  async updateUser (id: string, patch: UserPatch): Promise<DirectoryUser> {
    return await inTransaction(this.#pool, async (run) => {
      const { rows } = await run<UserRow>(this.#sql.updateUser, [
        id, patch.name ?? null, patch.email ?? null, patch.role ?? null, patch.givenName ?? null, patch.familyName ?? null, patch.avatar ?? null
      ])
      if (rows.length === 0) throw new PostgresDirectoryError('unknown_user', `unknown user ${id}`)
      if (patch.linkIdentity !== undefined) await this.#link(run, id, patch.linkIdentity)
      return toUser(rows[0])
    })
  }

  async findGroupsByName (company: string, names: string[], opts: { caseSensitive: boolean }): Promise<DirectoryGroup[]> {
    const statement = opts.caseSensitive ? this.#sql.groupsByName : this.#sql.groupsByNameIgnoringCase
    return await this.#run<DirectoryGroup>(statement, [company, names])
  }

  async listUserGroups (company: string, userId: string): Promise<DirectoryGroup[]> {
    return await this.#run<DirectoryGroup>(this.#sql.userGroups, [company, userId])
  }

  /**
   * One transaction: an unknown user or group id fails the whole change and nothing is written.
   * Removals apply before additions, so an id in both lists ends up a membership.
   */
  async updateUserGroups (userId: string, change: { add: string[], remove: string[] }): Promise<void> {
    await inTransaction(this.#pool, async (run) => {
      const user = await run(this.#sql.lockUser, [userId])
      if (user.rowCount === 0) throw new PostgresDirectoryError('unknown_user', `unknown user ${userId}`)
      const ids = [...change.add, ...change.remove]
      const found = new Set((await run<{ id: string }>(this.#sql.lockGroups, [ids])).rows.map((row) => row.id))
      const unknown = ids.find((id) => !found.has(id))
      if (unknown !== undefined) throw new PostgresDirectoryError('unknown_group', `unknown group ${unknown}`)
      await run(this.#sql.removeMemberships, [userId, change.remove])
      await run(this.#sql.addMemberships, [userId, change.add])
    })
  }
}
