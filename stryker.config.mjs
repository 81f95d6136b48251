// @ts-check
/**
 * Mutation testing of the rule modules (issue #16, docs/mutation.md). One Stryker run per module,
 * chosen by MUTATE_MODULE (`npm run mutate` runs them all in turn, `npm run mutate -- policy` one),
 * each with only the tap files that exercise that module. A tap file runs as a plain node script
 * (non-zero exit when an assertion fails), which costs about a second per mutant where tap's runner
 * costs several; TAP_GREP narrows a shared file to the subtests of that module.
 */

const node = (file, grep) => `${grep === undefined ? '' : `TAP_GREP='${grep}' `}node --import tsx ${file}`

/** Module → the file mutated and the command that must fail when a mutant changes its behaviour. */
export const MODULES = {
  policy: { mutate: 'lib/rules/policy.ts', command: node('test/policy.test.ts') },
  identity: { mutate: 'lib/rules/identity.ts', command: node('test/identity.test.ts') },
  redirects: { mutate: 'lib/redirects.ts', command: node('test/units.test.ts', 'return path|post-logout') },
  revocations: { mutate: 'lib/session/revocations.ts', command: node('test/units.test.ts', 'revocation store') },
  'clearml-env': { mutate: 'lib/config/clearml-env.ts', command: node('test/config.test.ts') },
  config: { mutate: 'lib/config/settings.ts', command: node('test/config.test.ts') },
  // The session fast path (#15): the verifier against jose, the cache against a model of its policy.
  'session-token': { mutate: 'lib/session/token-verifier.ts', command: node('test/session-fast-path.test.ts', 'named cases|empty secret|clock decides|property: on generated|property: any one|property: segments') },
  'credential-cache': { mutate: 'lib/session/credential-cache.ts', command: node('test/session-fast-path.test.ts', 'CredentialCache|session cache|asynchronously') },
  session: { mutate: 'lib/session/sessions.ts', command: `${node('test/session-fast-path.test.ts', 'session tokens|session cache|asynchronously|sessionCacheMax')} && ${node('test/units.test.ts', 'session')}` }
}

const name = process.env.MUTATE_MODULE ?? 'policy'
const module = MODULES[name]
if (module === undefined) throw new Error(`MUTATE_MODULE=${name}: not one of ${Object.keys(MODULES).join(', ')}`)

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'command',
  commandRunner: { command: module.command },
  // The command runner cannot tell which test covers which mutant: every mutant runs the command.
  coverageAnalysis: 'off',
  mutate: [module.mutate],
  // Two cores shared with other work: one mutant at a time by default (`--concurrency 2` to go faster).
  concurrency: 1,
  reporters: ['clear-text', 'progress', 'json', 'html'],
  jsonReporter: { fileName: `reports/mutation/${name}.json` },
  htmlReporter: { fileName: `reports/mutation/${name}.html` },
  clearTextReporter: { allowColor: false, logTests: false },
  ignorePatterns: ['coverage', '.tap', 'dist', 'reports', 'docs/screenshots'],
  // A loaded machine makes a run's time vary; a mutant that loops is still caught well within this.
  timeoutMS: 10000,
  tempDirName: '.stryker-tmp',
  cleanTempDir: true
}
