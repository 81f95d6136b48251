/**
 * ClearML's environment-variable convention, read the way ClearML's own config loader reads it:
 * `CLEARML__a__b__c=value` (or `TRAINS__...`) becomes the config path `a.b.c`, lower-cased, and the
 * value is parsed as pyhocon parses a value.
 */

export interface EnvEntry {
  /** The variable as the operator spelled it, for messages. */
  variable: string
  raw: string
}

const PREFIXES = ['CLEARML__', 'TRAINS__'] as const

/** Config path → the variable that sets it. `CLEARML__` wins over `TRAINS__` whatever the order. */
export function readClearmlEnv (env: Record<string, string | undefined>): Map<string, EnvEntry> {
  const entries = new Map<string, EnvEntry>()
  // Walk TRAINS__ first so that CLEARML__ overwrites it; within a prefix, sorted for determinism.
  for (const prefix of [...PREFIXES].reverse()) {
    for (const variable of Object.keys(env).filter((name) => name.startsWith(prefix)).sort()) {
      const raw = env[variable]
      if (raw === undefined) continue
      const path = variable.slice(prefix.length).split('__').join('.').toLowerCase()
      if (path === '') continue
      entries.set(path, { variable, raw })
    }
  }
  return entries
}

// pyhocon's number: digits after a decimal point are required (`5.` is text, `.5` a number).
const NUMBER = /^[+-]?(\d+(\.\d+)?|\.\d+)([eE][+-]?\d+)?$/

/**
 * pyhocon's reading of one value: JSON first, then the HOCON literals, numbers, an unquoted list,
 * and otherwise the text itself (unquoted URLs keep their `//`). Empty text is `null`: ClearML treats
 * `admin_role=` as "disabled".
 */
export function parseHoconValue (raw: string): unknown {
  const text = raw.trim()
  if (text === '') return null
  try {
    return JSON.parse(text)
  } catch {}
  const lower = text.toLowerCase()
  if (lower === 'true') return true
  if (lower === 'false') return false
  if (lower === 'null') return null
  if (NUMBER.test(text)) return Number(text)
  if (text.startsWith('[') && text.endsWith(']')) {
    // `[]` and `[ ]` were valid JSON above, so the list has at least one item here.
    return text.slice(1, -1).split(',').map((item) => parseHoconValue(item))
  }
  return text
}

/** The text of a value for a string-typed key: `"abc"` → `abc`, but `007` stays `007`. */
export function hoconText (raw: string): string | null {
  const text = raw.trim()
  if (text === '') return null
  // Only a JSON string parses from text that starts with a quote, so JSON.parse decides the rest.
  if (text.startsWith('"')) {
    try {
      return JSON.parse(text) as string
    } catch {
      // Not one JSON string (e.g. `"a"b"`): the text as it is, as pyhocon would keep it.
    }
  }
  return text
}

/** The variable an operator would set for a config path, for messages about unset keys. */
export function variableFor (path: string): string {
  return 'CLEARML__' + path.split('.').join('__')
}
