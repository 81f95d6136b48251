/**
 * `loadConfig`: ClearML's `CLEARML__...` variables (and the `config` option's overrides) into one
 * validated, frozen `KeycloakConfig`. Every problem is collected and reported at once, each named by
 * the variable an operator would set; secret values never appear in a message or a serialization.
 */
import { Compile } from 'typebox/compile'
import { ConfigError, type ConfigProblem } from '../errors.js'
import { hoconText, parseHoconValue, readClearmlEnv, variableFor, type EnvEntry } from './clearml-env.js'
import {
  KeycloakConfigSchema, PROVIDER_SECTIONS, settingLeaves,
  type KeycloakConfig, type SettingLeaf
} from '../../schemas/config.js'

export type { KeycloakConfig }

export interface ConfigWarning {
  variable: string
  message: string
}

export interface ReadConfigResult {
  config: KeycloakConfig
  warnings: ConfigWarning[]
}

/** Deep partial of `KeycloakConfig`: what the plugin's `config` option may override. */
export type KeycloakConfigOverrides = {
  [K in keyof KeycloakConfig]?: KeycloakConfig[K] extends unknown[] ? KeycloakConfig[K]
    : KeycloakConfig[K] extends object | null ? Partial<KeycloakConfig[K]> : KeycloakConfig[K]
}

const LEAVES = settingLeaves()
const KNOWN_PATHS = new Set(LEAVES.map((leaf) => leaf.schema.env))
const validateConfig = Compile(KeycloakConfigSchema)
const REDACTED = '[redacted]'
// A value that is literally `${NAME}` reached us without the shell or compose file expanding it.
const UNEXPANDED = /^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$/

type Coerced = { value: unknown } | { problem: string } | undefined

function coerce (leaf: SettingLeaf, entry: EnvEntry): Coerced {
  const { kind } = leaf.schema
  if (kind === 'string' || kind === 'url') {
    const text = hoconText(entry.raw)
    if (text === null) return undefined
    if (UNEXPANDED.test(text)) return { problem: 'looks like an unexpanded shell variable (the value is literally `' + (leaf.schema.secret === true ? '$' + '{…}' : text) + '`)' }
    return { value: text }
  }
  const parsed = parseHoconValue(entry.raw)
  if (kind === 'optional-role') {
    // Empty means "Keycloak does not manage roles", not "use the default".
    if (parsed === null) return { value: null }
    const text = hoconText(entry.raw)
    return { value: text }
  }
  if (parsed === null) return undefined
  if (kind === 'boolean') {
    return typeof parsed === 'boolean' ? { value: parsed } : { problem: 'must be true or false' }
  }
  if (kind === 'integer') {
    return Number.isInteger(parsed) ? { value: parsed } : { problem: 'must be a whole number' }
  }
  // kind === 'list'
  if (Array.isArray(parsed) && parsed.every((item) => typeof item === 'string' || typeof item === 'number')) {
    return { value: parsed.map(String) }
  }
  return { problem: 'must be a list of names, e.g. ["kc-admins"]' }
}

function getPath (object: Record<string, unknown>, key: string[]): unknown {
  let node: unknown = object
  for (const part of key) {
    if (node === null || typeof node !== 'object') return undefined
    node = (node as Record<string, unknown>)[part]
  }
  return node
}

function setPath (object: Record<string, unknown>, key: string[], value: unknown): void {
  let node = object
  // Sections are only ever created here (or copied from a config made here): absent is the only other case.
  for (const part of key.slice(0, -1)) node = (node[part] ??= {}) as Record<string, unknown>
  node[key[key.length - 1]] = value
}

/** Settings that take one of a few words: their error names the words (the schema's own says "must be equal to constant"). */
const CHOICES = new Map(LEAVES.flatMap((leaf): Array<[string, string]> => {
  const choices = (leaf.schema as { anyOf?: Array<{ const?: unknown }> }).anyOf?.map((option) => option.const)
  return choices !== undefined && choices.every((choice) => typeof choice === 'string')
    ? [[leaf.key.join('.'), `must be one of ${choices.map((choice) => JSON.stringify(choice)).join(', ')}`]]
    : []
}))

