/**
 * `npm run mutate [-- <module>...] [-- --concurrency 2]`: one StrykerJS run per rule module (see
 * stryker.config.mjs), then the score of each and every surviving mutant. Not part of `npm test`:
 * it takes minutes.
 */
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { MODULES } from '../stryker.config.mjs'

const args = process.argv.slice(2)
const names = args.filter((arg) => !arg.startsWith('-') && !/^\d+$/.test(arg))
const strykerArgs = args.filter((arg) => !names.includes(arg))
for (const name of names) {
  if (!(name in MODULES)) throw new Error(`unknown module ${name}: one of ${Object.keys(MODULES).join(', ')}`)
}

const DETECTED = new Set(['Killed', 'Timeout'])
const INVALID = new Set(['CompileError', 'RuntimeError', 'Ignored'])
const rows = []
const survivors = []

for (const name of names.length > 0 ? names : Object.keys(MODULES)) {
  const run = spawnSync('npx', ['stryker', 'run', ...strykerArgs], { stdio: 'inherit', env: { ...process.env, MUTATE_MODULE: name } })
  if (run.status !== 0) throw new Error(`stryker failed for ${name} (exit ${run.status})`)
  const report = JSON.parse(readFileSync(`reports/mutation/${name}.json`, 'utf8'))
  for (const [file, { mutants }] of Object.entries(report.files)) {
    const valid = mutants.filter((m) => !INVALID.has(m.status))
    const detected = valid.filter((m) => DETECTED.has(m.status)).length
    rows.push({ module: name, file, detected, valid: valid.length, score: valid.length === 0 ? 100 : (100 * detected) / valid.length })
    for (const m of valid.filter((m) => !DETECTED.has(m.status))) {
      survivors.push(`${file}:${m.location.start.line}:${m.location.start.column} ${m.status} ${m.mutatorName}: ${JSON.stringify(m.replacement ?? '')}`)
    }
  }
}

console.log('\nmodule          detected/valid  score')
for (const row of rows) console.log(`${row.file.padEnd(20)} ${`${row.detected}/${row.valid}`.padStart(10)}  ${row.score.toFixed(1)}%`)
console.log(survivors.length === 0 ? '\nno surviving mutant' : `\n${survivors.length} surviving mutants:\n${survivors.join('\n')}`)
