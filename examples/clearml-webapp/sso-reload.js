/* global history, location, sessionStorage */
/*
 * Served by the example host and added to the web app's index.html (it is the host's, not the web
 * app's). When a ClearML session ends while the web app is open (a logout in another tab, or Keycloak
 * refusing the user at a revalidation: 401 `session_ended`), the open-source web app moves to
 * `/login?redirect=<page>` inside the page, with the History API, and in SSO-only mode its login page
 * shows nothing: the user is left on an empty page until they reload it. A page load of that URL is
 * what `requireLogin` sends to Keycloak and back to `<page>`, so this script turns the move into one.
 *
 * Only a move *into* `/login` from another path reloads (the web app's own start on `/login` does
 * not), never one to `/login?sso_error=` (a refused login, which `requireLogin` lets through to show
 * its reason), and at most once in ten seconds per tab, so a host whose API refuses a session its
 * pages accept gets the empty page rather than a loop.
 */
(() => {
  const LOGIN = '/login'
  const GUARD = 'clearml-keycloak:sso-reload-at'
  const GUARD_MS = 10_000

  const movedToLogin = (before) => {
    const after = new URL(location.href)
    return before !== LOGIN && after.pathname === LOGIN && !after.searchParams.has('sso_error')
  }

  const reloadOnce = () => {
    const last = Number(sessionStorage.getItem(GUARD) ?? '0')
    if (Date.now() - last < GUARD_MS) return
    sessionStorage.setItem(GUARD, String(Date.now()))
    location.reload()
  }

  for (const method of ['pushState', 'replaceState']) {
    const original = history[method]
    history[method] = function (...args) {
      const before = location.pathname
      const result = original.apply(this, args)
      if (movedToLogin(before)) reloadOnce()
      return result
    }
  }
})()
