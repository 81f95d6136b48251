/**
 * How the directory talks to the host's pool: every statement is parameterised and checked here,
 * and a transaction either commits, rolls back on purpose, or rolls back on failure and never hands
 * a broken connection back to the pool. The pool is the host's; nothing here ends it.
 */
import type { Pool, PoolClient, QueryResult, QueryResultRow } from 'pg'
import { PostgresDirectoryError, translatePgError } from './errors.js'

export type Run = <R extends QueryResultRow = QueryResultRow>(text: string, values?: unknown[]) => Promise<QueryResult<R>>

// PostgreSQL's text type cannot hold U+0000; refusing it here gives a clear error instead of an
// encoding error from the server, and keeps the value out of the server's log.
const holdsNul = (value: unknown): boolean =>
  (typeof value === 'string' && value.includes('\u0000')) || (Array.isArray(value) && value.some(holdsNul))

/**
 * The pool option must be a pg Pool. A Client has `query` and `connect` too, but its `connect` gives
 * no releasable client; the pool's documented `totalCount` tells them apart.
 */
export function assertPool (pool: unknown): asserts pool is Pool {
  const candidate = pool as Partial<Pool> | undefined
  if (typeof candidate?.query !== 'function' || typeof candidate.connect !== 'function' || typeof candidate.totalCount !== 'number') {
    throw new PostgresDirectoryError('invalid_pool', 'the pool option must be a pg Pool (for example fastify.pg.pool), not a Client')
  }
}

/** One parameterised statement on a pool or a checked-out client. */
export async function runOn <R extends QueryResultRow> (queryable: Pool | PoolClient, text: string, values: unknown[] = []): Promise<QueryResult<R>> {
  if (values.some(holdsNul)) throw new PostgresDirectoryError('invalid_input', 'text values cannot contain a NUL character')
  try {
    return await queryable.query<R>(text, values)
  } catch (err) {
    throw translatePgError(err)
  }
}

/** What a transaction returns to have its writes undone while still answering `value`. */
export class RolledBack<T> {
  constructor (readonly value: T) {}
}

/**
 * Runs `work` in one transaction on one connection of `pool`: committed when it returns a value,
 * rolled back when it returns `RolledBack` or throws.
 */
export async function inTransaction <T> (pool: Pool, work: (run: Run) => Promise<T | RolledBack<T>>): Promise<T> {
  const client = await pool.connect()
  // A checked-out client whose connection dies (PostgreSQL restarted, network cut) emits 'error'
  // besides failing the pending query; with no listener that event would crash the host process.
  // Remembering it also tells the pool to destroy this connection instead of reusing it.
  let broken: Error | undefined
  const onError = (err: Error): void => { broken = err }
  client.on('error', onError)
  const run: Run = async (text, values) => await runOn(client, text, values)
  let outcome: T | RolledBack<T>
  try {
    await client.query('BEGIN')
    outcome = await work(run)
    await client.query(outcome instanceof RolledBack ? 'ROLLBACK' : 'COMMIT')
  } catch (err) {
    await client.query('ROLLBACK').catch((rollbackError: Error) => { broken = rollbackError })
    throw err
  } finally {
    client.off('error', onError)
    client.release(broken)
  }
  return outcome instanceof RolledBack ? outcome.value : outcome
}
