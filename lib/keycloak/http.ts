/**
 * Outbound calls to Keycloak: every one with a time-out and a cap on the answer's size, and every
 * failure turned into `idp_unavailable`, so a hanging or misbehaving provider costs a bounded wait
 * and never a 500. Built on `node:http` with keep-alive agents rather than `fetch`: the token call is
 * on every login, and undici's fetch costs several times more CPU per request here
 * (docs/performance.md).
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import { settingName } from '../config/settings.js'
import { observeIdpCall } from '../diagnostics.js'
import { SsoError } from '../errors.js'

export const MAX_RESPONSE_BYTES = 1024 * 1024

export interface HttpAnswer {
  status: number
  contentType: string
  body: unknown
  /** The answer's headers, when `CallOptions.responseHeaders` asked for them. */
  headers?: IncomingHttpHeaders
}

export interface CallOptions {
  method?: 'GET' | 'POST'
  headers?: Record<string, string>
  body?: string
  timeoutMs: number
  /** Names the endpoint in messages. The URL's query and the body are never logged: they may hold codes. */
  what: string
  /** Also return the answer's headers (the doctor reads `Date` and `Location`). */
  responseHeaders?: boolean
}

const agents = { http: new HttpAgent({ keepAlive: true }), https: new HttpsAgent({ keepAlive: true }) }

function send (url: URL, options: CallOptions, signal: AbortSignal, retried = false): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const secure = url.protocol === 'https:'
    const request = (secure ? httpsRequest : httpRequest)(url, {
      method: options.method ?? 'GET',
      headers: options.body === undefined ? options.headers : { ...options.headers, 'content-length': String(Buffer.byteLength(options.body)) },
      agent: secure ? agents.https : agents.http,
      signal
    }, resolve)
    request.once('error', (err: NodeJS.ErrnoException) => {
      // A kept-alive socket the server closed while idle fails before the request reached it: the
      // one case Node's documentation says to retry (http: request.reusedSocket). Once, on a new socket.
      if (!retried && request.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
        send(url, options, signal, true).then(resolve, reject)
      } else {
        reject(err)
      }
    })
    request.end(options.body)
  })
}

async function readCapped (response: IncomingMessage, what: string): Promise<string> {
  if (Number(response.headers['content-length']) > MAX_RESPONSE_BYTES) {
    response.destroy()
    throw new SsoError('idp_unavailable', `${what} answered more than ${MAX_RESPONSE_BYTES} bytes`)
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of response) {
    size += (chunk as Buffer).length
    if (size > MAX_RESPONSE_BYTES) {
      response.destroy()
      throw new SsoError('idp_unavailable', `${what} answered more than ${MAX_RESPONSE_BYTES} bytes`)
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** Calls `url` and parses a JSON answer; the call is published on the `idp-call` channel. */
export async function callJson (url: string, options: CallOptions): Promise<HttpAnswer> {
  return await observeIdpCall(options.what, async () => await callJsonUnobserved(url, options))
}

/** Where a call went, for messages: origin and path, never the query (it may hold a code). */
function whereTo (url: string): string {
  try {
    const { origin, pathname } = new URL(url)
    return origin + pathname
  } catch {
    return 'a malformed URL'
  }
}

async function callJsonUnobserved (url: string, options: CallOptions): Promise<HttpAnswer> {
  let response: IncomingMessage
  let text: string
  try {
    response = await send(new URL(url), options, AbortSignal.timeout(options.timeoutMs))
    text = await readCapped(response, options.what)
  } catch (err) {
    if (err instanceof SsoError) throw err
    const reason = (err as Error).name === 'AbortError'
      ? `timed out after ${options.timeoutMs} ms at ${whereTo(url)}: Keycloak is slow or overloaded (${settingName('httpTimeoutMs')} sets the limit)`
      : `could not be reached at ${whereTo(url)}: check that this server resolves and reaches that address (DNS, proxy, firewall, TLS)`
    throw new SsoError('idp_unavailable', `${options.what} ${reason}`, { cause: err })
  }
  const contentType = response.headers['content-type'] ?? ''
  let body: unknown = text
  if (text !== '' && /json/i.test(contentType)) {
    try {
      body = JSON.parse(text)
    } catch {
      body = undefined
    }
  }
  const answer: HttpAnswer = { status: response.statusCode!, contentType, body }
  if (options.responseHeaders === true) answer.headers = response.headers
  return answer
}

export function isJsonObject (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}
