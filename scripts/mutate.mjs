/**
 * `npm run mutate [-- <module>... [stryker options, e.g. --concurrency 2]]`: one StrykerJS run per rule module (see
 * stryker.config.mjs), then the score of each and every surviving mutant. A survivor listed in
 * docs/mutation.md as equivalent (same place, mutator and replacement) is expected; any other fails
 * the command. Not part of `npm test`: it takes minutes.
 */
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { MODULES } from '../stryker.config.mjs'

const args = process.argv.slice(2)
const names = args.filter((arg, i) => !arg.startsWith('-') && !(args[i - 1] ?? '').startsWith('-'))
const strykerArgs = args.filter((arg) => !names.includes(arg))
for (const name of names) {
  if (!(name in MODULES)) throw new Error(`unknown module ${name}: one of ${Object.keys(MODULES).join(', ')}`)
}

const DETECTED = new Set(['Killed', 'Timeout'])
const INVALID = new Set(['CompileError', 'RuntimeError', 'Ignored'])
const oneLine = (code) => code.replace(/\s+/g, ' ').trim()

/** `| \`lib/x.ts:L:C\` | Mutator | \`replacement\` | reason |` rows of docs/mutation.md's equivalents table. */
function documentedEquivalents () {
  const keys = new Set()
  for (const line of readFileSync('docs/mutation.md', 'utf8').split('\n')) {
    const cells = line.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, '|'))
    const where = /^`(lib\/[^`]+:\d+:\d+)`$/.exec(cells[1] ?? '')
    const replacement = /^`(.*)`$/.exec(cells[3] ?? '')
    if (where !== null && replacement !== null) keys.add(`${where[1]} ${cells[2]} ${oneLine(replacement[1])}`)
  }
  return keys
}

/** The original code a mutant replaced, from the report's copy of the source. */
function original (source, { start, end }) {
  const lines = source.split('\n').slice(start.line - 1, end.line)
  lines[lines.length - 1] = lines[lines.length - 1].slice(0, end.column - 1)
  lines[0] = lines[0].slice(start.column - 1)
  return oneLine(lines.join('\n'))
}

const equivalents = documentedEquivalents()
const rows = []
const unexpected = []
let expected = 0

for (const name of names.length > 0 ? names : Object.keys(MODULES)) {
  const run = spawnSync('npx', ['stryker', 'run', ...strykerArgs], { stdio: 'inherit', env: { ...process.env, MUTATE_MODULE: name } })
  if (run.status !== 0) throw new Error(`stryker failed for ${name} (exit ${run.status})`)
  const report = JSON.parse(readFileSync(`reports/mutation/${name}.json`, 'utf8'))
  for (const [file, { source, mutants }] of Object.entries(report.files)) {
    const valid = mutants.filter((m) => !INVALID.has(m.status))
    const survivors = valid.filter((m) => !DETECTED.has(m.status))
    const documented = survivors.filter((m) => equivalents.has(`${file}:${m.location.start.line}:${m.location.start.column} ${m.mutatorName} ${oneLine(m.replacement ?? '')}`))
    expected += documented.length
    rows.push({ file, detected: valid.length - survivors.length, valid: valid.length, equivalent: documented.length })
    for (const m of survivors.filter((m) => !documented.includes(m))) {
      unexpected.push(`${file}:${m.location.start.line}:${m.location.start.column} ${m.status} ${m.mutatorName}: \`${original(source, m.location)}\` → \`${oneLine(m.replacement ?? '')}\``)
    }
  }
}

const percent = (part, whole) => `${(whole === 0 ? 100 : (100 * part) / whole).toFixed(1)}%`
console.log('\nfile                   killed/valid   score   equivalent   score without them')
for (const row of rows) {
  console.log(`${row.file.padEnd(22)} ${`${row.detected}/${row.valid}`.padStart(12)}  ${percent(row.detected, row.valid).padStart(6)}  ${String(row.equivalent).padStart(11)}   ${percent(row.detected, row.valid - row.equivalent).padStart(6)}`)
}
console.log(`\n${expected} surviving mutants documented as equivalent in docs/mutation.md`)
if (unexpected.length > 0) {
  console.log(`${unexpected.length} surviving mutants not documented as equivalent:\n${unexpected.join('\n')}`)
  process.exitCode = 1
}
