/**
 * A stand-in for a ClearML web app build: an `index.html` and one script that starts as the
 * open-source web app 2.0 starts (FACTS, "The ClearML web app"): `configuration.json`, then
 * `POST <apiBaseUrl>/v999.0/login.supported_modes {}` with the cookie only, reading `data.basic.enabled`
 * without a guard, then, when authenticated, `users.get_current_user {get_supported_features: true}`,
 * `users.get_preferences` and `server.report_stats_option`; once started, a 401 moves it to
 * `/login?redirect=<page>` inside the page (`history.replaceState`), as the web app's interceptor does.
 * No code of the web app.
 */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const INDEX = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><base href="/"><title>ClearML</title></head>
<body><div id="app">loading</div><script src="assets/app.js"></script></body></html>
`

const APP = `(async () => {
  const show = (id, text) => { const p = document.createElement('p'); p.id = id; p.textContent = text; document.body.append(p) }
  const config = await (await fetch('configuration.json')).json()
  const api = async (endpoint, body) => {
    const answer = await fetch(config.apiBaseUrl + '/v999.0/' + endpoint, { method: 'POST', credentials: 'include', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    // As the web app's interceptor does on a 401 once started: to its login page inside the page, no page load.
    if (answer.status === 401 && started) {
      document.getElementById('app').textContent = ''
      history.replaceState(history.state, '', '/login?redirect=' + encodeURIComponent(location.pathname + location.search))
      show('in-app-login', location.pathname + location.search)
    }
    return (await answer.json()).data
  }
  let started = false
  const modes = await api('login.supported_modes', {})
  // As the web app does: no guard.
  const mode = modes.basic.enabled ? 'password' : modes.sso_providers.length > 0 ? 'ssoOnly' : 'simple'
  show('login-mode', mode)
  if (modes.server_errors.missed_es_upgrade || modes.server_errors.es_connection_error) return show('server-error', 'database')
  if (!modes.authenticated) return show('not-authenticated', location.pathname + location.search)
  const current = await api('users.get_current_user', { get_supported_features: true })
  await api('users.get_preferences', {})
  await api('server.report_stats_option', {})
  show('user-name', current.user.name)
  document.getElementById('app').textContent = 'ClearML at ' + location.pathname + location.search
  started = true
  // A page of the web app that calls the API when clicked (the host answers it 404 with a session, 401 without).
  const projects = document.createElement('button')
  projects.id = 'projects'
  projects.textContent = 'Projects'
  projects.onclick = () => { api('projects.get_all_ex', {}) }
  document.body.append(projects)
})()
`

export interface FakeWebapp {
  dir: string
  remove: () => void
}

/** A build directory with `index.html`, `assets/app.js` and, when given, the build's own `configuration.json`. */
export function fakeWebappBuild (configuration?: Record<string, unknown>): FakeWebapp {
  const dir = mkdtempSync(join(tmpdir(), 'clearml-webapp-'))
  mkdirSync(join(dir, 'assets'))
  writeFileSync(join(dir, 'index.html'), INDEX)
  writeFileSync(join(dir, 'assets', 'app.js'), APP)
  if (configuration !== undefined) writeFileSync(join(dir, 'configuration.json'), JSON.stringify(configuration))
  return { dir, remove: () => { rmSync(dir, { recursive: true, force: true }) } }
}
