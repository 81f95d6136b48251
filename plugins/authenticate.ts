/**
 * `authenticate`, the preHandler of every protected route (SPEC sections 7 and 10), and the reading of
 * a request's credential. It runs on every authenticated request, so a credential already verified is
 * accepted synchronously (no promise, no allocation beyond the map look-ups), and everything else
 * happens on the slow path.
 *
 * Which credentials go where: the session cookie carries ClearML sessions only; `Authorization:
 * Bearer` carries a ClearML session token or, when the host enables it, a Keycloak access token. The
 * two never stand in for each other: a ClearML session is an HS256 token of our own shape that no
 * Keycloak check accepts (no issuer, no key in the realm's key set), and a Keycloak token fails the
 * session check (another algorithm, another shape).
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { KeycloakBearerTokens } from '../lib/keycloak/bearer.js'
import { errorEnvelope } from '../lib/envelope.js'
import { SsoError } from '../lib/errors.js'
import { publishAuthRefused } from '../lib/diagnostics.js'
import type { ClearmlIdentity, CredentialKind } from '../lib/session/claims.js'
import type { KeycloakSso } from '../lib/sso.js'
import { logRefusal, toSsoError } from './error-handler.js'

export type AuthenticateHook = (request: FastifyRequest, reply: FastifyReply, done?: (err?: Error) => void) => Promise<void> | undefined

export interface Authenticator {
  authenticate: AuthenticateHook
  /** The request's valid ClearML session, or `null`: for pages that change when someone is logged in. */
  sessionOf: (request: FastifyRequest) => Promise<Readonly<ClearmlIdentity> | null>
  /** The ClearML session token of a request: the session cookie, else `Authorization: Bearer`. */
  tokenOf: (request: FastifyRequest) => string | undefined
}

// The scheme is case-insensitive (RFC 9110 11.1); tested in place, without copying the header.
const BEARER_SCHEME = /^bearer /i
// HTTP parsers trim a header's surrounding whitespace, so a bearer header longer than `Bearer ` has a token.
function bearerToken (header: string | undefined): string | undefined {
  if (header === undefined || header.length <= 7 || !BEARER_SCHEME.test(header)) return undefined
  return header.slice(7).trim()
}

export function authenticator (options: { sso: KeycloakSso, bearer?: KeycloakBearerTokens, cookieName: string }): Authenticator {
  const { sso, bearer, cookieName } = options

  const cookieToken = (request: FastifyRequest): string | undefined => {
    const value = request.cookies[cookieName]
    return value === undefined || value === '' ? undefined : value
  }
  const tokenOf = (request: FastifyRequest): string | undefined => cookieToken(request) ?? bearerToken(request.headers.authorization)

  const sessionOf = async (request: FastifyRequest): Promise<Readonly<ClearmlIdentity> | null> =>
    (await sso.verifySession(tokenOf(request)))?.identity ?? null

  // Every refusal gets its own envelope (its own `meta.id`), one warn line saying why, and one event.
  const refuse = async (request: FastifyRequest, reply: FastifyReply, error: SsoError, credential?: CredentialKind): Promise<void> => {
    logRefusal(request, error)
    publishAuthRefused(error.code, credential)
    await reply.code(error.statusCode).send(errorEnvelope('authenticate', error.statusCode, error.code))
  }

  // A session Keycloak ended says so (SPEC 12.3): the user learns that logging in again is the answer.
  const refuseSession = async (request: FastifyRequest, reply: FastifyReply, token: string): Promise<void> => {
    const ended = await sso.sessions.refusalOf(token) === 'session_ended'
    const error = ended
      ? new SsoError('session_ended', 'Keycloak ended this session (the user was disabled, deleted or signed out there): log in again')
      : new SsoError('invalid_token', 'the session token is invalid, expired or revoked: log in again')
    await refuse(request, reply, error, 'session')
  }

  const slowAuthenticate = async (request: FastifyRequest, reply: FastifyReply, token: string | undefined, fromHeader: boolean): Promise<void> => {
    if (token === undefined) return await refuse(request, reply, new SsoError('invalid_token', 'no session cookie and no bearer token: log in'))
    const session = await sso.verifySession(token)
    if (session !== null) {
      request.clearmlIdentity = session.identity
      return
    }
    if (!fromHeader || bearer === undefined || sso.sessions.isSessionToken(token)) return await refuseSession(request, reply, token)
    try {
      request.clearmlIdentity = await bearer.verify(token)
    } catch (err) {
      await refuse(request, reply, toSsoError(err as SsoError), 'keycloak')
    }
  }

  /**
   * Used as a hook, Fastify passes `done` and a cached credential is accepted synchronously, without
   * a promise; called directly (`await fastify.keycloak.authenticate(request, reply)`), it returns one.
   */
  const authenticate: AuthenticateHook = (request, reply, done) => {
    let token = cookieToken(request)
    const fromHeader = token === undefined
    if (fromHeader) token = bearerToken(request.headers.authorization)
    let identity: Readonly<ClearmlIdentity> | null | undefined = null
    let kind: CredentialKind = 'session'
    if (token !== undefined) {
      // A Keycloak token already verified is found first: one look-up, where the session check would
      // decode its signature to refuse it. Neither cache ever holds the other kind's tokens.
      const keycloak = fromHeader && bearer !== undefined ? bearer.cached(token) : undefined
      if (keycloak !== undefined) {
        identity = keycloak
        kind = 'keycloak'
      } else {
        const session = sso.sessions.cached(token)
        identity = session === undefined || session === null ? session : session.identity
      }
    }
    let pending: Promise<void>
    if (identity === undefined || token === undefined) {
      pending = slowAuthenticate(request, reply, token, fromHeader)
    } else if (identity === null) {
      pending = kind === 'session'
        ? refuseSession(request, reply, token)
        : refuse(request, reply, new SsoError('invalid_token', 'the credential expired, or its session was logged out: log in again'), kind)
    } else {
      request.clearmlIdentity = identity
      if (done === undefined) return Promise.resolve()
      done()
      return undefined
    }
    if (done === undefined) return pending
    pending.then(() => { done() }, done)
    return undefined
  }

  return { authenticate, sessionOf, tokenOf }
}
