/**
 * Values the plugin hands to the browser to keep (the login transaction, the ID token for logout),
 * encrypted and authenticated with a key derived from the configured secrets, so every instance of
 * the apiserver can open what another sealed and nobody else can read or alter them.
 */
import { EncryptJWT, jwtDecrypt, type JWTPayload } from 'jose'
import { webcrypto } from 'node:crypto'
import { deriveKey } from '../crypto.js'

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
