/**
 * `config`: the `CLEARML__...` variables read exactly as the plugin reads them. Every problem
 * `ConfigError` lists fails the check (and leaves the doctor nothing to check Keycloak with); a
 * `token_secret` shorter than 32 bytes fails it too, though the other checks still run; unknown keys
 * are warnings, as they are in the plugin's log.
 */
import { ConfigError } from '../lib/errors.js'
import { issuerOf, readConfig, settingName, weakSettings, type KeycloakConfig } from '../lib/config/settings.js'
import { shown } from './context.js'
import type { Verdict } from './report.js'

export interface ConfigOutcome {
  verdict: Verdict
  /** The configuration, when it loaded (even with a weak token secret). */
  config?: KeycloakConfig
}

export function checkConfig (env: Record<string, string | undefined>): ConfigOutcome {
  let loaded: ReturnType<typeof readConfig>
  try {
    loaded = readConfig(env)
  } catch (err) {
    // readConfig throws nothing else; anything else is a bug and should surface as itself.
    /* c8 ignore next */
    if (!(err instanceof ConfigError)) throw err
    const variables = [...new Set(err.problems.map((problem) => problem.variable))]
    return {
      verdict: {
        ok: false,
        // ConfigError's messages come from the schema, never from a value, so no secret reaches them.
        message: err.problems.map((problem) => `${problem.variable} ${problem.message}`).join('; '),
        fix: `correct ${variables.join(', ')} as the message says`
      }
    }
  }
  const { config } = loaded
  const warnings = loaded.warnings.map((warning) => `${warning.variable} ${warning.message}`)
  if (config.tokenSecret === undefined) {
    warnings.push(`${settingName('tokenSecret')} is not set: the plugin refuses to start unless the host passes issueToken`)
  }
  const summary = `client "${config.clientId}" of the Keycloak realm ${shown(issuerOf(config))}`
  const weak = weakSettings(config)
  const verdict: Verdict = weak.length > 0
    ? { ok: false, message: weak.map((warning) => `${warning.variable} ${warning.message}`).join('; '), fix: `set ${weak.map((warning) => warning.variable).join(', ')} to the output of \`openssl rand -base64 48\` (sessions signed with the old secret then end)` }
    : { ok: true, message: `read: ${summary}` }
  if (warnings.length > 0) verdict.warnings = warnings
  return { verdict, config }
}
