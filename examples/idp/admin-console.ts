/**
 * The Keycloak-like provider's admin page, for the demo: the realm's users, each with the buttons an
 * operator presses in Keycloak's admin console (disable, enable, delete, end the SSO sessions, add to
 * or remove from the admin group). Plain HTML forms posting back to the page, no script.
 *
 * None of these sends a back-channel logout, as in Keycloak (issues #37981, #25171): a client learns
 * of them only when it refreshes a token, which is what the page lets a demo show.
 */
import { escapeHtml } from './html.js'

export interface ConsoleUser {
  username: string
  email?: string
  enabled: boolean
  groups: string[]
  /** Sessions a refresh would still accept. */
  sessions: { online: number, offline: number }
}

/** What the page can do to the realm: the provider's own operations. */
export interface RealmAdministration {
  users: () => ConsoleUser[]
  disableUser: (username: string) => void
  enableUser: (username: string) => void
  deleteUser: (username: string) => void
  endSsoSessions: (username: string) => void
  setGroups: (username: string, groups: string[]) => void
}

export interface ConsoleAnswer {
  status: number
  headers: Record<string, string>
  body: string
}

/** The group whose membership makes a demo user a ClearML admin (`groups.admins`). */
export const ADMIN_GROUP = '/kc-admins'

export const adminConsolePath = (realm: string): string => `/admin/${realm}/console`

/** What each button does, and what the page says it did. */
const ACTIONS: Record<string, (admin: RealmAdministration, user: ConsoleUser) => string> = {
  disable: (admin, user) => {
    admin.disableUser(user.username)
    return `${user.username} is disabled: refreshes of their tokens are refused ("User disabled"); their sessions are kept`
  },
  enable: (admin, user) => {
    admin.enableUser(user.username)
    return `${user.username} is enabled: the tokens they still hold work again`
  },
  delete: (admin, user) => {
    admin.deleteUser(user.username)
    return `${user.username} is deleted, with their sessions`
  },
  'end-sessions': (admin, user) => {
    admin.endSsoSessions(user.username)
    return `${user.username}'s SSO sessions ended (as at a timeout): online refresh tokens are refused, offline ones still work`
  },
  'add-admin-group': (admin, user) => {
    admin.setGroups(user.username, [...new Set([...user.groups, ADMIN_GROUP])])
    return `${user.username} is in ${ADMIN_GROUP}: tokens issued from now on say so`
  },
  'remove-admin-group': (admin, user) => {
    admin.setGroups(user.username, user.groups.filter((group) => group !== ADMIN_GROUP))
    return `${user.username} is no longer in ${ADMIN_GROUP}: tokens issued from now on say so`
  }
}

function page (realm: string, users: ConsoleUser[], message?: string): string {
  const rows = users.map((user) => {
    const inAdminGroup = user.groups.includes(ADMIN_GROUP)
    const button = (action: string, label: string): string => `<button type="submit" name="action" value="${action}">${label}</button>`
    return `<tr><td>${escapeHtml(user.username)}</td><td>${escapeHtml(user.email ?? '')}</td>
<td>${user.enabled ? 'enabled' : '<b>disabled</b>'}</td><td>${escapeHtml(user.groups.join(', '))}</td>
<td>${user.sessions.online} online, ${user.sessions.offline} offline</td>
<td><form method="post" action="${escapeHtml(adminConsolePath(realm))}"><input type="hidden" name="username" value="${escapeHtml(user.username)}">
${user.enabled ? button('disable', 'Disable') : button('enable', 'Enable')} ${button('delete', 'Delete')} ${button('end-sessions', 'End SSO sessions')}
${inAdminGroup ? button('remove-admin-group', `Remove from ${ADMIN_GROUP}`) : button('add-admin-group', `Add to ${ADMIN_GROUP}`)}</form></td></tr>`
  }).join('\n')
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(realm)}: users</title>
<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em .6em;text-align:left}
.message{background:#e8f4e8;padding:.6em;border-radius:4px}</style></head>
<body><h1>Realm <i>${escapeHtml(realm)}</i>: users</h1>
<p>As in Keycloak's admin console, none of these sends a back-channel logout: a client notices at its next refresh.</p>
${message === undefined ? '' : `<p class="message" id="message">${escapeHtml(message)}</p>`}
<table><thead><tr><th>User</th><th>Email</th><th>Status</th><th>Groups</th><th>Sessions</th><th>Actions</th></tr></thead>
<tbody>
${rows}
</tbody></table></body></html>`
}

const html = (status: number, body: string): ConsoleAnswer =>
  ({ status, headers: { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }, body })

/**
 * The answer to a request for the page: GET shows it; POST (`username`, `action`) does what the
 * button says and sends the browser back to the page with what was done (303, so a reload does not
 * repeat it).
 */
export function adminConsoleAnswer (realm: string, method: string, query: URLSearchParams, form: URLSearchParams | undefined, admin: RealmAdministration): ConsoleAnswer {
  if (method === 'GET') return html(200, page(realm, admin.users(), query.get('done') ?? undefined))
  if (method !== 'POST' || form === undefined) return { status: 405, headers: { allow: 'GET, POST', 'content-type': 'text/plain' }, body: 'method not allowed' }
  const user = admin.users().find((candidate) => candidate.username === form.get('username'))
  const action = ACTIONS[form.get('action') ?? '']
  if (user === undefined || action === undefined || !Object.hasOwn(ACTIONS, form.get('action') ?? '')) {
    return html(400, page(realm, admin.users(), 'No such user or action.'))
  }
  const done = action(admin, user)
  return { status: 303, headers: { location: `${adminConsolePath(realm)}?${new URLSearchParams({ done })}` }, body: '' }
}
