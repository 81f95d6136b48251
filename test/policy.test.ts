import t from 'tap'
import { chooseSignupTarget, decideSignup, groupNameCandidates, planGroupSync, resolveRole, type Identity, type KeycloakConfigOverrides } from '../index.js'
import { keycloakManagesRole, whitelistQuery } from '../lib/rules/policy.js'
import { testConfig } from './helpers/config.js'

const identity = (fields: Partial<Identity> = {}): Identity => ({ subject: 's', emailVerified: true, name: 'N', groups: [], roles: [], ...fields })
const group = (name: string, company = 'c-acme') => ({ id: `g-${company}-${name}`, company, name })
const acme = { id: 'c-acme', name: 'Acme' }

t.test('groupNameCandidates: Keycloak full paths match the whole path or the last segment', async (t) => {
  t.strictSame(groupNameCandidates(['/ml-team']), ['ml-team'])
  t.strictSame(groupNameCandidates(['/research/vision']), ['research/vision', 'vision'])
  t.strictSame(groupNameCandidates(['ml-team', 'data-science']), ['ml-team', 'data-science'], 'full path off, as ClearML docs advise')
  t.strictSame(groupNameCandidates(['research/vision']), ['research/vision', 'vision'], 'a path without its leading / (a hand-written mapper) is still a path')
  t.strictSame(groupNameCandidates(['//ml-team']), ['ml-team'], 'however many leading slashes')
  t.strictSame(groupNameCandidates(['/', '', '/a/b/']), ['a/b/'], 'degenerate paths')
})

t.test('signup gating (new users)', async (t) => {
  type Row = [string, KeycloakConfigOverrides, Parameters<typeof chooseSignupTarget>[1], typeof acme | null, ReturnType<typeof group>[], unknown]
  const rows: Row[] = [
    ['default_company set: admitted there as user, whitelist not needed', { defaultCompany: 'c-acme' }, null, acme, [], { admit: true, company: acme, role: 'user' }],
    ['whitelisted by email or domain: admitted with the entry\'s role', {}, { company: 'c-acme', role: 'annotator' }, acme, [], { admit: true, company: acme, role: 'annotator' }],
    ['whitelist entry without role: user', {}, { company: 'c-acme' }, acme, [], { admit: true, company: acme, role: 'user' }],
    ['not whitelisted and no default company: refused not_whitelisted', {}, null, null, [], { admit: false, code: 'not_whitelisted' }],
    ['whitelisted into a company ClearML does not have: unknown_company', {}, { company: 'c-gone' }, null, [], { admit: false, code: 'unknown_company' }],
    ['default_company that does not exist: unknown_company', { defaultCompany: 'c-typo' }, null, null, [], { admit: false, code: 'unknown_company' }],
    ['prohibit flag, user\'s only group unknown to ClearML: no_matching_group', { groups: { enabled: true, prohibitUserSignupIfNotInGroup: true } }, { company: 'c-acme' }, acme, [], { admit: false, code: 'no_matching_group' }],
    ['prohibit flag, one group exists in the company: admitted', { groups: { enabled: true, prohibitUserSignupIfNotInGroup: true } }, { company: 'c-acme' }, acme, [group('ml-team')], { admit: true, company: acme, role: 'user' }],
    ['prohibit flag, group exists only in another company: refused', { groups: { enabled: true, prohibitUserSignupIfNotInGroup: true } }, { company: 'c-acme' }, acme, [group('ml-team', 'c-other')], { admit: false, code: 'no_matching_group' }],
    ['prohibit flag without groups.enabled has no effect', { groups: { enabled: false, prohibitUserSignupIfNotInGroup: true } }, { company: 'c-acme' }, acme, [], { admit: true, company: acme, role: 'user' }]
  ]
  for (const [name, overrides, entry, company, known, expected] of rows) {
    const config = testConfig(overrides)
    t.strictSame(decideSignup(config, chooseSignupTarget(config, entry), company, known), expected, name)
  }
})

