import { createHash, randomBytes } from 'node:crypto'
import { CLIENT_ID, CLIENT_SECRET, type Stack } from './stack.js'
import { UserAgent } from './user-agent.js'

/**
 * Real tokens from the provider, obtained as an OpenID client would (code flow with PKCE), for
 * tests of the decorators that take a token. With the `agent` of a browser logged in at the
 * provider, the tokens belong to that browser's Keycloak session (no password asked).
 */
export async function obtainTokens (stack: Stack, username: string, options: { agent?: UserAgent } = {}): Promise<{ access_token: string, id_token: string }> {
  const user = stack.idp.users.find((u) => u.username === username)!
  const verifier = randomBytes(32).toString('base64url')
  const redirectUri = `${stack.appUrl}/callback_keycloak`
  const url = new URL(`${stack.idp.issuer}/protocol/openid-connect/auth`)
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: CLIENT_ID,
    redirect_uri: redirectUri,
    scope: 'openid profile email',
    state: 'test-state',
    nonce: 'test-nonce',
    code_challenge: createHash('sha256').update(verifier).digest('base64url'),
    code_challenge_method: 'S256'
  }).toString()
  const agent = options.agent ?? new UserAgent()
  const stopAt = (u: string): boolean => u.startsWith(redirectUri)
  const page = await agent.navigate(url.href, { stopAt })
  const stopped = stopAt(page.url) ? page : await agent.submitLogin(page, user.username, user.password, { stopAt })
  const code = new URL(stopped.url).searchParams.get('code')!
  const response = await fetch(`${stack.idp.issuer}/protocol/openid-connect/token`, {
    method: 'POST',
    headers: { authorization: 'Basic ' + Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64'), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier })
  })
  return await response.json() as { access_token: string, id_token: string }
}
