/**
 * Several replicas on a Redis Cluster (issue #24; test/helpers/replicas-suite.ts): the same three
 * apiserver processes behind a round-robin proxy, each on an ioredis `Cluster` client
 * (`REDIS_CLUSTER_NODES`), logins, logouts and back-channel logout across replicas as on a single
 * Redis; its outage is a SIGKILL of the primary holding the store's keys, until its replica is
 * promoted.
 */
import t from 'tap'
import { startRedisCluster } from './helpers/redis-topology.js'
import { replicasSuite } from './helpers/replicas-suite.js'
import { DEFAULT_KEY_PREFIX } from '../redis/index.js'
import { redisNames } from '../redis/layout.js'

const cluster = await startRedisCluster()
await replicasSuite(t, {
  env: { REDIS_CLUSTER_NODES: cluster.startupNodes.map((node) => `${node.host}:${node.port}`).join(',') },
  outage: 'the primary of the store\'s slot SIGKILLed, its replica promoted',
  interrupt: async (during) => { await cluster.failover(redisNames(DEFAULT_KEY_PREFIX).epoch, during) },
  stop: cluster.stop
})
