/**
 * The doctor's vocabulary: the checks SPEC section 11 names, what one check concludes, and the report
 * the command prints (as text or, with `--json`, exactly this shape).
 */
import type { KeycloakConfig } from '../lib/config/settings.js'
import type { DoctorContext } from './context.js'

export type CheckId = 'config' | 'discovery' | 'issuer' | 'endpoints' | 'jwks' | 'client' | 'redirect_uri' | 'end_session' | 'revocation' | 'offline_access' | 'clock'

/** What one check concludes. A failure always says what to change, in one line. */
export type Verdict =
  | { ok: true, message: string, warnings?: string[] }
  | { ok: false, message: string, fix: string, warnings?: string[] }

export type CheckResult = { id: CheckId } & Verdict

export interface DoctorReport {
  /** True only when every check passed. */
  ok: boolean
  checks: CheckResult[]
}

/** A check against the live Keycloak, run once the configuration has loaded. */
export interface KeycloakCheck {
  id: CheckId
  /** Checks whose failure leaves this one nothing to work with: it is then reported "not checked". */
  needs: CheckId[]
  /** False when the check has nothing to check in this configuration (end_session without idp_logout). */
  appliesTo?: (config: KeycloakConfig) => boolean
  run: (context: DoctorContext) => Promise<Verdict>
}

export const pass = (message: string): Verdict => ({ ok: true, message })
export const fail = (message: string, fix: string): Verdict => ({ ok: false, message, fix })

export function notChecked (id: CheckId, need: CheckId): CheckResult {
  return { id, ok: false, message: `not checked: needs ${need}`, fix: `fix ${need} first` }
}
