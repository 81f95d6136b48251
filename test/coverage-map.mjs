// Coverage is measured on the package's own code only: not on the example provider or test helpers.
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'

const dirs = ['lib', 'plugins', 'schemas', 'redis', 'postgres', 'doctor', 'bin'].filter((dir) => existsSync(dir))
// lib/ has a folder per concern: every .ts file below each directory counts.
const files = ['index.ts', ...dirs.flatMap((dir) => readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts')).map((f) => join(dir, f)))]

export default () => files
