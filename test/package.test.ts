/**
 * The package as a host gets it: `npm pack`, installed into a scratch project with only fastify,
 * typescript and @types/node beside it (no tap, no ioredis, no pg), then imported by Node and
 * type-checked strictly, `skipLibCheck` off, the way a new user's first hour goes.
 */
import t from 'tap'
import { execFile, execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative, resolve } from 'node:path'
import { promisify } from 'node:util'
import ts from 'typescript'

// Packing builds the package and the scratch install reaches the registry: slower than the default.
t.setTimeout(600_000)

const root = new URL('..', import.meta.url).pathname
const scratch = mkdtempSync(join(tmpdir(), 'fastify-clearml-keycloak-'))
t.teardown(() => rmSync(scratch, { recursive: true, force: true }))
const commandEnv = { ...process.env, npm_config_loglevel: 'error', npm_config_update_notifier: 'false' }
const run = (command: string, args: string[], cwd: string): string =>
  execFileSync(command, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: commandEnv })
const runAsync = async (command: string, args: string[], cwd: string): Promise<{ code: number, output: string }> => {
  try {
    const { stdout, stderr } = await promisify(execFile)(command, args, { cwd, encoding: 'utf8', env: commandEnv, maxBuffer: 16 * 1024 * 1024 })
    return { code: 0, output: stdout + stderr }
  } catch (err) {
    const failed = err as { code?: number, stdout?: string, stderr?: string }
    return { code: failed.code ?? 1, output: (failed.stdout ?? '') + (failed.stderr ?? '') }
  }
}

const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', scratch], root))[0]
const files: string[] = packed.files.map((f: { path: string }) => f.path)
const installed = join(scratch, 'node_modules', 'fastify-clearml-keycloak')
writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }))
// The versions a Node 20 host on TypeScript 5.9 has; nothing else but what the package pulls in.
run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(scratch, packed.filename), 'fastify@5', 'typescript@5.9', '@types/node@20'], scratch)

t.test('the tarball holds the build, the docs and the licence, and no sources', async (t) => {
  t.ok(files.includes('dist/index.js') && files.includes('dist/index.d.ts'), 'built JavaScript and declarations')
  t.ok(files.includes('README.md') && files.includes('CHANGELOG.md'))
  t.notOk(files.some((f) => f.startsWith('test/') || f.startsWith('examples/') || (f.endsWith('.ts') && !f.endsWith('.d.ts'))), 'no tests, examples or sources')
  t.ok(files.includes('LICENSE'), 'a LICENSE file')
  const manifest = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'))
  t.equal(manifest.license, 'MIT')
  t.match(readFileSync(join(installed, 'LICENSE'), 'utf8'), /^MIT License\n\nCopyright \(c\) \d{4} /, 'the licence package.json names, with a copyright line')
  t.match(manifest.repository, { type: 'git', url: /^git\+https:\/\/github\.com\/[\w.-]+\/[\w.-]+\.git$/ }, 'a repository, so the registry resolves the README\'s relative links')
})

t.test('the README\'s relative links and images exist in the repository the package names', async (t) => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  const targets = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]).filter((href) => !/^[a-z]+:|^#/.test(href))
  t.ok(targets.length > 0, 'the README has relative links (screenshots, docs)')
  for (const target of targets) t.ok(existsSync(join(root, target.split('#')[0])), `${target} exists`)
})

