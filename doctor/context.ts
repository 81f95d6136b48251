/**
 * What every check works from: the configuration exactly as the plugin reads it, the web app's URL,
 * and Keycloak's answers. The discovery document and the key set are fetched once and shared, so a
 * run costs Keycloak one request per endpoint. Every call goes through `lib/keycloak/http.ts` (time-out, size
 * cap), the same client the plugin logs in with.
 */
import type { SsoError } from '../lib/errors.js'
import { issuerOf, type KeycloakConfig } from '../lib/config/settings.js'
import { callJson, type CallOptions, type HttpAnswer } from '../lib/keycloak/http.js'

/** An answer and when it was asked for and received (local clock, ms), or why none came. */
export type Probe =
  | { answer: HttpAnswer, sentAt: number, receivedAt: number }
  | { failure: string }

/** The web app whose `/callback_keycloak` Keycloak must accept; `url` is its origin, as the plugin uses it. */
export interface WebApp {
  url?: string
  /** Where the URL came from, to name it in messages: `--webapp-url` or the environment variable. */
  source?: string
  /** Set when the given URL is unusable. */
  problem?: string
}

export interface Endpoints {
  authorization: string
  token: string
  jwks: string
  /** Only an explicit `logout_url` or one Keycloak advertises: `idp_logout` needs a real one. */
  endSession?: string
}

export interface DoctorContext {
  config: KeycloakConfig
  /** The issuer tokens must carry: `base_url`, or derived from a Keycloak-shaped `authorize_url`. */
  issuer: string
  webapp: WebApp
  /** The discovery answer, fetched once; undefined when `base_url` is unset (every endpoint explicit). */
  discovery: () => Promise<Probe | undefined>
  /** The discovery document (for checks that need `discovery`); undefined when `base_url` is unset. */
  document: () => Promise<Record<string, unknown> | undefined>
  /** Explicit settings first, then discovery, then Keycloak's fixed realm paths, as the plugin resolves them. */
  endpoints: () => Promise<Endpoints>
  /** The key set answer, fetched once. */
  keySet: () => Promise<Probe>
  /** Calls Keycloak with the configured time-out; the answer includes its headers. */
  probe: (url: string, options: Pick<CallOptions, 'method' | 'headers' | 'body' | 'what'>) => Promise<Probe>
}

function once<T> (compute: () => Promise<T>): () => Promise<T> {
  let result: Promise<T> | undefined
  return () => (result ??= compute())
}

export function discoveryUrl (config: KeycloakConfig): string {
  return `${config.baseUrl!}/.well-known/openid-configuration`
}

/**
 * A URL as the doctor prints it: without credentials, query or fragment (an operator may have put a
 * password in a URL; a query may carry anything), and `printable`, since a Keycloak answer can name it.
 */
export function shown (value: unknown): string {
  let text = String(value)
  try {
    const url = new URL(text)
    text = `${url.protocol}//${url.host}${url.pathname}`
  } catch {}
  return printable(text)
}

const PRINTABLE_ASCII = /^[\x20-\x7e]$/
const ESCAPES: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/**
 * A value from Keycloak (or from a document that claims to be Keycloak's) as the doctor prints it, in
 * the text and in `--json` alike: every character but printable ASCII escaped (`\n`, `\u2714`), so
 * no value can start a line of its own (a forged "✔ issuer" line), colour or clear the terminal, or
 * reorder the text around it; and at most `max` characters, escapes included, then "…".
 */
export function printable (value: string, max = 200): string {
  let text = ''
  for (const char of value) {
    const piece = PRINTABLE_ASCII.test(char) ? char : ESCAPES[char] ?? `\\u${char.codePointAt(0)!.toString(16).padStart(4, '0')}`
    if (text.length + piece.length > max) return `${text}…`
    text += piece
  }
  return text
}

/**
 * What went wrong on the way to Keycloak, in the doctor's words: the check's message names the URL and
 * its fix names the setting, so the plugin's longer log reason (which says both) is not repeated.
 */
function transportFailure (err: SsoError, what: string, timeoutMs: number): string {
  const cause = err.cause as Error | undefined
  if (cause === undefined) return err.message // an answer too large: lib/keycloak/http.ts says which and how large
  return cause.name === 'AbortError' ? `${what} timed out after ${timeoutMs} ms` : `${what} could not be reached`
}

export function createContext (config: KeycloakConfig, webapp: WebApp): DoctorContext {
  const issuer = issuerOf(config)!
  const probe: DoctorContext['probe'] = async (url, options) => {
    const sentAt = Date.now()
    try {
      const answer = await callJson(url, { ...options, timeoutMs: config.httpTimeoutMs, responseHeaders: true })
      return { answer, sentAt, receivedAt: Date.now() }
    } catch (err) {
      return { failure: transportFailure(err as SsoError, options.what, config.httpTimeoutMs) }
    }
  }
  const discovery = once(async () => config.baseUrl === undefined
    ? undefined
    : await probe(discoveryUrl(config), { what: 'discovery', headers: { accept: 'application/json' } }))
  // Only the checks that run after `discovery` passed ask for the document, so there is one.
  const document = once(async () => {
    const answered = await discovery()
    return answered === undefined ? undefined : (answered as { answer: HttpAnswer }).answer.body as Record<string, unknown>
  })
  const endpoints = once(async (): Promise<Endpoints> => {
    const found = await document() ?? {}
    const advertised = (key: string): string | undefined => {
      const value = found[key]
      return typeof value === 'string' ? value : undefined
    }
    const fixed = (path: string): string => `${issuer}/protocol/openid-connect/${path}`
    return {
      authorization: config.authorizeUrl ?? advertised('authorization_endpoint') ?? fixed('auth'),
      token: config.accessTokenUrl ?? advertised('token_endpoint') ?? fixed('token'),
      jwks: config.jwksUrl ?? advertised('jwks_uri') ?? fixed('certs'),
      endSession: config.logoutUrl ?? advertised('end_session_endpoint')
    }
  })
  const keySet = once(async () => await probe((await endpoints()).jwks, { what: 'key set (jwks)', headers: { accept: 'application/json' } }))
  return { config, issuer, webapp, discovery, document, endpoints, keySet, probe }
}
