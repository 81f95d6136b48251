/**
 * The package as a host gets it: `npm pack`, installed into a scratch project, imported by Node.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const scratch = mkdtempSync(join(tmpdir(), 'fastify-clearml-keycloak-'))
const run = (command: string, args: string[], cwd: string): string =>
  execFileSync(command, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, npm_config_loglevel: 'error' } })

t.test('npm pack, install into a scratch project, import', async (t) => {
  const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', scratch], root))[0]
  const files: string[] = packed.files.map((f: { path: string }) => f.path)
  t.ok(files.includes('dist/index.js') && files.includes('dist/index.d.ts'), 'built JavaScript and declarations')
  t.ok(files.includes('README.md') && files.includes('CHANGELOG.md'))
  t.notOk(files.some((f) => f.startsWith('test/') || f.startsWith('examples/') || (f.endsWith('.ts') && !f.endsWith('.d.ts'))), 'no tests, examples or sources')

  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }))
  run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(scratch, readdirSync(scratch).find((f) => f.endsWith('.tgz'))!)], scratch)
  const keys = JSON.parse(run('node', ['-e', "import('fastify-clearml-keycloak').then(m => console.log(JSON.stringify(Object.keys(m).sort())))"], scratch))
  for (const name of ['default', 'clearmlKeycloak', 'loadConfig', 'MemoryDirectory', 'testDirectory', 'ConfigError', 'SsoError', 'MemoryRevocationStore']) {
    t.ok(keys.includes(name), `exports ${name}`)
  }
  const smoke = run('node', ['--input-type=module', '-e', `
    import Fastify from 'fastify'
    import clearmlKeycloak, { MemoryDirectory } from 'fastify-clearml-keycloak'
    const app = Fastify()
    await app.register(clearmlKeycloak, { directory: new MemoryDirectory(), webappUrl: 'https://clearml.example.com', env: {
      CLEARML__services__login__sso__oauth_client__keycloak__base_url: 'https://kc.example.com/realms/clearml',
      CLEARML__secure__login__sso__oauth_client__keycloak__client_id: 'clearml',
      CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: 's',
      CLEARML__secure__auth__token_secret: 't' } })
    const answer = await app.inject({ method: 'POST', url: '/login.supported_modes' })
    console.log(answer.json().data.sso.keycloak)`], scratch)
  t.equal(smoke.trim(), '/login/keycloak', 'registers in a host and answers, without tap installed')
})
