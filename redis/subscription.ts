/**
 * The store's own pub/sub connection, on each topology ioredis gives a host:
 *
 * - **a `Redis` client** (standalone, or with `sentinels`): a duplicate of it, which ioredis
 *   reconnects as it reconnects the host's client (through the Sentinels to the current primary).
 * - **a `Cluster`**: a plain connection to the primary of the store's slot, subscribed to the
 *   store's sharded channel (`SSUBSCRIBE`). ioredis's own Cluster subscriber is not used: it
 *   subscribes on any node and moves between nodes silently, so a subscriber that missed messages,
 *   or a failover that lost writes, would go unnoticed (issue #24). This one says so every time:
 *   its connection closes when that primary fails, and Redis unsubscribes it when the slot moves to
 *   another node (a manual failover, a resharding). It then reconnects to wherever the slot is
 *   served now, following Redis's `MOVED` answers.
 *
 * Either way the store learns of every moment messages may have been missed (`lost`), and
 * subscribes again itself after each `ready` (`subscribe()`, then a full load).
 */
import { EventEmitter } from 'node:events'
import type { Cluster, Redis } from 'ioredis'
import { STORE_SLOT } from './layout.js'
import { noop } from './store-link.js'

export type SubscriptionEvents = {
  /** A message on the channel. */
  message: [message: string]
  /** A connection is ready: the store subscribes on it (`subscribe()`) and loads. */
  ready: []
  /** Messages may have been missed from now on: the connection closed, or Redis unsubscribed it. */
  lost: []
  /** What went wrong last, for the store's warnings (ioredis reports every failed attempt). */
  problem: [err: Error]
}

export interface Subscription extends EventEmitter<SubscriptionEvents> {
  /** Whether a connection is ready to subscribe on. */
  readonly ready: boolean
  /** Connects (a host client built with `lazyConnect` connects on first use). */
  start: () => void
  /** Subscribes on the current connection; rejects when it cannot (the store tries again). */
  subscribe: () => Promise<void>
  /** Unsubscribes and closes the connection; `bounded` limits the wait for Redis. */
  close: (bounded: <T>(command: Promise<T>) => Promise<T>) => Promise<void>
}

/** The subscription for the host's client: a Cluster gets one that follows the store's slot. */
export function subscribeFor (redis: Redis | Cluster, channel: string, slotKey: string, retryIntervalMs: number): Subscription {
  return redis.isCluster
    ? new ClusterSubscription(redis as Cluster, channel, slotKey, retryIntervalMs)
    : new ConnectionSubscription(redis as Redis, channel)
}

class ConnectionSubscription extends EventEmitter<SubscriptionEvents> implements Subscription {
  readonly #connection: Redis
  readonly #channel: string

  constructor (redis: Redis, channel: string) {
    super()
    this.#channel = channel
    // ioredis's own resubscription sends SUBSCRIBE without handling its failure: a connection lost
    // again before Redis answers is an unhandled rejection, which ends the host's process
    // (redis/ioredis#2187, not in ioredis 6.0.0). The store subscribes itself after each 'ready'.
    this.#connection = redis.duplicate({ autoResubscribe: false })
    this.#connection.on('message', (_channel: string, message: string) => this.emit('message', message))
    this.#connection.on('ready', () => this.emit('ready'))
    this.#connection.on('close', () => this.emit('lost'))
    this.#connection.on('error', (err: Error) => this.emit('problem', err))
  }

  get ready (): boolean {
    return this.#connection.status === 'ready'
  }

