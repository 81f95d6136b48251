/**
 * The plugin in an apiserver against the scriptable hostile provider: for refusal tests that need
 * tokens a real Keycloak would never sign.
 */
import type { Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import clearmlKeycloak, { MemoryDirectory, type ClearmlKeycloakOptions } from '../../index.js'
import { startHostileIdp, type HostileIdp } from './hostile-idp.js'
import { seedAcme } from './stack.js'

export const KC = 'CLEARML__services__login__sso__oauth_client__keycloak__'

export interface Harness { idp: HostileIdp, app: FastifyInstance, directory: MemoryDirectory }

export async function harness (t: Test, env: Record<string, string> = {}, prepare?: (idp: HostileIdp) => void, plugin: Partial<ClearmlKeycloakOptions> = {}): Promise<Harness> {
  const idp = await startHostileIdp()
  prepare?.(idp)
  const directory = new MemoryDirectory()
  seedAcme(directory)
  const app = Fastify()
  await app.register(clearmlKeycloak, {
    directory,
    webappUrl: 'https://clearml.example.com',
    env: {
      [`${KC}base_url`]: idp.issuer,
      CLEARML__secure__login__sso__oauth_client__keycloak__client_id: 'clearml',
      CLEARML__secure__login__sso__oauth_client__keycloak__client_secret: 'secret',
      CLEARML__secure__auth__token_secret: 'token-secret',
      [`${KC}http_timeout_ms`]: '500',
      ...env
    },
    ...plugin
  })
  app.get('/me', { preHandler: app.keycloak.authenticate }, async (request) => request.clearmlIdentity)
  t.teardown(async () => { await app.close(); await idp.close() })
  return { idp, app, directory }
}

/** One login through the plugin's routes, the provider answering as scripted. */
export async function login ({ idp, app }: Harness, query: Record<string, string> = {}): Promise<{ status: number, location: string, setCookie: string[] }> {
  const start = await app.inject({ method: 'GET', url: '/login/keycloak' })
  const authorize = new URL(start.headers.location as string)
  idp.nonce = authorize.searchParams.get('nonce')!
  const code = `code-${idp.nonces.size}`
  idp.nonces.set(code, idp.nonce)
  const cookie = (start.headers['set-cookie'] as string).split(';')[0]
  const params = new URLSearchParams({ code, state: authorize.searchParams.get('state')!, ...query })
  const answer = await app.inject({ method: 'GET', url: `/callback_keycloak?${params.toString()}`, headers: { cookie } })
  const setCookie = ([] as string[]).concat(answer.headers['set-cookie'] ?? [])
  return { status: answer.statusCode, location: answer.headers.location as string, setCookie }
}
