/**
 * ClearML's API answer shape: `{ meta: {...}, data: {...} }`. Errors carry the stable `SsoError`
 * code in `meta.result_msg` and `data.error`.
 */
import { randomUUID } from 'node:crypto'

export interface EnvelopeMeta {
  id: string
  trx: string
  endpoint: { name: string, requested_version: string, actual_version: string }
  result_code: number
  result_subcode: number
  result_msg: string
  error_stack: null
  error_data: Record<string, unknown>
}

export interface Envelope<T> {
  meta: EnvelopeMeta
  data: T
}

const API_VERSION = '2.30'

export function envelope<T> (endpoint: string, data: T, resultCode = 200, message = 'OK'): Envelope<T> {
  const id = randomUUID().replace(/-/g, '')
  return {
    meta: {
      id,
      trx: id,
      endpoint: { name: endpoint, requested_version: API_VERSION, actual_version: API_VERSION },
      result_code: resultCode,
      result_subcode: 0,
      result_msg: message,
      error_stack: null,
      error_data: {}
    },
    data
  }
}

export function errorEnvelope (endpoint: string, status: number, code: string): Envelope<{ error: string }> {
  return envelope(endpoint, { error: code }, status, code)
}
