/**
 * A small, scriptable OpenID provider on 127.0.0.1 for refusal and fault tests: it serves discovery,
 * a key set and a token endpoint, and signs with jose whatever each case asks for, including what a
 * real Keycloak never would (wrong issuer, alg none, a key it does not publish, hanging answers).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { randomUUID } from 'node:crypto'
import { exportJWK, generateKeyPair, SignJWT, type JWK, type JWTPayload, type CryptoKey } from 'jose'

export interface SigningKey { kid: string, privateKey: CryptoKey, publicJwk: JWK }

export async function newKey (kid: string = randomUUID()): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true })
  return { kid, privateKey, publicJwk: { ...await exportJWK(publicKey), kid, alg: 'RS256', use: 'sig' } }
}

export type Answer = { status?: number, headers?: Record<string, string>, body?: unknown, raw?: string, hang?: boolean, bytes?: number }

export interface HostileIdp {
  issuer: string
  origin: string
  clientId: string
  keys: SigningKey[]
  /** Keys published at the key set endpoint; defaults to all of `keys`. */
  published: () => JWK[]
  hits: Map<string, number>
  /** The nonce of the login under test; the token endpoint puts it into the next ID token. */
  nonce: string
  /** Nonces by authorization code, for concurrent logins. */
  nonces: Map<string, string>
  /** Per endpoint, what to answer instead of the default. */
  override: Partial<Record<'discovery' | 'certs' | 'token' | 'userinfo', (req: IncomingMessage, body: string) => Answer | Promise<Answer>>>
  /** The claims of the next ID and access tokens, given the nonce of the authorization request. */
  idClaims: (nonce: string) => JWTPayload
  accessClaims: () => JWTPayload
  userinfo: () => Record<string, unknown>
  sign: (claims: JWTPayload, options?: { key?: SigningKey, header?: Record<string, unknown> }) => Promise<string>
  close: () => Promise<void>
}

const now = (): number => Math.floor(Date.now() / 1000)

export async function startHostileIdp (clientId = 'clearml'): Promise<HostileIdp> {
  const hits = new Map<string, number>()
  const server = createServer((req, res) => { serve(req, res).catch(() => res.destroy()) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const issuer = `${origin}/realms/test`
  const subject = 'a6f0c1e2-1111-4222-8333-944455556666'

  const idp: HostileIdp = {
    issuer,
    origin,
    clientId,
    keys: [await newKey('key-1')],
    published: () => idp.keys.map((k) => k.publicJwk),
    hits,
    nonce: '',
    nonces: new Map(),
    override: {},
    idClaims: (nonce) => ({ iss: issuer, aud: clientId, azp: clientId, typ: 'ID', sub: subject, iat: now(), exp: now() + 300, nonce, sid: 'kc-session-1', email: 'ann@acme.com', email_verified: true, preferred_username: 'ann', name: 'Ann Example' }),
    accessClaims: () => ({ iss: issuer, aud: 'account', azp: clientId, typ: 'Bearer', sub: subject, iat: now(), exp: now() + 300, preferred_username: 'ann', email: 'ann@acme.com', email_verified: true, realm_access: { roles: ['offline_access'] } }),
    userinfo: () => ({ sub: subject, email: 'ann@acme.com', email_verified: true, preferred_username: 'ann' }),
    sign: async (claims, options = {}) => {
      const key = options.key ?? idp.keys[0]
      return await new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: key.kid, typ: 'JWT', ...options.header }).sign(key.privateKey)
    },
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }

  const paths: Record<string, 'discovery' | 'certs' | 'token' | 'userinfo'> = {
    '/realms/test/.well-known/openid-configuration': 'discovery',
    '/realms/test/protocol/openid-connect/certs': 'certs',
    '/realms/test/protocol/openid-connect/token': 'token',
    '/realms/test/protocol/openid-connect/userinfo': 'userinfo'
  }

  async function defaults (endpoint: string, body: string): Promise<Answer> {
    switch (endpoint) {
      case 'discovery':
        return {
          body: {
            issuer,
            authorization_endpoint: `${issuer}/protocol/openid-connect/auth`,
            token_endpoint: `${issuer}/protocol/openid-connect/token`,
            userinfo_endpoint: `${issuer}/protocol/openid-connect/userinfo`,
            jwks_uri: `${issuer}/protocol/openid-connect/certs`,
            end_session_endpoint: `${issuer}/protocol/openid-connect/logout`,
            authorization_response_iss_parameter_supported: true
          }
        }
      case 'certs':
        return { body: { keys: idp.published() } }
      case 'token':
        return { body: { token_type: 'Bearer', id_token: await idp.sign(idp.idClaims(idp.nonces.get(new URLSearchParams(body).get('code') ?? '') ?? idp.nonce)), access_token: await idp.sign(idp.accessClaims()), expires_in: 300 } }
      default:
        return { body: idp.userinfo() }
    }
  }

  async function serve (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', origin)
    hits.set(url.pathname, (hits.get(url.pathname) ?? 0) + 1)
    const chunks: Buffer[] = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    const body = Buffer.concat(chunks).toString('utf8')
    const endpoint = paths[url.pathname]
    if (endpoint === undefined) {
      res.writeHead(404).end()
      return
    }
    const answer = await (idp.override[endpoint]?.(req, body) ?? defaults(endpoint, body))
    if (answer.hang === true) return
    const headers = { 'content-type': 'application/json', ...answer.headers }
    if (answer.bytes !== undefined) {
      res.writeHead(answer.status ?? 200, headers)
      const chunk = Buffer.alloc(64 * 1024, 'a')
      for (let sent = 0; sent < answer.bytes && !res.destroyed; sent += chunk.length) {
        if (!res.write(chunk)) await new Promise((resolve) => res.once('drain', resolve))
      }
      res.end()
      return
    }
    res.writeHead(answer.status ?? 200, headers).end(answer.raw ?? JSON.stringify(answer.body))
  }

  return idp
}
