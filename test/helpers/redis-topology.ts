/**
 * Redis as operators run it for high availability, from Debian's redis-server, for tests and
 * benchmarks: a Sentinel set (a primary, its replicas, three Sentinels) and a Cluster (primaries
 * with a replica each). Every process listens on 127.0.0.1 on a free port, in a temp directory of
 * its own, and is stopped by `stop()` and when the test process exits (`startRedisServer`).
 *
 *   const sentinel = await startSentinelSet()
 *   t.teardown(sentinel.stop)
 *   new Redis({ sentinels: sentinel.sentinels, name: sentinel.name })
 *   await sentinel.failover()          // SIGKILL of the primary; resolves once a replica is promoted
 *
 *   const cluster = await startRedisCluster()
 *   t.teardown(cluster.stop)
 *   new Cluster(cluster.startupNodes)
 *   await cluster.failover('{store}')  // SIGKILL of the primary of that key's slot; resolves once promoted
 *
 * Both wait, before they resolve and before a failover, until every replica has finished its first
 * synchronisation with its primary: a replica that never synced is not promoted (Sentinel skips it,
 * a Cluster replica's data is too old to be elected), and the failover would never happen.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import { startRedisServer, type RedisServer } from './redis-server.js'

const run = promisify(execFile)
export const REDIS_CLI_BINARY = process.env.REDIS_CLI ?? '/usr/bin/redis-cli'

export interface HostPort { host: string, port: number }

export interface SentinelSet {
  /** The name the Sentinels monitor the primary under (ioredis `name`). */
  readonly name: string
  /** The Sentinels' addresses (ioredis `sentinels`). */
  readonly sentinels: HostPort[]
  /** The data servers: at start the first is the primary, the others its replicas. */
  readonly servers: RedisServer[]
  /** The Sentinel processes. */
  readonly sentinelServers: RedisServer[]
  /** The server every Sentinel reports as primary now. */
  primary: () => Promise<RedisServer>
  /** Resolves once every running replica has finished its first sync and every Sentinel knows the others. */
  settled: () => Promise<void>
  /** SIGKILLs the primary; resolves once the Sentinels report a replica as the new primary, and that it has the role. */
  failover: () => Promise<{ killed: RedisServer, promoted: RedisServer }>
  /** `SENTINEL FAILOVER`: the primary stays up and becomes a replica; resolves once every Sentinel reports the new one. */
  manualFailover: () => Promise<{ demoted: RedisServer, promoted: RedisServer }>
  stop: () => Promise<void>
}

export interface SentinelSetOptions {
  replicas?: number
  /** Sentinel's `down-after-milliseconds` (1000): how long a silent primary takes to be declared down. */
  downAfterMs?: number
  /** Extra redis-server arguments for the data servers. */
  args?: string[]
}

export interface RedisCluster {
  /** ioredis `Cluster` startup nodes: every node. */
  readonly startupNodes: HostPort[]
  readonly servers: RedisServer[]
  /** The server that is primary for `key`'s slot now, as the nodes still running agree. */
  primaryOf: (key: string) => Promise<RedisServer>
  /** Resolves once the cluster state is ok on every running node and every running replica has synced. */
  settled: () => Promise<void>
  /**
   * SIGKILLs the primary of `key`'s slot, runs `during` (what a test does while it is gone), and
   * resolves once one of its replicas owns the slot on every running node.
   */
  failover: (key: string, during?: () => Promise<void>) => Promise<{ killed: RedisServer, promoted: RedisServer }>
  /** `CLUSTER FAILOVER` on a replica of `key`'s primary (no data lost); resolves once it owns the slot on every node. */
  manualFailover: (key: string) => Promise<{ demoted: RedisServer, promoted: RedisServer }>
  stop: () => Promise<void>
}