t.test('role rules (SPEC 5 step 7)', async (t) => {
  const admins = { groups: { enabled: true, admins: ['kc-admins'] } }
  type Row = [string, KeycloakConfigOverrides, Partial<Identity>, string, string]
  const rows: Row[] = [
    ['realm role admin, default admin_role: admin', {}, { roles: ['admin'], rolesClaimPresent: true }, 'user', 'admin'],
    ['roles claim without admin: admin demoted to user', {}, { roles: ['offline_access'], rolesClaimPresent: true }, 'admin', 'user'],
    ['roles claim without admin: annotator stays annotator', {}, { roles: ['offline_access'], rolesClaimPresent: true }, 'annotator', 'annotator'],
    ['no roles claim at all: ClearML keeps the admin role', {}, { roles: [], rolesClaimPresent: false }, 'admin', 'admin'],
    ['custom admin_role "clearml-admin" present: admin', { adminRole: 'clearml-admin' }, { roles: ['clearml-admin'], rolesClaimPresent: true }, 'user', 'admin'],
    ['custom admin_role, only "admin" in Keycloak: not admin', { adminRole: 'clearml-admin' }, { roles: ['admin'], rolesClaimPresent: true }, 'admin', 'user'],
    ['admin_role= empty, Keycloak says no admin role, user is admin in ClearML: stays admin', { adminRole: null }, { roles: ['offline_access'], rolesClaimPresent: true }, 'admin', 'admin'],
    ['admin_role= empty, Keycloak says admin, user is user: stays user', { adminRole: null }, { roles: ['admin'], rolesClaimPresent: true }, 'user', 'user'],
    ['member of kc-admins listed in groups.admins, group not in ClearML: admin', admins, { groups: ['kc-admins'] }, 'user', 'admin'],
    ['kc-admins as a full path /kc-admins: admin', admins, { groups: ['/kc-admins'] }, 'user', 'admin'],
    ['a subgroup /contractors/kc-admins is another group: not admin', admins, { groups: ['/contractors/kc-admins'] }, 'user', 'user'],
    ['and an admin in it is demoted', admins, { groups: ['/contractors/kc-admins'] }, 'admin', 'user'],
    ['groups.admins naming the full path contractors/kc-admins: its members are admin', { groups: { enabled: true, admins: ['contractors/kc-admins'] } }, { groups: ['/contractors/kc-admins'] }, 'user', 'admin'],
    ['groups.admins written with the leading /: matches the full path', { groups: { enabled: true, admins: ['/contractors/kc-admins'] } }, { groups: ['/contractors/kc-admins'] }, 'user', 'admin'],
    ['groups.admins /kc-admins with full group path off (plain kc-admins): admin', { groups: { enabled: true, admins: ['/kc-admins'] } }, { groups: ['kc-admins'] }, 'user', 'admin'],
    ['groups.admins naming a parent does not cover its subgroups', { groups: { enabled: true, admins: ['contractors'] } }, { groups: ['/contractors/kc-admins'] }, 'user', 'user'],
    ['groups.admins set, user not in it, no roles claim: admin demoted', admins, { groups: ['ml-team'] }, 'admin', 'user'],
    ['groups.admins case-insensitive: KC-Admins matches', { groups: { enabled: true, admins: ['kc-admins'], caseSensitive: false } }, { groups: ['KC-Admins'] }, 'user', 'admin'],
    ['groups.admins case-sensitive: KC-Admins does not match', admins, { groups: ['KC-Admins'] }, 'user', 'user'],
    ['groups.admins case-insensitive lower-cases as group sync does: Admins-Straße is not ADMINS-STRASSE',
      { groups: { enabled: true, admins: ['Admins-Straße'], caseSensitive: false } }, { groups: ['/ADMINS-STRASSE'] }, 'user', 'user'],
    ['leading slashes however many (a hand-written mapper\'s //kc-admins): the same group, as for group sync', admins, { groups: ['//kc-admins'] }, 'user', 'admin'],
    ['groups.admins but groups.enabled off: group ignored, role left alone', { groups: { enabled: false, admins: ['kc-admins'] } }, { groups: ['kc-admins'] }, 'user', 'user'],
    ['groups.admins without groups.enabled does nothing: an admin in no admin group, no roles claim, stays admin', { groups: { enabled: false, admins: ['kc-admins'] } }, { groups: [] }, 'admin', 'admin'],
    ['groups.admins without groups.enabled, roles claim without the admin role: membership of kc-admins does not promote',
      { groups: { enabled: false, admins: ['kc-admins'] } }, { groups: ['kc-admins'], roles: ['offline_access'], rolesClaimPresent: true }, 'user', 'user'],
    ['groups.enabled with groups.admins empty, no roles claim: ClearML keeps the admin role', { groups: { enabled: true } }, { groups: ['ml-team'] }, 'admin', 'admin'],
    ['admin_role empty but group admins configured: group decides', { adminRole: null, ...admins }, { groups: ['kc-admins'], roles: [], rolesClaimPresent: true }, 'user', 'admin'],
    ['either path suffices: realm role admin, not in admin group', admins, { roles: ['admin'], rolesClaimPresent: true, groups: ['ml-team'] }, 'user', 'admin'],
    ['a ClearML superuser is never demoted by Keycloak', {}, { roles: [], rolesClaimPresent: true }, 'superuser', 'superuser'],
    ['a ClearML root is not turned into admin either', {}, { roles: ['admin'], rolesClaimPresent: true }, 'root', 'root'],
    ['a ClearML superuser with Keycloak\'s admin role stays superuser', {}, { roles: ['admin'], rolesClaimPresent: true }, 'superuser', 'superuser'],
    ['ClearML\'s system user with Keycloak\'s admin role stays system', {}, { roles: ['admin'], rolesClaimPresent: true }, 'system', 'system'],
    ['a superuser in groups.admins stays superuser', admins, { groups: ['kc-admins'] }, 'superuser', 'superuser'],
    ['a hand-built identity without rolesClaimPresent: roles given count as a claim', {}, { roles: ['admin'] }, 'user', 'admin'],
    ['a hand-built identity without rolesClaimPresent and no roles: no roles claim, ClearML keeps the admin role', {}, { roles: [] }, 'admin', 'admin']
  ]
  for (const [name, overrides, fields, current, expected] of rows) {
    t.equal(resolveRole(testConfig(overrides), identity(fields), current), expected, name)
  }
  t.equal(keycloakManagesRole(testConfig({ adminRole: null }), identity({ roles: ['admin'] })), false)
})