t.test('source maps carry their sources, so stack traces name real lines without the .ts files', async (t) => {
  const maps = files.filter((f) => f.endsWith('.js.map'))
  t.ok(maps.length > 0)
  const incomplete = maps.filter((f) => {
    const map = JSON.parse(readFileSync(join(installed, f), 'utf8'))
    return !Array.isArray(map.sourcesContent) || map.sourcesContent.length !== map.sources.length ||
      map.sourcesContent.some((text: unknown) => typeof text !== 'string' || text === '')
  })
  t.strictSame(incomplete, [], 'every map has sourcesContent for every source')
  const orphans = files.filter((f) => f.endsWith('.js')).filter((f) => {
    const url = readFileSync(join(installed, f), 'utf8').match(/\/\/# sourceMappingURL=(\S+)\s*$/)?.[1]
    return url !== undefined && !files.includes(join(f, '..', url))
  })
  t.strictSame(orphans, [], 'every sourceMappingURL points at a shipped map')
})

t.test('installed with only fastify beside it, Node imports it and it answers', async (t) => {
  const keys = JSON.parse(run('node', ['-e', "import('fastify-clearml-keycloak').then(m => console.log(JSON.stringify(Object.keys(m).sort())))"], scratch))
  for (const name of ['default', 'clearmlKeycloak', 'loadConfig', 'MemoryDirectory', 'testDirectory', 'ConfigError', 'SsoError', 'MemoryRevocationStore']) {
    t.ok(keys.includes(name), `exports ${name}`)
  }
  t.notOk(existsSync(join(scratch, 'node_modules', 'tap')), 'tap is not installed in the host')
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

t.test('require() gets a clear answer: the module where Node can require ESM, ERR_REQUIRE_ESM elsewhere', async (t) => {
  const manifest = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'))
  for (const [subpath, entry] of Object.entries<Record<string, string> | string>(manifest.exports)) {
    if (typeof entry === 'object') t.equal(entry.default, entry.import, `${subpath} has a default condition`)
  }
  const answer = await runAsync('node', ['-e', `
    try { const m = require('fastify-clearml-keycloak'); console.log('loaded', typeof m.clearmlKeycloak) }
    catch (err) { console.log('refused', err.code) }`], scratch)
  // Node 20.19+ loads ES modules from require() (process.features.require_module); older Node says why it cannot.
  const canRequireEsm = (process.features as { require_module?: boolean }).require_module === true
  t.match(answer.output, canRequireEsm ? /^loaded function$/m : /^refused ERR_REQUIRE_ESM$/m)
  t.notMatch(answer.output, /ERR_PACKAGE_PATH_NOT_EXPORTED/, 'never "no exports main defined"')
})

t.test('no declaration file imports tap', async (t) => {
  const importsTap = (file: string): boolean =>
    ts.preProcessFile(readFileSync(join(installed, file), 'utf8'), true, true).importedFiles.some((imported) => imported.fileName === 'tap')
  const declarations = files.filter((f) => f.endsWith('.d.ts'))
  t.ok(declarations.includes('dist/lib/directory/test-directory.d.ts'), 'testDirectory has declarations')
  t.strictSame(declarations.filter(importsTap), [])
})

// The README's snippet, word for word, plus a host directory typed with the exported types.
const readme = readFileSync(join(root, 'README.md'), 'utf8')
const readmeSnippet = readme.slice(readme.indexOf('## Use it in an apiserver')).match(/```ts\n([\s\S]*?)```/)![1]
const hostDirectory = `
import type {
  Company, DirectoryContractTest, DirectoryFactory, DirectoryFixture, DirectoryGroup, DirectoryUser,
  LinkedIdentity, NewUser, UserDirectory, UserPatch, WhitelistEntry
} from 'fastify-clearml-keycloak'
import { testDirectory } from 'fastify-clearml-keycloak'

/** A host's own directory over its own storage (here: maps). */
export class HostDirectory implements UserDirectory {
  readonly #users = new Map<string, DirectoryUser>()
  readonly #identities = new Map<string, string>()
  readonly #memberships = new Map<string, Set<string>>()
  constructor (readonly fixture: DirectoryFixture) {}
  async getCompany (id: string): Promise<Company | null> { return this.fixture.companies.find((c) => c.id === id) ?? null }
  async findUserByIdentity (provider: string, subject: string): Promise<DirectoryUser | null> {
    const id = this.#identities.get(provider + ' ' + subject)
    return id === undefined ? null : this.#users.get(id) ?? null
  }
  async findUserByEmail (email: string): Promise<DirectoryUser | null> {
    return [...this.#users.values()].find((user) => user.email?.toLowerCase() === email.toLowerCase()) ?? null
  }
  async findWhitelistEntry (email: string): Promise<WhitelistEntry | null> {
    const lower = email.toLowerCase()
    const seed = this.fixture.whitelist.find((w) => w.email?.toLowerCase() === lower) ??
      this.fixture.whitelist.find((w) => w.domain?.toLowerCase() === lower.slice(lower.lastIndexOf('@') + 1))
    return seed === undefined ? null : { company: seed.company, role: seed.role }
  }
  async createUser (user: NewUser): Promise<DirectoryUser> {
    const link: LinkedIdentity = user.identity
    const existing = await this.findUserByIdentity(link.provider, link.subject)
    if (existing !== null) return existing
    const { identity, ...fields } = user
    const created: DirectoryUser = { ...fields, id: String(this.#users.size + 1) }
    this.#users.set(created.id, created)
    this.#identities.set(identity.provider + ' ' + identity.subject, created.id)
    return created
  }
  async updateUser (id: string, patch: UserPatch): Promise<DirectoryUser> {
    const user = this.#users.get(id)
    if (user === undefined) throw new Error('unknown user')
    const { linkIdentity, ...fields } = patch
    if (linkIdentity !== undefined) this.#identities.set(linkIdentity.provider + ' ' + linkIdentity.subject, id)
    const updated: DirectoryUser = { ...user, ...fields }
    this.#users.set(id, updated)
    return updated
  }
  async findGroupsByName (company: string, names: string[], opts: { caseSensitive: boolean }): Promise<DirectoryGroup[]> {
    const fold = (name: string): string => opts.caseSensitive ? name : name.toLowerCase()
    return (this.fixture.groups[company] ?? []).filter((name) => names.map(fold).includes(fold(name))).map((name) => ({ id: company + '/' + name, company, name }))
  }
  async listUserGroups (company: string, userId: string): Promise<DirectoryGroup[]> {
    return [...(this.#memberships.get(userId) ?? [])].filter((id) => id.startsWith(company + '/')).map((id) => ({ id, company, name: id.slice(company.length + 1) }))
  }
  async updateUserGroups (userId: string, change: { add: string[], remove: string[] }): Promise<void> {
    const groups = this.#memberships.get(userId) ?? new Set<string>()
    for (const id of change.remove) groups.delete(id)
    for (const id of change.add) groups.add(id)
    this.#memberships.set(userId, groups)
  }
}

async function seedMyDatabase (fixture: DirectoryFixture): Promise<UserDirectory> {
  return new HostDirectory(fixture)
}
const factory: DirectoryFactory = async (fixture) => await seedMyDatabase(fixture)
// Any runner shaped like tap's Test will do; the host need not have tap's types to compile this.
declare const runner: DirectoryContractTest
export const contract = async (): Promise<void> => await testDirectory(factory, { t: runner, name: 'HostDirectory' })

// The types are real, not \`any\`: each line below must fail to compile (else TS2578).
// @ts-expect-error a UserDirectory has every method
export const incomplete: UserDirectory = { getCompany: async () => null }
// @ts-expect-error a linked identity has a provider and a subject
export const halfIdentity: LinkedIdentity = { subject: 's' }
`

t.test('a strict host compiles the README snippet and its own directory, skipLibCheck off', async (t) => {
  writeFileSync(join(scratch, 'server.ts'), readmeSnippet)
  writeFileSync(join(scratch, 'directory.ts'), hostDirectory)
  const compilerOptions = { strict: true, skipLibCheck: false, noEmit: true, target: 'ES2022', types: ['node'] }
  const resolutions = {
    nodenext: { module: 'NodeNext', moduleResolution: 'NodeNext' },
    bundler: { module: 'ESNext', moduleResolution: 'Bundler' }
  }
  const results = await Promise.all(Object.entries(resolutions).map(async ([name, resolution]) => {
    writeFileSync(join(scratch, `tsconfig.${name}.json`), JSON.stringify({ compilerOptions: { ...compilerOptions, ...resolution }, files: ['server.ts', 'directory.ts'] }))
    return { name, ...await runAsync(join(scratch, 'node_modules', '.bin', 'tsc'), ['-p', `tsconfig.${name}.json`], scratch) }
  }))
  for (const { name, code, output } of results) t.equal(code, 0, `moduleResolution ${name}: tsc --strict passes${output === '' ? '' : '\n' + output}`)
})

/**
 * Named types that a public declaration uses but no entry point exports: a host needing to write
 * one down would have to reach into `dist/`. Walks every export of `entry` through the types its
 * declaration names, within the package (fastify's, jose's types are theirs to export).
 */
function unexportedPublicTypes (entry: string, packageRoot: string, opaque: ReadonlySet<string>): string[] {
  const program = ts.createProgram([entry], { strict: true, noEmit: true, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, skipLibCheck: true })
  const checker = program.getTypeChecker()
  const unalias = (symbol: ts.Symbol): ts.Symbol => (symbol.flags & ts.SymbolFlags.Alias) !== 0 ? checker.getAliasedSymbol(symbol) : symbol
  const exported = new Set(checker.getExportsOfModule(checker.getSymbolAtLocation(program.getSourceFile(entry)!)!).map(unalias))
  const inPackage = (declaration: ts.Declaration): boolean => {
    const path = relative(packageRoot, resolve(declaration.getSourceFile().fileName))
    return !path.startsWith('..') && !path.includes('node_modules')
  }
  const seen = new Set<ts.Symbol>()
  const missing = new Set<string>()
  const visit = (symbol: ts.Symbol, asType: boolean): void => {
    if (seen.has(symbol) || (symbol.flags & ts.SymbolFlags.TypeParameter) !== 0) return
    seen.add(symbol)
    const declarations = symbol.declarations ?? []
    // A symbol declared outside too (fastify's interfaces we augment) is someone else's to export.
    if (declarations.length === 0 || !declarations.every(inPackage)) return
    if (asType && !exported.has(symbol)) missing.add(symbol.name)
    if (opaque.has(symbol.name)) return
    for (const declaration of declarations) walk(declaration)
  }
  const walk = (node: ts.Node): void => {
    if (ts.isPrivateIdentifier(node)) return
    if ((ts.isPropertyDeclaration(node) || ts.isMethodDeclaration(node)) && (ts.getCombinedModifierFlags(node) & ts.ModifierFlags.Private) !== 0) return
    if (ts.isTypeReferenceNode(node) || ts.isExpressionWithTypeArguments(node)) {
      const symbol = checker.getSymbolAtLocation(ts.isTypeReferenceNode(node) ? node.typeName : node.expression)
      if (symbol !== undefined) visit(unalias(symbol), true)
    } else if (ts.isTypeQueryNode(node)) {
      // `typeof value`: the value needs no exported name, but the types in its signature do.
      const symbol = checker.getSymbolAtLocation(node.exprName)
      if (symbol !== undefined) visit(unalias(symbol), false)
    }
    ts.forEachChild(node, walk)
  }
  for (const symbol of exported) {
    seen.add(symbol)
    if (!opaque.has(symbol.name)) for (const declaration of symbol.declarations ?? []) walk(declaration)
  }
  return [...missing].sort()
}

t.test('every type a public signature names is exported', async (t) => {
  const manifest = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'))
  // `fastify.keycloak.sso` is the service behind the routes, for tests and benchmarks: exported by
  // name, its members internal.
  const opaque = new Set(['KeycloakSso'])
  for (const [subpath, entry] of Object.entries<Record<string, string> | string>(manifest.exports)) {
    if (typeof entry !== 'object') continue
    const declarations = join(installed, entry.types)
    if (!existsSync(declarations)) {
      t.comment(`${subpath}: ${entry.types} is not built on this branch`)
      continue
    }
    const missing = unexportedPublicTypes(declarations, installed, opaque)
    t.strictSame(missing, [], `${subpath}: nothing used but not exported`)
  }
})
