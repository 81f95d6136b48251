/**
 * Where the plugin may send a browser. Both places an attacker can name (the return path after
 * login, the page after logout) are reduced to targets on the web app's own origin.
 */

const PLACEHOLDER_ORIGIN = 'http://return-path.invalid'

/** Text that may name a redirect target at all: bounded, no backslash, no control character. */
function plausibleTarget (input: unknown): input is string {
  // eslint-disable-next-line no-control-regex
  return typeof input === 'string' && input !== '' && input.length <= 2048 && !/[\\\u0000-\u001f\u007f]/.test(input)
}

/** Longest return path kept: it travels in the login-transaction cookie, whose size is bounded. */
export const MAX_RETURN_PATH = 1024

/**
 * A same-origin relative path (`/projects?x=1#y`), or `/`. Refuses protocol-relative `//host`,
 * backslash tricks (`/\host`, which browsers read as `//host`), schemes, control characters, and
 * their percent-encoded forms. The answer is checked after the URL parser has resolved dot segments,
 * because `/..//evil.com` and `/%2e//evil.com` only become `//evil.com` then.
 */
export function safeReturnPath (input: unknown): string {
  if (!plausibleTarget(input) || input.length > MAX_RETURN_PATH || !input.startsWith('/') || input.startsWith('//')) return '/'
  if (/%(2f|5c|0[0-9a-f]|1[0-9a-f]|7f)/i.test(input)) return '/'
  // A string starting with a single `/` always parses against a base URL, on the base's origin.
  const url = new URL(input, PLACEHOLDER_ORIGIN)
  const path = url.pathname + url.search + url.hash
  return path.startsWith('//') ? '/' : path
}

/** `candidate` when it is an absolute or relative URL on `webappUrl`'s origin, else `fallback`. */
export function sameOriginUrl (candidate: unknown, webappUrl: string, fallback: string): string {
  if (!plausibleTarget(candidate)) return fallback
  try {
    const base = new URL(webappUrl)
    const url = new URL(candidate, base)
    return url.origin === base.origin ? url.href : fallback
  } catch {
    return fallback
  }
}
