/**
 * Verification of Keycloak's tokens with jose (SPEC section 5 step 3). Every check that fails is an
 * `invalid_token` whose message names the check, never the token.
 */
import { errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey, type JWTVerifyOptions } from 'jose'
import { settingName } from '../config/settings.js'
import { SsoError } from '../errors.js'
import { timingSafeEqualText } from '../crypto.js'

export interface VerifyOptions {
  issuer: string
  clientId: string
  algorithms: string[]
  clockToleranceSec: number
  getKey: JWTVerifyGetKey
}

async function verify (token: string, what: string, options: VerifyOptions, audience?: string, requiredClaims = ['exp', 'iat', 'sub']): Promise<JWTPayload> {
  const checks = {
    issuer: options.issuer,
    audience,
    algorithms: options.algorithms,
    clockTolerance: options.clockToleranceSec,
    requiredClaims
  }
  let claims: JWTPayload
  try {
    claims = await verifySignatureAndClaims(token, options.getKey, checks)
  } catch (err) {
    if (err instanceof SsoError) throw err
    const { code } = err as errors.JOSEError
    const failed = err instanceof errors.JWTClaimValidationFailed || err instanceof errors.JWTExpired ? err : undefined
    const claim = failed === undefined ? '' : ` (${failed.claim})`
    throw new SsoError('invalid_token', `${what} rejected: ${code}${claim}: ${checkHint(err as errors.JOSEError, failed, options)}`, { cause: err })
  }
  // jose checks `iat` against the clock only when asked for a maximum age; a token "issued" in the
  // future is either forged ahead of time or from a provider whose clock is off: refused either way.
  if (typeof claims.iat === 'number' && claims.iat > Date.now() / 1000 + options.clockToleranceSec) {
    reject(what, `iat is in the future: it is dated in the future: compare this server's clock with Keycloak's (${settingName('clockToleranceSec')} allows ${options.clockToleranceSec} s)`)
  }
  return claims
}

async function verifySignatureAndClaims (token: string, getKey: JWTVerifyGetKey, checks: JWTVerifyOptions): Promise<JWTPayload> {
  try {
    return (await jwtVerify(token, getKey, checks)).payload
  } catch (err) {
    if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err
    // No kid and several candidate keys (OpenID Core 10.1 lets the client try them): the first
    // key whose signature verifies decides; the claim checks then apply as usual.
    for await (const key of err) {
      try {
        return (await jwtVerify(token, key, checks)).payload
      } catch (attempt) {
        if (!(attempt instanceof errors.JWSSignatureVerificationFailed)) throw attempt
      }
    }
    throw new errors.JWSSignatureVerificationFailed()
  }
}

/**
 * What a failed check usually means and which setting to look at. A token's own claims are quoted
 * only for `iss`, a URL that says which realm signed it (never a secret), and bounded.
 */
