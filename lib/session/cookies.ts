/**
 * Every cookie the plugin sets, in one place: HttpOnly and SameSite=Lax always (Lax, not Strict,
 * because the callback is a top-level navigation coming from Keycloak's origin), Secure when the web
 * app is served over https, path `/`.
 */
import type { CookieSerializeOptions } from '@fastify/cookie'
import { TRANSACTION_TTL_SEC } from './transaction.js'

export const ID_TOKEN_COOKIE = 'clearml_kc_idt'

export interface CookiePolicy {
  session: (maxAgeSec: number) => CookieSerializeOptions
  transaction: () => CookieSerializeOptions
  clear: () => CookieSerializeOptions
}

export function cookiePolicy (webappUrl: string): CookiePolicy {
  const secure = new URL(webappUrl).protocol === 'https:'
  const base: CookieSerializeOptions = { path: '/', httpOnly: true, sameSite: 'lax', secure }
  return {
    session: (maxAgeSec) => ({ ...base, maxAge: maxAgeSec }),
    transaction: () => ({ ...base, maxAge: TRANSACTION_TTL_SEC }),
    clear: () => ({ ...base })
  }
}
