/**
 * Outbound calls to Keycloak: every one with a time-out and a cap on the answer's size, and every
 * failure turned into `idp_unavailable`, so a hanging or misbehaving provider costs a bounded wait
 * and never a 500.
 */
import { SsoError } from './errors.js'

export const MAX_RESPONSE_BYTES = 1024 * 1024

export interface HttpAnswer {
  status: number
  contentType: string
  body: unknown
}

async function readCapped (response: Response, what: string): Promise<string> {
  const declared = Number(response.headers.get('content-length'))
  if (declared > MAX_RESPONSE_BYTES) {
    await response.body?.cancel()
    throw new SsoError('idp_unavailable', `${what} answered more than ${MAX_RESPONSE_BYTES} bytes`)
  }
  if (response.body === null) return ''
  const reader = response.body.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > MAX_RESPONSE_BYTES) {
      await reader.cancel()
      throw new SsoError('idp_unavailable', `${what} answered more than ${MAX_RESPONSE_BYTES} bytes`)
    }
    chunks.push(value)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/**
 * Calls `url` and parses a JSON answer. `what` names the endpoint in messages; the URL's query and
 * the request body are never logged because they may hold codes or tokens.
 */
export async function callJson (url: string, init: RequestInit & { timeoutMs: number, what: string }): Promise<HttpAnswer> {
  const { timeoutMs, what, ...request } = init
  let response: Response
  let text: string
  try {
    response = await fetch(url, { ...request, redirect: 'error', signal: AbortSignal.timeout(timeoutMs) })
    text = await readCapped(response, what)
  } catch (err) {
    if (err instanceof SsoError) throw err
    const reason = (err as Error).name === 'TimeoutError' ? `timed out after ${timeoutMs} ms` : 'could not be reached'
    throw new SsoError('idp_unavailable', `${what} ${reason}`, { cause: err })
  }
  const contentType = response.headers.get('content-type') ?? ''
  let body: unknown = text
  if (text !== '' && /json/i.test(contentType)) {
    try {
      body = JSON.parse(text)
    } catch {
      body = undefined
    }
  }
  return { status: response.status, contentType, body }
}

export function isJsonObject (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}
