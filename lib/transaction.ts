/**
 * The login transaction: what the callback must match (state, nonce, PKCE verifier, redirect_uri)
 * and where the browser goes afterwards, kept in an encrypted and authenticated cookie for ten
 * minutes. Each transaction has its own cookie, named after its state, so two logins started in two
 * tabs do not overwrite each other. A transaction is single use: its id is remembered until it
 * expires, so a replayed cookie is refused even if the browser did not drop it.
 */
import { createHash } from 'node:crypto'
import { SsoError } from './errors.js'
import { randomToken, timingSafeEqualText } from './crypto.js'
import { Sealer } from './sealed.js'

export const TRANSACTION_TTL_SEC = 600
const TRANSACTION_COOKIE_PREFIX = 'clearml_kc_tx_'

export interface LoginTransaction {
  id: string
  state: string
  nonce: string
  verifier: string
  redirectUri: string
  returnTo: string
  /** An opaque value a JSON client passed to `login.sso_authorize`, echoed by `login.sso_callback`. */
  appState?: string
}

/** The cookie that holds the transaction for `state`. */
export function transactionCookieName (state: string): string {
  return TRANSACTION_COOKIE_PREFIX + createHash('sha256').update(state).digest('base64url').slice(0, 16)
}

export class TransactionCodec {
  readonly #sealer: Sealer
  readonly #used = new Map<string, number>()
  readonly #maxRemembered: number

  constructor (secret: string, maxRemembered = 100_000) {
    this.#sealer = new Sealer(secret, 'login-transaction')
    this.#maxRemembered = maxRemembered
  }

  create (fields: Pick<LoginTransaction, 'redirectUri' | 'returnTo' | 'appState'>): LoginTransaction {
    return { id: randomToken(16), state: randomToken(), nonce: randomToken(), verifier: randomToken(), ...fields }
  }

  async seal (transaction: LoginTransaction): Promise<string> {
    return await this.#sealer.seal({ tx: transaction }, TRANSACTION_TTL_SEC)
  }

  /** Opens the cookie, checks it belongs to `state`, and uses it up. */
  async consume (sealed: string | undefined, state: string): Promise<LoginTransaction> {
    if (sealed === undefined || sealed === '') throw new SsoError('invalid_state', 'no login transaction cookie for this state (expired, used, or never started here)')
    let transaction: LoginTransaction
    let exp: number
    try {
      const payload = await this.#sealer.open(sealed)
      transaction = payload.tx as LoginTransaction
      exp = payload.exp!
    } catch (err) {
      const expired = (err as { code?: string }).code === 'ERR_JWT_EXPIRED'
      throw new SsoError('invalid_state', expired ? 'the login transaction expired' : 'the login transaction cookie is not valid', { cause: err })
    }
    if (typeof transaction?.state !== 'string' || !timingSafeEqualText(transaction.state, state)) {
      throw new SsoError('invalid_state', 'state does not match the login transaction')
    }
    this.#forgetExpired()
    if (this.#used.has(transaction.id)) throw new SsoError('invalid_state', 'the login transaction was already used')
    this.#used.set(transaction.id, exp)
    return transaction
  }

  #forgetExpired (): void {
    if (this.#used.size < this.#maxRemembered) return
    const now = Math.floor(Date.now() / 1000)
    for (const [id, exp] of this.#used) if (exp < now) this.#used.delete(id)
    // Still full of live entries: drop the oldest. The authorization code they carried is single use
    // at Keycloak anyway; this memory only adds a second line of defence.
    for (const id of this.#used.keys()) {
      if (this.#used.size < this.#maxRemembered) break
      this.#used.delete(id)
    }
  }
}
