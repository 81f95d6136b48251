/**
 * Refusals of the PostgreSQL directory, each with a stable `code`. The plugin's login turns any
 * directory failure into `directory_error`; these codes are for the host and its operators (seeding
 * scripts, the contract suite, the log line's `cause`).
 */

export type PostgresDirectoryErrorCode =
  | 'invalid_pool' // the pool option is not a pg Pool
  | 'invalid_schema_name' // the `schema` option is empty, too long for PostgreSQL or holds a NUL
  | 'schema_conflict' // createPostgresSchema met a table or index of that name it did not create
  | 'invalid_input' // a value PostgreSQL cannot store (text with a NUL character)
  | 'invalid_whitelist_entry' // a whitelist entry with neither an email nor a domain
  | 'unknown_company'
  | 'unknown_user'
  | 'unknown_group'
  | 'identity_taken' // the (provider, subject) is linked to another user

export class PostgresDirectoryError extends Error {
  readonly code: PostgresDirectoryErrorCode

  /** `message` names ids and settings, never a value a user typed in full (emails stay out). */
  constructor (code: PostgresDirectoryErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'PostgresDirectoryError'
    this.code = code
  }
}

// The constraint names are given explicitly in schema.ts so that these stay true.
const COMPANY_FOREIGN_KEYS = new Set(['users_company_fkey', 'groups_company_fkey', 'whitelist_entries_company_fkey'])

/**
 * A PostgreSQL error the caller can act on becomes a `PostgresDirectoryError`; anything else (the
 * server unreachable, a permission missing) is passed on as pg reported it.
 */
export function translatePgError (err: unknown): unknown {
  const { code, constraint, message } = err as { code?: string, constraint?: string, message?: string }
  if (code === '23503' && COMPANY_FOREIGN_KEYS.has(constraint as string)) {
    return new PostgresDirectoryError('unknown_company', 'the company does not exist', { cause: err })
  }
  if (code === '42P07') {
    return new PostgresDirectoryError('schema_conflict',
      `${message}, and was not created by createPostgresSchema: give the directory a schema of its own (option \`schema\`)`, { cause: err })
  }
  return err
}
