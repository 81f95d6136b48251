/**
 * Synchronous verification of the ClearML session token (SPEC section 5 step 10), for the requests
 * whose token is not in the session cache. jose verifies HS256 through WebCrypto, which is
 * asynchronous and costs several times a whole small request; `node:crypto`'s HMAC answers at once.
 *
 * It accepts and refuses exactly the tokens that
 * `jwtVerify(token, key, { algorithms: ['HS256'], requiredClaims: ['exp', 'iat'] })` followed by
 * `isSessionClaims` does (jose 6 on this runtime), so replacing one with the other changes no
 * decision: the same compact form (three segments), base64url decoding, header rules (`alg`, `crit`,
 * `b64`), strict UTF-8 and JSON object checks, and `iat`/`nbf`/`exp` rules with jose's clock
 * (whole seconds, no tolerance). `test/session-fast-path.test.ts` checks it against jose on generated
 * tokens. jose still signs the tokens, and verifies every Keycloak token.
 */
import { isAscii } from 'node:buffer'
import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto'
import type { SessionClaims } from './claims.js'

/** The protected header every token from `SessionTokens.issue` carries: `{"alg":"HS256","typ":"JWT"}`. */
const ISSUED_HEADER = Buffer.from('{"alg":"HS256","typ":"JWT"}').toString('base64url')
const BASE64URL = /^[A-Za-z0-9_-]*$/
// jose decodes header and claims with a fatal decoder: a byte sequence that is not UTF-8 is refused.
const strictUtf8 = new TextDecoder('utf-8', { fatal: true })
// The only JWS extension jose recognises in `crit`.
const RECOGNISED_EXTENSIONS = new Set(['b64'])

/** The current time as jose reads it: whole seconds. */
export function epochSeconds (): number {
  return Math.floor(Date.now() / 1000)
}

/**
 * Bytes of a base64url segment, or `undefined` where jose's decoder throws. Tokens we issue take the
 * first branch (the canonical alphabet, no padding). Anything else is decoded as jose does on this
 * runtime, padding and ASCII whitespace included, so that a variant jose would accept is accepted.
 */
export function decodeSegment (segment: string): Uint8Array | undefined {
  // Over the bare alphabet, Buffer's decoder and atob agree except on a length of 4n + 1, which atob refuses.
  if (segment.length % 4 !== 1 && BASE64URL.test(segment)) return Buffer.from(segment, 'base64url')
  try {
    return joseDecode(segment)
  } catch {
    return undefined
  }
}

/** jose's `decodeBase64(input, true)` (lib/buffer_utils.js), line for line. */
function joseDecode (segment: string): Uint8Array {
  const native = (Uint8Array as unknown as { fromBase64?: (input: string, options: { alphabet: string }) => Uint8Array }).fromBase64
  /* c8 ignore next -- Node 20 has no Uint8Array.fromBase64; later runtimes take this branch, as jose does */
  if (native !== undefined) return native(segment, { alphabet: 'base64url' })
  if (segment.includes('+') || segment.includes('/')) throw new TypeError('Invalid base64url')
  return Buffer.from(atob(segment.replace(/-/g, '+').replace(/_/g, '/')), 'latin1')
}

/**
 * jose's `isObject` (a plain object, as a JOSE header and a claims set must be) for what `JSON.parse`
 * returns: there the plain objects are exactly the values that are neither arrays, nor null, nor
 * primitives, and all of them have `Object.prototype`, the prototype check jose adds.
 */
function isObject (input: unknown): input is Record<string, unknown> {
  return Object.prototype.toString.call(input) === '[object Object]'
}

function parseJson (bytes: Uint8Array | undefined): unknown {
  if (bytes === undefined) return undefined
  try {
    // ASCII reads the same in latin1 as in UTF-8, and faster; anything else is decoded as jose does.
    return JSON.parse(isAscii(bytes) ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1') : strictUtf8.decode(bytes))
  } catch {
    return undefined
  }
}

/**
 * Whether jose accepts a protected header other than the one we issue, when the token is otherwise
 * valid: a JSON object, `crit` (when present) a non-empty list of recognised extensions that are
 * present, `b64` true when it is critical, `alg` exactly HS256.
 */
function acceptableHeader (segment: string): boolean {
  const header = parseJson(decodeSegment(segment))
  if (!isObject(header)) return false
  const { crit } = header
  if (crit !== undefined) {
    if (!Array.isArray(crit) || crit.length === 0) return false
    for (const parameter of crit as unknown[]) {
      if (!RECOGNISED_EXTENSIONS.has(parameter as string)) return false
    }
    // jose refuses a critical parameter that is absent, a JWT with an unencoded payload, and a `b64`
    // that is not a boolean: for `b64`, the only one it recognises, all three say `b64` must be true.
    if (crit.includes('b64') && header.b64 !== true) return false
  }
  return header.alg === 'HS256'
}

/** The shape `SessionTokens.issue` gives the claims; extra claims are allowed, as with jose. */
export function isSessionClaims (payload: Record<string, unknown>): payload is SessionClaims & Record<string, unknown> {
  const identity = payload.identity as Record<string, unknown> | undefined
  return payload.auth_type === 'Bearer' && typeof payload.session_id === 'string' &&
    typeof identity === 'object' && identity !== null && typeof identity.user === 'string' && typeof identity.company === 'string'
}

/** Verifies session tokens signed with one secret, synchronously. */
export class SessionTokenVerifier {
  // Undefined for an empty secret, which WebCrypto (and so jose) refuses to use: every token is refused.
  readonly #key: KeyObject | undefined

  constructor (secret: string) {
    this.#key = secret === '' ? undefined : createSecretKey(Buffer.from(secret))
  }

  /** The token's claims when jose would accept it as a session token at `now` (seconds); otherwise `null`. */
  verify (token: string, now = epochSeconds()): SessionClaims | null {
    // Compact form: exactly three segments.
    const headerEnd = token.indexOf('.')
    // Without a first dot, the search starts at 0 and finds none either.
    const payloadEnd = token.indexOf('.', headerEnd + 1)
    if (payloadEnd === -1 || token.includes('.', payloadEnd + 1) || this.#key === undefined) return null
    // The signature's length first: a token signed any other way (a Keycloak access token presented
    // as Bearer carries a 256-byte RS256 signature) is refused before any JSON is parsed.
    const signature = decodeSegment(token.slice(payloadEnd + 1))
    if (signature === undefined || signature.length !== 32) return null
    const issuedHeader = headerEnd === ISSUED_HEADER.length && token.startsWith(ISSUED_HEADER)
    if (!issuedHeader && !acceptableHeader(token.slice(0, headerEnd))) return null
    // Then the signature itself: nothing in a token without our secret's signature is worth reading.
    const expected = createHmac('sha256', this.#key).update(token.slice(0, payloadEnd), 'latin1').digest()
    if (!timingSafeEqual(signature, expected)) return null
    return sessionClaims(parseJson(decodeSegment(token.slice(headerEnd + 1, payloadEnd))), now)
  }
}

/** jose's claim checks (`exp` and `iat` required, numeric dates, no tolerance), then the session's shape. */
function sessionClaims (claims: unknown, now: number): SessionClaims | null {
  if (!isObject(claims) || !Object.hasOwn(claims, 'exp') || !Object.hasOwn(claims, 'iat')) return null
  const { iat, nbf, exp } = claims
  if (typeof iat !== 'number' || typeof exp !== 'number' || exp <= now) return null
  if (nbf !== undefined && (typeof nbf !== 'number' || nbf > now)) return null
  return isSessionClaims(claims) ? claims : null
}