export interface RedisClusterOptions {
  primaries?: number
  /** `cluster-node-timeout` (1000 ms): how long an unreachable primary takes to be failed over. */
  nodeTimeoutMs?: number
  args?: string[]
}

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `check` until it returns a value other than undefined; fails with `what` after `timeoutMs`. */
async function until<T> (what: string, check: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await check()
      if (value !== undefined) return value
    } catch (err) {
      lastError = err
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${lastError === undefined ? '' : ` (${(lastError as Error).message})`}`)
    await sleep(50)
  }
}

/** One command on a connection of its own, closed at once (helpers must not hold connections a failover would keep). */
async function ask (server: HostPort, ...args: Array<string | number>): Promise<unknown> {
  const redis = new Redis(server.port, server.host, { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0, connectTimeout: 2000, enableOfflineQueue: true })
  redis.on('error', () => {})
  try {
    await redis.connect()
    return await redis.call(String(args[0]), ...args.slice(1))
  } finally {
    redis.disconnect()
  }
}

/** `INFO replication` as a map. */
async function replicationInfo (server: HostPort): Promise<Map<string, string>> {
  const text = String(await ask(server, 'INFO', 'replication'))
  return new Map(text.split(/\r?\n/).filter((line) => line.includes(':')).map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1)]))
}

/** A replica whose first synchronisation is done: linked to its primary, not loading a transfer. */
async function replicaSynced (server: RedisServer): Promise<boolean> {
  const info = await replicationInfo(server)
  return info.get('role') === 'slave' && info.get('master_link_status') === 'up' && info.get('master_sync_in_progress') === '0'
}

async function stopAll (servers: RedisServer[]): Promise<void> {
  await Promise.all(servers.map(async (server) => { await server.stop() }))
}

export async function startSentinelSet (options: SentinelSetOptions = {}): Promise<SentinelSet> {
  const name = 'clearml'
  const started: RedisServer[] = []
  try {
    const primary = await startRedisServer({ args: ['--repl-diskless-sync-delay', '0', ...(options.args ?? [])] })
    started.push(primary)
    const replicas = await Promise.all(Array.from({ length: options.replicas ?? 1 }, async () => {
      const replica = await startRedisServer({ args: [...(options.args ?? []), '--replicaof', primary.host, String(primary.port)] })
      started.push(replica)
      return replica
    }))
    const servers = [primary, ...replicas]
    const sentinelServers = await Promise.all([0, 1, 2].map(async () => {
      const sentinel = await startRedisServer({
        sentinel: [
          `sentinel monitor ${name} ${primary.host} ${primary.port} 2`,
          `sentinel down-after-milliseconds ${name} ${options.downAfterMs ?? 1000}`,
          // The least Sentinel accepts; a failed attempt is retried after twice this.
          `sentinel failover-timeout ${name} 5000`,
          `sentinel parallel-syncs ${name} 1`
        ]
      })
      started.push(sentinel)
      return sentinel
    }))
    const sentinels = sentinelServers.map((s) => ({ host: s.host, port: s.port }))

    const reportedPrimary = async (sentinel: RedisServer): Promise<RedisServer | undefined> => {
      const [, port] = await ask(sentinel, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name) as [string, string]
      return servers.find((server) => server.port === Number(port))
    }
    const primaryNow = async (): Promise<RedisServer> => await until('the Sentinels to agree on a primary', async () => {
      const reports = await Promise.all(sentinelServers.filter((s) => s.running).map(reportedPrimary))
      const first = reports[0]
      if (first === undefined || !first.running || reports.some((r) => r !== first)) return undefined
      return (await replicationInfo(first)).get('role') === 'master' ? first : undefined
    })
    const settled = async (): Promise<void> => {
      const current = await primaryNow()
      await until('every replica\'s first sync', async () => {
        const synced = await Promise.all(servers.filter((s) => s.running && s !== current).map(replicaSynced))
        return synced.every(Boolean) ? true : undefined
      })
      // A Sentinel that has not discovered the others (hello messages, every 2 s) cannot be elected
      // to run a failover; one that does not list the replica would not promote it.
      await until('the Sentinels to know each other and the replicas', async () => {
        const known = await Promise.all(sentinelServers.map(async (sentinel) => {
          const peers = await ask(sentinel, 'SENTINEL', 'SENTINELS', name) as unknown[]
          const replicasKnown = await ask(sentinel, 'SENTINEL', 'REPLICAS', name) as unknown[]
          return peers.length === sentinelServers.length - 1 && replicasKnown.length >= servers.filter((s) => s.running).length - 1
        }))
        return known.every(Boolean) ? true : undefined
      })
    }
    await settled()
    return {
      name,
      sentinels,
      servers,
      sentinelServers,
      primary: primaryNow,
      settled,
      failover: async () => {
        await settled()
        const killed = await primaryNow()
        await killed.kill()
        const promoted = await until('a replica to be promoted', async () => {
          const reports = await Promise.all(sentinelServers.map(reportedPrimary))
          const candidate = reports[0]
          if (candidate === undefined || candidate === killed || reports.some((r) => r !== candidate)) return undefined
          return (await replicationInfo(candidate)).get('role') === 'master' ? candidate : undefined
        })
        return { killed, promoted }
      },
      manualFailover: async () => {
        await settled()
        const demoted = await primaryNow()
        await ask(sentinelServers[0], 'SENTINEL', 'FAILOVER', name)
        const promoted = await until('the Sentinels to report the new primary', async () => {
          const candidate = await primaryNow()
          return candidate !== demoted ? candidate : undefined
        })
        return { demoted, promoted }
      },
      stop: async () => { await stopAll(started) }
    }
  } catch (err) {
    await stopAll(started)
    throw err
  }
}

interface SlotRange { from: number, to: number, primary: number, replicas: number[] }

/** `CLUSTER SLOTS` as ranges of ports. */
async function slotRanges (server: HostPort): Promise<SlotRange[]> {
  const reply = await ask(server, 'CLUSTER', 'SLOTS') as Array<[number, number, ...Array<[string, number, ...unknown[]]>]>
  return reply.map(([from, to, primary, ...replicas]) => ({ from, to, primary: Number(primary[1]), replicas: replicas.map((r) => Number(r[1])) }))
}

export async function startRedisCluster (options: RedisClusterOptions = {}): Promise<RedisCluster> {
  const primaries = options.primaries ?? 3
  const started: RedisServer[] = []
  try {
    const servers = await Promise.all(Array.from({ length: primaries * 2 }, async () => {
      const server = await startRedisServer({
        args: [
          '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf',
          '--cluster-node-timeout', String(options.nodeTimeoutMs ?? 1000),
          // A replica's first sync starts at once (the default waits 5 s for other replicas to join it).
          '--repl-diskless-sync-delay', '0',
          ...(options.args ?? [])
        ]
      })
      started.push(server)
      return server
    }))
    // The first `primaries` nodes get the slots; redis-cli gives each a replica among the others.
    await run(REDIS_CLI_BINARY, ['--cluster', 'create', ...servers.map((s) => `${s.host}:${s.port}`), '--cluster-replicas', '1', '--cluster-yes'])
    const running = (): RedisServer[] => servers.filter((s) => s.running)
    const byPort = (port: number): RedisServer => servers.find((s) => s.port === port)!
    const keySlot = async (key: string): Promise<number> => Number(await ask(running()[0], 'CLUSTER', 'KEYSLOT', key))
    const ownerOf = async (slot: number): Promise<SlotRange | undefined> => {
      // Every running node must agree, or a client may still be sent to the old primary.
      const views = await Promise.all(running().map(async (server) => (await slotRanges(server)).find((r) => r.from <= slot && slot <= r.to)))
      const first = views[0]
      if (first === undefined || views.some((v) => v?.primary !== first.primary) || !byPort(first.primary).running) return undefined
      return first
    }
    const settled = async (): Promise<void> => {
      await until('cluster_state:ok on every node', async () => {
        const states = await Promise.all(running().map(async (server) => String(await ask(server, 'CLUSTER', 'INFO'))))
        return states.every((info) => info.includes('cluster_state:ok') && info.includes('cluster_slots_ok:16384')) ? true : undefined
      })
      await until('every replica\'s first sync', async () => {
        const roles = await Promise.all(running().map(async (server) => (await replicationInfo(server)).get('role') === 'master' || await replicaSynced(server)))
        return roles.every(Boolean) ? true : undefined
      })
    }
    await settled()
    const primaryOf = async (key: string): Promise<RedisServer> => {
      const slot = await keySlot(key)
      return byPort((await until(`one primary for slot ${slot}`, async () => await ownerOf(slot))).primary)
    }
    const replicaOf = async (primary: RedisServer): Promise<RedisServer> => await until(`a synced replica of ${primary.port}`, async () => {
      for (const server of running()) {
        const info = await replicationInfo(server)
        if (info.get('master_port') === String(primary.port) && await replicaSynced(server)) return server
      }
      return undefined
    })
    return {
      startupNodes: servers.map((s) => ({ host: s.host, port: s.port })),
      servers,
      primaryOf,
      settled,
      failover: async (key, during) => {
        await settled()
        const slot = await keySlot(key)
        const killed = await primaryOf(key)
        await killed.kill()
        await during?.()
        const promoted = await until(`a replica to own slot ${slot}`, async () => {
          const owner = await ownerOf(slot)
          return owner !== undefined && owner.primary !== killed.port ? byPort(owner.primary) : undefined
        })
        return { killed, promoted }
      },
      manualFailover: async (key) => {
        await settled()
        const slot = await keySlot(key)
        const demoted = await primaryOf(key)
        const promoted = await replicaOf(demoted)
        await ask(promoted, 'CLUSTER', 'FAILOVER')
        await until(`${promoted.port} to own slot ${slot}`, async () => (await ownerOf(slot))?.primary === promoted.port ? true : undefined)
        return { demoted, promoted }
      },
      stop: async () => { await stopAll(started) }
    }
  } catch (err) {
    await stopAll(started)
    throw err
  }
}
