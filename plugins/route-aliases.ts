/**
 * Second paths of the plugin's routes, for clients that do not call them where they are (SPEC 13.1
 * and 13.4). An `onRoute` hook of the routes' context registers each alias as a copy of its route, so
 * that the alias has the same handler, schemas, hooks, error handler and log redaction, and no route
 * needs to know it has one:
 *
 * - **versioned**: ClearML's clients put a version segment before every endpoint (the SDK
 *   `/v2.31/login.logout`, the web app `/v999.0/...`). Every JSON endpoint also answers at
 *   `<prefix>/v<major>.<minor>/<endpoint>`, and its envelope's `meta.endpoint.requested_version`
 *   echoes the version asked for, refusals included.
 * - **unprefixed**: Keycloak sends the browser back to the registered `<webapp>/callback_keycloak`,
 *   ClearML's documented redirect URI, wherever the plugin is mounted. With a prefix, the browser
 *   callback is also served there, so a prefixed mount logs in with no glue in the host and no second
 *   redirect URI to register at Keycloak.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import type { Envelope } from '../lib/envelope.js'
import type { RouteMeta } from './error-handler.js'

// Tags an alias, so that the hook neither aliases it again nor loops (Fastify's documented way to
// add routes from `onRoute`).
const ALIAS = Symbol('fastify-clearml-keycloak.alias')

type AliasKind = 'versioned' | 'unprefixed'
type RouteBeingAdded = RouteOptions & { routePath: string, path: string, prefix: string, [ALIAS]?: AliasKind }

/** `v<major>.<minor>`, as ClearML clients send it; any other segment is not an endpoint of ours (404). */
const VERSION_SEGMENT = '/:apiVersion(^v\\d{1,3}\\.\\d{1,3}$)'
/** A ClearML endpoint, `/<service>.<action>`: the browser routes and the back-channel logout are not. */
const ENDPOINT_PATH = /^\/\w+\.\w+$/

/** Every answer of these routes is an envelope (the error handler and `authenticate` answer one too). */
async function echoRequestedVersion (request: FastifyRequest, reply: FastifyReply, payload: unknown): Promise<unknown> {
  const { apiVersion } = request.params as { apiVersion: string };
  (payload as Envelope<unknown>).meta.endpoint.requested_version = apiVersion.slice(1)
  return payload
}

/** Call before the routes are added: `onRoute` sees only the routes added after it. */
export function addRouteAliases (app: FastifyInstance, options: { callbackPath: string }): void {
  app.addHook('onRoute', function (route: RouteBeingAdded) {
    const kind = route[ALIAS]
    if (kind === 'unprefixed') {
      // Fastify has just put the prefix in front; the alias is the path alone.
      route.url = route.routePath
      route.path = route.routePath
      return
    }
    // Fastify derives a HEAD route from each GET route, its aliases included.
    if (kind === 'versioned' || route.method === 'HEAD') return
    const meta = route.config as unknown as RouteMeta
    if (meta.browser !== true && ENDPOINT_PATH.test(route.routePath)) {
      const preSerialization = [route.preSerialization, echoRequestedVersion].flat().filter((hook) => hook !== undefined)
      this.route({ ...route, url: VERSION_SEGMENT + route.routePath, preSerialization, [ALIAS]: 'versioned' } as RouteOptions)
    }
    if (route.routePath === options.callbackPath && route.prefix !== '') {
      this.route({ ...route, url: route.routePath, [ALIAS]: 'unprefixed' } as RouteOptions)
    }
  })
}
