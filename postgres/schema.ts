/**
 * The directory's tables (documented in docs/postgres.md) and `createPostgresSchema`, which makes or
 * upgrades them. Every replica may call it on every start, several at once: the work runs in one
 * transaction under an advisory lock, and a schema already at the current version is only read.
 */
import { createHash } from 'node:crypto'
import type { Pool } from 'pg'
import { PostgresDirectoryError } from './errors.js'
import { assertPool, inTransaction } from './transaction.js'

export const DEFAULT_SCHEMA = 'public'

export interface PostgresSchemaOptions {
  /** PostgreSQL schema (namespace) holding the tables; default `public`. Created when missing. */
  schema?: string
}

export interface PostgresSchemaResult {
  schema: string
  /** The version the tables are at now. */
  version: number
  /** Versions applied by this call: `[]` when the schema was already current. */
  applied: number[]
}

/** Name of the table recording which versions of the schema were applied. */
export const VERSION_TABLE = 'clearml_keycloak_schema'

/**
 * The schema name as a quoted identifier, so any name an operator picks (capitals, dashes, spaces)
 * means exactly that schema. PostgreSQL silently cuts identifiers at 63 bytes, which could make two
 * settings name one schema: such names are refused, as are empty ones and NUL characters.
 */
export function quoteSchemaName (schema: string): string {
  if (typeof schema !== 'string' || schema === '' || schema.includes('\u0000') || Buffer.byteLength(schema) > 63) {
    throw new PostgresDirectoryError('invalid_schema_name', 'the schema option must be a non-empty name of at most 63 bytes without NUL characters')
  }
  return `"${schema.replaceAll('"', '""')}"`
}

/**
 * Each entry upgrades the schema by one version; entries are never edited once released, only
 * appended. Constraint names are explicit because errors.ts recognises them.
 */
const MIGRATIONS: ReadonlyArray<(s: string) => string[]> = [
  (s) => [
    `CREATE TABLE ${s}.companies (
      id text CONSTRAINT companies_pkey PRIMARY KEY,
      name text NOT NULL
    )`,
    `CREATE TABLE ${s}.users (
      id text CONSTRAINT users_pkey PRIMARY KEY,
      company text NOT NULL CONSTRAINT users_company_fkey REFERENCES ${s}.companies (id),
      name text NOT NULL,
      email text,
      role text NOT NULL,
      given_name text,
      family_name text,
      avatar text,
      created_at timestamptz NOT NULL DEFAULT now()
    )`,
    // Email look-ups ignore case (a login's email against the stored one).
    `CREATE INDEX users_lower_email_idx ON ${s}.users (lower(email))`,
    `CREATE TABLE ${s}.identities (
      provider text NOT NULL,
      subject text NOT NULL,
      user_id text NOT NULL CONSTRAINT identities_user_fkey REFERENCES ${s}.users (id) ON DELETE CASCADE,
      CONSTRAINT identities_pkey PRIMARY KEY (provider, subject)
    )`,
    `CREATE INDEX identities_user_idx ON ${s}.identities (user_id)`,
    `CREATE TABLE ${s}.groups (
      id text CONSTRAINT groups_pkey PRIMARY KEY,
      company text NOT NULL CONSTRAINT groups_company_fkey REFERENCES ${s}.companies (id),
      name text NOT NULL,
      CONSTRAINT groups_company_name_key UNIQUE (company, name)
    )`,
    // groups.case_sensitive = false looks names up lower-cased.
    `CREATE INDEX groups_company_lower_name_idx ON ${s}.groups (company, lower(name))`,
    `CREATE TABLE ${s}.memberships (
      user_id text NOT NULL CONSTRAINT memberships_user_fkey REFERENCES ${s}.users (id) ON DELETE CASCADE,
      group_id text NOT NULL CONSTRAINT memberships_group_fkey REFERENCES ${s}.groups (id) ON DELETE CASCADE,
      CONSTRAINT memberships_pkey PRIMARY KEY (user_id, group_id)
    )`,
    `CREATE INDEX memberships_group_idx ON ${s}.memberships (group_id)`,
    `CREATE TABLE ${s}.whitelist_entries (
      id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT whitelist_entries_pkey PRIMARY KEY,
      email text,
      domain text,
      company text NOT NULL CONSTRAINT whitelist_entries_company_fkey REFERENCES ${s}.companies (id),
      role text,
      CONSTRAINT whitelist_entries_email_or_domain CHECK (num_nonnulls(email, domain) = 1)
    )`,
    // One entry per email and per domain whatever their case; also the look-up indexes.
    `CREATE UNIQUE INDEX whitelist_entries_lower_email_key ON ${s}.whitelist_entries (lower(email))`,
    `CREATE UNIQUE INDEX whitelist_entries_lower_domain_key ON ${s}.whitelist_entries (lower(domain))`,
    `CREATE TABLE ${s}.${VERSION_TABLE} (
      version integer CONSTRAINT ${VERSION_TABLE}_pkey PRIMARY KEY,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`
  ]
]

export const SCHEMA_VERSION = MIGRATIONS.length

/**
 * The advisory lock serialising schema work on one schema across replicas: a fixed 64-bit key from
 * the schema's name, so two hosts sharing a database but not a schema do not wait for each other.
 */
export function schemaLockKey (schema: string): string {
  return createHash('sha256').update(`fastify-clearml-keycloak schema ${schema}`).digest().readBigInt64BE(0).toString()
}

/**
 * Creates the schema and its tables, or brings them to the current version. Idempotent, safe to run
 * from several replicas at once and on every start; the host's role needs CREATE on the database
 * only the first time (to create the schema) and on the schema when a version is applied.
 */
export async function createPostgresSchema (pool: Pool, options: PostgresSchemaOptions = {}): Promise<PostgresSchemaResult> {
  assertPool(pool)
  const schema = options.schema ?? DEFAULT_SCHEMA
  const s = quoteSchemaName(schema)
  return await inTransaction(pool, async (run) => {
    // Held until commit: the next replica then sees the finished tables and has nothing to do.
    await run('SELECT pg_advisory_xact_lock($1::bigint)', [schemaLockKey(schema)])
    // Not `CREATE SCHEMA IF NOT EXISTS`: PostgreSQL checks the CREATE privilege before it checks
    // existence, which would fail every start of a host whose role may not create schemas.
    const found = await run('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema])
    if (found.rowCount === 0) await run(`CREATE SCHEMA ${s}`)
    const table = await run<{ present: boolean }>('SELECT to_regclass($1) IS NOT NULL AS present', [`${s}.${VERSION_TABLE}`])
    const current = table.rows[0].present
      ? (await run<{ version: number }>(`SELECT coalesce(max(version), 0) AS version FROM ${s}.${VERSION_TABLE}`)).rows[0].version
      : 0
    const applied: number[] = []
    // A schema newer than this code (a later release already ran) is left as it is.
    for (const [index, migrate] of MIGRATIONS.entries()) {
      const version = index + 1
      if (version <= current) continue
      for (const statement of migrate(s)) await run(statement)
      await run(`INSERT INTO ${s}.${VERSION_TABLE} (version) VALUES ($1)`, [version])
      applied.push(version)
    }
    return { schema, version: Math.max(current, SCHEMA_VERSION), applied }
  })
}
