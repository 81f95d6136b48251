import t from 'tap'
import { mapClaims } from '../index.js'
import { claimAt, looksLikeIdentity } from '../lib/rules/identity.js'
import { testConfig } from './helpers/config.js'

const config = testConfig()
const keycloakAccessToken = {
  sub: 'f3c9c6a4-3f4e-4c1e-9a51-1c2b8d0c7e11',
  typ: 'Bearer',
  azp: 'clearml',
  aud: 'account',
  preferred_username: 'alice',
  email: 'alice@acme.com',
  email_verified: true,
  name: 'Alice Admin',
  given_name: 'Alice',
  family_name: 'Admin',
  picture: 'https://img.example/alice.png',
  groups: ['/ml-team', '/research/vision'],
  realm_access: { roles: ['offline_access', 'uma_authorization', 'default-roles-clearml', 'admin'] },
  resource_access: { clearml: { roles: ['annotator'] }, account: { roles: ['manage-account'] } }
}

t.test('a Keycloak access token maps to the identity ClearML needs', async (t) => {
  t.strictSame(mapClaims(config, keycloakAccessToken), {
    subject: 'f3c9c6a4-3f4e-4c1e-9a51-1c2b8d0c7e11',
    email: 'alice@acme.com',
    emailVerified: true,
    name: 'Alice Admin',
    username: 'alice',
    givenName: 'Alice',
    familyName: 'Admin',
    avatar: 'https://img.example/alice.png',
    groups: ['/ml-team', '/research/vision'],
    roles: ['offline_access', 'uma_authorization', 'default-roles-clearml', 'admin', 'annotator'],
    rolesClaimPresent: true
  })
})

t.test('roles: union of roles, realm_access.roles and this client\'s resource_access roles', async (t) => {
  const rows: Array<[string, Record<string, unknown>, string[], boolean]> = [
    ['top-level roles claim', { roles: ['admin'] }, ['admin'], true],
    ['realm roles only', { realm_access: { roles: ['admin', 'x'] } }, ['admin', 'x'], true],
    ['client roles of this client', { resource_access: { clearml: { roles: ['admin'] } } }, ['admin'], true],
    ['client roles of another client are not ours', { resource_access: { other: { roles: ['admin'] } } }, [], false],
    ['all three, duplicates merged', { roles: ['a'], realm_access: { roles: ['a', 'b'] }, resource_access: { clearml: { roles: ['c'] } } }, ['a', 'b', 'c'], true],
    ['no roles claim at all', {}, [], false],
    ['realm_access: null (a mapper without roles) is no roles claim', { realm_access: null }, [], false],
    ['resource_access: null likewise', { resource_access: null }, [], false],
    ['an empty realm roles list is still a roles claim', { realm_access: { roles: [] } }, [], true],
    ['non-string entries dropped', { roles: ['admin', 7, null] }, ['admin'], true]
  ]
  for (const [name, claims, roles, present] of rows) {
    const identity = mapClaims(config, { sub: 's', ...claims })
    t.strictSame([identity.roles, identity.rolesClaimPresent], [roles, present], name)
  }
})

