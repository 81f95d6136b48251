/**
 * The one place where a refusal becomes an HTTP answer (SPEC section 8): browser routes redirect to
 * `/login?sso_error=<code>`, JSON routes answer the ClearML envelope with the code. Nothing of the
 * request (codes, tokens) is echoed; the reason goes to the log.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { errorEnvelope } from '../lib/envelope.js'
import { SsoError } from '../lib/errors.js'

export interface RouteMeta {
  /** ClearML endpoint name for the envelope, e.g. `login.sso_callback`. */
  endpoint: string
  /** Browser routes answer refusals with a redirect instead of JSON. */
  browser?: boolean
  /** One status for every refusal, where a protocol prescribes it (back-channel logout: 400). */
  refusalStatus?: number
}

export function toSsoError (error: FastifyError | SsoError): SsoError {
  if (error instanceof SsoError) return error
  const status = error.statusCode ?? 500
  // Fastify's own refusals of a malformed request (bad JSON, schema, content type) are the client's.
  if (status >= 400 && status < 500) return new SsoError('bad_request', error.message)
  return new SsoError('internal_error', 'unexpected error', { cause: error })
}

/** Every refusal once, at warn, with its code and the reason an operator acts on; a bug at error, with its stack. */
export function logRefusal (request: FastifyRequest, error: SsoError): void {
  if (error.code === 'internal_error') {
    request.log.error({ err: error.cause }, 'Keycloak SSO: unexpected error')
  } else {
    request.log.warn({ code: error.code, reason: error.message }, 'Keycloak SSO refused')
  }
}

export async function ssoErrorHandler (error: FastifyError | SsoError, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const sso = toSsoError(error)
  const meta = request.routeOptions.config as unknown as RouteMeta
  logRefusal(request, sso)
  if (meta.browser === true) {
    await reply.redirect(`/login?sso_error=${sso.code}`, 302)
    return
  }
  const status = sso.code === 'internal_error' ? sso.statusCode : meta.refusalStatus ?? sso.statusCode
  await reply.code(status).send(errorEnvelope(meta.endpoint, status, sso.code))
}
