/**
 * fastify-clearml-keycloak/postgres: the user directory on PostgreSQL (node-postgres), for
 * apiservers running as several replicas. pg is an optional peer dependency: only hosts that import
 * this entry need it, and the directory uses the host's own pool.
 *
 *   await createPostgresSchema(fastify.pg.pool)              // on every start; idempotent
 *   const directory = new PostgresDirectory({ pool: fastify.pg.pool })
 */
export { PostgresDirectory, type PostgresDirectoryOptions } from './directory.js'
export { createPostgresSchema, SCHEMA_VERSION, type PostgresSchemaOptions, type PostgresSchemaResult } from './schema.js'
export { PostgresDirectoryError, type PostgresDirectoryErrorCode } from './errors.js'
// The directory's types, so a host importing only this entry can name them.
export type { Company, DirectoryGroup, DirectoryUser, LinkedIdentity, NewUser, Role, UserDirectory, UserPatch, WhitelistEntry } from '../lib/directory/user-directory.js'
export type { WhitelistSeed } from '../lib/directory/memory-directory.js'
