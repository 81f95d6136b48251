/**
 * A throwaway PostgreSQL from Debian's packages for tests: its own data directory in a temp folder,
 * listening on 127.0.0.1 and a private Unix socket only, trust authentication (nothing else can reach
 * it), durability off for speed. It can be stopped and started again on the same port and data, as an
 * operator restarting the database would, so tests can watch clients ride through an outage.
 *
 *   const server = await startPostgres()
 *   const pool = new pg.Pool({ connectionString: server.connectionString })
 *   await server.stop(); await server.start()
 *   await server.close()   // stops it and removes its files
 *
 * PostgreSQL refuses to run as root, so when the tests run as root the server runs as the `postgres`
 * system user (the Debian package creates it): the folder is handed to that user and the programs
 * are started through `setpriv` with its uid and gid.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { chown, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import { freePort } from '../../examples/free-port.js'

const run = promisify(execFile)

export interface PostgresServer {
  /** `postgresql://postgres@127.0.0.1:<port>/postgres` */
  readonly connectionString: string
  readonly port: number
  /**
   * Fast shutdown (PostgreSQL ends every session and exits); the data stays. `immediate`: as a crash
   * would (every backend exits at once without releasing its locks, and recovery runs at the next
   * start), so no transaction waiting on another's lock can slip through while sessions end.
   */
  stop: (options?: { immediate?: boolean }) => Promise<void>
  /** Starts it again on the same port and data; resolves once it accepts connections. */
  start: () => Promise<void>
  /** Stops it if it runs and removes its folder. Safe to call twice. */
  close: () => Promise<void>
}

export interface PostgresServerOptions {
  /** Extra `-c name=value` settings. */
  settings?: Record<string, string>
  /** How long to wait for it to accept connections, ms (default 30 s: the machine is shared). */
  readyTimeoutMs?: number
}

/** Debian installs each major version under /usr/lib/postgresql/<major>/bin; PG_BIN overrides. */
function binDir (): string {
  if (process.env.PG_BIN !== undefined) return process.env.PG_BIN
  const root = '/usr/lib/postgresql'
  const majors = existsSync(root) ? readdirSync(root).filter((name) => /^\d+$/.test(name)).map(Number).sort((a, b) => b - a) : []
  const found = majors.map((major) => join(root, String(major), 'bin')).find((dir) => existsSync(join(dir, 'postgres')))
  if (found === undefined) throw new Error('PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: apt-get install -y postgresql (or set PG_BIN)')
  return found
}

/**
 * How to launch a PostgreSQL program: through util-linux's `setpriv`, which drops to the `postgres`
 * user when we are root, and kills the server if this test process dies without its teardown (a
 * time-out, a crash), so no orphaned server keeps a port and a temp folder on a shared machine.
 */
function launcher (asRoot: boolean): (program: string, args: string[]) => [string, string[]] {
  const drop = asRoot ? ['--reuid', 'postgres', '--regid', 'postgres', '--clear-groups'] : []
  return (program, args) => ['setpriv', ['--pdeathsig', 'KILL', ...drop, '--', program, ...args]]
}

/** The uid and gid of `postgres`, to hand it the data folder. */
async function postgresUser (): Promise<{ uid: number, gid: number }> {
  try {
    const [uid, gid] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])])
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) }
  } catch {
    throw new Error('running as root needs the postgres system user (apt-get install -y postgresql creates it)')
  }
}

/** The last lines a process wrote, to explain a failure. */
function tail (lines: string[]): string {
  return lines.slice(-20).join('').trim()
}

export async function startPostgres (options: PostgresServerOptions = {}): Promise<PostgresServer> {
  const bin = binDir()
  const asRoot = process.getuid?.() === 0
  const command = launcher(asRoot)
  const root = await mkdtemp(join(tmpdir(), 'clearml-kc-pg-'))
  const dataDir = join(root, 'data')
  await mkdir(dataDir, { mode: 0o700 })
  if (asRoot) {
    const user = await postgresUser()
    await chown(root, user.uid, user.gid)
    await chown(dataDir, user.uid, user.gid)
  }
  const spawnOptions = { cwd: root, env: { ...process.env, LC_ALL: 'C', TZ: 'UTC' } }

  try {
    await run(...command(join(bin, 'initdb'), [
      '-D', dataDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C', '--no-sync', '--no-instructions'
    ]), spawnOptions)
  } catch (err) {
    await rm(root, { recursive: true, force: true })
    throw new Error(`initdb failed: ${(err as { stderr?: string }).stderr ?? String(err)}`)
  }

  const port = await freePort()
  const connectionString = `postgresql://postgres@127.0.0.1:${port}/postgres`
  const settings: Record<string, string> = {
    // A test database: losing it in a crash costs nothing, and the machine's disks are shared.
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    shared_buffers: '32MB',
    max_connections: '60',
    log_min_messages: 'warning',
    ...options.settings
  }
  const args = ['-D', dataDir, '-h', '127.0.0.1', '-p', String(port), '-k', root,
    ...Object.entries(settings).flatMap(([name, value]) => ['-c', `${name}=${value}`])]

  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  const output: string[] = []

  async function waitUntilReady (): Promise<void> {
    const deadline = Date.now() + (options.readyTimeoutMs ?? 30_000)
    for (;;) {
      if (child === undefined || child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`PostgreSQL exited while starting:\n${tail(output)}`)
      }
      const client = new pg.Client({ connectionString, connectionTimeoutMillis: 1000 })
      client.on('error', () => {})
      try {
        await client.connect()
        await client.query('SELECT 1')
        await client.end()
        return
      } catch (err) {
        await client.end().catch(() => {})
        if (Date.now() > deadline) throw new Error(`PostgreSQL did not accept connections in time (${String(err)}):\n${tail(output)}`)
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    }
  }

  async function start (): Promise<void> {
    if (child !== undefined) throw new Error('PostgreSQL is already running')
    output.length = 0
    // setpriv execs PostgreSQL in place: the child's pid is the server's, and signals reach it.
    const started = spawn(...command(join(bin, 'postgres'), args), { ...spawnOptions, stdio: ['ignore', 'pipe', 'pipe'] })
    child = started
    started.stdout?.on('data', (chunk: Buffer) => output.push(chunk.toString()))
    started.stderr?.on('data', (chunk: Buffer) => output.push(chunk.toString()))
    exited = new Promise((resolve) => started.once('exit', () => {
      if (child === started) child = undefined
      resolve()
    }))
    try {
      await waitUntilReady()
    } catch (err) {
      started.kill('SIGKILL')
      await exited
      throw err
    }
  }

  async function stop (options: { immediate?: boolean } = {}): Promise<void> {
    if (child === undefined) return
    // SIGINT is PostgreSQL's "fast" shutdown: it ends every session at once and exits cleanly.
    // SIGQUIT is "immediate": backends quit without cleanup, and the next start recovers from WAL.
    child.kill(options.immediate === true ? 'SIGQUIT' : 'SIGINT')
    await exited
  }

  let closed = false
  async function close (): Promise<void> {
    if (closed) return
    closed = true
    await stop()
    await rm(root, { recursive: true, force: true })
  }

  try {
    await start()
  } catch (err) {
    await close()
    throw err
  }
  return { connectionString, port, start, stop, close }
}
