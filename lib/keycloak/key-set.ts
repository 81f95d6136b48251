/**
 * Keycloak's signing keys, one set per issuer. Unlike jose's `createRemoteJWKSet`, whose 30-second
 * cooldown counts from the first fetch and so hides a key rotation that happens soon after start,
 * this set reloads at once on an unknown `kid` and shares that reload among all concurrent
 * verifications (one fetch per rotation, however many logins wait).
 *
 * How often an unknown `kid` may force a reload depends on where the token came from. A token the
 * token endpoint just handed to a login (`getKey`) comes from Keycloak itself over TLS: its `kid` is
 * a real rotation, and it reloads at once, always. A token from an unauthenticated channel
 * (`getUntrustedKey`: the back-channel logout body, an `Authorization: Bearer` header, a host's call)
 * may be forged by anyone, so those force at most one reload per cooldown between them; and their
 * cooldown is their own, so a forged token can never hold off the reload a login needs.
 *
 * A load that fails, whatever its reason, starts a back-off of one cooldown (issue #22, finding 4):
 * until it ends, a token from an unauthenticated channel makes no request (with no set yet it is
 * refused as Keycloak being unavailable, without asking again), and nobody retries the refresh of a
 * set past its maximum age. A refresh that fails keeps the previous set: a Keycloak outage must not
 * refuse the tokens the keys in memory verify. A login's loads (no set yet, unknown `kid`) are never
 * held off: its token is Keycloak's own, and the login cannot proceed without the key.
 */
import { createLocalJWKSet, errors, type JWTVerifyGetKey } from 'jose'
import { publishJwksFetch, type JwksFetchReason } from '../diagnostics.js'
import { SsoError } from '../errors.js'
import { settingName } from '../config/settings.js'
import { callJson, isJsonObject } from './http.js'

export interface KeySetOptions {
  /** Where the key set is; resolved lazily because it may come from discovery. */
  url: () => Promise<string>
  timeoutMs: number
  /**
   * Minimum time between two reloads forced by unknown `kid`s from unauthenticated channels, and the
   * back-off after a failed load.
   */
  cooldownMs?: number
  /** A key set older than this is fetched again before use, so removed keys stop being trusted. */
  maxAgeMs?: number
}

type LocalSet = ReturnType<typeof createLocalJWKSet>

export class RemoteKeySet {
  /** How many times the key set was fetched; for tests and benchmarks. */
  fetches = 0
  readonly #options: Required<KeySetOptions>
  #local: LocalSet | undefined
  #generation = 0
  #fetchedAt = 0
  #lastUntrustedForcedAt = Number.NEGATIVE_INFINITY
  /** When the last load failed, and what it said (reused while backing off, so the log still names the setting). */
  #failure: { at: number, message: string } | undefined
  #inFlight: Promise<void> | undefined

  constructor (options: KeySetOptions) {
    this.#options = { cooldownMs: 30_000, maxAgeMs: 10 * 60_000, ...options }
  }

  #reload (reason: JwksFetchReason): Promise<void> {
    this.#inFlight ??= this.#load(reason).then(() => { this.#failure = undefined }, (err: unknown) => {
      this.#failure = { at: Date.now(), message: err instanceof SsoError ? err.message : 'key set (jwks) could not be loaded: its last load failed' }
      throw err
    }).finally(() => { this.#inFlight = undefined })
    return this.#inFlight
  }

  async #load (reason: JwksFetchReason): Promise<void> {
    this.fetches++
    publishJwksFetch(reason)
    const url = await this.#options.url()
    const answer = await callJson(url, { timeoutMs: this.#options.timeoutMs, what: 'key set (jwks)', headers: { accept: 'application/json' } })
    if (answer.status !== 200 || !isJsonObject(answer.body) || !Array.isArray(answer.body.keys)) {
      throw new SsoError('idp_unavailable', `key set (jwks) answered HTTP ${answer.status} without a key set at ${url}: is ${settingName('jwksUrl')} (or discovery's jwks_uri) this realm's certs endpoint?`)
    }
    try {
      this.#local = createLocalJWKSet(answer.body as unknown as Parameters<typeof createLocalJWKSet>[0])
    } catch (err) {
      throw new SsoError('idp_unavailable', `key set (jwks) at ${url} is malformed: is ${settingName('jwksUrl')} (or discovery's jwks_uri) this realm's certs endpoint?`, { cause: err })
    }
    this.#generation++
    this.#fetchedAt = Date.now()
  }

  /** A load failed less than a cooldown ago. */
  #backingOff (): boolean {
    return this.#failure !== undefined && Date.now() - this.#failure.at < this.#options.cooldownMs
  }

  /** A set to verify with: loaded when there is none, refreshed past its maximum age unless backing off. */
  async #current (trusted: boolean): Promise<void> {
    if (this.#local === undefined) {
      if (!trusted && this.#backingOff()) throw new SsoError('idp_unavailable', this.#failure!.message)
      await this.#reload('initial')
    } else if (Date.now() - this.#fetchedAt > this.#options.maxAgeMs && !this.#backingOff()) {
      // A failed refresh keeps the previous set and is retried after the back-off (the failure shows
      // on the idp-call channel); a removed key stops being trusted once Keycloak answers again.
      await this.#reload('max_age').catch(() => {})
    }
  }

  async #resolve (header: Parameters<JWTVerifyGetKey>[0], token: Parameters<JWTVerifyGetKey>[1], trusted: boolean): Promise<Awaited<ReturnType<JWTVerifyGetKey>>> {
    await this.#current(trusted)
    const generation = this.#generation
    try {
      return await this.#local!(header, token)
    } catch (err) {
      if (!(err instanceof errors.JWKSNoMatchingKey)) throw err
      if (this.#inFlight !== undefined) {
        await this.#inFlight
      } else if (this.#generation === generation) {
        // Not reloaded since this token was tried: force a reload; from an unauthenticated channel,
        // unless one such was forced recently.
        if (!trusted) {
          if (Date.now() - this.#lastUntrustedForcedAt < this.#options.cooldownMs || this.#backingOff()) throw err
          this.#lastUntrustedForcedAt = Date.now()
        }
        await this.#reload('unknown_kid')
      }
      return await this.#local!(header, token)
    }
  }

  /** jose's key resolver for tokens straight from Keycloak's token endpoint: `jwtVerify(token, keySet.getKey, ...)`. */
  readonly getKey: JWTVerifyGetKey = async (header, token) => await this.#resolve(header, token, true)

  /** jose's key resolver for tokens anyone could have sent (logout tokens, bearer headers). */
  readonly getUntrustedKey: JWTVerifyGetKey = async (header, token) => await this.#resolve(header, token, false)
}
