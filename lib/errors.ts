/**
 * Every refusal the plugin makes is an `SsoError` with a stable `code` (SPEC section 8). Errors are
 * thrown where the problem is detected and turned into an HTTP answer in exactly one place
 * (`plugins/error-handler.ts`), so the mapping from code to status lives here, next to the codes.
 */

export const SSO_ERROR_STATUS = {
  invalid_state: 400,
  idp_error: 401,
  token_exchange_failed: 401,
  invalid_token: 401,
  missing_claim: 401,
  userinfo_mismatch: 401,
  not_whitelisted: 403,
  email_not_verified: 403,
  unknown_company: 403,
  no_matching_group: 403,
  // Keycloak refused the session's refresh token (SPEC section 12): the user was disabled, deleted or
  // signed out there.
  session_ended: 401,
  // Not in SPEC's list: a non-admin session asking login.sso_explain.
  admin_required: 403,
  bad_request: 400,
  idp_unavailable: 502,
  directory_error: 503,
  // Not in SPEC's list: a malformed request (bad JSON, wrong field type, unknown provider), and a bug
  // in this plugin; the latter is still answered in the envelope and logged with its stack.
  internal_error: 500
} as const

export type SsoErrorCode = keyof typeof SSO_ERROR_STATUS

export class SsoError extends Error {
  readonly code: SsoErrorCode
  readonly statusCode: number

  /**
   * `message` is for the log and must never contain a token, an authorization code or a secret;
   * the HTTP answer carries only the code.
   */
  constructor (code: SsoErrorCode, message: string = code, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'SsoError'
    this.code = code
    this.statusCode = SSO_ERROR_STATUS[code]
  }
}

/** One configuration problem, named by the variable an operator would set. */
export interface ConfigProblem {
  variable: string
  message: string
}

export class ConfigError extends Error {
  readonly code = 'ERR_CLEARML_KEYCLOAK_CONFIG'
  readonly problems: ConfigProblem[]

  constructor (problems: ConfigProblem[]) {
    super('Invalid Keycloak SSO configuration:\n' +
      problems.map((p) => `  - ${p.variable} ${p.message}`).join('\n'))
    this.name = 'ConfigError'
    this.problems = problems
  }
}
