/**
 * What every benchmark runner shares: the knobs of a load measurement, the median, the printed
 * numbers, and starting, asking and stopping an apiserver under test in a process of its own.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'

export const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
export const DURATION = Number(process.env.BENCH_DURATION ?? 3)
export const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 50)

export function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

export interface Apiserver<Info> { process: ChildProcess, url: string, info: Info }

/** `n` with thousands separators and exactly `digits` decimals, for the printed tables. */
export const formatNumber = (n: number, digits = 0): string => n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })

/** A JSON POST to an apiserver under test (its set-up routes); anything but 2xx fails the run. */
export async function post<T> (server: { url: string }, path: string, body: unknown): Promise<T> {
  const answer = await fetch(server.url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (!answer.ok) throw new Error(`${path}: ${answer.status} ${await answer.text()}`)
  return await answer.json() as T
}

/** The server's CPU time so far, in µs (no garbage collection first, unlike /stats). */
export async function cpuTime (server: { url: string }): Promise<number> {
  const { user, system } = await (await fetch(`${server.url}/cpu`)).json() as { user: number, system: number }
  return user + system
}

/**
 * Runs `file` (relative to `bench/`) with tsx and `nodeFlags`; resolves with the JSON line it prints
 * once listening (`{ port, ... }`). A runner that fails does not leave it behind.
 */
export async function startApiserver<Info extends { port: number }> (file: string, args: string[], nodeFlags: string[] = []): Promise<Apiserver<Info>> {
  const child = spawn(process.execPath, ['--import', 'tsx', ...nodeFlags, new URL(file, import.meta.url).pathname, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  process.once('exit', () => child.kill())
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve)
    child.once('exit', (code) => reject(new Error(`${file} exited with ${code}`)))
  })
  const info = JSON.parse(line) as Info
  return { process: child, url: `http://127.0.0.1:${info.port}`, info }
}

/**
 * Stops an apiserver; one started with `--cpu-prof` is asked to exit normally, so that its profile is
 * written (a killed process writes none).
 */
export async function stopApiserver (server: Apiserver<{ port: number }>, profiled: boolean): Promise<void> {
  if (!profiled) {
    server.process.kill()
    return
  }
  server.process.removeAllListeners('exit')
  const exited = new Promise((resolve) => server.process.once('exit', resolve))
  await fetch(`${server.url}/exit`, { method: 'POST' })
  await exited
}