t.test('configurable claim paths, with dots, and the name fallbacks', async (t) => {
  const custom = testConfig({ claims: { userId: 'attributes.employee_id', email: 'mail', name: 'display.name', username: 'login', avatar: 'https://example.com/avatar' } })
  const identity = mapClaims(custom, {
    sub: 'ignored',
    attributes: { employee_id: 4711 },
    mail: 'x@acme.com',
    display: { name: 'X Person' },
    login: 'xp',
    'https://example.com/avatar': 'https://img/x.png'
  })
  t.match(identity, { subject: '4711', email: 'x@acme.com', name: 'X Person', username: 'xp', avatar: 'https://img/x.png' })
  t.equal(mapClaims(config, { sub: 's', preferred_username: 'bob' }).name, 'bob', 'name falls back to the username')
  t.equal(mapClaims(config, { sub: 's', email: 'c@acme.com' }).name, 'c@acme.com', 'then to the email')
  t.equal(mapClaims(config, { sub: 's', name: '  ' }).name, 's', 'and finally to the subject')
  t.equal(claimAt({ a: { b: 1 } }, 'a.c'), undefined)
  t.equal(claimAt({ a: 'text' }, 'a.b'), undefined)
  // An attribute mapper sends a list when "Multivalued" is on and plain text when it is off.
  t.equal(mapClaims(testConfig({ claims: { name: 'department.0' } }), { sub: 's', department: ['ML Research'] }).name, 'ML Research', 'a path may index a list')
  t.equal(mapClaims(testConfig({ claims: { name: 'department.0' } }), { sub: 's', department: 'ML Research' }).name, 's', 'the same path on plain text finds nothing, not its first letter')
})

t.test('a missing user id claim is missing_claim', async (t) => {
  for (const claims of [{}, { sub: '' }, { sub: null }, { sub: { nested: true } }]) {
    t.throws(() => mapClaims(config, claims), { name: 'SsoError', code: 'missing_claim' }, JSON.stringify(claims))
  }
  t.throws(() => mapClaims(testConfig({ claims: { userId: 'oid' } }), { sub: 's' }), {
    code: 'missing_claim',
    message: /^the token has no "oid" claim, which CLEARML__services__login__sso__oauth_client__keycloak__claims__user_id names as the user id/
  }, 'the reason names the claim and the setting that chose it')
})

t.test('email_verified counts only as a real boolean true', async (t) => {
  for (const [value, verified] of [[true, true], ['true', false], [1, false], [undefined, false], [false, false]] as const) {
    t.equal(mapClaims(config, { sub: 's', email: 'a@b.c', email_verified: value }).emailVerified, verified, String(value))
  }
})

t.test('groups from groups.claim: list or single name, empties and duplicates dropped', async (t) => {
  t.strictSame(mapClaims(config, { sub: 's', groups: ['/a', '/a', '', 3, 'b'] }).groups, ['/a', 'b'])
  t.strictSame(mapClaims(config, { sub: 's', groups: 'solo' }).groups, ['solo'])
  t.strictSame(mapClaims(config, { sub: 's' }).groups, [])
  t.strictSame(mapClaims(testConfig({ groups: { claim: 'org.teams' } }), { sub: 's', org: { teams: ['x'] } }).groups, ['x'])
})

t.test('explain tells an identity a host built from claims to map: all four of its typed fields, or claims', async (t) => {
  const identity = mapClaims(config, keycloakAccessToken)
  t.equal(looksLikeIdentity(identity), true, 'what mapClaims returns is an identity')
  t.equal(looksLikeIdentity(keycloakAccessToken), false, 'Keycloak claims are claims')
  // Claims that happen to carry some of an identity's names are still claims: each typed field decides.
  const { subject, groups, roles, emailVerified } = identity
  t.equal(looksLikeIdentity({ ...keycloakAccessToken, groups, roles, emailVerified }), false, 'no subject')
  t.equal(looksLikeIdentity({ ...keycloakAccessToken, subject: 42, groups, roles, emailVerified }), false, 'a subject that is not a string')
  t.equal(looksLikeIdentity({ ...keycloakAccessToken, subject, groups: '/ml-team', roles, emailVerified }), false, 'groups not a list')
  t.equal(looksLikeIdentity({ ...keycloakAccessToken, subject, groups, roles: 'admin', emailVerified }), false, 'roles not a list')
  t.equal(looksLikeIdentity({ ...keycloakAccessToken, subject, groups, roles }), false, 'no emailVerified')
  t.equal(looksLikeIdentity({ ...keycloakAccessToken, subject, groups, roles, emailVerified: 'true' }), false, 'emailVerified not a boolean')
  t.equal(looksLikeIdentity({ ...identity, emailVerified: false }), true, 'an unverified identity is an identity')
})
