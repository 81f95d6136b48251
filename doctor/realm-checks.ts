/**
 * The realm itself: `discovery` (the document at `base_url`), `issuer` (the realm calls itself
 * `base_url`, or every token is refused), `endpoints` (explicit URLs agree with what the realm
 * advertises) and `jwks` (the key set has a key for the configured algorithms).
 */
import { importJWK, type JWK } from 'jose'
import { settingName } from '../lib/config/settings.js'
import { isJsonObject } from '../lib/keycloak/http.js'
import { discoveryUrl, printable, shown, type DoctorContext } from './context.js'
import { fail, pass, type Verdict } from './report.js'

const REALM_URL_FIX = `set ${settingName('baseUrl')} to the realm's URL, e.g. https://kc.example.com/realms/<realm> (Keycloak before 17: https://kc.example.com/auth/realms/<realm>)`

export async function checkDiscovery ({ config, discovery }: DoctorContext): Promise<Verdict> {
  const probe = await discovery()
  if (probe === undefined) return pass(`not used: ${settingName('baseUrl')} is unset and the endpoints are set explicitly`)
  const url = shown(discoveryUrl(config))
  if ('failure' in probe) {
    return fail(`${probe.failure} (${url})`, `check ${settingName('baseUrl')} and that this host reaches Keycloak (DNS, proxy, firewall)`)
  }
  const { answer } = probe
  if (answer.status >= 500) return fail(`${url} answered HTTP ${answer.status}`, 'Keycloak is failing: see its log')
  if (answer.status !== 200) return fail(`${url} answered HTTP ${answer.status}: no realm there`, REALM_URL_FIX)
  if (!isJsonObject(answer.body)) return fail(`${url} answered something other than a JSON discovery document`, REALM_URL_FIX)
  return pass(`${url} answered`)
}

export async function checkIssuer ({ config, issuer, document }: DoctorContext): Promise<Verdict> {
  const found = await document()
  if (found === undefined) return pass(`tokens must carry the issuer ${shown(issuer)} (from ${settingName('authorizeUrl')}; no discovery to compare)`)
  if (found.issuer === issuer) return pass(`the realm calls itself ${shown(issuer)}, as ${settingName('baseUrl')} says`)
  if (typeof found.issuer !== 'string') return fail('the discovery document names no issuer: this is not a Keycloak realm', REALM_URL_FIX)
  return fail(
    `the realm calls itself ${shown(found.issuer)}, not ${shown(config.baseUrl)}: every token would be refused`,
    // Keycloak derives its issuer from its hostname setting (KC_HOSTNAME) or the request's host.
    `set ${settingName('baseUrl')} to ${shown(found.issuer)}, or set Keycloak's hostname so that it names itself by ${shown(config.baseUrl)}`
  )
}

/** Two URLs that name the same endpoint, whatever a trailing slash or the spelling of the host. */
function sameUrl (a: string, b: string): boolean {
  const normal = (text: string): string => {
    try {
      return new URL(text).href.replace(/\/+$/, '')
    } catch {
      return text
    }
  }
  return normal(a) === normal(b)
}

const EXPLICIT_ENDPOINTS = [
  { key: 'authorizeUrl', advertised: 'authorization_endpoint' },
  { key: 'accessTokenUrl', advertised: 'token_endpoint' }
] as const

export async function checkEndpoints ({ config, document }: DoctorContext): Promise<Verdict> {
  const explicit = EXPLICIT_ENDPOINTS.filter(({ key }) => config[key] !== undefined)
  if (explicit.length === 0) return pass('the authorization and token endpoints come from discovery')
  const names = explicit.map(({ key }) => settingName(key)).join(' and ')
  const found = await document()
  if (found === undefined) return pass(`${names} set explicitly; no discovery to compare`)
  const disagreeing = explicit.filter(({ key, advertised }) => typeof found[advertised] === 'string' && !sameUrl(config[key]!, found[advertised]))
  if (disagreeing.length === 0) return pass(`${names} agree with discovery`)
  return fail(
    disagreeing.map(({ key, advertised }) => `${settingName(key)} is ${shown(config[key])} but the realm advertises ${shown(found[advertised])}`).join('; '),
    `remove ${disagreeing.map(({ key }) => settingName(key)).join(' and ')} (discovery gives the realm's own) or set them to what the realm advertises`
  )
}

/** The key types each JWS algorithm signs with (RFC 7518 3.1, RFC 8037). */
function fitsAlgorithm (key: JWK, alg: string): boolean {
  if (key.use === 'enc') return false
  if (key.alg !== undefined) return key.alg === alg
  if (/^(RS|PS)\d+$/.test(alg)) return key.kty === 'RSA'
  const curve = { ES256: 'P-256', ES384: 'P-384', ES512: 'P-521', EdDSA: 'Ed25519', Ed25519: 'Ed25519' }[alg]
  return curve !== undefined && key.crv === curve
}

async function importable (key: JWK, alg: string): Promise<boolean> {
  try {
    await importJWK(key, alg)
    return true
  } catch {
    return false
  }
}

export async function checkJwks ({ config, endpoints, keySet }: DoctorContext): Promise<Verdict> {
  const url = shown((await endpoints()).jwks)
  const where = config.jwksUrl !== undefined ? `check ${settingName('jwksUrl')} (or remove it to use the realm's)` : 'check that this host reaches Keycloak'
  const probe = await keySet()
  if ('failure' in probe) return fail(`${probe.failure} (${url})`, where)
  const { answer } = probe
  const keys = isJsonObject(answer.body) && Array.isArray(answer.body.keys) ? answer.body.keys.filter(isJsonObject) as JWK[] : undefined
  if (answer.status !== 200 || keys === undefined) return fail(`${url} answered HTTP ${answer.status} without a key set`, where)
  const usable: string[] = []
  for (const alg of config.algorithms) {
    let count = 0
    for (const key of keys) if (fitsAlgorithm(key, alg) && await importable(key, alg)) count++
    if (count > 0) usable.push(`${count} ${alg}`)
  }
  if (usable.length > 0) return pass(`${url} has signing keys: ${usable.join(', ')}`)
  // Names the key set gives itself: whatever it sent, so escaped, bounded, and a few of them only.
  const published = [...new Set(keys.filter((key) => key.use !== 'enc').map((key) => printable(String(key.alg ?? key.kty), 40)))]
  const named = published.length > 8 ? `${published.slice(0, 8).join(', ')} and ${published.length - 8} more` : published.join(', ')
  return fail(
    `${url} has no signing key for ${config.algorithms.join(', ')} (it publishes ${published.length === 0 ? 'no signing key' : named})`,
    `set ${settingName('algorithms')} to the algorithm of the realm's active key (Realm settings → Keys), e.g. ["RS256"]`
  )
}
