/**
 * `fastify.keycloak.requireLogin` (SPEC 13.5): a preHandler for the host's page routes, for example
 * the `index.html` fallback of a served ClearML web app. The open-source web app has no SSO button:
 * in SSO-only mode its login page shows nothing, and it sends the browser there on every 401 without
 * leaving the page. So the host's pages send a browser without a session to Keycloak before the web
 * app starts, and bring it back to the page and query it asked for.
 *
 * - a browser navigation (GET or HEAD, accepting HTML, `Sec-Fetch-Mode: navigate` when the browser
 *   sends fetch metadata) without a valid session: 302 to the login start, `redirect` = the path and
 *   query; on `/login` itself, its own `redirect` parameter (the web app's), else `/`;
 * - `/login?sso_error=<code>`, where a refused login lands: let through, never sent to Keycloak again,
 *   so the page shows why and a refusal cannot loop;
 * - any other request: `authenticate` (a session, or with `bearer.keycloak` a Keycloak access token;
 *   else 401 in the envelope).
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import { safeReturnPath } from '../lib/redirects.js'
import type { ClearmlIdentity } from '../lib/session/claims.js'
import type { AuthenticateHook } from './authenticate.js'

export type RequireLoginHook = (request: FastifyRequest, reply: FastifyReply) => Promise<void>

/** The web app's login page, at the root of its origin: where refusals land (`/login?sso_error=`). */
const LOGIN_PAGE = '/login'
const HTML_TYPES = new Set(['text/html', 'application/xhtml+xml'])
/** An Accept parameter that refuses the type: `q=0`, `q=0.0`, … (RFC 9110 12.4.2). */
const REFUSED = /^q=0(\.0{0,3})?$/

/** True when `accept` lists an HTML type without refusing it (`q=0`); `*\/*` alone is what scripts send. */
export function acceptsHtml (accept: string | undefined): boolean {
  if (accept === undefined) return false
  return accept.split(',').some((range) => {
    const [type, ...parameters] = range.split(';').map((part) => part.trim().toLowerCase())
    return HTML_TYPES.has(type) && !parameters.some((parameter) => REFUSED.test(parameter))
  })
}

/** A page load the user sees, as opposed to a script's request for the same URL. */
export function isNavigation (request: FastifyRequest): boolean {
  if (request.method !== 'GET' && request.method !== 'HEAD') return false
  const mode = request.headers['sec-fetch-mode']
  if (mode !== undefined && mode !== 'navigate') return false
  return acceptsHtml(request.headers.accept)
}

export function requireLoginHook (options: {
  authenticate: AuthenticateHook
  sessionOf: (request: FastifyRequest) => Promise<Readonly<ClearmlIdentity> | null>
  /** The plugin's `GET /login/keycloak`, prefix included. */
  loginStart: string
}): RequireLoginHook {
  const { authenticate, sessionOf, loginStart } = options
  return async (request, reply) => {
    if (!isNavigation(request)) {
      await authenticate(request, reply)
      return
    }
    const session = await sessionOf(request)
    if (session !== null) {
      request.clearmlIdentity = session
      return
    }
    const [path, query] = request.url.split('?', 2)
    let returnTo = request.url
    if (path === LOGIN_PAGE) {
      const params = new URLSearchParams(query)
      if (params.has('sso_error')) return
      returnTo = params.get('redirect') ?? '/'
    }
    // The answer depends on the session cookie: no cache may keep it for the next visitor.
    await reply.header('cache-control', 'no-store').redirect(`${loginStart}?redirect=${encodeURIComponent(safeReturnPath(returnTo))}`, 302)
  }
}
