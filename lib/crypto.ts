/**
 * Small cryptographic helpers shared by the transaction cookie, the session and the tokens.
 */
import { createHash, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto'

/** Compares two strings in time independent of where they differ. */
export function timingSafeEqualText (a: string, b: string): boolean {
  // Hashing first gives equal lengths, so the comparison does not leak the expected length either.
  const left = createHash('sha256').update(a).digest()
  const right = createHash('sha256').update(b).digest()
  return timingSafeEqual(left, right)
}

/** URL-safe random text with `bytes` bytes of entropy. */
export function randomToken (bytes = 32): string {
  return randomBytes(bytes).toString('base64url')
}

/** A 256-bit key for one purpose, derived from the configured secrets. */
export function deriveKey (secret: string, purpose: string): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', secret, 'fastify-clearml-keycloak', purpose, 32))
}

/** PKCE S256 challenge of a verifier (RFC 7636). */
export function pkceChallenge (verifier: string): string {
  return createHash('sha256').update(verifier).digest('base64url')
}

/** Longest compact JWS the plugin reads: ClearML sessions are under 1 KB, Keycloak access tokens a few KB. */
export const MAX_COMPACT_JWS = 16 * 1024

// For a segment whose length is 2 or 3 modulo 4, the characters its last one may be: those whose
// bits beyond the last whole byte are zero. Decoders ignore those bits, so any other last character
// is another spelling of the same bytes.
const LAST_OF_2 = /[AQgw]$/
const LAST_OF_3 = /[AEIMQUYcgkosw048]$/
const COMPACT = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/

/**
 * Whether a token is a compact JWS in the one spelling an encoder writes: three segments of the
 * base64url alphabet without padding, whitespace or non-zero trailing bits (RFC 7515 section 2;
 * RFC 4648 section 3.5, canonical encoding), and bounded in length. Decoders (jose's included)
 * accept other spellings of the same token; accepting only this one keeps one token one credential.
 */
export function isCanonicalCompactJws (token: string): boolean {
  if (token.length > MAX_COMPACT_JWS) return false
  const match = COMPACT.exec(token)
  if (match === null) return false
  for (let i = 1; i <= 3; i++) {
    const segment = match[i]
    const rest = segment.length % 4
    if (rest === 1 || (rest === 2 && !LAST_OF_2.test(segment)) || (rest === 3 && !LAST_OF_3.test(segment))) return false
  }
  return true
}