  start (): void {
    if (this.#connection.status === 'wait') this.#connection.connect().catch(noop)
  }

  async subscribe (): Promise<void> {
    await this.#connection.subscribe(this.#channel)
  }

  async close (bounded: <T>(command: Promise<T>) => Promise<T>): Promise<void> {
    this.#connection.removeAllListeners('ready')
    // QUIT lets Redis drop the subscription before close() resolves; without a connection there is
    // nothing to drop, and disconnect() stops the reconnection attempts.
    if (this.#connection.status === 'ready') await bounded(this.#connection.quit()).catch(noop)
    this.#connection.disconnect()
  }
}

/** `MOVED <slot> <host>:<port>`: where Redis says the slot is served (the host may be IPv6). */
function movedTo (err: unknown): { host: string, port: number } | undefined {
  const match = /^MOVED \d+ (.+):(\d+)$/.exec((err as Error).message)
  return match === null ? undefined : { host: match[1], port: Number(match[2]) }
}

class ClusterSubscription extends EventEmitter<SubscriptionEvents> implements Subscription {
  readonly #cluster: Cluster
  readonly #channel: string
  readonly #slotKey: string
  readonly #retryIntervalMs: number
  #connection: Redis | undefined
  /** Where the last `MOVED` pointed: the next connection goes there at once. */
  #movedTo: { host: string, port: number } | undefined
  #attempts = 0
  #timer: NodeJS.Timeout | undefined
  constructor (cluster: Cluster, channel: string, slotKey: string, retryIntervalMs: number) {
    super()
    this.#cluster = cluster
    this.#channel = channel
    this.#slotKey = slotKey
    this.#retryIntervalMs = retryIntervalMs
  }

  get ready (): boolean {
    return this.#connection?.status === 'ready'
  }

  start (): void {
    this.#connect()
  }

  /**
   * Checks first, with a command on one of the store's keys, that the node is the slot's primary: a
   * replica (or another primary) answers `MOVED` to it. A subscriber on a replica would still
   * receive messages, but would not notice a failover of the primary that lost writes.
   */
  async subscribe (): Promise<void> {
    // Called right after `ready` was true: the connection is there.
    const connection = this.#connection!
    try {
      await connection.exists(this.#slotKey)
    } catch (err) {
      const target = movedTo(err)
      if (target !== undefined) {
        this.#movedTo = target
        // The host's client learns the new owner too, so its writes follow without waiting for its
        // next periodic refresh.
        this.#cluster.refreshSlotsCache()
        connection.disconnect()
      }
      throw err
    }
    await connection.ssubscribe(this.#channel)
  }

  async close (bounded: <T>(command: Promise<T>) => Promise<T>): Promise<void> {
    clearTimeout(this.#timer)
    const connection = this.#connection
    this.#connection = undefined
    if (connection === undefined) return
    if (connection.status === 'ready') await bounded(connection.quit()).catch(noop)
    connection.disconnect()
  }

  /** A node to connect to: where `MOVED` pointed, else the owner in the host's view of the slots, else (every other attempt, since that view may still name a dead node) any primary. */
  #template (): { node: Redis, address?: { host: string, port: number } } | undefined {
    const primaries = this.#cluster.nodes('master')
    const any = primaries[this.#attempts % Math.max(primaries.length, 1)] ?? this.#cluster.nodes('all')[0]
    if (any === undefined) return undefined
    const target = this.#movedTo
    this.#movedTo = undefined
    if (target !== undefined) return { node: any, address: target }
    const owner = this.#cluster.slots[STORE_SLOT]?.[0]
    const ownerNode = primaries.find((node) => `${node.options.host}:${node.options.port}` === owner)
    return { node: this.#attempts % 2 === 0 && ownerNode !== undefined ? ownerNode : any }
  }

  #connect (): void {
    this.#timer = undefined
    const template = this.#template()
    if (template === undefined) {
      this.#retry()
      return
    }
    // A node's own options (credentials, TLS, the host's redisOptions), as a plain connection that
    // does not reconnect by itself: the node may be gone for good, and the next attempt may go elsewhere.
    const connection = template.node.duplicate({ ...template.address, autoResubscribe: false, retryStrategy: () => null, lazyConnect: false, readOnly: false })
    this.#connection = connection
    connection.on('smessage', (_channel: string, message: string) => this.emit('message', message))
    connection.on('ready', () => {
      this.#attempts = 0
      this.emit('ready')
    })
    // An unsolicited SUNSUBSCRIBE (the slot moved away from this node) or MOVED to SSUBSCRIBE.
    connection.on('moved', () => {
      this.emit('lost')
      connection.disconnect()
    })
    connection.on('close', () => {
      if (this.#connection !== connection) return
      this.#connection = undefined
      this.emit('lost')
      this.#retry()
    })
    connection.on('error', (err: Error) => this.emit('problem', err))
  }

  /** Never after `close()`: it clears the timer, and the closed connection is no longer this one's. */
  #retry (): void {
    this.#attempts++
    this.#cluster.refreshSlotsCache()
    const delay = this.#movedTo !== undefined ? 0 : Math.min(50 * 2 ** Math.min(this.#attempts, 10), this.#retryIntervalMs)
    this.#timer = setTimeout(() => this.#connect(), delay).unref()
  }
}