const SECTIONS = new Set(LEAVES.flatMap((leaf) => leaf.key.slice(0, -1).map((_, i) => leaf.key.slice(0, i + 1).join('.'))))
const LEAF_KEYS = new Set(LEAVES.map((leaf) => leaf.key.join('.')))

/** Keys of the `config` option that name no setting (a typo), or a section given as a value. */
function shapeProblems (overrides: object, prefix = ''): ConfigProblem[] {
  return Object.entries(overrides).flatMap(([name, value]): ConfigProblem[] => {
    const key = prefix + name
    if (LEAF_KEYS.has(key) || value === undefined) return []
    if (!SECTIONS.has(key)) return [{ variable: `config.${key}`, message: 'is not a known setting' }]
    if (value === null || typeof value !== 'object') return [{ variable: `config.${key}`, message: 'must be an object' }]
    return shapeProblems(value, key + '.')
  })
}

export function isAbsoluteHttpUrl (value: string): boolean {
  try {
    // The URL parser refuses an http(s) URL without a host, so the scheme is all left to check.
    const { protocol } = new URL(value)
    return protocol === 'https:' || protocol === 'http:'
  } catch {
    return false
  }
}

function redact (config: KeycloakConfig): unknown {
  const copy = structuredClone(config) as Record<string, unknown>
  for (const leaf of LEAVES) {
    if (leaf.schema.secret === true && getPath(copy, leaf.key) !== undefined) setPath(copy, leaf.key, REDACTED)
  }
  return copy
}

function deepFreeze<T> (value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const child of Object.values(value)) deepFreeze(child)
    Object.freeze(value)
  }
  return value
}

/** The Keycloak realm's issuer: `base_url`, else derived from a Keycloak-shaped authorization URL. */
export function issuerOf (config: Pick<KeycloakConfig, 'baseUrl' | 'authorizeUrl'>): string | undefined {
  if (config.baseUrl !== undefined) return config.baseUrl
  const match = config.authorizeUrl?.match(/^(.*)\/protocol\/openid-connect\/auth$/)
  return match?.[1]
}

/**
 * Reads and validates the configuration; returns it with the warnings (unknown keys) for the log.
 * `overrides` are camelCase settings from code, merged over what `env` gives.
 */
