/**
 * The real-Keycloak recipe cannot run here (no Docker engine), so its files are checked against each
 * other and against the plugin: the realm export has what ClearML's Keycloak guide asks for, and the
 * compose file's environment is a configuration the plugin accepts for that realm.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { loadConfig } from '../index.js'

const realm = JSON.parse(readFileSync(new URL('../examples/keycloak/realm-export.json', import.meta.url), 'utf8'))
const compose = readFileSync(new URL('../examples/keycloak/docker-compose.yml', import.meta.url), 'utf8')
const apiserverEnv = Object.fromEntries([...compose.slice(compose.indexOf('  apiserver:')).matchAll(/^ {6}- ([A-Za-z_]+)=(.*)$/gm)].map((m) => [m[1], m[2]]))
const client = realm.clients.find((c: { clientId: string }) => c.clientId === 'clearml')

t.test('the realm export has what ClearML\'s Keycloak guide asks for', async (t) => {
  t.equal(realm.realm, 'clearml')
  t.ok(client, 'a "clearml" client')
  t.equal(client.publicClient, false, 'confidential: it has a client secret')
  t.equal(client.standardFlowEnabled, true, 'authorization code flow')
  t.equal(client.attributes['pkce.code.challenge.method'], 'S256')
  t.ok(client.redirectUris.includes(`${apiserverEnv.WEBAPP_URL}/callback_keycloak`), 'callback URL <webapp>/callback_keycloak registered')
  t.ok(client.attributes['post.logout.redirect.uris'].split('##').includes(`${apiserverEnv.WEBAPP_URL}/login`), 'post-logout redirect to <webapp>/login registered (idp_logout)')
  t.equal(client.attributes['backchannel.logout.url'], `${apiserverEnv.WEBAPP_URL}/logout/backchannel`, 'back-channel logout to the apiserver')
  t.equal(client.attributes['backchannel.logout.session.required'], 'true', 'logout tokens carry the session id')
  const mapper = client.protocolMappers.find((m: { protocolMapper: string }) => m.protocolMapper === 'oidc-group-membership-mapper')
  t.match(mapper?.config, { 'claim.name': 'groups', 'full.path': 'false', 'id.token.claim': 'true', 'access.token.claim': 'true', 'userinfo.token.claim': 'true' }, 'Group Membership mapper "groups", full group path off')
  t.ok(client.defaultClientScopes.includes('roles'), 'the roles scope puts realm_access into the access token')
  t.ok(realm.roles.realm.some((r: { name: string }) => r.name === 'admin'), 'an "admin" realm role (admin_role)')
  const groupPaths = realm.groups.map((g: { path: string }) => g.path)
  t.same(groupPaths.sort(), ['/data-science', '/kc-admins', '/ml-team'])
  for (const user of realm.users) {
    t.ok(user.groups.every((g: string) => groupPaths.includes(g)), `${user.username}: groups exist in the realm`)
    t.ok(user.credentials[0].value.length > 0 && user.emailVerified === true, `${user.username}: can log in, verified email`)
  }
})

t.test('the compose environment is a configuration the plugin accepts, for that realm and client', async (t) => {
  const config = loadConfig(apiserverEnv)
  t.equal(config.baseUrl, 'http://localhost:8180/realms/clearml')
  t.equal(config.clientId, client.clientId)
  t.equal(config.clientSecret, client.secret)
  t.equal(config.idpLogout, true)
  t.same(config.groups.admins, ['kc-admins'])
  t.ok(realm.groups.some((g: { name: string }) => g.name === config.groups.admins[0]), 'the admins group exists in the realm')
  t.match(compose, /--import-realm/)
  t.match(compose, /realm-export\.json:\/opt\/keycloak\/data\/import\//)
})
