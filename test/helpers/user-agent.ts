/**
 * A minimal browser for flow tests: a cookie jar per origin, manual redirects, and form posts, over
 * real HTTP. It does what a browser does on the login path, so the plugin is exercised exactly as a
 * user exercises it, without a rendering engine.
 */
import { request as httpRequest } from 'node:http'

export interface Hop {
  url: string
  status: number
  location?: string
  setCookies: string[]
}

export interface Page {
  url: string
  status: number
  body: string
  hops: Hop[]
}

interface StoredCookie { value: string, expires: number }

interface RawAnswer { status: number, headers: Headers, text: string }

/** One request over node:http, with exactly the headers given. */
async function sendOverHttp (url: string, method: string, headers: Record<string, string>, body: string | undefined): Promise<RawAnswer> {
  return await new Promise((resolve, reject) => {
    const outgoing = httpRequest(url, { method, headers: body === undefined ? headers : { ...headers, 'content-length': String(Buffer.byteLength(body)) } }, (incoming) => {
      const chunks: Buffer[] = []
      incoming.on('data', (chunk: Buffer) => chunks.push(chunk))
      incoming.on('error', reject)
      incoming.on('end', () => {
        const answerHeaders = new Headers()
        for (let i = 0; i < incoming.rawHeaders.length; i += 2) answerHeaders.append(incoming.rawHeaders[i], incoming.rawHeaders[i + 1])
        resolve({ status: incoming.statusCode!, headers: answerHeaders, text: Buffer.concat(chunks).toString('utf8') })
      })
    })
    outgoing.on('error', reject)
    outgoing.end(body)
  })
}

export class UserAgent {
  readonly jars = new Map<string, Map<string, StoredCookie>>()
  /**
   * `browser: true` sends requests over node:http with exactly the headers given, as a browser sends
   * its page loads (`Sec-Fetch-Mode: navigate`): fetch adds `Sec-Fetch-Mode: cors` to every request, as
   * a script's fetch() does, and a caller cannot replace it.
   */
  readonly #browser: boolean

  constructor (options: { browser?: boolean } = {}) {
    this.#browser = options.browser === true
  }

  cookies (url: string): Map<string, string> {
    const jar = this.jars.get(new URL(url).host) ?? new Map<string, StoredCookie>()
    const now = Date.now()
    return new Map([...jar].filter(([, c]) => c.expires > now).map(([name, c]) => [name, c.value]))
  }

  setCookie (url: string, name: string, value: string): void {
    const host = new URL(url).host
    const jar = this.jars.get(host) ?? new Map<string, StoredCookie>()
    jar.set(name, { value, expires: Number.POSITIVE_INFINITY })
    this.jars.set(host, jar)
  }

  #store (url: string, setCookies: string[]): void {
    const host = new URL(url).host
    const jar = this.jars.get(host) ?? new Map<string, StoredCookie>()
    for (const line of setCookies) {
      const [pair, ...attributes] = line.split(';').map((part) => part.trim())
      const eq = pair.indexOf('=')
      const name = pair.slice(0, eq)
      const value = pair.slice(eq + 1)
      let expires = Number.POSITIVE_INFINITY
      for (const attribute of attributes) {
        const [key, val] = attribute.split('=')
        if (key.toLowerCase() === 'max-age') expires = Date.now() + Number(val) * 1000
        if (key.toLowerCase() === 'expires') expires = Math.min(expires, Date.parse(val))
      }
      if (expires <= Date.now() || value === '') jar.delete(name)
      else jar.set(name, { value, expires })
    }
    this.jars.set(host, jar)
  }

  async request (url: string, init: { method?: string, form?: Record<string, string>, json?: unknown, headers?: Record<string, string> } = {}): Promise<{ status: number, location?: string, body: string, setCookies: string[], headers: Headers }> {
    const headers: Record<string, string> = { ...init.headers }
    const cookie = [...this.cookies(url)].map(([name, value]) => `${name}=${value}`).join('; ')
    if (cookie !== '') headers.cookie = cookie
    let body: string | undefined
    if (init.form !== undefined) {
      headers['content-type'] = 'application/x-www-form-urlencoded'
      body = new URLSearchParams(init.form).toString()
    } else if (init.json !== undefined) {
      headers['content-type'] = 'application/json'
      body = JSON.stringify(init.json)
    }
    const method = init.method ?? (body === undefined ? 'GET' : 'POST')
    let response: RawAnswer
    if (this.#browser) {
      response = await sendOverHttp(url, method, headers, body)
    } else {
      const fetched = await fetch(url, { method, headers, body, redirect: 'manual' })
      response = { status: fetched.status, headers: fetched.headers, text: await fetched.text() }
    }
    const setCookies = response.headers.getSetCookie()
    this.#store(url, setCookies)
    const location = response.headers.get('location') ?? undefined
    return { status: response.status, location: location === undefined ? undefined : new URL(location, url).href, body: response.text, setCookies, headers: response.headers }
  }

  /**
   * Follows redirects like a browser, stopping at the first non-redirect or at `stopAt(url)`. `headers`
   * go with every hop, as a browser sends its navigation headers (`Accept`, `Sec-Fetch-Mode`) on each.
   */
  async navigate (url: string, init: { method?: string, form?: Record<string, string>, stopAt?: (url: string) => boolean, headers?: Record<string, string> } = {}): Promise<Page> {
    const hops: Hop[] = []
    let current = url
    let answer = await this.request(current, init)
    for (let i = 0; i < 20 && answer.status >= 300 && answer.status < 400 && answer.location !== undefined; i++) {
      hops.push({ url: current, status: answer.status, location: answer.location, setCookies: answer.setCookies })
      current = answer.location
      if (init.stopAt?.(current) === true) return { url: current, status: answer.status, body: '', hops }
      answer = await this.request(current, { headers: init.headers })
    }
    hops.push({ url: current, status: answer.status, setCookies: answer.setCookies })
    return { url: current, status: answer.status, body: answer.body, hops }
  }

  /** Fills and submits the identity provider's login form on `page`. */
  async submitLogin (page: Page, username: string, password: string, init: { stopAt?: (url: string) => boolean, headers?: Record<string, string> } = {}): Promise<Page> {
    const action = page.body.match(/<form[^>]*action="([^"]+)"/)?.[1]
    if (action === undefined) throw new Error(`no login form on ${page.url}: ${page.body.slice(0, 200)}`)
    const target = new URL(action.replace(/&amp;/g, '&'), page.url).href
    return await this.navigate(target, { form: { username, password }, stopAt: init.stopAt, headers: init.headers })
  }

  /** Follows Keycloak's end-session page, which submits its confirmation form by script, as a browser would. */
  async confirmIdpLogout (endSessionUrl: string, init: { stopAt?: (url: string) => boolean } = {}): Promise<Page> {
    const endSession = await this.navigate(endSessionUrl)
    const form = endSession.body.match(/<form[^>]*action="([^"]+)"[^>]*>([\s\S]*?)<\/form>/)
    if (form === null) throw new Error(`no logout form on ${endSession.url}: ${endSession.body.slice(0, 200)}`)
    const fields = Object.fromEntries([...form[2].matchAll(/name="([^"]+)" value="([^"]*)"/g)].map((m) => [m[1], m[2]]))
    return await this.navigate(new URL(form[1], endSession.url).href, { form: { ...fields, logout: 'yes' }, stopAt: init.stopAt })
  }
}
