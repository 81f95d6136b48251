/**
 * A fast Keycloak-shaped provider for benchmarks: discovery, key set, the realm document
 * (`public_key`, which fastify-keycloak-adapter reads) and a token endpoint that answers token sets
 * signed in advance, so the benchmark measures the apiserver, not the provider's signing.
 */
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createPublicKey, randomUUID } from 'node:crypto'
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose'

export interface BenchKey { kid: string, privateKey: CryptoKey, publicJwk: JWK, spki: string }

export async function benchKey (): Promise<BenchKey> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true })
  const kid = randomUUID()
  return { kid, privateKey, publicJwk: { ...await exportJWK(publicKey), kid, alg: 'RS256', use: 'sig' }, spki: await exportSPKI(publicKey) }
}

export interface FastProvider {
  issuer: string
  clientId: string
  keys: BenchKey[]
  hits: Map<string, number>
  tokenSets: Map<string, string>
  sign: (claims: JWTPayload, key?: BenchKey, kid?: string) => Promise<string>
  /** Registers the token set the token endpoint answers for `code`. */
  prepare: (code: string, options: { nonce: string, subject: string, key?: BenchKey, kid?: string }) => Promise<void>
  /** A refresh token whose refreshes answer `subject`'s tokens, signed now (valid for an hour). */
  refreshFor: (subject: string) => Promise<string>
  /** Refresh grants received so far. */
  readonly refreshes: number
  close: () => Promise<void>
}

export async function startFastProvider (clientId = 'clearml'): Promise<FastProvider> {
  const hits = new Map<string, number>()
  const tokenSets = new Map<string, string>()
  const refreshSets = new Map<string, string>()
  let refreshes = 0
  const keys = [await benchKey()]
  let server: Server
  const ready = new Promise<void>((resolve) => {
    server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0]
      hits.set(path, (hits.get(path) ?? 0) + 1)
      if (path === '/realms/bench/protocol/openid-connect/token') {
        let body = ''
        req.setEncoding('utf8')
        req.on('data', (chunk: string) => { body += chunk })
        req.on('end', () => {
          const form = new URLSearchParams(body)
          if (form.get('grant_type') === 'refresh_token') {
            // A refresh answers the token set prepared for the token's subject (`refreshFor`), the same
            // refresh token again: Keycloak with "Revoke Refresh Token" off.
            refreshes++
            const set = refreshSets.get(form.get('refresh_token') ?? '')
            if (set === undefined) res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"invalid_grant","error_description":"Invalid refresh token"}')
            else res.writeHead(200, { 'content-type': 'application/json' }).end(set)
            return
          }
          const code = form.get('code') ?? ''
          const set = tokenSets.get(code)
          tokenSets.delete(code)
          if (set === undefined) res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"invalid_grant"}')
          else res.writeHead(200, { 'content-type': 'application/json' }).end(set)
        })
        return
      }
      const documents: Record<string, () => unknown> = {
        '/realms/bench/.well-known/openid-configuration': () => ({
          issuer: provider.issuer,
          authorization_endpoint: `${provider.issuer}/protocol/openid-connect/auth`,
          token_endpoint: `${provider.issuer}/protocol/openid-connect/token`,
          userinfo_endpoint: `${provider.issuer}/protocol/openid-connect/userinfo`,
          jwks_uri: `${provider.issuer}/protocol/openid-connect/certs`,
          end_session_endpoint: `${provider.issuer}/protocol/openid-connect/logout`
        }),
        '/realms/bench/protocol/openid-connect/certs': () => ({ keys: keys.map((k) => k.publicJwk) }),
        // Keycloak's realm document, as fastify-keycloak-adapter reads it: the key as base64 DER.
        '/realms/bench': () => ({ realm: 'bench', public_key: createPublicKey(keys[keys.length - 1].spki).export({ type: 'spki', format: 'der' }).toString('base64') })
      }
      const document = documents[path]
      if (document === undefined) res.writeHead(404).end()
      else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(document()))
    })
    server.listen(0, '127.0.0.1', resolve)
  })
  await ready
  const issuer = `http://127.0.0.1:${(server!.address() as AddressInfo).port}/realms/bench`
  const now = (): number => Math.floor(Date.now() / 1000)
  /** A token endpoint's answer as Keycloak's: an ID token (with the login's `nonce`, if any) and an access token of `common`, and `extra` fields. */
  const tokenSet = async (common: Record<string, unknown>, { nonce, ...extra }: { nonce?: string, refresh_token?: string }, key?: BenchKey, kid?: string): Promise<string> => {
    const idToken = await provider.sign({ ...common, aud: clientId, typ: 'ID', nonce }, key, kid)
    const accessToken = await provider.sign({ ...common, aud: 'account', typ: 'Bearer', realm_access: { roles: ['offline_access'] } }, key, kid)
    return JSON.stringify({ token_type: 'Bearer', id_token: idToken, access_token: accessToken, ...extra, expires_in: 3600 })
  }
  const provider: FastProvider = {
    issuer,
    clientId,
    keys,
    hits,
    tokenSets,
    sign: async (claims, key = keys[0], kid = key.kid) => await new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' }).sign(key.privateKey),
    prepare: async (code, { nonce, subject, key, kid }) => {
      const common = { iss: issuer, sub: subject, iat: now(), exp: now() + 3600, azp: clientId, sid: randomUUID(), preferred_username: subject.slice(0, 8), email: `${subject.slice(0, 8)}@acme.example`, email_verified: true, name: `User ${subject.slice(0, 8)}` }
      tokenSets.set(code, await tokenSet(common, { nonce }, key, kid))
    },
    refreshFor: async (subject) => {
      const refreshToken = `bench-refresh:${subject}`
      const common = { iss: issuer, sub: subject, iat: now(), exp: now() + 3600, azp: clientId, sid: 'bench-keycloak-session', preferred_username: 'bench', email: 'bench@acme.example', email_verified: true, name: 'Bench' }
      refreshSets.set(refreshToken, await tokenSet(common, { refresh_token: refreshToken }))
      return refreshToken
    },
    get refreshes () { return refreshes },
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
  return provider
}
