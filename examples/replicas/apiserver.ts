/**
 * One apiserver replica of several behind a load balancer: the example apiserver with its logouts,
 * used login transactions and large ID tokens in Redis (`RedisRevocationStore`) and its users and
 * groups in PostgreSQL (`PostgresDirectory`), wired as README "Running several replicas" tells a
 * host. `examples/keycloak/docker-compose.yml` runs two of them behind nginx; the replica test runs
 * three behind a round-robin proxy.
 *
 * Environment: the CLEARML__ variables (identical on every replica: the same client secret and
 * token_secret, so any replica opens what another sealed), WEBAPP_URL (public origin), PORT, HOST
 * (default 127.0.0.1; containers set 0.0.0.0), DATABASE_URL (pg), and Redis as one of:
 * REDIS_URL (a single Redis), REDIS_SENTINELS (`host:port,host:port,...`) with REDIS_SENTINEL_NAME
 * (the monitored primary's name), or REDIS_CLUSTER_NODES (`host:port,...`, some of a Cluster's
 * nodes). The clients are built as README "Running several replicas" shows.
 * Prints one JSON line `{ "listening": <url> }` when it serves.
 *
 * The sources are imported by path: the containers run this file with tsx and build no dist/.
 */
import { Cluster, Redis } from 'ioredis'
import pg from 'pg'
import { RedisRevocationStore } from '../../redis/index.js'
import { createPostgresSchema, PostgresDirectory } from '../../postgres/index.js'
import { buildApiserver, clearmlVariables, seedDemoCompany } from '../apiserver.js'

function required (name: string): string {
  const value = process.env[name]
  if (value === undefined || value === '') throw new Error(`${name} is required (see the comment at the top of examples/replicas/apiserver.ts)`)
  return value
}

const webappUrl = required('WEBAPP_URL')
const port = Number(process.env.PORT ?? new URL(webappUrl).port)
const host = process.env.HOST ?? '127.0.0.1'

const hostPorts = (list: string): Array<{ host: string, port: number }> => list.split(',').map((entry) => {
  const at = entry.lastIndexOf(':')
  return { host: entry.slice(0, at), port: Number(entry.slice(at + 1)) }
})

/** The host's ioredis client for the topology the environment names. */
function redisClient (): Redis | Cluster {
  const cluster = process.env.REDIS_CLUSTER_NODES
  // A Cluster: ioredis follows MOVED and failovers; the store needs Redis 7 (sharded pub/sub).
  if (cluster !== undefined && cluster !== '') return new Cluster(hostPorts(cluster))
  const sentinels = process.env.REDIS_SENTINELS
  // Sentinel: failoverDetector reconnects when the Sentinels announce a new primary, also after a
  // failover in which the old primary stays reachable (a manual or graceful one).
  if (sentinels !== undefined && sentinels !== '') return new Redis({ sentinels: hostPorts(sentinels), name: required('REDIS_SENTINEL_NAME'), failoverDetector: true })
  return new Redis(required('REDIS_URL'))
}

// The host owns its clients, as @fastify/redis and @fastify/postgres do; the plugin only uses them.
const redis = redisClient()
// Connection errors are the store's to report (its warnings, once per outage); ioredis would print
// every reconnection attempt.
redis.on('error', () => {})
const pool = new pg.Pool({ connectionString: required('DATABASE_URL'), connectionTimeoutMillis: 5000 })
// An idle client whose server went away emits 'error' on the pool: without a listener, pg throws.
pool.on('error', () => {})

await createPostgresSchema(pool)
// Upserts: every replica may run it on every start.
await seedDemoCompany(new PostgresDirectory({ pool }))
const directory = new PostgresDirectory({ pool })
const revocations = new RedisRevocationStore({ redis })
await revocations.ready()

const app = await buildApiserver({ env: clearmlVariables(process.env), webappUrl, directory, revocations })
app.addHook('onClose', async () => {
  await revocations.close()
  redis.disconnect()
  await pool.end()
})
await app.listen({ port, host })
process.stdout.write(JSON.stringify({ listening: `http://${host}:${port}` }) + '\n')

const stop = (): void => { app.close().then(() => process.exit(0), () => process.exit(1)) }
process.once('SIGTERM', stop)
process.once('SIGINT', stop)
