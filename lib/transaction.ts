/**
 * The login transaction: what the callback must match (state, nonce, PKCE verifier, redirect_uri)
 * and where the browser goes afterwards, kept in an encrypted and authenticated cookie for ten
 * minutes. Each transaction has its own cookie, named after its state, so two logins started in two
 * tabs do not overwrite each other. A transaction is single use: its state is claimed once, through
 * the shared store when there is one, so a replayed cookie is refused on every replica before any
 * call to Keycloak.
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

/** True the first time a key is claimed until `expiresAt` (seconds); `RevocationStore.claimOnce`. */
export type ClaimOnce = (key: string, expiresAt: number) => Promise<boolean>

export class TransactionCodec {
  readonly #sealer: Sealer
  readonly #claimOnce: ClaimOnce

  constructor (secret: string, claimOnce: ClaimOnce) {
    this.#sealer = new Sealer(secret, 'login-transaction')
    this.#claimOnce = claimOnce
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
    let first: boolean
    try {
      first = await this.#claimOnce(transaction.state, exp)
    } catch (err) {
      throw new SsoError('directory_error', 'the shared store could not claim the login transaction', { cause: err })
    }
    if (!first) throw new SsoError('invalid_state', 'the login transaction was already used')
    return transaction
  }
}
