/**
 * Evidence for docs/decisions.md ("The session fast path: node:crypto, not fast-jwt"): tokens on
 * which fast-jwt's verifier and jose (which `SessionTokenVerifier` matches, test/session-fast-path.test.ts)
 * decide differently. `npx tsx bench/fast-jwt-agreement.ts`; prints one line per token and the
 * number of disagreements.
 */
import { createHmac } from 'node:crypto'
import { createVerifier } from 'fast-jwt'
import { SessionTokenVerifier } from '../lib/session/token-verifier.js'

const SECRET = 'agreement-secret-of-thirty-two-bytes'
const NOW = 1_800_000_000
const b64 = (bytes: Uint8Array | string): string => Buffer.from(bytes).toString('base64url')
const sign = (input: string): string => b64(createHmac('sha256', SECRET).update(input).digest())
const signed = (header: string, payload: string): string => `${header}.${payload}.${sign(`${header}.${payload}`)}`
const json = (value: unknown): string => b64(JSON.stringify(value))
const HEADER = json({ alg: 'HS256', typ: 'JWT' })
const CLAIMS = { auth_type: 'Bearer', identity: { company: 'c', user: 'u' }, session_id: 's', iat: NOW - 60, exp: NOW + 3600 }
const GOOD = signed(HEADER, json(CLAIMS))
const [header, payload, signature] = GOOD.split('.')

// fast-jwt configured as the issue asks: HS256 only, exp and iat required, its cache off, our clock.
const fastJwt = createVerifier({ key: SECRET, algorithms: ['HS256'], requiredClaims: ['exp', 'iat'], clockTimestamp: NOW * 1000, cache: false })
const jose = new SessionTokenVerifier(SECRET)
const rows: Array<[string, string]> = [
  ['a token as SessionTokens.issue writes it', GOOD],
  ['crit names an unknown extension', signed(json({ alg: 'HS256', crit: ['exp'], exp: 1 }), json(CLAIMS))],
  ['exp is this very second', signed(HEADER, json({ ...CLAIMS, exp: NOW }))],
  ['exp a numeric string', signed(HEADER, json({ ...CLAIMS, exp: String(NOW + 3600) }))],
  ['iat not a number ("yesterday")', signed(HEADER, json({ ...CLAIMS, iat: 'yesterday' }))],
  ['nbf a numeric string', signed(HEADER, json({ ...CLAIMS, nbf: String(NOW - 10) }))],
  ['claims an array', signed(HEADER, json([CLAIMS]))],
  ['claims after a UTF-8 byte-order mark', signed(HEADER, b64(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(CLAIMS))])))],
  ['claims not UTF-8', signed(HEADER, b64(Buffer.concat([Buffer.from(JSON.stringify(CLAIMS).slice(0, -1)), Buffer.from([0xff, 0x7d])])))],
  ['"=" after the signature', `${GOOD}=`],
  ['a space inside the signature', `${header}.${payload}.${signature.slice(0, 10)} ${signature.slice(10)}`]
]
let disagreements = 0
for (const [name, token] of rows) {
  let byFastJwt: string
  try {
    fastJwt(token)
    byFastJwt = 'accepts'
  } catch (err) {
    byFastJwt = `refuses (${(err as { code?: string }).code ?? 'error'})`
  }
  const byJose = jose.verify(token, NOW) === null ? 'refuses' : 'accepts'
  const differ = byFastJwt.slice(0, 7) !== byJose
  if (differ) disagreements++
  console.log(`${differ ? '≠' : '='} ${name.padEnd(42)} jose ${byJose.padEnd(8)} fast-jwt ${byFastJwt}`)
}
console.log(`${disagreements} of ${rows.length} tokens decided differently`)