t.test('the whitelist is asked only about an email Keycloak verified (SPEC 5 step 6)', async (t) => {
  type Row = [string, KeycloakConfigOverrides, Partial<Identity>, unknown]
  const rows: Row[] = [
    ['verified email: the whitelist is asked about it', {}, { email: 'ann@acme.com', emailVerified: true }, { email: 'ann@acme.com' }],
    ['unverified email: refused email_not_verified, the whitelist is not asked', {}, { email: 'boss@acme.com', emailVerified: false }, { refused: 'email_not_verified' }],
    ['unverified email, trust_unverified_email on: asked', { trustUnverifiedEmail: true }, { email: 'ann@acme.com', emailVerified: false }, { email: 'ann@acme.com' }],
    ['no email at all: not_whitelisted', {}, { email: undefined }, { refused: 'not_whitelisted' }],
    ['default_company admits without the whitelist, verified or not', { defaultCompany: 'c-acme' }, { email: 'x@y.z', emailVerified: false }, { skip: 'default_company' }]
  ]
  for (const [name, overrides, fields, expected] of rows) t.strictSame(whitelistQuery(testConfig(overrides), identity(fields)), expected, name)
})

t.test('group sync plan: memberships become exactly the claimed groups that exist in ClearML', async (t) => {
  const ml = group('ml-team')
  const ds = group('data-science')
  const ops = group('ops')
  const foreign = group('ml-team', 'c-other')
  const rows: Array<[string, ReturnType<typeof group>[], ReturnType<typeof group>[], { add: string[], remove: string[] }]> = [
    ['new user in two known groups: both added', [ml, ds], [], { add: ['ml-team', 'data-science'], remove: [] }],
    ['existing user whose groups vanished: memberships removed', [], [ml, ds], { add: [], remove: ['ml-team', 'data-science'] }],
    ['moved from ops to ml-team', [ml], [ops], { add: ['ml-team'], remove: ['ops'] }],
    ['already in sync: nothing to do', [ml], [ml], { add: [], remove: [] }],
    ['a group of another company is never added nor removed', [ml, foreign], [foreign], { add: ['ml-team'], remove: [] }]
  ]
  for (const [name, claimed, current, expected] of rows) {
    const plan = planGroupSync('c-acme', claimed, current)
    t.strictSame({ add: plan.add.map((g) => g.name), remove: plan.remove.map((g) => g.name) }, expected, name)
  }
})
