import t from 'tap'
import { readFileSync } from 'node:fs'
import { withTable } from '../scripts/config-table.js'

t.test('the README configuration table matches the schema (run `npm run docs:config`)', async (t) => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  t.equal(withTable(readme), readme)
  t.throws(() => withTable('no markers'), /no config-table markers/)
})

t.test('the README starts with the two newcomer commands, and CI runs the same test command', async (t) => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const commands = [...readme.matchAll(/^```(?:sh|bash)\n([^\n]+)\n```/gm)].slice(0, 2).map((m) => m[1])
  t.strictSame(commands, ['npm ci && npm run demo', 'npm ci && npm test'])
  const ci = readFileSync(new URL('../.ci/run', import.meta.url), 'utf8')
  t.match(ci, /\nnpm test /, '.ci/run runs npm test')
})