function checkHint (err: errors.JOSEError, failed: errors.JWTClaimValidationFailed | errors.JWTExpired | undefined, options: VerifyOptions): string {
  const clock = `compare this server's clock with Keycloak's (${settingName('clockToleranceSec')} allows ${options.clockToleranceSec} s)`
  if (failed !== undefined) {
    if (failed.reason === 'missing') return `it has no "${failed.claim}" claim`
    switch (failed.claim) {
      case 'iss': return `its issuer ${JSON.stringify(String(failed.payload.iss).slice(0, 200))} is not ${settingName('baseUrl')} (${options.issuer}): set base_url to the issuer Keycloak puts in its tokens (its frontend URL)`
      case 'exp': return `it expired: if logins are not slow, ${clock}`
      case 'nbf':
      case 'iat': return `it is dated in the future: ${clock}`
      // aud: the one other claim jose checks against a setting.
      default: return `its "${failed.claim}" claim does not name this client, ${settingName('clientId')} (${options.clientId})`
    }
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return `it is signed with an algorithm not in ${settingName('algorithms')} (${options.algorithms.join(', ')}): allow the algorithm of the realm's active key (Realm settings, Keys)`
  if (err instanceof errors.JWKSNoMatchingKey) return `the realm's key set has no key for it, even reloaded: is ${settingName('jwksUrl')} (or discovery's jwks_uri) this realm's?`
  if (err instanceof errors.JWSSignatureVerificationFailed) return 'its signature does not verify with the realm\'s keys: forged, or signed by another realm'
  return 'it is not a signed JWT of this realm'
}

function reject (what: string, reason: string): never {
  throw new SsoError('invalid_token', `${what} rejected: ${reason}`)
}

/** A token of a refresh answered for another Keycloak user than the session's: the session ends, unlike any other refusal. */
export class SubjectMismatch extends SsoError {
  constructor (what: string, reason: string) {
    super('invalid_token', `${what} rejected: ${reason}`)
  }
}

/**
 * The ID token: signature, `iss`, `aud` ∋ client, `azp`, `exp`/`iat`/`sub`, and `nonce` at a login.
 * An ID token from a refresh (`subject`) has the login's `sub` instead (OpenID Connect Core 12.2):
 * its nonce, when present, is the login's, which the session does not keep.
 */
export async function verifyIdToken (token: string, options: VerifyOptions & ({ nonce: string } | { subject: string })): Promise<JWTPayload> {
  const claims = await verify(token, 'ID token', options, options.clientId)
  const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud]
  // OpenID Connect Core 3.1.3.7: azp must be the client when present, and must be present when
  // the token has several audiences.
  if ((claims.azp !== undefined || audiences.length > 1) && claims.azp !== options.clientId) reject('ID token', `azp is not this client (${settingName('clientId')}): a token issued to another client`)
  if (claims.typ !== undefined && claims.typ !== 'ID') reject('ID token', 'typ is not ID')
  if (!('nonce' in options)) {
    if (claims.sub !== options.subject) throw new SubjectMismatch('ID token', 'sub differs from the session\'s Keycloak user')
  } else if (typeof claims.nonce !== 'string' || !timingSafeEqualText(claims.nonce, options.nonce)) {
    reject('ID token', 'nonce does not match the login')
  }
  return claims
}

/**
 * Keycloak's access token. Its `aud` is usually `account` (or absent) unless an Audience mapper adds
 * the client, so the client is checked through `azp`, the party the token was issued to. An API
 * client's token (a CLI, a service account) has its own client as `azp`; the host then names the
 * audiences it accepts (`bearer.audiences`), which Keycloak's Audience mapper puts into `aud`.
 */
export async function verifyAccessToken (token: string, options: VerifyOptions & { subject?: string, audiences?: readonly string[] }): Promise<JWTPayload> {
  const claims = await verify(token, 'access token', options)
  if (claims.typ !== undefined && claims.typ !== 'Bearer') reject('access token', 'typ is not Bearer')
  if (claims.azp !== options.clientId) {
    const audiences = claims.aud === undefined ? [] : Array.isArray(claims.aud) ? claims.aud : [claims.aud]
    if (!audiences.some((audience) => options.audiences?.includes(audience) === true)) {
      reject('access token', options.audiences === undefined || options.audiences.length === 0
        ? `azp is not this client (${settingName('clientId')}): a token issued to another client`
        : `azp is not this client (${settingName('clientId')}) and aud names none of bearer.audiences`)
    }
  }
  if (options.subject !== undefined && claims.sub !== options.subject) throw new SubjectMismatch('access token', 'sub differs from the ID token')
  return claims
}

export const BACKCHANNEL_LOGOUT_EVENT = 'http://schemas.openid.net/event/backchannel-logout'

/**
 * A back-channel logout token (OpenID Connect Back-Channel Logout 1.0, 2.6): signature, `iss`, `aud`
 * ∋ client, `iat`, `jti`, the logout event, no `nonce` (so an ID token cannot be replayed as one),
 * and a `sid`, since sessions are revoked by Keycloak session (Keycloak's "Backchannel logout
 * session required", on by default).
 */
export async function verifyLogoutToken (token: string, options: VerifyOptions): Promise<JWTPayload & { sid: string }> {
  const claims = await verify(token, 'logout token', options, options.clientId, ['iat', 'jti'])
  const events = claims.events as Record<string, unknown> | undefined
  if (events === null || typeof events !== 'object' || typeof events[BACKCHANNEL_LOGOUT_EVENT] !== 'object') reject('logout token', 'no back-channel logout event')
  if (claims.nonce !== undefined) reject('logout token', 'it has a nonce')
  if (claims.typ !== undefined && claims.typ !== 'Logout') reject('logout token', 'typ is not Logout')
  if (typeof claims.sid !== 'string' || claims.sid === '') reject('logout token', 'no sid (turn on "Backchannel logout session required")')
  return claims as JWTPayload & { sid: string }
}
