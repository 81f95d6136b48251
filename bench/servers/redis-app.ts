/**
 * One apiserver replica under benchmark, in its own process, with a RedisRevocationStore on its own
 * ioredis client: a bare route, the same route behind `authenticate`, and routes through which the
 * runner (`bench/redis.ts`) makes revocations here and watches those made by another replica arrive.
 * argv: issuer, Redis URL (or `cluster:host:port,host:port,...` for a Redis Cluster). Prints one
 * JSON line { port, sessionToken, loaded } when listening.
 *
 * Times are `performance.timeOrigin + performance.now()`: milliseconds on the machine's clock with
 * sub-millisecond resolution, comparable between processes on one machine.
 */
import Fastify from 'fastify'
import { Cluster, Redis } from 'ioredis'
import clearmlKeycloak, { MemoryDirectory } from '../../index.js'
import { RedisRevocationStore } from '../../redis/index.js'

const [issuer, redisUrl] = process.argv.slice(2)
const clock = (): number => performance.timeOrigin + performance.now()

const redis = redisUrl.startsWith('cluster:')
  ? new Cluster(redisUrl.slice('cluster:'.length).split(',').map((node) => ({ host: node.slice(0, node.lastIndexOf(':')), port: Number(node.slice(node.lastIndexOf(':') + 1)) })))
  : new Redis(redisUrl)
// Connection errors are the store's to report (its warnings); ioredis would print each attempt.
redis.on('error', () => {})
const revocations = new RedisRevocationStore({ redis })
let loaded = 0
revocations.once('synced', (report) => { loaded = report.loaded })
await revocations.ready()

/** Ids the runner waits for, and when each arrived in this replica's local copy. */
let watched = new Map<string, number | undefined>()
let missing = 0
let allSeen: () => void = () => {}
revocations.on('received', (ids) => {
  const at = clock()
  for (const id of ids) {
    if (watched.has(id) && watched.get(id) === undefined) {
      watched.set(id, at)
      if (--missing === 0) allSeen()
    }
  }
})

const app = Fastify({ logger: false, bodyLimit: 10 * 2 ** 20 })
await app.register(clearmlKeycloak, {
  directory: new MemoryDirectory(),
  webappUrl: 'http://127.0.0.1:1',
  revocations,
  env: {
    CLEARML__services__login__sso__oauth_client__keycloak__base_url: issuer,
    CLEARML__secure__login__sso__oauth_client__keycloak__client_id: 'clearml',
    CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: 'bench-secret',
    CLEARML__secure__auth__token_secret: 'bench-token-secret-of-at-least-32-bytes'
  }
})
app.get('/bare', async () => ({ ok: true }))
app.get('/protected', { preHandler: app.keycloak.authenticate }, async () => ({ ok: true }))

app.post<{ Body: { ids: string[] } }>('/bench/watch', async (request) => {
  watched = new Map(request.body.ids.map((id) => [id, undefined]))
  missing = watched.size
  return {}
})
app.get('/bench/seen', async () => {
  if (missing > 0) {
    await new Promise<void>((resolve) => {
      allSeen = resolve
      setTimeout(resolve, 10_000)
    })
  }
  return { seenAt: Object.fromEntries(watched), missing }
})
/**
 * Revokes `ids` here: one every `intervalMs` (a steady stream of logouts), or all at once when it
 * is 0 (a burst). Answers when each revocation was made and how long each `revoke` took.
 */
app.post<{ Body: { ids: string[], intervalMs: number } }>('/bench/revoke', async (request) => {
  const { ids, intervalMs } = request.body
  const expiresAt = Math.floor(Date.now() / 1000) + 3600
  const revokedAt: Record<string, number> = {}
  const revokeMs: number[] = []
  await Promise.all(ids.map(async (id, i) => {
    if (intervalMs > 0) await new Promise((resolve) => setTimeout(resolve, i * intervalMs))
    const started = clock()
    revokedAt[id] = started
    await revocations.revoke(id, expiresAt)
    revokeMs.push(clock() - started)
  }))
  return { revokedAt, revokeMs }
})
app.get('/stats', async () => {
  globalThis.gc?.()
  return { cpu: process.cpuUsage(), memory: process.memoryUsage(), revocations: revocations.size, queued: revocations.queued }
})
app.post('/exit', async () => {
  setImmediate(() => {
    revocations.close().then(() => { redis.disconnect(); process.exit(0) }, () => process.exit(1))
  })
  return {}
})
await app.listen({ port: 0, host: '127.0.0.1' })
// A session as a login makes it, with a Keycloak session id: authenticate checks both revocations.
const session = await app.keycloak.sso.sessions.issue({ id: 'u0', company: 'acme', name: 'Bench', role: 'user' }, { id: 'acme', name: 'Acme' }, 'bench-session', 'bench-keycloak-session')
console.log(JSON.stringify({ port: (app.server.address() as { port: number }).port, sessionToken: session.token, loaded }))
