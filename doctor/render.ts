/** The doctor's report as text: one line per check, ✔ or ✖, and for a failure what to change. */
import type { DoctorReport } from './report.js'

export function renderText (report: DoctorReport): string {
  const width = Math.max(...report.checks.map((check) => check.id.length))
  const lines = report.checks.flatMap((check) => [
    `${check.ok ? '✔' : '✖'} ${check.id.padEnd(width)}  ${check.message}${check.ok ? '' : ` — fix: ${check.fix}`}`,
    ...(check.warnings ?? []).map((warning) => `  ${' '.repeat(width)}  ! ${warning}`)
  ])
  const failed = report.checks.filter((check) => !check.ok).length
  lines.push('', failed === 0 ? `All ${report.checks.length} checks passed.` : `${failed} of ${report.checks.length} checks failed.`)
  return lines.join('\n') + '\n'
}
