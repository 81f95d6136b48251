/**
 * Values the plugin hands to the browser to keep (the login transaction, the ID token for logout),
 * and refresh tokens it keeps in the shared store, encrypted and authenticated with a key derived
 * from the configured secrets, so every instance of the apiserver can open what another sealed and
 * nobody else can read or alter them.
 */
import { EncryptJWT, jwtDecrypt, type JWTPayload } from 'jose'
import { createCipheriv, createDecipheriv, createHmac, randomBytes, webcrypto } from 'node:crypto'
import { deriveKey, timingSafeEqualText } from '../crypto.js'
import type { SessionRevision } from './follow-store.js'

export class Sealer {
  // Imported once: jose would otherwise import raw key bytes into WebCrypto on every operation.
  readonly #key: Promise<webcrypto.CryptoKey>

  constructor (secret: string, purpose: string) {
    this.#key = webcrypto.subtle.importKey('raw', deriveKey(secret, purpose), 'AES-GCM', false, ['encrypt', 'decrypt'])
  }

  async seal (payload: JWTPayload, ttlSec: number): Promise<string> {
    return await new EncryptJWT(payload)
      .setProtectedHeader({ alg: 'dir', enc: 'A256GCM' })
      .setIssuedAt()
      .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSec)
      .encrypt(await this.#key)
  }

  /** The payload; throws jose's errors (`ERR_JWT_EXPIRED`, `ERR_JWE_DECRYPTION_FAILED`, ...). */
  async open (sealed: string): Promise<JWTPayload> {
    const { payload } = await jwtDecrypt(sealed, await this.#key, { keyManagementAlgorithms: ['dir'], contentEncryptionAlgorithms: ['A256GCM'] })
    return payload
  }
}

/**
 * The same protection, synchronously and for values only this plugin's replicas read (refresh tokens
 * in the shared store): AES-256-GCM with `node:crypto`, a random 96-bit IV per value, the expiry
 * inside the authenticated plaintext. A revalidation seals and opens one on every refresh, and
 * jose's JWE through WebCrypto costs about 330 µs of CPU for the pair where this costs about 36 µs
 * (docs/decisions.md); nothing outside the plugin needs the JWE format.
 */
export class ServerSealer {
  readonly #key: Buffer

  constructor (secret: string, purpose: string) {
    this.#key = Buffer.from(deriveKey(secret, purpose))
  }

  /** `v1.<iv>.<ciphertext>.<tag>`, base64url. */
  seal (payload: Record<string, unknown>, ttlSec: number): string {
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', this.#key, iv)
    const plaintext = JSON.stringify({ ...payload, exp: Math.floor(Date.now() / 1000) + ttlSec })
    const ciphertext = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()])
    return ['v1', iv.toString('base64url'), ciphertext.toString('base64url'), cipher.getAuthTag().toString('base64url')].join('.')
  }

  /** The payload, or `undefined` when the value was not sealed with this key, was altered, or has expired. */
  open (sealed: string): Record<string, unknown> | undefined {
    const [version, iv, ciphertext, tag] = sealed.split('.')
    if (version !== 'v1' || iv === undefined || ciphertext === undefined || tag === undefined) return undefined
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.#key, Buffer.from(iv, 'base64url'))
      decipher.setAuthTag(Buffer.from(tag, 'base64url'))
      const payload = JSON.parse(Buffer.concat([decipher.update(Buffer.from(ciphertext, 'base64url')), decipher.final()]).toString('utf8')) as Record<string, unknown>
      return typeof payload.exp === 'number' && payload.exp > Date.now() / 1000 ? payload : undefined
    } catch {
      return undefined
    }
  }
}

/**
 * The MAC of a session's revision (`SessionFollowStore.revise`): the identity a revalidation gave a
 * session travels through the shared store, and whoever could write there would otherwise make any
 * session admin on every replica. HMAC-SHA256 with a key derived from the configured secrets, over
 * the session id, the version and every field of the identity.
 */
export class RevisionSigner {
  readonly #key: Buffer

  constructor (secret: string) {
    this.#key = Buffer.from(deriveKey(secret, 'session-revision'))
  }

  sign (sessionId: string, revision: Omit<SessionRevision, 'mac'>): string {
    const { company, user, user_name: userName, role, company_name: companyName } = revision.identity
    return createHmac('sha256', this.#key).update(JSON.stringify([sessionId, revision.version, company, user, userName, role, companyName])).digest('base64url')
  }

  verify (sessionId: string, revision: SessionRevision): boolean {
    return typeof revision.mac === 'string' && timingSafeEqualText(revision.mac, this.sign(sessionId, revision))
  }
}
