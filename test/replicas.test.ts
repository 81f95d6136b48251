/**
 * Several replicas on a single redis-server (test/helpers/replicas-suite.ts): three apiserver
 * processes behind a round-robin proxy; its outage is a SIGKILL and a start again, empty.
 */
import t from 'tap'
import { startRedisServer } from './helpers/redis-server.js'
import { replicasSuite } from './helpers/replicas-suite.js'

const redis = await startRedisServer()
await replicasSuite(t, {
  env: { REDIS_URL: redis.url },
  outage: 'redis-server killed and started again (empty)',
  interrupt: async (during) => {
    await redis.kill()
    await during()
    await redis.start() // empty: everything Redis held is gone
  },
  stop: redis.stop
}, { postgresOutage: true })
