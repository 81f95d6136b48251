/**
 * `runDoctor`: the configuration first, then every check against Keycloak that applies, each as soon
 * as the checks it needs have passed (independent checks run at once, so a slow Keycloak costs one
 * time-out, not one per check). A check whose need failed is reported "not checked: needs <id>".
 */
import { KEYCLOAK_CHECKS } from './checks.js'
import { checkConfig } from './config-check.js'
import { createContext, type DoctorContext, type WebApp } from './context.js'
import { notChecked, type CheckResult, type DoctorReport, type KeycloakCheck } from './report.js'

export interface DoctorOptions {
  /** Where the `CLEARML__...` variables are read, as the plugin reads them. */
  env: Record<string, string | undefined>
  /** The web app's public URL (`--webapp-url`); else `CLEARML_WEB_HOST` from `env`, ClearML's own name for it. */
  webappUrl?: string
}

export const WEBAPP_URL_VARIABLES = ['CLEARML_WEB_HOST', 'TRAINS_WEB_HOST'] as const

/** The web app's origin, as the plugin takes it from its `webappUrl` option. */
export function resolveWebApp (options: DoctorOptions): WebApp {
  const variable = WEBAPP_URL_VARIABLES.find((name) => (options.env[name] ?? '') !== '')
  const source = options.webappUrl !== undefined ? '--webapp-url' : variable
  const given = options.webappUrl ?? (variable === undefined ? undefined : options.env[variable])
  if (given === undefined) return {}
  try {
    const url = new URL(given)
    if (url.protocol === 'https:' || url.protocol === 'http:') return { url: url.origin, source }
  } catch {}
  return { source, problem: `${source!} is not an absolute http(s) URL` }
}

export async function runDoctor (options: DoctorOptions): Promise<DoctorReport> {
  const { verdict, config } = checkConfig(options.env)
  const checks: CheckResult[] = [{ id: 'config', ...verdict }]
  if (config === undefined) {
    // Without a configuration nothing can be asked of Keycloak, nor known of idp_logout: all listed.
    checks.push(...KEYCLOAK_CHECKS.map((check) => notChecked(check.id, 'config')))
  } else {
    const context = createContext(config, resolveWebApp(options))
    const applicable = KEYCLOAK_CHECKS.filter((check) => check.appliesTo?.(config) !== false)
    checks.push(...await Promise.all(applicable.map(resultsIn(applicable, context))))
  }
  return { ok: checks.every((check) => check.ok), checks }
}

/** Each check's result, once: a check first waits for the checks it needs. */
function resultsIn (checks: KeycloakCheck[], context: DoctorContext): (check: KeycloakCheck) => Promise<CheckResult> {
  const started = new Map<string, Promise<CheckResult>>()
  const resultOf = (check: KeycloakCheck): Promise<CheckResult> => {
    let result = started.get(check.id)
    if (result === undefined) {
      result = settle(check)
      started.set(check.id, result)
    }
    return result
  }
  const settle = async (check: KeycloakCheck): Promise<CheckResult> => {
    for (const need of check.needs) {
      const needed = checks.find((candidate) => candidate.id === need)!
      if (!(await resultOf(needed)).ok) return notChecked(check.id, need)
    }
    return { id: check.id, ...await check.run(context) }
  }
  return resultOf
}
