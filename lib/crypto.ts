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
