/**
 * The login transaction: what the callback must match (state, nonce, PKCE verifier, redirect_uri)
 * and where the browser goes afterwards, kept in an encrypted and authenticated cookie for ten
 * minutes. A transaction is single use: its state is claimed once, through the shared store when
 * there is one, so a replayed cookie is refused on every replica before any call to Keycloak.
 *
 * Browser state stays small whatever the requests carry (SPEC 5, after step 10): a browser holds at
 * most `TRANSACTION_SLOTS` transaction cookies, in slots of fixed names, a new login taking a free
 * slot or the oldest one; and each cookie is refused at creation when it would exceed
 * `MAX_TRANSACTION_COOKIE_BYTES`. So no sequence of login starts, not even concurrent ones, can grow
 * the `Cookie` header towards the server's limit (HTTP 431), and no cookie passes the 4 KB a browser
 * keeps. Two tabs still log in side by side, each in its own slot.
 */
import { createHash, randomBytes } from 'node:crypto'
import { SsoError } from '../errors.js'
import { randomToken, timingSafeEqualText } from '../crypto.js'
import { Sealer } from './sealed.js'

export const TRANSACTION_TTL_SEC = 600
/** Logins a browser may have in progress at once; a fourth one replaces the oldest. */
export const TRANSACTION_SLOTS = 3
/**
 * Upper bound of one transaction cookie's `name=value`. Three of them, the session cookie and the
 * ID-token cookie stay below 10 KB, well inside Node's 16 KB limit for all request headers.
 */
export const MAX_TRANSACTION_COOKIE_BYTES = 2048

const SLOT_NAMES = Array.from({ length: TRANSACTION_SLOTS }, (_, i) => `clearml_kc_tx_${i}`)

export interface LoginTransaction {
  state: string
  nonce: string
  verifier: string
  redirectUri: string
  returnTo: string
  /** An opaque value a JSON client passed to `login.sso_authorize`, echoed by `login.sso_callback`. */
  appState?: string
}

/** True the first time a key is claimed until `expiresAt` (seconds); `RevocationStore.claimOnce`. */
export type ClaimOnce = (key: string, expiresAt: number) => Promise<boolean>

type CookieJar = Record<string, string | undefined>

/**
 * A slot cookie's value is `<state tag>.<issued at>.<sealed transaction>`: the tag finds the slot of
 * a callback's state without decrypting the others, the time picks the oldest slot to replace. Both
 * are harmless in clear: the tag is a short hash of a random value, and only the sealed part is trusted.
 */
function stateTag (state: string): string {
  return createHash('sha256').update(state).digest('base64url').slice(0, 10)
}

function parseSlot (value: string | undefined): { tag: string, issuedAt: number, sealed: string } | undefined {
  const match = value?.match(/^([\w-]{10})\.(\d{1,12})\.(.+)$/)
  return match === null || match === undefined ? undefined : { tag: match[1], issuedAt: Number(match[2]), sealed: match[3] }
}

/**
 * The slot a new login takes: a free one, else the one holding the oldest login, but never the slot
 * of `keepState`: ClearML Enterprise's web app asks for a new login on its callback page, with the
 * callback's own state, before it completes that callback (SPEC 13.3).
 */
export function slotForNewLogin (cookies: CookieJar, keepState?: string): string {
  const kept = slotOfState(cookies, keepState)
  let oldest = SLOT_NAMES[0]
  let oldestAt = Number.POSITIVE_INFINITY
  for (const name of SLOT_NAMES) {
    const slot = parseSlot(cookies[name])
    if (slot === undefined) return name
    if (name !== kept && slot.issuedAt < oldestAt) {
      oldest = name
      oldestAt = slot.issuedAt
    }
  }
  return oldest
}

/** The slot holding the transaction of `state`, if this browser has one. */
export function slotOfState (cookies: CookieJar, state: string | undefined): string | undefined {
  if (typeof state !== 'string' || state === '') return undefined
  const tag = stateTag(state)
  return SLOT_NAMES.find((name) => parseSlot(cookies[name])?.tag === tag)
}

/**
 * A state that is also the web app's return path, for ClearML Enterprise's protocol, whose callback
 * page navigates to the callback's `state` (SPEC 13.3): the path and query, then a fragment of 256
 * random bits. `new URL(state, webapp)` gives the path and query; the whole state, fragment included,
 * is what the callback must match. Hex, so that the random part never spells the `signup` or `invite`
 * markers the web app looks for in that path.
 */
function stateShowingPath (path: string): string {
  return `${path}#${randomBytes(32).toString('hex')}`
}

export class TransactionCodec {
  readonly #sealer: Sealer
  readonly #claimOnce: ClaimOnce

  constructor (secret: string, claimOnce: ClaimOnce) {
    this.#sealer = new Sealer(secret, 'login-transaction')
    this.#claimOnce = claimOnce
  }

  /** With `stateShowsReturnPath`, the state is the return path (without its fragment) and a random fragment. */
  create (fields: Pick<LoginTransaction, 'redirectUri' | 'returnTo' | 'appState'>, stateShowsReturnPath = false): LoginTransaction {
    if (!stateShowsReturnPath) return { state: randomToken(), nonce: randomToken(), verifier: randomToken(), ...fields }
    const returnTo = fields.returnTo.split('#', 1)[0]
    return { state: stateShowingPath(returnTo), nonce: randomToken(), verifier: randomToken(), ...fields, returnTo }
  }

  /** The cookie value for `slot`; refused (`bad_request`) when the request's inputs make it too large. */
  async seal (transaction: LoginTransaction, slot: string): Promise<string> {
    const issuedAt = Math.floor(Date.now() / 1000)
    // A state that shows the return path holds it already: kept once, the path may be twice as long.
    const { returnTo, ...rest } = transaction
    const stored = transaction.state.startsWith(`${returnTo}#`) ? rest : transaction
    const value = `${stateTag(transaction.state)}.${issuedAt}.${await this.#sealer.seal({ tx: stored }, TRANSACTION_TTL_SEC)}`
    if (Buffer.byteLength(slot) + 1 + Buffer.byteLength(value) > MAX_TRANSACTION_COOKIE_BYTES) {
      throw new SsoError('bad_request', `callback_url, state and redirect together are too long for the login cookie (${MAX_TRANSACTION_COOKIE_BYTES} bytes)`)
    }
    return value
  }

  /** Opens this callback's slot cookie, checks it belongs to `state`, and uses it up. */
  async consume (cookies: CookieJar, state: string): Promise<LoginTransaction> {
    const slot = slotOfState(cookies, state)
    if (slot === undefined) {
      throw new SsoError('invalid_state', 'no login transaction for this state in this browser (expired, used, replaced by newer logins, or never started here)')
    }
    let transaction: LoginTransaction
    let exp: number
    try {
      const payload = await this.#sealer.open(parseSlot(cookies[slot])!.sealed)
      transaction = payload.tx as LoginTransaction
      exp = payload.exp!
    } catch (err) {
      const expired = (err as { code?: string }).code === 'ERR_JWT_EXPIRED'
      throw new SsoError('invalid_state', expired ? 'the login transaction expired' : 'the login transaction cookie is not valid', { cause: err })
    }
    // The tag only found the slot; the sealed state decides.
    if (typeof transaction?.state !== 'string' || !timingSafeEqualText(transaction.state, state)) {
      throw new SsoError('invalid_state', 'state does not match the login transaction')
    }
    transaction.returnTo ??= transaction.state.slice(0, transaction.state.lastIndexOf('#'))
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