export function readConfig (env: Record<string, string | undefined> = process.env, overrides: KeycloakConfigOverrides = {}): ReadConfigResult {
  const entries = readClearmlEnv(env)
  const problems: ConfigProblem[] = []
  const warnings: ConfigWarning[] = []
  const values: Record<string, unknown> = {}
  const nameOf = new Map<string, string>()

  for (const [path, entry] of entries) {
    const section = PROVIDER_SECTIONS.find((prefix) => path.startsWith(prefix))
    if (section !== undefined && !KNOWN_PATHS.has(path)) {
      const key = path.slice(section.length)
      const elsewhere = PROVIDER_SECTIONS.map((prefix) => prefix + key).find((candidate) => KNOWN_PATHS.has(candidate))
      warnings.push({ variable: entry.variable, message: elsewhere !== undefined ? `is not a Keycloak setting here; did you mean ${variableFor(elsewhere)}?` : 'is not a known Keycloak setting and is ignored' })
    }
  }

  problems.push(...shapeProblems(overrides))

  for (const leaf of LEAVES) {
    const dotted = leaf.key.join('.')
    const entry = entries.get(leaf.schema.env)
    nameOf.set(dotted, entry?.variable ?? variableFor(leaf.schema.env))
    const coerced = entry === undefined ? undefined : coerce(leaf, entry)
    if (coerced !== undefined && 'problem' in coerced) {
      problems.push({ variable: entry!.variable, message: coerced.problem })
      continue
    }
    const override = getPath(overrides as Record<string, unknown>, leaf.key)
    if (override !== undefined) {
      nameOf.set(dotted, `config.${dotted}`)
      setPath(values, leaf.key, structuredClone(override))
    } else if (coerced !== undefined) {
      setPath(values, leaf.key, coerced.value)
    } else if (leaf.schema.default !== undefined) {
      setPath(values, leaf.key, structuredClone(leaf.schema.default))
    } else if (leaf.required) {
      problems.push({ variable: nameOf.get(dotted)!, message: 'is required' })
    }
  }

  for (const error of validateConfig.Errors(values)) {
    const dotted = error.instancePath.split('/').filter(Boolean).join('.')
    // No setting's key is a section of another's, so at most one owns the error's path.
    const owner = [...nameOf.keys()].find((key) => dotted === key || dotted.startsWith(key + '.'))
    // Errors above a leaf (a section replaced by a non-object) are reported on its leaves.
    if (owner === undefined || problems.some((p) => p.variable === nameOf.get(owner))) continue
    // The message comes from the schema, never from the value, so secrets stay out of it.
    problems.push({ variable: nameOf.get(owner)!, message: CHOICES.get(owner) ?? error.message })
  }

  for (const leaf of LEAVES) {
    const value = getPath(values, leaf.key)
    if (leaf.schema.kind !== 'url' || typeof value !== 'string') continue
    if (!isAbsoluteHttpUrl(value)) {
      problems.push({ variable: nameOf.get(leaf.key.join('.'))!, message: 'must be an absolute http(s) URL' })
    } else {
      // ClearML's documentation writes base_url with a trailing slash; endpoints are appended to it.
      setPath(values, leaf.key, value.replace(/\/+$/, ''))
    }
  }

  const config = values as KeycloakConfig
  if (config.baseUrl === undefined) {
    const missing: Array<keyof KeycloakConfig> = ['authorizeUrl', 'accessTokenUrl', 'jwksUrl']
    if (config.getInfoFromAccessToken === false) missing.push('userinfoUrl')
    for (const key of missing.filter((name) => config[name] === undefined)) {
      problems.push({ variable: nameOf.get(key)!, message: `is required when ${nameOf.get('baseUrl')!} is not set` })
    }
    if (missing.every((name) => config[name] !== undefined) && issuerOf(config) === undefined) {
      problems.push({ variable: nameOf.get('baseUrl')!, message: 'is required: it is the token issuer, and the authorization URL does not have Keycloak\'s shape to derive it from' })
    }
  }
  if (problems.length > 0) throw new ConfigError(problems)

  Object.defineProperty(config, 'toJSON', { value: () => redact(config), enumerable: false })
  Object.defineProperty(config, Symbol.for('nodejs.util.inspect.custom'), { value: () => redact(config), enumerable: false })
  return { config: deepFreeze(config), warnings }
}

/**
 * ClearML's environment variables into a validated `KeycloakConfig`. Throws `ConfigError` listing
 * every problem, each naming the variable to set.
 */
export function loadConfig (env: Record<string, string | undefined> = process.env, overrides: KeycloakConfigOverrides = {}): KeycloakConfig {
  return readConfig(env, overrides).config
}

/** An HS256 key shorter than its hash output can be brute-forced from any session token (RFC 7518 3.2). */
export const MIN_TOKEN_SECRET_BYTES = 32

/**
 * Settings that load but weaken the deployment: a warning at register time, a failed `config` check
 * in the doctor. The message names the setting and the fix, never the value.
 */
export function weakSettings (config: Pick<KeycloakConfig, 'tokenSecret'>): ConfigWarning[] {
  const bytes = config.tokenSecret === undefined ? undefined : Buffer.byteLength(config.tokenSecret)
  if (bytes === undefined || bytes >= MIN_TOKEN_SECRET_BYTES) return []
  return [{
    variable: settingName('tokenSecret'),
    message: `is ${bytes} bytes; use at least ${MIN_TOKEN_SECRET_BYTES} random bytes (e.g. \`openssl rand -base64 48\`): a short HS256 secret can be guessed from any session token`
  }]
}

/** The variable (or `config.` key) that sets a setting, for messages raised after loading. */
export function settingName (key: string): string {
  const leaf = LEAVES.find((candidate) => candidate.key.join('.') === key)
  return leaf === undefined ? `config.${key}` : variableFor(leaf.schema.env)
}
