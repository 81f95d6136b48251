/**
 * The house as folders show it (issue #23): `lib/` has a folder per concern and only what every
 * concern shares at its top, and no module imports, even for a type, a module that imports it back.
 * The import graph is read with the TypeScript compiler's own pre-processor, so `import type` and
 * `export ... from` count as arrows exactly as they do for the compiler.
 */
import t from 'tap'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import ts from 'typescript'

const root = resolve(new URL('..', import.meta.url).pathname)
const PACKAGE_DIRS = ['lib', 'plugins', 'schemas', 'redis', 'postgres', 'doctor', 'bin']

function sources (): string[] {
  const files = ['index.ts']
  for (const dir of PACKAGE_DIRS) {
    for (const entry of readdirSync(join(root, dir), { recursive: true, encoding: 'utf8' })) {
      if (entry.endsWith('.ts')) files.push(join(dir, entry))
    }
  }
  return files.sort()
}

/** File → the package files it imports (relative specifiers only; `.js` resolves to the `.ts` source). */
function importGraph (files: readonly string[]): Map<string, string[]> {
  const known = new Set(files)
  const graph = new Map<string, string[]>()
  for (const file of files) {
    const { importedFiles } = ts.preProcessFile(readFileSync(join(root, file), 'utf8'), true, true)
    const targets = importedFiles
      .map((imported) => imported.fileName)
      .filter((specifier) => specifier.startsWith('.'))
      .map((specifier) => relative(root, resolve(root, dirname(file), specifier.replace(/\.js$/, '.ts'))))
      .filter((target) => known.has(target))
    graph.set(file, [...new Set(targets)])
  }
  return graph
}

/** The cycles of a graph: its strongly connected components of more than one file, or a file importing itself (Tarjan). */
export function cyclesOf (graph: ReadonlyMap<string, readonly string[]>): string[][] {
  let counter = 0
  const index = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const onStack = new Set<string>()
  const cycles: string[][] = []
  const visit = (node: string): void => {
    index.set(node, counter)
    low.set(node, counter++)
    stack.push(node)
    onStack.add(node)
    for (const next of graph.get(node) ?? []) {
      if (!index.has(next)) {
        visit(next)
        low.set(node, Math.min(low.get(node)!, low.get(next)!))
      } else if (onStack.has(next)) {
        low.set(node, Math.min(low.get(node)!, index.get(next)!))
      }
    }
    if (low.get(node) !== index.get(node)) return
    const component: string[] = []
    let member: string
    do {
      member = stack.pop()!
      onStack.delete(member)
      component.push(member)
    } while (member !== node)
    if (component.length > 1 || (graph.get(node) ?? []).includes(node)) cycles.push(component.sort())
  }
  for (const node of graph.keys()) if (!index.has(node)) visit(node)
  return cycles
}

t.test('the cycle finder finds cycles, through several files and of one file with itself', async (t) => {
  t.strictSame(cyclesOf(new Map([['a', ['b']], ['b', ['c']], ['c', []]])), [])
  t.strictSame(cyclesOf(new Map([['a', ['b']], ['b', ['c']], ['c', ['a']], ['d', ['a']]])), [['a', 'b', 'c']])
  t.strictSame(cyclesOf(new Map([['a', ['a']]])), [['a']])
})

t.test('no import cycle anywhere in the package, type imports included', async (t) => {
  const graph = importGraph(sources())
  t.ok(graph.size > 40, 'the graph holds the package (index, lib, plugins, stores, doctor)')
  t.ok([...graph.values()].some((targets) => targets.length > 0), 'and its arrows')
  t.strictSame(cyclesOf(graph), [])
})

t.test('lib/ has a folder per concern and at most eight files of its own', async (t) => {
  const entries = readdirSync(join(root, 'lib'))
  const files = entries.filter((entry) => statSync(join(root, 'lib', entry)).isFile())
  const folders = entries.filter((entry) => statSync(join(root, 'lib', entry)).isDirectory()).sort()
  t.ok(files.length <= 8, `${files.length} files directly under lib/: ${files.join(', ')}`)
  t.strictSame(folders, ['config', 'directory', 'keycloak', 'rules', 'session'])
})

t.test('no module of lib/ imports a route or the package entry', async (t) => {
  const graph = importGraph(sources())
  for (const [file, targets] of graph) {
    if (!file.startsWith('lib/')) continue
    t.notOk(targets.some((target) => target.startsWith('plugins/') || target === 'index.ts'), `${file} imports no route and not the package entry`)
  }
})
