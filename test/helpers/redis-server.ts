/**
 * A throwaway `redis-server` (Debian's) for tests and benchmarks: loopback only, a free port, a temp
 * directory, no persistence. It can be killed with SIGKILL, as a crash or an OOM kill would, and
 * started again on the same port, empty, as a Redis without persistence comes back after a restart.
 *
 *   const redis = await startRedisServer()
 *   t.teardown(redis.stop)
 *   new Redis(redis.url)            // or { host: redis.host, port: redis.port }
 *   await redis.kill()              // SIGKILL; clients see the connection drop
 *   await redis.start()             // same port, empty
 *
 * With `sentinel` it runs `redis-server <dir>/sentinel.conf --sentinel` instead (Sentinel rewrites
 * its configuration file, so it lives in the temp directory); `test/helpers/redis-topology.ts`
 * builds Sentinel sets and Clusters from these.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, rmSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from '../../examples/free-port.js'

export const REDIS_SERVER_BINARY = process.env.REDIS_SERVER ?? '/usr/bin/redis-server'
const SETPRIV = '/usr/bin/setpriv'

/** What to kill and remove when the test process exits: one 'exit' listener for every server (a Cluster starts six). */
const atExit = new Set<() => void>()
let listening = false
function onExit (cleanup: () => void): void {
  atExit.add(cleanup)
  if (listening) return
  listening = true
  process.once('exit', () => { for (const run of atExit) run() })
}

export interface RedisServer {
  readonly host: '127.0.0.1'
  readonly port: number
  /** `redis://127.0.0.1:<port>`, for `new Redis(url)`. */
  readonly url: string
  /** Whether the process is running now. */
  readonly running: boolean
  /** SIGKILL, then waits for the process to be gone. Everything it held is lost. */
  kill: () => Promise<void>
  /** Starts it again on the same port (empty) and waits until it answers PING. */
  start: () => Promise<void>
  /** Its temp directory (a Cluster node keeps its `nodes.conf` there across restarts). */
  readonly dir: string
  /** The end of what the running (or last) process printed, to explain a failure. */
  readonly log: string
  /** Kills it if running and removes its directory; for teardown. Safe to call twice. */
  stop: () => Promise<void>
}

export interface RedisServerOptions {
  /** Extra `redis-server` arguments, e.g. `['--maxmemory-policy', 'allkeys-lru']`. */
  args?: string[]
  /** Runs a Sentinel with these configuration lines (port, bind and dir are added). */
  sentinel?: string[]
}

/** Starts a redis-server on a free loopback port and waits until it answers. */
export async function startRedisServer (options: RedisServerOptions = {}): Promise<RedisServer> {
  if (!existsSync(REDIS_SERVER_BINARY)) {
    throw new Error(`${REDIS_SERVER_BINARY} not found: apt-get install -y redis-server (or set REDIS_SERVER)`)
  }
  const port = await freePort()
  const dir = await mkdtemp(join(tmpdir(), 'clearml-kc-redis-'))
  let child: ChildProcess | undefined
  let output: string[] = []
  let exited: Promise<void> = Promise.resolve()
  let stopped = false
  // A test that crashes must not leave a server, or its directory, behind.
  const killOnExit = (): void => {
    child?.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }
  onExit(killOnExit)
  let args = ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir,
    '--logfile', '', '--daemonize', 'no', ...(options.args ?? [])]
  if (options.sentinel !== undefined) {
    // Sentinel rewrites its configuration file as it learns the topology: it lives in the temp
    // directory, and a restarted Sentinel goes on from what it had learnt.
    const config = join(dir, 'sentinel.conf')
    await writeFile(config, [`port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, 'logfile ""', 'daemonize no', ...options.sentinel].join('\n') + '\n')
    args = [config, '--sentinel']
  }

  const start = async (): Promise<void> => {
    if (child !== undefined) throw new Error('redis-server is already running')
    output = []
    // With setpriv, the server dies with this process even when it is killed before its 'exit'
    // handler runs (a test runner's time-out): setpriv sets the parent-death signal, then execs it.
    const proc = existsSync(SETPRIV)
      ? spawn(SETPRIV, ['--pdeathsig', 'KILL', '--', REDIS_SERVER_BINARY, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(REDIS_SERVER_BINARY, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    child = proc
    const keep = (chunk: Buffer): void => {
      output.push(chunk.toString())
      if (output.length > 200) output.splice(0, 100)
    }
    proc.stdout!.on('data', keep)
    proc.stderr!.on('data', keep)
    exited = new Promise((resolve) => proc.once('exit', () => {
      if (child === proc) child = undefined
      resolve()
    }))
    const deadline = Date.now() + 10_000
    while (!await answersPing(port)) {
      if (child !== proc || Date.now() > deadline) {
        proc.kill('SIGKILL')
        throw new Error(`redis-server did not start on port ${port}:\n${output.join('').slice(-2000)}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }

  const kill = async (): Promise<void> => {
    child?.kill('SIGKILL')
    await exited
  }

  await start()
  return {
    host: '127.0.0.1',
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    get log () { return output.join('') },
    get running () { return child !== undefined },
    kill,
    start,
    stop: async () => {
      if (stopped) return
      stopped = true
      await kill()
      atExit.delete(killOnExit)
      await rm(dir, { recursive: true, force: true })
    }
  }
}

/** One inline PING over a fresh socket: true when the server answers `+PONG`. */
export async function answersPing (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    let reply = ''
    const done = (ok: boolean): void => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(1000, () => done(false))
    socket.once('error', () => done(false))
    socket.once('connect', () => socket.write('PING\r\n'))
    socket.on('data', (chunk) => {
      reply += chunk.toString()
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'))
    })
  })
}
