/**
 * Rejections nobody handled while a test runs: a process with one would end in production
 * (Node's default `--unhandled-rejections=throw`), so a test that provokes a failure asserts none.
 */
import type { Test } from 'tap'

export function recordUnhandledRejections (t: Test): unknown[] {
  const unhandled: unknown[] = []
  const record = (reason: unknown): void => { unhandled.push(reason) }
  process.on('unhandledRejection', record)
  t.teardown(() => { process.off('unhandledRejection', record) })
  return unhandled
}
